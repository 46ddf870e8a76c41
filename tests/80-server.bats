#!/usr/bin/env bats
# phi3-run --serve / --connect (docs/SERVER.md): a stream through the server is byte for
# byte what phi3-run alone writes (CPU), for one stream and for many at once (random
# frames, rewinds, partial frames, --all-logits, bytes dribbled in pieces, the LongRoPE
# switch); errors relayed as phi3-run's line; limits refused, not hung; sockets private;
# stale sockets replaced; SIGTERM drains. Everything runs under `timeout`; teardown kills
# the servers and removes their sockets.
load helper

RAND="$ROOT/tests/lib/randstreams.py"
DRIBBLE="$ROOT/tests/lib/dribble.py"

setup() {
  cd "$BATS_TEST_TMPDIR"
  SERVERS=()
  export XDG_RUNTIME_DIR="$BATS_TEST_TMPDIR/xdg"
  mkdir -p -m 700 "$XDG_RUNTIME_DIR"
}

teardown() {
  local p
  for p in "${SERVERS[@]}"; do kill -9 "$p" 2> /dev/null || true; done
  for p in "${SERVERS[@]}"; do wait "$p" 2> /dev/null || true; done
  rm -rf "$BATS_TEST_TMPDIR/xdg" "$BATS_TEST_TMPDIR"/*.sock
}

# serve SOCK [FLAGS...]: a server on tiny-longrope in the background (stderr in
# server.err), SERVER = its pid; waits until the socket exists.
serve() {
  local s=$1; shift
  env ${SERVE_ENV:-} "$PHI3_BIN/phi3-run" -m "${MODEL:-$LONGROPE}" --backend cpu --serve "$s" "$@" 2>> server.err 3>&- &
  SERVER=$!
  SERVERS+=("$SERVER")
  local i
  for i in $(seq 200); do
    [ -S "$s" ] && return 0
    kill -0 "$SERVER" 2> /dev/null || fail "server exited: $(cat server.err)"
    sleep 0.05
  done
  fail "no socket $s after 10 s: $(cat server.err)"
}

# stop PID...: SIGTERM (the drain), then wait at most 30 s for each; 0 if all exited 0
stop() {
  local p i st=0
  kill -TERM "$@"
  for p in "$@"; do
    for i in $(seq 300); do kill -0 "$p" 2> /dev/null || break; sleep 0.1; done
    kill -0 "$p" 2> /dev/null && { kill -9 "$p"; fail "server $p did not drain within 30 s"; }
    wait "$p" || st=$?
  done
  return "$st"
}

# frames JSON...: one frame per JSON argument
frames() { printf '%s\n' "$@" | json2frames; }

RUN() { timeout 60 "$PHI3_BIN/phi3-run" "$@"; }

@test "server: one stream equals phi3-run alone, with and without --all-logits (rewinds, partial frames, the switch)" {
  serve ./s.sock
  "$RAND" 11 3 .
  for k in 1 2 3; do
    for a in "" --all-logits; do
      RUN -m "$LONGROPE" --backend cpu $a < in.$k > solo
      RUN --connect ./s.sock $a < in.$k > via
      cmp solo via || fail "stream $k $a differs"
    done
  done
  [ ! -s server.err ] || fail "server stderr: $(cat server.err)"
}

@test "server: the FIFO loop through --connect is bit-identical to the plain loop (greedy, across the switch)" {
  serve ./s.sock
  mkfifo fb fb2
  prompt=$("$ROOT/tests/lib/refids.py" "$LONGROPE/reference.safetensors" cross.prompt | tr ' ' ,)
  frames "{\"type\":\"tokens\",\"ids\":[$prompt]}" > prompt.bin
  timeout 60 bash -c '{ cat prompt.bin; cat fb; } | "$PHI3_BIN/phi3-run" -m "$1" --backend cpu \
    | "$PHI3_BIN/phi3-sample" --greedy -n 40 | tee fb > plain.bin' loop "$LONGROPE"
  timeout 60 bash -c 'set -o pipefail; { cat prompt.bin; cat fb2; } | "$PHI3_BIN/phi3-run" -m "$1" --connect ./s.sock \
    | "$PHI3_BIN/phi3-sample" --greedy -n 40 | tee fb2 > served.bin; echo "${PIPESTATUS[*]}" > status' loop "$LONGROPE"
  [ "$(cat status)" = "0 0 0 0" ] || fail "stage statuses $(cat status)"
  [ -s plain.bin ]
  cmp plain.bin served.bin
  [ "$(frames2json < served.bin | grep -c tokens)" = 40 ]
}

# concurrent MODEL VOCAB SEED N [SERVER FLAGS...]: N random streams at once through one
# server (every other one dribbled in pieces), each compared with its solo run.
concurrent() {
  local m=$1 v=$2 seed=$3 n=$4 k; shift 4
  MODEL=$m serve ./s.sock --stats "$@"
  "$RAND" "$seed" "$n" . "$v"
  for k in $(seq "$n"); do RUN -m "$m" --backend cpu ${SOLO_FLAGS:-} $(cat flags.$k) < in.$k > solo.$k; done
  local pids=()
  for k in $(seq "$n"); do
    if [ $((k % 2)) = 0 ]; then
      ( set +e; "$DRIBBLE" $k in.$k | RUN --connect ./s.sock $(cat flags.$k) > via.$k 2> err.$k; echo $? > rc.$k ) &
    else
      ( set +e; RUN --connect ./s.sock $(cat flags.$k) < in.$k > via.$k 2> err.$k; echo $? > rc.$k ) &
    fi
    pids+=($!)
  done
  wait "${pids[@]}"
  for k in $(seq "$n"); do
    [ "$(cat rc.$k)" = 0 ] || fail "stream $k exit $(cat rc.$k): $(cat err.$k)"
    cmp solo.$k via.$k || fail "stream $k ($(cat flags.$k)) differs from its solo run"
  done
  stop "$SERVER"
  grep -q "server stats: $n streams served" server.err || fail "$(cat server.err)"
}

@test "server: 12 concurrent random streams in batched steps, dribbled in pieces, each equals its solo run (tiny-longrope)" {
  concurrent "$LONGROPE" 32064 7 12
  # the steps did run several streams in one forward
  grep 'server stats:.*batched' server.err | grep -vq '(0 batched)' || fail "$(cat server.err)"
}

@test "server: 12 concurrent random streams, one forward per stream (--no-batch), each equals its solo run" {
  concurrent "$LONGROPE" 32064 8 12 --no-batch
  grep -q '(0 batched)' server.err
}

@test "server: --kv-type f16: 10 concurrent random streams in batched steps equal solo runs with --kv-type f16" {
  SOLO_FLAGS="--kv-type f16" concurrent "$LONGROPE" 32064 10 10 --kv-type f16
  grep 'server stats:.*batched' server.err | grep -vq '(0 batched)' || fail "$(cat server.err)"
}

@test "server: 16 concurrent random streams in batched steps on tiny-gqa-window (GQA, sliding window 16)" {
  concurrent "$GQA" 512 9 16 --chunk 16
  grep 'server stats:.*batched' server.err | grep -vq '(0 batched)' || fail "$(cat server.err)"
}

@test "server: GGUF models (Q8_0, Q4_K_M): 10 concurrent random streams in batched steps equal solo runs; the server does not use PHI3_QUANT_LIMBS" {
  # k256 (helper.bash): rows of whole 256-blocks, so Q4_K_M has its K types; its
  # token_embd is quantized too, which a batched step must look up by blocks (it once
  # read them as floats: NaN logits)
  make_k256 .
  "$PHI3_BIN/phi3-quantize" -q -t Q8_0 k256 q8.gguf 2> /dev/null
  "$PHI3_BIN/phi3-quantize" -q -t Q4_K_M k256 q4.gguf 2> /dev/null
  concurrent "$PWD/q8.gguf" 512 13 10
  grep 'server stats:.*batched' server.err | grep -vq '(0 batched)' || fail "$(cat server.err)"
  # the limb kernels (opt-in) take products of 1..3 tokens only, so a served stream would
  # depend on its neighbours in a step: the server computes on the exact kernels, and its
  # streams equal the solo runs without limbs
  rm -f server.err
  SERVE_ENV=PHI3_QUANT_LIMBS=1 concurrent "$PWD/q4.gguf" 512 14 10
  grep 'server stats:.*batched' server.err | grep -vq '(0 batched)' || fail "$(cat server.err)"
  if [ -z "$(limbs_missing)" ]; then
    grep -q 'PHI3_QUANT_LIMBS=1 is not used by --serve' server.err || fail "no note: $(cat server.err)"
  fi
}

@test "server: errors come back as phi3-run's line and exit 1; frames before them are answered" {
  serve ./s.sock
  frames '{"type":"tokens","ids":[1,2,3]}' '{"type":"tokens","ids":[99999]}' > bad-id
  frames '{"type":"tokens","ids":[1,2,3]}' '{"type":"tokens","ids":[4],"pos":9}' > bad-pos
  frames '{"type":"tokens","ids":[1,2,3]}' > ok; { cat ok; head -c 5 ok; } > truncated
  { cat ok; printf '\xc1'; } > notmsgpack
  frames '{"type":"tokens","ids":[1,"x"]}' > notint
  for f in bad-id bad-pos truncated notmsgpack notint; do
    run --separate-stderr RUN -m "$LONGROPE" --backend cpu < $f
    solo_status=$status solo_err=$stderr
    RUN -m "$LONGROPE" --backend cpu < $f > solo 2> /dev/null || true
    run --separate-stderr RUN --connect ./s.sock < $f
    [ "$status" = "$solo_status" ] && [ "$status" = 1 ] || fail "$f: exit $status, solo $solo_status"
    [ "$stderr" = "$solo_err" ] || fail "$f: '$stderr' vs solo '$solo_err'"
    RUN --connect ./s.sock < $f > via 2> /dev/null || true
    cmp solo via || fail "$f: output before the error differs"
  done
  # the server is unharmed
  RUN --connect ./s.sock < ok > via
  RUN -m "$LONGROPE" --backend cpu < ok | cmp - via
}

@test "server: a client killed mid-frame frees its stream and harms no other" {
  serve ./s.sock --stats
  "$RAND" 5 1 .
  RUN -m "$LONGROPE" --backend cpu < in.1 > solo
  # a client that sent half a frame, then is killed
  frames "{\"type\":\"tokens\",\"ids\":[$(seq -s, 1 60)]}" > big
  mkfifo half
  "$PHI3_BIN/phi3-run" --connect ./s.sock < half > /dev/null 2>&1 &
  victim=$!
  exec 4> half
  head -c 40 big >&4
  ( "$DRIBBLE" 1 in.1 | RUN --connect ./s.sock > via ) &
  other=$!
  sleep 0.3
  kill -9 "$victim"
  wait "$other"
  exec 4>&-
  cmp solo via
  # and the server goes on serving
  RUN --connect ./s.sock < in.1 | cmp - solo
  for i in $(seq 100); do
    kill -USR1 "$SERVER"; sleep 0.1
    grep -q 'server stats: 3 streams served (0 open' server.err && break
  done
  grep -q 'server stats: 3 streams served (0 open' server.err || fail "$(cat server.err)"
}

@test "server: --max-streams and --kv-budget refuse a stream that does not fit with one clear line, no hang" {
  serve ./s.sock --max-streams 1
  mkfifo hold
  ( RUN --connect ./s.sock < hold > first 2>&1 ) &
  exec 4> hold
  frames '{"type":"tokens","ids":[1]}' >&4
  for i in $(seq 200); do [ -s first ] && break; sleep 0.05; done   # it is being served
  run --separate-stderr RUN --connect ./s.sock < /dev/null
  assert_status 1
  assert_err "phi3-run: server: no room for this stream" "--max-streams 1"
  exec 4>&-
  kill -9 "$SERVER"
  # budget: tiny-longrope KV is 2 layers x 3 x 192 floats = 4608 B per position
  serve ./b.sock --kv-budget 500K
  frames '{"type":"tokens","ids":[1,2]}' > ok
  RUN --connect ./b.sock --ctx 100 < ok > /dev/null
  run --separate-stderr RUN --connect ./b.sock < ok
  assert_status 1
  assert_err "phi3-run: server: no room for this stream" "ask less with --ctx"
}

@test "server: --session per stream through the server equals the session-less solo run" {
  serve ./s.sock
  S="phi3test-server-$$"
  "$RAND" 3 1 .
  RUN -m "$LONGROPE" --backend cpu < in.1 > solo
  RUN --connect ./s.sock --session "$S" < in.1 > via1
  RUN --connect ./s.sock --session "$S" < in.1 > via2
  "$PHI3_BIN/phi3-run" --session-rm "$S"
  cmp solo via1
  cmp solo via2
}

@test "server: socket 0600 in a private directory; a bare name goes under \$XDG_RUNTIME_DIR/phi3" {
  "$PHI3_BIN/phi3-run" -m "$LONGROPE" --backend cpu --serve myname 2>> server.err 3>&- &
  SERVERS+=($!)
  for i in $(seq 200); do [ -S "$XDG_RUNTIME_DIR/phi3/myname" ] && break; sleep 0.05; done
  [ "$(stat -c %a "$XDG_RUNTIME_DIR/phi3")" = 700 ]
  [ "$(stat -c %a "$XDG_RUNTIME_DIR/phi3/myname")" = 600 ]
  frames '{"type":"tokens","ids":[1,2]}' > ok
  RUN --connect myname < ok | cmp - <(RUN -m "$LONGROPE" --backend cpu < ok)
  # a directory others can enter is refused
  chmod 755 "$XDG_RUNTIME_DIR/phi3"
  run --separate-stderr RUN --connect myname < ok
  assert_status 1
  assert_err "phi3-run: --connect:" "not a private directory"
}

@test "server: a stale socket is replaced, a live one or a file that is not a socket is not" {
  serve ./s.sock
  kill -9 "$SERVER"; wait "$SERVER" 2> /dev/null || true
  [ -S ./s.sock ]                       # left behind by the killed server
  # serve returns as soon as the path is a socket, which the stale one already is: wait
  # for the new server's line, written once it listens
  serve ./s.sock -v
  local i
  for i in $(seq 200); do grep -q 'serving on' server.err && break; sleep 0.05; done
  grep -q 'serving on' server.err || fail "the new server did not listen: $(cat server.err)"
  frames '{"type":"tokens","ids":[1,2]}' > ok
  RUN --connect ./s.sock < ok > /dev/null
  run --separate-stderr RUN -m "$LONGROPE" --serve ./s.sock
  assert_status 1
  assert_err "phi3-run: --serve:" "already listening"
  echo data > plain
  run --separate-stderr RUN -m "$LONGROPE" --serve "$PWD/plain"
  assert_status 1
  assert_err "phi3-run: --serve:" "not a socket of ours"
  [ "$(cat plain)" = data ]
}

# drain MODE: a raw client has one frame answered; the server is stopped (SIGSTOP), the
# client sends the rest of its frames (and with MODE eof ends its input), the server gets
# SIGTERM and SIGCONT: everything sent before the signal must be answered.
drain() {
  serve ./s.sock
  "$RAND" 9 1 .
  frames '{"type":"tokens","ids":[1,2,3]}' > first
  { cat first in.1; } > all
  RUN -m "$LONGROPE" --backend cpu < all > solo
  timeout 60 "$ROOT/tests/lib/rawclient.py" ./s.sock first in.1 via "$1" &
  client=$!
  for i in $(seq 200); do [ -e via.ready ] && break; sleep 0.05; done
  kill -STOP "$SERVER"
  touch via.go
  for i in $(seq 200); do [ -e via.sent ] && break; sleep 0.05; done
  [ -e via.sent ]
  kill -TERM "$SERVER"
  kill -CONT "$SERVER"
  for i in $(seq 300); do kill -0 "$SERVER" 2> /dev/null || break; sleep 0.1; done
  st=0; wait "$SERVER" || st=$?
  [ "$st" = 0 ] || fail "server exit $st: $(cat server.err)"
  wait "$client"
  [ ! -e ./s.sock ]
  cmp solo via
}

@test "server: SIGTERM drains: frames that arrived are answered, a stream whose input ended gets done, exit 0" {
  drain eof
  [ "$(cat via.last)" = "done " ]
}

@test "server: SIGTERM drains: a stream whose input goes on is answered, then told the server is shutting down" {
  drain open
  grep -q "^error server is shutting down" via.last || fail "$(cat via.last)"
}

@test "server: a client still sending when the server drains exits 1 with the server's line" {
  serve ./s.sock
  mkfifo hold
  ( set +e; RUN --connect ./s.sock < hold > via 2> err; echo $? > rc ) &
  client=$!
  exec 4> hold
  frames '{"type":"tokens","ids":[1,2,3]}' >&4
  for i in $(seq 200); do [ -s via ] && break; sleep 0.05; done
  stop "$SERVER"
  wait "$client" || true
  exec 4>&-
  [ "$(cat rc)" = 1 ]
  [ "$(cat err)" = "phi3-run: server is shutting down (SIGTERM): later frames were not read" ]
}

@test "server: --connect without a server, and a server that dies mid-stream, are errors (exit 1)" {
  run --separate-stderr RUN --connect "$PWD/none.sock" < /dev/null
  assert_status 1
  assert_err "phi3-run: --connect: no server at" "none.sock"
  serve ./s.sock
  mkfifo hold
  ( set +e; RUN --connect ./s.sock < hold > via 2> err; echo $? > rc ) &
  client=$!
  exec 4> hold
  frames '{"type":"tokens","ids":[1]}' > one
  cat one >&4
  for i in $(seq 200); do [ -s via ] && break; sleep 0.05; done
  kill -9 "$SERVER"
  wait "$client" || true
  exec 4>&-
  [ "$(cat rc)" = 1 ]
  grep -q "phi3-run: --connect: the server at .* closed the stream without finishing it" err
}

@test "server: a peer of another uid is refused (SO_PEERCRED), and --connect refuses a server of another uid" {
  [ "$(id -u)" = 0 ] && command -v setpriv > /dev/null || skip "needs root and setpriv"
  D=$(mktemp -d /tmp/phi3-peer.XXXXXX)
  chmod 755 "$D"
  serve "$D/s.sock"
  chmod 666 "$D/s.sock"               # let uid 65534 reach it at all
  frames '{"type":"tokens","ids":[1]}' > ok
  # a raw client as uid 65534: the server closes without a byte
  run timeout 20 setpriv --reuid 65534 --regid 65534 --clear-groups "$PY" -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
try:
    s.sendall(open(sys.argv[2], "rb").read()); s.shutdown(socket.SHUT_WR); print(len(s.recv(1 << 20)))
except (ConnectionResetError, BrokenPipeError):
    print(0)' "$D/s.sock" /dev/stdin < ok
  [ "$output" = 0 ] || fail "server answered another uid: $output"
  # our own raw client is answered (tokens + logits + done)
  run timeout 20 "$PY" -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(open(sys.argv[2], "rb").read())
s.shutdown(socket.SHUT_WR); n = 0
while True:
    b = s.recv(1 << 20)
    if not b: break
    n += len(b)
print(n > 128000)' "$D/s.sock" ok
  [ "$output" = True ]
  run --separate-stderr timeout 20 setpriv --reuid 65534 --regid 65534 --clear-groups \
    "$PHI3_BIN/phi3-run" --connect "$D/s.sock" < ok
  kill -9 "$SERVER"
  rm -rf "$D"
  assert_status 1
  assert_err "phi3-run: --connect:" "runs as uid 0, not ours"
}

@test "server: usage errors (exit 2)" {
  run --separate-stderr "$PHI3_BIN/phi3-run" --serve a --connect b
  assert_status 2
  run --separate-stderr "$PHI3_BIN/phi3-run" -m "$LONGROPE" --serve a --all-logits
  assert_status 2
  assert_err "phi3-run:" "per stream"
  run --separate-stderr "$PHI3_BIN/phi3-run" -m "$LONGROPE" --serve a --kv-budget 12X
  assert_status 2
}

@test "server: many prompts over two servers with GNU parallel (docs/SERVER.md) equal the runs without a server" {
  command -v parallel > /dev/null || skip "GNU parallel is not installed (make deps)"
  serve ./srv1 --stats
  s1=$SERVER
  serve ./srv2 --stats
  s2=$SERVER
  "$PY" -c '
import json, random
r = random.Random(4)
for i in range(4):
    print(json.dumps({"type": "tokens", "ids": [r.randrange(32064) for _ in range(r.randint(3, 40))]}))' > prompts.jsonl
  # one generation loop per prompt; {%} is the job slot: slot 1 uses srv1, slot 2 srv2
  cat > gen.sh <<'SH'
set -eu
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT; mkfifo "$d/fb"
{ "$PHI3_BIN/phi3-dump" -r; cat "$d/fb"; } | "$PHI3_BIN/phi3-run" "$@" \
  | "$PHI3_BIN/phi3-sample" --greedy -n 4 | tee "$d/fb" | "$PHI3_BIN/phi3-dump"
SH
  timeout 120 parallel --will-cite --pipe -N1 -j2 -k bash gen.sh --connect ./srv{%} < prompts.jsonl > served
  timeout 120 parallel --will-cite --pipe -N1 -j1 -k bash gen.sh -m "$LONGROPE" --backend cpu < prompts.jsonl > plain
  [ "$(grep -c '"type":"end"' plain)" = 4 ]
  cmp plain served
  stop "$s1" "$s2"
  [ "$(grep -c 'server stats: [1-9][0-9]* streams served' server.err)" = 2 ] || fail "$(cat server.err)"
}

@test "server: --backend cuda without a usable device fails at start with the backend's line (no socket left)" {
  "$PHI3_BIN/phi3-run" --help | grep -q -- --serve
  run --separate-stderr timeout 10 "$PHI3_BIN/phi3-run" -m "$LONGROPE" --serve ./c.sock --backend cuda
  if [ "$status" = 124 ]; then skip "a CUDA device is present: the server ran"; fi
  assert_status 1
  assert_err "phi3-run: cuda backend:" ""
  [ ! -e ./c.sock ]
}

@test "server: bad hello frames and a late hello are refused with a line, and the server goes on" {
  serve ./s.sock
  frames '{"type":"tokens","ids":[1,2]}' > ok
  for h in '{"type":"hello","version":2}' '{"type":"hello","ctx":0}' '{"type":"hello","all_logits":1}' \
           '{"type":"hello","session":"../x"}' '{"type":"hello","ctx":999999}'; do
    frames "$h" | cat - ok > in
    run --separate-stderr timeout 20 "$PY" -c '
import socket, sys, msgpack
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(open(sys.argv[2], "rb").read())
s.shutdown(socket.SHUT_WR); u = msgpack.Unpacker(raw=False)
while True:
    b = s.recv(1 << 20)
    if not b: break
    u.feed(b)
for f in u: print(f["type"], f.get("message", ""))' ./s.sock in
    [ "$status" = 0 ] && [[ "$output" == "error "* ]] && [ "$(echo "$output" | wc -l)" = 1 ] || fail "$h: $output"
  done
  # a hello that is not the first frame: frame 2 (counting without the first hello)
  run --separate-stderr timeout 20 "$PHI3_BIN/phi3-run" --connect ./s.sock < <(cat ok; frames '{"type":"hello"}')
  assert_status 1
  assert_err "phi3-run: frame 2:" "hello frame must be the first"
  RUN --connect ./s.sock < ok | cmp - <(RUN -m "$LONGROPE" --backend cpu < ok)
}

@test "server: a refused stream does not count against --max-streams while it closes" {
  serve ./s.sock --max-streams 1
  frames '{"type":"tokens","ids":[1]}' > one
  for i in 1 2 3; do RUN --connect ./s.sock < one > /dev/null; done   # one after another: each fits
  mkfifo hold
  ( RUN --connect ./s.sock < hold > first 2>&1 ) &
  holder=$!
  exec 4> hold
  cat one >&4
  for i in $(seq 200); do [ -s first ] && break; sleep 0.05; done
  for i in 1 2 3; do
    run --separate-stderr RUN --connect ./s.sock < one
    assert_err "phi3-run: server: no room for this stream" "1 streams are open"
  done
  exec 4>&-
  wait "$holder"
  RUN --connect ./s.sock < one > /dev/null
}
