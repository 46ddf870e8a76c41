#!/usr/bin/env bash
# tok.sh: phi3-tok encoding speed (one core) in MB/s on English prose, on CJK text and on
# 1 MB of a single character ('aaaa…', the worst case for a naive BPE merge). The
# tokenizer's load time (an empty input) is measured and subtracted. Targets (issue 3):
# >= 20 MB/s on English; the 1 MB run no more than 3x slower per byte than English.
set -eu
: "${PHI3_BIN:=$PWD/bin}"
M=tests/fixtures/tiny-longrope
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
PY=/usr/bin/python3

# English: the GPL-3 text (Debian base-files) or, lacking it, the fixtures' English cases.
eng=/usr/share/common-licenses/GPL-3
[ -r "$eng" ] || { eng=$T/src; grep -v '[^ -~]' tests/fixtures/tokenizer/tokenizer-cases.jsonl \
  | $PY -c 'import json,sys; print("\n".join(json.loads(l)["text"] for l in sys.stdin))' > "$eng"; }
$PY - "$eng" "$T" <<'PYEOF'
import json, sys
src, d = sys.argv[1], sys.argv[2]
def fill(text, n): return (text * (n // len(text) + 1))[:n]
open(d + "/en.txt", "w").write(fill(open(src, encoding="utf-8").read(), 8 << 20))
cjk = "".join(json.loads(l)["text"] for l in open("tests/fixtures/tokenizer/tokenizer-cases.jsonl", encoding="utf-8")
              if any("\u3000" <= ch <= "\u9fff" for ch in json.loads(l)["text"]))
b = fill(cjk, 3 << 20).encode()[:8 << 20]
open(d + "/cjk.txt", "wb").write(b.decode("utf-8", "ignore").encode())
open(d + "/aaaa.txt", "w").write("a" * (1 << 20))
PYEOF
: > "$T/empty.txt"

# best of 5 wall times (ns) of phi3-tok --raw on file $1, pinned to one core if possible
pin=(); taskset -c 0 true 2>/dev/null && pin=(taskset -c 0)
best() {
  local b="" s e
  for _ in 1 2 3 4 5; do
    s=$(date +%s%N)
    "${pin[@]}" "$PHI3_BIN/phi3-tok" --raw -m "$M" < "$1" > /dev/null
    e=$(date +%s%N)
    if [ -z "$b" ] || [ $((e - s)) -lt "$b" ]; then b=$((e - s)); fi
  done
  echo "$b"
}
load=$(best "$T/empty.txt")
printf 'load tokenizer.json: %.1f ms\n' "$(echo "$load / 1000000" | bc -l)"
declare -A rate
for f in en cjk aaaa; do
  n=$(stat -c %s "$T/$f.txt")
  t=$(best "$T/$f.txt")
  rate[$f]=$(echo "$n / (($t - $load) / 1000000000) / 1000000" | bc -l)
  printf '%-5s %5.2f MB  %7.1f ms  %6.1f MB/s\n' "$f" "$(echo "$n/1000000" | bc -l)" \
    "$(echo "($t - $load) / 1000000" | bc -l)" "${rate[$f]}"
done
printf 'English / aaaa per-byte time ratio: %.2fx (target <= 3x); English target >= 20 MB/s\n' \
  "$(echo "${rate[en]} / ${rate[aaaa]}" | bc -l)"
