#!/usr/bin/env bash
# Builds (once) a Go tool pinned by hack/NAME/go.mod (a `tool` directive) for the test command:
#   hack/build-go-tool.sh promtool     Prometheus' promtool (chart alerts: check and unit-test rules)
#   hack/build-go-tool.sh kube-score   a Kubernetes manifest linter (rendered chart, deploy/)
# The binary is cached outside the clone, keyed by the tool's module version, so a second run
# (or a fresh clone) rebuilds nothing:
#   ${STS_TEST_CACHE:-$HOME/.cache/sts-session-operator}/NAME/<version>/NAME
# Built at low priority (nice 10): the machines have two cores. Prints the binary's path last.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
name=${1:?usage: build-go-tool.sh NAME (a folder under hack/ with a go.mod)}
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
mod="$here/$name/go.mod"
[[ -f "$mod" ]] || { echo "no $mod" >&2; exit 1; }
# The package of the `tool` directive, and the version of the module that holds it.
pkg=$(sed -nE 's#^[[:space:]]*tool[[:space:]]+([^ ]+).*#\1#p' "$mod" | head -1)
[[ -n "$pkg" ]] || { echo "no tool directive in $mod" >&2; exit 1; }
version=
module=$pkg
while [[ -z "$version" && "$module" == */* ]]; do
  version=$(sed -nE "s#^[[:space:]]*(require[[:space:]]+)?$module (v[^ ]+).*#\\2#p" "$mod" | head -1)
  [[ -n "$version" ]] || module=${module%/*}
done
[[ -n "$version" ]] || { echo "cannot read the version of $pkg from $mod" >&2; exit 1; }

# Optional build tags, from a `// build-tags: a,b` line in the go.mod (part of the cache key).
tags=$(sed -nE 's#^//[[:space:]]*build-tags:[[:space:]]*([^ ]+).*#\1#p' "$mod" | head -1)

cache_root=${STS_TEST_CACHE:-$HOME/.cache/sts-session-operator}
out="$cache_root/$name/$version${tags:+-$tags}"
bin="$out/$name"
mkdir -p "$out"
if [[ ! -x "$bin" ]]; then
  (
    flock 9
    if [[ ! -x "$bin" ]]; then   # another process may have built it while we waited
      started=$SECONDS
      echo "building $name $version ($pkg${tags:+, tags $tags}) ..." >&2
      tmp="$out/.$name.tmp.$$"
      (cd "$here/$name" && nice -n 10 go build -trimpath ${tags:+-tags "$tags"} -ldflags "-s -w" -o "$tmp" "$pkg")
      mv -f "$tmp" "$bin"   # atomic: a half-built binary is never mistaken for a cached one
      echo "built $name in $((SECONDS - started)) s" >&2
    fi
  ) 9>"$out/.lock"
fi
echo "$bin"
