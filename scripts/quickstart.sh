#!/usr/bin/env bash
# vdisk's main job on the embedded default store: import a disk, snapshot,
# clone, write to the clone, export and verify, report usage and changes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin vdisk
vdisk() { ./target/release/vdisk "$@"; }
export VDISK_DIR="${VDISK_DIR:-$(mktemp -d /tmp/vdisk-quickstart.XXXXXX)}"
work=$(mktemp -d /tmp/vdisk-quickstart-files.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "data directory: $VDISK_DIR"

# A 64 MiB "base image": random data in a few places, zeros elsewhere.
python3 - "$work/base.raw" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.truncate(64 << 20)
    for off in (0, 5 << 20, 17 << 20, 40 << 20):
        f.seek(off); f.write(os.urandom(1 << 20))
PY
vdisk import "$work/base.raw" rbd/base
vdisk snap create rbd/base@golden
vdisk snap protect rbd/base@golden
vdisk clone rbd/base@golden rbd/vm-101-disk-0
vdisk export rbd/vm-101-disk-0 "$work/vm.raw"
cmp "$work/base.raw" "$work/vm.raw" && echo "clone reads its parent: identical"
vdisk snap create rbd/vm-101-disk-0@before
vdisk bench rbd/vm-101-disk-0 --io-type write --io-size 4K --io-threads 4 --io-total 4M --io-pattern rand
vdisk export rbd/vm-101-disk-0@before "$work/before.raw"
cmp "$work/base.raw" "$work/before.raw" && echo "snapshot @before unchanged by later writes"
vdisk export rbd/base@golden "$work/golden.raw"
cmp "$work/base.raw" "$work/golden.raw" && echo "parent snapshot unchanged by the clone's writes"
vdisk ls -l
vdisk info rbd/vm-101-disk-0
vdisk du
echo "changed since @before:"
vdisk diff rbd/vm-101-disk-0 --from-snap before >"$work/diff.txt"
head -5 "$work/diff.txt"
vdisk check

# The main job: serve the disks over NBD. Other vdisk commands go through the
# daemon's management API while it runs.
sock="$VDISK_DIR/nbd.sock"
# (the binary itself in the background, not the shell function: $! must be
# the daemon's pid)
./target/release/vdisk serve --listen none --socket "$sock" 2>"$work/serve.log" &
serve=$!
trap 'kill $serve 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -S "$VDISK_DIR/api.sock" ] && break; sleep 0.1; done
echo "serving on $sock (clients: nbd+unix:///rbd/IMAGE?socket=$sock)"
uri="nbd+unix:///rbd/vm-101-disk-0?socket=$sock"
if command -v qemu-io >/dev/null; then
  qemu-io -f raw -c "write -P 0x5a 1M 64k" "$uri" >/dev/null
  echo "qemu-io wrote 64 KiB at 1 MiB through NBD"
fi
# Taken while served: a barrier in the I/O path, no copy.
vdisk snap create rbd/vm-101-disk-0@served
if command -v qemu-img >/dev/null; then
  qemu-img info "nbd+unix:///rbd/vm-101-disk-0@served?socket=$sock" >"$work/info.txt"
  head -3 "$work/info.txt"
fi
if command -v nbdinfo >/dev/null; then
  echo "allocation of the snapshot export (from the object map):"
  nbdinfo --map "nbd+unix:///rbd/vm-101-disk-0@served?socket=$sock" >"$work/map.txt"
  head -5 "$work/map.txt"
fi
vdisk status
kill -TERM $serve && wait $serve
echo "daemon stopped (every image flushed)"
echo "quickstart done: data directory $VDISK_DIR"
