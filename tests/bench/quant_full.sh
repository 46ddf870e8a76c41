#!/usr/bin/env bash
# quant_full.sh: full-size CPU decode of phi3-run in bf16, Q8_0 and Q4_K_M in ONE run
# (issue 12: Q8_0 >= 1.8x bf16, Q4_K_M >= 3x bf16), alternating the three models each
# round so load changes hit them alike; the memory read bandwidth is measured before and
# after as the ceiling. Decode = STEPS single-token frames after a 4-token prompt, timed
# between consecutive logits frames (median per run). Models: PHI3_BENCH_MODEL (bf16
# directory, default models/phi3-mini-random, made by cpu.sh), PHI3_BENCH_Q8 and
# PHI3_BENCH_Q4KM (GGUF files made from it by phi3-quantize when absent, minutes each;
# default models/phi3-mini-random-{Q8_0,Q4_K_M}.gguf); skipped with a note without the
# bf16 directory. PHI3_BENCH_ROUNDS (default 2), PHI3_BENCH_STEPS (16),
# PHI3_BENCH_THREADS (default: all cores). Q4_K_M runs twice: exact (the default) and with
# PHI3_QUANT_LIMBS=1 (decode/qlimb.h; the same as exact where the CPU lacks AVX-512 VNNI);
# PHI3_BENCH_Q8_YMM=1 adds Q8_0 through the other exact AVX-512 kernel
# (PHI3_Q8_0_KERNEL=ymm, decode/qdot.c: the same bits).
set -eu
. "$(dirname "$0")/steal.sh"     # cpu_steal, steal_pct
: "${PHI3_BIN:=$PWD/bin}"
PY=/usr/bin/python3
B=build/bench-quant-full; mkdir -p "$B"
BF=${PHI3_BENCH_MODEL:-models/phi3-mini-random}
Q8=${PHI3_BENCH_Q8:-$BF-Q8_0.gguf}
Q4=${PHI3_BENCH_Q4KM:-$BF-Q4_K_M.gguf}
R=${PHI3_BENCH_ROUNDS:-2}
STEPS=${PHI3_BENCH_STEPS:-16}
TH=${PHI3_BENCH_THREADS:-$(nproc)}
[ -e "$BF/config.json" ] || { echo "quant_full.sh: $BF missing: skipped (tests/bench/cpu.sh makes it)"; exit 0; }
[ -e "$Q8" ] || { echo "making $Q8 ..."; "$PHI3_BIN/phi3-quantize" -q -t Q8_0 "$BF" "$Q8"; }
[ -e "$Q4" ] || { echo "making $Q4 ..."; "$PHI3_BIN/phi3-quantize" -q -t Q4_K_M "$BF" "$Q4"; }
cc -O2 -pthread -o "$B/bandwidth" tests/bench/bandwidth.c
$PY -c '
import msgpack, sys
o = sys.stdout.buffer
o.write(msgpack.packb({"type": "tokens", "ids": [1, 450, 4996, 17354]}))
for i in range(int(sys.argv[1])): o.write(msgpack.packb({"type": "tokens", "ids": [100 + i]}))
' "$STEPS" > "$B/in"

# median seconds per decode step of one phi3-run; the model's files are read first (this
# VM's page cache was seen emptied between runs, and faulting 7 GB back in from disk
# during the steps is not decode)
step() {
  cat "$1" > /dev/null 2>&1 || cat "$1"/* > /dev/null
  env ${LIMBS:+PHI3_QUANT_LIMBS=1} ${Q8K:+PHI3_Q8_0_KERNEL=$Q8K} "$PHI3_BIN/phi3-run" --backend cpu --threads "$TH" -m "$1" < "$B/in" 2> "$B/stderr" | $PY -c '
import msgpack, os, sys, time
u, ts = msgpack.Unpacker(raw=False), []
while True:
    b = os.read(0, 1 << 20)
    if not b: break
    u.feed(b)
    ts += [time.monotonic() for f in u if f["type"] == "logits"]
d = sorted(b - a for a, b in zip(ts, ts[1:]))
print(d[len(d) // 2])
'
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
steal0=$(cpu_steal)
echo "memory read bandwidth, $TH threads: $("$B/bandwidth" "$TH") GB/s"
for i in $(seq "$R"); do
  bf=$(step "$BF"); q8=$(step "$Q8"); q4=$(step "$Q4"); q4l=$(LIMBS=1 step "$Q4")
  q8y=0; [ -z "${PHI3_BENCH_Q8_YMM:-}" ] || q8y=$(Q8K=ymm step "$Q8")
  $PY - "$i" "$(cut -d' ' -f1 /proc/loadavg)" "$bf" "$q8" "$q4" "$q4l" "$q8y" <<'PYEOF'
import sys
i, la = sys.argv[1], sys.argv[2]
bf, q8, q4, q4l, q8y = (float(a) for a in sys.argv[3:8])
r = lambda s: "%.2f tok/s (%.2fx)" % (1 / s, bf / s)
print("round %s: bf16 %.2f tok/s, Q8_0 %s, Q4_K_M %s, Q4_K_M limbs %s%s   load %s"
      % (i, 1 / bf, r(q8), r(q4), r(q4l), ", Q8_0 ymm kernel " + r(q8y) if q8y else "", la))
PYEOF
done
echo "memory read bandwidth, $TH threads: $("$B/bandwidth" "$TH") GB/s"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg); $(steal_pct "$steal0" "$(cpu_steal)")"
