#!/usr/bin/env bash
# run.sh SECONDS JOBS BIN...: each libFuzzer target BIN for SECONDS, JOBS at a time (the
# Makefile's fuzz target). A target's corpus is BIN.corpus, its seeds tests/fuzz/NAME.seeds
# when that exists; its output goes to BIN.log, printed whole when it fails. Exit 1 if any
# target failed (a crash, a leak, a sanitizer report).
set -u
secs=$1 jobs=$2
shift 2
one() {
  local b=$1 n seeds
  n=$(basename "$b")
  seeds=tests/fuzz/$n.seeds
  [ -d "$seeds" ] || seeds=
  mkdir -p "$b.corpus"
  echo "fuzz: $n for ${secs}s"
  if ! "$b" -max_total_time="$secs" -rss_limit_mb=2048 "$b.corpus" $seeds > "$b.log" 2>&1; then
    cat "$b.log"
    echo "fuzz: $n FAILED"
    return 1
  fi
  tail -1 "$b.log"
}
export -f one
export secs
printf '%s\n' "$@" | xargs -P "$jobs" -I{} bash -c 'one "$1"' _ {} || exit 1
