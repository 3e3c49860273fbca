#!/usr/bin/env bash
# Runs every libFuzzer target (tests/fuzz/: the safetensors header, the checkpoint index,
# config.json, the job TOML with --set overrides, tokenizer.json) for SECONDS each, built with
# clang, ASan and UBSan in their own folder (build-fuzz). Each starts from the committed corpus
# (tests/fuzz/corpus/<target>) plus what earlier runs found ($OUT/corpus/<target>, kept there,
# never in the repo), with its dictionary. A crash, a sanitizer report, a leak, a timeout (10 s)
# or an exception that is not rq::Error fails the target; the input is saved under
# $OUT/crashes/<target>/ (turn it into a unit test with the minimised input before the fix).
# Usage: launch/fuzz.sh [SECONDS (600)] [TARGET...]
# Environment: RQ_FUZZ_JOBS (1) targets at once; RQ_FUZZ_OUT (runs/fuzz); RQ_FUZZ_BUILD;
# RQ_FUZZ_SEED (libFuzzer's -seed: unset, a new random one each run; launch/test.sh fixes it so
# that a CI run's inputs are the same every time, up to how many fit in its seconds).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SECS=${1:-600}; shift || true
TARGETS=("$@"); [ ${#TARGETS[@]} -gt 0 ] || TARGETS=(safetensors index config job tokenizer_json)
FB=${RQ_FUZZ_BUILD:-$RQ_ROOT/build-fuzz}
OUT=$(realpath -m "${RQ_FUZZ_OUT:-$RQ_ROOT/runs/fuzz}")

for p in clang-14 libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && continue
  echo "fuzz: installing clang-14 libclang-rt-14-dev"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang-14 libclang-rt-14-dev
  break
done
if [ ! -f "$FB/build.ninja" ]; then
  CC=clang-14 CXX=clang++-14 cmake -S "$RQ_ROOT" -B "$FB" -G Ninja -Wno-dev \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRQ_FUZZ=ON -DRQ_BUILD_TESTS=OFF > /dev/null
fi
cmake --build "$FB" -j "${RQ_JOBS:-2}" --target "${TARGETS[@]/#/fuzz_}"

one() {  # one TARGET: runs it, prints one result line, fails on a finding
  local t=$1 corpus=$OUT/corpus/$1 crashes=$OUT/crashes/$1/
  mkdir -p "$corpus" "$crashes"
  local rc=0
  "$FB/bin/fuzz_$t" -max_total_time="$SECS" -max_len=16384 -timeout=10 -rss_limit_mb=4096 \
    -dict="$RQ_ROOT/tests/fuzz/$t.dict" -artifact_prefix="$crashes" -print_final_stats=1 \
    ${RQ_FUZZ_SEED:+-seed=$RQ_FUZZ_SEED} \
    "$corpus" "$RQ_ROOT/tests/fuzz/corpus/$t" > "$OUT/$t.log" 2>&1 || rc=$?
  local execs units
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$OUT/$t.log" | tail -1)
  units=$(ls "$corpus" | wc -l)
  if [ $rc -eq 0 ]; then
    printf 'fuzz %-15s %5s s  %10s inputs  corpus %5s  clean\n' "$t" "$SECS" "${execs:-?}" "$units"
  else
    # The finding, not libFuzzer's progress lines (those start with '#' and may name a
    # dictionary word such as "rank_timeout").
    printf 'fuzz %-15s FAILED (exit %d): %s; input in %s; log %s\n' "$t" $rc \
      "$(grep -v '^#' "$OUT/$t.log" | grep -m1 -E 'ERROR|runtime error|not an rq::Error|deadly signal|Timeout|out-of-memory' | cut -c1-200)" \
      "$crashes" "$OUT/$t.log"
    # CI keeps no files: print the report and the input itself, so the log alone reproduces it.
    grep -v '^#' "$OUT/$t.log" | grep -v '^INFO' | tail -n 40 | sed 's/^/    /'
    local input
    for input in "$crashes"*; do
      [ -f "$input" ] || continue
      echo "    input $(basename "$input") ($(stat -c %s "$input") bytes), base64:"
      head -c 4096 "$input" | base64 | sed 's/^/    /'
    done
    return 1
  fi
}
export -f one; export FB OUT SECS RQ_ROOT RQ_FUZZ_SEED
mkdir -p "$OUT"
echo "fuzz: ${#TARGETS[@]} target(s), $SECS s each, ${RQ_FUZZ_JOBS:-1} at once, seed ${RQ_FUZZ_SEED:-random}; logs in $OUT"
printf '%s\n' "${TARGETS[@]}" | xargs -P "${RQ_FUZZ_JOBS:-1}" -I{} bash -c 'one {}'
