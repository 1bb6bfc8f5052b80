# syntax=docker/dockerfile:1
#
# One image, both binaries:
#   /usr/local/bin/bgpersist-writer    the entrypoint: writer Deployments rendered
#                                      by the operator run the image as is
#   /usr/local/bin/bgpersist-operator  the Helm chart sets it as the command
#
#   docker build -t bgpersist:0.1.0 .
#
# Runs as UID/GID 65532, the user the chart and the rendered writer pods ask
# for (runAsNonRoot, readOnlyRootFilesystem: nothing is written outside /tmp).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# librdkafka is built from source by rdkafka-sys (cmake) against OpenSSL and
# zlib: the packages hack/deps installs. Versions follow the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake g++ make pkg-config libssl-dev libcurl4-openssl-dev libsasl2-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Stripped release binaries; registry and target are build caches, so the
# binaries are copied out of the cache mount within the same step.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin bgpersist-operator --bin bgpersist-writer \
 && install -D -m 0755 target/release/bgpersist-operator /out/bgpersist-operator \
 && install -D -m 0755 target/release/bgpersist-writer /out/bgpersist-writer

FROM debian:${DEBIAN_RELEASE}-slim
# Runtime libraries of both binaries (ldd: libssl3, libcrypto3, zlib, libgcc,
# glibc) and CA roots for the cloud APIs.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# 9090: a writer's /metrics, /healthz, /readyz; 8080: the operator's.
EXPOSE 9090 8080
ENTRYPOINT ["/usr/local/bin/bgpersist-writer"]
