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
