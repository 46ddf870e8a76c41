#!/usr/bin/env bats
# 30-run.bats: phi3-run against the transformers fixtures (logits within 1e-5 relative
# L2 per position for full passes, 1e-4 for cached greedy steps, argmax = reference),
# the stream contract, and bit-identity across frame splits and thread counts.
load helper

RUN() { "$PHI3_BIN/phi3-run" --backend cpu "$@"; }
CHECK() { "$PY" "$ROOT/tests/lib/logits_check.py" "$@"; }
ids() { "$PY" "$ROOT/tests/lib/refids.py" "$1" "$2"; }
# tokens_frame ID...: one tokens frame; tokens_frames ID...: one frame per id
tokens_frame() { local IFS=,; echo "{\"type\":\"tokens\",\"ids\":[$*]}" | json2frames; }
tokens_frames() { for i in "$@"; do echo "{\"type\":\"tokens\",\"ids\":[$i]}"; done | json2frames; }

@test "tiny-longrope short: all 24 positions within 1e-5" {
  tokens_frame $(ids "$LONGROPE/reference.safetensors" short.ids) > "$BATS_TEST_TMPDIR/in"
  RUN -m "$LONGROPE" --all-logits < "$BATS_TEST_TMPDIR/in" > "$BATS_TEST_TMPDIR/out"
  run CHECK "$LONGROPE/reference.safetensors" short.logits < "$BATS_TEST_TMPDIR/out"
  assert_status 0
}

@test "tiny-longrope long: 150 tokens, long factors at every position, within 1e-5" {
  tokens_frame $(ids "$LONGROPE/reference.safetensors" long.ids) > "$BATS_TEST_TMPDIR/in"
  RUN -m "$LONGROPE" --all-logits < "$BATS_TEST_TMPDIR/in" > "$BATS_TEST_TMPDIR/out"
  run CHECK "$LONGROPE/reference.safetensors" long.logits \
    --pos "$(ids "$LONGROPE/reference.safetensors" long.pos | tr ' ' ,)" < "$BATS_TEST_TMPDIR/out"
  assert_status 0
}

@test "tiny-longrope cross: greedy steps through the cache across the switch at 64 (1e-4, argmax)" {
  local R="$LONGROPE/reference.safetensors" g
  g=$(ids "$R" cross.greedy)
  { tokens_frame $(ids "$R" cross.prompt); tokens_frames $(echo $g | cut -d' ' -f1-39); } > "$BATS_TEST_TMPDIR/in"
  RUN -m "$LONGROPE" < "$BATS_TEST_TMPDIR/in" > "$BATS_TEST_TMPDIR/out"
  run CHECK "$R" cross.step_logits --tol 1e-4 --argmax cross.greedy < "$BATS_TEST_TMPDIR/out"
  assert_status 0
}

@test "tiny-gqa-window all: 48 positions within 1e-5 (GQA, window 16)" {
  tokens_frame $(ids "$GQA/reference.safetensors" all.ids) > "$BATS_TEST_TMPDIR/in"
  RUN -m "$GQA" --all-logits < "$BATS_TEST_TMPDIR/in" > "$BATS_TEST_TMPDIR/out"
  run CHECK "$GQA/reference.safetensors" all.logits < "$BATS_TEST_TMPDIR/out"
  assert_status 0
}

@test "tiny-gqa-window gen: 30 greedy steps through the cache (1e-4, argmax)" {
  local R="$GQA/reference.safetensors"
  { tokens_frame $(ids "$R" gen.prompt); tokens_frames $(ids "$R" gen.greedy | cut -d' ' -f1-29); } \
    > "$BATS_TEST_TMPDIR/in"
  RUN -m "$GQA" < "$BATS_TEST_TMPDIR/in" > "$BATS_TEST_TMPDIR/out"
  run CHECK "$R" gen.step_logits --tol 1e-4 --argmax gen.greedy < "$BATS_TEST_TMPDIR/out"
  assert_status 0
}

@test "a wrong model fails the comparison (the check can fail)" {
  tokens_frame $(ids "$LONGROPE/reference.safetensors" short.ids) > "$BATS_TEST_TMPDIR/in"
  # the same ids one position late: logits of other contexts
  { tokens_frame 5; cat "$BATS_TEST_TMPDIR/in"; } | RUN -m "$LONGROPE" --all-logits \
    | "$PY" -c 'import sys,msgpack
fs=list(msgpack.Unpacker(sys.stdin.buffer,raw=False)); sys.stdout.buffer.write(b"".join(msgpack.packb(f,use_bin_type=True) for f in fs[3:]))' \
    > "$BATS_TEST_TMPDIR/out"
  run CHECK "$LONGROPE/reference.safetensors" short.logits < "$BATS_TEST_TMPDIR/out"
  assert_status 1
}

@test "tokens frames are forwarded before their logits, pos = context length" {
  { tokens_frame 1 2 3; echo '{"type":"end","reason":"stop"}' | json2frames; tokens_frame 4; } \
    | RUN -m "$GQA" | frames2json | cut -c1-40 > "$BATS_TEST_TMPDIR/out"
  run cat "$BATS_TEST_TMPDIR/out"
  [ "${lines[0]}" = '{"type":"tokens","ids":[1,2,3],"pos":0}' ]
  [[ "${lines[1]}" == '{"type":"logits","pos":3,"data":['* ]]
  [ "${lines[2]}" = '{"type":"tokens","ids":[4],"pos":3}' ]
  [[ "${lines[3]}" == '{"type":"logits","pos":4,"data":['* ]]
  [ "${#lines[@]}" -eq 4 ]
}

@test "--all-logits: one frame per input position, pos = position + 1" {
  tokens_frame 7 8 9 | RUN -m "$GQA" --all-logits | frames2json | cut -c1-30 > "$BATS_TEST_TMPDIR/out"
  run cat "$BATS_TEST_TMPDIR/out"
  [ "${lines[0]}" = '{"type":"tokens","ids":[7,8,9]' ]
  [[ "${lines[1]}" == '{"type":"logits","pos":1,'* ]]
  [[ "${lines[3]}" == '{"type":"logits","pos":3,'* ]]
  [ "${#lines[@]}" -eq 4 ]
}

@test "bit-identical logits: one frame vs split frames vs a rewind, 1 vs 2 threads" {
  local i=$(ids "$LONGROPE/reference.safetensors" cross.prompt) R="$LONGROPE/reference.safetensors"
  local all=($i $(ids "$R" cross.greedy))      # 80 ids: crosses original_max 64
  tokens_frame "${all[@]:0:70}" | RUN -m "$LONGROPE" --threads 2 | frames2json | tail -1 > "$BATS_TEST_TMPDIR/a"
  tokens_frame "${all[@]:0:70}" | RUN -m "$LONGROPE" --threads 1 | frames2json | tail -1 > "$BATS_TEST_TMPDIR/b"
  { tokens_frame "${all[@]:0:30}"; tokens_frame "${all[@]:30:33}"; tokens_frames "${all[@]:63:7}"; } \
    | RUN -m "$LONGROPE" | frames2json | tail -1 > "$BATS_TEST_TMPDIR/c"
  # rewind: 75 tokens (long), back to pos 50 (short again), then the rest
  { tokens_frame "${all[@]:0:75}"; echo "{\"type\":\"tokens\",\"pos\":50,\"ids\":[$(echo "${all[@]:50:20}" | tr ' ' ,)]}" | json2frames; } \
    | RUN -m "$LONGROPE" | frames2json | tail -1 > "$BATS_TEST_TMPDIR/d"
  grep -q '"pos":70' "$BATS_TEST_TMPDIR/a"
  cmp "$BATS_TEST_TMPDIR/a" "$BATS_TEST_TMPDIR/b"
  cmp "$BATS_TEST_TMPDIR/a" "$BATS_TEST_TMPDIR/c"
  cmp "$BATS_TEST_TMPDIR/a" "$BATS_TEST_TMPDIR/d"
}

@test "scalar, AVX2 and AVX-512 paths give byte-identical logits (canonical dot order)" {
  # frames of 1, 3, 4 and 70 tokens exercise the one-token, few-token and blocked paths
  local i=$(ids "$LONGROPE/reference.safetensors" cross.prompt) R="$LONGROPE/reference.safetensors"
  local all=($i $(ids "$R" cross.greedy))
  { tokens_frame "${all[@]:0:70}"; tokens_frame "${all[@]:70:4}"; tokens_frame "${all[@]:74:3}"; tokens_frames "${all[@]:77:3}"; } \
    > "$BATS_TEST_TMPDIR/in"
  RUN -m "$LONGROPE" --all-logits < "$BATS_TEST_TMPDIR/in" > "$BATS_TEST_TMPDIR/avx"
  PHI3_NO_AVX512=1 RUN -m "$LONGROPE" --all-logits < "$BATS_TEST_TMPDIR/in" > "$BATS_TEST_TMPDIR/avx2"
  PHI3_NO_AVX=1 RUN -m "$LONGROPE" --all-logits < "$BATS_TEST_TMPDIR/in" > "$BATS_TEST_TMPDIR/scalar"
  [ -s "$BATS_TEST_TMPDIR/avx" ]
  cmp "$BATS_TEST_TMPDIR/avx" "$BATS_TEST_TMPDIR/avx2"
  cmp "$BATS_TEST_TMPDIR/avx" "$BATS_TEST_TMPDIR/scalar"
  run CHECK "$GQA/reference.safetensors" all.logits < <(tokens_frame $(ids "$GQA/reference.safetensors" all.ids) \
    | PHI3_NO_AVX=1 RUN -m "$GQA" --all-logits)
  assert_status 0
}

@test "--kv-type f16: within 3e-3 of transformers (f32), bit-identical across splits and threads" {
  local R="$LONGROPE/reference.safetensors"
  tokens_frame $(ids "$R" long.ids) > "$BATS_TEST_TMPDIR/in"
  RUN -m "$LONGROPE" --kv-type f16 --all-logits < "$BATS_TEST_TMPDIR/in" > "$BATS_TEST_TMPDIR/out"
  run CHECK "$R" long.logits --tol 3e-3 --pos "$(ids "$R" long.pos | tr ' ' ,)" < "$BATS_TEST_TMPDIR/out"
  assert_status 0
  tokens_frame $(ids "$GQA/reference.safetensors" all.ids) | RUN -m "$GQA" --kv-type f16 --all-logits \
    > "$BATS_TEST_TMPDIR/gqa"
  run CHECK "$GQA/reference.safetensors" all.logits --tol 3e-3 < "$BATS_TEST_TMPDIR/gqa"
  assert_status 0
  # the f16 cache is not the f32 one (the option does something)
  tokens_frame $(ids "$GQA/reference.safetensors" all.ids) | RUN -m "$GQA" --all-logits > "$BATS_TEST_TMPDIR/f32"
  ! cmp -s "$BATS_TEST_TMPDIR/gqa" "$BATS_TEST_TMPDIR/f32"
  local all=($(ids "$R" cross.prompt) $(ids "$R" cross.greedy))
  tokens_frame "${all[@]:0:70}" | RUN -m "$LONGROPE" --kv-type f16 --threads 2 | frames2json | tail -1 > "$BATS_TEST_TMPDIR/a"
  { tokens_frame "${all[@]:0:30}"; tokens_frame "${all[@]:30:33}"; tokens_frames "${all[@]:63:7}"; } \
    | PHI3_NO_AVX=1 RUN -m "$LONGROPE" --kv-type f16 --threads 1 | frames2json | tail -1 > "$BATS_TEST_TMPDIR/b"
  grep -q '"pos":70' "$BATS_TEST_TMPDIR/a"
  cmp "$BATS_TEST_TMPDIR/a" "$BATS_TEST_TMPDIR/b"
}

@test "--kv-type: a bad value or f16 with --backend cuda is a usage error (exit 2)" {
  run --separate-stderr RUN -m "$GQA" --kv-type bf16 < /dev/null
  assert_status 2
  assert_err "phi3-run: --kv-type: expected f32 or f16, got 'bf16'"
  run --separate-stderr "$PHI3_BIN/phi3-run" -m "$GQA" --backend cuda --kv-type f16 < /dev/null
  assert_status 2
  assert_err "phi3-run: --kv-type f16 applies to the CPU backend"
}

@test "-v reports weights, context and memory on stderr; stdout stays frames" {
  run --separate-stderr bash -c "$(declare -f tokens_frame json2frames); tokens_frame 1 2 | $PHI3_BIN/phi3-run -m $GQA -v | $PHI3_BIN/phi3-dump | wc -l"
  assert_status 0
  [ "$output" = 2 ]
  [[ "$stderr" == *"backend cpu"* ]]
  [[ "$stderr" == *"weights 1.2 MiB"* ]]
  [[ "$stderr" == *"context limit 4096"* ]]
  [[ "$stderr" == *"peak RSS"* ]]
}

@test "peak memory stays near the model's file size (weights mmapped, not copied)" {
  tokens_frame $(ids "$LONGROPE/reference.safetensors" long.ids) > "$BATS_TEST_TMPDIR/in"
  /usr/bin/time -f %M -o "$BATS_TEST_TMPDIR/rss" "$PHI3_BIN/phi3-run" --backend cpu -m "$LONGROPE" \
    < "$BATS_TEST_TMPDIR/in" > /dev/null
  local kb files
  kb=$(tail -1 "$BATS_TEST_TMPDIR/rss")
  files=$(( $(cat "$LONGROPE"/*.safetensors | wc -c) - $(wc -c < "$LONGROPE/reference.safetensors") ))
  echo "peak RSS ${kb} KiB, shards $((files / 1024)) KiB"
  # a second copy of the weights would add 25 MiB; allow 12 MiB of code, libc, KV, scratch,
  # and 16 MiB more in an ASan build (its runtime and shadow memory: 37.2-37.7 MiB peak
  # against 24.3 for the plain build on the same machine), still less than a copy
  local slack=12
  ! grep -aq __asan_init "$PHI3_BIN/phi3-run" || slack=28
  [ "$kb" -lt $(( files / 1024 + slack * 1024 )) ]
}

@test "F32 weights give bit-identical logits to BF16; F16 weights within 1e-5" {
  "$PY" "$ROOT/tests/lib/mkbad.py" as-f32 "$GQA" "$BATS_TEST_TMPDIR/f32"
  "$PY" "$ROOT/tests/lib/mkbad.py" as-f16 "$GQA" "$BATS_TEST_TMPDIR/f16"
  tokens_frame $(ids "$GQA/reference.safetensors" all.ids) > "$BATS_TEST_TMPDIR/in"
  RUN -m "$GQA" --all-logits < "$BATS_TEST_TMPDIR/in" > "$BATS_TEST_TMPDIR/bf16.out"
  RUN -m "$BATS_TEST_TMPDIR/f32" --all-logits < "$BATS_TEST_TMPDIR/in" > "$BATS_TEST_TMPDIR/f32.out"
  RUN -m "$BATS_TEST_TMPDIR/f16" --all-logits < "$BATS_TEST_TMPDIR/in" > "$BATS_TEST_TMPDIR/f16.out"
  cmp "$BATS_TEST_TMPDIR/bf16.out" "$BATS_TEST_TMPDIR/f32.out"
  run CHECK "$GQA/reference.safetensors" all.logits < "$BATS_TEST_TMPDIR/f16.out"
  assert_status 0
}

@test "tie_word_embeddings: lm_head is embed_tokens (checked against final hidden x embeddings)" {
  "$PY" "$ROOT/tests/lib/mkbad.py" tied "$GQA" "$BATS_TEST_TMPDIR/tied"
  tokens_frame $(ids "$GQA/reference.safetensors" all.ids) | RUN -m "$BATS_TEST_TMPDIR/tied" > "$BATS_TEST_TMPDIR/out"
  # reference: all.hidden[3] (after the final norm) at the last position . each embedding row
  run "$PY" - "$GQA" "$BATS_TEST_TMPDIR/out" <<'PYEOF'
import json, math, struct, sys, msgpack
def tensor(path, name):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8)); head = json.loads(f.read(n)); t = head[name]
        a, b = t["data_offsets"]; f.seek(8 + n + a); return t, f.read(b - a)
d, out = sys.argv[1], sys.argv[2]
t, raw = tensor(d + "/reference.safetensors", "all.hidden")
S, T, H = t["shape"]
hid = struct.unpack("<%df" % H, raw[((S - 1) * T + T - 1) * H * 4:((S - 1) * T + T) * H * 4])
t, raw = tensor(d + "/model.safetensors", "model.embed_tokens.weight")
V = t["shape"][0]
emb = struct.unpack("<%df" % (V * H), struct.pack("<%dI" % (V * H), *(v << 16 for v in struct.unpack("<%dH" % (V * H), raw))))
ref = [sum(hid[h] * emb[v * H + h] for h in range(H)) for v in range(V)]
got = [f for f in msgpack.Unpacker(open(out, "rb"), raw=False) if f["type"] == "logits"][-1]
got = struct.unpack("<%df" % V, got["data"])
e = math.sqrt(sum((g - r) ** 2 for g, r in zip(got, ref)) / sum(r * r for r in ref))
print("rel L2 %.3g" % e)
sys.exit(0 if e < 1e-5 else 1)
PYEOF
  echo "$output"
  assert_status 0
}

# logits_of: the logits frames of a stream as JSON lines (tokens frames dropped)
logits_of() { frames2json | grep '"type":"logits"'; }

@test "an empty tokens frame gets the logits of the context as it stands (after its pos)" {
  local d="$BATS_TEST_TMPDIR"
  tokens_frame 5 6 7 | RUN -m "$GQA" | logits_of > "$d/want3"
  tokens_frame 5 6 7 8 9 | RUN -m "$GQA" | logits_of > "$d/want5"
  # a partial prompt, then an empty frame: answered with the logits after 5 6 7
  { echo '{"type":"tokens","ids":[5,6,7],"partial":true}'; echo '{"type":"tokens","ids":[]}'; } | json2frames \
    | RUN -m "$GQA" | frames2json | cut -c1-40 > "$d/out"
  run cat "$d/out"
  [ "${lines[0]}" = '{"type":"tokens","ids":[5,6,7],"pos":0}' ] || fail "$output"
  [ "${lines[1]}" = '{"type":"tokens","ids":[],"pos":3}' ] || fail "$output"
  [[ "${lines[2]}" == '{"type":"logits","pos":3,"data":['* ]] || fail "$output"
  [ "${#lines[@]}" -eq 3 ]
  { echo '{"type":"tokens","ids":[5,6,7],"partial":true}'; echo '{"type":"tokens","ids":[]}'; } | json2frames \
    | RUN -m "$GQA" | logits_of > "$d/got3"
  cmp "$d/want3" "$d/got3"
  # after 5 tokens, an empty frame with pos 3 rewinds and answers for the first 3; another
  # empty frame then answers the same again; the context then goes on from 3
  { echo '{"type":"tokens","ids":[5,6,7,8,9]}'; echo '{"type":"tokens","ids":[],"pos":3}';
    echo '{"type":"tokens","ids":[]}'; echo '{"type":"tokens","ids":[8,9]}'; } | json2frames | RUN -m "$GQA" \
    | logits_of > "$d/got"
  [ "$(wc -l < "$d/got")" = 4 ]
  sed -n 1p "$d/got" | cmp - "$d/want5"
  sed -n 2p "$d/got" | cmp - "$d/want3"
  sed -n 3p "$d/got" | cmp - "$d/want3"
  sed -n 4p "$d/got" | cmp - "$d/want5"
  # a partial empty frame is forwarded and gets nothing
  { echo '{"type":"tokens","ids":[5,6,7]}'; echo '{"type":"tokens","ids":[],"partial":true}'; } | json2frames | RUN -m "$GQA" \
    | frames2json | cut -c1-40 > "$d/out"
  [ "$(sed -n 3p "$d/out")" = '{"type":"tokens","ids":[],"pos":3}' ] && [ "$(wc -l < "$d/out")" = 3 ]
}

@test "an empty tokens frame across the LongRoPE switch (65 -> recompute at 64 -> 65) equals a fresh run" {
  local d="$BATS_TEST_TMPDIR" all
  all=$(seq 100 164 | tr '\n' ' ')       # 65 ids: the context is long
  tokens_frame $all | RUN -m "$LONGROPE" | logits_of > "$d/want"
  { tokens_frame $all; echo '{"type":"tokens","ids":[]}' | json2frames; } | RUN -m "$LONGROPE" | logits_of > "$d/got"
  [ "$(wc -l < "$d/got")" = 2 ]
  sed -n 2p "$d/got" | cmp - "$d/want"
}

@test "an empty tokens frame with an empty context: exit 1, and the FIFO loop ends instead of hanging" {
  cd "$BATS_TEST_TMPDIR"
  echo '{"type":"tokens","ids":[]}' | json2frames > empty.bin
  run --separate-stderr RUN -m "$GQA" < empty.bin
  assert_status 1
  assert_err "phi3-run: frame 1:" "empty tokens frame with an empty context"
  [ -z "$output" ]
  mkfifo fb
  run timeout 30 bash -c '{ cat empty.bin; cat fb; } | "$1" --backend cpu -m "$2" 2> err |
                            "$3" --greedy -n 5 | tee fb > out.bin; echo "${PIPESTATUS[*]}"' x \
    "$PHI3_BIN/phi3-run" "$GQA" "$PHI3_BIN/phi3-sample"
  assert_status 0
  [ "$output" = "0 1 0 0" ] || fail "statuses: $output"
  grep -q "empty tokens frame" err
  # the loop with a prompt sent partial and an empty frame to close it generates
  { echo '{"type":"tokens","ids":[5,6,7],"partial":true}'; echo '{"type":"tokens","ids":[]}'; } | json2frames > p.bin
  run timeout 30 bash -c '{ cat p.bin; cat fb; } | "$1" --backend cpu -m "$2" |
                            "$3" --greedy -n 5 | tee fb | "$4" | grep -c "\"ids\":\[[0-9]*\]"' x \
    "$PHI3_BIN/phi3-run" "$GQA" "$PHI3_BIN/phi3-sample" "$PHI3_BIN/phi3-dump"
  assert_status 0
  [ "$output" = 5 ] || fail "$output"
}
