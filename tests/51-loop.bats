#!/usr/bin/env bats
# The generation loop as the plain shell pipeline of docs/PROTOCOL.md: greedy reproduces
# transformers' greedy ids (reference.safetensors), and the loop ends cleanly.
load helper

setup() {
  cd "$BATS_TEST_TMPDIR"
  REF="$ROOT/tests/lib/refids.py"
  mkfifo fb
}

# prompt_frame IDS...: one tokens frame
prompt_frame() { printf '{"type":"tokens","ids":[%s]}\n' "$(echo "$*" | tr ' ' ',')" | "$PHI3_BIN/phi3-dump" -r; }
# ids_of FILE: the ids of every tokens frame in FILE, space separated
ids_of() { "$PHI3_BIN/phi3-dump" < "$1" | awk -F'"ids":\\[' '/"type":"tokens"/ { split($2, a, "]"); gsub(",", " ", a[1]); s = s (s == "" ? "" : " ") a[1] } END { print s }'; }

# loop M PROMPT-FILE SAMPLER...: the PROTOCOL pipeline with a copy of the sampler's output
# in out.bin; detok text in text (when M has a tokenizer), stage statuses in status.
# `timeout` turns a hang into a failure.
loop() {
  local m=$1 p=$2; shift 2
  # phi3-detok at the end as in PROTOCOL.md, except where the ids are not text (NODETOK:
  # gqa-window has no tokenizer). cross.greedy holds id 32014, a padding row of the
  # embedding (32064 rows) beyond the tokenizer's 32011 pieces: it decodes to nothing.
  local detok=("$PHI3_BIN/phi3-detok" -m "$m")
  [ -z "${NODETOK:-}" ] || detok=("$PHI3_BIN/phi3-dump")
  timeout 120 bash -c '
    set -o pipefail
    { cat "$1"; cat fb; } | "$PHI3_BIN/phi3-run" -m "$2" --backend cpu | "${@:4}" | tee fb out.bin | $3 > text
    echo "${PIPESTATUS[*]}" > status' loop "$p" "$m" "${detok[*]}" "$@" 2> err
}

@test "loop: greedy through the FIFO reproduces tiny-longrope cross.greedy (40 ids across the LongRoPE switch)" {
  prompt_frame $("$REF" "$LONGROPE/reference.safetensors" cross.prompt) > prompt.bin
  want=$("$REF" "$LONGROPE/reference.safetensors" cross.greedy)
  run loop "$LONGROPE" prompt.bin "$PHI3_BIN/phi3-sample" -m "$LONGROPE" --greedy -n 40
  assert_status 0
  [ "$(cat status)" = "0 0 0 0 0" ] || fail "stage statuses: $(cat status); $(cat err)"
  [ ! -s err ] || fail "stderr: $(cat err)"
  [ "$(ids_of out.bin)" = "$want" ] || fail "got  $(ids_of out.bin)
want $want"
  [ "$("$PHI3_BIN/phi3-dump" < out.bin | tail -n1)" = '{"type":"end","reason":"length"}' ]
  # the text streamed at the end of the loop is the one-shot decode of the sampler's ids
  [ -s text ]
  "$PHI3_BIN/phi3-detok" -m "$LONGROPE" < out.bin | cmp - text
}

@test "loop: greedy through the FIFO reproduces tiny-gqa-window gen.greedy (30 ids, sliding window 16)" {
  prompt_frame $("$REF" "$GQA/reference.safetensors" gen.prompt) > prompt.bin
  want=$("$REF" "$GQA/reference.safetensors" gen.greedy)
  NODETOK=1 run loop "$GQA" prompt.bin "$PHI3_BIN/phi3-sample" --greedy -n 30
  assert_status 0
  [ "$(cat status)" = "0 0 0 0 0" ] || fail "stage statuses: $(cat status); $(cat err)"
  [ ! -s err ] || fail "stderr: $(cat err)"
  [ "$(ids_of out.bin)" = "$want" ] || fail "got  $(ids_of out.bin)
want $want"
}

@test "loop: a stop id ends it: that id, end reason stop, every stage exits 0 quietly" {
  prompt_frame $("$REF" "$LONGROPE/reference.safetensors" cross.prompt) > prompt.bin
  want=$("$REF" "$LONGROPE/reference.safetensors" cross.greedy | cut -d' ' -f1-15)
  # the 15th greedy id is 32014; make it a stop id
  [ "${want##* }" = 32014 ]
  run loop "$LONGROPE" prompt.bin "$PHI3_BIN/phi3-sample" --greedy --stop-ids 32014
  assert_status 0
  [ "$(cat status)" = "0 0 0 0 0" ] || fail "stage statuses: $(cat status); $(cat err)"
  [ ! -s err ] || fail "stderr: $(cat err)"
  [ "$(ids_of out.bin)" = "$want" ]
  [ "$("$PHI3_BIN/phi3-dump" < out.bin | tail -n1)" = '{"type":"end","reason":"stop"}' ]
}

@test "loop: the external Python sampler (examples/sampler.py -t 0) in place of phi3-sample gives the same ids" {
  prompt_frame $("$REF" "$LONGROPE/reference.safetensors" cross.prompt) > prompt.bin
  want=$("$REF" "$LONGROPE/reference.safetensors" cross.greedy)
  NODETOK=1 run loop "$LONGROPE" prompt.bin "$ROOT/examples/sampler.py" -t 0 -n 40
  assert_status 0
  [ "$(cat status)" = "0 0 0 0 0" ] || fail "stage statuses: $(cat status); $(cat err)"
  [ ! -s err ] || fail "stderr: $(cat err)"
  [ "$(ids_of out.bin)" = "$want" ]
}

@test "loop: sampling with a seed is reproducible through the loop" {
  printf 'Once upon a time' | "$PHI3_BIN/phi3-tok" -m "$LONGROPE" --raw > prompt.bin
  S=("$PHI3_BIN/phi3-sample" -m "$LONGROPE" --tokenizer-ids --seed 11 -t 0.8 --top-k 50 --top-p 0.95 -n 25)
  loop "$LONGROPE" prompt.bin "${S[@]}"
  [ "$(cat status)" = "0 0 0 0 0" ] || fail "stage statuses: $(cat status); $(cat err)"
  [ ! -s err ] || fail "stderr: $(cat err)"
  cp out.bin a.bin; cp text a.txt
  loop "$LONGROPE" prompt.bin "${S[@]}"
  cmp a.bin out.bin
  cmp a.txt text
  [ "$(ids_of out.bin | wc -w)" -eq 25 ]
  # text to text: the streamed text is the one-shot decode of the sampled ids
  prompt_frame $(ids_of out.bin) | "$PHI3_BIN/phi3-detok" -m "$LONGROPE" | cmp - text
}

@test "loop: a sampler that dies mid-loop ends the loop (no hang); its status shows" {
  prompt_frame 1 450 1701 > prompt.bin
  NODETOK=1 run loop "$LONGROPE" prompt.bin "$PY" "$ROOT/tests/lib/fakesampler.py" --id 13 --die-at 4 9
  [ "$status" -ne 124 ] || fail "the loop hung"
  read -r -a st < status
  [ "${st[2]}" -eq 9 ]                          # the sampler's own status
  [ "${st[0]}" -eq 0 ] && [ "${st[1]}" -eq 0 ] && [ "${st[3]}" -eq 0 ] && [ "${st[4]}" -eq 0 ]
  [ "$(ids_of out.bin)" = "13 13 13" ]
}

@test "loop: the chat prompt of PROTOCOL.md (phi3-template | phi3-tok) goes into the loop" {
  echo '[{"role":"user","content":"Hello!"}]' > chat.json
  "$PHI3_BIN/phi3-template" --json < chat.json | "$PHI3_BIN/phi3-tok" -m "$LONGROPE" > prompt.bin
  # one tokens frame per text frame; all but the last say partial (no logits for them)
  [ "$("$PHI3_BIN/phi3-dump" < prompt.bin | grep -c '"partial":true')" -eq $(( $("$PHI3_BIN/phi3-dump" < prompt.bin | wc -l) - 1 )) ]
  want=$(sed -n 1p "$FIX/tokenizer/chat-cases.jsonl" | $PY -c 'import json,sys; print(" ".join(map(str, json.load(sys.stdin)["ids"])))')
  [ "$(ids_of prompt.bin)" = "$want" ]
  run loop "$LONGROPE" prompt.bin "$PHI3_BIN/phi3-sample" -m "$LONGROPE" --greedy -n 8
  assert_status 0
  [ "$(cat status)" = "0 0 0 0 0" ] || fail "stage statuses: $(cat status); $(cat err)"
  [ ! -s err ] || fail "stderr: $(cat err)"
  # the sampler was asked once, after the whole prompt: 8 tokens, the first at its end
  [ "$(ids_of out.bin | wc -w)" -eq 8 ]
  n=$(echo $want | wc -w)
  "$PHI3_BIN/phi3-dump" < out.bin | head -n1 | grep -q "\"pos\":$n" || fail "first sampled token: $("$PHI3_BIN/phi3-dump" < out.bin | head -n1), prompt $n ids"
}
