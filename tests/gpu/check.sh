#!/usr/bin/env bash
# check.sh: the whole GPU check of phi3-run's CUDA backend in one run (<= ~9 min), for the
# default path and the opt-in fast path (PHI3_CUDA_FAST=1) alike:
#   1 device line   2 fixtures with --backend cuda (compare.py), 2b sessions, 2c NaN kept
#   3 compute-sanitizer memcheck + racecheck on the tiny models   4 full-size random
#   Phi-3-mini vs transformers fp32 (last logits of 300/5000-token prompts; 32 decode steps
#   fed transformers' greedy ids)   5 tests/gpu/bench.sh (timings against the floors, the
#   transformers peer)   then the table. 2d: quantized GGUF models on CUDA
#   (PHI3_CUDA_QUANT=1) vs the CPU; 2e: the batching server on CUDA (PHI3_CUDA_BATCH=1)
#   vs solo runs; 6, 7 (time allowing): full-size Q4_K_M vs bf16 decode, 32 served streams
#   vs one.
# Uses the binaries already built in $PHI3_BIN (default bin/; build them where msgpack-dev
# is, e.g. `make O=build BINDIR=bin` and `tests/gpu/bench.sh --prepare`, and carry bin/ and
# build/gpu). REBUILD=1 rebuilds here.
# Every log goes to $CHECK_WORK (default /tmp/phi3-gpu-check); $OUT (default: the same)
# receives at most 7 files: report.txt, GPU-RESULTS.md, bench.md, bench.json, full.json,
# peer.json and logs.tar.gz (the device tool brings back 8 files at most), published after
# stages 3 and 4 and at the end (a run killed from outside keeps them). Every stage runs
# under `timeout`; a failing stage does not stop the others; the table is printed last.
# Exit 0 when every correctness line passed. SKIP_FULL=1 leaves out stage 4, SKIP_BENCH=1
# stage 5, SKIP_FAST=1 the fast path's repeats of stages 2-4.
set -u
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
# Sessions on the CUDA backend are opt-in until this check has passed with layout 2 (decode/backend.h).
export PHI3_CUDA_SESSIONS=1
RESULTS=${OUT:-/tmp/phi3-gpu-check}
OUT=${CHECK_WORK:-/tmp/phi3-gpu-check}
BIN=${PHI3_BIN:-$ROOT/bin}
BUDGET_S=${BUDGET_S:-540}          # the whole script; the bench gets what is left
MODEL_DIR=${PHI3_RAND_MODEL:-/tmp/phi3-mini-rand}
# PHI3_GPU_LAYERS=N: a quick rehearsal on the real shapes with only N layers (not the
# figures to report: the table then says so).
CONFIG=tests/gpu/phi3-mini-128k-config.json
if [ -n "${PHI3_GPU_LAYERS:-}" ]; then
    CONFIG=/tmp/phi3-config-${PHI3_GPU_LAYERS}l.json
    python3 -c "import json,sys; c=json.load(open(sys.argv[1])); c['num_hidden_layers']=int(sys.argv[2]); json.dump(c, open(sys.argv[3], 'w'), indent=1)" \
        tests/gpu/phi3-mini-128k-config.json "$PHI3_GPU_LAYERS" "$CONFIG"
    MODEL_DIR=$MODEL_DIR-${PHI3_GPU_LAYERS}l
fi
PY=${PYTHON:-python3}
mkdir -p "$OUT"
T0=$(date +%s)
ST=$OUT/stages.tsv
: > "$ST"
stage() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >> "$ST"; echo "== stage $1: $2 $3" >&2; }
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
# publish: the table so far into report.txt, and the few result files into $RESULTS (after
# every long stage, so that a run killed from outside still brings back what it measured)
publish() {
    "$PY" tests/gpu/report.py "$OUT" > "$OUT/report.txt" 2>&1 || echo "report.py failed" >> "$OUT/report.txt"
    echo "total $(( $(date +%s) - T0 )) s${1:+ ($1)}, logs in $OUT" >> "$OUT/report.txt"
    [ "$RESULTS" = "$OUT" ] && return
    mkdir -p "$RESULTS"
    for f in report.txt GPU-RESULTS.md full.json bench/bench.md bench/bench.json bench/peer.json; do
        [ -e "$OUT/$f" ] && cp "$OUT/$f" "$RESULTS/"
    done
    tar -C "$OUT" --exclude='*.bin' --exclude='loop-*' -czf "$RESULTS/logs.tar.gz" . 2>/dev/null
}

# 0. binaries
if [ "${REBUILD:-0}" = 1 ]; then
    timeout 300 make O=build BINDIR=bin CUDA=1 GENCODE="-gencode arch=compute_90,code=sm_90" -j8 \
        > "$OUT/build.log" 2>&1 && stage build PASS "rebuilt for sm_90" || stage build FAIL "see build.log"
fi
if [ ! -x "$BIN/phi3-run" ]; then
    stage binaries FAIL "no $BIN/phi3-run (build with make O=build BINDIR=bin and carry bin/)"
fi

# 1. device
DEV=$(timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)
nvidia-smi > "$OUT/nvidia-smi.log" 2>&1
stage device INFO "${DEV:-nvidia-smi failed}"
[ -n "${PHI3_GPU_LAYERS:-}" ] && stage rehearsal INFO "full-size stages use only $PHI3_GPU_LAYERS layers: not the figures to report"

# The paths: the verified default, then the opt-in fast kernels (kernels/fast.cuh).
PATHS="default fast"
[ "${SKIP_FAST:-0}" = 1 ] && PATHS=default
path_env() { if [ "$1" = fast ]; then echo PHI3_CUDA_FAST=1; else echo PHI3_CUDA_FAST=0; fi; }
sfx() { if [ "$1" = fast ]; then echo -fast; fi; }

for P in $PATHS; do
# 2. fixtures
t=$(date +%s)
env "$(path_env "$P")" timeout 180 "$PY" tests/gpu/compare.py --bin "$BIN" --fix tests/fixtures --backend cuda \
    --json "$OUT/fixtures$(sfx "$P").json" --log "$OUT/phi3-run-fixtures$(sfx "$P").log" \
    > "$OUT/fixtures$(sfx "$P").log" 2>&1
rc=$?
case $rc in
0) stage "fixtures$(sfx "$P")" PASS "$(tail -1 "$OUT/fixtures$(sfx "$P").log")" "$(( $(date +%s) - t )) s" ;;
124) stage "fixtures$(sfx "$P")" FAIL "timeout after 180 s" ;;
*) stage "fixtures$(sfx "$P")" FAIL "exit $rc: $(tail -1 "$OUT/fixtures$(sfx "$P").log" | cut -c1-120)" ;;
esac

# 2b. sessions on the CUDA backend (prefix upload, row write-back, the LongRoPE switch)
env "$(path_env "$P")" timeout 120 "$PY" tests/gpu/session_check.py --bin "$BIN" --fix tests/fixtures \
    > "$OUT/session$(sfx "$P").log" 2>&1
if [ $? = 0 ]; then stage "session$(sfx "$P")" PASS "$(grep -c '^PASS' "$OUT/session$(sfx "$P").log") checks: $(grep 'reusing' "$OUT/session$(sfx "$P").log" | cut -c60-)"
else stage "session$(sfx "$P")" FAIL "$(grep -m1 '^FAIL' "$OUT/session$(sfx "$P").log" | cut -c1-140)"; cat "$OUT/session$(sfx "$P").log" >&2; fi
done

# 2c. a NaN upstream of the KV cache stays NaN (CPU reference; default path: known saturation)
timeout 120 "$PY" tests/gpu/nan_check.py --bin "$BIN" --fix tests/fixtures > "$OUT/nan.log" 2>&1
rc=$?
while IFS= read -r line; do
    case $line in
    "PASS nan: CUDA"*) p=${line#PASS nan: CUDA }; stage "nan-${p%% *}" PASS "${p#* }" ;;
    "KNOWN nan:"*) stage nan-default INFO "${line#KNOWN nan: }" ;;
    "FAIL nan:"*) stage nan FAIL "${line#FAIL nan: }" ;;
    esac
done < "$OUT/nan.log"
[ $rc = 0 ] || grep -q "^FAIL" "$OUT/nan.log" || stage nan FAIL "exit $rc: $(tail -1 "$OUT/nan.log" | cut -c1-120)"

# 2d. quantized GGUF weights on CUDA (PHI3_CUDA_QUANT=1, opt-in) vs the CPU on the same files
if ls build/gpu/quant/k256-Q4_K_M.gguf > /dev/null 2>&1; then
    timeout 180 "$PY" tests/gpu/quant_check.py --bin "$BIN" --dir build/gpu/quant > "$OUT/quant.log" 2>&1
    rc=$?
    while IFS= read -r line; do
        case $line in
        "PASS quant "*) p=${line#PASS quant }; stage "quant-${p%%:*}" PASS "${p#*: }" ;;
        "FAIL quant "*) p=${line#FAIL quant }; stage "quant-${p%%:*}" FAIL "${p#*: }" ;;
        esac
    done < "$OUT/quant.log"
    [ $rc = 0 ] || grep -q "^FAIL" "$OUT/quant.log" || stage quant FAIL "exit $rc: $(tail -1 "$OUT/quant.log" | cut -c1-120)"
else
    stage quant SKIP "no build/gpu/quant (tests/gpu/bench.sh --prepare writes it)"
fi

# 2e. the batching server on CUDA (PHI3_CUDA_BATCH=1, opt-in): concurrent streams vs solo runs
timeout 240 "$PY" tests/gpu/server_check.py --bin "$BIN" --fix tests/fixtures > "$OUT/server.log" 2>&1
rc=$?
while IFS= read -r line; do
    case $line in
    "PASS server "*) stage server-cuda-batch PASS "${line#PASS server cuda-batch: }" ;;
    "FAIL server "*) stage server-cuda-batch FAIL "${line#FAIL server }" ;;
    esac
done < "$OUT/server.log"
[ $rc = 0 ] || grep -q "^FAIL" "$OUT/server.log" || stage server-cuda-batch FAIL "exit $rc: $(tail -1 "$OUT/server.log" | cut -c1-120)"

# 3. compute-sanitizer (may be unsupported on some virtualised machines: SKIP, not FAIL)
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
"$PY" - "$OUT" <<'PYEOF'
import os, struct, sys, json, msgpack
out = sys.argv[1]
def tensor(path, name):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8)); head = json.loads(f.read(n)); t = head[name]
        a, b = t["data_offsets"]; f.seek(8 + n + a); raw = f.read(b - a)
    return struct.unpack("<%di" % (len(raw) // 4), raw)
ref = "tests/fixtures/tiny-longrope/reference.safetensors"
prompt, greedy = tensor(ref, "cross.prompt"), tensor(ref, "cross.greedy")
with open(os.path.join(out, "san-gen.bin"), "wb") as f:   # 40 + 30 tokens: crosses 64
    f.write(msgpack.packb({"type": "tokens", "ids": list(prompt)}))
    for t in greedy[:30]:
        f.write(msgpack.packb({"type": "tokens", "ids": [t]}))
ids = tensor("tests/fixtures/tiny-gqa-window/reference.safetensors", "all.ids")
with open(os.path.join(out, "san-gqa.bin"), "wb") as f:
    f.write(msgpack.packb({"type": "tokens", "ids": list(ids)}))
    f.write(msgpack.packb({"type": "tokens", "ids": [5]}))
PYEOF
san() {   # name tool model input [path]
    local name=$1 tool=$2 model=$3 input=$4 log=$OUT/sanitizer-$1.log
    if [ -z "$SAN" ]; then stage "$name" SKIP "compute-sanitizer not found"; return; fi
    if [ "$(left)" -lt 330 ]; then stage "$name" SKIP "time budget"; return; fi
    # the sanitizer's report goes to --log-file (it writes to stdout otherwise)
    env "$(path_env "${5:-default}")" timeout 60 "$SAN" --tool "$tool" --error-exitcode 9 --print-limit 20 \
        --log-file "$log" "$BIN/phi3-run" -m "$model" --backend cuda -q < "$input" > /dev/null 2> "$log.stderr"
    local rc=$?
    if grep -qiE "device not supported|not supported on this|unable to find injection|could not be initialized" "$log"; then
        stage "$name" SKIP "$(grep -iE 'not supported|unable|could not' "$log" | head -1 | cut -c1-100)"
    elif [ $rc = 124 ]; then stage "$name" SKIP "timeout after 60 s"
    elif [ $rc = 0 ] && grep -qE "ERROR SUMMARY: 0 errors|RACECHECK SUMMARY: 0 hazards displayed \(0 errors" "$log"; then
        stage "$name" PASS "0 errors"
    else stage "$name" FAIL "exit $rc: $(grep -m1 'ERROR SUMMARY\|=========.*Invalid\|Error' "$log" | cut -c1-100)"
        tail -20 "$log" "$log.stderr" >&2
    fi
}
san memcheck memcheck tests/fixtures/tiny-longrope "$OUT/san-gen.bin"
san racecheck racecheck tests/fixtures/tiny-gqa-window "$OUT/san-gqa.bin"
if [ "${SKIP_FAST:-0}" != 1 ]; then
    san memcheck-fast memcheck tests/fixtures/tiny-longrope "$OUT/san-gen.bin" fast
    san racecheck-fast racecheck tests/fixtures/tiny-gqa-window "$OUT/san-gqa.bin" fast
    san racecheck-fast-decode racecheck tests/fixtures/tiny-longrope "$OUT/san-gen.bin" fast
fi

publish "after the tiny-model stages"

# 4. full-size model vs transformers fp32 (the timings are stage 5's)
rest=$(left)
FULL_PARTS=copy,gen,run,runfast,hf,dec32
[ "${SKIP_FAST:-0}" = 1 ] && FULL_PARTS=copy,gen,run,hf,dec32
if [ "${SKIP_FULL:-0}" = 1 ]; then
    stage full-size SKIP "SKIP_FULL=1"
elif [ "$rest" -gt 90 ]; then
    t=$(date +%s)
    # leave the bench at least 150 s
    timeout $(( rest > 300 ? rest - 160 : rest - 10 )) "$PY" tests/gpu/full_model.py --bin "$BIN" \
        --config "$CONFIG" --dir "$MODEL_DIR" --json "$OUT/full.json" --parts "$FULL_PARTS" --timing 0 \
        --log "$OUT/phi3-run-full.log" --deadline $(( T0 + BUDGET_S - 165 )) > "$OUT/full.log" 2>&1
    rc=$?
    if [ $rc = 0 ]; then stage full-size PASS "ran" "$(( $(date +%s) - t )) s"
    elif [ $rc = 124 ]; then stage full-size FAIL "timeout (partial results kept)" "$(( $(date +%s) - t )) s"
    else stage full-size FAIL "exit $rc: $(grep -m1 -i 'error' "$OUT/full.log" | cut -c1-120)"; fi
else
    stage full-size SKIP "only $rest s left"
fi

publish "after the full-size stage"

# 5. the benchmark (timings beside their floors, the transformers peer), in what is left
rest=$(left)
if [ "${SKIP_BENCH:-0}" = 1 ]; then
    stage bench SKIP "SKIP_BENCH=1"
elif [ "$rest" -gt 60 ]; then
    OUT=$OUT/bench PHI3_RAND_MODEL=$MODEL_DIR BENCH_BUDGET_S=$(( rest - 10 )) PHI3_BIN=$BIN \
        BENCH_PATHS=$(echo "$PATHS" | sed 's/fast/fast pdl/' | tr ' ' ,) timeout $(( rest - 5 )) tests/gpu/bench.sh > "$OUT/bench.log" 2>&1
    stage bench INFO "exit $?, $(grep -c FAIL "$OUT/bench/bench-stages.tsv" 2>/dev/null) stage(s) failed (bench-stages.tsv)"
else
    stage bench SKIP "only $rest s left"
fi

# 6. Q4_K_M against bf16 decode on the full-size model (quant_check.py --full), if time is left
rest=$(left)
if [ "$rest" -gt 240 ] && [ -e "$MODEL_DIR/config.json" ] && ls build/gpu/quant > /dev/null 2>&1; then
    timeout $(( rest - 10 )) "$PY" tests/gpu/quant_check.py --bin "$BIN" --dir build/gpu/quant \
        --full "$MODEL_DIR" --deadline $(( T0 + BUDGET_S )) > "$OUT/quant-full.log" 2>&1
    stage quant-full INFO "$(grep 'decode .*x bf16' "$OUT/quant-full.log" | cut -c6-140)"
else
    stage quant-full SKIP "only $rest s left"
fi

# 7. 32 streams through the CUDA server vs one on the full-size model, if time is left
rest=$(left)
if [ "$rest" -gt 150 ] && [ -e "$MODEL_DIR/config.json" ]; then
    timeout $(( rest - 10 )) "$PY" tests/gpu/server_check.py --bin "$BIN" --fix tests/fixtures --streams 2 \
        --full "$MODEL_DIR" > "$OUT/server-full.log" 2>&1
    stage server-full INFO "$(grep 'streams .*x one stream' "$OUT/server-full.log" | cut -c6-140)"
else
    stage server-full SKIP "only $rest s left"
fi

# the table, last (the streams and the model stay behind)
publish
cat "$OUT/report.txt"
if grep -q "^| FAIL" "$OUT/report.txt"; then exit 1; fi
exit 0
