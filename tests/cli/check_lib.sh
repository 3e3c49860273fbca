# Sourced by the shell tests: pass/fail bookkeeping, a scratch folder removed on exit, and a
# reader for one number out of a results/eval JSON file.
fails=0
fail() { echo "FAIL: $*"; fails=$((fails+1)); }
ok()   { echo "ok:   $*"; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
val() { sed -n "s/.*\"$2\": *\([0-9.e+-]*\).*/\1/p" "$1" | head -1; }  # val FILE KEY
