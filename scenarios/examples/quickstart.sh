#!/usr/bin/env bash
# netpol-verify in one command, on a fresh machine, as root:
#
#   sudo bash scenarios/examples/quickstart.sh
#
# Installs what is missing (on Debian/Ubuntu: iproute2, nftables, procps, a C linker, curl;
# the Rust toolchain through rustup), builds the tool, and runs it twice against the shop
# example (scenarios/examples/shop.yaml) in a lab — a Kubernetes cluster emulated on this
# host, no cluster needed: first with a CNI that enforces nothing, as EKS and AKS do by default
# (not-enforced findings), then with one that enforces (no findings). Each lab is removed after.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ $(id -u) -ne 0 ]]; then
    echo "the lab builds network namespaces: run this as root (sudo bash $0)" >&2
    exit 2
fi
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
command -v sysctl >/dev/null || missing+=(procps)
command -v cc >/dev/null || missing+=(build-essential)
command -v curl >/dev/null || command -v cargo >/dev/null || missing+=(curl ca-certificates)
if ((${#missing[@]})); then
    if command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "install ${missing[*]} with your package manager, then run this again" >&2
        exit 2
    fi
fi
if ! command -v cargo >/dev/null && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
    echo "installing the Rust toolchain with rustup (https://rustup.rs) for $(id -un)..."
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --no-modify-path
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
    echo "needs the Rust toolchain (1.95 or newer): https://rustup.rs — then run this again" >&2
    echo "(installed for your user? keep your PATH: sudo env \"PATH=\$PATH\" bash $0)" >&2
    exit 2
fi

cargo build --workspace --quiet
verify=target/debug/netpol-verify

echo
echo "=== 1/2: a CNI that enforces nothing (--cni none): expect not-enforced findings ==="
echo
status=0
"$verify" lab run --from-file scenarios/examples/shop.yaml --cni none || status=$?
echo "(exit status $status: 1 means findings)"

echo
echo "=== 2/2: a CNI that enforces (--cni enforcing): expect every check to pass ==="
echo "(the two UDP checks no stored policy gives a positive control get one from a control policy"
echo " the run adds after its checks and removes: see docs/run.md, Control policies)"
echo
status=0
"$verify" lab run --from-file scenarios/examples/shop.yaml --cni enforcing || status=$?
echo "(exit status $status: 0 all pass)"
[[ $status == 0 ]]
