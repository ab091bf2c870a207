# syntax=docker/dockerfile:1
# The pitlake server image: `pitlake serve` on 50051 (Flight SQL) and 8080 (REST API, health,
# readiness, metrics), as a non-root user, with nothing but the binary, the C runtime and CA certificates.
#
#   docker build -t pitlake:0.1.0 .
#
# No secret is baked in: the auth file, the signing key and the TLS key are mounted at run time
# (deploy/kubernetes, docs/operations.md "Containers and Kubernetes").
#
# Docker's HEALTHCHECK needs a program in the image that can ask /healthz, and this image has
# only pitlake (no shell, no curl); orchestrators probe /healthz and /readyz themselves.
#checkov:skip=CKV_DOCKER_2:no HTTP client or shell in the distroless runtime to run a HEALTHCHECK; Kubernetes probes /healthz and /readyz on 8080 (deploy/kubernetes/deployment.yaml)

# ---- build: the locked dependencies, the release profile, the one binary.
FROM rust:1.95.0-slim-bookworm AS builder
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo reads every target the manifest declares, so their entry files come along (not built).
COPY tests/slt.rs ./tests/slt.rs
COPY tests/it ./tests/it
COPY benches/kernel.rs ./benches/kernel.rs
RUN cargo build --release --locked --bin pitlake \
    && install -D -m 0755 target/release/pitlake /out/pitlake \
    && install -d -m 0700 /out/spill

# ---- run: distroless (glibc, CA certificates, no shell), user 65532 (`nonroot`).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/pitlake /usr/local/bin/pitlake
# Where operators spill beyond the memory limit, the user's own (Kubernetes mounts an emptyDir
# over it, the root filesystem being read-only there).
COPY --from=builder --chown=65532:65532 /out/spill /var/lib/pitlake/spill
USER 65532:65532
ENV PITLAKE_SPILL_DIR=/var/lib/pitlake/spill
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/pitlake"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--http-listen", "0.0.0.0:8080"]
