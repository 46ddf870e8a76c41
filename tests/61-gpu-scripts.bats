#!/usr/bin/env bats
# 61-gpu-scripts.bats: the CPU-runnable part of the GPU check and benchmark scripts
# (tests/gpu/check.sh, bench.sh, bench.py, report.py): syntax, the dry run on the tiny
# fixture with the CPU backend (streams, phi3-run and the FIFO loop, parsing, the table),
# the floor arithmetic against sums taken from the safetensors headers, and the parser
# against the very format strings of the CUDA backend's timing hook.
load helper

setup_file() {
  export DRY="$BATS_FILE_TMPDIR/dry"
  OUT="$DRY" PYTHON="$PY" "$ROOT/tests/gpu/bench.sh" --dry-run > "$BATS_FILE_TMPDIR/dry.out" 2>&1
  echo $? > "$BATS_FILE_TMPDIR/dry.rc"
}

@test "gpu scripts: bash -n, and shellcheck finds no warning" {
  for f in "$ROOT"/tests/gpu/*.sh; do bash -n "$f" || fail "syntax: $f"; done
  command -v shellcheck > /dev/null || skip "no shellcheck"
  run shellcheck -S warning "$ROOT"/tests/gpu/*.sh
  assert_status 0
}

@test "bench.sh: a bad argument is a usage error" {
  run --separate-stderr "$ROOT/tests/gpu/bench.sh" --bogus
  assert_status 2
  assert_err "bench.sh: " "--bogus"
}

@test "bench.sh --dry-run: every stage ran and the table has each context" {
  [ "$(cat "$BATS_FILE_TMPDIR/dry.rc")" = 0 ] || fail "$(cat "$BATS_FILE_TMPDIR/dry.out")"
  for s in run loop long; do
    grep -q "^$s	PASS" "$DRY/bench-stages.tsv" || fail "stage $s: $(cat "$DRY/bench-stages.tsv")"
  done
  for c in 32 128 512; do
    for p in default fast; do
      grep -q "^| decode ctx $c: phi3-run wall per token | $p | [0-9.]* ms" "$DRY/bench.md" || fail "no decode $c $p row"
      grep -q "^| prefill $c tokens (wall) | $p | [0-9.]* s" "$DRY/bench.md" || fail "no prefill $c $p row"
    done
  done
  grep -q "^| prefill 1024 tokens (wall) | default | [0-9.]* s" "$DRY/bench.md" || fail "no long prefill row"
  grep -q "^| pipeline overhead (loop - alone) | default | -*[0-9.]* ms" "$DRY/bench.md" || fail "no overhead row"
}

@test "bench.sh --dry-run: the loop's ids are reproduced by phi3-run alone" {
  run "$PY" -c 'import json, sys; R = json.load(open(sys.argv[1]))
for p in ("default", "fast"):
    r = R["loop_" + p]
    assert r["exit"] == 0 and r["tokens"] == 16 and r["ids_reproduced"] is True, r' "$DRY/bench.json"
  assert_status 0
}

@test "bench.sh --dry-run: the stream is the prompt twice (pos 0) and one-token frames" {
  run bash -c "'$PHI3_BIN/phi3-dump' < '$DRY/stream-128.bin'"
  assert_status 0
  [ "$(printf '%s\n' "$output" | grep -c '"type":"tokens"')" -eq 18 ] || fail "frames: $output"
  [ "$(printf '%s\n' "$output" | head -2 | grep -c '"pos":0')" -eq 2 ] || fail "prompt frames: ${output:0:300}"
  [ "$(printf '%s\n' "$output" | tail -16 | grep -c '"ids":\[[0-9]*\]}')" -eq 16 ] || fail "one-token frames"
}

@test "bench.py: the floors follow from the safetensors headers and the ceilings" {
  run "$PY" - "$LONGROPE" "$DRY" <<'PYEOF'
import json, os, re, struct, sys
model, dry = sys.argv[1], sys.argv[2]
cfg = json.load(open(os.path.join(model, "config.json")))
sizes, shapes = {}, {}
for f in os.listdir(model):
    if f.startswith("model") and f.endswith(".safetensors"):
        with open(os.path.join(model, f), "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            for k, t in json.loads(fh.read(n)).items():
                if k != "__metadata__":
                    sizes[k] = t["data_offsets"][1] - t["data_offsets"][0]
                    shapes[k] = t["shape"]
H = cfg["hidden_size"]
# decode reads every tensor but the embedding table, of which one row
w = sum(v for k, v in sizes.items() if k != "model.embed_tokens.weight") + 2 * H
R = json.load(open(os.path.join(dry, "bench.json")))
assert R["facts"]["weight_bytes_per_token"] == w, (R["facts"]["weight_bytes_per_token"], w)
L, nh = cfg["num_hidden_layers"], cfg["num_attention_heads"]
nkv = cfg.get("num_key_value_heads") or nh
kv_pos = L * 2 * nkv * (H // nh) * 4          # CPU backend: float32 K and V
C = json.load(open(os.path.join(dry, "ceilings.json")))
md = open(os.path.join(dry, "bench.md")).read()
for ctx in (32, 128, 512):
    want = (w + kv_pos * (ctx + 8)) / (C["read_TBps"] * 1e12) * 1e3     # 16 steps: mean ctx + 8
    m = re.search(r"\| decode ctx %d: phi3-run wall per token \| default \| [^|]* \| ([0-9.]+) ms" % ctx, md)
    assert m and abs(float(m.group(1)) - want) <= 0.0005 + 1e-3 * want, (ctx, m and m.group(1), want)
mats = sum(shapes[k][0] * shapes[k][1] for k in shapes if ".layers." in k and len(shapes[k]) == 2)
V = cfg["vocab_size"]
for n in (128, 1024):
    flop = 2 * n * mats + 2 * V * H + L * 2 * n * n * H
    want = flop / (C["gemm_TFLOPs"] * 1e12)
    m = re.search(r"\| prefill %d tokens \(wall\) \| default \| [^|]* \| ([0-9.]+) s" % n, md)
    assert m and abs(float(m.group(1)) - want) <= 0.00005 + 1e-3 * want, (n, m and m.group(1), want)
print("ok")
PYEOF
  assert_status 0
}

@test "bench.py parse: reads the lines the CUDA backend's timing hook prints" {
  # render the hook's own format strings (decode/cuda_backend.cu) with known values
  run "$PY" - "$ROOT/decode/cuda_backend.cu" "$BATS_TEST_TMPDIR/hook.log" <<'PYEOF'
import re, sys
src = open(sys.argv[1]).read()
fmts = []
for m in re.finditer(r'fprintf\(stderr,\s*((?:"(?:[^"\\]|\\.)*"\s*)+)', src):
    f = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))).replace("\\n", "\n")
    if "cuda timing" in f:
        fmts.append(f)
dec = next(f for f in fmts if "decode ctx" in f)
pre = next(f for f in fmts if "prefill n" in f)
with open(sys.argv[2], "w") as out:
    out.write(pre % (4096, 0, "fast", 123.25, 125.5))
    out.write(dec % (512, 575, 64, "fast-graph", 1.9, 1.8, 2.1, 2.0, 2.25, 2.2, 2.5))
print(len(fmts))
PYEOF
  assert_status 0
  run "$PY" "$ROOT/tests/gpu/bench.py" parse "$BATS_TEST_TMPDIR/hook.log"
  assert_status 0
  run "$PY" -c 'import json, sys; P = json.loads(sys.stdin.read())
d, p = P["decode"][0], P["prefill"][0]
assert (d["ctx0"], d["ctx1"], d["steps"], d["path"]) == (512, 575, 64, "fast-graph"), d
assert (d["gpu_ms"], d["forward_ms"], d["interval_ms"], d["interval_p90"]) == (1.9, 2.0, 2.25, 2.5), d
assert (p["n"], p["path"], p["gpu_ms"], p["forward_ms"]) == (4096, "fast", 123.25, 125.5), p' <<< "$output"
  assert_status 0
}

@test "report.py: a full-size decode disagreement that is no near-tie is a FAIL row" {
  d="$BATS_TEST_TMPDIR/rep"; mkdir -p "$d"
  printf 'fixtures\tPASS\tok\t\n' > "$d/stages.tsv"
  echo '{"dec32_default_max_rel_l2": 0.01, "dec32_default_mean_rel_l2": 0.005, "dec32_default_agree": 0.97,
         "dec32_default_mismatch_gaps_sd": [0.4], "dec32_default_exit": 0,
         "dec32_fast_max_rel_l2": 0.01, "dec32_fast_mean_rel_l2": 0.005, "dec32_fast_agree": 0.97,
         "dec32_fast_mismatch_gaps_sd": [0.01], "dec32_fast_exit": 0}' > "$d/full.json"
  run "$PY" "$ROOT/tests/gpu/report.py" "$d"
  assert_status 0
  [[ "$output" == *"| FAIL | full-size decode"* ]] || fail "no FAIL row: $output"
  [[ "$output" == *"| PASS | [fast] full-size decode"* ]] || fail "near-tie not a PASS: $output"
}

@test "kernel_model.py: the fast kernels' lane arithmetic (CPU model) matches naive attention" {
  run "$PY" "$ROOT/tests/gpu/kernel_model.py" --quick
  assert_status 0
  [ "$(printf '%s\n' "$output" | grep -c '^PASS')" -eq 15 ] || fail "$output"
}
