#!/usr/bin/env bash
# Benchmarks of the image engine (BENCHMARKS.md, "Engine" section):
#  1. snapshot create and clone on a 1 GiB and a 1 TiB thin image (ratio of medians)
#  2. `vdisk bench` 4 KiB random writes: fresh image vs right after a snapshot
#  3. raw import/export of a 2 GiB file vs `cp` of the same file
# Usage: scripts/bench-engine.sh [snap|cow|io|all]   (REPS=N, default 5; BENCH_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-5}
what=${1:-all}
cargo build --release --quiet --bin vdisk
V=$PWD/target/release/vdisk
base=${BENCH_DIR:-/var/tmp}
work=$(mktemp -d "$base/vdisk-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
export VDISK_DIR="$work/store"
vd() { "$V" --no-progress "$@"; }
ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ms() { awk -v n="$1" 'BEGIN { printf "%.2f", n / 1e6 }'; }

snap_bench() {
  for size in 1G 1T; do
    vd create "img$size" --size "$size"
    # 64 MiB of data at random offsets in each.
    vd bench "img$size" --io-type write --io-size 1M --io-threads 4 --io-total 64M --io-pattern rand >/dev/null
    : > "$work/snap$size"; : > "$work/clone$size"
    for r in $(seq 1 "$REPS"); do
      t0=$(ns); vd snap create "img$size@s$r"; t1=$(ns)
      echo $((t1 - t0)) >> "$work/snap$size"
    done
    vd snap protect "img$size@s1"
    for r in $(seq 1 "$REPS"); do
      t0=$(ns); vd clone "img$size@s1" "c$size-$r"; t1=$(ns)
      echo $((t1 - t0)) >> "$work/clone$size"
    done
  done
  for op in snap clone; do
    a=$(median < "$work/${op}1G"); b=$(median < "$work/${op}1T")
    printf '%-14s 1 GiB: %8s ms   1 TiB: %8s ms   ratio 1T/1G: %s\n' "$op create" "$(ms "$a")" "$(ms "$b")" \
      "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", b / a }')"
  done
}

ops_of() { sed -nE 's/.*ops\/sec: ([0-9.]+).*/\1/p' | tail -1; }

cow_bench() {
  local size=2G total=${COW_TOTAL:-256M}
  : > "$work/fresh"; : > "$work/cow"
  for r in $(seq 1 "$REPS"); do
    vd create "fresh$r" --size $size
    vd bench "fresh$r" --io-type write --io-size 4K --io-threads 16 --io-total "$total" --io-pattern rand | ops_of >> "$work/fresh"
    vd rm "fresh$r"
    vd create "cow$r" --size $size
    vd bench "cow$r" --io-type write --io-size 1M --io-threads 4 --io-total $size --io-pattern seq >/dev/null
    vd snap create "cow$r@s"
    vd bench "cow$r" --io-type write --io-size 4K --io-threads 16 --io-total "$total" --io-pattern rand | ops_of >> "$work/cow"
    vd snap purge "cow$r"; vd rm "cow$r"
  done
  a=$(median < "$work/fresh"); b=$(median < "$work/cow")
  printf '4K randwrite fresh: %s ops/s   after snapshot (all COW): %s ops/s   ratio: %s\n' "$a" "$b" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", b / a }')"
}

io_bench() {
  local f="$work/disk.raw"
  head -c 2G /dev/urandom > "$f"; sync
  : > "$work/cp"; : > "$work/imp"; : > "$work/exp"
  for r in $(seq 1 "$REPS"); do
    t0=$(ns); cp "$f" "$work/copy.raw"; sync "$work/copy.raw"; t1=$(ns); rm -f "$work/copy.raw"
    echo $((t1 - t0)) >> "$work/cp"
    t0=$(ns); vd import "$f" "imp$r"; t1=$(ns)
    echo $((t1 - t0)) >> "$work/imp"
    t0=$(ns); vd export "imp$r" "$work/out.raw"; t1=$(ns)
    echo $((t1 - t0)) >> "$work/exp"
    cmp "$f" "$work/out.raw"; rm -f "$work/out.raw"; vd rm "imp$r"
  done
  c=$(median < "$work/cp"); i=$(median < "$work/imp"); e=$(median < "$work/exp")
  printf 'cp 2 GiB: %s ms   vdisk import: %s ms (%.2fx cp speed)   vdisk export: %s ms (%.2fx cp speed)\n' \
    "$(ms "$c")" "$(ms "$i")" "$(awk -v c="$c" -v i="$i" 'BEGIN{print c/i}')" "$(ms "$e")" "$(awk -v c="$c" -v e="$e" 'BEGIN{print c/e}')"
}

case $what in
  snap) snap_bench ;;
  cow) cow_bench ;;
  io) io_bench ;;
  all) snap_bench; cow_bench; io_bench ;;
  *) echo "usage: $0 [snap|cow|io|all]" >&2; exit 2 ;;
esac
