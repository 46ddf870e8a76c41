#!/usr/bin/env bash
# bench.sh: phi3-run against the hardware limit on the GPU machine (issue 10 item 1), in one
# run, each stage under `timeout`, every result written as soon as it is measured (a later
# stage's timeout keeps the earlier figures), the table last:
#   1 ceilings   tests/gpu/gpu_bench.cu: read bandwidth, copy bandwidth, bf16 GEMM rate (cuBLAS)
#   2 model      full-size random-weight Phi-3-mini-128k in $PHI3_RAND_MODEL (reused when
#                check.sh made it; else tests/bench/gen_model.c, else full_model.py --parts gen)
#   3 run        per path (default; fast = PHI3_CUDA_FAST=1; pdl = 2) and context 512 / 4K / 32K:
#                prefill (GPU time) and decode (GPU time per step, phi3-run's wall per token)
#                from prepared streams, PHI3_CUDA_TIMING=1; a per-op timeline (=2)
#   4 loop       the FIFO loop with phi3-sample vs phi3-run alone: the pipeline overhead
#   5 nsys       a kernel summary of a few decode steps when nsys works there (else a line);
#                ncu: DRAM throughput of the fast path's first kernels when ncu is there
#   6 peer       transformers eager (prefill, decode) on the same card
#   7 long       prefill of 131,072 tokens per path when the time left allows
#   8 compiled   transformers static cache + torch.compile decode when the time left allows
#   then the table: each figure beside its floor (tests/gpu/bench.py table).
# usage: tests/gpu/bench.sh            on the GPU machine (binaries in $PHI3_BIN, default bin/)
#        tests/gpu/bench.sh --prepare  here: build build/gpu/gpu_bench and build/gpu/gen_model,
#                                      write build/gpu/quant/*.gguf (check.sh stage 2d); carry
#                                      build/gpu with bin/
#        tests/gpu/bench.sh --dry-run  CPU backend on the tiny fixture, nominal ceilings: the
#                                      drivers, streams, parsing and table (tests/61-gpu-scripts.bats)
# Environment: OUT (default /tmp/phi3-bench), BENCH_BUDGET_S (default 330: the whole script),
# PHI3_RAND_MODEL (default /tmp/phi3-mini-rand), BENCH_PATHS (default "default,fast,pdl"),
# BENCH_LONG=0 to leave out the 131,072-token prefill, PYTHON (default python3).
set -u
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
MODE=gpu
case "${1:-}" in
--dry-run) MODE=dry ;;
--prepare) MODE=prepare ;;
"") ;;
*) echo "bench.sh: unknown argument '$1' (--dry-run, --prepare)" >&2; exit 2 ;;
esac
OUT=${OUT:-/tmp/phi3-bench}
BIN=${PHI3_BIN:-$ROOT/bin}
PY=${PYTHON:-python3}
GB=$ROOT/build/gpu
mkdir -p "$OUT"

if [ "$MODE" = prepare ]; then
    mkdir -p "$GB"
    NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
    "$NVCC" -O2 -std=c++17 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80 \
        -Xcompiler -Wall,-Werror -Werror all-warnings tests/gpu/gpu_bench.cu -lcublas \
        -Xlinker -rpath="$(dirname "$(dirname "$NVCC")")/lib64" -o "$GB/gpu_bench" || exit 1
    cc -O2 -o "$GB/gen_model" tests/bench/gen_model.c -Wl,-Bstatic -ljansson \
        -Wl,-Bdynamic || exit 1
    # quantized GGUF models for check.sh's stage 2d (tests/gpu/quant_check.py): a random
    # 256-wide Phi-3 (vocabulary 512, original context 64) in Q8_0, Q4_0 and Q4_K_M
    mkdir -p "$GB/quant"
    "${PYTHON:-python3}" - "$GB/quant/k256.json" <<'PYEOF' || exit 1
import json, sys
c = json.load(open("tests/bench/phi3-mini-128k-instruct.config.json"))
c.update({"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
          "num_key_value_heads": 4, "vocab_size": 512, "original_max_position_embeddings": 64,
          "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2})
for k in ("short_factor", "long_factor"): c["rope_scaling"][k] = c["rope_scaling"][k][:32]
json.dump(c, open(sys.argv[1], "w"), indent=1)
PYEOF
    rm -rf "$GB/quant/k256"
    "$GB/gen_model" "$GB/quant/k256.json" "$GB/quant/k256" > /dev/null || exit 1
    for t in Q8_0 Q4_0 Q4_K_M; do
        "$BIN/phi3-quantize" -q -t "$t" "$GB/quant/k256" "$GB/quant/k256-$t.gguf" || exit 1
    done
    rm -rf "$GB/quant/k256"
    echo "bench.sh: built $GB/gpu_bench and $GB/gen_model; quantized test models in $GB/quant"
    exit 0
fi

# the GPU run generates a 7.6 GB model: never where there is no GPU
if [ "$MODE" = gpu ] && ! timeout 20 nvidia-smi -L > /dev/null 2>&1; then
    echo "bench.sh: no GPU here (nvidia-smi -L failed); --dry-run runs the drivers on the CPU" >&2
    exit 1
fi
T0=$(date +%s)
BUDGET_S=${BENCH_BUDGET_S:-330}
DEADLINE=$(( T0 + BUDGET_S ))
left() { echo $(( DEADLINE - $(date +%s) )); }
ST=$OUT/bench-stages.tsv
: > "$ST"
stage() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$ST"; echo "== bench $1: $2 $3" >&2; }
# done_stage RC NAME PASS-TEXT FAIL-TEXT (FAIL-TEXT may use $rc)
done_stage() { rc=$1; if [ "$rc" = 0 ]; then stage "$2" PASS "$3"; else stage "$2" FAIL "$4 (exit $rc)"; fi; }
# tmo S: a stage's timeout, S seconds at most and never past the deadline (5 s at least)
tmo() { local l; l=$(left); [ "$l" -lt "$1" ] && set -- "$l"; [ "$1" -lt 5 ] && set -- 5; echo "$1"; }

if [ "$MODE" = dry ]; then
    BACKEND=cpu
    MODEL=tests/fixtures/tiny-longrope
    ARGS=(--contexts "32,128,512" --decode-tokens 16 --loop-tokens 16 --loop-context 32 --long 1024)
    PATHS=${BENCH_PATHS:-default,fast}
else
    BACKEND=cuda
    MODEL=${PHI3_RAND_MODEL:-/tmp/phi3-mini-rand}
    ARGS=(--contexts "512,4096,32768" --decode-tokens 64 --loop-tokens 128 --loop-context 512 --long 131072)
    PATHS=${BENCH_PATHS:-default,fast,pdl}
fi
# bench.py PART with the common arguments (a command, so that `timeout` can run it)
B=("$PY" tests/gpu/bench.py --bin "$BIN" --model "$MODEL" --backend "$BACKEND" --out "$OUT"
   --paths "$PATHS" --deadline "$DEADLINE" --ceilings "$OUT/ceilings.json" --peer "$OUT/peer.json"
   "${ARGS[@]}")

# 1. ceilings
if [ "$MODE" = dry ]; then
    echo '{"device": "CPU (dry run)", "nominal": true, "read_TBps": 0.02, "copy_TBps": 0.02, "gemm_TFLOPs": 0.2}' \
        > "$OUT/ceilings.json"
    stage ceilings SKIP "dry run: nominal ceilings"
else
    GPUB=$GB/gpu_bench
    if [ ! -x "$GPUB" ]; then
        GPUB=/tmp/phi3-gpu_bench
        timeout "$(tmo 120)" nvcc -O2 -std=c++17 -arch=sm_90 tests/gpu/gpu_bench.cu -lcublas \
            -Xlinker -rpath=/usr/local/cuda/lib64 -o "$GPUB" \
            > "$OUT/gpu_bench-build.log" 2>&1 || GPUB=
    fi
    if [ -n "$GPUB" ] && timeout "$(tmo 90)" "$GPUB" 4 > "$OUT/ceilings.json" 2> "$OUT/gpu_bench.log"; then
        stage ceilings PASS "$(cat "$OUT/ceilings.json")"
    else
        stage ceilings FAIL "gpu_bench did not run (see gpu_bench*.log): the floors stay n/a"
        rm -f "$OUT/ceilings.json"
    fi
fi

# 2. model
if [ "$MODE" = gpu ] && [ ! -e "$MODEL/.complete" ]; then
    GEN=$GB/gen_model
    if [ ! -x "$GEN" ]; then
        GEN=/tmp/phi3-gen_model
        cc -O2 -o "$GEN" tests/bench/gen_model.c -ljansson > "$OUT/gen-build.log" 2>&1 || GEN=
    fi
    mkdir -p "$MODEL"
    if [ -n "$GEN" ] && timeout "$(tmo 150)" "$GEN" tests/bench/phi3-mini-128k-instruct.config.json "$MODEL" \
            > "$OUT/gen.log" 2>&1; then
        touch "$MODEL/.complete"
        stage model PASS "generated by gen_model in $MODEL"
    elif timeout "$(tmo 150)" "$PY" tests/gpu/full_model.py --bin "$BIN" --config tests/gpu/phi3-mini-128k-config.json \
            --dir "$MODEL" --json "$OUT/gen.json" --parts gen >> "$OUT/gen.log" 2>&1; then
        stage model PASS "generated by full_model.py in $MODEL"
    else
        stage model FAIL "no model (see gen.log)"
    fi
else
    stage model INFO "$MODEL"
fi

# 3. prefill + decode per path and context
timeout "$(tmo 400)" "${B[@]}" run > "$OUT/bench-run.log" 2>&1
done_stage $? run "see bench.json" "partial results kept"

# 4. the FIFO loop
timeout "$(tmo 120)" "${B[@]}" loop > "$OUT/bench-loop.log" 2>&1
done_stage $? loop "see bench.json" "see the log"

# 5. nsys (not on the PATH of the workplace's image when last looked; a line either way)
# the profilers' stream: a 512-token prompt, then 16 one-token frames
"$PY" - "$OUT/stream-nsys.bin" <<'PYEOF'
import msgpack, random, sys
g = random.Random(3)
with open(sys.argv[1], "wb") as f:
    f.write(msgpack.packb({"type": "tokens", "ids": [g.randint(3, 31999) for _ in range(512)]}))
    for _ in range(16):
        f.write(msgpack.packb({"type": "tokens", "ids": [g.randint(3, 31999)]}))
PYEOF
NSYS=$(command -v nsys)
for f in /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys; do
    [ -z "$NSYS" ] && [ -x "$f" ] && NSYS=$f
done
if [ "$MODE" = dry ]; then
    echo "nsys: dry run, not tried" > "$OUT/nsys.txt"
elif [ -z "$NSYS" ]; then
    echo "nsys: not found on this machine; the per-op timeline (PHI3_CUDA_TIMING=2) stands in" > "$OUT/nsys.txt"
elif [ "$(left)" -gt 120 ]; then
    PHI3_CUDA_FAST=1 timeout "$(tmo 90)" "$NSYS" profile -o "$OUT/nsys-fast" --force-overwrite true \
        --stats=true "$BIN/phi3-run" -m "$MODEL" --backend cuda -q --ctx 600 \
        < "$OUT/stream-nsys.bin" > "$OUT/nsys.log" 2>&1
    if grep -q "cuda_gpu_kern_sum" "$OUT/nsys.log"; then
        { echo "nsys ($NSYS), fast path, 512-token prompt + 16 steps: top kernels by GPU time"
          sed -n '/cuda_gpu_kern_sum/,/^$/p' "$OUT/nsys.log" | head -20; } > "$OUT/nsys.txt"
    else
        echo "nsys: $NSYS gave no kernel summary (see nsys.log)" > "$OUT/nsys.txt"
    fi
else
    echo "nsys: skipped (time budget)" > "$OUT/nsys.txt"
fi
stage nsys INFO "$(head -1 "$OUT/nsys.txt")"

# 5b. ncu (Nsight Compute reads the counters on the workplace's Firecracker machines): DRAM
# throughput of the fast path's kernels, one prefill attention and the first decode kernels
NCU=$(command -v ncu)
for f in /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu; do
    [ -z "$NCU" ] && [ -x "$f" ] && NCU=$f
done
: > "$OUT/ncu.csv"
if [ "$MODE" = dry ]; then
    stage ncu SKIP "dry run"
elif [ -z "$NCU" ]; then
    stage ncu SKIP "ncu not found"
elif [ "$(left)" -lt 150 ]; then
    stage ncu SKIP "time budget"
else
    S=$OUT/stream-nsys.bin
    M=gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed
    i=0
    for k in "regex:fa2_kernel 2" "regex:gemv_kernel|attn_fast_kernel|rope_fast_kernel 14"; do
        i=$((i + 1))
        PHI3_CUDA_FAST=1 timeout "$(tmo 60)" "$NCU" --clock-control none -k "${k% *}" \
            --launch-count "${k##* }" --metrics "$M" --csv --page raw --log-file "$OUT/ncu-$i.csv" \
            "$BIN/phi3-run" -m "$MODEL" --backend cuda -q --ctx 600 < "$S" > /dev/null 2>> "$OUT/ncu.log"
        grep -v '^==' "$OUT/ncu-$i.csv" >> "$OUT/ncu.csv" 2>/dev/null
    done
    stage ncu INFO "$(grep -c '_kernel' "$OUT/ncu.csv") kernel rows (ncu.csv)"
fi

# 6. transformers peer, eager
if [ "$MODE" = dry ]; then
    stage peer SKIP "dry run"
elif ! "$PY" -c "import torch, transformers" > /dev/null 2>&1; then
    stage peer SKIP "no torch/transformers"
else
    timeout "$(tmo 150)" "$PY" tests/gpu/peer.py --config tests/gpu/phi3-mini-128k-config.json \
        --json "$OUT/peer.json" --compiled 0 --deadline $(( DEADLINE - 60 )) > "$OUT/peer.log" 2>&1
    done_stage $? peer "see peer.json" "partial results kept"
fi

# 7. 131,072-token prefill (each path only when its estimate fits)
if [ "${BENCH_LONG:-1}" = 1 ]; then
    timeout "$(tmo 200)" "${B[@]}" long > "$OUT/bench-long.log" 2>&1
    done_stage $? long "see bench.json" "see the log"
fi

# 8. transformers static cache + torch.compile (the compilation takes a minute or more)
if [ "$MODE" = gpu ] && [ "$(left)" -gt 170 ] && "$PY" -c "import torch" > /dev/null 2>&1; then
    timeout "$(tmo 300)" "$PY" tests/gpu/peer.py --config tests/gpu/phi3-mini-128k-config.json \
        --json "$OUT/peer.json" --prefills "" --contexts "" --compiled 1 --deadline "$DEADLINE" \
        >> "$OUT/peer.log" 2>&1
    done_stage $? compiled "see peer.json" "see the log"
else
    stage compiled SKIP "$(left) s left"
fi

# the table, last
"${B[@]}" table > "$OUT/bench-table.log" 2>&1 || echo "bench.py table failed" >> "$OUT/bench-table.log"
cat "$OUT/bench.md" 2>/dev/null || cat "$OUT/bench-table.log"
echo "bench: $(( $(date +%s) - T0 )) s, logs in $OUT"
exit 0
