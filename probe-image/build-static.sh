#!/usr/bin/env bash
# Builds the static netpol-probe (the binary the image ships) and checks it: statically linked,
# and within the 2.5 MB budget. Prints the path and size.
#
# glibc with crt-static here; the image build may use musl instead (probe-image/Dockerfile).
# `--target` keeps crt-static away from build scripts and proc-macros, which run on the host.
set -euo pipefail
cd "$(dirname "$0")/.."

budget=2500000
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked -q -p netpol-probe --bin netpol-probe --profile probe --target "$target"

bin="target/$target/probe/netpol-probe"
size=$(stat -c %s "$bin")
if readelf -l "$bin" | grep -q 'INTERP'; then
    echo "FAIL: $bin is dynamically linked (it has a program interpreter)" >&2
    exit 1
fi
if [ "$size" -gt "$budget" ]; then
    echo "FAIL: $bin is $size bytes, over the budget of $budget" >&2
    exit 1
fi
"$bin" --version >/dev/null
echo "ok: $bin is static, $size bytes (budget $budget)"
