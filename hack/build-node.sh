#!/usr/bin/env bash
# Builds (once) what a real test node runs besides the control plane (tests/node):
# - kubelet and kube-scheduler from k8s.io/kubernetes, the same release as the control plane
#   (hack/node/go.mod pins the same k8s.io/kubernetes as hack/controlplane/go.mod),
# - containerd 2.x, its runc shim and ctr, from github.com/containerd/containerd/v2
#   (hack/containerd/go.mod),
# - runc from github.com/opencontainers/runc (hack/runc/go.mod), with seccomp (cgo + Debian's
#   libseccomp-dev): Debian bookworm's runc 1.1.5 fails to start containerd 2.x's sandboxes.
# The CNI plugins come from Debian (apt-get install containernetworking-plugins).
#
# Cached outside the clone, keyed by version: ${STS_TEST_CACHE:-~/.cache/sts-session-operator}/node/<key>/
# Prints that directory as its last line of stdout.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

pinned() { sed -nE "s#^[[:space:]]*(require[[:space:]]+)?$2 (v[^ ]+).*#\\2#p" "$1" | head -1; }
k8s_version=$(pinned "$here/node/go.mod" k8s.io/kubernetes)
cp_version=$(pinned "$here/controlplane/go.mod" k8s.io/kubernetes)
containerd_version=$(pinned "$here/containerd/go.mod" github.com/containerd/containerd/v2)
runc_version=$(pinned "$here/runc/go.mod" github.com/opencontainers/runc)
go_version=$(go env GOVERSION)
[[ -n "$k8s_version" && -n "$containerd_version" ]] || { echo "cannot read pinned versions" >&2; exit 1; }
if [[ "$k8s_version" != "$cp_version" ]]; then
  echo "hack/node/go.mod pins k8s.io/kubernetes $k8s_version but the control plane uses $cp_version" >&2
  exit 1
fi

cache_root=${STS_TEST_CACHE:-$HOME/.cache/sts-session-operator}
out="$cache_root/node/k8s-$k8s_version-containerd-$containerd_version-$go_version"
runc_out="$cache_root/node/runc-$runc_version-$go_version"
mkdir -p "$runc_out"
mkdir -p "$out"
exec 9>"$out.lock"
flock 9

minor=${k8s_version#v1.}; minor=${minor%%.*}
k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version \
 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
ctr_ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd_version \
 -X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2"

build() { # build <module dir> <package> <output name> <ldflags> [tags]
  local started=$SECONDS tmp="$out/.$3.tmp.$$"
  echo "building $3 ($2) ..." >&2
  (cd "$1" && nice -n 10 go build -trimpath -tags "${5:-}" -ldflags "$4" -o "$tmp" "$2")
  mv -f "$tmp" "$out/$3"   # atomic: a half-built binary is never mistaken for a cached one
  echo "built $3 in $((SECONDS - started)) s" >&2
}

started=$SECONDS
# The kubelet and the scheduler: static, as the control plane's binaries.
[[ -x "$out/kubelet" ]] || CGO_ENABLED=0 build "$here/node" k8s.io/kubernetes/cmd/kubelet kubelet "$k8s_ldflags"
[[ -x "$out/kube-scheduler" ]] || CGO_ENABLED=0 build "$here/node" k8s.io/kubernetes/cmd/kube-scheduler kube-scheduler "$k8s_ldflags"
# containerd without the snapshotters that need C libraries (btrfs, devmapper, zfs): overlayfs
# and native are what the node uses.
ctr_tags="no_btrfs no_devmapper no_zfs no_aufs"
[[ -x "$out/containerd" ]] || CGO_ENABLED=0 build "$here/containerd" github.com/containerd/containerd/v2/cmd/containerd containerd "$ctr_ldflags" "$ctr_tags"
[[ -x "$out/containerd-shim-runc-v2" ]] || CGO_ENABLED=0 build "$here/containerd" github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 containerd-shim-runc-v2 "$ctr_ldflags" "$ctr_tags"
[[ -x "$out/ctr" ]] || CGO_ENABLED=0 build "$here/containerd" github.com/containerd/containerd/v2/cmd/ctr ctr "$ctr_ldflags" "$ctr_tags"

# runc: cgo for libseccomp; cached apart from the rest (its own key).
if [[ ! -x "$runc_out/runc" ]]; then
  [[ -f /usr/include/seccomp.h ]] || { echo "libseccomp-dev is missing: apt-get install libseccomp-dev" >&2; exit 1; }
  CGO_ENABLED=1 build "$here/runc" github.com/opencontainers/runc runc \
    "-s -w -X main.version=${runc_version#v}" "seccomp urfave_cli_no_docs"
  mv -f "$out/runc" "$runc_out/runc"
fi
ln -sfn "$runc_out/runc" "$out/runc"
echo "node binaries ready in $((SECONDS - started)) s: $out" >&2
echo "$out"
