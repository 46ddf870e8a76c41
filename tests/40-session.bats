#!/usr/bin/env bats
# phi3-run --session: a pure cache (raw stdout bytes identical to a fresh run), reuse
# counts, a three-turn chat through fresh pipelines, kill -9 of a writer, the lock.
load helper

setup() {
  cd "$BATS_TEST_TMPDIR"
  S="phi3test-$$-$BATS_TEST_NUMBER"
  RUN="$PHI3_BIN/phi3-run"
}

teardown() {
  "$PHI3_BIN/phi3-run" --session-rm "$S" 2> /dev/null || true
  rm -f "/dev/shm/phi3.$S"
}

# frames SEED VOCAB N1 N2...: tokens frames of N1, N2... random ids (fixed seed);
# a negative N is a run of |N| frames of one token each.
frames() {
  "$PY" -c '
import msgpack, random, sys
r = random.Random(int(sys.argv[1])); v = int(sys.argv[2]); out = sys.stdout.buffer
for a in sys.argv[3:]:
    n = int(a)
    for k in ([n] if n > 0 else [1] * -n):
        out.write(msgpack.packb({"type": "tokens", "ids": [r.randrange(v) for _ in range(k)]}))
' "$@"
}

# same MODEL FILE: a session run over FILE writes exactly the bytes of a fresh run
# (both with the options in $KV, e.g. KV="--kv-type f16").
same() {
  "$RUN" -m "$1" -q ${KV:-} < "$2" > fresh.out || fail "fresh run failed"
  "$RUN" -m "$1" -q ${KV:-} --session "$S" --stats < "$2" > sess.out 2> stats || fail "session run: $(cat stats)"
  cmp fresh.out sess.out || fail "logits differ with the session ($2)"
  [ -s fresh.out ] || fail "no output"
}

reused() { grep -o 'reused [0-9]*' stats | cut -d' ' -f2; }

# MODEL SEED VOCAB SPLIT...: for each split (frame sizes, as frames takes them), the
# logits of its frames are equal with and without the session (which each one reuses)
same_splits() {
  local m=$1 seed=$2 v=$3 split; shift 3
  for split in "$@"; do
    frames "$seed" "$v" $split > p.bin
    same "$m" p.bin
  done
}

@test "tiny-longrope: logits bit-identical with a session, prefixes around the switch at 64" {
  frames 1 32064 100 > p100.bin
  same "$LONGROPE" p100.bin
  [ "$(reused)" = 0 ]
  same "$LONGROPE" p100.bin
  [ "$(reused)" = 99 ] || fail "$(cat stats)"
  # the same ids cut into frames that end below, at and above 64, then single tokens
  same_splits "$LONGROPE" 1 32064 "30" "64" "65" "40 24 1" "63 1 1 1" "10 20 30 -10" "100 -5" "50 50"
  # a context diverging after 70, then a shorter one again
  frames 1 32064 70 > a.bin; frames 9 32064 50 > b.bin; cat a.bin b.bin > ab.bin
  same "$LONGROPE" ab.bin
  same "$LONGROPE" a.bin
}

@test "tiny-gqa-window: logits bit-identical with a session (sliding window 16), reuse counted" {
  frames 2 512 80 > p80.bin
  same "$GQA" p80.bin
  same "$GQA" p80.bin
  [ "$(reused)" = 79 ] || fail "$(cat stats)"
  same_splits "$GQA" 2 512 "10" "17" "16 1 1" "40 40 -5" "79 1"
  frames 2 512 40 > a.bin; frames 5 512 30 > b.bin; cat a.bin b.bin > ab.bin
  same "$GQA" ab.bin
  [ "$(reused)" = 39 ] || fail "$(cat stats)"
}

@test "a rewind below original_max into a stored long context (matching ids) equals a fresh run" {
  frames 1 32064 100 > p100.bin
  "$RUN" -m "$LONGROPE" -q --session "$S" < p100.bin > /dev/null      # stored: 100, long
  "$PY" -c '
import msgpack, random, sys
r = random.Random(1); ids = [r.randrange(32064) for _ in range(100)]; out = sys.stdout.buffer
out.write(msgpack.packb({"type": "tokens", "ids": ids[:70]}))
out.write(msgpack.packb({"type": "tokens", "ids": ids[30:40], "pos": 30}))
out.write(msgpack.packb({"type": "tokens", "ids": ids[40:45]}))' > rw.bin
  same "$LONGROPE" rw.bin
}

@test "differential: random streams (rewinds, partial and empty frames, --all-logits, --ctx) equal with one long-lived session" {
  # tests/lib/sessdiff.py: each stream fresh and with the session $S that every earlier
  # stream of the run left behind; stdout bytes and exit status must be equal. Seed 1 hit
  # "scratch context out of step" (a rewind below original_max into a stored long context).
  # each run stops at its stream count or its seconds, whichever comes first; under the
  # sanitizers (make sanitize sets PHI3_SANITIZE) the seconds end them, so they are halved there
  local seed=$((RANDOM)) t1=40 t2=15
  [ -z "${PHI3_SANITIZE:-}" ] || { t1=20; t2=7; }
  run "$PY" "$ROOT/tests/lib/sessdiff.py" "$RUN" "$LONGROPE" 32064 64 "$S" 300 1 $t1
  [ "$status" = 0 ] || fail "$output"
  echo "$output"
  run "$PY" "$ROOT/tests/lib/sessdiff.py" "$RUN" "$LONGROPE" 32064 64 "$S" 100 "$seed" $t2
  [ "$status" = 0 ] || fail "seed $seed: $output"
  "$RUN" --session-rm "$S"
  run "$PY" "$ROOT/tests/lib/sessdiff.py" "$RUN" "$GQA" 512 20 "$S" 200 "$seed" $t2
  [ "$status" = 0 ] || fail "seed $seed: $output"
  "$RUN" --session-rm "$S"
  run "$PY" "$ROOT/tests/lib/sessdiff.py" "$RUN" "$LONGROPE" 32064 64 "$S" 100 "$seed" $t2 --kv-type f16
  [ "$status" = 0 ] || fail "--kv-type f16, seed $seed: $output"
}

@test "--kv-type f16: logits bit-identical with a session (splits, the switch at 64, a window)" {
  KV="--kv-type f16"
  frames 1 32064 100 > p100.bin
  same "$LONGROPE" p100.bin
  same "$LONGROPE" p100.bin
  [ "$(reused)" = 99 ] || fail "$(cat stats)"
  same_splits "$LONGROPE" 1 32064 "64" "65" "63 1 1 1" "10 20 30 -10" "100 -5"
  "$RUN" --session-rm "$S"
  same_splits "$GQA" 2 512 "80" "17" "40 40 -5"
}

@test "--kv-type: the session records it; a run without it takes the session's; a mismatch is refused" {
  frames 8 512 30 -2 > p.bin
  "$RUN" -m "$GQA" -q --kv-type f16 --session "$S" < p.bin > /dev/null
  "$RUN" --session-info "$S" | grep -q '"dtype": *"f16"'
  # no --kv-type: the f16 session is reused, bytes as a fresh f16 run
  "$RUN" -m "$GQA" -q --kv-type f16 < p.bin > fresh.out
  "$RUN" -m "$GQA" -q --session "$S" --stats < p.bin > sess.out 2> stats
  cmp fresh.out sess.out
  [ "$(reused)" -ge 29 ] || fail "$(cat stats)"
  cp "/dev/shm/phi3.$S" before
  run --separate-stderr "$RUN" -m "$GQA" -q --kv-type f32 --session "$S" < p.bin
  assert_status 1
  assert_err "phi3-run: session $S holds a f16 KV cache, this run asks for --kv-type f32"
  cmp before "/dev/shm/phi3.$S"
  # half the bytes per position of an f32 session of the same capacity
  local S2="$S-f32" b16 b32
  "$RUN" -m "$GQA" -q --kv-type f32 --session "$S2" < p.bin > /dev/null
  b16=$("$RUN" --session-info "$S" | "$PY" -c 'import json,sys; o=json.load(sys.stdin); print(o["bytes"], o["capacity"])')
  b32=$("$RUN" --session-info "$S2" | "$PY" -c 'import json,sys; o=json.load(sys.stdin); print(o["bytes"], o["capacity"])')
  "$RUN" --session-rm "$S2"
  "$PY" - "$b16" "$b32" "$GQA/config.json" <<'PYEOF'
import json, sys
(b16, c16), (b32, c32) = [map(int, a.split()) for a in sys.argv[1:3]]
c = json.load(open(sys.argv[3]))
elems = c["num_hidden_layers"] * 2 * c["num_key_value_heads"] * (c["hidden_size"] // c["num_attention_heads"])
assert c16 == c32 > 0, (c16, c32)
# the same header and ids; rows of K and V: 4 bytes per element against 2
assert b32 - b16 == c32 * elems * 2, (b16, b32, c32, elems)
PYEOF
}

@test "--all-logits through a session is bit-identical too" {
  frames 3 32064 90 > p.bin
  "$RUN" -m "$LONGROPE" -q --session "$S" < p.bin > /dev/null
  "$RUN" -m "$LONGROPE" -q --all-logits < p.bin > fresh.out
  "$RUN" -m "$LONGROPE" -q --all-logits --session "$S" < p.bin > sess.out
  cmp fresh.out sess.out
}

@test "a session written with AVX and reused under PHI3_NO_AVX=1 (and back) changes no bit" {
  frames 6 32064 40 -3 > p.bin
  "$RUN" -m "$LONGROPE" -q --session "$S" < p.bin > /dev/null
  PHI3_NO_AVX=1 "$RUN" -m "$LONGROPE" -q < p.bin > fresh.out
  PHI3_NO_AVX=1 "$RUN" -m "$LONGROPE" -q --session "$S" --stats < p.bin > sess.out 2> stats
  [ "$(reused)" -ge 39 ] || fail "$(cat stats)"
  cmp fresh.out sess.out
  "$RUN" -m "$LONGROPE" -q --session "$S" < p.bin > sess2.out
  cmp fresh.out sess2.out
}

@test "--stats: reused N, computed, prefill and decode times on stderr" {
  frames 4 512 30 -3 > p.bin
  "$RUN" -m "$GQA" -q --session "$S" < p.bin > /dev/null
  run --separate-stderr "$RUN" -m "$GQA" -q --session "$S" --stats < p.bin
  assert_status 0
  [[ "$stderr" == "phi3-run: stats: reused 29, computed 4, prefill "*" s (1 frames), decode "*" s (3 tokens, "* ]] ||
    fail "stderr: $stderr"
  run --separate-stderr "$RUN" -m "$GQA" -q --stats < p.bin
  [[ "$stderr" == *"reused 0, computed 33"* ]] || fail "without a session: $stderr"
}

@test "chat: three turns through fresh loop pipelines compute only each turn's new tokens" {
  mkfifo fb
  ids_of() { "$PHI3_BIN/phi3-dump" < "$1" | "$PY" -c '
import json, sys
print(" ".join(str(i) for l in sys.stdin for o in [json.loads(l)] if o["type"] == "tokens" for i in o["ids"]))'; }
  ctx=""
  for turn in 1 2 3; do
    user=$(seq $((turn * 7)) $((turn * 7 + 5)) | tr '\n' ' ')        # 6 new user ids
    prev=$(echo $ctx | wc -w)
    ctx="$ctx $user"
    printf '{"type":"tokens","ids":[%s]}\n' "$(echo $ctx | tr ' ' ',')" | "$PHI3_BIN/phi3-dump" -r > prompt.bin
    timeout 60 bash -c '{ cat prompt.bin; cat fb; } | "$1" -m "$2" -q --session "$3" --stats 2> stats |
                          "$4" --greedy -n 4 | tee fb > out.bin' x "$RUN" "$GQA" "$S" "$PHI3_BIN/phi3-sample"
    gen=$(ids_of out.bin)
    [ "$(echo $gen | wc -w)" = 4 ] || fail "turn $turn: generated '$gen'"
    # the stored context (everything of the previous turn) is reused; the user ids and the
    # 4 fed-back generated ids are computed
    [[ "$(cat stats)" == *"reused $prev, computed 10,"* ]] || fail "turn $turn (prev $prev): $(cat stats)"
    ctx="$ctx $gen"
  done
  # the session holds the whole conversation
  "$RUN" --session-info "$S" > info.json
  want=$(echo $ctx | tr ' ' ',')
  "$PY" -c 'import json,sys; o = json.load(open("info.json")); sys.exit(",".join(map(str, o["ids"])) != sys.argv[1])' "$want"
}

# killcheck WHEN: after a kill, the object is absent (killed while the model was still
# loading) or valid, and a run over it gives a fresh run's bytes; counts a partial context
killcheck() {
  if "$RUN" --session-info "$S" > info.json 2> info.err; then
    grep -q '"tokens":1600,' info.json || partial=$((partial + 1))
  else
    grep -q "no session" info.err || fail "session invalid after a kill $1: $(cat info.err)"
  fi
  "$RUN" -m "$LONGROPE" -q --session "$S" < p.bin > sess.out
  cmp fresh.out sess.out || fail "logits differ after a kill $1"
  "$RUN" --session-rm "$S"
}

@test "kill -9 of a writer mid-prefill never leaves a session that changes the logits" {
  frames 6 32064 200 200 200 200 200 200 200 200 > p.bin
  frames 6 32064 200 200 200 > p3.bin            # the first three frames of p.bin
  cmp -s p3.bin <(head -c "$(stat -c %s p3.bin)" p.bin) || fail "p3.bin is not a prefix of p.bin"
  tail -c +"$(( $(stat -c %s p3.bin) + 1 ))" p.bin > rest.bin
  t0=$(date +%s%N)
  "$RUN" -m "$LONGROPE" -q < p.bin > fresh.out
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  partial=0
  # one kill that surely lands mid-prefill: the writer has committed three frames (the
  # object says 600 tokens) and is given the other five just before the kill
  mkfifo in.fifo
  "$RUN" -m "$LONGROPE" -q --session "$S" < in.fifo > /dev/null &
  pid=$!
  exec 7> in.fifo
  cat p3.bin >&7
  for i in $(seq 600); do
    "$RUN" --session-info "$S" 2> /dev/null | grep -q '"tokens":600,' && break
    sleep 0.05
  done
  "$RUN" --session-info "$S" | grep -q '"tokens":600,' || fail "three frames not committed after 30 s"
  cat rest.bin >&7
  kill -9 "$pid"
  exec 7>&-
  wait "$pid" 2> /dev/null || true
  killcheck "after three frames"
  [ "$partial" = 1 ] || fail "a kill after three committed frames left the whole context"
  # then kills at 10%, 20%, ... 90% of a fresh run's time and at one random moment, which
  # land anywhere: in the model load, mid-frame, between frames or after the end
  for pct in 10 20 30 40 50 60 70 80 90 $((RANDOM % 90 + 5)); do
    "$RUN" -m "$LONGROPE" -q --session "$S" < p.bin > /dev/null &
    pid=$!
    sleep "$(awk -v m="$ms" -v p="$pct" 'BEGIN { printf "%.3f", m * p / 100000 }')"
    kill -9 "$pid" 2> /dev/null || true
    wait "$pid" 2> /dev/null || true
    killcheck "at $pct% of ${ms} ms"
  done
}

@test "the object is mode 0600 and listed; --session-info describes it; --session-rm removes it" {
  frames 7 512 20 > p.bin
  "$RUN" -m "$GQA" -q --session "$S" < p.bin > /dev/null
  [ "$(stat -c %a "/dev/shm/phi3.$S")" = 600 ]
  "$RUN" --session-list | grep -q "^$S	20	"
  run "$RUN" --session-info "$S"
  assert_status 0
  [[ "$output" == *'"tokens":20,'* && "$output" == *'"rope":"short"'* ]] || fail "$output"
  "$RUN" --session-rm "$S"
  [ ! -e "/dev/shm/phi3.$S" ]
  run --separate-stderr "$RUN" --session-info "$S"
  assert_status 1
  assert_err "phi3-run: " "no session"
}

@test "one writer at a time: --no-wait fails at once, a second writer waits" {
  mkfifo in
  timeout 60 "$RUN" -m "$GQA" -q --session "$S" < in > /dev/null &
  holder=$!
  exec 7> in                         # the holder now has its input open, and the lock
  # (fd 7: bats owns 3; no other process may keep the FIFO's write end open)
  for i in $(seq 50); do [ -e "/dev/shm/phi3.$S" ] && break; sleep 0.05; done
  sleep 0.2
  frames 8 512 5 > p.bin
  run --separate-stderr "$RUN" -m "$GQA" -q --session "$S" --no-wait < p.bin 7>&-
  assert_status 1
  assert_err "phi3-run: " "in use by another writer (pid "
  "$RUN" -m "$GQA" -q --session "$S" < p.bin > waited.out 7>&- &
  waiter=$!
  sleep 0.3
  kill -0 "$waiter" || fail "the second writer did not wait"
  exec 7>&-
  wait "$holder"
  wait "$waiter"
  [ -s waited.out ]
}

# damage CMD...: make a session, damage it with CMD (in the object's path $OBJ), then
# expect phi3-run --session to exit 1 naming the cause and leave the bytes as they were.
damaged() {
  local want=$1; shift
  frames 7 512 20 > p.bin
  "$RUN" -m "$GQA" -q --session "$S" < p.bin > /dev/null
  OBJ="/dev/shm/phi3.$S"
  "$@"
  cp "$OBJ" before
  local mode_before; mode_before=$(stat -c %a%u "$OBJ")
  run --separate-stderr "$RUN" -m "$GQA" -q --session "$S" < p.bin
  assert_status 1
  assert_err "phi3-run: session $S: " "$want"
  [ -z "$output" ] || fail "stdout: $output"
  cmp before "$OBJ" || fail "object changed"
  [ "$(stat -c %a%u "$OBJ")" = "$mode_before" ]
}

poke() { printf "$2" | dd of="$OBJ" bs=1 seek="$1" conv=notrunc status=none; }

@test "bad session: truncated header, truncated rows" {
  damaged "truncated" truncate -s 100 "/dev/shm/phi3.$S"
  "$RUN" --session-rm "$S"
  damaged "truncated" truncate -s -1 "/dev/shm/phi3.$S"
}

@test "bad session: corrupt header, corrupt ids, wrong version, bad magic" {
  damaged "corrupt header" poke 28 '\x07'
  "$RUN" --session-rm "$S"
  damaged "corrupt token ids" poke 4096 '\x01\x02'
  "$RUN" --session-rm "$S"
  damaged "made by a newer version of phi3-run (layout version 3" poke 8 '\x03'
  "$RUN" --session-rm "$S"
  # layout 1 (rows of K, V and an unused K before RoPE) is refused by its version
  damaged "made by an older version of phi3-run (layout version 1, this one reads 2)" poke 8 '\x01'
  "$RUN" --session-rm "$S"
  damaged "not a phi3 session" poke 0 'X'
}

@test "bad session: made by another model (fingerprint mismatch)" {
  frames 7 512 20 > p.bin
  "$RUN" -m "$LONGROPE" -q --session "$S" < p.bin > /dev/null
  cp "/dev/shm/phi3.$S" before
  run --separate-stderr "$RUN" -m "$GQA" -q --session "$S" < p.bin
  assert_status 1
  assert_err "phi3-run: session $S: " "made by another model"
  cmp before "/dev/shm/phi3.$S"
}

@test "bad session: mode wider than 0600, owned by another user" {
  damaged "mode 0644 is wider than 0600" chmod 0644 "/dev/shm/phi3.$S"
  chmod 0600 "/dev/shm/phi3.$S"
  [ "$(id -u)" = 0 ] || skip "chown needs root"
  damaged "owned by uid 65534" chown 65534 "/dev/shm/phi3.$S"
  chown 0 "/dev/shm/phi3.$S"
}

@test "bad session names: '/', '..', empty: exit 1, nothing created" {
  frames 7 512 3 > p.bin
  for n in "a/b" "../x" ".." "x..y" "" ".hidden"; do
    run --separate-stderr "$RUN" -m "$GQA" -q --session "$n" < p.bin
    assert_status 1
    assert_err "phi3-run: " "bad session name"
  done
  run --separate-stderr "$RUN" --session-rm "../etc"
  assert_status 1
  [ ! -e /dev/shm/phi3.a ]
}

@test "a full /dev/shm is a clear error, not a SIGBUS" {
  [ "$(id -u)" = 0 ] || skip "needs root for a private tmpfs"
  unshare -m true 2> /dev/null || skip "no mount namespaces here"
  frames 7 32064 400 > p.bin
  run unshare -m sh -c 'mount -t tmpfs -o size=1m tmpfs /dev/shm && exec "$@"' x \
    "$RUN" -m "$LONGROPE" -q --session "$S" < p.bin
  [ "$status" -eq 1 ] || fail "status $status: $output"
  [[ "$output" == *"no space left in /dev/shm"* ]] || fail "$output"
}

@test "a FIFO or a symlink squatting /dev/shm/phi3.NAME hangs nothing; --session-rm removes it" {
  mkfifo "/dev/shm/phi3.$S"
  frames 7 512 3 > p.bin
  run --separate-stderr timeout 10 "$RUN" --session-info "$S"
  assert_status 1
  assert_err "phi3-run: session $S: " "not a regular object"
  run --separate-stderr timeout 10 "$RUN" --session-list
  assert_status 0
  [[ "$stderr" == *"session $S: not a regular object"* ]] || fail "$stderr"
  run --separate-stderr timeout 10 "$RUN" -m "$GQA" -q --session "$S" < p.bin
  assert_status 1
  assert_err "phi3-run: session $S: " "not a regular object"
  run --separate-stderr timeout 10 "$RUN" --session-rm "$S"
  assert_status 0
  [ ! -e "/dev/shm/phi3.$S" ] && [ ! -L "/dev/shm/phi3.$S" ]
  # a symlink: refused by every reader and writer (O_NOFOLLOW); rm removes the link only
  echo keep > target
  ln -s "$PWD/target" "/dev/shm/phi3.$S"
  run --separate-stderr timeout 10 "$RUN" --session-info "$S"
  assert_status 1
  run --separate-stderr timeout 10 "$RUN" -m "$GQA" -q --session "$S" < p.bin
  assert_status 1
  run --separate-stderr timeout 10 "$RUN" --session-rm "$S"
  assert_status 0
  [ ! -L "/dev/shm/phi3.$S" ] && [ "$(cat target)" = keep ]
}

@test "one byte changed in the middle of a tensor: another fingerprint, the session is not reused" {
  export XDG_CACHE_HOME="$BATS_TEST_TMPDIR/cache"
  cp -r "$GQA" m
  frames 7 512 20 > p.bin
  "$RUN" -m m -q --session "$S" < p.bin > /dev/null
  fp0=$("$RUN" -m m -q -v < /dev/null 2>&1 | grep -o 'fingerprint [0-9a-f]*')
  # the middle of the file is the middle of some tensor's data (the header is 2 KB);
  # mtime kept, so only the ctime and the content tell
  size=$(stat -c %s m/model.safetensors)
  "$PY" -c 'import sys; f = open(sys.argv[1], "r+b"); f.seek(int(sys.argv[2])); b = f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0x10]))' \
    m/model.safetensors $((size / 2 + 3))
  touch -r "$GQA/model.safetensors" m/model.safetensors
  fp1=$("$RUN" -m m -q -v < /dev/null 2>&1 | grep -o 'fingerprint [0-9a-f]*')
  [ -n "$fp0" ] && [ "$fp0" != "$fp1" ] || fail "fingerprint unchanged: $fp0 / $fp1"
  run --separate-stderr "$RUN" -m m -q --session "$S" < p.bin
  assert_status 1
  assert_err "phi3-run: session $S: " "made by another model"
  "$RUN" --session-rm "$S"
  "$RUN" -m m -q < p.bin > fresh.out
  "$RUN" -m m -q --session "$S" < p.bin > sess.out
  cmp fresh.out sess.out
}

@test "the fingerprint cache: keyed by file identity, 0600, a damaged or foreign cache is ignored" {
  export XDG_CACHE_HOME="$BATS_TEST_TMPDIR/cache"
  fp() { "$RUN" -m "$LONGROPE" -q -v < /dev/null 2>&1 | grep -o 'fingerprint [0-9a-f]*'; }
  want=$(PHI3_FP_CACHE=off fp)
  [ ! -e cache ]
  [ "$(fp)" = "$want" ]
  C=cache/phi3/fingerprints
  [ "$(stat -c %a cache/phi3)" = 700 ] && [ "$(stat -c %a $C)" = 600 ]
  [ "$(head -1 $C)" = "phi3-fingerprints 1" ] && [ "$(wc -l < $C)" = 3 ]    # two shards
  [ "$(fp)" = "$want" ]
  # a changed hash (its check value no longer matches): the cache is ignored, then rewritten
  "$PY" -c 'import sys
p = sys.argv[1]; l = open(p).read().split("\n"); f = l[1].split(" ")
f[5] = "%016x" % (int(f[5], 16) ^ 1); l[1] = " ".join(f); open(p, "w").write("\n".join(l))' $C
  [ "$(fp)" = "$want" ]
  [ "$(fp)" = "$want" ]
  # writable by others: ignored
  chmod 0666 $C
  [ "$(fp)" = "$want" ]
  # a FIFO in its place hangs nothing
  rm -f $C; mkfifo $C
  [ "$(timeout 10 bash -c "$(declare -f fp); RUN=$RUN LONGROPE=$LONGROPE fp")" = "$want" ]
}

@test "a /dev/shm too full to create the object: a clear error and no 0-byte object left behind" {
  [ "$(id -u)" = 0 ] || skip "needs root for a private tmpfs"
  unshare -m true 2> /dev/null || skip "no mount namespaces here"
  frames 7 32064 10 > p.bin
  # header + ids of tiny-longrope need 12 KiB; the tmpfs holds 8 KiB
  run unshare -m sh -c 'mount -t tmpfs -o size=8k tmpfs /dev/shm && "$@"; echo "exit $?"; ls -A /dev/shm' x \
    "$RUN" -m "$LONGROPE" -q --session "$S" < p.bin
  [[ "$output" == *"session $S: cannot allocate"*"no space left"* ]] || fail "$output"
  [[ "$output" == *"exit 1"* ]] || fail "$output"
  [[ "$output" != *"phi3.$S"* ]] || fail "object left: $output"
}

@test "rows of another kernel path (an older object: kernel unknown, or an older CPU build) are recomputed, not reused" {
  export XDG_CACHE_HOME="$BATS_TEST_TMPDIR/cache"
  frames 1 32064 80 > p.bin
  "$RUN" -m "$LONGROPE" -q < p.bin > fresh.out
  "$RUN" -m "$LONGROPE" -q --session "$S" < p.bin > /dev/null
  # the kernel field of both commit slots (header offset 96 + 16 k + 12) set to 0 (unknown:
  # an object from before the field) and to 1 (cpu-1: an older CPU build, SiLU through
  # libm's expf); each time the run recomputes and records its own kernel
  OBJ="/dev/shm/phi3.$S"
  for k in 0:unknown 1:cpu-1; do
    for o in 108 124; do printf "\\x0${k%%:*}\\x00\\x00\\x00" | dd of="$OBJ" bs=1 seek=$o conv=notrunc status=none; done
    "$RUN" --session-info "$S" | grep -q "\"kernel\":\"${k#*:}\""
    "$RUN" -m "$LONGROPE" -q --session "$S" --stats < p.bin > sess.out 2> stats
    cmp fresh.out sess.out
    [ "$(reused)" = 0 ] || fail "${k#*:}: $(cat stats)"
    "$RUN" --session-info "$S" | grep -q '"kernel":"cpu"'
  done
}

@test "a prompt in partial frames (the chat template's) is reused whole: only the position giving logits is recomputed" {
  echo '[{"role":"user","content":"Hello there"},{"role":"assistant","content":"Hi, how can I help?"},{"role":"user","content":"Tell me more"}]' |
    "$PHI3_BIN/phi3-template" --json | "$PHI3_BIN/phi3-tok" -m "$LONGROPE" > p.bin
  n=$("$PHI3_BIN/phi3-dump" < p.bin | grep -o '"ids":\[[0-9,]*\]' | grep -o '[0-9][0-9]*' | wc -l)
  frames=$("$PHI3_BIN/phi3-dump" < p.bin | wc -l)
  [ "$frames" -gt 3 ] || fail "expected several frames, got $frames"
  same "$LONGROPE" p.bin
  same "$LONGROPE" p.bin
  [ "$(reused)" = $((n - 1)) ] || fail "of $n ids: $(cat stats)"
}
