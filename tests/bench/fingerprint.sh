#!/usr/bin/env bash
# fingerprint.sh: what the session fingerprint's full hash of the shards costs at load
# (docs/SESSIONS.md): phi3-run loading PHI3_BENCH_MODEL (default models/phi3-mini-random,
# 7.6 GB) with no input, the fingerprint cache off (the shards as the page cache holds
# them: the first run may read from disk), off again (warm), then with a fresh cache
# (miss, then hit). The memory read ceiling of the machine is measured in the same run.
set -eu
M=${PHI3_BENCH_MODEL:-models/phi3-mini-random}
[ -e "$M/config.json" ] || { echo "skip: no model at $M (set PHI3_BENCH_MODEL)"; exit 0; }
RUN="$PHI3_BIN/phi3-run"
C=$(mktemp -d); trap 'rm -rf "$C"' EXIT
gb=$(du -L -c -B1 "$M"/*.safetensors | tail -1 | cut -f1)
t() {
  local s=$(date +%s.%N)
  env "$@" XDG_CACHE_HOME="$C" "$RUN" --backend cpu -q -m "$M" < /dev/null
  awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'
}
echo "model $M: $(awk -v b="$gb" 'BEGIN { printf "%.2f GB", b / 1e9 }') of shards; load average $(cut -d' ' -f1-3 /proc/loadavg)"
cc -O2 -pthread -o "$C/bandwidth" tests/bench/bandwidth.c
echo "memory read ceiling: $("$C/bandwidth") GB/s ($(nproc) threads)"
a=$(t PHI3_FP_CACHE=off); b=$(t PHI3_FP_CACHE=off); c=$(t PHI3_FP_CACHE=on); d=$(t PHI3_FP_CACHE=on)
echo "load, cache off (first, maybe cold): $a s"
echo "load, cache off (warm):              $b s ($(awk -v g="$gb" -v s="$b" 'BEGIN { printf "%.1f", g / s / 1e9 }') GB/s hashed)"
echo "load, cache miss then hit:           $c s, $d s"
