#!/usr/bin/env bash
# loop.sh: what the FIFO loop costs per token. On the tiny fixture models (so the model
# itself is cheap and the loop's cost shows): decode tokens/s of phi3-run alone, fed the
# same greedy ids as a ready-made stream (no feedback wait), vs the full PROTOCOL.md loop
# (phi3-run | phi3-sample | tee FIFO | phi3-detok) producing those ids; the difference per
# token is the loop's overhead. Also phi3-sample alone on recorded logits. Best of 3.
set -u
cd "$(dirname "$0")/../.."
B=${PHI3_BIN:-$PWD/bin}
N=${LOOP_TOKENS:-300}
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
mkfifo "$w/fb"
now() { date +%s.%N; }
best() { printf '%s\n' "$@" | sort -g | head -n1; }

bench_model() {   # NAME DIR DETOK(0/1) [SAMPLER FLAGS...]
  local name=$1 m=$2 use_detok=$3 i t0 t1 loop=() alone=() samp=() samp2=()
  shift 3
  local sf=("$@")
  local detok=("$B/phi3-detok" -m "$m")
  [ "$use_detok" = 1 ] || detok=(cat)
  printf '{"type":"tokens","ids":[1,450,170,49]}\n' | "$B/phi3-dump" -r > "$w/prompt.bin"
  for i in 1 2 3; do
    t0=$(now)
    { cat "$w/prompt.bin"; cat "$w/fb"; } | "$B/phi3-run" -m "$m" --backend cpu -q \
      | "$B/phi3-sample" "${sf[@]}" --greedy -n "$N" | tee "$w/fb" "$w/out.bin" | "${detok[@]}" > /dev/null
    t1=$(now); loop+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
  done
  # the same ids as one ready-made stream: the prompt, then each of the N generated ids as
  # its own frame (the loop feeds all N back, the last one's logits going unused)
  "$B/phi3-dump" < "$w/out.bin" | grep '"type":"tokens"' > "$w/gen.jsonl"
  [ "$(grep -c . "$w/gen.jsonl")" -eq "$N" ] || { echo "$name: the loop made $(grep -c . "$w/gen.jsonl") tokens, not $N"; return 1; }
  { cat "$w/prompt.bin"; "$B/phi3-dump" -r < "$w/gen.jsonl"; } > "$w/stream.bin"
  for i in 1 2 3; do
    t0=$(now)
    "$B/phi3-run" -m "$m" --backend cpu -q < "$w/stream.bin" > "$w/logits.bin"
    t1=$(now); alone+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
  done
  # sanity: phi3-run alone on that stream gives logits whose argmax is the loop's ids
  "$B/phi3-sample" "${sf[@]}" --greedy < "$w/logits.bin" | "$B/phi3-dump" | head -n "$N" > "$w/check.jsonl"
  if ! "$B/phi3-dump" < "$w/out.bin" | grep '"type":"tokens"' | head -n "$N" | cmp -s - "$w/check.jsonl"; then
    echo "$name: phi3-run alone does not reproduce the loop's ids"; return 1
  fi
  for i in 1 2 3; do
    t0=$(now); "$B/phi3-sample" --greedy < "$w/logits.bin" > /dev/null; t1=$(now)
    samp+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
    t0=$(now); "$B/phi3-sample" --seed 1 -t 0.8 --top-k 40 --top-p 0.95 --min-p 0.05 \
      --repeat-penalty 1.1 < "$w/logits.bin" > /dev/null; t1=$(now)
    samp2+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
  done
  local tl ta ts ts2
  tl=$(best "${loop[@]}"); ta=$(best "${alone[@]}"); ts=$(best "${samp[@]}"); ts2=$(best "${samp2[@]}")
  awk -v name="$name" -v n="$N" -v tl="$tl" -v ta="$ta" -v ts="$ts" -v ts2="$ts2" 'BEGIN {
    printf "%s: %d tokens (times include model load, best of 3)\n", name, n
    printf "  phi3-run alone (ready-made ids)   %8.3f s  %8.1f tok/s\n", ta, n / ta
    printf "  full loop (run|sample|tee|detok)  %8.3f s  %8.1f tok/s\n", tl, n / tl
    printf "  loop overhead per token           %8.1f us\n", (tl - ta) / n * 1e6
    printf "  phi3-sample alone, greedy         %8.1f us/token (process start included)\n", ts / n * 1e6
    printf "  phi3-sample alone, t/top-k/top-p/min-p/penalty %5.1f us/token\n", ts2 / n * 1e6 }'
}

echo "# tiny fixture models on CPU: the model costs little, so the loop's own cost shows"
# --tokenizer-ids: the random model picks padding ids (32011..) that phi3-detok rejects
bench_model "tiny-longrope (vocab 32064, 128 KiB logits frames)" tests/fixtures/tiny-longrope 1 \
  -m tests/fixtures/tiny-longrope --tokenizer-ids --ignore-eos
bench_model "tiny-gqa-window (vocab 512)" tests/fixtures/tiny-gqa-window 0
