#!/usr/bin/env bash
# NBD serving benchmark (BENCHMARKS.md, "NBD serving"): `vdisk serve` and
# the peers of ../shared/bench (qemu-nbd on raw and qcow2, nbdkit file and
# memory), all running at once, measured with the fio jobs of
# ../shared/bench/bench-nbd.sh (fio's nbd engine, one connection: 1 MiB
# sequential read/write at QD16, 4 KiB random read/write at QD16, time
# based), *interleaved*: each repetition runs every job on every server
# before the next repetition, so machine noise and drift fall on all
# servers alike. Medians of REPS, then ratios vdisk / peer, then the CPU
# each request cost (medians): the server process, the client (fio's own
# account) and the kernel's interrupt and softirq time (TCP over loopback
# is mostly processed there, on whichever side's CPU). Throughput moves
# 10-20 % with this machine's load; CPU per request moves much less and
# says which side a difference comes from.
#
# Usage: scripts/bench-nbd.sh [SERVERS...]
#   servers: vdisk-tcp vdisk-unix, vdiskb-tcp vdiskb-unix (a second vdisk
#   binary, VDISK_B, on its own store: A/B comparisons of two builds in one
#   run) and the names of nbd-peers.sh
#   (default: vdisk-tcp kit-file-tcp kit-mem-tcp qnbd-raw-tcp qnbd-qcow2-tcp)
# Env: REPS (5), RUNTIME (10 s), RAMP (1 s), QD (16), SEQ_QD (16),
#      NBD_SIZE (2G), BENCH_DIR (/var/tmp), OUTDIR (/tmp/vdisk-bench/nbd-interleaved),
#      JOBS (which jobs, default "seq-read seq-write rand-read rand-write"),
#      VDISK_B (path of the second vdisk binary for vdiskb-*),
#      SYNC_BETWEEN (1: `sync` after every job, outside its time; 0: not)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED_BENCH:-$(cd ../shared/bench && pwd)}
SERVERS=${*:-"vdisk-tcp kit-file-tcp kit-mem-tcp qnbd-raw-tcp qnbd-qcow2-tcp"}
export NBD_SIZE=${NBD_SIZE:-2G}
REPS=${REPS:-5}
RUNTIME=${RUNTIME:-10}
RAMP=${RAMP:-1}
QD=${QD:-16}
SEQ_QD=${SEQ_QD:-16}
SYNC_BETWEEN=${SYNC_BETWEEN:-1}
OUT=${OUTDIR:-/tmp/vdisk-bench/nbd-interleaved}
command -v fio >/dev/null || { echo "fio not installed (apt-get install -y fio)" >&2; exit 1; }
cargo build --release --quiet --bin vdisk
V=$PWD/target/release/vdisk
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/vdisk-nbd-bench.XXXXXX")
JOBS=${JOBS:-"seq-read seq-write rand-read rand-write"}
vpid=
bpid=
peers=()
cleanup() {
  [ -n "$vpid" ] && kill "$vpid" 2>/dev/null && wait "$vpid" 2>/dev/null
  [ -n "$bpid" ] && kill "$bpid" 2>/dev/null && wait "$bpid" 2>/dev/null
  [ ${#peers[@]} -gt 0 ] && ONLY="${peers[*]}" "$SHARED/nbd-peers.sh" clean >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$OUT"
mkdir -p "$OUT"

uri_of() {
  case "$1" in
    vdisk-tcp) echo nbd://127.0.0.1:10815/bench ;;
    vdisk-unix) echo "nbd+unix:///bench?socket=$work/nbd.sock" ;;
    vdiskb-tcp) echo nbd://127.0.0.1:10816/bench ;;
    vdiskb-unix) echo "nbd+unix:///bench?socket=$work/nbd-b.sock" ;;
    *) ONLY=$1 "$SHARED/nbd-peers.sh" uri "$1" ;;
  esac
}

# start_vdisk BIN STORE PORT SOCK LOG: one image "bench", served in the
# background (its pid in $started) and waited for until its socket exists.
start_vdisk() {
  "$1" --dir "$2" --no-progress create bench --size "$NBD_SIZE"
  "$1" --dir "$2" serve --listen "127.0.0.1:$3" --socket "$4" 2>"$5" &
  started=$!
  for _ in $(seq 100); do [ -S "$4" ] && break; sleep 0.1; done
}

for s in $SERVERS; do
  case "$s" in
    vdiskb-*)
      if [ -z "$bpid" ]; then
        [ -x "${VDISK_B:-}" ] || { echo "$s needs VDISK_B=path of a vdisk binary" >&2; exit 1; }
        start_vdisk "$VDISK_B" "$work/store-b" 10816 "$work/nbd-b.sock" "$work/serve-b.log"
        bpid=$started
      fi ;;
    vdisk-*)
      if [ -z "$vpid" ]; then
        start_vdisk "$V" "$work/store" 10815 "$work/nbd.sock" "$work/serve.log"
        vpid=$started
      fi ;;
    *) peers+=("$s") ;;
  esac
done
# One clean for all peers: nbd-peers.sh clean deletes every image in its
# directory, including those of peers already serving (nbdkit's file
# plugin opens its file per connection).
if [ ${#peers[@]} -gt 0 ]; then
  ONLY="${peers[*]}" "$SHARED/nbd-peers.sh" clean >/dev/null
  ONLY="${peers[*]}" "$SHARED/nbd-peers.sh" start
fi

common=(--ioengine=nbd --numjobs=1 --group_reporting --output-format=json)
# The pid of a server, for its CPU time.
pid_of() {
  case "$1" in
    vdisk-*) echo "$vpid" ;;
    vdiskb-*) echo "$bpid" ;;
    *) cat "${PEERS_NBD_DIR:-/tmp/vdisk-bench/nbd}/$1.pid" 2>/dev/null || echo 0 ;;
  esac
}
# Clock ticks used by a process (user + system), and by the kernel's
# interrupt and softirq work on all CPUs.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
irq_ticks() { awk '/^cpu /{print $7 + $8}' /proc/stat; }
job() { # server name rw bs qd
  local pid s0 i0
  pid=$(pid_of "$1")
  s0=$(ticks "$pid") i0=$(irq_ticks)
  fio --name="$2" "${common[@]}" --uri="$(uri_of "$1")" --rw="$3" --bs="$4" --iodepth="$5" \
      --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --output="$OUT/$1.$2.json"
  echo "$(($(ticks "$pid") - s0)) $(($(irq_ticks) - i0)) $(getconf CLK_TCK)" >"$OUT/$1.$2.cpu"
  # The pages this job dirtied are written back before the next job, so
  # their writeback does not run during another server's job: vdisk
  # flushes when a client disconnects, the peers leave it to the kernel,
  # and either would otherwise slow whichever server comes next.
  [ "$SYNC_BETWEEN" = 1 ] && sync
  return 0
}

echo "# prefill (one full 1 MiB write pass per server, so reads are of written data)"
for s in $SERVERS; do
  fio --name=prefill "${common[@]}" --uri="$(uri_of "$s")" --rw=write --bs=1M \
      --iodepth="$SEQ_QD" --size="$NBD_SIZE" --output="$OUT/$s.prefill.json"
done
# Every image written back before the timed jobs: otherwise the writeback
# of the prefills (NBD_SIZE per server) runs during the first repetition
# and lands on whichever server is being measured then.
sync
for r in $(seq "$REPS"); do
  echo "# repetition $r of $REPS (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  for j in $JOBS; do
    case "$j" in
      seq-read) args=(read 1M "$SEQ_QD") ;;
      seq-write) args=(write 1M "$SEQ_QD") ;;
      rand-read) args=(randread 4k "$QD") ;;
      rand-write) args=(randwrite 4k "$QD") ;;
      *) echo "unknown job $j" >&2; exit 1 ;;
    esac
    for s in $SERVERS; do job "$s" "$j.$r" "${args[@]}"; done
  done
done

RUNTIME=$RUNTIME RAMP=$RAMP python3 - "$OUT" "$JOBS" $SERVERS <<'PY'
import glob, json, os, statistics, sys
out, wanted, servers = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
def fio_job(p):
    """fio's job and the direction it moved data in."""
    t = open(p).read()
    j = json.loads(t[t.index('{'):])['jobs'][0]
    return j, (j['read'] if j['read']['io_bytes'] else j['write'])
def load(p):
    _, d = fio_job(p)
    return d['bw'] / 1024.0, d['iops']
jobs = [('seq-read', 0, 'MiB/s'), ('seq-write', 0, 'MiB/s'), ('rand-read', 1, 'IOPS'), ('rand-write', 1, 'IOPS')]
jobs = [j for j in jobs if j[0] in wanted]
med = {}
print(f"{'job':<11}" + ''.join(f"{s:>16}" for s in servers))
for job, k, unit in jobs:
    row = []
    for s in servers:
        vals = [load(p)[k] for p in sorted(glob.glob(os.path.join(out, f"{s}.{job}.*.json")))]
        med[(job, s)] = statistics.median(vals)
        row.append(f"{med[(job, s)]:>10.0f} {unit:<5}")
    print(f"{job:<11}" + ''.join(row))
for v in [s for s in servers if s.startswith('vdisk')]:
    kind = v.split('-')[1]
    for peer in [s for s in servers if s != v and s.endswith(kind)]:
        print(f"{v} / {peer}: " + '  '.join(f"{job} {med[(job, v)] / med[(job, peer)]:.2f}" for job, _, _ in jobs))

# CPU per request, in microseconds. fio's own CPU covers its measured
# time; the server's and the interrupt time cover the whole fio run, ramp
# included, so they are divided by the requests of that whole time
# (rate x (runtime + ramp)), which assumes the ramp ran at the measured rate.
span = float(os.environ['RUNTIME']) + float(os.environ['RAMP'])
def cpu(p):
    j, d = fio_job(p)
    iops = d['iops']
    if not iops:
        return None
    client = (j['usr_cpu'] + j['sys_cpu']) / 100 / iops * 1e6
    try:
        srv, irq, hz = (float(x) for x in open(p[:-5] + '.cpu').read().split())
    except (OSError, ValueError):
        return None
    per = 1e6 / hz / (iops * span)
    return srv * per, client, irq * per
print()
print("CPU per request, microseconds (server / client / irq+softirq), medians:")
print(f"{'job':<11}" + ''.join(f"{s:>20}" for s in servers))
for job, _, _ in jobs:
    row = []
    for s in servers:
        vals = [c for c in (cpu(p) for p in sorted(glob.glob(os.path.join(out, f"{s}.{job}.*.json")))) if c]
        if vals:
            meds = [statistics.median(v[i] for v in vals) for i in range(3)]
            row.append(f"{'/'.join(f'{m:.1f}' if m < 20 else f'{m:.0f}' for m in meds):>20}")
        else:
            row.append(f"{'-':>20}")
    print(f"{job:<11}" + ''.join(row))
PY
