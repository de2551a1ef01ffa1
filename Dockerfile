# The netpol-verify image: the orchestrator, to run in a cluster (a CronJob:
# docs/cronjob.yaml). One static binary in an empty image, run as nobody.
#
#   docker build -t netpol-verify .
#
# In a pod it connects with its service account (in-cluster config) and needs the
# permissions of docs/rbac.yaml. The probe pods it starts use the probe image
# (probe-image/Dockerfile; `netpol-verify images` names it, `--image` overrides it).

FROM rust:1.95-bookworm AS build
ARG TARGETARCH
WORKDIR /src
RUN case "${TARGETARCH:-amd64}" in \
        amd64) echo x86_64-unknown-linux-musl > /target ;; \
        arm64) echo aarch64-unknown-linux-musl > /target ;; \
        *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
    && rustup target add "$(cat /target)"
COPY . .
# `--target` keeps crt-static away from build scripts and proc-macros, which run on the host.
RUN RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --locked --release -p netpol-verify --bin netpol-verify --target "$(cat /target)" \
    && cp "target/$(cat /target)/release/netpol-verify" /netpol-verify

FROM scratch
COPY --from=build /netpol-verify /netpol-verify
# Pod Security "restricted": not root, no shell, nothing written to the root filesystem.
USER 65534:65534
ENTRYPOINT ["/netpol-verify"]
CMD ["--help"]
