#!/usr/bin/env bash
# The test command (README "Run the tests"): installs what the tests need on Debian, as root,
# then runs every test of the workspace. On a fresh machine with only the toolchains:
#
#   sudo bash scripts/test.sh            # extra arguments go to `cargo test`
#
# Needs root: the lab tests build network namespaces. Needs Go (1.26) and the Go module proxy:
# the real-apiserver tests run kube-apiserver, etcd, kube-controller-manager and kube-scheduler
# built from their modules (tests/apiserver/), once, in about 8 minutes; reruns reuse them.
# Installs with apt (iproute2, nftables, procps, util-linux, binutils, python3-pip) and pip
# (kubernetes-validate, the independent schema checker of the dry-run manifests) only what is
# missing. kubectl (1.32 on our
# machines) is used as it is found.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: the tests build network namespaces: run it as root (sudo bash scripts/test.sh)" >&2
    exit 2
fi

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "$@"
}

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v sysctl >/dev/null 2>&1 || missing+=(procps)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v readelf >/dev/null 2>&1 || missing+=(binutils)
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi

validator=1.37.0
if ! command -v kubernetes-validate >/dev/null 2>&1; then
    command -v pip3 >/dev/null 2>&1 || apt_install python3-pip
    export PIP_ROOT_USER_ACTION=ignore
    pip3 install --quiet --disable-pip-version-check "kubernetes-validate==$validator" \
        || pip3 install --quiet --disable-pip-version-check --break-system-packages "kubernetes-validate==$validator"
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
    hash -r
fi
kubernetes-validate --version
if ! command -v kubectl >/dev/null 2>&1; then
    echo "scripts/test.sh: the kubectl smoke tests need kubectl (1.27 or newer) on PATH" >&2
    exit 2
fi

# The real control plane the tests/real_apiserver.rs tests start (cached in target/apiserver/).
if ! command -v go >/dev/null 2>&1; then
    echo "scripts/test.sh: the real-apiserver tests build kube-apiserver and etcd with Go (1.26 or newer): install Go (https://go.dev/dl/) and run again" >&2
    exit 2
fi
bash tests/apiserver/build.sh >/dev/null

# The probe as the image ships it: static, within its size budget.
bash probe-image/build-static.sh
cargo test --workspace "$@"
