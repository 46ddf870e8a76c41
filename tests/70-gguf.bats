#!/usr/bin/env bats
# GGUF: phi3-quantize writes the fixtures as GGUF files, every tool takes -m FILE.gguf:
# logits equal to the directory model's (BF16/F32 bit-identical, F16 within 1e-5) and to
# the transformers reference, the tokenizer rebuilt from the file's vocabulary gives the
# fixture ids, the loop, the wrapper and sessions work, and bad files fail cleanly.
load helper

setup_file() {
  local d="$BATS_FILE_TMPDIR"
  for t in BF16 F16 F32; do
    "$PHI3_BIN/phi3-quantize" -q -t "$t" "$LONGROPE" "$d/lr-$t.gguf" || return 1
    "$PHI3_BIN/phi3-quantize" -q -t "$t" "$GQA" "$d/gqa-$t.gguf" 2> /dev/null || return 1
  done
  make_k256 "$d" || return 1          # $d/k256 (helper.bash)
}

setup() {
  cd "$BATS_TEST_TMPDIR"
  G="$BATS_FILE_TMPDIR"
  RUN="$PHI3_BIN/phi3-run"
  S="phi3test-gguf-$$-$BATS_TEST_NUMBER"
}

teardown() {
  "$PHI3_BIN/phi3-run" --session-rm "$S" 2> /dev/null || true
  rm -f "/dev/shm/phi3.$S"
}

ids() { "$PY" "$ROOT/tests/lib/refids.py" "$1" "$2"; }
tokens_frame() { local IFS=,; echo "{\"type\":\"tokens\",\"ids\":[$*]}" | json2frames; }
tokens_frames() { for i in "$@"; do echo "{\"type\":\"tokens\",\"ids\":[$i]}"; done | json2frames; }
CMP() { "$PY" "$ROOT/tests/lib/logits_cmp.py" "$@"; }
# all_logits MODEL IN OUT
all_logits() { "$RUN" --backend cpu -q -m "$1" --all-logits < "$2" > "$3"; }

@test "gguf: BF16 and F32 files give logits bit-identical to the directory, F16 within 1e-5 (both fixtures)" {
  tokens_frame $(ids "$LONGROPE/reference.safetensors" long.ids) > lr.in
  tokens_frame $(ids "$GQA/reference.safetensors" all.ids) > gqa.in
  all_logits "$LONGROPE" lr.in lr.dir
  all_logits "$GQA" gqa.in gqa.dir
  for t in BF16 F32; do
    all_logits "$G/lr-$t.gguf" lr.in lr.out
    CMP lr.out lr.dir --exact || fail "tiny-longrope $t"
    all_logits "$G/gqa-$t.gguf" gqa.in gqa.out
    CMP gqa.out gqa.dir --exact || fail "tiny-gqa-window $t"
  done
  all_logits "$G/lr-F16.gguf" lr.in lr.out
  CMP lr.out lr.dir --tol 1e-5
  all_logits "$G/gqa-F16.gguf" gqa.in gqa.out
  CMP gqa.out gqa.dir --tol 1e-5
  # the comparison can fail: the other fixture's positions differ
  ! CMP lr.out gqa.dir
}

@test "gguf: the BF16 file against the transformers reference (1e-5; greedy steps across the switch, 1e-4)" {
  local R="$LONGROPE/reference.safetensors" g
  tokens_frame $(ids "$R" short.ids) > in
  all_logits "$G/lr-BF16.gguf" in out
  "$PY" "$ROOT/tests/lib/logits_check.py" "$R" short.logits < out
  g=$(ids "$R" cross.greedy)
  { tokens_frame $(ids "$R" cross.prompt); tokens_frames $(echo $g | cut -d' ' -f1-39); } > in
  "$RUN" --backend cpu -m "$G/lr-BF16.gguf" < in > out
  "$PY" "$ROOT/tests/lib/logits_check.py" "$R" cross.step_logits --tol 1e-4 --argmax cross.greedy < out
}

@test "gguf: the file holds llama.cpp's phi3 keys, tensor names, shapes and types (read by an independent parser)" {
  "$PY" "$ROOT/tests/lib/gguf_info.py" "$G/lr-F16.gguf" > info.json
  "$PY" - info.json "$LONGROPE" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); kv, ts = d["kv"], d["tensors"]
cfg = json.load(open(sys.argv[2] + "/config.json"))
want = {"general.architecture": ["str", "phi3"], "general.file_type": ["u32", 1],
        "phi3.context_length": ["u32", 2048], "phi3.rope.scaling.original_context_length": ["u32", 64],
        "phi3.embedding_length": ["u32", 192], "phi3.feed_forward_length": ["u32", 256],
        "phi3.block_count": ["u32", 2], "phi3.attention.head_count": ["u32", 2],
        "phi3.attention.head_count_kv": ["u32", 2], "phi3.rope.dimension_count": ["u32", 96],
        "phi3.rope.freq_base": ["f32", 10000.0], "phi3.attention.sliding_window": ["u32", 262144],
        "tokenizer.ggml.model": ["str", "llama"], "tokenizer.ggml.bos_token_id": ["u32", 1],
        "tokenizer.ggml.eos_token_id": ["u32", 32000], "tokenizer.ggml.unknown_token_id": ["u32", 0],
        "tokenizer.ggml.padding_token_id": ["u32", 32000], "tokenizer.ggml.add_bos_token": ["bool", False]}
bad = [k for k, v in want.items() if kv.get(k) != v]
assert not bad, [(k, kv.get(k), want[k]) for k in bad]
assert abs(kv["phi3.attention.layer_norm_rms_epsilon"][1] - 1e-5) < 1e-10
assert "phi3.rope.scaling.attn_factor" in kv and "general.name" in kv
assert "phi3" in kv["general.name"][1].lower()   # llama.cpp's Phi-3 rstrip rule keys on it
assert kv["tokenizer.chat_template"][0] == "str" and "<|assistant|>" in kv["tokenizer.chat_template"][1]
toks, sc, ty = kv["tokenizer.ggml.tokens"][1], kv["tokenizer.ggml.scores"][1], kv["tokenizer.ggml.token_type"][1]
assert toks[:5] == ["str", 32064, "<unk>", "<s>", "</s>"] and sc[:2] == ["f32", 32064] and ty[:2] == ["i32", 32064]
assert ty[2:6] == [3, 3, 4, 6]    # <unk> <s> control, </s> user-defined (not special), <0x00> byte
H, I, V, Q = 192, 256, 32064, 3 * 192
shapes = {"token_embd.weight": [H, V], "output.weight": [H, V], "output_norm.weight": [H],
          "rope_factors_long.weight": [48], "rope_factors_short.weight": [48]}
for l in range(2):
    shapes.update({"blk.%d.attn_norm.weight" % l: [H], "blk.%d.attn_qkv.weight" % l: [H, Q],
                   "blk.%d.attn_output.weight" % l: [H, H], "blk.%d.ffn_norm.weight" % l: [H],
                   "blk.%d.ffn_up.weight" % l: [H, 2 * I], "blk.%d.ffn_down.weight" % l: [I, H]})
assert set(ts) == set(shapes), sorted(set(ts) ^ set(shapes))
for n, ne in shapes.items():
    assert ts[n][1] == ne, (n, ts[n])
    assert ts[n][0] == (0 if len(ne) == 1 else 1), (n, ts[n][0])   # norms and factors F32, weights F16
    assert ts[n][2] % 32 == 0
EOF
}

@test "gguf: the tokenizer from the file's vocabulary gives the fixture ids and text (tok, detok, template)" {
  for c in tok-raw-special tok-frames vocab detok-stream chat template-text; do
    TOK_MODEL="$G/lr-BF16.gguf" run "$PY" "$ROOT/tests/tokcases.py" "$c"
    [ "$status" -eq 0 ] || fail "$c: $output"
  done
}

@test "gguf: a vocabulary as llama.cpp's converter writes it (tokenizer.model's own scores) gives the fixture ids too" {
  "$PY" "$ROOT/tests/lib/spm2gguf.py" "$FIX/tokenizer/tokenizer.model" "$LONGROPE" spm.gguf
  for c in tok-frames vocab chat; do
    TOK_MODEL="$PWD/spm.gguf" run "$PY" "$ROOT/tests/tokcases.py" "$c"
    [ "$status" -eq 0 ] || fail "$c: $output"
  done
  # the check can fail: without the Phi-3 name and architecture, no rstrip after <|end|>
  sed 's/phi3/phi2/; s/Phi3/Phi2/' spm.gguf > other.gguf
  TOK_MODEL="$PWD/other.gguf" run "$PY" "$ROOT/tests/tokcases.py" chat
  [ "$status" -ne 0 ]
}

@test "gguf: phi3-quantize refuses merges no SentencePiece score order gives, leaves nothing" {
  mkdir m
  cp "$LONGROPE"/*.json m/
  ln -s "$LONGROPE"/model-0000*.safetensors m/
  "$PY" -c '
import json, sys
t = json.load(open("m/tokenizer.json")); m = t["model"]["merges"]
del m[0]    # "▁ t": the scores cannot leave out a split whose parts are pieces
json.dump(t, open("m/tokenizer.json", "w"))'
  run --separate-stderr "$PHI3_BIN/phi3-quantize" -q m out.gguf
  assert_status 1
  [[ "$stderr" == *"not those of a SentencePiece vocabulary"* ]] || fail "$stderr"
  [ ! -e out.gguf ] && [ -z "$(ls -A | grep out.gguf)" ]
}

@test "gguf: a file without a vocabulary runs, but phi3-tok says it has no tokenizer" {
  run --separate-stderr "$PHI3_BIN/phi3-tok" -m "$G/gqa-BF16.gguf" --raw <<< "hi"
  assert_status 1
  assert_err "phi3-tok: $G/gqa-BF16.gguf: " "no tokenizer in the file"
  run --separate-stderr "$PHI3_BIN/phi3-quantize" -q "$GQA" x.gguf
  assert_status 0
  assert_err "phi3-quantize: " "no tokenizer.json"
}

@test "gguf: template eos, sampler stop ids and id limit, dump --top come from the file" {
  a=$(echo '[{"role":"user","content":"hi"}]' | "$PHI3_BIN/phi3-template" --json --no-generation-prompt -m "$LONGROPE" | frames2json)
  b=$(echo '[{"role":"user","content":"hi"}]' | "$PHI3_BIN/phi3-template" --json --no-generation-prompt -m "$G/lr-BF16.gguf" | frames2json)
  [ "$a" = "$b" ] && [[ "$b" == *'<|endoftext|>'* ]]
  # logits frames whose argmax is ID: the sampler stops on 32000 and 32007, not on 32001
  # (llama.cpp's end-of-generation set: eos and <|end|>); ids >= 32011 are never text
  for id in 32000 32007 32001; do
    "$PY" -c '
import msgpack, struct, sys
v = [0.0] * 32064; v[int(sys.argv[1])] = 10.0
sys.stdout.buffer.write(msgpack.packb({"type": "logits", "pos": 1, "data": struct.pack("<32064f", *v)}))' "$id" > l.bin
    out=$("$PHI3_BIN/phi3-sample" -m "$G/lr-BF16.gguf" --greedy < l.bin | frames2json | tail -n1)
    if [ "$id" = 32001 ]; then [ "$out" = '{"type":"end","reason":"input"}' ] || [[ "$out" != *stop* ]] || fail "$id: $out"
    else [ "$out" = '{"type":"end","reason":"stop"}' ] || fail "$id: $out"; fi
  done
  "$PY" -c '
import msgpack, struct, sys
v = [0.0] * 32064; v[32020] = 10.0; v[5] = 1.0
sys.stdout.buffer.write(msgpack.packb({"type": "logits", "pos": 1, "data": struct.pack("<32064f", *v)}))' > l.bin
  out=$("$PHI3_BIN/phi3-sample" -m "$G/lr-BF16.gguf" --greedy --tokenizer-ids < l.bin | frames2json | head -n1)
  [[ "$out" == *'"ids":[5]'* ]] || fail "--tokenizer-ids: $out"
  tokens_frame 1 22172 3186 > in
  "$RUN" -q -m "$LONGROPE" < in | "$PHI3_BIN/phi3-dump" --top 3 -m "$LONGROPE" > a
  "$RUN" -q -m "$G/lr-BF16.gguf" < in | "$PHI3_BIN/phi3-dump" --top 3 -m "$G/lr-BF16.gguf" > b
  cmp a b && grep -q '"piece"' b
}

@test "gguf: the FIFO loop with -m FILE.gguf reproduces cross.greedy; the wrapper prints what the directory prints" {
  local R="$LONGROPE/reference.safetensors" m="$G/lr-BF16.gguf"
  mkfifo fb
  tokens_frame $(ids "$R" cross.prompt) > prompt.bin
  timeout 120 bash -c '{ cat prompt.bin; cat fb; } | "$1" -q -m "$2" --backend cpu |
    "$3" -m "$2" --greedy -n 40 | tee fb out.bin > /dev/null' loop "$RUN" "$m" "$PHI3_BIN/phi3-sample"
  got=$(frames2json < out.bin | awk -F'"ids":\\[' '/"type":"tokens"/ { split($2, a, "]"); gsub(",", " ", a[1]); s = s (s == "" ? "" : " ") a[1] } END { print s }')
  [ "$got" = "$(ids "$R" cross.greedy)" ] || fail "got $got"
  a=$(timeout 120 "$ROOT/bin/phi3" generate -m "$LONGROPE" --greedy -n 12 "The capital of France")
  b=$(timeout 120 "$ROOT/bin/phi3" generate -m "$m" --greedy -n 12 "The capital of France")
  [ -n "$a" ] && [ "$a" = "$b" ] || fail "dir: '$a' gguf: '$b'"
  # chat: the wrapper takes the GGUF file's stop ids (phi3-sample --print-stop-ids)
  [ "$("$PHI3_BIN/phi3-sample" -m "$m" --print-stop-ids)" = "32000,32007" ]
  a=$(printf 'Hello\nAgain\n' | timeout 120 "$ROOT/bin/phi3" chat -m "$LONGROPE" --greedy -n 12 2> /dev/null)
  b=$(printf 'Hello\nAgain\n' | timeout 120 "$ROOT/bin/phi3" chat -m "$m" --greedy -n 12 2> /dev/null)
  [ -n "$a" ] && [ "$a" = "$b" ] || fail "chat dir: '$a' gguf: '$b'"
}

@test "gguf: sessions: bit-identical with a GGUF model; a session of the directory model is refused" {
  tokens_frames "1,22172,3186,29892" 450 "3186,338" > p.bin
  "$RUN" -q -m "$G/lr-BF16.gguf" < p.bin > fresh.out
  "$RUN" -q -m "$G/lr-BF16.gguf" --session "$S" < p.bin > s1.out
  "$RUN" -q -m "$G/lr-BF16.gguf" --session "$S" --stats < p.bin > s2.out 2> stats
  cmp fresh.out s1.out && cmp fresh.out s2.out && grep -q 'reused [1-9]' stats
  "$RUN" --session-rm "$S"
  "$RUN" -q -m "$LONGROPE" --session "$S" < p.bin > /dev/null
  run --separate-stderr "$RUN" -q -m "$G/lr-BF16.gguf" --session "$S" < p.bin
  assert_status 1
  assert_err "phi3-run: session $S: " "made by another model"
  a=$("$RUN" -v -m "$LONGROPE" < /dev/null 2>&1 | grep -o 'fingerprint [0-9a-f]*')
  b=$("$RUN" -v -m "$G/lr-BF16.gguf" < /dev/null 2>&1 | grep -o 'fingerprint [0-9a-f]*')
  [ -n "$a" ] && [ "$a" != "$b" ]
}

@test "gguf: differential: random streams equal with one long-lived session on Q4_0 (LongRoPE switch at 64), Q4_K_M and Q8_0 (--kv-type f16)" {
  # tests/lib/sessdiff.py as in 40-session.bats, on block-quantized weights: each stream
  # fresh and with the session that the earlier streams left, stdout and status equal
  local seed=$((RANDOM)) t=12
  [ -z "${PHI3_SANITIZE:-}" ] || t=6
  "$PHI3_BIN/phi3-quantize" -q -t Q4_0 "$LONGROPE" lr-q4_0.gguf
  "$PHI3_BIN/phi3-quantize" -q -t Q8_0 "$LONGROPE" lr-q8_0.gguf
  "$PHI3_BIN/phi3-quantize" -q -t Q4_K_M "$G/k256" k256-q4km.gguf 2> /dev/null
  run "$PY" "$ROOT/tests/lib/sessdiff.py" "$RUN" lr-q4_0.gguf 32064 64 "$S" 150 "$seed" $t
  [ "$status" = 0 ] || fail "Q4_0, seed $seed: $output"
  "$RUN" --session-rm "$S"
  run "$PY" "$ROOT/tests/lib/sessdiff.py" "$RUN" k256-q4km.gguf 512 64 "$S" 150 "$seed" $t
  [ "$status" = 0 ] || fail "Q4_K_M, seed $seed: $output"
  "$RUN" --session-rm "$S"
  run "$PY" "$ROOT/tests/lib/sessdiff.py" "$RUN" lr-q8_0.gguf 32064 64 "$S" 100 "$seed" $t --kv-type f16
  [ "$status" = 0 ] || fail "Q8_0 --kv-type f16, seed $seed: $output"
}

@test "gguf: bad files: one line naming the file and the cause, exit 1, for every tool" {
  local ok="$ROOT/tests/fuzz/gguf_fuzz.seeds/ok"
  head -c 3000 "$ok" > trunc.gguf
  { printf 'GGUF\1\0\0\0'; tail -c +9 "$ok"; } > v1.gguf
  "$PY" "$ROOT/tests/lib/mkgguf.py" q41.gguf q41
  "$PY" -c '
import sys; b = bytearray(open(sys.argv[1], "rb").read()); i = b.find(b"output_norm.weight"); b[i:i+6] = b"xutput"
open("miss.gguf", "wb").write(b)' "$ok"
  check() {
    run --separate-stderr "$@"
    assert_status 1
    assert_err "$1" "$2"
  }
  for t in phi3-run phi3-tok phi3-detok phi3-sample; do
    run --separate-stderr "$PHI3_BIN/$t" -m trunc.gguf < /dev/null
    assert_status 1
    assert_err "${t}: trunc.gguf: " "beyond the data section"
  done
  run --separate-stderr "$RUN" -m v1.gguf < /dev/null
  assert_status 1
  assert_err "phi3-run: v1.gguf: " "version 1 is not supported"
  run --separate-stderr "$RUN" -m q41.gguf < /dev/null
  assert_status 1
  assert_err "phi3-run: q41.gguf: " "tensor token_embd.weight: type Q4_1 is not supported"
  run --separate-stderr "$RUN" -m miss.gguf < /dev/null
  assert_status 1
  assert_err "phi3-run: miss.gguf: " "tensor output_norm.weight: missing"
  # block types on the CUDA backend are opt-in (PHI3_CUDA_QUANT=1): without it a clear
  # refusal, before any device use
  "$PHI3_BIN/phi3-quantize" -q -t Q8_0 "$LONGROPE" q8.gguf
  run --separate-stderr "$RUN" --backend cuda -m q8.gguf < /dev/null
  assert_status 1
  assert_err "phi3-run: cuda backend: " "quantized weights on the CUDA backend are opt-in and unverified (PHI3_CUDA_QUANT=1)"
  run --separate-stderr "$RUN" -m nothere.gguf < /dev/null
  assert_status 1
  assert_err "phi3-run: nothere.gguf: " "No such file"
}

@test "phi3-quantize: usage errors exit 2, bad input exit 1, and nothing is left behind" {
  run --separate-stderr "$PHI3_BIN/phi3-quantize" "$LONGROPE"
  assert_status 2
  run --separate-stderr "$PHI3_BIN/phi3-quantize" -t Q3_K "$LONGROPE" x.gguf
  assert_status 2
  assert_err "phi3-quantize: " "unknown type"
  run --separate-stderr "$PHI3_BIN/phi3-quantize" nothere x.gguf
  assert_status 1
  assert_err "phi3-quantize: " "nothere"
  run --separate-stderr "$PHI3_BIN/phi3-quantize" -q "$LONGROPE" nodir/x.gguf
  assert_status 1
  assert_err "phi3-quantize: nodir/x.gguf: " "temporary file"
  [ -z "$(ls -A | grep -v separate-stderr)" ] || fail "left: $(ls -A)"
  # re-type a GGUF file: F32 of the BF16 file equals the F32 file of the directory
  "$PHI3_BIN/phi3-quantize" -q -t F32 "$G/lr-BF16.gguf" r.gguf
  tokens_frame 1 22172 3186 > in
  all_logits r.gguf in a
  all_logits "$G/lr-F32.gguf" in b
  CMP a b --exact
}

@test "phi3-quantize: a source tokenizer.json that is a FIFO is named as not a regular file (it said 'Unknown error 32752')" {
  cp -r "$LONGROPE" m; rm m/tokenizer.json; mkfifo m/tokenizer.json
  run --separate-stderr timeout 20 "$PHI3_BIN/phi3-quantize" -q m x.gguf
  assert_status 1
  assert_err "phi3-quantize: m/tokenizer.json: " "not a regular file"
  [ ! -e x.gguf ] && [ -z "$(ls -A | grep x.gguf)" ] || fail "left: $(ls -A)"
}

@test "phi3-quantize: SIGTERM or SIGINT mid-run removes the temporary file and writes no OUT" {
  local stopped=0 i
  for i in 1 2 3 4 5 6; do
    for sig in TERM INT; do
      rm -f out.gguf
      "$PHI3_BIN/phi3-quantize" -q -t F32 "$LONGROPE" out.gguf & p=$!
      sleep "0.0$i"
      kill -"$sig" "$p" 2> /dev/null || true
      wait "$p" && st=0 || st=$?
      [ "$st" -ne 0 ] && stopped=$((stopped + 1))
      # never a temporary file, and OUT only when the run completed
      [ -z "$(ls -A | grep 'out.gguf.tmp')" ] || fail "temporary file left after SIG$sig ($st)"
      if [ "$st" -eq 0 ]; then "$RUN" -m out.gguf < /dev/null; else [ ! -e out.gguf ] || fail "OUT after SIG$sig"; fi
    done
  done
  [ "$stopped" -gt 0 ] || fail "no run was interrupted"
}

# quantized M T: phi3-quantize -t T of M into q.gguf, then that file re-typed F32 (every
# weight dequantized exactly) into deq.gguf: the reference of the quantized one.
quantized() { "$PHI3_BIN/phi3-quantize" -q -t "$2" "$1" q.gguf 2> /dev/null && "$PHI3_BIN/phi3-quantize" -q -t F32 q.gguf deq.gguf; }

@test "gguf: Q8_0, Q4_0, Q4_K_M files give the logits of the same weights dequantized to f32 (1e-5); error vs bf16 reported" {
  tokens_frame 1 5 9 200 3 77 300 12 45 6 7 8 9 10 400 23 > k.in
  tokens_frame $(ids "$LONGROPE/reference.safetensors" short.ids) > lr.in
  all_logits "$G/k256" k.in k.dir
  all_logits "$LONGROPE" lr.in lr.dir
  for t in Q8_0 Q4_0 Q4_K_M; do
    for m in k256 lr; do
      if [ $m = k256 ]; then src="$G/k256" in=k.in; else src="$LONGROPE" in=lr.in; fi
      quantized "$src" "$t"
      all_logits q.gguf "$in" q.out
      all_logits deq.gguf "$in" d.out
      CMP q.out d.out --tol 1e-5 || fail "$m $t vs its dequantized weights"
      echo "# $m $t vs bf16: $(CMP q.out ${in%.in}.dir --tol 100)" >&3
    done
  done
  # the check can fail: another quantization is not the reference
  quantized "$G/k256" Q4_0
  all_logits deq.gguf k.in d.out
  quantized "$G/k256" Q8_0
  all_logits q.gguf k.in q.out
  ! CMP q.out d.out --tol 1e-5
}

@test "gguf: PHI3_QUANT_LIMBS=1 (AVX-512 VNNI): Q4_K_M decode within 1e-5 of the dequantized weights; its session rows are kept apart" {
  local why
  why=$(limbs_missing)
  [ -z "$why" ] || skip "$why: PHI3_QUANT_LIMBS=1 changes nothing"
  quantized "$G/k256" Q4_K_M               # Q4_K, Q5_K (qkv), Q6_K (output, some ffn_down)
  # a 5-token prompt (exact: 4..12 tokens take rows dequantized to f32), then single tokens
  # (the decode path qlimb takes)
  { tokens_frame 1 5 9 200 3; tokens_frames 77 300 12 45 6 7 8 9 10 400 23 11; } > in
  "$RUN" --backend cpu -q -m deq.gguf < in > d.out
  PHI3_QUANT_LIMBS=1 "$RUN" --backend cpu -q -m q.gguf --session "$S" < in > l.out
  "$RUN" --session-info "$S" > info.json
  grep -q '"kernel":"cpu-limbs"' info.json || fail "$(cat info.json)"
  CMP l.out d.out --tol 1e-5 || fail "limbs against the dequantized weights"
  # the exact kernels give the dequantized weights' bits; the limbs do not
  "$RUN" --backend cpu -q -m q.gguf < in > q.out
  CMP q.out d.out --exact
  ! CMP l.out q.out --exact
  # an exact run reuses none of the limbs' rows, and the other way round; each is then
  # its own fresh run's bytes
  "$RUN" --backend cpu -q -m q.gguf --session "$S" --stats < in > s.out 2> stats
  [[ "$(cat stats)" == *"reused 0,"* ]] || fail "exact after limbs: $(cat stats)"
  cmp s.out q.out
  PHI3_QUANT_LIMBS=1 "$RUN" --backend cpu -q -m q.gguf --session "$S" --stats < in > s.out 2> stats
  [[ "$(cat stats)" == *"reused 0,"* ]] || fail "limbs after exact: $(cat stats)"
  cmp s.out l.out
}

@test "gguf: the Q4_K_M mix is llama.cpp's (qkv Q5_K, output and use_more_bits ffn_down Q6_K, rest Q4_K, norms F32)" {
  "$PHI3_BIN/phi3-quantize" -q -t Q4_K_M "$G/k256" q.gguf
  "$PHI3_BIN/phi3-quantize" -q -t Q4_K_M "$LONGROPE" lr.gguf
  "$PHI3_BIN/phi3-quantize" -q -t Q4_0 "$G/k256" q40.gguf
  # the threads split rows only: the same bytes with 1 and 3 of them
  "$PHI3_BIN/phi3-quantize" -q -t Q4_K_M --threads 1 "$G/k256" q1.gguf
  "$PHI3_BIN/phi3-quantize" -q -t Q4_K_M --threads 3 "$G/k256" q3.gguf
  cmp q.gguf q1.gguf && cmp q1.gguf q3.gguf
  "$PY" "$ROOT/tests/lib/gguf_info.py" q.gguf > q.json
  "$PY" "$ROOT/tests/lib/gguf_info.py" lr.gguf > lr.json
  "$PY" "$ROOT/tests/lib/gguf_info.py" q40.gguf > q40.json
  "$PY" - <<'EOF'
import json
F32, Q4_0, Q8_0, Q4_K, Q5_K, Q6_K = 0, 2, 8, 12, 13, 14
q = json.load(open("q.json"))
assert q["kv"]["general.file_type"] == ["u32", 15], q["kv"]["general.file_type"]
n = 8
more = [i for i in range(n) if i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2]
assert more == [0, 3, 6, 7]
for name, (t, ne, off) in q["tensors"].items():
    if len(ne) == 1: want = F32
    elif name == "output.weight": want = Q6_K
    elif "attn_qkv" in name: want = Q5_K
    elif "ffn_down" in name and int(name.split(".")[1]) in more: want = Q6_K
    else: want = Q4_K
    assert t == want, (name, t, want)
# tiny-longrope: 192 columns are no whole 256-block: Q8_0 where llama.cpp takes
# Q5_0/Q5_1/Q8_0; its ffn_down rows (256 columns) keep the K types (2 layers: use_more_bits
# picks layer 1 only)
lr = json.load(open("lr.json"))["tensors"]
assert lr["blk.0.attn_qkv.weight"][0] == Q8_0 and lr["output.weight"][0] == Q8_0
assert lr["blk.0.ffn_down.weight"][0] == Q4_K and lr["blk.1.ffn_down.weight"][0] == Q6_K
q40 = json.load(open("q40.json"))
assert q40["kv"]["general.file_type"] == ["u32", 2]
assert all(t == (F32 if len(ne) == 1 else Q6_K if name == "output.weight" else Q4_0)
           for name, (t, ne, off) in q40["tensors"].items())
EOF
}
