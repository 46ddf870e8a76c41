#!/usr/bin/env bats
# phi3-tok: text -> ids, exactly as transformers (tests/fixtures/tokenizer), and its errors.
load helper

setup() { M="$FIX/tiny-longrope"; TOK="$PHI3_BIN/phi3-tok"; }

@test "tok: --raw --special gives transformers' ids for every case" {
  run "$PY" "$ROOT/tests/tokcases.py" tok-raw-special
  [ "$status" -eq 0 ] || fail "$output"
}

@test "tok: --raw (safe default) gives the split-special ids for every case" {
  run "$PY" "$ROOT/tests/tokcases.py" tok-raw
  [ "$status" -eq 0 ] || fail "$output"
}

@test "tok: text frames: special=true, special=false and --special, end passes through" {
  run "$PY" "$ROOT/tests/tokcases.py" tok-frames
  [ "$status" -eq 0 ] || fail "$output"
}

@test "tok|detok round trip gives the input back" {
  run "$PY" "$ROOT/tests/tokcases.py" roundtrip
  [ "$status" -eq 0 ] || fail "$output"
}

@test "tok: rstrip of a control token at the end of a frame swallows the next frame's leading whitespace" {
  # As on the joined text "<|user|>\n \n Hello": frames split anywhere give the same ids.
  joined=$(printf '<|user|>\n \n Hello' | "$TOK" --raw --special -m "$M" | frames2json)
  [ "$joined" = '{"type":"tokens","ids":[32010,15043]}' ] || fail "joined: $joined"
  out=$(printf '%s\n' '{"type":"text","text":"<|user|>\n","special":true}' \
      '{"type":"text","text":" \n"}' '{"type":"text","text":" Hello"}' \
    | json2frames | "$TOK" -m "$M" | frames2json | tr -d '\n')
  [ "$out" = '{"type":"tokens","ids":[32010]}{"type":"tokens","ids":[]}{"type":"tokens","ids":[15043]}' ] || fail "$out"
  # ... but not after an end frame (a new prompt), nor after a plain frame.
  out=$(printf '%s\n' '{"type":"text","text":"<|user|>","special":true}' '{"type":"end","reason":"stop"}' \
      '{"type":"text","text":" Hello"}' | json2frames | "$TOK" -m "$M" | frames2json | tr -d '\n')
  [ "$out" = '{"type":"tokens","ids":[32010]}{"type":"end","reason":"stop"}{"type":"tokens","ids":[29871,15043]}' ] || fail "$out"
}

@test "tok: control-token text in a special=false frame stays text" {
  out=$(echo '{"type":"text","text":"<|end|>"}' | json2frames | "$TOK" -m "$M" | frames2json)
  [ "$out" = '{"type":"tokens","ids":[529,29989,355,29989,29958]}' ] || fail "$out"
  out=$(echo '{"type":"text","text":"<|end|>"}' | json2frames | "$TOK" --special -m "$M" | frames2json)
  [ "$out" = '{"type":"tokens","ids":[32007]}' ] || fail "$out"
}

@test "tok: random texts and a 1 MB single-character run match a naive reference BPE" {
  run "$PY" "$ROOT/tests/tokcases.py" reference
  [ "$status" -eq 0 ] || fail "$output"
}

@test "tok: invalid UTF-8 in --raw input: exit 1 naming the byte offset" {
  run --separate-stderr "$TOK" --raw -m "$M" < <(printf 'abc\xc3\x28')
  assert_status 1
  assert_err "phi3-tok: " "invalid UTF-8 at byte 3"
  [ -z "$output" ]
  for bytes in '\xff' '\xc0\x80' '\xed\xa0\x80' '\xf4\x90\x80\x80' 'ok\xe6\x97'; do
    run --separate-stderr "$TOK" --raw -m "$M" < <(printf "$bytes")
    assert_status 1
    assert_err "phi3-tok: " "invalid UTF-8"
  done
}

@test "tok: invalid UTF-8 in a text frame: exit 1 naming frame and offset" {
  run --separate-stderr bash -c "'$PY' -c 'import msgpack,sys; sys.stdout.buffer.write(msgpack.packb({\"type\":\"text\",\"text\":\"ok\"}) + msgpack.packb({\"type\":\"text\",\"text\":b\"xy\\xe9z\"}, use_bin_type=False))' | '$TOK' -m '$M'"
  assert_status 1
  assert_err "phi3-tok: " "frame 2: invalid UTF-8 at byte 2"
}

@test "tok: malformed frames are errors" {
  run --separate-stderr bash -c "echo '{\"type\":\"text\"}' | '$PHI3_BIN/phi3-dump' -r | '$TOK' -m '$M'"
  assert_status 1
  assert_err "phi3-tok: " "without a string \"text\""
  run --separate-stderr bash -c "echo '{\"type\":\"text\",\"text\":\"a\",\"special\":1}' | '$PHI3_BIN/phi3-dump' -r | '$TOK' -m '$M'"
  assert_status 1
  assert_err "phi3-tok: " "not a boolean"
  run --separate-stderr bash -c "printf '\x82\xa4type' | '$TOK' -m '$M'"
  assert_status 1
  assert_err "phi3-tok: " "frame 1"
}

@test "tok: missing or broken model directory" {
  run --separate-stderr "$TOK" --raw -m "$BATS_TEST_TMPDIR/nope" < /dev/null
  assert_status 1
  assert_err "phi3-tok: " "tokenizer.json"
  mkdir -p "$BATS_TEST_TMPDIR/bad"
  printf '{"model": {"type": "BPE", "vocab": {' > "$BATS_TEST_TMPDIR/bad/tokenizer.json"
  run --separate-stderr "$TOK" --raw -m "$BATS_TEST_TMPDIR/bad" < /dev/null
  assert_status 1
  assert_err "phi3-tok: " "tokenizer.json: line 1"
  printf '{"model": {"type": "Unigram", "vocab": []}}' > "$BATS_TEST_TMPDIR/bad/tokenizer.json"
  run --separate-stderr "$TOK" --raw -m "$BATS_TEST_TMPDIR/bad" < /dev/null
  assert_status 1
  assert_err "phi3-tok: " "not supported"
  run --separate-stderr "$TOK" --raw < /dev/null
  assert_status 2
  assert_err "phi3-tok: " "PHI3_MODEL"
  run --separate-stderr "$TOK" --bogus
  assert_status 2
}

@test "tok: merges as [a, b] arrays (newer tokenizers) load the same" {
  "$PY" - "$M/tokenizer.json" "$BATS_TEST_TMPDIR/arr" <<'PYEOF'
import json, os, sys
t = json.load(open(sys.argv[1], encoding="utf-8"))
t["model"]["merges"] = [m.split(" ") for m in t["model"]["merges"]]
os.makedirs(sys.argv[2], exist_ok=True)
json.dump(t, open(os.path.join(sys.argv[2], "tokenizer.json"), "w", encoding="utf-8"))
PYEOF
  a=$(printf 'Hello world, 你好 🙂 <|end|>' | "$TOK" --raw --special -m "$M" | frames2json)
  b=$(printf 'Hello world, 你好 🙂 <|end|>' | "$TOK" --raw --special -m "$BATS_TEST_TMPDIR/arr" | frames2json)
  [ "$a" = "$b" ] || fail "$a != $b"
}

@test "tok: --help and --version" {
  run "$TOK" --help
  assert_status 0
  [[ "$output" == *"--special"* ]]
  run "$TOK" --version
  assert_status 0
}

@test "tok: add_bos_token from tokenizer_config.json puts BOS at the start of each prompt" {
  d="$BATS_TEST_TMPDIR/bos"; mkdir -p "$d"
  cp "$M/tokenizer.json" "$d/"
  sed 's/"add_bos_token": false/"add_bos_token": true/' "$M/tokenizer_config.json" > "$d/tokenizer_config.json"
  grep -q '"add_bos_token": true' "$d/tokenizer_config.json"
  out=$(printf 'Hello' | "$TOK" --raw -m "$d" | frames2json)
  [ "$out" = '{"type":"tokens","ids":[1,15043]}' ] || fail "$out"
  out=$(printf '%s\n' '{"type":"text","text":"<|user|>\n","special":true}' '{"type":"text","text":"Hello"}' \
      '{"type":"end","reason":"stop"}' '{"type":"text","text":"Hello"}' | json2frames | "$TOK" -m "$d" | frames2json | tr -d '\n')
  [ "$out" = '{"type":"tokens","ids":[1,32010]}{"type":"tokens","ids":[15043]}{"type":"end","reason":"stop"}{"type":"tokens","ids":[1,15043]}' ] || fail "$out"
}
