#!/usr/bin/env bats
# 31-run-errors.bats: phi3-run on bad models and bad streams: one line on stderr naming
# the cause, exit 1 (2 for usage), no output. Under `make sanitize` the same tests run
# with ASan/UBSan, so a truncated or corrupt shard must not be read out of bounds.
load helper

RUN() { "$PHI3_BIN/phi3-run" --backend cpu "$@"; }
tokens_frame() { local IFS=,; echo "{\"type\":\"tokens\",\"ids\":[$*]}" | json2frames; }
bad() { "$PY" "$ROOT/tests/lib/mkbad.py" "$1" "$2" "$BATS_TEST_TMPDIR/m"; }

# expect_model_error KIND SRC SUBSTRING
expect_model_error() {
  bad "$1" "$2"
  tokens_frame 1 2 > "$BATS_TEST_TMPDIR/in"
  run --separate-stderr RUN -m "$BATS_TEST_TMPDIR/m" < "$BATS_TEST_TMPDIR/in"
  assert_status 1
  assert_err "phi3-run: " "$3"
  [ -z "$output" ]
}

@test "missing model directory" {
  run --separate-stderr RUN -m "$BATS_TEST_TMPDIR/nope" < /dev/null
  assert_status 1
  assert_err "phi3-run: $BATS_TEST_TMPDIR/nope/config.json" "No such file"
}
@test "missing shard" { expect_model_error missing-shard "$LONGROPE" "model-00002-of-00002.safetensors: No such file"; }
@test "truncated shard" { expect_model_error truncated "$LONGROPE" "beyond the data section"; }
@test "shard shorter than its header length field" { expect_model_error short "$GQA" "too short"; }
@test "corrupt header JSON" { expect_model_error header "$LONGROPE" "header is not valid JSON"; }
@test "header length beyond the file" { expect_model_error hdrlen "$GQA" "bad header length"; }
@test "shape x dtype size != byte length" { expect_model_error shape-bytes "$GQA" "model.norm.weight: 256 bytes but shape"; }
@test "overlapping tensors" { expect_model_error overlap "$GQA" "overlap"; }
@test "missing tensor named" { expect_model_error missing-tensor "$GQA" "tensor model.norm.weight: missing"; }
@test "wrong dtype named, expected vs actual" {
  expect_model_error dtype "$GQA" "tensor model.norm.weight: expected F32|F16|BF16 [128], got I16 [128]"
}
@test "wrong shape named, expected vs actual" {
  expect_model_error config-shape "$GQA" "tensor model.layers.0.mlp.gate_up_proj.weight: expected F32|F16|BF16 [608, 128], got BF16 [640, 128]"
}
@test "unsupported architecture" { expect_model_error arch "$GQA" "unsupported architecture LlamaForCausalLM"; }
@test "unknown rope_scaling type refused" { expect_model_error rope "$LONGROPE" "unsupported rope_scaling type yarn"; }
@test "LongRoPE factor list of the wrong length" { expect_model_error factors "$LONGROPE" "short_factor must be an array of head_dim/2 = 48"; }
@test "config.json not JSON" { expect_model_error config-json "$GQA" "config.json: invalid JSON"; }

@test "token id >= vocab" {
  run --separate-stderr bash -c "$(declare -f tokens_frame json2frames); tokens_frame 1 512 | $PHI3_BIN/phi3-run --backend cpu -m $GQA"
  assert_status 1
  assert_err "phi3-run: frame 1:" "token id 512 out of range [0, 512)"
  [ -z "$output" ]
}
@test "negative token id" {
  run --separate-stderr bash -c "$(declare -f tokens_frame json2frames); tokens_frame 3 -1 | $PHI3_BIN/phi3-run --backend cpu -m $GQA"
  assert_status 1
  assert_err "phi3-run: frame 1:" "token id -1 out of range"
}
@test "non-integer token id" {
  run --separate-stderr bash -c "echo '{\"type\":\"tokens\",\"ids\":[3,\"x\"]}' | $PHI3_BIN/phi3-dump -r | $PHI3_BIN/phi3-run --backend cpu -m $GQA"
  assert_status 1
  assert_err "phi3-run: frame 1:" "ids[1] is not an integer"
}
@test "tokens frame without ids" {
  run --separate-stderr bash -c "echo '{\"type\":\"tokens\"}' | $PHI3_BIN/phi3-dump -r | $PHI3_BIN/phi3-run --backend cpu -m $GQA"
  assert_status 1
  assert_err "phi3-run: frame 1:" "without ids"
}
@test "prompt beyond max_position_embeddings (4096)" {
  "$PY" -c 'import sys,msgpack; sys.stdout.buffer.write(msgpack.packb({"type":"tokens","ids":[5]*4097}))' > "$BATS_TEST_TMPDIR/in"
  run --separate-stderr RUN -m "$GQA" < "$BATS_TEST_TMPDIR/in"
  assert_status 1
  assert_err "phi3-run: frame 1:" "context of 4097 tokens exceeds the limit of 4096 positions"
  [ -z "$output" ]
}
@test "context beyond --ctx, after earlier frames succeeded" {
  { tokens_frame 1 2 3; tokens_frame 4 5; } > "$BATS_TEST_TMPDIR/in"
  run --separate-stderr RUN -m "$GQA" --ctx 4 < "$BATS_TEST_TMPDIR/in"
  assert_status 1
  assert_err "phi3-run: frame 2:" "context of 5 tokens exceeds the limit of 4 positions"
}
@test "--ctx above max_position_embeddings" {
  run --separate-stderr RUN -m "$GQA" --ctx 5000 < /dev/null
  assert_status 1
  assert_err "phi3-run: --ctx 5000" "max_position_embeddings 4096"
}
@test "tokens pos beyond the context" {
  run --separate-stderr bash -c "echo '{\"type\":\"tokens\",\"ids\":[3],\"pos\":2}' | $PHI3_BIN/phi3-dump -r | $PHI3_BIN/phi3-run --backend cpu -m $GQA"
  assert_status 1
  assert_err "phi3-run: frame 1:" "pos 2 is not within the context of 0 positions"
}
@test "truncated stream" {
  tokens_frame 1 2 3 | head -c 5 > "$BATS_TEST_TMPDIR/in"
  run --separate-stderr RUN -m "$GQA" < "$BATS_TEST_TMPDIR/in"
  assert_status 1
  assert_err "phi3-run: " "truncated"
}
@test "--backend cuda without a CUDA device or build: exit 1" {
  if [ -n "$(ls /dev/nvidia0 2>/dev/null)" ]; then skip "a GPU is present"; fi
  run --separate-stderr "$PHI3_BIN/phi3-run" --backend cuda -m "$GQA" < /dev/null
  assert_status 1
  assert_err "phi3-run: cuda backend:" ""
}
@test "usage errors exit 2" {
  run --separate-stderr "$PHI3_BIN/phi3-run" --backend tpu -m "$GQA"
  assert_status 2
  run --separate-stderr "$PHI3_BIN/phi3-run" --threads 0 -m "$GQA"
  assert_status 2
  run --separate-stderr "$PHI3_BIN/phi3-run" --bogus
  assert_status 2
  run --separate-stderr "$PHI3_BIN/phi3-run" < /dev/null
  assert_status 2
  assert_err "phi3-run: " "no model directory"
}
@test "empty input: exit 0, no output; reader gone: exit 0 quietly" {
  run --separate-stderr RUN -m "$GQA" < /dev/null
  assert_status 0
  [ -z "$output" ] && [ -z "$stderr" ]
  run --separate-stderr bash -c "$(declare -f tokens_frame json2frames); for i in \$(seq 50); do tokens_frame 3 4; done | $PHI3_BIN/phi3-run --backend cpu -m $GQA | head -c 10 > /dev/null; echo \${PIPESTATUS[2]}"
  [ "$output" = 0 ] && [ -z "$stderr" ]
}

@test "a shard truncated under a running phi3-run: the file is named, exit 1 (no bare SIGBUS)" {
  cd "$BATS_TEST_TMPDIR"
  cp -r "$GQA" m
  mkfifo in
  timeout 60 "$PHI3_BIN/phi3-run" --backend cpu -m "$PWD/m" < in > out 2> err &
  local pid=$! st=0
  exec 7> in                     # fd 7: bats owns 3
  tokens_frame 1 2 >&7
  for i in $(seq 200); do [ -s out ] && break; sleep 0.05; done
  [ -s out ] || fail "no logits for the first frame"
  truncate -s 4096 m/model.safetensors
  tokens_frame 3 >&7
  exec 7>&-
  wait "$pid" || st=$?
  [ "$st" = 1 ] || fail "exit $st: $(cat err)"
  [ "$(cat err)" = "phi3-run: $PWD/m/model.safetensors changed under the mmap (truncated?)" ] || fail "$(cat err)"
}

@test "a FIFO as config.json, as the index or as a shard: refused at once, no hang" {
  cd "$BATS_TEST_TMPDIR"
  tokens_frame 1 2 > in
  for f in config.json model.safetensors.index.json model-00002-of-00002.safetensors; do
    rm -rf m; cp -r "$LONGROPE" m; rm "m/$f"; mkfifo "m/$f"
    run --separate-stderr timeout 10 "$PHI3_BIN/phi3-run" --backend cpu -m "$PWD/m" < in
    assert_status 1
    assert_err "phi3-run: $PWD/m/$f" "not a regular file"
  done
  rm -rf m; cp -r "$LONGROPE" m; rm m/config.json; mkdir m/config.json
  run --separate-stderr timeout 10 "$PHI3_BIN/phi3-run" --backend cpu -m "$PWD/m" < in
  assert_status 1
  assert_err "phi3-run: $PWD/m/config.json" "not a regular file"
}

@test "an index.json over 16 MiB is refused before it is parsed" {
  cd "$BATS_TEST_TMPDIR"
  cp -r "$LONGROPE" m
  "$PY" -c 'import sys; sys.stdout.write("{\"weight_map\": {}, \"pad\": \"" + "x" * (17 << 20) + "\"}")' \
    > m/model.safetensors.index.json
  tokens_frame 1 2 > in
  run --separate-stderr RUN -m "$PWD/m" < in
  assert_status 1
  assert_err "phi3-run: $PWD/m/model.safetensors.index.json" "more than the 16 MiB"
}

# with_config SRC KEY=JSON...: a copy of SRC in $BATS_TEST_TMPDIR/m with config.json keys set
with_config() {
  rm -rf "$BATS_TEST_TMPDIR/m"; cp -r "$1" "$BATS_TEST_TMPDIR/m"; shift
  "$PY" -c 'import json, sys
p = sys.argv[1]; c = json.load(open(p))
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1); keys = k.split(".")
    d = c
    for x in keys[:-1]: d = d[x]
    d[keys[-1]] = json.loads(v)
json.dump(c, open(p, "w"))' "$BATS_TEST_TMPDIR/m/config.json" "$@"
}

@test "config numbers that are finite as double but not as float32, or out of range: refused at load" {
  tokens_frame 1 2 > "$BATS_TEST_TMPDIR/in"
  for kv in rms_norm_eps=1e300 rms_norm_eps=1e-50 rope_theta=1e39 rope_scaling.attention_factor=1e300 \
            rope_scaling.short_factor.0=1e300 rope_scaling.long_factor.3=-1; do
    k=${kv%%=*}; k=${k#rope_scaling.}; k=${k%%.*}
    if [[ $kv == *factor.* ]]; then
      # a list element: set the whole list with that element changed
      "$PY" -c 'import json,sys; c=json.load(open(sys.argv[1])); print(json.dumps(c["rope_scaling"][sys.argv[2]]))' \
        "$LONGROPE/config.json" "$k" > "$BATS_TEST_TMPDIR/list"
      i=${kv#*factor.}; i=${i%%=*}; v=${kv#*=}
      list=$("$PY" -c 'import json,sys; l=json.load(open(sys.argv[1])); l[int(sys.argv[2])]=json.loads(sys.argv[3]); print(json.dumps(l))' \
        "$BATS_TEST_TMPDIR/list" "$i" "$v")
      with_config "$LONGROPE" "rope_scaling.$k=$list"
    else
      with_config "$LONGROPE" "$kv"
    fi
    run --separate-stderr RUN -m "$BATS_TEST_TMPDIR/m" < "$BATS_TEST_TMPDIR/in"
    assert_status 1
    assert_err "phi3-run: $BATS_TEST_TMPDIR/m/config.json: " "$k"
    [ -z "$output" ]
  done
}

@test "original_max_position_embeddings beyond max_position_embeddings: refused at load" {
  with_config "$LONGROPE" rope_scaling.original_max_position_embeddings=4096 original_max_position_embeddings=4096
  tokens_frame 1 2 > "$BATS_TEST_TMPDIR/in"
  run --separate-stderr RUN -m "$BATS_TEST_TMPDIR/m" < "$BATS_TEST_TMPDIR/in"
  assert_status 1
  assert_err "phi3-run: $BATS_TEST_TMPDIR/m/config.json: " "original_max_position_embeddings 4096 exceeds max_position_embeddings 2048"
}

@test "a 20 MB safetensors header and a 12 MB index cost at most 4x / 3x their size in peak RSS" {
  cd "$BATS_TEST_TMPDIR"
  mkdir big; cp "$GQA/config.json" big/
  "$PY" - <<'PY'
import struct
out, total, i = [], 0, 0
while total < 20_000_000:
    e = '"t%07d":{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]},' % (i, i, i + 1)
    out.append(e); total += len(e); i += 1
h = "{" + "".join(out)[:-1] + "}"
h += " " * ((8 - len(h) % 8) % 8)
with open("big/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h))); f.write(h.encode()); f.write(b"\0" * i)
PY
  run --separate-stderr /usr/bin/time -f %M -o rss "$PHI3_BIN/phi3-run" --backend cpu -m "$PWD/big" < /dev/null
  assert_status 1
  [[ "$stderr" == *"tensor model.embed_tokens.weight: missing"* ]] || fail "$stderr"
  kb=$(tail -1 rss); echo "header: peak RSS $kb KiB"
  [ "$kb" -lt $(( 4 * 20000 + 8000 )) ] || fail "peak RSS $kb KiB for a 20 MB header"
  cp -r "$LONGROPE" idx
  "$PY" - <<'PY'
import json
wm = json.load(open("idx/model.safetensors.index.json"))["weight_map"]
out, total, i = ['"%s":"%s"' % kv for kv in wm.items()], 0, 0
while total < 12_000_000:
    e = '"x.%07d":"model-00001-of-00002.safetensors"' % i
    out.append(e); total += len(e) + 1; i += 1
open("idx/model.safetensors.index.json", "w").write('{"metadata":{},"weight_map":{' + ",".join(out) + "}}")
PY
  run --separate-stderr /usr/bin/time -f %M -o rss "$PHI3_BIN/phi3-run" --backend cpu -m "$PWD/idx" < /dev/null
  assert_status 0
  kb=$(tail -1 rss); echo "index: peak RSS $kb KiB"
  [ "$kb" -lt $(( 3 * 12000 + 8000 )) ] || fail "peak RSS $kb KiB for a 12 MB index"
}
