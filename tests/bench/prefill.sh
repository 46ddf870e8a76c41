#!/usr/bin/env bash
# prefill.sh: CPU prefill against decode and against the machine's FMA peak (issue 15).
# Each measurement is ONE phi3-run: a P-token prompt in one frame, then D single-token
# frames; phi3-run --stats times the prefill frame and the decode steps, so the ratio
# prefill tok/s / decode tok/s comes from the same run. GFLOP/s counts the projections
# (2 x weights per token, lm_head for the last position only) and causal attention
# (4 x head_dim x heads x keys per query per layer); the FMA peak (tests/bench/fma_peak.c,
# every core, 256-bit and 512-bit) is measured before and after, the best taken.
# Models (generated once by gen_model, git-ignored under models/):
#   4-layer full-width Phi-3-mini (1.3 GB): prefill 512 and 4096, decode;
#   the full-size random Phi-3-mini ($PHI3_BENCH_MODEL, made by cpu.sh): prefill 512
#   (and 4080 with PHI3_BENCH_LONG=1: minutes), decode; skipped if absent;
#   the mid-size model of session.sh (hidden 512, 4 layers): prefill 4096 (and 32768
#   with PHI3_BENCH_LONG=1), where attention is a large share.
# PHI3_BENCH_REPEAT=N runs each measurement N times and prints every run (default 1).
set -eu
: "${PHI3_BIN:=$PWD/bin}"
PY=/usr/bin/python3
B=build/bench-prefill; mkdir -p "$B"
M4=${PHI3_BENCH_MODEL4:-models/phi3-4layer-random}
MF=${PHI3_BENCH_MODEL:-models/phi3-mini-random}
MM=${PHI3_BENCH_MIDMODEL:-models/phi3-mid-random}
REPEAT=${PHI3_BENCH_REPEAT:-1}
LONG=${PHI3_BENCH_LONG:-0}
D=16

cc -O2 -o "$B/gen_model" tests/bench/gen_model.c -ljansson
cc -O2 -pthread -o "$B/fma_peak" tests/bench/fma_peak.c

gen() {   # gen DIR PYTHON-UPDATE: a config from the real one, updated, then the weights
  [ -e "$1/.complete" ] && return 0
  mkdir -p "$1"
  $PY - "$B/$(basename "$1").json" "$2" <<'PYEOF'
import json, sys
c = json.load(open("tests/bench/phi3-mini-128k-instruct.config.json"))
c.update(json.loads(sys.argv[2]))
hd = c["hidden_size"] // c["num_attention_heads"]
for k in ("short_factor", "long_factor"):
    c["rope_scaling"][k] = c["rope_scaling"][k][:hd // 2]
json.dump(c, open(sys.argv[1], "w"), indent=1)
PYEOF
  echo "generating $1 ..."
  "$B/gen_model" "$B/$(basename "$1").json" "$1" > /dev/null
  touch "$1/.complete"
}
# original_max_position_embeddings raised to the maximum: a 4096-token prompt plus decode
# steps (or 32768 tokens) would otherwise cross the LongRoPE switch, whose recompute of the
# whole context is not what this measures.
gen "$M4" '{"num_hidden_layers": 4, "original_max_position_embeddings": 131072}'
gen "$MM" '{"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8, "intermediate_size": 1408, "original_max_position_embeddings": 131072}'

peak() { "$B/fma_peak"; }
read -r y0 z0 thr < <(peak)

# measure MODEL P: prints "P prefill_s decode_s D"
measure() {
  $PY -c '
import msgpack, random, sys
r = random.Random(int(sys.argv[1])); o = sys.stdout.buffer
o.write(msgpack.packb({"type": "tokens", "ids": [r.randrange(32000) for _ in range(int(sys.argv[1]))]}))
for i in range(int(sys.argv[2])): o.write(msgpack.packb({"type": "tokens", "ids": [r.randrange(32000)]}))
' "$2" "$D" > "$B/in"
  cat "$1"/*.safetensors > /dev/null
  "$PHI3_BIN/phi3-run" --backend cpu -m "$1" -q --stats --ctx $(( $2 + D + 1 )) < "$B/in" 2> "$B/stderr" > /dev/null
  $PY - "$2" "$B/stderr" <<'PYEOF'
import re, sys
t = open(sys.argv[2]).read()
m = re.search(r"prefill ([0-9.]+) s \(1 frames\), decode ([0-9.]+) s \(([0-9]+) tokens", t)
if not m: sys.exit("prefill.sh: no stats line in: " + t)
print(sys.argv[1], m.group(1), m.group(2), m.group(3))
PYEOF
}

results=()
run_set() {   # run_set NAME MODEL P...
  local name=$1 model=$2; shift 2
  [ -e "$model/config.json" ] || { echo "$name: $model absent, skipped (tests/bench/cpu.sh makes it)"; return 0; }
  for p in "$@"; do
    for _ in $(seq "$REPEAT"); do
      results+=("$name $model $(measure "$model" "$p")")
    done
  done
}
run_set 4layer "$M4" 512 4096
if [ -e "$MF/.complete" ]; then
  # 4080 + 16 decode steps stay at the real config's original_max (4096)
  if [ "$LONG" = 1 ]; then run_set full "$MF" 512 4080; else run_set full "$MF" 512; fi
else echo "full: $MF absent or incomplete, skipped (tests/bench/cpu.sh makes it)"; fi
if [ "$LONG" = 1 ]; then run_set mid "$MM" 4096 32768; else run_set mid "$MM" 4096; fi

read -r y1 z1 _ < <(peak)
$PY - "$y0" "$z0" "$y1" "$z1" "$thr" "$(cat /proc/loadavg)" "${results[@]}" <<'PYEOF'
import json, sys
y = max(float(sys.argv[1]), float(sys.argv[3])); z = max(float(sys.argv[2]), float(sys.argv[4]))
thr, load = sys.argv[5], sys.argv[6]
peak = max(y, z)
print("FMA peak, %s threads: %.0f GFLOP/s 256-bit, %.0f GFLOP/s 512-bit (best of before/after); load avg %s"
      % (thr, y, z, " ".join(load.split()[:3])))
print("%-7s %6s %10s %9s %7s %10s %9s %s" % ("model", "tokens", "prefill/s", "GFLOP/s", "%peak", "decode/s", "ratio", "(attention share of prefill FLOP)"))
for r in sys.argv[7:]:
    name, model, P, tp, td, nd = r.split()
    P, tp, td, nd = int(P), float(tp), float(td), int(nd)
    c = json.load(open(model + "/config.json"))
    H, I, V, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]; hd = H // nh
    per_tok = 2 * L * ((nh + 2 * nkv) * hd * H + H * nh * hd + 2 * I * H + H * I)
    att = 4 * hd * nh * L * P * (P + 1) / 2
    flop = P * per_tok + att + 2 * V * H
    pre, dec = P / tp, nd / td
    print("%-7s %6d %10.1f %9.1f %6.0f%% %10.2f %9.2f (%.0f%%)"
          % (name, P, pre, flop / tp / 1e9, 100 * flop / tp / 1e9 / peak, dec, pre / dec, 100 * att / flop))
print("targets (issue 15): prefill/decode >= 6 on the 4-layer model; >= 60% of the FMA peak at prefill")
PYEOF
