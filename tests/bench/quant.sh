#!/usr/bin/env bash
# quant.sh: CPU speed of quantized weights (issue 12 targets: decode Q8_0 >= 1.8x bf16,
# Q4_K_M >= 3x bf16; prefill not slower than bf16). Runs build/bench/quant_bench (from
# tests/bench/quant_bench.c): GEMV GB/s per type on the full-size shapes, GEMV out of
# cache against bf16's decode kernel (how near each kernel is to the memory bound), then the CPU
# backend on a 2-layer full-width Phi-3 in bf16 / Q8_0 / Q4_K_M / Q4_0 (decode ms/token,
# prefill tok/s, ratios to bf16 in the same run), with the machine's memory read
# bandwidth measured in the same run as the ceiling. PHI3_BENCH_THREADS (default 2),
# PHI3_BENCH_PREFILL (default 512 tokens), PHI3_BENCH_REPEATS (default 2).
set -eu
: "${PHI3_BENCHBIN:=$PWD/build/bench}"
T=${PHI3_BENCH_THREADS:-2}
P=${PHI3_BENCH_PREFILL:-512}
N=${PHI3_BENCH_REPEATS:-2}
B=build/bench-quant; mkdir -p "$B"
[ -x "$PHI3_BENCHBIN/quant_bench" ] || make -s "$PHI3_BENCHBIN/quant_bench"
cc -O2 -pthread -o "$B/bandwidth" tests/bench/bandwidth.c
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "memory read bandwidth, $T threads: $("$B/bandwidth" "$T") GB/s"
for i in $(seq "$N"); do
  echo "### run $i of $N"
  "$PHI3_BENCHBIN/quant_bench" "$T" "$P" 0132
done
echo "memory read bandwidth, $T threads: $("$B/bandwidth" "$T") GB/s"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
