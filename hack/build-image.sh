#!/usr/bin/env bash
# Builds the operator's image from the project's Dockerfile, unchanged, with `docker build`, plus
# the images the node tests run (tests/image, tests/node). Nothing is pulled from a registry:
#
# - stand-ins for the Dockerfile's two base images, made here from Debian's packages and named
#   as stand-ins (`sts-standin/...`):
#     builder  (for rust:1.95-bookworm): a Debian bookworm root filesystem (debootstrap) with gcc,
#              libc6-dev, ca-certificates and this machine's Rust toolchain (the one `rustc`
#              runs here, which must be 1.95) at /usr/local/cargo/bin, as in the real image;
#     runtime  (for gcr.io/distroless/cc-debian12:nonroot): glibc, libgcc, CA certificates,
#              tzdata and a `nonroot` user 65532 from bookworm's packages, nothing else (no shell);
# - the operator image, `docker build --network host` of ./Dockerfile with
#   --build-arg BUILDER_IMAGE=... --build-arg RUNTIME_IMAGE=... (the defaults are the real ones),
#   with docker's legacy builder (BuildKit would pull its Dockerfile frontend from a registry);
#   its RUN steps reach crates.io through the host's network;
# - a consumer image (the same bookworm root filesystem: python3, python3-boto3, sh, cat) and a
#   pause image (a static C program) for the node tests.
#
# A private dockerd (its own socket, data root under the cache, no bridge, no iptables) is started
# for the build and stopped at the end, even on failure. Everything is cached under
# ${STS_TEST_CACHE:-~/.cache/sts-session-operator}/image/: the stand-in root filesystems and images
# by the content of this script, the operator image by the content of Dockerfile, Cargo.toml,
# Cargo.lock, tests/testkit/Cargo.toml and src/ (and the stand-ins), so a warm run starts no
# dockerd at all. docker's own layer cache lives in the data root, so a change in src/ rebuilds
# only the crate, not its dependencies.
#
# Prints, as its last line of stdout, the directory holding `images.env` (the image names) and
# the images as `docker save` archives (*.tar), which tests/image and tests/node load.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cache_root=${STS_TEST_CACHE:-$HOME/.cache/sts-session-operator}
cache="$cache_root/image"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

need() { command -v "$1" >/dev/null || { echo "build-image: '$1' is missing: $2" >&2; exit 1; }; }
need docker "apt-get install docker.io"
need dockerd "apt-get install docker.io"
need debootstrap "apt-get install debootstrap"
need rustc "the Rust toolchain the project builds with"

rust_version=$(rustc --version | awk '{print $2}')
[[ "$rust_version" == 1.95.* ]] || { echo "build-image: rustc is $rust_version; the builder stand-in must carry Rust 1.95" >&2; exit 1; }
sysroot=$(rustc --print sysroot)

# Stand-ins and helper images: each keyed by its recipe (bump a recipe's revision when changing
# how it is made) and, for the builder, the toolchain.
debootstrap_include=gcc,libc6-dev,ca-certificates,python3-boto3
key() { echo "$*" | sha256sum | cut -c1-12; }
rootfs_key=$(key "bookworm minbase $debootstrap_include r1")
# The builder reaches crates.io through this machine's network, so it trusts what this machine
# trusts (/etc/ssl/certs/ca-certificates.crt: Debian's CAs plus any local ones, e.g. an HTTPS
# proxy's from /usr/local/share/ca-certificates).
host_ca=/etc/ssl/certs/ca-certificates.crt
builder_image="sts-standin/rust:1.95-bookworm-$(key "$rootfs_key $rust_version $(sha256sum <"$host_ca") r2")"
runtime_image="sts-standin/distroless-cc-debian12:nonroot-$(key "libc6 libgcc-s1 tzdata r1")"
consumer_image="sts-standin/python-boto3:bookworm-$rootfs_key"
pause_image="sts-standin/pause:3.10-$(key "pause r1")"
standin_key=$(key "$builder_image $runtime_image $consumer_image $pause_image")

# The operator image: keyed by the build context the Dockerfile sees and the stand-ins.
context_key=$(cd "$root" && { cat Dockerfile .dockerignore Cargo.toml Cargo.lock tests/testkit/Cargo.toml
  find src -type f | LC_ALL=C sort | xargs sha256sum; echo "$standin_key"; } | sha256sum | cut -c1-12)
operator_image="sts-session-operator:0.1.0-test-$context_key"

out="$cache/out-$context_key"
if [[ -f "$out/images.env" ]]; then
  echo "images cached: $out" >&2
  cat "$out/sizes.txt" >&2
  echo "$out"
  exit 0
fi

# -- a private dockerd ------------------------------------------------------------------------------
run=$(mktemp -d /tmp/sts-dockerd.XXXXXX)
export DOCKER_HOST="unix://$run/docker.sock"
dockerd_pid=
cleanup() {
  if [[ -n "$dockerd_pid" ]]; then
    kill "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$dockerd_pid" 2>/dev/null || true
  fi
  # dockerd leaves its network namespace file mounted under the exec root.
  grep -o " $run[^ ]*" /proc/self/mountinfo 2>/dev/null | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf "$run" "${tmp:-}"
}
trap cleanup EXIT
mkdir -p "$cache/docker"
dockerd --data-root "$cache/docker" --exec-root "$run/exec" --pidfile "$run/docker.pid" \
  -H "$DOCKER_HOST" --iptables=false --ip-masq=false --bridge=none --storage-driver=overlay2 \
  >"$run/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 120); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
docker version >/dev/null 2>&1 || { echo "build-image: dockerd did not start:" >&2; tail -20 "$run/dockerd.log" >&2; exit 1; }
has() { docker image inspect "$1" >/dev/null 2>&1; }
tmp=$(mktemp -d)

# -- Debian bookworm root filesystem (builder and consumer) ----------------------------------------
rootfs_tar="$cache/bookworm-$rootfs_key.tar"
if [[ ! -f "$rootfs_tar" ]]; then
  started=$SECONDS
  echo "debootstrap bookworm ..." >&2
  mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
  nice -n 10 debootstrap --variant=minbase --include="$debootstrap_include" \
    bookworm "$tmp/rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1 \
    || { tail -30 "$tmp/debootstrap.log" >&2; exit 1; }
  rm -rf "$tmp/rootfs/var/cache/apt/archives/"*.deb "$tmp/rootfs/var/lib/apt/lists/"*
  tar -C "$tmp/rootfs" --numeric-owner -cf "$rootfs_tar.tmp" .
  mv -f "$rootfs_tar.tmp" "$rootfs_tar"
  rm -rf "$tmp/rootfs"
  echo "debootstrap took $((SECONDS - started)) s" >&2
fi

if ! has "$consumer_image"; then
  docker import --change 'CMD ["/bin/sh"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$rootfs_tar" "$consumer_image" >/dev/null
fi

if ! has "$builder_image"; then
  started=$SECONDS
  # rust:1.95-bookworm keeps its toolchain under /usr/local/{rustup,cargo} with cargo and rustc
  # in /usr/local/cargo/bin on PATH. Only the host target's standard library, no docs.
  mkdir -p "$tmp/rust/usr/local/rustup/toolchains/1.95-x86_64-unknown-linux-gnu" "$tmp/rust/usr/local/cargo/bin"
  tc="$tmp/rust/usr/local/rustup/toolchains/1.95-x86_64-unknown-linux-gnu"
  mkdir -p "$tc/bin" "$tc/lib/rustlib"
  cp -a "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$sysroot/bin/rustdoc" "$tc/bin/"
  cp -a "$sysroot/lib/"*.so* "$tc/lib/"
  cp -a "$sysroot/lib/rustlib/x86_64-unknown-linux-gnu" "$sysroot/lib/rustlib/etc" "$tc/lib/rustlib/"
  [[ -d "$sysroot/libexec" ]] && cp -a "$sysroot/libexec" "$tc/"
  for b in cargo rustc rustdoc; do ln -s "../../rustup/toolchains/1.95-x86_64-unknown-linux-gnu/bin/$b" "$tmp/rust/usr/local/cargo/bin/$b"; done
  mkdir -p "$tmp/rust/etc/ssl/certs"
  cp "$host_ca" "$tmp/rust/etc/ssl/certs/ca-certificates.crt"
  # The root filesystem without its CA bundle, then the toolchain and this machine's bundle.
  cp "$rootfs_tar" "$tmp/builder.tar"
  tar --delete -f "$tmp/builder.tar" ./etc/ssl/certs/ca-certificates.crt
  tar -C "$tmp/rust" --numeric-owner --owner=0 --group=0 -rf "$tmp/builder.tar" \
    ./usr/local/rustup ./usr/local/cargo ./etc/ssl/certs/ca-certificates.crt
  docker import \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo RUST_VERSION=1.95.0' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' "$tmp/builder.tar" "$builder_image" >/dev/null
  rm -rf "$tmp/rust" "$tmp/builder.tar"
  echo "builder stand-in $builder_image made in $((SECONDS - started)) s" >&2
fi

if ! has "$runtime_image"; then
  # distroless cc: glibc (libc6), libgcc (libgcc-s1), CA certificates, tzdata, /etc/passwd with
  # root, nobody and nonroot (65532), /tmp, /home/nonroot. No shell, no package manager, no
  # coreutils: only the libraries and data of those packages are kept.
  r="$tmp/distroless"; mkdir -p "$r" "$tmp/debs"
  (cd "$tmp/debs" && { apt-get download libc6 libgcc-s1 tzdata >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get download libc6 libgcc-s1 tzdata >/dev/null; }; })
  for deb in "$tmp/debs"/*.deb; do dpkg-deb -x "$deb" "$r"; done
  rm -rf "$r/usr/bin" "$r/usr/sbin" "$r/sbin" "$r/bin" "$r/usr/libexec" "$r/usr/share/doc" \
    "$r/usr/share/lintian" "$r/usr/share/man" "$r/usr/share/locale" "$r/usr/lib/x86_64-linux-gnu/gconv" \
    "$r/etc/ld.so.conf.d" "$r/usr/share/debconf"
  # The CA bundle as update-ca-certificates made it in the bookworm root filesystem.
  mkdir -p "$r/etc/ssl/certs"
  tar -C "$r" -xf "$rootfs_tar" ./etc/ssl/certs/ca-certificates.crt ./etc/os-release ./usr/lib/os-release
  mkdir -p "$r/tmp" "$r/home/nonroot" "$r/root"
  chmod 1777 "$r/tmp"; chmod 700 "$r/root"; chown 65532:65532 "$r/home/nonroot"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$r/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >"$r/etc/group"
  printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$r/etc/nsswitch.conf"
  tar -C "$r" --numeric-owner -cf "$tmp/distroless.tar" .
  docker import --change 'USER 65532' --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    "$tmp/distroless.tar" "$runtime_image" >/dev/null
  rm -rf "$r" "$tmp/debs" "$tmp/distroless.tar"
fi

if ! has "$pause_image"; then
  # The sandbox ("pause") container: waits for a signal and reaps orphans, as Kubernetes' own.
  mkdir -p "$tmp/pause"
  cat >"$tmp/pause.c" <<'C'
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction q = {.sa_handler = quit}, r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &q, NULL); sigaction(SIGTERM, &q, NULL); sigaction(SIGCHLD, &r, NULL);
  if (getpid() != 1) fprintf(stderr, "pause: warning: not pid 1\n");
  for (;;) pause();
}
C
  gcc -Os -static -s -o "$tmp/pause/pause" "$tmp/pause.c"
  tar -C "$tmp/pause" --numeric-owner --owner=0 --group=0 -cf "$tmp/pause.tar" .
  docker import --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' "$tmp/pause.tar" "$pause_image" >/dev/null
fi

# -- the operator image: the project's Dockerfile as it is ------------------------------------------
started=$SECONDS
echo "docker build $operator_image (Dockerfile unchanged; bases: stand-ins) ..." >&2
DOCKER_BUILDKIT=0 nice -n 10 docker build --network host \
  --build-arg "BUILDER_IMAGE=$builder_image" --build-arg "RUNTIME_IMAGE=$runtime_image" \
  -t "$operator_image" "$root" >"$tmp/build.log" 2>&1 || { tail -40 "$tmp/build.log" >&2; exit 1; }
build_seconds=$((SECONDS - started))
echo "docker build took $build_seconds s" >&2

mkdir -p "$out.tmp"
docker save -o "$out.tmp/operator.tar" "$operator_image"
# The helper images change only with their recipes: saved once, next to the out-* directories.
consumer_tar="$cache/consumer-${consumer_image##*:}.tar"
pause_tar="$cache/pause-${pause_image##*:}.tar"
[[ -f "$consumer_tar" ]] || { docker save -o "$consumer_tar.tmp" "$consumer_image" && mv -f "$consumer_tar.tmp" "$consumer_tar"; }
[[ -f "$pause_tar" ]] || { docker save -o "$pause_tar.tmp" "$pause_image" && mv -f "$pause_tar.tmp" "$pause_tar"; }
uncompressed=$(docker image inspect -f '{{.Size}}' "$operator_image")
compressed=$(gzip -c "$out.tmp/operator.tar" | wc -c)
{
  printf 'operator image %s: %.1f MB uncompressed, %.1f MB compressed (gzip of docker save); docker build %s s\n' \
    "$operator_image" "$(echo "$uncompressed / 1000000" | bc -l)" "$(echo "$compressed / 1000000" | bc -l)" "$build_seconds"
} >"$out.tmp/sizes.txt"
cat >"$out.tmp/images.env" <<ENV
OPERATOR_IMAGE=$operator_image
CONSUMER_IMAGE=$consumer_image
PAUSE_IMAGE=$pause_image
BUILDER_IMAGE=$builder_image
RUNTIME_IMAGE=$runtime_image
OPERATOR_ARCHIVE=$out/operator.tar
CONSUMER_ARCHIVE=$consumer_tar
PAUSE_ARCHIVE=$pause_tar
OPERATOR_IMAGE_BYTES=$uncompressed
OPERATOR_IMAGE_GZIP_BYTES=$compressed
ENV
# Older operator images and their archives go (docker keeps the builder's layers, so the next
# build of a changed src/ still reuses the dependencies' layer).
for old in $(docker images --format '{{.Repository}}:{{.Tag}}' sts-session-operator); do
  [[ "$old" == "$operator_image" ]] || docker rmi "$old" >/dev/null 2>&1 || true
done
rm -rf "$out"; mv "$out.tmp" "$out"
ls -dt "$cache"/out-* 2>/dev/null | tail -n +4 | xargs -r rm -rf
cat "$out/sizes.txt" >&2
echo "$out"
