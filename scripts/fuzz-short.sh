#!/usr/bin/env bash
# Short fuzzing for CI: builds every cargo-fuzz package under crates/*/fuzz,
# then runs each of their targets for FUZZ_SECONDS (default 20) of libFuzzer,
# the targets in parallel (one libFuzzer process each). Fails if any target
# crashes (panic, sanitizer report, timeout, out of memory) or cannot run,
# printing the crash artifact and the command that replays it; fails too if
# no target ran at all. Ends with one line: `fuzz: N passed, M failed`.
#
# cargo-fuzz needs nightly-only flags; RUSTC_BOOTSTRAP=1 lets stable accept
# them. Environment:
#   FUZZ_SECONDS     fuzzing time per target (default 20)
#   FUZZ_TARGET_DIR  shared cargo target dir (default target/fuzz): libFuzzer
#                    and the dependencies common to the packages build once;
#                    cache it in CI to skip the first build
#   FUZZ_DIRS        fuzz packages to run (default: every crates/*/fuzz)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=${FUZZ_SECONDS:-20}
case $seconds in
  '' | *[!0-9]*) echo "fuzz: FUZZ_SECONDS must be a whole number of seconds, not '$seconds'" >&2; exit 2 ;;
esac
export RUSTC_BOOTSTRAP=1
target_dir=${FUZZ_TARGET_DIR:-$root/target/fuzz}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac
logs=$target_dir/logs
mkdir -p "$logs"
start=$SECONDS

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

# Build every package first, so FUZZ_SECONDS is fuzzing time only.
targets=() # "crate-dir target" pairs
for fuzz_dir in ${FUZZ_DIRS:-crates/*/fuzz}; do
  [ -f "$fuzz_dir/Cargo.toml" ] || continue
  fuzz_dir=$(cd "$fuzz_dir" && pwd)
  crate=$(dirname "$fuzz_dir")
  name=${crate#"$root"/}
  log=$logs/build-${name//\//_}.log
  echo "fuzz: building $name/fuzz"
  if ! (cd "$crate" && cargo fuzz build --target-dir "$target_dir") >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: building $name/fuzz failed (log: $log)"
    echo "fuzz: 0 passed, 1 failed"
    exit 1
  fi
  for t in $(cd "$crate" && cargo fuzz list); do
    targets+=("$crate $t")
  done
done
if [ ${#targets[@]} -eq 0 ]; then
  # Nothing fuzzed is not a pass.
  echo "fuzz: no fuzz target found under ${FUZZ_DIRS:-crates/*/fuzz}"
  echo "fuzz: 0 passed, 1 failed"
  exit 1
fi
echo "fuzz: built in $((SECONDS - start)) s; fuzzing ${#targets[@]} target(s) for ${seconds} s each"

pids=()
for entry in "${targets[@]}"; do
  read -r crate t <<<"$entry"
  name=${crate#"$root"/}/$t
  log=$logs/run-${name//\//_}.log
  # -timeout: an input that takes this long counts as a crash (a hang).
  (cd "$crate" && exec cargo fuzz run --target-dir "$target_dir" "$t" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1) >"$log" 2>&1 &
  pids+=($!)
done

passed=0
failed=0
for i in "${!targets[@]}"; do
  read -r crate t <<<"${targets[$i]}"
  name=${crate#"$root"/}/$t
  log=$logs/run-${name//\//_}.log
  if wait "${pids[$i]}"; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "fuzz: $name: ok, ${execs:-?} inputs in ${seconds} s"
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "fuzz: $name: FAILED"
    # What went wrong (panic, sanitizer or libFuzzer report), else the end.
    excerpt=$(grep -m 1 -A 12 -E 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|out-of-memory|ALARM: working on the last Unit' "$log" || true)
    if [ -n "$excerpt" ]; then
      printf '%s\n' "$excerpt"
      grep -m 1 '^SUMMARY:' "$log" || true
    else
      tail -n 40 "$log"
    fi | sed 's/^/    /'
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if [ -n "$artifact" ]; then
      case $artifact in /*) ;; *) artifact=$crate/$artifact ;; esac
      echo "fuzz: $name: crash artifact: $artifact"
      echo "fuzz: $name: replay: (cd ${crate#"$root"/} && RUSTC_BOOTSTRAP=1 cargo fuzz run $t $artifact)"
    else
      echo "fuzz: $name: no crash artifact written (log: $log)"
    fi
  fi
done
echo "fuzz: done in $((SECONDS - start)) s"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
