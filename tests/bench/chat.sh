#!/usr/bin/env bash
# chat.sh: the wall time of each of 11 chat turns (send a line, read the reply's line) on
# the bundled tiny model, 20-token greedy replies: `phi3 chat` (one phi3-run for the whole
# conversation) vs a new process per turn that re-reads the whole conversation (`phi3
# chat --messages` with the conversation so far, what the wrapper did before issue 14).
# The model is tiny, so what shows is what a turn costs besides the model: process
# start-up, template and tokenizer, and the recomputation of the conversation.
set -u
cd "$(dirname "$0")/../.." || exit 1
P=$PWD/bin/phi3
M=$PWD/tests/fixtures/tiny-longrope
TURNS=${CHAT_TURNS:-11}
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
now() { date +%s.%N; }
flags=(-m "$M" --greedy --ignore-eos -n 20 --logit-bias "13=-inf")   # no newline in a reply

persistent() {
  local i t0 reply out=""
  coproc C { "$P" chat "${flags[@]}" 2>/dev/null; }
  for ((i = 1; i <= TURNS; i++)); do
    t0=$(now)
    echo "Tell me about the tower number $i please" >&"${C[1]}"
    IFS= read -r reply <&"${C[0]}"
    out+=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f ", b - a }')
  done
  eval "exec ${C[1]}>&-"
  wait
  echo "$out"
}

per_process() {
  local i t0 reply out="" conv="["
  for ((i = 1; i <= TURNS; i++)); do
    [ "$i" -eq 1 ] || conv+=","
    conv+="{\"role\":\"user\",\"content\":\"Tell me about the tower number $i please\"}"
    printf '%s]' "$conv" > "$w/conv.json"
    t0=$(now)
    reply=$("$P" chat "${flags[@]}" --messages "$w/conv.json" < /dev/null 2>/dev/null)
    out+=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f ", b - a }')
    conv+=",{\"role\":\"assistant\",\"content\":$(printf '%s' "$reply" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}"
  done
  echo "$out"
}

echo "# load: $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in 1 2; do
  echo "per turn, one phi3-run per chat (s):    $(persistent)"
  echo "per turn, a new process per turn (s):   $(per_process)"
done
echo "# load: $(cut -d' ' -f1-3 /proc/loadavg)"
