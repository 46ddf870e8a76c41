#!/usr/bin/env bash
# run.sh: the whole test suite: C unit tests (TAP) and every BATS file, then one closing
# line "N passed, N failed, N skipped". Exit 1 if anything failed or nothing ran.
# PHI3_BIN: the tools under test; PHI3_TESTBIN: the built unit tests.
set -u
cd "$(dirname "$0")/.." || exit 1
: "${PHI3_BIN:=$PWD/bin}" "${PHI3_TESTBIN:=$PWD/build/tests}"
export PHI3_BIN
# A test that hangs fails by name instead of holding up the run: bats ends a test after
# BATS_TEST_TIMEOUT seconds ("# timeout after"), and any file or unit test still running
# after PHI3_FILE_TIMEOUT seconds is killed (the sanitized suite's slowest test takes
# about a minute, its slowest file a few).
: "${PHI3_FILE_TIMEOUT:=1800}"
export BATS_TEST_TIMEOUT=${BATS_TEST_TIMEOUT:-600}
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

timed_out() {  # timed_out RC NAME: RC says timeout(1) ended NAME; count it as failed
  [ "$1" -eq 124 ] || [ "$1" -eq 137 ] || return 1
  echo "not ok - $2 did not finish in $PHI3_FILE_TIMEOUT s (killed)"
  fail=$((fail + 1))
}

for t in "$PHI3_TESTBIN"/*_test; do
  [ -x "$t" ] || continue
  echo "# unit: $(basename "$t")"
  timeout -k 10 "$PHI3_FILE_TIMEOUT" "$t" > "$log" 2>&1; rc=$?
  count < "$log"
  timed_out "$rc" "$(basename "$t")" && continue
  if [ $rc -ne 0 ] && ! grep -q '^not ok' "$log"; then
    echo "not ok - $(basename "$t") exited $rc"; fail=$((fail + 1))
  fi
done

for f in tests/[0-9]*.bats; do
  [ -e "$f" ] || continue
  echo "# bats: $f"
  s=$SECONDS
  timeout -k 10 "$PHI3_FILE_TIMEOUT" bats --tap "$f" > "$log" 2>&1; rc=$?
  count < "$log"
  echo "# $f: $((SECONDS - s)) s"
  timed_out "$rc" "$f" && continue
  if [ $rc -ne 0 ] && ! grep -q '^not ok' "$log"; then
    echo "not ok - $f exited $rc"; fail=$((fail + 1))
  fi
done

echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
