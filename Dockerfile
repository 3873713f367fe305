# syntax=docker/dockerfile:1
# The operator's image: docker build -t sts-session-operator:0.1.0 .
#
# Builder: Debian bookworm (glibc 2.36), the same release as the runtime image, so the binary's
# glibc symbols are all there. The binary uses rustls on ring (no OpenSSL), and links only
# glibc and libgcc_s dynamically: hence distroless "cc" (glibc + libgcc), not "static".
# A fully static binary is possible with the musl target (see README, "Install").
#
# The base images are build arguments whose defaults are the real ones: `docker build .` uses
# them. (The tests build this file unchanged with local stand-ins: hack/build-image.sh.)
ARG RUST_VERSION=1.95
ARG BUILDER_IMAGE=rust:${RUST_VERSION}-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0

# 1. Dependencies only, from the manifests and the lockfile: this layer is rebuilt only when
#    they change. Stub sources stand in for the crate and for the test-support workspace member
#    (never compiled here, but cargo needs every member's manifest to read the workspace).
COPY Cargo.toml Cargo.lock ./
COPY tests/testkit/Cargo.toml tests/testkit/Cargo.toml
RUN mkdir -p src tests/testkit/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs tests/testkit/src/lib.rs \
 && cargo build --release --locked --bin sts-session-operator \
 && rm -rf src

# 2. The operator itself. COPY keeps the files' own modification times, which may be older
#    than the stubs' build: touch them so cargo rebuilds the crate instead of reusing the stub.
COPY src ./src
RUN find src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --bin sts-session-operator \
 && install -D -m 0755 target/release/sts-session-operator /out/sts-session-operator

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="sts-session-operator" \
      org.opencontainers.image.description="Keeps AWS STS session credentials fresh in Kubernetes Secrets" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/sts-session-operator /usr/local/bin/sts-session-operator
# distroless "nonroot" = 65532; numeric, so runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sts-session-operator"]
