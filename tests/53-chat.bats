#!/usr/bin/env bats
# bin/phi3 as a tool to live in: one phi3-run per chat, sessions and resuming, the prompt
# from arguments + stdin / -f, phi3 count, stop strings, the context limit, stats and
# seeds, samplers that die or are pipelines, chat commands (issue 14). The interactive
# terminal (line editing, Ctrl-C) is tests/54-chat-tty.bats.
load helper

setup() {
  cd "$BATS_TEST_TMPDIR"
  exec < /dev/null            # generate reads stdin when it is a pipe or a file
  P="$ROOT/bin/phi3"
  export TMPDIR="$BATS_TEST_TMPDIR/tmp" XDG_STATE_HOME="$BATS_TEST_TMPDIR/state"
  mkdir -p "$TMPDIR"
  SESSION="bats-wrapper-$$-$BATS_TEST_NUMBER"
}

teardown() {
  "$PHI3_BIN/phi3-run" --session-rm "$SESSION" 2>/dev/null || :
}

ids_lines() { awk -F'"ids":\\[' '/"type":"tokens"/ { split($2, a, "]"); gsub(",", " ", a[1]); print a[1] }'; }
tok_ids() { "$PHI3_BIN/phi3-tok" -m "$LONGROPE" --raw | "$PHI3_BIN/phi3-dump" | ids_lines; }

# shim: a PHI3_BIN whose phi3-run logs each start and its arguments to runs.log
shim() {
  mkdir -p shim
  for t in "$PHI3_BIN"/phi3-*; do ln -sf "$t" shim/; done
  rm -f shim/phi3-run
  printf '#!/bin/sh\necho "$*" >> %s/runs.log\nexec %s "$@"\n' "$BATS_TEST_TMPDIR" "$PHI3_BIN/phi3-run" > shim/phi3-run
  chmod +x shim/phi3-run
}

# ---- item 1: one model process per chat

@test "chat: one phi3-run for 11 turns; each id is computed once (no re-read of the conversation)" {
  shim
  for i in $(seq 11); do echo "Tell me about the tower number $i"; done > turns
  PHI3_BIN="$BATS_TEST_TMPDIR/shim" run --separate-stderr timeout 120 "$P" chat -m "$LONGROPE" --greedy --ignore-eos -n 6 \
    --stats --show-tokens --ctx 1024 --threads 1 --backend cpu --kv-type f16 < turns
  assert_status 0
  [ "$(wc -l < runs.log)" -eq 1 ] || fail "phi3-run started $(wc -l < runs.log) times"
  # --ctx, --threads, --backend and --stats reach phi3-run
  for f in "--ctx 1024" "--threads 1" "--backend cpu" "--kv-type f16" "--stats"; do grep -q -- "$f" runs.log || fail "no $f: $(cat runs.log)"; done
  [ "$(printf '%s\n' "$output" | grep -c '"type":"end"')" -eq 11 ]
  # phi3-run's own count: every id fed in (prompts, fed-back ids) computed once, plus one
  # recompute of the context when it passes original_max (64) and LongRoPE switches
  fed=$(printf '%s\n' "$output" | ids_lines | wc -w)
  computed=$(printf '%s\n' "$stderr" | grep -o 'computed [0-9]*' | grep -o '[0-9]*')
  [ "$fed" -gt 150 ]
  [ "$computed" -ge "$fed" ] && [ "$computed" -le $((fed + 70)) ] || fail "fed $fed, computed $computed"
  # the per-turn stats line
  [ "$(printf '%s\n' "$stderr" | grep -c '^phi3: prompt [0-9]* tokens, first token after .* generated 6 tokens in .*; seed ')" -eq 11 ]
  [ "$(printf '%s\n' "$stderr" | grep -c '^phi3: model loaded in [0-9.]* s$')" -eq 1 ]
}

@test "chat --session NAME: messages kept next to the session; a later chat resumes and reuses the context" {
  printf 'Hello!\nAnd then?\n' | timeout 60 "$P" chat -m "$LONGROPE" --session "$SESSION" --greedy -n 5 > /dev/null 2> err1
  f="$XDG_STATE_HOME/phi3/sessions/$SESSION.json"
  [ -s "$f" ]
  $PY - "$f" <<'P'
import json, sys
m = json.load(open(sys.argv[1]))
assert [x["role"] for x in m] == ["user", "assistant", "user", "assistant"], m
assert m[0]["content"] == "Hello!" and m[2]["content"] == "And then?"
P
  cp "$f" before.json
  echo 'One more.' | timeout 60 "$P" chat -m "$LONGROPE" --session "$SESSION" --greedy -n 5 --stats > /dev/null 2> err2
  grep -q "resuming a conversation of 4 messages" err2 || fail "$(cat err2)"
  # phi3-run reused the stored context (the rendered conversation up to the last reply)
  reused=$(grep -o 'reused [0-9]*' err2 | grep -o '[0-9]*')
  [ "$reused" -gt 5 ] || fail "$(cat err2)"
  $PY - "$f" before.json <<'P'
import json, sys
m, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert m[:4] == b and [x["role"] for x in m[4:]] == ["user", "assistant"] and m[4]["content"] == "One more.", m
P
  # no temporary file left next to it
  [ "$(ls "$XDG_STATE_HOME/phi3/sessions")" = "$SESSION.json" ]
}

@test "generate --session NAME: a second run over the same prompt reuses it" {
  timeout 60 "$P" generate -m "$LONGROPE" --session "$SESSION" --greedy -n 3 --stats "Once upon a time there was" > a 2> /dev/null
  timeout 60 "$P" generate -m "$LONGROPE" --session "$SESSION" --greedy -n 3 --stats "Once upon a time there was" > b 2> err
  cmp a b
  grep -q 'reused [1-9]' err || fail "$(cat err)"
}

# ---- item 4: never hang; say why

@test "an empty prompt is a usage error (argument, stdin, a lone newline), exit 2, one line" {
  run --separate-stderr "$P" generate -m "$LONGROPE" ""
  assert_status 2
  assert_err "phi3: " "empty"
  run --separate-stderr bash -c "printf '' | '$P' generate -m '$LONGROPE'"
  assert_status 2
  assert_err "phi3: " "empty"
  run --separate-stderr bash -c "printf '\\n\\n' | '$P' generate -m '$LONGROPE' --chat"
  assert_status 2
  assert_err "phi3: " "empty"
  run --separate-stderr "$P" generate -m "$LONGROPE"     # stdin: /dev/null
  assert_status 2
  assert_err "phi3: " "empty"
}

@test "a sampler pipeline stage that dies is named with its status, exit 1, no hang (generate and chat)" {
  local S="$PY $ROOT/tests/lib/fakesampler.py --exit-after 1 3"    # answers one frame, exits 3
  # last stage dies while the first one waits on phi3-run: without care this deadlocks
  run --separate-stderr timeout 60 "$P" generate -m "$LONGROPE" --sampler "cat | $S" "Hello"
  [ "$status" -eq 1 ] || fail "status $status: $stderr"
  [[ "$stderr" == *"phi3: sampler stage 2 of 2 ('$S') failed mid-loop (exit status 3)"* ]] || fail "stderr: $stderr"
  [ "$(printf '%s\n' "$stderr" | grep -c .)" -eq 1 ] || fail "stderr: $stderr"
  # first stage dies
  run --separate-stderr timeout 60 "$P" generate -m "$LONGROPE" --sampler "$S | cat" "Hello"
  [ "$status" -eq 1 ] || fail "status $status: $stderr"
  [[ "$stderr" == *"stage 1 of 2 ('$S') failed mid-loop (exit status 3)"* ]] || fail "stderr: $stderr"
  # killed
  KILLME=1 run --separate-stderr timeout 60 "$P" generate -m "$LONGROPE" --sampler "$S" "Hello"
  [ "$status" -eq 1 ] || fail "status $status: $stderr"
  [[ "$stderr" == *"phi3: sampler '$S' failed mid-loop (exit status 137: killed by SIGKILL)"* ]] || fail "stderr: $stderr"
  # in chat too
  run --separate-stderr timeout 60 bash -c "echo Hello | '$P' chat -m '$LONGROPE' --sampler 'cat | $S'"
  [ "$status" -eq 1 ] || fail "status $status: $stderr"
  [[ "$stderr" == *"stage 2 of 2 ('$S') failed mid-loop (exit status 3)"* ]] || fail "stderr: $stderr"
  [ -z "$(ls "$TMPDIR")" ]
}

@test "a custom sampler gets -n, the stop ids and the seed in its environment; flags go to a plain command only" {
  cat > argv.py <<'P'
import os, sys
with open(os.environ["OUT"], "a") as f:
    f.write("%s|%s|%s|%s\n" % (os.environ["PHI3_N"], os.environ["PHI3_STOP_IDS"], os.environ["PHI3_SEED"], " ".join(sys.argv[1:])))
os.execv(sys.argv[0] if False else "/usr/bin/python3", ["python3", os.environ["SAMPLER"]] + sys.argv[1:])
P
  export OUT="$BATS_TEST_TMPDIR/argv.out" SAMPLER="$ROOT/examples/sampler.py"
  "$P" generate -m "$LONGROPE" --greedy -n 7 "The sky is" > want
  # a plain command: the flags given are appended; PHI3_N is the -n of this reply
  run --separate-stderr timeout 60 "$P" generate -m "$LONGROPE" --sampler "$PY argv.py" -t 0 -n 7 --seed 5 --stop-ids 450 "The sky is"
  assert_status 0
  [ "$output" = "$(cat want)" ]
  [ "$(cat argv.out)" = "7|32000,32001,32007,450|5|-t 0 --seed 5 -n 7" ] || fail "$(cat argv.out)"
  # a pipeline: nothing appended to its last stage ("$@" holds the flags); defaults
  rm argv.out
  run --separate-stderr timeout 60 "$P" generate -m "$LONGROPE" --sampler "cat | $PY argv.py -t 0 -n 7" --greedy "The sky is"
  assert_status 0
  [ "$output" = "$(cat want)" ]
  [[ "$(cat argv.out)" == "256|32000,32001,32007|"*"|-t 0 -n 7" ]] || fail "$(cat argv.out)"
  rm argv.out
  run --separate-stderr timeout 60 "$P" generate -m "$LONGROPE" --sampler 'cat | '"$PY"' argv.py "$@"' -t 0 -n 7 "The sky is"
  assert_status 0
  [ "$output" = "$(cat want)" ]
  [ "$(cut -d'|' -f4 argv.out)" = "-t 0 -n 7" ]
}

@test "a session held by another writer: said on stderr while waiting, then it runs" {
  mkfifo hold
  "$PHI3_BIN/phi3-run" -m "$LONGROPE" -q --session "$SESSION" < hold > /dev/null & holder=$!
  exec 7> hold
  for i in $(seq 50); do "$PHI3_BIN/phi3-run" --session-info "$SESSION" 2>/dev/null | grep -q '"busy":true' && break; sleep 0.1; done
  timeout 60 "$P" generate -m "$LONGROPE" --session "$SESSION" --greedy -n 3 "Hello" > out 2> err 7>&- & g=$!
  for i in $(seq 50); do grep -q busy err && break; sleep 0.1; done
  grep -q "phi3: session '$SESSION' is busy (another phi3-run writes it): waiting" err || fail "$(cat err)"
  [ ! -s out ]
  exec 7>&-
  wait $holder
  wait $g
  [ -s out ]
}

# ---- item 6: input and counting

@test "generate: PROMPT then stdin (a blank line between), -f FILE; trailing newlines of stdin trimmed" {
  printf 'The tower is tall.\nIt is in Paris.\n\n' > doc.txt
  want=$(printf 'Summarize:\n\nThe tower is tall.\nIt is in Paris.' | tok_ids)
  "$P" generate -m "$LONGROPE" --greedy -n 2 --show-tokens "Summarize:" < doc.txt 2>/dev/null > out
  [ "$(head -n1 out | ids_lines)" = "$want" ] || fail "$(head -n1 out)"
  "$P" generate -m "$LONGROPE" --greedy -n 2 --show-tokens -f doc.txt "Summarize:" 2>/dev/null > out
  [ "$(head -n1 out | ids_lines)" = "$want" ]
  printf 'Hello world\n' | "$P" generate -m "$LONGROPE" --greedy -n 2 --show-tokens 2>/dev/null > out
  [ "$(head -n1 out | ids_lines)" = "$(printf 'Hello world' | tok_ids)" ]
  run --separate-stderr "$P" generate -m "$LONGROPE" -f nope.txt
  assert_status 1
  assert_err "phi3: " "nope.txt"
}

@test "phi3 count: the prompt's tokens, as phi3-tok counts them; --chat counts the template" {
  [ "$("$P" count -m "$LONGROPE" "Hello world, how are you?")" = "$(printf 'Hello world, how are you?' | tok_ids | wc -w)" ]
  [ "$(printf 'Hello world\n' | "$P" count -m "$LONGROPE")" = "$(printf 'Hello world' | tok_ids | wc -w)" ]
  echo '[{"role":"user","content":"Hi"}]' > c.json
  [ "$("$P" count -m "$LONGROPE" --chat "Hi")" = "$("$PHI3_BIN/phi3-template" --json < c.json | "$PHI3_BIN/phi3-tok" -m "$LONGROPE" | "$PHI3_BIN/phi3-dump" | ids_lines | wc -w)" ]
  if "$PHI3_BIN/phi3-tok" --help 2>&1 | grep -q -- --count; then
    [ "$(printf 'Hello world' | "$PHI3_BIN/phi3-tok" -m "$LONGROPE" --raw --count)" = "$("$P" count -m "$LONGROPE" "Hello world")" ]
  fi
}

# ---- item 3: stop strings; no control tokens in chat text

@test "--stop STR: the text ends before STR; chat prints no control token" {
  "$PHI3_BIN/phi3-sample" --help 2>&1 | grep -q -- '--stop-ids' || skip "phi3-sample has no --stop STR yet (harden-text)"
  full=$("$P" generate -m "$LONGROPE" --greedy -n 30 --ignore-eos "Once upon a time")
  stop=${full:20:4}
  [ -n "$stop" ]
  want=${full%%"$stop"*}
  run --separate-stderr "$P" generate -m "$LONGROPE" --greedy -n 30 --ignore-eos --stop "$stop" "Once upon a time"
  assert_status 0
  [ "$output" = "$want" ] || fail "got '$output', want '$want' (stop '$stop')"
}

@test "chat: the control token that ends a reply is not printed" {
  run --separate-stderr bash -c "printf 'Hi\\nHo\\n' | '$P' chat -m '$LONGROPE' --greedy -n 5 --logit-bias 32007=30"
  assert_status 0
  [ "$output" = "$(printf '\n\n')" ] || fail "output: $(printf '%s' "$output" | od -c | head)"
}

# ---- item 5: a full context

@test "chat: a conversation that would pass --ctx drops its oldest exchanges (said on stderr) and goes on" {
  for i in $(seq 8); do echo "Here is message number $i of the chat"; done > turns
  run --separate-stderr timeout 120 "$P" chat -m "$LONGROPE" --system "Be brief." --greedy --ignore-eos -n 10 \
    --ctx 80 --show-tokens < turns
  assert_status 0
  [ "$(printf '%s\n' "$output" | grep -c '"type":"end"')" -eq 8 ]
  printf '%s\n' "$stderr" | grep -q "phi3: the conversation would pass the context (80 tokens; --ctx): dropped the oldest exchange (2 messages)" || fail "$stderr"
  # the context never passed 80 and the system message stayed first
  printf '%s\n' "$output" | $PY -c '
import json, sys
ctx, sys_ids = [], None
for line in sys.stdin:
    f = json.loads(line)
    if f["type"] != "tokens": continue
    if "pos" in f: del ctx[f["pos"]:]
    ctx += f["ids"]
    assert len(ctx) <= 80, len(ctx)
    if sys_ids is None and not f.get("partial"): sys_ids = ctx[:5]
    assert f.get("partial") or ctx[:5] == sys_ids, (ctx[:5], sys_ids)'
}

@test "chat: a message that cannot fit is refused, the chat goes on; generate stops at --ctx with reason length" {
  long=$(printf 'word %.0s' $(seq 100))
  run --separate-stderr timeout 60 bash -c "printf '%s\\nHi\\n' '$long' | '$P' chat -m '$LONGROPE' --greedy -n 4 --ctx 60"
  assert_status 0
  [[ "$stderr" == *"phi3: this message does not fit in the context ("*" of 60; --ctx): not sent"* ]] || fail "$stderr"
  run --separate-stderr timeout 60 "$P" generate -m "$LONGROPE" --greedy --ignore-eos -n 100 --ctx 20 --show-tokens "Hello world"
  assert_status 0
  [ "$(printf '%s\n' "$output" | ids_lines | wc -w)" -eq 20 ]
  [ "$(printf '%s\n' "$output" | tail -n1)" = '{"type":"end","reason":"length"}' ]
  [[ "$stderr" == *"phi3: stopped at the context limit: 20 tokens (--ctx 20)"* ]] || fail "$stderr"
  run --separate-stderr "$P" generate -m "$LONGROPE" --ctx 2 "Hello world, how are you"
  assert_status 1
  assert_err "phi3: " "does not fit"
}

# ---- item 7: stats and seeds

@test "--stats: prompt and generated tokens, speeds, the seed; that seed reproduces the text" {
  run --separate-stderr "$P" generate -m "$LONGROPE" --stats -n 12 --ignore-eos "Once upon a time"
  assert_status 0
  printf '%s\n' "$stderr" | grep -q '^phi3: model loaded in [0-9.]* s$' || fail "$stderr"
  line=$(printf '%s\n' "$stderr" | grep '^phi3: prompt')
  [[ "$line" == "phi3: prompt 4 tokens, first token after "*" tokens/s); generated 12 tokens in "*" tokens/s after the first; seed "* ]] || fail "$stderr"
  # 4 prompt ids and the 12 generated ones fed back (the last one too: tee forwards it)
  printf '%s\n' "$stderr" | grep -q '^phi3-run: stats: reused 0, computed 16' || fail "$stderr"
  seed=${line##*seed }
  text=$output
  run --separate-stderr "$P" generate -m "$LONGROPE" --seed "$seed" -n 12 --ignore-eos "Once upon a time"
  [ "$output" = "$text" ]
  run --separate-stderr "$P" generate -m "$LONGROPE" --seed "$((seed + 1))" -n 12 --ignore-eos "Once upon a time"
  [ "$output" != "$text" ]
}

@test "--version everywhere; unknown options point to --help" {
  [ "$("$P" --version)" = "phi3 0.1.0" ]
  [ "$("$P" generate --version)" = "phi3 0.1.0" ]
  [ "$("$P" chat --version)" = "phi3 0.1.0" ]
  run --separate-stderr "$P" chat --frob
  assert_status 2
  assert_err "phi3: unknown option '--frob'" "see phi3 --help"
}

# ---- item 2 (what needs no terminal): commands, multi-line blocks

@test "chat commands: /save writes the messages as JSON, /reset forgets, \"\"\" blocks, /bye leaves" {
  cat > turns <<'T'
/help
Hello there
"""first line
second line
"""
/save conv1.json
/reset
/frob
After reset
/save conv2.json
/bye
Never sent
T
  run --separate-stderr timeout 60 "$P" chat -m "$LONGROPE" --system "Sys" --greedy -n 3 < turns
  assert_status 0
  [[ "$stderr" == *"/save FILE"* ]] || fail "no help: $stderr"
  [[ "$stderr" == *"phi3: unknown command '/frob' (/help lists them)"* ]] || fail "$stderr"
  $PY - <<'P'
import json
a = json.load(open("conv1.json")); b = json.load(open("conv2.json"))
assert [m["role"] for m in a] == ["system", "user", "assistant", "user", "assistant"], a
assert a[0]["content"] == "Sys" and a[1]["content"] == "Hello there"
assert a[3]["content"] == "first line\nsecond line\n", repr(a[3]["content"])
assert [m["role"] for m in b] == ["system", "user", "assistant"] and b[1]["content"] == "After reset", b
P
  [ "$(printf '%s\n' "$output" | grep -c '^')" -eq 3 ]   # three replies, each ends its line
}

@test "chat --messages FILE: the last user message is answered first; what /save writes loads back" {
  echo '[{"role":"system","content":""},{"role":"user","content":"Hi \"you\"\n"}]' > in.json
  printf '/save out.json\n' | timeout 60 "$P" chat -m "$LONGROPE" --messages in.json --greedy -n 2 > /dev/null 2>&1
  $PY - <<'P'
import json
m = json.load(open("out.json"))
assert m[:2] == [{"role": "system", "content": ""}, {"role": "user", "content": "Hi \"you\"\n"}], m
assert m[2]["role"] == "assistant" and len(m) == 3
P
}

@test "--server SOCKET: generate and chat through a phi3-run --serve give what a local phi3-run gives" {
  "$PHI3_BIN/phi3-run" --help 2>&1 | grep -q -- --connect || skip "phi3-run has no --serve/--connect yet (server)"
  sock="$BATS_TEST_TMPDIR/s.sock"
  "$PHI3_BIN/phi3-run" -m "$LONGROPE" -q --backend cpu --serve "$sock" 2> serve.err & srv=$!
  for i in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || fail "no socket: $(cat serve.err)"
  want=$("$P" generate -m "$LONGROPE" --greedy -n 8 "Hello world")
  run --separate-stderr timeout 60 "$P" generate -m "$LONGROPE" --server "$sock" --greedy -n 8 "Hello world"
  assert_status 0
  [ "$output" = "$want" ] || fail "got '$output', want '$want'; $stderr"
  printf 'Hi\nAnd?\n' | "$P" chat -m "$LONGROPE" --greedy -n 5 > want.txt
  printf 'Hi\nAnd?\n' | PHI3_SERVER="$sock" timeout 60 "$P" chat -m "$LONGROPE" --greedy -n 5 > got.txt
  cmp want.txt got.txt
  kill -TERM $srv; wait $srv || :
}
