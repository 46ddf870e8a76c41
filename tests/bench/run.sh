#!/usr/bin/env bash
# run.sh: every benchmark (make bench). PHI3_BIN: tools; PHI3_BENCHBIN: built *_bench programs.
# BENCH=name runs only tests/bench/name.sh.
set -u
cd "$(dirname "$0")/../.."
export PHI3_BIN PHI3_BENCHBIN
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u +%F)"
rc=0
for b in tests/bench/*.sh; do
  n=$(basename "$b" .sh)
  case $n in run | steal) continue ;; esac     # this loop; sourced helpers
  [ -n "${BENCH:-}" ] && [ "$BENCH" != "$n" ] && continue
  echo "## $n"
  bash "$b" || { echo "bench $n FAILED"; rc=1; }
done
exit $rc
