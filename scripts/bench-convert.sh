#!/usr/bin/env bash
# vdisk convert/import/export against qemu-img convert on
# ../shared/bench/mk-src-qcow2.py's 4 GiB qcow2 (1.5 GiB scattered random
# data, zero-flag and allocated-zero regions). Rows (BENCHMARKS.md "Convert"):
#   qcow2 -> raw file, raw -> qcow2, raw -> compressed qcow2 (zlib),
#   qcow2 -> pool image (vs qemu-img to a raw file), pool image -> qcow2.
#
# The machine is shared and its load moves by the minute, so the commands
# run interleaved: each round runs every command once, in a new order (rows
# in a new order, the commands of a row one after the other), and each vdisk
# row is reported as a speed ratio against its qemu-img row (> 1: vdisk
# faster): of the medians, the median of each round's paired ratio, and of
# the fastest runs.
# vdisk fsyncs file destinations by default; qemu-img convert does not
# (strace shows no fsync/fdatasync): the --no-sync rows compare like for like.
#
#   ROUNDS=5 CROUNDS=3 scripts/bench-convert.sh   # builds vdisk (release) if needed
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-$(cd ../shared/bench 2>/dev/null && pwd || echo /work/shared/bench)}
D=${CONVERT_DIR:-/tmp/vdisk-bench/convert}
V=${VDISK:-$PWD/target/release/vdisk}
mkdir -p "$D"
[ -x "$V" ] || cargo build --release -p vdisk-cli
[ -e "$D/src.qcow2" ] || python3 "$BENCH/mk-src-qcow2.py" "$D/src.qcow2"
[ -e "$D/src.raw" ] || qemu-img convert -f qcow2 -O raw "$D/src.qcow2" "$D/src.raw"
rm -rf "$D/store"
"$V" --dir "$D/store" --no-progress import "$D/src.qcow2" rbd/src
exec python3 - "$D" "$V" "${ROUNDS:-5}" "${CROUNDS:-3}" <<'PY'
import os, random, statistics, subprocess, sys, time
d, v, rounds, crounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
src, raw, st, o = f"{d}/src.qcow2", f"{d}/src.raw", f"{d}/store", f"{d}/out"
vd = f"{v} --no-progress"
rows = [  # (row, name, command, baseline name)
  ("qcow2 → raw", "qemu-img", f"qemu-img convert -f qcow2 -O raw {src} {o}.raw", None),
  ("qcow2 → raw", "vdisk", f"{vd} convert {src} {o}.raw", "qemu-img"),
  ("qcow2 → raw", "vdisk --no-sync", f"{vd} convert {src} {o}.raw --no-sync", "qemu-img"),
  ("raw → qcow2", "qemu-img", f"qemu-img convert -f raw -O qcow2 {raw} {o}.qcow2", None),
  ("raw → qcow2", "vdisk", f"{vd} convert {raw} {o}.qcow2 -O qcow2", "qemu-img"),
  ("raw → qcow2", "vdisk --no-sync", f"{vd} convert {raw} {o}.qcow2 -O qcow2 --no-sync", "qemu-img"),
  ("qcow2 → pool image", "qemu-img (to raw)", f"qemu-img convert -f qcow2 -O raw {src} {o}.raw", None),
  ("qcow2 → pool image", "vdisk import", f"{vd} --dir {st} import {src} rbd/dst{{n}}", "qemu-img (to raw)"),
  ("qcow2 → pool image", "vdisk import --no-sync", f"{vd} --dir {st} import {src} rbd/dst{{n}} --no-sync", "qemu-img (to raw)"),
  ("pool image → qcow2", "qemu-img (qcow2 → qcow2)", f"qemu-img convert -f qcow2 -O qcow2 {src} {o}.qcow2", None),
  ("pool image → qcow2", "vdisk export", f"{vd} --dir {st} export rbd/src {o}.qcow2 -O qcow2", "qemu-img (qcow2 → qcow2)"),
  ("pool image → qcow2", "vdisk export --no-sync", f"{vd} --dir {st} export rbd/src {o}.qcow2 -O qcow2 --no-sync", "qemu-img (qcow2 → qcow2)"),
]
crows = [
  ("raw → qcow2 -c (zlib)", "qemu-img", f"qemu-img convert -f raw -O qcow2 -c {raw} {o}.qcow2", None),
  ("raw → qcow2 -c (zlib)", "vdisk", f"{vd} convert {raw} {o}.qcow2 -c", "qemu-img"),
]
# Imported images are kept until the end: on this machine's journal-less
# ext4, creating files within a minute of deleting many scans past every
# recently deleted inode (kernel find_inode_bit/recently_deleted), which
# would charge one row's cleanup to the next import (~0.5-1 s here).
imported = []
# This machine's kernel runs DAMON with a `pageout` scheme: page cache not
# touched for a while is reclaimed behind the benchmark's back, so a source
# read warm in one round may come from the disk in the next (qemu-img's own
# runs moved 0.6 -> 3.7 s that way). Every command's inputs are read once,
# untimed, right before it: every row reads a warm source.
def warm(cmd):
    files = [f for f in (src, raw) if f in cmd.split()]
    if "rbd/src" in cmd:
        files.append(src_dir)
    for f in files:
        subprocess.run(f"find {f} -type f -exec cat {{}} + > /dev/null", shell=True)
# Outputs are removed, and the page cache of images imported earlier is
# dropped, last, right before the command: this machine is a VM whose
# guest reports free memory to the host (virtio-balloon free page
# reporting, ~2 s after it is freed) and the host takes it back. A command
# that writes its output into such pages has the host fault each one in
# again, at 2-5x the cost (measured, same command alternated: 0.45-1.21 s
# started right after the previous output was removed, 1.24-1.74 s started
# 4 s later). Whether a command met such pages depended on what ran before
# it (an import frees nothing; a long warm-up is a pause). Now every
# command first reuses memory just freed, as on a machine whose RAM is its
# own: the rows measure the tools, not the host's reclaim.
pool = f"{st}/pools/rbd"
# The store holds rbd/src only (made afresh above): its objects' directory.
(src_dir,) = [f"{pool}/{d}" for d in os.listdir(pool)]
# Image directories already handled: rbd/src's (the export row's input,
# kept cached) and those of imports dropped before (clean after `sync`,
# nothing reads them again).
done = set(os.listdir(pool))
def drop_imported():
    for image in set(os.listdir(pool)) - done:
        for name in os.listdir(f"{pool}/{image}"):
            fd = os.open(f"{pool}/{image}/{name}", os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        done.add(image)
def prep(cmd=""):
    subprocess.run("sync", shell=True)
    warm(cmd)
    drop_imported()
    for f in (f"{o}.raw", f"{o}.qcow2"):
        if os.path.exists(f): os.remove(f)
def cleanup():
    prep()
    for name in imported:
        subprocess.run(f"{v} --dir {st} rm {name}", shell=True, capture_output=True)
def measure(rs, n):
    times = {i: [] for i in range(len(rs))}
    groups = {}
    for i, r in enumerate(rs):
        groups.setdefault(r[0], []).append(i)
    for r in range(n):
        # A new order every round (seeded: runs are repeatable): whatever a
        # command leaves behind (fresh page cache, writeback, DAMON's
        # reclaim) then slows a different row each round, not always the
        # same one. The commands of one row run one after the other (in
        # a new order too), so that a vdisk run and the qemu-img run it is
        # compared with meet the same moment of a host whose speed moves
        # by the minute: the paired ratio of each round.
        rng = random.Random(r)
        keys = list(groups)
        rng.shuffle(keys)
        order = []
        for k in keys:
            members = list(groups[k])
            rng.shuffle(members)
            order += members
        for i in order:
            cmd = rs[i][2]
            prep(cmd)
            if "{n}" in cmd:
                imported.append(f"rbd/dst{len(imported)}")
                cmd = cmd.replace("{n}", str(len(imported) - 1))
            t = time.monotonic()
            p = subprocess.run(cmd, shell=True, capture_output=True)
            dt = time.monotonic() - t
            if p.returncode != 0:
                sys.exit(f"failed: {cmd}: {p.stderr.decode()}")
            times[i].append(dt)
        print(f"round {r + 1}/{n} done, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    return times
# Noise here only ever adds time (DAMON, other tenants, the shared disk), so
# the fastest run is reported beside the median, each with its ratio.
def report(rs, times):
    med = {i: statistics.median(t) for i, t in times.items()}
    low = {i: min(t) for i, t in times.items()}
    for i, (row, name, cmd, base) in enumerate(rs):
        ratio = ratio_min = paired = ""
        if base:
            j = next(k for k, x in enumerate(rs) if x[0] == row and x[1] == base)
            ratio = f"{med[j] / med[i]:.2f}×"
            ratio_min = f"{low[j] / low[i]:.2f}×"
            pairs = [b / a for a, b in zip(times[i], times[j])]
            paired = f"{statistics.median(pairs):.2f}×"
        runs = " ".join(f"{t:.2f}" for t in times[i])
        print(f"| {row} | {name} | {med[i]:.2f} s | {ratio} | {paired} | {low[i]:.2f} s | {ratio_min} | {runs} |")
print(f"load before: {os.getloadavg()}", file=sys.stderr)
t1 = measure(rows, rounds)
t2 = measure(crows, crounds)
cleanup()
print("| row | command | median | speed (medians) | speed (paired, median) | fastest | speed (fastest) | runs (s) |\n|---|---|---|---|---|---|---|---|")
report(rows, t1)
report(crows, t2)
PY
