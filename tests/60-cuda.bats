#!/usr/bin/env bats
# 60-cuda.bats: phi3-run --backend cuda. Without a CUDA device (CI): one clear stderr line,
# exit 1. With a device: the fixtures within 2e-2 relative L2 (bf16 activations, fp16 KV
# cache); the whole GPU check (greedy agreement, sanitizer, full size, timings) is
# tests/gpu/check.sh.
load helper

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
CHECK() { "$PY" "$ROOT/tests/lib/logits_check.py" "$@"; }
ids() { "$PY" "$ROOT/tests/lib/refids.py" "$1" "$2"; }
tokens_frame() { local IFS=,; echo "{\"type\":\"tokens\",\"ids\":[$*]}" | json2frames; }

@test "--backend cuda without a device: exit 1 with one line naming the cause" {
  has_gpu && skip "a CUDA device is present"
  run --separate-stderr "$PHI3_BIN/phi3-run" -m "$LONGROPE" --backend cuda < /dev/null
  assert_status 1
  assert_err "phi3-run: cuda backend: " ""
  # a CUDA build says there is no device; a CPU-only build that it has no CUDA backend
  [[ "$stderr" == *"no CUDA device"* || "$stderr" == *"has no CUDA backend"* ]] || fail "unclear cause: $stderr"
  [ -z "$output" ] || fail "stdout not empty"
}

@test "cuda: tiny-longrope short logits within 2e-2" {
  has_gpu || skip "no CUDA device"
  tokens_frame $(ids "$LONGROPE/reference.safetensors" short.ids) > "$BATS_TEST_TMPDIR/in"
  "$PHI3_BIN/phi3-run" --backend cuda -m "$LONGROPE" --all-logits < "$BATS_TEST_TMPDIR/in" > "$BATS_TEST_TMPDIR/out"
  run CHECK "$LONGROPE/reference.safetensors" short.logits --tol 2e-2 < "$BATS_TEST_TMPDIR/out"
  assert_status 0
}

@test "cuda: tiny-gqa-window all logits within 2e-2 (GQA, window 16)" {
  has_gpu || skip "no CUDA device"
  tokens_frame $(ids "$GQA/reference.safetensors" all.ids) > "$BATS_TEST_TMPDIR/in"
  "$PHI3_BIN/phi3-run" --backend cuda -m "$GQA" --all-logits < "$BATS_TEST_TMPDIR/in" > "$BATS_TEST_TMPDIR/out"
  run CHECK "$GQA/reference.safetensors" all.logits --tol 2e-2 < "$BATS_TEST_TMPDIR/out"
  assert_status 0
}

@test "--session with --backend cuda needs PHI3_CUDA_SESSIONS=1 (layout 2 not yet run on a GPU); nothing is created" {
  S="phi3test-$$-cudasess"
  run --separate-stderr env -u PHI3_CUDA_SESSIONS "$PHI3_BIN/phi3-run" -m "$LONGROPE" --backend cuda --session "$S" < /dev/null
  assert_status 1
  [[ "$stderr" == *"PHI3_CUDA_SESSIONS=1"* ]] || fail "unclear cause: $stderr"
  [ ! -e "/dev/shm/phi3.$S" ] || { rm -f "/dev/shm/phi3.$S"; fail "a session object was created"; }
}

@test "--backend auto with a session and no opt-in runs on the CPU (logits as --backend cpu)" {
  cd "$BATS_TEST_TMPDIR"; S="phi3test-$$-autosess"
  echo '{"type":"tokens","ids":[1,2,3,4]}' | json2frames > p.bin
  "$PHI3_BIN/phi3-run" -m "$LONGROPE" -q --backend cpu < p.bin > cpu.out
  env -u PHI3_CUDA_SESSIONS "$PHI3_BIN/phi3-run" -m "$LONGROPE" -q --session "$S" < p.bin > auto.out
  "$PHI3_BIN/phi3-run" --session-rm "$S"
  cmp cpu.out auto.out
}
