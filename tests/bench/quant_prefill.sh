#!/usr/bin/env bash
# quant_prefill.sh: CPU prefill of 512 tokens in bf16, Q8_0 and Q4_K_M (issue 12: the
# quantized ones not slower than bf16) on the 4-layer full-width Phi-3-mini, one phi3-run
# each, alternating per round: wall time (phi3-run --stats) and CPU seconds (user + system
# of every thread, which other processes disturb far less). The GGUF files are made once
# from the bf16 directory by phi3-quantize. Models: PHI3_BENCH_MODEL4 (default
# models/phi3-4layer-random, made by prefill.sh; skipped with a note when absent),
# PHI3_BENCH_QDIR (where the GGUF files go, default models/). PHI3_BENCH_ROUNDS (2),
# PHI3_BENCH_PREFILL (512).
set -eu
: "${PHI3_BIN:=$PWD/bin}"
PY=/usr/bin/python3
M4=${PHI3_BENCH_MODEL4:-models/phi3-4layer-random}
QD=${PHI3_BENCH_QDIR:-models}
R=${PHI3_BENCH_ROUNDS:-2}
P=${PHI3_BENCH_PREFILL:-512}
[ -e "$M4/config.json" ] || { echo "quant_prefill.sh: $M4 missing: skipped (prefill.sh makes it)"; exit 0; }
mkdir -p "$QD"
for t in Q8_0 Q4_K_M; do
  f="$QD/$(basename "$M4")-$t.gguf"
  [ -e "$f" ] || "$PHI3_BIN/phi3-quantize" -q -t "$t" "$M4" "$f"
done
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$R"); do
  $PY - "$PHI3_BIN/phi3-run" "$P" "$i" "$M4" "$QD/$(basename "$M4")-Q8_0.gguf" "$QD/$(basename "$M4")-Q4_K_M.gguf" <<'PYEOF'
import msgpack, random, re, resource, subprocess, sys
run, P, rnd, models = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
r = random.Random(P)
prompt = msgpack.packb({"type": "tokens", "ids": [r.randrange(32000) for _ in range(P)]})
res = []
for m in models:
    u0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run([run, "--backend", "cpu", "-m", m, "-q", "--stats", "--ctx", str(P + 1)], input=prompt,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
    u1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    w = re.search(r"prefill ([0-9.]+) s", p.stderr.decode())
    if not w: sys.exit("quant_prefill.sh: no stats line in: " + p.stderr.decode())
    res.append((float(w.group(1)), (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)))
(bw, bc), rest = res[0], res[1:]
print("round %s, prefill %d: bf16 %.2f s wall (%.2f CPU s, whole run)" % (rnd, P, bw, bc)
      + "".join(", %s %.2f s (%.2fx faster; CPU %.2fx)" % (n, w, bw / w, bc / c) for n, (w, c) in zip(["Q8_0", "Q4_K_M"], rest)))
PYEOF
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
