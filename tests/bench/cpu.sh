#!/usr/bin/env bash
# cpu.sh: CPU decode speed of phi3-run on a full-size random-weight Phi-3-mini (bf16,
# shapes from tests/bench/phi3-mini-128k-instruct.config.json, 7.6 GB, generated once
# into models/phi3-mini-random/, git-ignored), against the machine's measured memory read
# bandwidth: floor = weight bytes read per token / bandwidth; fraction = floor / measured
# time per token (target >= 0.6). Decode = 8 single-token steps after a 4-token prompt,
# timed between consecutive logits frames. PHI3_BENCH_MODEL=DIR to use another model.
set -eu
: "${PHI3_BIN:=$PWD/bin}"
PY=/usr/bin/python3
B=build/bench-cpu; mkdir -p "$B"
M=${PHI3_BENCH_MODEL:-models/phi3-mini-random}
STEPS=${PHI3_BENCH_STEPS:-8}

cc -O2 -o "$B/gen_model" tests/bench/gen_model.c -ljansson
cc -O2 -pthread -o "$B/bandwidth" tests/bench/bandwidth.c

if [ ! -e "$M/.complete" ]; then
  need=$((8 * 1024 * 1024))   # KiB
  mkdir -p "$M"
  avail=$(df -Pk "$M" | awk 'NR==2 {print $4}')
  [ "$avail" -gt "$need" ] || { echo "cpu.sh: need 8 GiB free under $M, have $((avail / 1024)) MiB" >&2; exit 1; }
  echo "generating $M (7.6 GB of random bf16; once) ..."
  t0=$(date +%s)
  "$B/gen_model" tests/bench/phi3-mini-128k-instruct.config.json "$M"
  touch "$M/.complete"
  echo "generated in $(( $(date +%s) - t0 )) s"
fi

# Bytes one decode step reads: every layer, the final norm, lm_head, one embedding row.
read -r wbytes <<<"$($PY - "$M/config.json" <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1]))
H, I, V, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]; hd = H // nh
layer = (nh + 2 * nkv) * hd * H + H * nh * hd + 2 * I * H + H * I + 2 * H
print(2 * (L * layer + H + V * H + H))
PYEOF
)"

cat "$M"/*.safetensors > /dev/null    # into the page cache (the bandwidth floor assumes RAM)
bw=$("$B/bandwidth")

# 4-token prompt, then STEPS one-token frames; a reader stamps each logits frame.
$PY -c '
import msgpack, sys
o = sys.stdout.buffer
o.write(msgpack.packb({"type": "tokens", "ids": [1, 450, 4996, 17354]}))
for i in range(int(sys.argv[1])): o.write(msgpack.packb({"type": "tokens", "ids": [100 + i]}))
' "$STEPS" > "$B/in"
"$PHI3_BIN/phi3-run" --backend cpu -m "$M" -v < "$B/in" 2> "$B/stderr" | $PY -c '
import msgpack, os, sys, time
u, ts = msgpack.Unpacker(raw=False), []
while True:                      # unbuffered: stamp each frame when it arrives
    b = os.read(0, 1 << 20)
    if not b: break
    u.feed(b)
    ts += [time.monotonic() for f in u if f["type"] == "logits"]
d = sorted(b - a for a, b in zip(ts, ts[1:]))
print(len(d), d[len(d) // 2], sum(d) / len(d))
' > "$B/times"
read -r n med mean < "$B/times"
$PY - "$wbytes" "$bw" "$n" "$med" "$mean" "$(nproc)" <<'PYEOF'
import sys
wb, bw, n, med, mean, cores = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
floor = wb / (bw * 1e9)
print("weights read per token: %.2f GB; memory read bandwidth: %.1f GB/s (%s threads)" % (wb / 1e9, bw, cores))
print("bandwidth floor: %.3f s/token (%.2f tok/s)" % (floor, 1 / floor))
print("decode (%d steps): median %.3f s/token = %.2f tok/s (mean %.3f s); fraction of floor %.2f (target >= 0.60)"
      % (n, med, 1 / med, mean, floor / med))
PYEOF
grep -E "peak RSS|weights" "$B/stderr" | sed 's/^/  /'
