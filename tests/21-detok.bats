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

@test "detok: text is written as soon as a character completes (flushed, not at EOF)" {
  "$PY" - "$DETOK" "$M" <<'PYEOF'
import msgpack, os, select, subprocess, sys
p = subprocess.Popen([sys.argv[1], "-m", sys.argv[2]], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def feed(i):
    p.stdin.write(msgpack.packb({"type": "tokens", "ids": [i]})); p.stdin.flush()
def got(want):
    buf = b""
    while len(buf) < len(want):
        r, _, _ = select.select([p.stdout], [], [], 10)
        if not r: sys.exit("timed out waiting for %r (have %r)" % (want, buf))
        buf += os.read(p.stdout.fileno(), 100)
    if buf != want: sys.exit("got %r, want %r" % (buf, want))
def nothing():
    r, _, _ = select.select([p.stdout], [], [], 0.3)
    if r: sys.exit("unexpected output %r" % os.read(p.stdout.fileno(), 100))
feed(15043); got(b"Hello")
# 🙂 = F0 9F 99 82 as byte-fallback ids 243, 162, 156, 133: nothing until the 4th
for i in (243, 162, 156): feed(i); nothing()
feed(133); got("🙂".encode())
p.stdin.close(); p.wait()
sys.exit(p.returncode)
PYEOF
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
  run --separate-stderr "$DETOK" -m "$M" extra
  assert_status 2
}

@test "detok: a closed reader is a quiet exit 0" {
  run --separate-stderr bash -c "'$PY' -c 'import msgpack,sys; sys.stdout.buffer.write(b\"\".join(msgpack.packb({\"type\":\"tokens\",\"ids\":[15043]*1000}) for _ in range(200)))' | '$DETOK' -m '$M' | head -c 10; exit \${PIPESTATUS[1]}"
  assert_status 0
  [ -z "$stderr" ] || fail "$stderr"
}
