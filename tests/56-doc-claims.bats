#!/usr/bin/env bats
# What the docs promise and scripts depend on, checked as written: the loops printed in
# README.md and docs/SAMPLING.md run quietly, phi3-detok prints nothing for padding ids,
# phi3-run writes no logits for a partial frame, `| head` is a quiet end.
load helper

setup() {
  cd "$BATS_TEST_TMPDIR"
  exec < /dev/null
}

ids_lines() { awk -F'"ids":\\[' '/"type":"tokens"/ { split($2, a, "]"); gsub(",", " ", a[1]); print a[1] }'; }

# block FILE LINE-PATTERN: the first ```sh block after the line matching PATTERN
block() {
  awk -v pat="$2" 'found && /^```sh$/ { inb = 1; next } inb && /^```$/ { exit } inb { print } $0 ~ pat { found = 1 }' "$1"
}

@test "README: the generation loop runs as printed: every stage exits 0, nothing on stderr" {
  block "$ROOT/README.md" "The generation loop is plain shell" > loop.sh
  [ "$(wc -l < loop.sh)" -eq 3 ] || fail "$(cat loop.sh)"
  ln -s "$PHI3_BIN" bin; mkdir tests; ln -s "$FIX" tests/fixtures
  run --separate-stderr timeout 60 bash -c 'set -o pipefail; . ./loop.sh'
  assert_status 0
  [ -z "$stderr" ] || fail "stderr: $stderr"
  [ -n "$output" ]
}

@test "SAMPLING.md: the loop runs as printed: every stage exits 0, nothing on stderr" {
  block "$ROOT/docs/SAMPLING.md" "^## The loop" > loop.sh
  grep -q 'phi3-run -m "$M" -q' loop.sh || fail "$(cat loop.sh)"
  echo '[{"role":"user","content":"Hello!"}]' > chat.json
  run --separate-stderr timeout 60 env PATH="$PHI3_BIN:$PATH" M="$LONGROPE" bash -c 'set -o pipefail; . ./loop.sh'
  assert_status 0
  [ -z "$stderr" ] || fail "stderr: $stderr"
  [ -n "$output" ]
}

@test "phi3-run names its backend on stderr unless -q (why the printed loops have -q)" {
  run --separate-stderr "$PHI3_BIN/phi3-run" -m "$LONGROPE"
  assert_status 0
  [[ "$stderr" == "phi3-run: backend "* ]] || fail "stderr: $stderr"
  run --separate-stderr "$PHI3_BIN/phi3-run" -m "$LONGROPE" -q
  assert_status 0
  [ -z "$stderr" ]
}

@test "phi3-detok prints nothing for Phi-3's padding ids (32011..32063), exit 0" {
  for id in 32011 32014 32063; do
    run --separate-stderr bash -c "printf '{\"type\":\"tokens\",\"ids\":[$id]}\n' | '$PHI3_BIN/phi3-dump' -r | '$PHI3_BIN/phi3-detok' -m '$LONGROPE'"
    assert_status 0
    [ -z "$output" ] && [ -z "$stderr" ] || fail "$id: '$output' '$stderr'"
  done
}

@test "phi3-run writes no logits for a partial frame: one logits frame per prompt" {
  printf '%s\n' '{"type":"tokens","ids":[32010],"partial":true}' '{"type":"tokens","ids":[15043,29991],"partial":true}' \
    '{"type":"tokens","ids":[32007,32001]}' | "$PHI3_BIN/phi3-dump" -r | "$PHI3_BIN/phi3-run" -m "$LONGROPE" -q |
    "$PHI3_BIN/phi3-dump" --top 1 | grep -o '"type":"[a-z]*"' | tr '\n' ' ' > types
  [ "$(cat types)" = '"type":"tokens" "type":"tokens" "type":"tokens" "type":"logits" ' ] || fail "$(cat types)"
}

@test "phi3 ... | head is a quiet exit 0 (plain, --show-tokens, --show-logits, chat)" {
  for mode in "" --show-tokens "--show-logits 3"; do
    # shellcheck disable=SC2086
    run --separate-stderr bash -c "'$ROOT/bin/phi3' generate -m '$LONGROPE' -n 100 --ignore-eos $mode 'Hello' | head -c 20 > /dev/null; echo \${PIPESTATUS[0]}"
    [ "$output" = 0 ] || fail "$mode: status $output, $stderr"
    [ -z "$stderr" ] || fail "$mode: $stderr"
  done
  for mode in "" --show-tokens; do
    run --separate-stderr bash -c "yes Hello | head -n 30 | '$ROOT/bin/phi3' chat -m '$LONGROPE' -n 20 $mode | head -c 20 > /dev/null; echo \${PIPESTATUS[2]}"
    [ "$output" = 0 ] || fail "chat $mode: status $output, $stderr"
    [ -z "$stderr" ] || fail "chat $mode: $stderr"
  done
}
