#!/usr/bin/env bash
# server.sh: phi3-run --serve on the CPU with a mid-size random-weight Phi-3 (hidden 1024,
# 8 layers, 16 heads, intermediate 2816, the real vocab and LongRoPE config: 0.27 GB of
# bf16 weights, more than the caches hold, so a batch-1 decode step is bound by reading
# them), generated once by gen_model into $PHI3_BENCH_DIR (git-ignored).
#  1. aggregate decode tok/s of 8 concurrent streams through one server vs one stream
#     alone (through the server, and phi3-run direct) (target >= 5x);
#  2. the cost of --connect at batch 1: the greedy FIFO loop per token, direct vs through
#     the server (target <= 5% of a decode step), in LOOP_ROUNDS (default 8) rounds that
#     pair the two back to back (the order alternating), each the median time between
#     tokens, reported as the median of the rounds' ratios: the loop's per-token time
#     moves by milliseconds between minutes on a shared VM, more than the target, so a
#     best-of over separate runs says little; and the relay's own CPU time per decode
#     frame (no loop, no waits);
#  3. the batched step alone, in one process (build/bench/batch_bench: no sockets, no relays).
# Rates are differences between a long and a short run (start-up, model load and prompt
# cancel), best of REPEATS; the machine's load is printed, since other work on the cores
# skews every ratio.
set -eu
. "$(dirname "$0")/steal.sh"     # cpu_steal, steal_pct
: "${PHI3_BIN:=$PWD/bin}"
PY=/usr/bin/python3
B=${PHI3_BENCH_DIR:-${TMPDIR:-/tmp}/phi3-bench}
RUN="$PHI3_BIN/phi3-run"
REPEATS=${REPEATS:-3}
STREAMS=${STREAMS:-8}
mkdir -p "$B"
M="$B/server-model"
if [ ! -e "$M/.complete" ]; then
  cc -O2 -o "$B/gen_model" tests/bench/gen_model.c -ljansson
  $PY - "$B/server.config.json" <<'PY'
import json, sys
c = json.load(open("tests/bench/phi3-mini-128k-instruct.config.json"))
c.update(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16,
         intermediate_size=2816)
hd = 1024 // 16
for k in ("short_factor", "long_factor"):
    c["rope_scaling"][k] = c["rope_scaling"][k][:hd // 2]
json.dump(c, open(sys.argv[1], "w"), indent=1)
PY
  "$B/gen_model" "$B/server.config.json" "$M" > /dev/null
  touch "$M/.complete"
fi
cat "$M"/*.safetensors > /dev/null
# the ceilings, measured now: memory read bandwidth (batch 1 reads every weight once per
# step) and the FMA peak (a batch of 8 does 8 multiply-adds per weight)
cc -O2 -pthread -o "$B/bandwidth" tests/bench/bandwidth.c
cc -O2 -pthread -o "$B/fma_peak" tests/bench/fma_peak.c
bw=$("$B/bandwidth")
read -r ymm zmm _ <<< "$("$B/fma_peak")"
wbytes=$($PY -c '
import json, sys
c = json.load(open(sys.argv[1]))
H, I, V, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]; hd = H // nh
print(2 * (L * ((nh + 2 * nkv) * hd * H + H * nh * hd + 3 * I * H + 2 * H) + H + V * H))' "$M/config.json")

# decode input: a 4-token prompt, then N one-token frames (each answered by a logits frame)
mkin() { $PY -c '
import msgpack, random, sys
r = random.Random(int(sys.argv[2])); o = sys.stdout.buffer
o.write(msgpack.packb({"type": "tokens", "ids": [r.randrange(32000) for _ in range(4)]}))
for i in range(int(sys.argv[1])): o.write(msgpack.packb({"type": "tokens", "ids": [r.randrange(32000)]}))' "$@"; }
SHORT=4 LONG=36
for k in $(seq "$STREAMS"); do mkin $SHORT $k > "$B/s.$k"; mkin $LONG $k > "$B/l.$k"; done

SOCK="$B/bench.sock"
"$RUN" -m "$M" --backend cpu --serve "$SOCK" --stats 2> "$B/server.err" &
SRV=$!
trap 'kill $SRV 2> /dev/null || true; wait $SRV 2> /dev/null || true; rm -f "$SOCK"' EXIT
for i in $(seq 200); do [ -S "$SOCK" ] && break; sleep 0.05; done

now() { date +%s%N; }
direct() { "$RUN" -m "$M" --backend cpu -q < "$B/$1.1" > /dev/null; }
one() { timeout 300 "$RUN" --connect "$SOCK" < "$B/$1.1" > /dev/null; }
many() { local k p=(); for k in $(seq "$STREAMS"); do timeout 300 "$RUN" --connect "$SOCK" < "$B/$1.$k" > /dev/null & p+=($!); done
         wait "${p[@]}"; }
# the greedy FIFO loop, N tokens; the feedback's reader notes when each token comes back
# (a token frame is a few bytes: one read each) into $B/stamps
loop() {   # loop N RUN-ARGS...
  local n=$1; shift
  rm -f "$B/fb"; mkfifo "$B/fb"
  { mkin 0 1; $PY -c '
import os, sys, time
fd, ts = os.open(sys.argv[1], os.O_RDONLY), []
while True:
    b = os.read(fd, 4096)
    if not b: break
    ts.append(time.monotonic_ns())
    os.write(1, b)
open(sys.argv[2], "w").write("\n".join(map(str, ts)))' "$B/fb" "$B/stamps"; } |
    "$RUN" "$@" | "$PHI3_BIN/phi3-sample" --greedy -n "$n" > "$B/fb"
}
loopd() { loop "$1" -m "$M" --backend cpu -q; }
loopc() { loop "$1" --connect "$SOCK"; }
# best (least) wall-clock ns of each measure over REPEATS rounds; the rounds interleave
# the measures so that a change of the machine's load hits all of them
declare -A T
load0=$(cut -d' ' -f1-3 /proc/loadavg)
steal0=$(cpu_steal)
for r in $(seq "$REPEATS"); do
  for x in "direct s" "direct l" "one s" "one l" "many s" "many l"; do
    s=$(now); $x; e=$(now)
    [ -z "${T[$x]:-}" ] || [ $((e - s)) -lt "${T[$x]}" ] && T[$x]=$((e - s))
  done
done
# the loop, paired: per round the median ns between tokens coming back, direct and
# through --connect (40 tokens: 39 steps)
per_tok() { "$1" 40; $PY -c '
import statistics, sys
t = [int(x) for x in open(sys.argv[1]).read().split()]
print(int(statistics.median(b - a for a, b in zip(t, t[1:]))))' "$B/stamps"; }
LD=() LC=()
for r in $(seq "${LOOP_ROUNDS:-8}"); do
  if [ $((r % 2)) = 1 ]; then LD+=("$(per_tok loopd)"); LC+=("$(per_tok loopc)")
  else LC+=("$(per_tok loopc)"); LD+=("$(per_tok loopd)"); fi
done
# the relay's CPU (user + system) per decode frame: a long and a short input through
# --connect, the difference over the 32 frames; bash's times gives a subshell's children
relay_cpu() { ( one "$1"; times ) | tail -1 | tr -d ms | awk '{print $1 + $2}'; }
rc_s=$(relay_cpu s) rc_l=$(relay_cpu l)
load1=$(cut -d' ' -f1-3 /proc/loadavg)
steal1=$(cpu_steal)
d=$(( ${T[direct l]} - ${T[direct s]} ))
o=$(( ${T[one l]} - ${T[one s]} ))
m=$(( ${T[many l]} - ${T[many s]} ))

kill -USR1 $SRV; sleep 0.2
steps=$((LONG - SHORT))
$PY - "$d" "$o" "$m" "$steps" "$STREAMS" "$wbytes" "$bw" "$ymm" "$zmm" "${LD[*]}" "${LC[*]}" "$rc_s" "$rc_l" <<'PY'
import statistics, sys
d, o, m, steps, k, wb, bw, ymm, zmm = (float(x) for x in sys.argv[1:10])
ld, lc = ([float(v) / 1e6 for v in a.split()] for a in sys.argv[10:12])
relay = (float(sys.argv[13]) - float(sys.argv[12])) / steps * 1e3
print("ceilings now: memory read %.1f GB/s -> batch-1 step >= %.1f ms (%.2f GB of weights); FMA peak %.0f GFLOP/s "
      "(ymm), %.0f (zmm) -> a %d-stream step >= %.1f ms (ymm) / %.1f ms (zmm)"
      % (bw, wb / bw / 1e6, wb / 1e9, ymm, zmm, k, wb * k / ymm / 1e6, wb * k / max(zmm, ymm) / 1e6))
tok = lambda ns, n: n / (ns / 1e9)
print("decode, CPU, mid-size random model (hidden 1024, 8 layers, vocab 32064, 0.27 GB bf16), %d steps per stream:" % steps)
print("  one stream, phi3-run direct     %7.1f tok/s (%.1f ms/step)" % (tok(d, steps), d / steps / 1e6))
print("  one stream through the server   %7.1f tok/s (%.1f ms/step)" % (tok(o, steps), o / steps / 1e6))
print("  %d concurrent streams, batched   %7.1f tok/s aggregate (%.1f ms/step): %.2fx one stream (target >= 5x)"
      % (k, tok(m, steps * k), m / steps / 1e6, tok(m, steps * k) / tok(o, steps)))
ov = [100 * (c - d) / d for d, c in zip(ld, lc)]
print("greedy FIFO loop, batch 1, per token, %d paired rounds: direct %.2f ms, --connect %.2f ms (medians); "
      "overhead %.1f%% of a decode step, median of the rounds (target <= 5%%)"
      % (len(ov), statistics.median(ld), statistics.median(lc), statistics.median(ov)))
print("  rounds: " + ", ".join("%.1f%%" % v for v in ov))
print("  the relay's own CPU: %.3f ms per decode frame (%.1f%% of the median direct step)"
      % (relay, 100 * relay / statistics.median(ld)))
PY
echo "  load average before/after: $load0 / $load1 on $(nproc) cores; $(steal_pct "$steal0" "$steal1")"
grep 'server stats' "$B/server.err" | tail -3 | sed 's/^/  /'
# the same batched step without the server (no sockets, no relays): what the compute alone
# gives, so the two can be told apart
if [ -n "${PHI3_BENCHBIN:-}" ]; then BB=$PHI3_BENCHBIN/batch_bench
else BB=build/bench/batch_bench; make -s "$BB"; fi     # make's rule is on the relative path
"$BB" "$M" "$STREAMS" 60 | sed 's/^/  /'
