#!/usr/bin/env bash
# The test command: installs what the tests need, then runs formatting,
# lints and every test of the workspace. Used by the README and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

# sfdisk and sgdisk live in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
# Tests that need a tool fail (rather than skip) when it is missing.
export VDISK_REQUIRE_TOOLS=1
need=()
for tool in qemu-img:qemu-utils qemu-io:qemu-utils nbdinfo:libnbd-bin nbdcopy:libnbd-bin \
            python3:python3 sfdisk:fdisk sgdisk:gdisk nbdkit:nbdkit qemu-nbd:qemu-utils; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  fi
fi
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked 2>&1 | tee /tmp/vdisk-test.log
echo "== short fuzzing (FUZZ_SECONDS=${FUZZ_SECONDS:-20} per target)"
./scripts/fuzz-short.sh 2>&1 | tee /tmp/vdisk-fuzz.log
# One closing line for the whole run (cargo's test results plus fuzz targets).
awk '/^test result:|^fuzz:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "vdisk: %d passed, %d failed\n", p, f }' /tmp/vdisk-test.log /tmp/vdisk-fuzz.log
