#!/usr/bin/env bats
# phi3-template: the Phi-3 chat template, natively; with phi3-tok it gives transformers'
# apply_chat_template ids (tests/fixtures/tokenizer/chat-cases.jsonl).
load helper

setup() { M="$FIX/tiny-longrope"; TPL="$PHI3_BIN/phi3-template"; }

@test "template|tok gives the chat ids (safe ids for the injection case; --special: transformers')" {
  run "$PY" "$ROOT/tests/tokcases.py" chat
  [ "$status" -eq 0 ] || fail "$output"
}

@test "template: frames join to transformers' rendered text; content is special=false" {
  run "$PY" "$ROOT/tests/tokcases.py" template-text
  [ "$status" -eq 0 ] || fail "$output"
}

@test "template: message frames in == --json in" {
  run "$PY" "$ROOT/tests/tokcases.py" template-frames
  [ "$status" -eq 0 ] || fail "$output"
}

@test "template: --no-generation-prompt ends with the model's eos_token" {
  out=$(echo '[{"role":"user","content":"Hi"}]' | "$TPL" --json --no-generation-prompt -m "$M" | frames2json | tr -d '\n')
  [ "$out" = '{"type":"text","text":"<|user|>\n","special":true,"partial":true}{"type":"text","text":"Hi","special":false,"partial":true}{"type":"text","text":"<|end|>\n<|endoftext|>","special":true}' ] || fail "$out"
  # the eos string comes from tokenizer_config.json, not from the code
  mkdir -p "$BATS_TEST_TMPDIR/m"
  echo '{"eos_token": {"content": "</s>"}}' > "$BATS_TEST_TMPDIR/m/tokenizer_config.json"
  out=$(echo '[]' | "$TPL" --json --no-generation-prompt -m "$BATS_TEST_TMPDIR/m" | frames2json)
  [ "$out" = '{"type":"text","text":"</s>","special":true}' ] || fail "$out"
  out=$(echo '[]' | "$TPL" --json | frames2json)
  [ "$out" = '{"type":"text","text":"<|assistant|>\n","special":true}' ] || fail "$out"
}

@test "template: bad input: exit 1, one message, nothing written" {
  for input in '[{"role":"robot","content":"x"}]|unknown role '"'"'robot'"'" \
               '[{"role":"user","content":"ok"},{"role":"user"}]|message 2: missing content' \
               '[{"content":"x"}]|missing role' \
               '[{"role":"user","content":["x"]}]|content is not a string' \
               '[{"role":"user","content":"x"}|bad JSON' \
               '{"role":"user","content":"x"}|JSON array' \
               '|bad JSON' \
               '["x"]|not an object'; do
    run --separate-stderr "$TPL" --json <<< "${input%%|*}"
    assert_status 1
    assert_err "phi3-template: " "${input#*|}"
    [ -z "$output" ] || fail "wrote: $output"
  done
}

@test "template: bad message frames: exit 1, nothing written" {
  run --separate-stderr bash -c "printf '%s\n' '{\"type\":\"message\",\"role\":\"user\",\"content\":\"a\"}' '{\"type\":\"message\",\"role\":\"tool\",\"content\":\"b\"}' | '$PHI3_BIN/phi3-dump' -r | '$TPL'"
  assert_status 1
  assert_err "phi3-template: " "message 2: unknown role 'tool'"
  [ -z "$output" ]
  run --separate-stderr bash -c "echo '{\"type\":\"message\",\"role\":\"user\"}' | '$PHI3_BIN/phi3-dump' -r | '$TPL'"
  assert_status 1
  assert_err "phi3-template: " "missing content"
  run --separate-stderr bash -c "'$PY' -c 'import msgpack,sys; sys.stdout.buffer.write(msgpack.packb({\"type\":\"message\",\"role\":\"user\",\"content\":b\"\\xff\"}, use_bin_type=False))' | '$TPL'"
  assert_status 1
  assert_err "phi3-template: " "not valid UTF-8"
  run --separate-stderr bash -c "printf '\x82\xa4type\xa7message\xa4role' | '$TPL'"
  assert_status 1
  assert_err "phi3-template: " "frame 1"
  [ -z "$output" ]
}

@test "template: missing model directory for the eos token" {
  run --separate-stderr "$TPL" --json --no-generation-prompt -m "$BATS_TEST_TMPDIR/nope" <<< '[]'
  assert_status 1
  assert_err "phi3-template: " "tokenizer_config.json"
  run --separate-stderr "$TPL" --bogus
  assert_status 2
}

@test "template|tok|detok --skip-special gives the conversation's words back" {
  out=$(echo '[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi there"}]' \
    | "$TPL" --json | "$PHI3_BIN/phi3-tok" -m "$M" | "$PHI3_BIN/phi3-detok" --skip-special -m "$M")
  [ "$out" = "Be brief. Hi there" ] || fail "[$out]"
}
