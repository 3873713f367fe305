#!/usr/bin/env bash
# Builds (once) helm from its Go module, pinned by hack/helm/go.mod (a `tool` directive), for the
# chart tests (tests/install.rs) and hack/generate-deploy.sh.
#
# The binary is cached outside the clone, keyed by helm's version, so a second run (or a fresh
# clone) rebuilds nothing:  ${STS_TEST_CACHE:-$HOME/.cache/sts-session-operator}/helm/<version>/helm
# `.Capabilities.KubeVersion` defaults to the Kubernetes minor of the client-go helm is built
# with (as helm's own Makefile does), not helm's built-in v1.20.
#
# Prints the path of the binary as its last line of stdout.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

pinned() { sed -nE "s#^[[:space:]]*(require[[:space:]]+)?$2 (v[^ ]+).*#\\2#p" "$1" | head -1; }
helm_version=$(pinned "$here/helm/go.mod" helm.sh/helm/v3)
client_go=$(pinned "$here/helm/go.mod" k8s.io/client-go)
[[ -n "$helm_version" && -n "$client_go" ]] || { echo "cannot read the pinned helm / client-go versions from $here/helm/go.mod" >&2; exit 1; }
k8s_minor=${client_go#v0.}; k8s_minor=${k8s_minor%%.*}

cache_root=${STS_TEST_CACHE:-$HOME/.cache/sts-session-operator}
out="$cache_root/helm/$helm_version"
bin="$out/helm"
mkdir -p "$out"

if [[ ! -x "$bin" ]]; then
  (
    flock 9
    if [[ ! -x "$bin" ]]; then   # another process may have built it while we waited
      started=$SECONDS
      echo "building helm $helm_version (Kubernetes 1.$k8s_minor) ..." >&2
      ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version \
 -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor \
 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor"
      tmp="$out/.helm.tmp.$$"
      (cd "$here/helm" && go build -trimpath -ldflags "$ldflags" -o "$tmp" helm.sh/helm/v3/cmd/helm)
      mv -f "$tmp" "$bin"   # atomic: a half-built binary is never mistaken for a cached one
      echo "built helm in $((SECONDS - started)) s" >&2
    fi
  ) 9>"$out/.lock"
fi
echo "$bin"
