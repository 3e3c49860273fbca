#!/usr/bin/env bash
# requant-dist sensitivity end to end on stories260k (4-bit RTN): the PQI self-test, the study's
# results.json keys, per-weight PQI in HDF5 (h5dump reads it, links resolve), every table and
# plot of the report, Table 3's error shrinking with N, and identical numbers and HDF5 bytes of
# PQI for 1 and 2 ranks.
# Usage: test_sensitivity.sh PATH/TO/requant-dist REPO_ROOT PATH/TO/mpiexec
set -uo pipefail
bin=$1; root=$2; mpiexec=$3; job=$root/jobs/stories260k-gptq.toml
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source "$(dirname "$0")/check_lib.sh"
[ -d "$root/../shared/models" ] || { echo "FAIL: ../shared not found beside the checkout"; exit 1; }
for tool in h5dump h5diff gnuplot; do
  command -v $tool >/dev/null || fail "$tool not installed (launch/setup.sh installs it)"
done

SE=(--set quant.method=rtn --set data.calibration_seqs=4 --set sensitivity.nodes=8)
"$bin" sensitivity "$job" --out "$tmp/s1" "${SE[@]}" > "$tmp/log1" 2>&1 || fail "np=1: $(tail -3 "$tmp/log1")"
"$mpiexec" -np 2 "$bin" sensitivity "$job" --out "$tmp/s2" "${SE[@]}" > "$tmp/log2" 2>&1 || fail "np=2: $(tail -3 "$tmp/log2")"
r=$tmp/s1/results.json
for k in delta_f pqi_sum pqi_rel_error first_order second_order second_order_full layers lambda \
         convergence share taylor pqi_file; do
  grep -q "\"$k\"" "$r" 2>/dev/null || fail "results.json lacks sensitivity key '$k'"
done
e=$(val "$r" pqi_rel_error); d=$(val "$r" delta_f); p=$(val "$r" pqi_sum)
awk -v e="$e" 'BEGIN{exit !(e != "" && e < 0.01)}' && ok "self-test: sum PQI $p vs dF $d (rel $e, midpoint N=8)" || fail "self-test rel error '$e'"

# Every number of the study is the same for 1 and 2 ranks (paths and timings aside).
study() { awk '/^  "sensitivity": \{/,/^  \},?$/' "$1" | grep -v -e "$tmp" -e '"plots"' -e '\.png"' -e '^ *\],\?$' ; }
if [ -n "$(study "$tmp/s1/results.json")" ] && diff <(study "$tmp/s1/results.json") <(study "$tmp/s2/results.json") > "$tmp/diff"; then
  ok "sensitivity results identical for 1 and 2 ranks ($(study "$r" | wc -l) lines)"
else
  fail "sensitivity results differ between 1 and 2 ranks: $(head -5 "$tmp/diff")"
fi
same=0
for f in "$tmp/s1/pqi"/layer-*.h5; do
  h5diff "$f" "$tmp/s2/pqi/$(basename "$f")" > /dev/null && same=$((same+1))
done
[ "$same" = 5 ] && ok "per-weight PQI: 5 layer files, h5diff-identical for 1 and 2 ranks" || fail "only $same of 5 layer files identical"

# HDF5: h5dump reads the index, follows its links to every layer's datasets.
if h5dump -H "$tmp/s1/pqi.h5" > "$tmp/dump" 2>&1; then
  n=$(grep -c 'DATASET "q_proj"' "$tmp/dump"); l=$(grep -c "EXTERNAL_LINK" "$tmp/dump")
  grep -q 'DATASPACE  SIMPLE { ( 64, 64 ) / ( 64, 64 ) }' "$tmp/dump" && [ "$n" = 5 ] && [ "$l" = 5 ] \
    && grep -q "H5T_IEEE_F32LE" "$tmp/dump" && ok "h5dump: 5 linked layers, float32 q_proj [64, 64]" || fail "h5dump content: $n q_proj, $l links"
else
  fail "h5dump failed on pqi.h5: $(head -3 "$tmp/dump")"
fi
a=$(h5dump -m %.17g -a /pqi_sum "$tmp/s1/pqi.h5" | sed -n 's/.*(0): *//p'); b=$(val "$r" pqi_sum)
awk -v a="$a" -v b="$b" 'BEGIN{d=a-b; if(d<0)d=-d; exit !(a != "" && d <= 1e-9*(b<0?-b:b))}' && ok "pqi.h5 attribute pqi_sum $a = results.json" || fail "pqi.h5 pqi_sum '$a' vs '$b'"

# The report: five tables (CSV + report.md) and four PNG plots.
rep=$tmp/s1/report; missing=""
for f in report.md table1_layers.csv table2_lambda.csv table3_convergence.csv table4_sublayer.csv \
         table5_share.csv share_curve.csv; do [ -s "$rep/$f" ] || missing="$missing $f"; done
for f in pqi_vs_n layers share heatmap; do
  [ "$(head -c 4 "$rep/$f.png" 2>/dev/null | tail -c 3)" = PNG ] || missing="$missing $f.png"
done
[ -z "$missing" ] && ok "report: report.md, 6 CSV files, 4 PNG plots" || fail "report lacks:$missing"
for t in "Table 1" "Table 2" "Table 3" "Table 4" "Table 5"; do
  grep -q "^## $t" "$rep/report.md" || fail "report.md lacks $t"
done
for f in "$rep"/*.csv; do  # every row as wide as its header
  awk -F, 'NR==1{n=NF} NF!=n{bad=1} END{exit bad}' "$f" || fail "$(basename "$f"): a row's field count differs from the header's"
done
rows=$(grep -c '^[0-9]' "$rep/table1_layers.csv")
[ "$rows" = 5 ] && grep -q '^All,' "$rep/table1_layers.csv" && ok "Table 1: 5 layers + All" || fail "Table 1 has $rows layer rows"
# Table 3: the midpoint error shrinks as N grows (2, 4, 8).
errs=$(awk -F, '$1=="midpoint" && $2>=2 {print $5}' "$rep/table3_convergence.csv" | tr '\n' ' ')
echo "$errs" | awk '{exit !(NF==3 && $1 > $2 && $2 > $3)}' && ok "midpoint relative error for N = 2, 4, 8: $errs" || fail "midpoint errors do not shrink: $errs"
# Table 2 near w: lambda = 1e-3 is predicted by the Taylor terms within 1%.
awk -F, 'NR==2 {a=$5; p=$2+$4; d=(a-p)/a; if(d<0)d=-d; exit !(d < 0.01)}' "$rep/table2_lambda.csv" \
  && ok "lambda = 1e-3: first + second order (all blocks) within 1% of the actual dF" || fail "Table 2 row 1: $(sed -n 2p "$rep/table2_lambda.csv")"

# study = false: PQI and its self-test only.
"$bin" sensitivity "$job" --out "$tmp/q" "${SE[@]}" --set sensitivity.study=false > "$tmp/log" 2>&1 || fail "study=false: $(tail -3 "$tmp/log")"
[ -f "$tmp/q/pqi.h5" ] && [ ! -f "$tmp/q/report/report.md" ] && [ -f "$tmp/q/report/summary.md" ] \
  && ! grep -q '"second_order"' "$tmp/q/results.json" \
  && ok "study = false: pqi.h5, the run report only (no study tables), no Taylor terms" || fail "study = false output"
"$bin" sensitivity "$job" --out "$tmp/bad" --set sensitivity.rule=simpson > "$tmp/log" 2>&1; rc=$?
[ $rc -ne 0 ] && grep -q "allowed: left, right, midpoint, trapezoid" "$tmp/log" && ok "bad rule refused: $(grep error "$tmp/log")" || fail "bad rule: rc $rc"
[ $fails -eq 0 ] && echo "all sensitivity checks passed" || echo "$fails sensitivity checks failed"
exit $((fails > 0))
