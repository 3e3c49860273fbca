#!/usr/bin/env bash
# A full disk loses nothing (issue 19 §2), on stories260k (SqueezeLLM + Alg. 1 + 2 PQI rounds,
# 2 ranks):
# - a shim (LD_PRELOAD librq_enospc_shim.so) makes writes under the run folder fail with ENOSPC
#   after N bytes per process, N at fractions of what the run writes, so that the failure lands
#   in run.h5, the layer files, the final checkpoint and results.json: each run exits non-zero
#   with a line per failing rank naming the file and "No space left on device", no rank is left
#   over, and the same command without the shim resumes to a checkpoint equal to an
#   uninterrupted run's byte for byte; one budget with EIO instead;
# - export under the shim fails naming the file and leaves no partial file, then succeeds;
# - where mount works (root): a 600 KiB tmpfs that fills up mid-run, remounted larger, resumes
#   to the same checkpoint.
# Usage: test_full_disk.sh PATH/TO/requant-dist REPO_ROOT PATH/TO/mpiexec
set -uo pipefail
bin=$1; root=$2; mpiexec=$3; job=$root/jobs/stories260k-gptq.toml
shim=$(dirname "$bin")/librq_enospc_shim.so
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source "$(dirname "$0")/check_lib.sh"
[ -d "$root/../shared/models" ] || { echo "FAIL: ../shared not found beside the checkout"; exit 1; }
[ -f "$shim" ] || { echo "FAIL: $shim not built"; exit 1; }
trap 'umount "$tmp/small" 2>/dev/null; rm -rf "$tmp"' EXIT

RQ=(--set data.calibration_seqs=8 --set sensitivity.nodes=4 --set quant.sequential=false
    --set quant.method=squeezellm --set requant.outlier_ratio=0.0045 --set requant.outlier_select=adaptive
    --set requant.significant_ratio=0.0005 --set requant.step_ratio=0.00025 --set requant.significant_select=pqi)
run2() {  # run2 OUT [mpirun options]: the job on 2 ranks
  local out=$1; shift
  "$mpiexec" -np 2 "$@" "$bin" run "$job" --out "$out" "${RQ[@]}"
}
ranks_left() { pgrep -f "requant-dist run $job --out $1 " | wc -l; }

run2 "$tmp/ref" > "$tmp/log" 2>&1 || { fail "reference run: $(tail -3 "$tmp/log")"; exit 1; }
ref=$tmp/ref/model.requant.h5
# What each rank writes under its run folder, in bytes (the shim counting only).
run2 "$tmp/count" -x LD_PRELOAD="$shim" -x RQ_ENOSPC_DIR="$tmp/count" -x RQ_ENOSPC_COUNT="$tmp/counts" \
  > "$tmp/log" 2>&1 || fail "counting run: $(tail -3 "$tmp/log")"
total=$(awk '$2 > m {m = $2} END {print m}' "$tmp/counts")
cmp -s "$tmp/count/model.requant.h5" "$ref" && [ "${total:-0}" -gt 100000 ] \
  && ok "the shim alone changes nothing; the busiest rank writes $total bytes" || fail "counting: total '$total'"

# full NAME BUDGET [ERRNO]: fails, names a file under its folder and the reason, leaves no rank,
# and resumes to the reference checkpoint.
declare -A files=()
full() {
  local name=$1 n=$2 err=${3:-ENOSPC} out=$tmp/$1 why="No space left on device"
  [ "$err" = EIO ] && why="Input/output error"
  run2 "$out" -x LD_PRELOAD="$shim" -x RQ_ENOSPC_DIR="$out" -x RQ_ENOSPC_AFTER="$n" -x RQ_ENOSPC_ERRNO="$err" \
    > "$tmp/$name.log" 2>&1
  local rc=$? lines file
  lines=$(grep -c "requant-dist: error: $out/.*$why" "$tmp/$name.log")
  file=$(grep -m1 -o "requant-dist: error: $out/[^:]*" "$tmp/$name.log" | sed "s#.*$out/##")
  sleep 0.5
  if [ $rc -ne 0 ] && [ "$lines" -ge 1 ] && [ "$(ranks_left "$out")" = 0 ]; then
    ok "$name ($n bytes, $err): exit $rc, $lines line(s): $(grep -m1 -o 'error: .*' "$tmp/$name.log" | cut -c1-160)"
    files[$file]=1
  else
    fail "$name: rc $rc, $lines error line(s) naming a file and '$why', $(ranks_left "$out") rank(s) left: $(grep -v '^\s*$' "$tmp/$name.log" | tail -3)"
  fi
  run2 "$out" > "$tmp/log" 2>&1 && cmp -s "$out/model.requant.h5" "$ref" \
    && ok "$name: resumed ($(grep -o 'done:.*' "$tmp/log" || echo 'from the start')), checkpoint equals the reference" \
    || fail "$name: resume: $(tail -3 "$tmp/log")"
}
for pct in 1 5 20 45 70 85 95 99; do full "full-$pct" $((total * pct / 100)); done
full "eio-60" $((total * 60 / 100)) EIO
[ ${#files[@]} -ge 4 ] && ok "failures landed in ${#files[@]} files: ${!files[*]}" || fail "failures landed only in: ${!files[*]}"

# export: a full disk leaves nothing partial behind, then it succeeds.
LD_PRELOAD="$shim" RQ_ENOSPC_DIR="$tmp/exp" RQ_ENOSPC_AFTER=100000 "$bin" export "$tmp/ref" --out "$tmp/exp" \
  > "$tmp/log" 2>&1; rc=$?
partial=$(find "$tmp/exp" -name '*.tmp*' | wc -l)
[ $rc -ne 0 ] && grep -q "error: $tmp/exp/.*No space left on device" "$tmp/log" && [ "$partial" = 0 ] \
  && [ ! -e "$tmp/exp/model.safetensors" ] && ok "export on a full disk: $(grep -o 'error: .*' "$tmp/log" | cut -c1-120), nothing partial" \
  || fail "export: rc $rc, $partial partial file(s): $(tail -2 "$tmp/log")"
"$bin" export "$tmp/ref" --out "$tmp/exp" > "$tmp/log" 2>&1 && [ -s "$tmp/exp/model.safetensors" ] \
  && ok "export with space: done" || fail "export: $(tail -2 "$tmp/log")"

# A real file system that fills up: a small tmpfs, remounted larger for the resume.
small=$tmp/small; mkdir -p "$small"
if mount -t tmpfs -o size=600k tmpfs "$small" 2>/dev/null; then
  run2 "$small/run" > "$tmp/log" 2>&1; rc=$?
  line=$(grep -m1 -o "requant-dist: error: $small/.*No space left on device" "$tmp/log" | cut -c1-160)
  [ $rc -ne 0 ] && [ -n "$line" ] && ok "600 KiB tmpfs: exit $rc, $line" || fail "tmpfs: rc $rc $(tail -3 "$tmp/log")"
  mount -o remount,size=16m "$small"
  run2 "$small/run" > "$tmp/log" 2>&1 && cmp -s "$small/run/model.requant.h5" "$ref" \
    && ok "tmpfs remounted at 16 MiB: resumed ($(grep -o 'done:.*' "$tmp/log")), checkpoint equals the reference" \
    || fail "tmpfs resume: $(tail -3 "$tmp/log")"
  umount "$small"
else
  echo "note: mount -t tmpfs is not allowed here (not root, or no CAP_SYS_ADMIN): the tmpfs case did not run"
fi
[ $fails -eq 0 ] && echo "all full-disk checks passed" || echo "$fails full-disk checks failed"
exit $((fails > 0))
