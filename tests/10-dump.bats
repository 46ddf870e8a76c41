#!/usr/bin/env bats
# phi3-dump: frames <-> JSON lines, and every bad input of the stream library.
load helper

setup() { cd "$BATS_TEST_TMPDIR"; }

@test "dump: round trip JSON -> msgpack -> JSON is unchanged" {
  cat > in.jsonl <<'J'
{"type":"tokens","ids":[1,2,-3,32063],"pos":5}
{"type":"logits","pos":3,"data":[1.5,-2.25,0.1,3.1415927,-0.0,1e-30]}
{"type":"text","text":"héllo <|end|> 日本","special":false}
{"type":"message","role":"user","content":"hi\nthere"}
{"type":"end","reason":"stop"}
{"type":"custom","b":{"$bin":"AAEC/w=="},"f":0.5,"n":null,"nested":{"a":[1,{"b":true}]}}
J
  "$PHI3_BIN/phi3-dump" -r < in.jsonl > s.bin
  "$PHI3_BIN/phi3-dump" < s.bin > out.jsonl
  "$PHI3_BIN/phi3-dump" -r < out.jsonl > s2.bin
  cmp s.bin s2.bin
  "$PHI3_BIN/phi3-dump" < s2.bin > out2.jsonl
  cmp out.jsonl out2.jsonl
  # ints stay ints, logits data becomes float32 bin, other values keep their JSON form
  $PY - <<'P'
import msgpack, json
fr = list(msgpack.Unpacker(open("s.bin", "rb"), raw=False))
assert fr[0] == {"type": "tokens", "ids": [1, 2, -3, 32063], "pos": 5}, fr[0]
assert isinstance(fr[1]["data"], bytes) and len(fr[1]["data"]) == 24
import struct
assert list(struct.unpack("<6f", fr[1]["data"]))[:3] == [1.5, -2.25, struct.unpack("<f", struct.pack("<f", 0.1))[0]]
assert fr[5]["b"] == b"\x00\x01\x02\xff" and fr[5]["n"] is None
assert list(fr[0].keys())[0] == "type"
lines = [json.loads(l) for l in open("out.jsonl")]
assert lines[2]["text"] == "héllo <|end|> 日本" and lines[1]["data"][0] == 1.5
P
}

@test "dump: logits data printed as float32 values, --top K picks the best ids" {
  echo '{"type":"logits","pos":2,"data":[0.5,3.0,-1.0,2.0,3.0]}' | "$PHI3_BIN/phi3-dump" -r | "$PHI3_BIN/phi3-dump" --top 3 > out
  run cat out
  [ "$output" = '{"type":"logits","pos":2,"top":[{"id":1,"logit":3.0},{"id":4,"logit":3.0},{"id":3,"logit":2.0}]}' ]
}

@test "dump: empty input is a clean end" {
  run --separate-stderr "$PHI3_BIN/phi3-dump" < /dev/null
  assert_status 0
  [ -z "$output" ] && [ -z "$stderr" ]
}

@test "dump: a frame arriving in pieces through a pipe is read whole" {
  echo '{"type":"tokens","ids":[7,8,9]}' | "$PHI3_BIN/phi3-dump" -r > one.bin
  run bash -c "{ head -c 3 one.bin; sleep 0.2; tail -c +4 one.bin; } | '$PHI3_BIN/phi3-dump'"
  assert_status 0
  [ "$output" = '{"type":"tokens","ids":[7,8,9]}' ]
}

# bad_input BYTES WANT: printf-style bytes after one good frame; one stderr line naming
# frame 2 and WANT, exit 1, and the good frame (only) on stdout.
bad_input() {
  echo '{"type":"tokens","ids":[1]}' | "$PHI3_BIN/phi3-dump" -r > good.bin
  { cat good.bin; printf "$1"; } > in.bin
  run --separate-stderr "$PHI3_BIN/phi3-dump" < in.bin
  assert_status 1
  assert_err "phi3-dump: frame 2: " "$2"
  [ "$output" = '{"type":"tokens","ids":[1]}' ]
}

@test "dump: truncated frame" { bad_input '\x82\xa4type\xa6tokens\xa3ids\x93\x01' "truncated"; }
@test "dump: bytes that are not msgpack" { bad_input '\xc1\x00' "not msgpack"; }
@test "dump: top-level value that is not a map" { bad_input '\x93\x01\x02\x03' "not a map"; }
@test "dump: map without type" { bad_input '\x81\xa3ids\x90' 'no "type"'; }
@test "dump: type of the wrong kind" { bad_input '\x81\xa4type\x07' 'not a string'; }
@test "dump: str header claiming 4 GiB" { bad_input '\x81\xa4type\xdb\xff\xff\xff\xf0' "claims 4294967280 bytes"; }
@test "dump: bin header claiming 2 GiB" { bad_input '\x82\xa4type\xa1x\xa1b\xc6\x7f\xff\xff\xff' "claims 2147483647 bytes"; }
@test "dump: array header claiming 4 billion elements" { bad_input '\x82\xa4type\xa1x\xa1a\xdd\xff\xff\xff\xff' "claims 4294967295 elements"; }
@test "dump: map header claiming 4 billion pairs" { bad_input '\xdf\xff\xff\xff\xff' "claims 4294967295 elements"; }

@test "dump: a frame over --max-frame is refused" {
  echo '{"type":"text","text":"'"$(head -c 5000 /dev/zero | tr '\0' a)"'"}' | "$PHI3_BIN/phi3-dump" -r > big.bin
  run --separate-stderr "$PHI3_BIN/phi3-dump" --max-frame 1000 < big.bin
  assert_status 1
  assert_err "phi3-dump: frame 1: " "cap of 1000"
}

@test "dump: a frame of more than 2^20 values (2M nils, 2 MB) is refused, not parsed into 48+ MB of objects" {
  # nils (one byte each, 24 bytes each as parsed objects): a 64 MiB frame of them would
  # have cost 1.5 GB; a million values still pass, then a frame after them is read
  /usr/bin/python3 -c 'import msgpack, sys; sys.stdout.buffer.write(msgpack.packb({"type": "x", "a": [None] * 2000000}))' > nils.bin
  run --separate-stderr "$PHI3_BIN/phi3-dump" < nils.bin
  assert_status 1
  assert_err "phi3-dump: frame 1: " "more than 1048576 values in one frame"
  /usr/bin/python3 -c 'import msgpack, sys; o = sys.stdout.buffer
o.write(msgpack.packb({"type": "x", "a": [None] * 1000000})); o.write(msgpack.packb({"type": "y"}))' > ok.bin
  run --separate-stderr "$PHI3_BIN/phi3-dump" < ok.bin
  assert_status 0
  [ "$(printf '%s\n' "$output" | tail -1)" = '{"type":"y"}' ] || fail "$(printf '%s\n' "$output" | tail -c 80)"
}

@test "dump -r: invalid JSON names the line, earlier frames are whole" {
  printf '{"type":"end","reason":"stop"}\n{"type": "tokens", "ids": [1,\n' > in.jsonl
  run --separate-stderr bash -c "'$PHI3_BIN/phi3-dump' -r < in.jsonl > out.bin"
  assert_status 1
  assert_err "phi3-dump: line 2: invalid JSON" ""
  run "$PHI3_BIN/phi3-dump" < out.bin
  assert_status 0
  [ "$output" = '{"type":"end","reason":"stop"}' ]
}

@test "dump -r: lines that are not frames" {
  for bad in '[1,2]' '{"ids":[1]}' '{"type":3}'; do
    echo "$bad" > in.jsonl
    run --separate-stderr "$PHI3_BIN/phi3-dump" -r < in.jsonl
    assert_status 1
    assert_err "phi3-dump: line 1: " ""
    [ -z "$output" ]
  done
}

@test "dump: a reader that goes away is a quiet normal end" {
  $PY -c '
import msgpack, sys
for i in range(20000): sys.stdout.buffer.write(msgpack.packb({"type": "tokens", "ids": [i]}))' > many.bin
  run --separate-stderr bash -c "set -o pipefail; '$PHI3_BIN/phi3-dump' < many.bin | head -n 2"
  assert_status 0
  [ -z "$stderr" ]
}

@test "dump: usage errors exit 2, --help and --version exit 0" {
  run "$PHI3_BIN/phi3-dump" --top 0
  assert_status 2
  run "$PHI3_BIN/phi3-dump" --bogus
  assert_status 2
  run "$PHI3_BIN/phi3-dump" --help
  assert_status 0
  run "$PHI3_BIN/phi3-dump" --version
  assert_status 0
}

@test "dump: --top K -m DIR shows each id's token piece" {
  echo '{"type":"logits","pos":1,"data":[0.0,1.0,2.0,0.5]}' | "$PHI3_BIN/phi3-dump" -r > l.bin
  run "$PHI3_BIN/phi3-dump" --top 2 -m "$LONGROPE" < l.bin
  assert_status 0
  [ "$output" = '{"type":"logits","pos":1,"top":[{"id":2,"logit":2.0,"piece":"</s>"},{"id":1,"logit":1.0,"piece":"<s>"}]}' ]
  run --separate-stderr "$PHI3_BIN/phi3-dump" --top 2 -m /nonexistent < l.bin
  assert_status 1
  assert_err "phi3-dump: " "nonexistent"
}

@test "dump: random frames (nested values, escapes, packed id arrays, every number kind) read back as the same values" {
  "$PY" - "$PHI3_BIN/phi3-dump" <<'P'
import base64, json, math, msgpack, random, struct, subprocess, sys
random.seed(11)
chars = "ab\"\\/\n\t\r\b\f\x01\x1f\x7f é日🙂\u2028"
def rstr(): return "".join(random.choice(chars) for _ in range(random.randint(0, 9)))
def rval(d):
    k = random.randint(0, 10 if d < 3 else 7)
    if k == 0: return None
    if k == 1: return random.choice([True, False])
    if k == 2: return random.randint(-2**63, 2**63 - 1)
    if k == 3: return random.choice([0.0, -0.0, 1e-5, 1e30, 0.1, 123456789.0, 1.5e300, 5e-324, random.uniform(-1e6, 1e6)])
    if k == 4: return rstr()
    if k == 5: return bytes(random.randint(0, 255) for _ in range(random.randint(0, 7)))
    if k == 6: return random.randint(-40, 300)
    if k == 7: return [random.randint(-2**40, 2**40) for _ in range(random.choice([15, 16, 40]))]
    if k == 8: return [rval(d + 1) for _ in range(random.randint(0, 4))]
    return {rstr(): rval(d + 1) for _ in range(random.randint(0, 3))}
frames = []
for i in range(300):
    f = {"type": random.choice(["tokens", "x", "é"])}
    for _ in range(random.randint(0, 4)):
        k = rstr()
        if k != "type": f[k] = rval(0)
    frames.append(f)
lg = [random.uniform(-30, 30) for _ in range(50)] + [float("inf"), float("nan")]
frames.append({"type": "logits", "pos": 1, "data": struct.pack("<%df" % len(lg), *lg)})
out = subprocess.run([sys.argv[1]], input=b"".join(msgpack.packb(f, use_bin_type=True) for f in frames),
                     capture_output=True, check=True).stdout.decode()
lines = out.split("\n")[:-1]   # not splitlines: U+2028 is inside strings
assert len(lines) == len(frames), (len(lines), len(frames))
def same(a, b):
    if isinstance(a, bytes): return b == {"$bin": base64.b64encode(a).decode()}
    if isinstance(a, float): return isinstance(b, float) and (a == b or abs(a - b) <= 1e-8 * abs(a))
    if isinstance(a, list): return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict): return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return type(a) == type(b) and a == b
for f, l in zip(frames[:-1], lines):
    assert same(f, json.loads(l)), (f, l)
got = json.loads(lines[-1])["data"]
want = list(struct.unpack("<%df" % len(lg), struct.pack("<%df" % len(lg), *lg)))
assert got[-2:] == [None, None] and all(struct.pack("<f", g) == struct.pack("<f", w) for g, w in zip(got[:-2], want[:-2]))
P
}
