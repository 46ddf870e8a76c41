#!/usr/bin/env bats
# Hardening shared by the text-side tools (issue 11 items 6, 13, 14; issue 14 item 9):
# stderr lines that quote input stay one printable line, FIFOs named like model files are
# refused without hanging, one rule for duplicate keys, one unknown-option line.
load helper

setup() { cd "$BATS_TEST_TMPDIR"; M="$LONGROPE"; }

# a copy of the tiny model's text files, with NAME replaced by a FIFO
fifo_model() {
  mkdir -p m && cp "$M"/*.json m/ && rm -f "m/$1" && mkfifo "m/$1"
}

@test "hardening: every tool: unknown option is one line naming it and --help, exit 2; --version" {
  for t in phi3-run phi3-sample phi3-tok phi3-detok phi3-template phi3-dump; do
    run --separate-stderr "$PHI3_BIN/$t" --no-such-flag=1 < /dev/null
    assert_status 2
    [ "$stderr" = "$t: unknown option '--no-such-flag' (see $t --help)" ] || fail "$t: $stderr"
    [ -z "$output" ] || fail "$t wrote to stdout: $output"
    run --separate-stderr "$PHI3_BIN/$t" -Z < /dev/null
    assert_status 2
    [ "$stderr" = "$t: unknown option '-Z' (see $t --help)" ] || fail "$t: $stderr"
    run --separate-stderr "$PHI3_BIN/$t" -m
    assert_status 2
    [ "$stderr" = "$t: option '-m' needs an argument (see $t --help)" ] || fail "$t: $stderr"
    run --separate-stderr "$PHI3_BIN/$t" --model
    assert_status 2
    [ "$stderr" = "$t: option '--model' needs an argument (see $t --help)" ] || fail "$t: $stderr"
    run --separate-stderr "$PHI3_BIN/$t" --version
    assert_status 0
    [ "$output" = "$t 0.1.0" ] || fail "$t: $output"
  done
}

# TOOL FILE ARGS...: TOOL -m m ARGS (stdin as given) is refused within 10 s: exit 1, one
# line "TOOL: m/FILE: not a regular file"
refuses_fifo() {
  local t=$1 f=$2; shift 2
  run --separate-stderr timeout 10 "$PHI3_BIN/$t" -m m "$@"
  assert_status 1
  assert_err "$t: " "m/$f: not a regular file"
}

@test "hardening: a FIFO named tokenizer.json/tokenizer_config.json/config.json/generation_config.json: refused, no hang" {
  fifo_model tokenizer.json
  for t in phi3-tok phi3-detok; do refuses_fifo $t tokenizer.json < /dev/null; done
  refuses_fifo phi3-sample tokenizer.json --tokenizer-ids < /dev/null
  rm -rf m; fifo_model tokenizer_config.json
  refuses_fifo phi3-tok tokenizer_config.json < /dev/null
  refuses_fifo phi3-template tokenizer_config.json --json --no-generation-prompt <<< '[]'
  rm -rf m; fifo_model config.json
  refuses_fifo phi3-detok config.json < /dev/null
  rm -rf m; fifo_model generation_config.json
  refuses_fifo phi3-sample generation_config.json < /dev/null
}

@test "hardening: quoted input with a newline and ESC stays one escaped line" {
  # a role (template), an option value (sample), a frame type (detok ignores it, dump fails
  # on the duplicate key it carries): never a raw newline or ESC on stderr
  run --separate-stderr bash -c "printf '%s\n' '{\"type\":\"message\",\"role\":\"us\\ner\\u001b[31m\",\"content\":\"a\"}' | '$PHI3_BIN/phi3-dump' -r | '$PHI3_BIN/phi3-template'"
  assert_status 1
  assert_err "phi3-template: " "unknown role 'us\\ner\\x1b[31m'"
  run --separate-stderr "$PHI3_BIN/phi3-sample" --logit-bias $'5=1\nphi3-sample: forged\e[2J' < /dev/null
  assert_status 1
  assert_err "phi3-sample: " "'5=1\\nphi3-sample: forged\\x1b[2J'"
  run --separate-stderr "$PHI3_BIN/phi3-sample" --seed $'x\ty\x7f\xff\xc2\x9b' < /dev/null
  assert_status 1
  assert_err "phi3-sample: " "'x\\x09y\\x7f\\xff\\u009b'"
  # valid UTF-8 passes through
  run --separate-stderr "$PHI3_BIN/phi3-sample" --seed 'é日本' < /dev/null
  assert_status 1
  assert_err "phi3-sample: " "'é日本'"
  run --separate-stderr "$PHI3_BIN/phi3-sample" -m "$M" --stop $'\xff\n\e[1m' < /dev/null
  assert_status 1
  assert_err "phi3-sample: " "--stop: '\xff\n\x1b[1m'"
  run --separate-stderr "$PHI3_BIN/phi3-run" --session-info $'x\nphi3-run: forged\e[2J' < /dev/null
  assert_status 1
  assert_err "phi3-run: " "'x\nphi3-run: forged\x1b[2J'"
  run --separate-stderr "$PHI3_BIN/phi3-dump" $'--bad\nline' < /dev/null
  assert_status 2
  assert_err "phi3-dump: " "'--bad\\nline'"
}

@test "hardening: a frame type that is not UTF-8 is a bad frame in every reader" {
  printf '\x82\xa4type\xa3\xff\xfe\xfd\xa1x\x01' > bad.bin
  run --separate-stderr "$PHI3_BIN/phi3-dump" < bad.bin
  assert_status 1
  assert_err "phi3-dump: " 'frame 1: "type" is not valid UTF-8'
  [ -z "$output" ]
  run --separate-stderr "$PHI3_BIN/phi3-detok" -m "$M" < bad.bin
  assert_status 1
  assert_err "phi3-detok: " 'frame 1: "type" is not valid UTF-8'
}

@test "hardening: a duplicate key is an invalid frame for dump, the tools, and dump -r" {
  # {"type":"end","reason":"a","reason":"b"} after a good frame
  { echo '{"type":"tokens","ids":[15043]}' | "$PHI3_BIN/phi3-dump" -r
    printf '\x83\xa4type\xa3end\xa6reason\xa1a\xa6reason\xa1b'; } > dup.bin
  run --separate-stderr "$PHI3_BIN/phi3-dump" < dup.bin
  assert_status 1
  assert_err "phi3-dump: " 'frame 2: duplicate key "reason"'
  [ "$output" = '{"type":"tokens","ids":[15043]}' ]
  run --separate-stderr "$PHI3_BIN/phi3-detok" -m "$M" < dup.bin
  assert_status 1
  assert_err "phi3-detok: " 'frame 2: duplicate key "reason"'
  [ "$output" = "Hello" ]
  # a duplicate "type" (the tools once used the first, dump the last) and a nested one
  printf '\x82\xa4type\xa3end\xa4type\xa6tokens' > dup2.bin
  run --separate-stderr "$PHI3_BIN/phi3-sample" < dup2.bin
  assert_status 1
  assert_err "phi3-sample: " 'frame 1: duplicate key "type"'
  printf '\x82\xa4type\xa1x\xa1n\x82\xa1k\x01\xa1k\x02' > dup3.bin
  run --separate-stderr "$PHI3_BIN/phi3-dump" < dup3.bin
  assert_status 1
  assert_err "phi3-dump: " 'duplicate key "k"'
  run --separate-stderr "$PHI3_BIN/phi3-dump" -r <<< '{"type":"end","reason":"a","reason":"b"}'
  assert_status 1
  assert_err "phi3-dump: " "duplicate"
  [ -z "$output" ]
}

@test "hardening: dump on a write error: one line, exit 1 (nothing leaked under ASan)" {
  echo '{"type":"tokens","ids":[1,2,3]}' | "$PHI3_BIN/phi3-dump" -r > t.bin
  run --separate-stderr bash -c "'$PHI3_BIN/phi3-dump' < t.bin > /dev/full"
  assert_status 1
  assert_err "phi3-dump: " "write error"
  run --separate-stderr bash -c "echo '{\"type\":\"x\"}' | '$PHI3_BIN/phi3-dump' -r > /dev/full"
  assert_status 1
  assert_err "phi3-dump: " "write error"
}

@test "hardening: every filter takes an optional FILE operand (- is stdin); a missing one is exit 1, two are exit 2" {
  printf 'Hello world' > t.txt
  echo '[{"role":"user","content":"Hi there"}]' > c.json
  "$PHI3_BIN/phi3-template" --json c.json < /dev/null > tpl.bin
  "$PHI3_BIN/phi3-template" --json < c.json | cmp - tpl.bin
  "$PHI3_BIN/phi3-tok" -m "$M" tpl.bin < /dev/null > tok.bin
  "$PHI3_BIN/phi3-tok" -m "$M" - < tpl.bin | cmp - tok.bin
  "$PHI3_BIN/phi3-tok" -m "$M" --raw t.txt < /dev/null > raw.bin
  [ "$("$PHI3_BIN/phi3-dump" raw.bin < /dev/null)" = '{"type":"tokens","ids":[15043,3186]}' ]
  "$PHI3_BIN/phi3-dump" raw.bin < /dev/null > raw.json
  "$PHI3_BIN/phi3-dump" -r raw.json < /dev/null | cmp - raw.bin
  "$ROOT/tests/lib/frames.py" onehot 8 3 > l.bin
  [ "$("$PHI3_BIN/phi3-sample" --greedy l.bin < /dev/null | "$PHI3_BIN/phi3-dump")" = '{"type":"tokens","ids":[3],"pos":0}' ]
  [ "$("$PHI3_BIN/phi3-detok" -m "$M" raw.bin < /dev/null)" = "Hello world" ]
  for t in "phi3-tok -m $M" "phi3-detok -m $M" "phi3-template" "phi3-sample" "phi3-dump" "phi3-dump -r"; do
    run --separate-stderr $PHI3_BIN/$t "$BATS_TEST_TMPDIR/nope" < /dev/null
    assert_status 1
    assert_err "${t%% *}: " "nope: No such file or directory"
    run --separate-stderr $PHI3_BIN/$t raw.bin raw.bin < /dev/null
    assert_status 2
    assert_err "${t%% *}: " "unexpected argument"
  done
}

@test "hardening: phi3-tok --count prints the number of tokens, nothing else" {
  run --separate-stderr bash -c "printf 'Hello world' | '$PHI3_BIN/phi3-tok' -m '$M' --raw --count"
  assert_status 0
  [ "$output" = 2 ] && [ -z "$stderr" ]
  run bash -c "printf '' | '$PHI3_BIN/phi3-tok' -m '$M' --raw --count"
  [ "$output" = 0 ]
  # text frames: every frame's ids (template parts included: <|user|> Hi there <|end|> <|assistant|>)
  run bash -c "echo '[{\"role\":\"user\",\"content\":\"Hi there\"}]' | '$PHI3_BIN/phi3-template' --json | '$PHI3_BIN/phi3-tok' -m '$M' --count"
  [ "$output" = 5 ] || fail "$output"
  want=$("$PY" -c 'import json; print(sum(len(json.loads(l)["ids"]) for l in open("'"$FIX"'/tokenizer/tokenizer-cases.jsonl")))')
  got=$("$PY" -c '
import json, msgpack, sys
sys.stdout.buffer.write(b"".join(msgpack.packb({"type": "text", "text": json.loads(l)["text"], "special": True}) for l in open("'"$FIX"'/tokenizer/tokenizer-cases.jsonl")))' | "$PHI3_BIN/phi3-tok" -m "$M" --count)
  [ "$got" = "$want" ] || fail "got $got want $want"
}

@test "hardening: writers respect the frame cap: phi3-tok splits, detok --frames splits, template and dump -r refuse" {
  # 3000 emoji (4 byte-fallback ids each): 12000+ ids, over a 1000-byte cap many times
  "$PY" -c 'import sys; sys.stdout.write("🙂 ab" * 3000)' > emoji.txt
  "$PHI3_BIN/phi3-tok" -m "$M" --raw emoji.txt > whole.bin
  PHI3_MAX_FRAME=1000 "$PHI3_BIN/phi3-tok" -m "$M" --raw emoji.txt > split.bin
  "$PY" - <<'P'
import msgpack
whole = list(msgpack.Unpacker(open("whole.bin", "rb"), raw=False))
raw = open("split.bin", "rb").read()
split = list(msgpack.Unpacker(open("split.bin", "rb"), raw=False))
assert len(whole) == 1 and len(split) > 10, (len(whole), len(split))
assert sum(len(f["ids"]) for f in split) == len(whole[0]["ids"])
assert [i for f in split for i in f["ids"]] == whole[0]["ids"]
assert all(f.get("partial") is True for f in split[:-1]) and "partial" not in split[-1]
for f in split:
    assert len(msgpack.packb(f)) <= 1000, len(msgpack.packb(f))
P
  # every reader with that cap reads them, and they decode to the text
  PHI3_MAX_FRAME=1000 "$PHI3_BIN/phi3-dump" < split.bin > /dev/null
  PHI3_MAX_FRAME=1000 "$PHI3_BIN/phi3-detok" -m "$M" split.bin | cmp - emoji.txt
  # text frames from text frames (a partial input frame keeps its mark on the last piece)
  "$PY" -c 'import msgpack,sys; sys.stdout.buffer.write(msgpack.packb({"type":"text","text":open("emoji.txt").read(),"partial":True}))' > t.bin
  PHI3_MAX_FRAME=100000 "$PHI3_BIN/phi3-tok" -m "$M" t.bin > /dev/null   # the input frame must fit the reader
  # phi3-detok --frames: one tokens frame of ~900 bytes whose text is longer (462 is 16
  # spaces, 30325 日): 1.2 KB of text, cut inside a 日 at 936 bytes unless the cut moves
  "$PY" -c 'import msgpack,sys; sys.stdout.buffer.write(msgpack.packb({"type":"tokens","ids":([30325] * 8 + [462]) * 30}))' > long.bin
  PHI3_MAX_FRAME=1000 "$PHI3_BIN/phi3-detok" -m "$M" --frames long.bin > text.bin
  "$PHI3_BIN/phi3-detok" -m "$M" long.bin > plain.txt
  "$PY" - <<'P'
import msgpack
fs = list(msgpack.Unpacker(open("text.bin", "rb"), raw=True))
assert len(fs) >= 2, len(fs)
for f in fs:
    assert len(msgpack.packb(f)) <= 1000
    f[b"text"].decode("utf-8")
assert b"".join(f[b"text"] for f in fs) == open("plain.txt", "rb").read()
P
  # phi3-template: a message that cannot fit one frame is a clear error, nothing written
  "$PY" -c 'import json; print(json.dumps([{"role":"user","content":"x"*2000}]))' > big.json
  run --separate-stderr bash -c "PHI3_MAX_FRAME=1000 '$PHI3_BIN/phi3-template' --json big.json"
  assert_status 1
  assert_err "phi3-template: " "message 1: content of 2000 bytes does not fit in one frame (cap 1000 bytes"
  [ -z "$output" ]
  # phi3-dump -r: a JSON line whose frame would be over the cap
  "$PY" -c 'import json; print(json.dumps({"type":"text","text":"x"*2000}))' > big.jsonl
  run --separate-stderr bash -c "PHI3_MAX_FRAME=1000 '$PHI3_BIN/phi3-dump' -r big.jsonl"
  assert_status 1
  assert_err "phi3-dump: " "line 1: a frame of"
  [ -z "$output" ]
}

@test "hardening: a ~16 MB frame costs each text tool at most 4x its size (peak RSS over the tool's baseline)" {
  # AddressSanitizer's shadow memory and quarantine make RSS meaningless (make sanitize)
  if grep -q __asan_init "$PHI3_BIN/phi3-dump"; then skip "sanitizer build"; fi
  "$PY" - <<'P'
import msgpack, struct
N = 16 << 20
t = ("hello world " * (N // 12 + 1))[:N]
e = ("\U0001F642 \u65e5\u672c " * (N // 12 + 1))[: N // 3]
open("text.bin", "wb").write(msgpack.packb({"type": "text", "text": t}))
open("emoji.bin", "wb").write(msgpack.packb({"type": "text", "text": e}))
open("msg.bin", "wb").write(msgpack.packb({"type": "message", "role": "user", "content": t}))
open("tokens.bin", "wb").write(msgpack.packb({"type": "tokens", "ids": [15043] * (N // 3)}))
n = N // 4
open("logits.bin", "wb").write(msgpack.packb({"type": "tokens", "ids": [1, 2, 3]}) +
    msgpack.packb({"type": "logits", "pos": 3, "data": struct.pack("<%df" % n, *([0.5] * n))}, use_bin_type=True))
# context ids for the penalties: kept as int32 (4 bytes per id; Phi-3's ids pack in 3)
open("ctx.bin", "wb").write(msgpack.packb({"type": "tokens", "ids": [15043, 300] * (N // 6)}) +
    msgpack.packb({"type": "logits", "pos": 0, "data": struct.pack("<4f", 1, 2, 3, 4)}, use_bin_type=True))
P
  "$PY" - "$PHI3_BIN" "$M" <<'P'
import os, resource, subprocess, sys
bin, m = sys.argv[1], sys.argv[2]
def peak(cmd, inp):
    # ru_maxrss of the one child this python starts (KiB): run each in a fresh python
    out = subprocess.run([sys.executable, "-c",
        "import resource,subprocess,sys; subprocess.run(sys.argv[2:], stdin=open(sys.argv[1],'rb'), stdout=subprocess.DEVNULL, check=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)", inp] + cmd,
        capture_output=True, text=True, check=True)
    return int(out.stdout) * 1024
open("empty.bin", "wb").close()
bad = []
for cmd, inp in [([bin + "/phi3-dump"], "tokens.bin"), ([bin + "/phi3-dump"], "text.bin"),
                 ([bin + "/phi3-dump", "--top", "3"], "logits.bin"),
                 ([bin + "/phi3-tok", "-m", m], "text.bin"), ([bin + "/phi3-tok", "-m", m], "emoji.bin"),
                 ([bin + "/phi3-tok", "-m", m, "--count"], "text.bin"),
                 ([bin + "/phi3-template"], "msg.bin"),
                 ([bin + "/phi3-detok", "-m", m], "tokens.bin"), ([bin + "/phi3-detok", "-m", m, "--frames"], "tokens.bin"),
                 ([bin + "/phi3-sample", "--greedy"], "logits.bin"), ([bin + "/phi3-sample", "--greedy", "--repeat-penalty", "1.1"], "ctx.bin")]:
    size = os.path.getsize(inp)
    base, got = peak(cmd, "empty.bin"), peak(cmd, inp)
    if got - base > 4 * size:
        bad.append("%s < %s: %.1f MB over a %.1f MB baseline for %.1f MB (%.1fx)" % (
            " ".join(os.path.basename(c) for c in cmd), inp, (got - base) / 1e6, base / 1e6, size / 1e6, (got - base) / size))
sys.exit("\n".join(bad) if bad else 0)
P
}
