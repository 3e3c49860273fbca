# Sourced by the shell tests: pass/fail bookkeeping, a scratch folder removed on exit, and a
# reader for one number out of a results/eval JSON file.
fails=0
fail() { echo "FAIL: $*"; fails=$((fails+1)); }
ok()   { echo "ok:   $*"; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# val FILE KEY: the number under KEY nearest the top of a JSON file (breadth first, keys in
# file order), printed as Python's repr; empty when absent. Per-linear records in results.json
# ("linears") repeat keys such as "outliers" one level deeper than the run's totals.
val() {
  /usr/bin/python3 - "$1" "$2" <<'PY' 2>/dev/null
import json, sys
try:
    level = [json.load(open(sys.argv[1]))]
except Exception:
    sys.exit(0)
while level:
    nxt = []
    for v in level:
        if isinstance(v, dict):
            if sys.argv[2] in v and isinstance(v[sys.argv[2]], (int, float)):
                print(repr(v[sys.argv[2]])); sys.exit(0)
            nxt += list(v.values())
        elif isinstance(v, list):
            nxt += v
    level = nxt
PY
}
