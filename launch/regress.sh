#!/usr/bin/env bash
# Regression check for restructurings: reruns a fixed set of jobs (every bundled-model job file
# in jobs/, more stories260k cells covering every method and selection rule on 2 ranks, and the
# sensitivity study) with small calibration settings, and compares each run's final outputs with
# those of a baseline directory made the same way by an earlier build:
#   - model.requant.h5: every dataset and attribute equal (dtype, shape, bytes), except the root
#     attribute `run` (the job fingerprint, which changes whenever a job key is added);
#   - results.json: every number, string and flag equal, except phase times, version and paths;
#   - the sensitivity run's pqi.h5 (per-weight PQI) and report CSVs, byte for byte in content.
# Usage:
#   launch/regress.sh OUT                 run the set into OUT (e.g. a baseline)
#   launch/regress.sh OUT BASELINE        run the set into OUT and compare with BASELINE
#   launch/regress.sh --compare OUT BASELINE   compare two existing directories only
# Environment: RQ_BUILD / RQ_BIN (the build to run: a baseline of an older commit is made with
# that commit's build, e.g. `git worktree add /tmp/base OLD && RQ_BUILD=/tmp/base/build
# /tmp/base/launch/setup.sh && RQ_BIN=/tmp/base/build/bin/requant-dist launch/regress.sh BASE`),
# RQ_REGRESS_ONLY (a regex: run only the cells whose name matches).
# Exit status: 0 when every run ran and matches (or no baseline was given), 1 when any run
# failed or differs.
set -euo pipefail
user_bin=${RQ_BIN:-}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
rq_need_shared
compare_only=0
[ "${1:-}" = "--compare" ] && { compare_only=1; shift; }
[ $# -ge 1 ] || { sed -n '2,20p' "$0"; exit 2; }
OUT=$(realpath -m "$1"); BASE=${2:+$(realpath -m "$2")}
RQ_BIN=${user_bin:-$RQ_BIN}
[ -x "$RQ_BIN" ] || { echo "regress: no requant-dist at $RQ_BIN (build, or set RQ_BIN)" >&2; exit 2; }
failed=0
mkdir -p "$OUT"

SMALL=(--set data.calibration_seqs=4 --set data.eval_max_seqs=4 --set sensitivity.nodes=2)
ST=$RQ_ROOT/jobs/stories260k-gptq.toml
PQI=(--set requant.significant_ratio=0.0005 --set requant.step_ratio=0.00025
     --set requant.significant_select=pqi)
cells=()
cell() {  # cell NAME RANKS COMMAND JOB ARGS...
  local name=$1 np=$2 cmd=$3 job=$4; shift 4
  [ -n "${RQ_REGRESS_ONLY:-}" ] && ! [[ $name =~ $RQ_REGRESS_ONLY ]] && return 0
  cells+=("$name")  # run (and compared) only when it matches RQ_REGRESS_ONLY
  [ $compare_only = 1 ] && return 0
  local dir=$OUT/$name t0=$SECONDS
  rm -rf "$dir"
  local launch=("$RQ_BIN")
  [ "$np" != 1 ] && launch=(mpirun -np "$np" --oversubscribe "$RQ_BIN")
  if "${launch[@]}" "$cmd" "$job" --out "$dir" "${SMALL[@]}" "$@" > "$OUT/$name.log" 2>&1; then
    echo "ran   $name ($np rank(s), $((SECONDS - t0)) s)"
  else
    echo "FAIL  $name: exit $? (log: $OUT/$name.log)"; tail -3 "$OUT/$name.log"
    failed=$((failed + 1))
  fi
}

for name in $(ls -1 "$RQ_ROOT/jobs" | grep -E '^llama-7m-en-.*[.]toml$'); do
  cell "${name%.toml}" 1 run "$RQ_ROOT/jobs/$name"
done
cell stories260k-gptq 2 run "$ST"
cell stories260k-gptq-actorder 2 run "$ST" --set quant.act_order=true --set quant.bits=3
cell stories260k-rtn-adaptive-pqi 2 run "$ST" --set quant.method=rtn --set quant.group_size=32 \
  --set quant.sequential=false --set requant.outlier_ratio=0.0025 \
  --set requant.outlier_select=adaptive "${PQI[@]}"
cell stories260k-awq-adaptive 2 run "$ST" --set quant.method=awq --set quant.group_size=32 \
  --set quant.sequential=false --set requant.outlier_ratio=0.0025 \
  --set requant.outlier_select=adaptive
cell stories260k-squeezellm-ds 2 run "$ST" --set quant.method=squeezellm --set quant.bits=3 \
  --set quant.sequential=false --set requant.outlier_ratio=0.0045 \
  --set requant.outlier_select=fixed --set requant.significant_ratio=0.0005 \
  --set requant.significant_select=fisher
cell stories260k-squeezellm-requant-abs-linear 3 run "$ST" --set quant.method=squeezellm \
  --set quant.sequential=false --set requant.outlier_ratio=0.0045 \
  --set requant.outlier_select=adaptive "${PQI[@]}" --set requant.signed_ranking=false \
  --set requant.scope=linear
cell stories260k-gptq-random 2 run "$ST" --set requant.outlier_ratio=0.0025 \
  --set requant.outlier_select=random --set requant.significant_ratio=0.0005 \
  --set requant.significant_select=random
cell stories260k-sensitivity-rtn 2 sensitivity "$ST" --set quant.method=rtn \
  --set quant.group_size=32 --set quant.sequential=false

[ $failed -gt 0 ] && { echo "regress: $failed of ${#cells[@]} runs failed" >&2; exit 1; }
[ -z "$BASE" ] && { echo "regress: ${#cells[@]} runs in $OUT (no baseline given)"; exit 0; }
/usr/bin/python3 "$RQ_ROOT/launch/regress_compare.py" "$BASE" "$OUT" "${cells[@]}"
