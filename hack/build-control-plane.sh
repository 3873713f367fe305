#!/usr/bin/env bash
# Builds (once) the local test control plane: kube-apiserver, kube-controller-manager and etcd,
# from the Go module proxy, pinned by hack/controlplane/go.mod and hack/etcd/go.mod.
#
# Binaries are cached outside the clone, keyed by version, so a fresh clone (as CI makes)
# rebuilds nothing:  ${STS_TEST_CACHE:-$HOME/.cache/sts-session-operator}/control-plane/<key>/
# If KUBEBUILDER_ASSETS holds kube-apiserver and etcd (the envtest convention) those are used,
# and only kube-controller-manager (which envtest does not ship) is built.
#
# Prints the directory holding the three binaries as its last line of stdout.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

pinned() { sed -nE "s#^[[:space:]]*(require[[:space:]]+)?$2 (v[^ ]+).*#\\2#p" "$1" | head -1; }
k8s_version=$(pinned "$here/controlplane/go.mod" k8s.io/kubernetes)
etcd_version=$(pinned "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)
go_version=$(go env GOVERSION)
[[ -n "$k8s_version" && -n "$etcd_version" ]] || { echo "cannot read pinned versions" >&2; exit 1; }

cache_root=${STS_TEST_CACHE:-$HOME/.cache/sts-session-operator}
out="$cache_root/control-plane/k8s-$k8s_version-etcd-$etcd_version-$go_version"
mkdir -p "$out"

minor=${k8s_version#v1.}; minor=${minor%%.*}
k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version \
 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

build() { # build <module dir> <package> <output name> <ldflags>
  local started=$SECONDS tmp="$out/.$3.tmp.$$"
  echo "building $3 ($2) ..." >&2
  (cd "$1" && go build -trimpath -ldflags "$4" -o "$tmp" "$2")
  mv -f "$tmp" "$out/$3"   # atomic: a half-built binary is never mistaken for a cached one
  echo "built $3 in $((SECONDS - started)) s" >&2
}

assets=${KUBEBUILDER_ASSETS:-}
if [[ -n "$assets" && -x "$assets/kube-apiserver" && -x "$assets/etcd" ]]; then
  echo "using kube-apiserver and etcd from KUBEBUILDER_ASSETS=$assets" >&2
  ln -sf "$assets/kube-apiserver" "$out/kube-apiserver"
  ln -sf "$assets/etcd" "$out/etcd"
  [[ -x "$assets/kube-controller-manager" ]] && ln -sf "$assets/kube-controller-manager" "$out/kube-controller-manager"
fi

started=$SECONDS
[[ -x "$out/kube-apiserver" ]] || build "$here/controlplane" k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$k8s_ldflags"
[[ -x "$out/kube-controller-manager" ]] || build "$here/controlplane" k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager "$k8s_ldflags"
[[ -x "$out/etcd" ]] || build "$here/etcd" go.etcd.io/etcd/server/v3 etcd "-s -w"
echo "control plane ready in $((SECONDS - started)) s: $out" >&2
echo "$out"
