#!/usr/bin/env bash
# run.sh: the whole test suite: C unit tests (TAP) and every BATS file, then one closing
# line "N passed, N failed, N skipped". Exit 1 if anything failed or nothing ran.
# PHI3_BIN: the tools under test; PHI3_TESTBIN: the built unit tests.
set -u
cd "$(dirname "$0")/.."
: "${PHI3_BIN:=$PWD/bin}" "${PHI3_TESTBIN:=$PWD/build/tests}"
export PHI3_BIN
pass=0 fail=0 skip=0
log=$(mktemp); trap 'rm -f "$log"' EXIT

count() {   # TAP on stdin -> counters; echoes the TAP
  local line
  while IFS= read -r line; do
    printf '%s\n' "$line"
    case "$line" in
      "ok "*"# skip"*|"ok "*"# SKIP"*) skip=$((skip + 1)) ;;
      "ok "*) pass=$((pass + 1)) ;;
      "not ok "*) fail=$((fail + 1)) ;;
    esac
  done
}

for t in "$PHI3_TESTBIN"/*_test; do
  [ -x "$t" ] || continue
  echo "# unit: $(basename "$t")"
  "$t" > "$log" 2>&1; rc=$?
  count < "$log"
  if [ $rc -ne 0 ] && ! grep -q '^not ok' "$log"; then
    echo "not ok - $(basename "$t") exited $rc"; fail=$((fail + 1))
  fi
done

for f in tests/[0-9]*.bats; do
  [ -e "$f" ] || continue
  echo "# bats: $f"
  s=$SECONDS
  bats --tap "$f" > "$log" 2>&1; rc=$?
  count < "$log"
  echo "# $f: $((SECONDS - s)) s"
  if [ $rc -ne 0 ] && ! grep -q '^not ok' "$log"; then
    echo "not ok - $f exited $rc"; fail=$((fail + 1))
  fi
done

echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
