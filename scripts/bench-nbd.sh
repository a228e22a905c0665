#!/usr/bin/env bash
# NBD serving benchmark (BENCHMARKS.md, "NBD serving"): vdisk serve and the
# peers of ../shared/bench (qemu-nbd raw/qcow2, nbdkit file/memory), one
# after another in the same run, with the same fio jobs
# (../shared/bench/bench-nbd.sh: 1 MiB sequential read/write QD16, 4 KiB
# random read/write QD16, median of REPS interleaved runs).
#
# Usage: scripts/bench-nbd.sh [SERVERS...]
#   servers: vdisk-tcp vdisk-unix qnbd-raw-tcp qnbd-qcow2-tcp kit-file-tcp
#            kit-file-unix kit-mem-tcp ... (default: vdisk-tcp kit-file-tcp
#            kit-mem-tcp qnbd-raw-tcp qnbd-qcow2-tcp vdisk-unix kit-file-unix)
# Env: REPS (3), RUNTIME (10 s), NBD_SIZE (2G), BENCH_DIR (/var/tmp),
#      plus anything bench-nbd.sh takes. Results: one summary per server
#      under /tmp/vdisk-bench/bench-nbd/, and a ratio table at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED_BENCH:-$(cd ../shared/bench && pwd)}
SERVERS=${*:-"vdisk-tcp kit-file-tcp kit-mem-tcp qnbd-raw-tcp qnbd-qcow2-tcp vdisk-unix kit-file-unix"}
export NBD_SIZE=${NBD_SIZE:-2G}
OUT=${OUTDIR:-/tmp/vdisk-bench/bench-nbd}
export OUTDIR=$OUT
cargo build --release --quiet --bin vdisk
V=$PWD/target/release/vdisk
base=${BENCH_DIR:-/var/tmp}
work=$(mktemp -d "$base/vdisk-nbd-bench.XXXXXX")
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

for s in $SERVERS; do
  case "$s" in
    vdisk-tcp|vdisk-unix)
      rm -rf "$work/store"
      "$V" --dir "$work/store" --no-progress create bench --size "$NBD_SIZE"
      "$V" --dir "$work/store" serve --listen 127.0.0.1:10815 --socket "$work/nbd.sock" 2>"$work/serve.log" &
      pid=$!
      for _ in $(seq 100); do [ -S "$work/nbd.sock" ] && break; sleep 0.1; done
      if [ "$s" = vdisk-tcp ]; then uri=nbd://127.0.0.1:10815/bench
      else uri="nbd+unix:///bench?socket=$work/nbd.sock"; fi
      LABEL=$s "$SHARED/bench-nbd.sh" "$uri"
      kill "$pid"; wait "$pid" || true; pid=
      ;;
    *)
      ONLY=$s "$SHARED/nbd-peers.sh" clean >/dev/null
      ONLY=$s "$SHARED/nbd-peers.sh" start >/dev/null
      LABEL=$s "$SHARED/bench-nbd.sh" "$(ONLY=$s "$SHARED/nbd-peers.sh" uri "$s")"
      ONLY=$s "$SHARED/nbd-peers.sh" clean >/dev/null
      ;;
  esac
  echo
done

python3 - "$OUT" $SERVERS <<'PY'
import sys, os, re
out, servers = sys.argv[1], sys.argv[2:]
rows = {}
for s in servers:
    p = os.path.join(out, s, 'summary.txt')
    if not os.path.exists(p): continue
    for line in open(p):
        m = re.match(r'(seq-read|seq-write|rand-read|rand-write)\s+(\d+)', line)
        if m: rows.setdefault(m.group(1), {})[s] = float(m.group(2))
def ref(kind):
    return {'tcp': 'kit-file-tcp', 'unix': 'kit-file-unix'}[kind]
print('job         ' + ''.join(f'{s:>15}' for s in servers))
for job in ['seq-read', 'seq-write', 'rand-read', 'rand-write']:
    r = rows.get(job, {})
    print(f'{job:<12}' + ''.join(f'{r.get(s, 0):>15.0f}' for s in servers))
for v in [s for s in servers if s.startswith('vdisk-')]:
    kind = v.split('-')[1]
    for peer in [ref(kind), 'kit-mem-' + kind, 'qnbd-raw-' + kind]:
        if peer not in servers: continue
        ratios = ' '.join(f"{job}={rows[job][v] / rows[job][peer]:.2f}"
                          for job in ['seq-read', 'seq-write', 'rand-read', 'rand-write']
                          if rows.get(job, {}).get(peer))
        print(f'{v} / {peer}: {ratios}')
PY
