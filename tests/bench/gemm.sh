#!/usr/bin/env bash
# gemm.sh: the CPU backend's bf16 matmul for few tokens (decode/gemm.c gemm_rows: the
# few-token register path vs the previous kernels) on the weights of server.sh's mid-size
# model, through the thread pool: ms per step and the tokens/s ratio to one token, with
# the memory read bandwidth (the batch-1 ceiling) measured in the same run. Runs
# build/bench/gemm_bench (tests/bench/gemm_bench.c). PHI3_BENCH_THREADS (default 2),
# PHI3_BENCH_REPEATS (default 5). Then the blocked path for a 256-token prefill step at
# full size (pgemm_bench) against the FMA peak.
set -eu
: "${PHI3_BENCHBIN:=$PWD/build/bench}"
T=${PHI3_BENCH_THREADS:-2}
N=${PHI3_BENCH_REPEATS:-5}
B=build/bench-gemm; mkdir -p "$B"
[ -x "$PHI3_BENCHBIN/gemm_bench" ] || make -s "$PHI3_BENCHBIN/gemm_bench"
cc -O2 -pthread -o "$B/bandwidth" tests/bench/bandwidth.c
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
echo "memory read bandwidth, $T threads: $("$B/bandwidth" "$T") GB/s"
"$PHI3_BENCHBIN/gemm_bench" "$T" "$N"
# the many-token (blocked) path at full size: one Phi-3-mini layer's four products for a
# 256-token step (tests/bench/pgemm_bench.c), activation rows padded as the backend pads
# them, beside the FMA peak
[ -x "$PHI3_BENCHBIN/pgemm_bench" ] || make -s "$PHI3_BENCHBIN/pgemm_bench"
cc -O2 -pthread -o "$B/fma_peak" tests/bench/fma_peak.c
echo "FMA peak (256-bit, 512-bit GFLOP/s, threads): $("$B/fma_peak")"
"$PHI3_BENCHBIN/pgemm_bench" "$T" 256 "$N" 16
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
