#!/bin/sh
# Build the libFuzzer targets (clang, ASan + UBSan) and run each for a bounded
# time, starting from its committed seeds in tests/fuzz/corpus/<target>/.
# Fails if any target finds a crash, a sanitizer report, a leak, a timeout or
# a failed check; the input that triggered it is kept in the work directory.
#
#   tools/run-fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60, all)
#
# Targets whose library code differs by kernel set (all but npy) spend half
# their seconds on this CPU's set and a quarter each on ATTN_KERNELS=sse2
# (products by cblas_sgemm, no decode kernels) and avx2 (8-wide kernels),
# over one shared work corpus: the total time stays SECONDS per target.
#
# Environment: CC (default clang-14), ATTN_FUZZ_BUILD (default build/fuzz),
# ATTN_FUZZ_LANES (fuzzers run at once, default 2),
# ATTN_FUZZ_JOBS (parallel build jobs, default 2).
# To grow the committed seeds from a run (keeps only inputs adding coverage):
#   build/fuzz/tests/fuzz/fuzz_sdpa -merge=1 tests/fuzz/corpus/sdpa build/fuzz/work/sdpa/corpus
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
[ $# -gt 0 ] && shift
build=${ATTN_FUZZ_BUILD:-$root/build/fuzz}
cc=${CC:-clang-14}
command -v "$cc" >/dev/null 2>&1 || { echo "run-fuzz: $cc not found (apt-get install clang-14 libclang-rt-14-dev)" >&2; exit 2; }

gen=""
command -v ninja >/dev/null 2>&1 && gen="-G Ninja"
# shellcheck disable=SC2086
CC=$cc cmake -S "$root" -B "$build" $gen -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTN_FUZZ=ON \
  -DBUILD_SHARED_LIBS=OFF -DATTN_BUILD_TESTS=OFF -DATTN_BUILD_TOOLS=OFF -DATTN_BUILD_BENCH=OFF \
  -DATTN_WERROR=ON >/dev/null
cmake --build "$build" -j "${ATTN_FUZZ_JOBS:-2}" >/dev/null

if [ $# -gt 0 ]; then
  targets=$*
else
  targets=$(cd "$root/tests/fuzz" && ls fuzz_*.c | sed 's/^fuzz_//; s/\.c$//')
fi

# The ops use their own threads only over a sequential BLAS (see README).
export OPENBLAS_NUM_THREADS=1

# One target's runs; prints its lines, fails on a finding.
fuzz_target() {
  t=$1
  exe=$build/tests/fuzz/fuzz_$t
  work=$build/work/$t
  mkdir -p "$work/corpus"
  rm -f "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-*
  # "native:secs" runs: this CPU's kernels, or ATTN_KERNELS=set.
  if [ "$t" = npy ]; then
    runs="native:$secs"
  else
    q=$((secs / 4))
    runs="native:$((secs - 2 * q)) sse2:$q avx2:$q"
  fi
  for run in $runs; do
    set_=${run%:*} s=${run#*:}
    [ "$s" -gt 0 ] || continue
    kernels=$set_
    [ "$set_" = native ] && kernels=
    # New inputs go to the work corpus; the committed seeds are only read.
    if ATTN_KERNELS=$kernels "$exe" -max_total_time="$s" -timeout=10 -rss_limit_mb=2560 \
        -print_final_stats=1 -artifact_prefix="$work/" "$work/corpus" "$root/tests/fuzz/corpus/$t" \
        >"$work/log-$set_" 2>&1; then
      result=ok
    else
      result=FAILED
    fi
    log=$work/log-$set_
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    printf '%-10s %-7s %s  %s s  %s executions  %s exec/s\n' "$t" "$set_" "$result" "$s" \
      "${execs:-?}" "${rate:-?}"
    if [ "$result" = FAILED ]; then
      grep -E 'FUZZ CHECK|ERROR|runtime error|SUMMARY' "$log" | head -5 | sed 's/^/    /'
      ls "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* 2>/dev/null |
        sed 's/^/    input: /'
      echo "    log: $log (rerun: ATTN_KERNELS=$kernels $exe INPUT)"
      return 1
    fi
  done
}

# Each fuzzer runs on one core: ATTN_FUZZ_LANES (default 2) of them at once,
# each lane taking every LANES-th target in turn; the lines print in target
# order at the end.
lanes=${ATTN_FUZZ_LANES:-2}
for lane in $(seq 1 "$lanes"); do
  (
    n=0
    for t in $targets; do
      n=$((n + 1))
      [ $(((n - 1) % lanes + 1)) -eq "$lane" ] || continue
      mkdir -p "$build/work/$t"
      fuzz_target "$t" >"$build/work/$t/summary" 2>&1 || echo FAILED >>"$build/work/$t/summary"
    done
  ) &
done
wait
status=0
for t in $targets; do
  cat "$build/work/$t/summary"
  grep -q '^FAILED$' "$build/work/$t/summary" && status=1
done
exit $status
