#!/usr/bin/env bash
# llamacpp.sh: phi3 against llama.cpp on the same machine, same weights, same thread count
# (issues 12 and 15). Skipped unless PHI3_LLAMA_BENCH names a llama-bench binary: llama.cpp
# is not a dependency of phi3; build it yourself (cmake, CPU backend) to run this.
#
# The weights: the full-size random Phi-3-mini ($PHI3_BENCH_MODEL, a Hugging Face directory
# with tokenizer.json) and the GGUF files phi3-quantize writes from it ($PHI3_LLAMA_GGUF_DIR,
# default models/llamacpp: full-F16.gguf, full-BF16.gguf, full-Q8_0.gguf, full-Q4_K_M.gguf;
# the ones absent are made, minutes each). phi3 runs the directory (bf16) and the Q8_0 and
# Q4_K_M files; llama.cpp runs every file. Rounds alternate the engines so that a load that
# comes and goes hits both; each line is one round.
#
# phi3: one phi3-run per measurement: a P-token prompt in one frame, the same prompt again after
# a rewind to position 0, then D one-token frames; the second prompt's time (--stats: last
# prefill frame) and the decode steps' are reported. llama.cpp: llama-bench -p P -n D -t T -r 1
# (its pp and tg tests). Both engines are timed warm, the same way: llama-bench runs the whole
# prompt once as a warmup in the context it then times (whose KV buffer it cleared, so touched,
# when it made the context), and phi3's first prompt is that warmup (its KV pages, scratch and
# threads touched; the first prompt pays the page faults of a fresh KV cache: perf puts 3.3% of
# a full-size 512-token prompt's samples in the kernel's clear_page).
set -eu
: "${PHI3_BIN:=$PWD/bin}"
PY=/usr/bin/python3
LB=${PHI3_LLAMA_BENCH:-}
if [ -z "$LB" ] || [ ! -x "$LB" ]; then
  echo "llamacpp: PHI3_LLAMA_BENCH (a llama-bench binary) not set, skipped"; exit 0
fi
MF=${PHI3_BENCH_MODEL:-models/phi3-mini-random}
G=${PHI3_LLAMA_GGUF_DIR:-models/llamacpp}
P=${PHI3_LLAMA_P:-512}
D=${PHI3_LLAMA_D:-16}
T=${PHI3_LLAMA_THREADS:-$(nproc)}
ROUNDS=${PHI3_BENCH_REPEAT:-2}
TYPES=${PHI3_LLAMA_TYPES:-F16 BF16 Q8_0 Q4_K_M}
[ -e "$MF/config.json" ] || { echo "llamacpp: $MF absent, skipped (tests/bench/cpu.sh makes it)"; exit 0; }
[ -e "$MF/tokenizer.json" ] || { echo "llamacpp: $MF has no tokenizer.json (llama.cpp needs the vocabulary), skipped"; exit 0; }
mkdir -p "$G"
for t in $TYPES; do
  [ -e "$G/full-$t.gguf" ] || { echo "making $G/full-$t.gguf ..."; "$PHI3_BIN/phi3-quantize" -q -t "$t" "$MF" "$G/full-$t.gguf"; }
done

# warm FILE...: read into the page cache first (the machine may not hold every file at
# once: a cold mmap would time the disk)
warm() { cat "$@" > /dev/null; }

phi3() {   # phi3 MODEL: prints "prefill_tok/s decode_tok/s"
  if [ -d "$1" ]; then warm "$1"/*.safetensors; else warm "$1"; fi
  $PY - "$PHI3_BIN/phi3-run" "$1" "$P" "$D" "$T" <<'PYEOF'
import msgpack, random, re, subprocess, sys
run, model, P, D, T = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
r = random.Random(P)
ids = [r.randrange(32000) for _ in range(P)]
warmup = msgpack.packb({"type": "tokens", "ids": ids})
prompt = msgpack.packb({"type": "tokens", "ids": ids, "pos": 0})      # rewind, then the timed prompt
steps = b"".join(msgpack.packb({"type": "tokens", "ids": [r.randrange(32000)]}) for _ in range(D))
cmd = [run, "--backend", "cpu", "-m", model, "-q", "--stats", "--threads", T, "--ctx", str(P + D + 1)]
p = subprocess.run(cmd, input=warmup + prompt + steps, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
m = re.search(r"prefill [0-9.]+ s \(2 frames\), decode ([0-9.]+) s \(([0-9]+) tokens.*"
              r"last prefill frame ([0-9]+) tokens in ([0-9.]+) s", p.stderr.decode())
if not m or int(m.group(3)) != P: sys.exit("llamacpp.sh: no stats line in: " + p.stderr.decode())
print("%.2f %.3f" % (P / float(m.group(4)), int(m.group(2)) / float(m.group(1))))
PYEOF
}

llama() {  # llama FILE: prints "prefill_tok/s decode_tok/s"
  warm "$1"
  "$LB" -m "$1" -p "$P" -n "$D" -t "$T" -r 1 -o json 2>/dev/null | $PY -c '
import json, sys
r = json.load(sys.stdin)
pp = [x["avg_ts"] for x in r if x["n_prompt"] > 0 and x["n_gen"] == 0]
tg = [x["avg_ts"] for x in r if x["n_gen"] > 0 and x["n_prompt"] == 0]
print("%.2f %.3f" % (pp[0], tg[0]))'
}

rows=()
for round in $(seq "$ROUNDS"); do
  rows+=("$round phi3 bf16-dir $(phi3 "$MF")")
  for t in Q8_0 Q4_K_M; do
    case " $TYPES " in *" $t "*) rows+=("$round phi3 $t $(phi3 "$G/full-$t.gguf")") ;; esac
  done
  for t in $TYPES; do rows+=("$round llama.cpp $t $(llama "$G/full-$t.gguf")"); done
done
$PY - "$P" "$D" "$T" "$(cat /proc/loadavg)" "${rows[@]}" <<'PYEOF'
import sys, collections
P, D, T, load = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
print("prompt %s tokens, %s decode steps, %s threads; load avg at the end %s" % (P, D, T, " ".join(load.split()[:3])))
print("%-5s %-9s %-8s %10s %10s" % ("round", "engine", "weights", "prefill/s", "decode/s"))
best = collections.defaultdict(lambda: [0.0, 0.0])
for r in sys.argv[5:]:
    rnd, eng, w, pp, tg = r.split()
    print("%-5s %-9s %-8s %10s %10s" % (rnd, eng, w, pp, tg))
    b = best[(eng, w)]; b[0] = max(b[0], float(pp)); b[1] = max(b[1], float(tg))
def ratio(a, b, i):
    return "%.2f" % (best[a][i] / best[b][i]) if best[a][i] and best[b][i] else "-"
print("best of rounds, phi3 / llama.cpp:")
for ours, theirs in ((("phi3", "bf16-dir"), ("llama.cpp", "F16")), (("phi3", "bf16-dir"), ("llama.cpp", "BF16")),
                     (("phi3", "Q8_0"), ("llama.cpp", "Q8_0")), (("phi3", "Q4_K_M"), ("llama.cpp", "Q4_K_M"))):
    print("  %-18s vs %-18s prefill %5s  decode %5s" % (" ".join(ours), " ".join(theirs),
          ratio(ours, theirs, 0), ratio(ours, theirs, 1)))
for t in ("Q8_0", "Q4_K_M"):
    print("  phi3 %-6s decode vs phi3 bf16: %s" % (t, ratio(("phi3", t), ("phi3", "bf16-dir"), 1)))
PYEOF
