#!/usr/bin/env bash
# Builds the static netpol-probe (the binary the image ships) and checks it: no program
# interpreter, no shared libraries, and within the 2.5 MB budget. Prints the path and size.
#
#   bash probe-image/build-static.sh                          # glibc with crt-static (default)
#   TARGET=x86_64-unknown-linux-musl bash probe-image/build-static.sh   # what the image uses
#
# `--target` keeps crt-static away from build scripts and proc-macros, which run on the host.
set -euo pipefail
cd "$(dirname "$0")/.."

budget=2500000
target=${TARGET:-x86_64-unknown-linux-gnu}
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked -q -p netpol-probe --bin netpol-probe --profile probe --target "$target"

bin="target/$target/probe/netpol-probe"
# NB: capture first; `readelf | grep -q` under pipefail can fail on SIGPIPE and look "static".
headers=$(readelf -lW "$bin")
dynamic=$(readelf -dW "$bin")
if grep -q 'INTERP' <<<"$headers"; then
    echo "FAIL: $bin is dynamically linked (it has a program interpreter)" >&2
    exit 1
fi
if grep -q '(NEEDED)' <<<"$dynamic"; then
    echo "FAIL: $bin needs shared libraries:" >&2
    grep '(NEEDED)' <<<"$dynamic" >&2
    exit 1
fi
size=$(stat -c %s "$bin")
if [ "$size" -gt "$budget" ]; then
    echo "FAIL: $bin is $size bytes, over the budget of $budget" >&2
    exit 1
fi
"$bin" --version >/dev/null
echo "ok: $bin is static, $size bytes (budget $budget)"
