#!/usr/bin/env bash
# session.sh: CPU time to first logits for a 2,000-token prompt: fresh, into an empty
# session, and from a session already holding it (phi3-run --session). Model: a mid-size
# random-weight Phi-3 (hidden 512, 4 layers, 8 heads, intermediate 1408, the real vocab
# and LongRoPE config) made by gen_model, kept out of git under $PHI3_BENCH_DIR.
set -eu
B=${PHI3_BENCH_DIR:-${TMPDIR:-/tmp}/phi3-bench}
RUN="$PHI3_BIN/phi3-run"
mkdir -p "$B"
M="$B/session-model"
if [ ! -e "$M/config.json" ]; then
  cc -O2 -o "$B/gen_model" tests/bench/gen_model.c -ljansson
  /usr/bin/python3 - "$B/mid.config.json" <<'PY'
import json, sys
c = json.load(open("tests/bench/phi3-mini-128k-instruct.config.json"))
c.update(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
         intermediate_size=1408)
hd = 512 // 8
for k in ("short_factor", "long_factor"):
    c["rope_scaling"][k] = c["rope_scaling"][k][:hd // 2]
json.dump(c, open(sys.argv[1], "w"), indent=1)
PY
  "$B/gen_model" "$B/mid.config.json" "$M" > /dev/null
fi
/usr/bin/python3 -c '
import msgpack, random, sys
r = random.Random(1)
sys.stdout.buffer.write(msgpack.packb({"type": "tokens", "ids": [r.randrange(32000) for _ in range(2000)]}))' > "$B/p2000.bin"
S="phi3bench-$$"
trap '"$RUN" --session-rm "$S" 2> /dev/null || true' EXIT
# best of 3 wall-clock seconds of one phi3-run (load, 2000-token prompt, first logits)
t() { local best= s e; for i in 1 2 3; do
        [ "$1" = cold ] && { "$RUN" --session-rm "$S" 2> /dev/null || true; }
        s=$(date +%s%N); "$RUN" -m "$M" -q "${@:2}" < "$B/p2000.bin" > "$B/out.$1"; e=$(date +%s%N)
        best=$(awk -v a="$best" -v b=$(( (e - s) / 1000 )) 'BEGIN { print (a == "" || b < a) ? b : a }')
      done; awk -v u="$best" 'BEGIN { printf "%.3f", u / 1e6 }'; }
fresh=$(t fresh)
cold=$(t cold --session "$S")
warm=$(t warm --session "$S")
cmp -s "$B/out.fresh" "$B/out.warm" && same=bit-identical || same=DIFFERENT
echo "time to first logits, 2000-token prompt, CPU, $(nproc) cores, mid-size random model (hidden 512, 4 layers, vocab 32064):"
echo "  fresh (no session)           $fresh s"
echo "  into an empty session        $cold s"
echo "  from a session holding it    $warm s   (reuses 1999 positions; logits $same)"
awk -v f="$fresh" -v w="$warm" 'BEGIN { printf "  speed-up                     %.0fx\n", f / w }'
