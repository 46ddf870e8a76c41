#!/usr/bin/env bats
# phi3-detok: ids -> UTF-8, exactly as transformers' decode, streamed a token at a time.
load helper

setup() { M="$FIX/tiny-longrope"; DETOK="$PHI3_BIN/phi3-detok"; }

# ids JSON... -> one tokens frame per argument
tokens() { for a in "$@"; do echo "{\"type\":\"tokens\",\"ids\":$a}"; done | json2frames; }

@test "detok: every case decodes to transformers' text (and --skip-special)" {
  run "$PY" "$ROOT/tests/tokcases.py" detok
  [ "$status" -eq 0 ] || fail "$output"
}

@test "detok: every id of the vocabulary decodes alone as transformers does" {
  run "$PY" "$ROOT/tests/tokcases.py" vocab
  [ "$status" -eq 0 ] || fail "$output"
}

@test "detok: streamed one id at a time == one-shot, never half a character" {
  run "$PY" "$ROOT/tests/tokcases.py" detok-stream
  [ "$status" -eq 0 ] || fail "$output"
}

@test "detok: only the first token of a sequence loses its leading space; end starts a new one" {
  # ▁ + ▁Hello: one space stripped from the sequence, not from each token
  out=$(tokens '[29871]' '[15043]' | "$DETOK" -m "$M")
  [ "$out" = " Hello" ] || fail "[$out]"
  out=$( { tokens '[15043]'; echo '{"type":"end","reason":"stop"}' | json2frames; tokens '[15043]' '[3186]'; } | "$DETOK" -m "$M")
  [ "$out" = "HelloHello world" ] || fail "[$out]"
  out=$( { tokens '[15043]'; echo '{"type":"end","reason":"length"}' | json2frames; } | "$DETOK" --frames -m "$M" | frames2json | tr -d '\n')
  [ "$out" = '{"type":"text","text":"Hello","special":false}{"type":"end","reason":"length"}' ] || fail "$out"
}

@test "detok: text is written as soon as it is final (flushed, not at EOF)" {
  PYTHONPATH="$ROOT/tests/lib" "$PY" - "$DETOK" "$M" <<'PYEOF'
import sys
from streamprobe import Probe
p = Probe([sys.argv[1], "-m", sys.argv[2]])
feed, got, nothing = p.feed, p.got, p.nothing
feed(15043); got(b"Hello")
# 🙂 = F0 9F 99 82 as byte-fallback ids 243, 162, 156, 133: a byte run is final only
# when a non-byte token ends it (Hugging Face decodes the run as a whole)
for i in (243, 162, 156, 133): feed(i); nothing()
feed(15043); got("🙂 Hello".encode())
# a run that can no longer be valid UTF-8 comes out at once: <0x31><0xFE> -> 2 x U+FFFD
feed(52); nothing()
feed(257); got("\ufffd\ufffd".encode())
feed(52); got("\ufffd".encode())          # the run is still going: one U+FFFD per byte
sys.exit(p.close())
PYEOF
}

@test "detok --lenient-bytes: a character is written as soon as its last byte arrives" {
  PYTHONPATH="$ROOT/tests/lib" "$PY" - "$DETOK" "$M" <<'PYEOF'
import sys
from streamprobe import Probe
p = Probe([sys.argv[1], "-m", sys.argv[2], "--lenient-bytes"])
feed, got, nothing = p.feed, p.got, p.nothing
for i in (243, 162, 156): feed(i); nothing()
feed(133); got("🙂".encode())
sys.exit(p.close())
PYEOF
}

@test "detok: an invalid byte run is U+FFFD for every byte, as Hugging Face's ByteFallback decoder" {
  # Byte-fallback id of byte B is B + 3 (<0x00> is id 3). Expected strings derived by hand
  # from HF's rule: a run of consecutive byte tokens is String::from_utf8 as a whole, and
  # on failure one U+FFFD per byte token; a valid run is its text.
  R=$'\xef\xbf\xbd'
  check() {  # ids-json want [flags]
    local out
    out=$(tokens "$1" | "$DETOK" -m "$M" $3; printf x); out=${out%x}
    [ "$out" = "$2" ] || fail "$1 $3: [$out] want [$2]"
  }
  check '[52, 257]' "$R$R"                    # <0x31><0xFE>: "1" is swallowed too
  check '[52, 257]' "1$R" --lenient-bytes     # the older rule keeps "1"
  check '[52, 55]' "14"                       # <0x31><0x34>: valid, "14"
  check '[198, 172, 52]' "é1"                 # <0xC3><0xA9><0x31>
  check '[15043, 243, 162, 156, 133, 3186]' "Hello🙂 world"
  check '[243, 162, 156, 133, 243]' "$R$R$R$R$R"   # a valid emoji then a cut one: all five
  check '[243, 162, 156, 133, 243]' "🙂$R" --lenient-bytes
  check '[243, 162, 156, 133, 32007, 243]' "🙂<|end|>$R"    # a control token ends the run
  check '[243, 162, 156, 133, 32007, 243]' "$R$R$R$R$R" --skip-special   # skipped: it does not
  check '[243, 162, 32011, 156, 133]' "🙂"    # padding ids decode to nothing, run goes on
  check '[15043, 131]' "Hello$R"              # a lone continuation byte
  check '[229, 133, 175, 3186]' "€ world"     # <0xE2><0x82><0xAC>
  check '[229, 133, 3186]' "$R$R world"       # a cut €
}

@test "detok: bytes that cannot form a character become U+FFFD, one per byte" {
  # <0xE6> then a normal token; a lone continuation byte; a truncated character at the end
  out=$(tokens '[233, 319]' | "$DETOK" -m "$M")
  [ "$out" = "� A" ] || fail "[$out]"
  out=$(tokens '[131]' '[15043]' | "$DETOK" -m "$M")
  [ "$out" = "� Hello" ] || fail "[$out]"
  out=$(tokens '[15043, 233, 154]' | "$DETOK" -m "$M")
  [ "$out" = "Hello��" ] || fail "[$out]"
}

@test "detok: padding ids of the embedding (32011..32063) decode to nothing, as in transformers" {
  out=$(tokens '[15043, 32011, 32014]' '[32063, 3186]' | "$DETOK" -m "$M")
  [ "$out" = "Hello world" ] || fail "[$out]"
}

@test "detok: an id outside the vocabulary: exit 1 naming it, earlier text kept" {
  run --separate-stderr bash -c "printf '%s\n' '{\"type\":\"tokens\",\"ids\":[15043]}' '{\"type\":\"tokens\",\"ids\":[3186, 32064]}' | '$PHI3_BIN/phi3-dump' -r | '$DETOK' -m '$M'"
  assert_status 1
  assert_err "phi3-detok: " "token id 32064 is outside the vocabulary"
  [ "$output" = "Hello world" ] || fail "[$output]"
  for id in -1 40000 4294967296; do
    run --separate-stderr bash -c "echo '{\"type\":\"tokens\",\"ids\":[$id]}' | '$PHI3_BIN/phi3-dump' -r | '$DETOK' -m '$M'"
    assert_status 1
    assert_err "phi3-detok: " "token id $id "
  done
}

@test "detok: malformed frames are errors" {
  run --separate-stderr bash -c "echo '{\"type\":\"tokens\"}' | '$PHI3_BIN/phi3-dump' -r | '$DETOK' -m '$M'"
  assert_status 1
  assert_err "phi3-detok: " "without \"ids\""
  run --separate-stderr bash -c "echo '{\"type\":\"tokens\",\"ids\":[1,\"x\"]}' | '$PHI3_BIN/phi3-dump' -r | '$DETOK' -m '$M'"
  assert_status 1
  assert_err "phi3-detok: " "not an array of integers"
  run --separate-stderr bash -c "printf '\x81\xa4type\xa6tok' | '$DETOK' -m '$M'"
  assert_status 1
  assert_err "phi3-detok: " "frame 1"
}

@test "detok: missing model directory, usage errors" {
  run --separate-stderr "$DETOK" -m "$BATS_TEST_TMPDIR/nope" < /dev/null
  assert_status 1
  assert_err "phi3-detok: " "tokenizer.json"
  run --separate-stderr "$DETOK" < /dev/null
  assert_status 2
  run --separate-stderr "$DETOK" -m "$M" "$BATS_TEST_TMPDIR/missing"
  assert_status 1
  assert_err "phi3-detok: " "missing: No such file or directory"
  run --separate-stderr "$DETOK" -m "$M" a b
  assert_status 2
  assert_err "phi3-detok: " "unexpected argument 'b'"
}

@test "detok: FILE operand (and -) instead of stdin" {
  tokens '[15043, 3186]' > "$BATS_TEST_TMPDIR/t.bin"
  run "$DETOK" -m "$M" "$BATS_TEST_TMPDIR/t.bin" < /dev/null
  [ "$output" = "Hello world" ] || fail "[$output]"
  run bash -c "'$DETOK' -m '$M' - < '$BATS_TEST_TMPDIR/t.bin'"
  [ "$output" = "Hello world" ] || fail "[$output]"
}

@test "detok: the control token that ended a reply (stop: true from phi3-sample) is not printed" {
  # 15043 ▁Hello, 3186 ▁world, 32007 <|end|>, 32000 <|endoftext|>
  out=$(printf '%s\n' '{"type":"tokens","ids":[15043]}' '{"type":"tokens","ids":[3186]}' \
        '{"type":"tokens","ids":[32007],"stop":true}' '{"type":"end","reason":"stop"}' | json2frames | "$DETOK" -m "$M")
  [ "$out" = "Hello world" ] || fail "[$out]"
  out=$(printf '%s\n' '{"type":"tokens","ids":[15043]}' '{"type":"tokens","ids":[32007],"stop":true}' \
        '{"type":"end","reason":"stop"}' | json2frames | "$DETOK" -m "$M" --show-stop-token)
  [ "$out" = "Hello<|end|>" ] || fail "[$out]"
  # without the mark it is text, as in transformers' decode (skip_special_tokens=False)
  out=$(tokens '[15043, 32007]' '[32000]' | "$DETOK" -m "$M")
  [ "$out" = "Hello<|end|><|endoftext|>" ] || fail "[$out]"
  # a stop id that is plain text (not a control token) is printed
  out=$(printf '%s\n' '{"type":"tokens","ids":[15043]}' '{"type":"tokens","ids":[3186],"stop":true}' | json2frames | "$DETOK" -m "$M")
  [ "$out" = "Hello world" ] || fail "[$out]"
  run --separate-stderr bash -c "echo '{\"type\":\"tokens\",\"ids\":[1],\"stop\":1}' | '$PHI3_BIN/phi3-dump' -r | '$DETOK' -m '$M'"
  assert_status 1
  assert_err "phi3-detok: " '"stop" is not a boolean'
}

@test "detok --stop STR: never prints STR or what follows in the sequence; held text flushed at end" {
  # ids, one per frame: ▁Hello ▁world ! (29991)  ▁Hello ▁world
  seq_frames() { for i in "$@"; do echo "{\"type\":\"tokens\",\"ids\":[$i]}"; done; }
  out=$(seq_frames 15043 3186 29991 15043 | json2frames | "$DETOK" -m "$M" --stop "o w")
  [ "$out" = "Hell" ] || fail "[$out]"
  # a stop string that spans tokens, another that never completes: held, then flushed
  out=$({ seq_frames 15043 3186; echo '{"type":"end","reason":"length"}'; seq_frames 15043; } | json2frames | "$DETOK" -m "$M" --stop "world!" --stop "xyz")
  [ "$out" = "Hello worldHello" ] || fail "[$out]"
  # after end a new sequence prints again; --frames: text frames never contain the stop
  out=$({ seq_frames 15043 3186 29991; echo '{"type":"end","reason":"stop"}'; seq_frames 15043 3186; } | json2frames \
        | "$DETOK" -m "$M" --frames --stop "world" | frames2json | tr -d '\n')
  [ "$out" = '{"type":"text","text":"Hello","special":false}{"type":"text","text":" ","special":false}{"type":"end","reason":"stop"}{"type":"text","text":"Hello","special":false}{"type":"text","text":" ","special":false}' ] || fail "$out"
  # streamed: text that cannot start the stop string comes out at once, a possible start waits
  PYTHONPATH="$ROOT/tests/lib" "$PY" - "$DETOK" "$M" <<'PYEOF'
import sys
from streamprobe import Probe
p = Probe([sys.argv[1], "-m", sys.argv[2], "--stop", " wor"])
feed, got, nothing = p.feed, p.got, p.nothing
feed(15043); got(b"Hello")
feed(29871); nothing()            # "▁": could start " wor"
feed(15043); got(b"  Hello")       # it did not
p.send({"type": "end", "reason": "stop"})
sys.exit(p.close())
PYEOF
  run --separate-stderr "$DETOK" -m "$M" --stop ""
  assert_status 1
  assert_err "phi3-detok: " "--stop"
}

@test "detok: a closed reader is a quiet exit 0" {
  run --separate-stderr bash -c "'$PY' -c 'import msgpack,sys; sys.stdout.buffer.write(b\"\".join(msgpack.packb({\"type\":\"tokens\",\"ids\":[15043]*1000}) for _ in range(200)))' | '$DETOK' -m '$M' | head -c 10; exit \${PIPESTATUS[1]}"
  assert_status 0
  [ -z "$stderr" ] || fail "$stderr"
}

@test "detok: a config.json over 1 MiB is refused before it is parsed, as phi3-run refuses it (its JSON tree would cost ~20-45x)" {
  cd "$BATS_TEST_TMPDIR"; mkdir m; cp "$M"/tokenizer*.json "$M"/config.json m/
  "$PY" -c 'import json, sys
p = sys.argv[1]; c = json.load(open(p)); c["pad"] = [0] * (1 << 20); json.dump(c, open(p, "w"))' m/config.json
  run --separate-stderr "$DETOK" -m m < <(tokens '[15043]')
  assert_status 1
  assert_err "phi3-detok: m/config.json: " "more than the 1 MiB"
  [ -z "$output" ]
}
