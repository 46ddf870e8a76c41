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

# run_one NAME CMD...: CMD's TAP counted; NAME fails when CMD is killed by the time
# limit, or exits non-zero without a failed test
run_one() {
  local name=$1 rc; shift
  timeout -k 10 "$PHI3_FILE_TIMEOUT" "$@" > "$log" 2>&1; rc=$?
  count < "$log"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "not ok - $name did not finish in $PHI3_FILE_TIMEOUT s (killed)"; fail=$((fail + 1))
  elif [ $rc -ne 0 ] && ! grep -q '^not ok' "$log"; then
    echo "not ok - $name exited $rc"; fail=$((fail + 1))
  fi
}

for t in "$PHI3_TESTBIN"/*_test; do
  [ -x "$t" ] || continue
  echo "# unit: $(basename "$t")"
  run_one "$(basename "$t")" "$t"
done

for f in tests/[0-9]*.bats; do
  [ -e "$f" ] || continue
  echo "# bats: $f"
  s=$SECONDS
  run_one "$f" bats --tap "$f"
  echo "# $f: $((SECONDS - s)) s"
done

echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
