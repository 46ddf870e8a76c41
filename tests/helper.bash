# helper.bash: shared setup for every BATS file (`load helper`).
bats_require_minimum_version 1.5.0
# PHI3_BIN: the built tools (make test sets it; default bin/). FIX: the fixtures.
ROOT="$(cd "$BATS_TEST_DIRNAME/.." && pwd)"
: "${PHI3_BIN:=$ROOT/bin}"
FIX="$ROOT/tests/fixtures"
LONGROPE="$FIX/tiny-longrope"
GQA="$FIX/tiny-gqa-window"
# Debian's python3 has the msgpack module (python3-msgpack); a python3 earlier on PATH
# (pyenv) may not.
PY=/usr/bin/python3
export PHI3_BIN FIX PY ROOT
unset PHI3_MODEL

# tool NAME: path of a phi3 tool.
tool() { echo "$PHI3_BIN/$1"; }

# Fail with a message (works inside or outside `run`).
fail() { echo "$*" >&2; return 1; }

# assert_status N: the last `run` exited with N.
assert_status() {
  [ "$status" -eq "$1" ] || fail "expected exit $1, got $status; output: ${output:0:2000}"
}

# assert_err PREFIX SUBSTRING: after `run --separate-stderr`, stderr is exactly one line that
# starts with PREFIX and contains SUBSTRING.
assert_err() {
  local n
  n=$(printf '%s\n' "$stderr" | grep -c .)
  [ "$n" -eq 1 ] || fail "expected one stderr line, got $n: $stderr"
  [[ "$stderr" == "$1"* ]] || fail "stderr does not start with '$1': $stderr"
  [[ "$stderr" == *"$2"* ]] || fail "stderr does not mention '$2': $stderr"
}

# json2frames: JSON lines on stdin -> frames on stdout (phi3-dump -r).
json2frames() { "$PHI3_BIN/phi3-dump" -r; }
frames2json() { "$PHI3_BIN/phi3-dump"; }
