#!/usr/bin/env bats
# phi3 chat in a terminal (tmux: send-keys, capture-pane; every wait bounded): the prompt
# on its own line, Ctrl-C stops a reply and the chat goes on, Ctrl-C twice or Ctrl-D
# leaves, a 10 KB line arrives whole, history across runs, a pasted block.
load helper

setup() {
  command -v tmux > /dev/null || skip "tmux is not installed (make deps)"
  cd "$BATS_TEST_TMPDIR"
  P="$ROOT/bin/phi3"
  SOCK="phi3-bats-$$-$BATS_TEST_NUMBER"
  export XDG_STATE_HOME="$BATS_TEST_TMPDIR/state"
  mkdir -p tmp
}

teardown() {
  tmux -L "$SOCK" kill-server 2> /dev/null || :
  "$PHI3_BIN/phi3-run" --session-rm "bats-tty-$$" 2> /dev/null || :
}

# tm_start ARGS...: phi3 chat ARGS in a 200x50 terminal; its exit status goes to exit.txt
tm_start() {
  local q="" a
  for a in "$@"; do q+=" $(printf '%q' "$a")"; done
  tmux -L "$SOCK" new-session -d -s t -x 200 -y 50 \
    "cd $(printf '%q' "$BATS_TEST_TMPDIR"); export PHI3_BIN=$(printf '%q' "$PHI3_BIN") TMPDIR=$(printf '%q' "$BATS_TEST_TMPDIR/tmp") XDG_STATE_HOME=$(printf '%q' "$XDG_STATE_HOME") INPUTRC=/dev/null; $(printf '%q' "$P") chat -m $(printf '%q' "$LONGROPE")$q; echo EXIT=\$? > exit.txt; sleep 60"
}
keys() { tmux -L "$SOCK" send-keys -t t "$@"; }
screen() { tmux -L "$SOCK" capture-pane -p -J -t t -S -1000 | sed 's/ *$//'; }
# wait_for TEXT [SECONDS]: until the screen shows TEXT (a grep -F pattern)
wait_for() {
  local i
  for i in $(seq $(( ${2:-20} * 10 ))); do screen | grep -qF -- "$1" && return 0; sleep 0.1; done
  fail "timed out waiting for '$1'; screen:
$(screen | grep -v '^$' | tail -20 | cut -c1-300)"
}
# prompts: the number of prompt lines ("> " and what was typed after it); ready: the last
# line is a bare prompt (waiting for input)
prompts() { screen | grep -c '^>\( \|$\)'; }
wait_prompts() {
  local i
  for i in $(seq $(( ${2:-20} * 10 ))); do
    [ "$(prompts)" -ge "$1" ] && [ "$(screen | grep -v '^$' | tail -n1)" = ">" ] && return 0
    sleep 0.1
  done
  fail "timed out waiting for prompt $1; screen:
$(screen | grep -v '^$' | tail -20 | cut -c1-300)"
}
# text_lines: the non-empty lines that are not prompts; wait_text N: until there are N
text_lines() { screen | grep -v '^>' | grep -c .; }
wait_text() {
  local i
  for i in $(seq 200); do [ "$(text_lines)" -ge "$1" ] && return 0; sleep 0.05; done
  fail "timed out waiting for text; screen:
$(screen | grep -v '^$' | tail -20 | cut -c1-300)"
}
wait_exit() {
  local i
  for i in $(seq 200); do [ -s exit.txt ] && return 0; sleep 0.1; done
  fail "phi3 chat did not leave; screen:
$(screen | grep -v '^$' | tail -20 | cut -c1-300)"
}

@test "tty: a reply, then the prompt on a line of its own; Ctrl-D leaves with status 0" {
  tm_start --greedy -n 6
  wait_for "/help for help"
  wait_prompts 1
  keys "Hello" Enter
  wait_prompts 2
  # the reply line is not glued to the prompt, and the new prompt starts its own line
  screen | grep -q '^> Hello$'
  [ "$(screen | grep -v '^$' | tail -n1)" = ">" ]
  # a line that is not UTF-8 is not sent (the tool says why) and the chat goes on
  keys "bad "; keys -H ff; keys Enter
  wait_for "phi3: message not sent"
  wait_prompts 3
  keys C-d
  wait_exit
  [ "$(cat exit.txt)" = EXIT=0 ]
}

@test "tty: Ctrl-C stops a reply (kept in the conversation) and the chat goes on; Ctrl-C twice at the prompt leaves" {
  # a sampler that never ends a reply: one id every 0.2 s
  tm_start --sampler "$PY $ROOT/tests/lib/fakesampler.py --sleep 0.2 --pos"
  wait_prompts 1
  keys "Go on forever" Enter
  wait_for "The The The"
  keys C-c
  wait_prompts 2
  # the next turn works (phi3-run restarted under it), and it can be stopped too
  keys "Again" Enter
  sleep 1
  keys C-c
  wait_prompts 3
  keys "/save conv.json" Enter
  wait_for "saved 4 messages"
  $PY - <<'P'
import json
m = json.load(open("conv.json"))
assert [x["role"] for x in m] == ["user", "assistant", "user", "assistant"], m
assert m[0]["content"] == "Go on forever" and m[2]["content"] == "Again"
assert m[1]["content"].startswith("The The The"), m[1]
P
  ! screen | grep -q Terminated          # no shell job noise
  keys C-c
  wait_for "Ctrl-C again or Ctrl-D to leave"
  keys C-c
  wait_exit
  [ "$(cat exit.txt)" = EXIT=0 ]
  [ -z "$(ls tmp)" ] || fail "left $(ls tmp)"
}

@test "tty: a 10 KB line arrives whole (no 4 KB terminal limit); history is kept across chats" {
  tm_start --greedy -n 2
  wait_prompts 1
  long=$(printf 'everything %.0s' $(seq 910))     # 10010 characters, 911 tokens
  keys -l "$long"
  keys Enter
  wait_prompts 2 60
  keys "short line" Enter
  wait_prompts 3
  keys "/save conv.json" Enter
  wait_for "saved 4 messages"
  $PY - "${#long}" <<'P'
import json, sys
m = json.load(open("conv.json"))
assert len(m[0]["content"]) == int(sys.argv[1]) and m[0]["content"].startswith("everything everything"), len(m[0]["content"])
P
  keys C-d
  wait_exit
  [ -s "$XDG_STATE_HOME/phi3/history" ]
  # a new chat: Up recalls the previous chat's lines
  tmux -L "$SOCK" kill-server; rm -f exit.txt
  tm_start --greedy -n 2
  wait_prompts 1
  keys Up Up
  wait_for "> short line"
  keys C-u "/bye" Enter
  wait_exit
}

@test "tty: a pasted \"\"\" block is one message; a pasted line is not cut" {
  tm_start --greedy -n 2
  wait_prompts 1
  printf '"""first\nsecond\nthird"""\n' | tmux -L "$SOCK" load-buffer -
  tmux -L "$SOCK" paste-buffer -p -t t
  wait_prompts 2
  keys "/save conv.json" Enter
  wait_for "saved 2 messages"
  $PY - <<'P'
import json
m = json.load(open("conv.json"))
assert m[0] == {"role": "user", "content": "first\nsecond\nthird"}, m
P
  keys "/bye" Enter
  wait_exit
  # the history holds the lines as typed, one entry each
  [ "$(head -n3 "$XDG_STATE_HOME/phi3/history")" = "$(printf '"""first\nsecond\nthird"""')" ]
}

@test "tty: Ctrl-C with phi3-sample stops the reply between two frames: phi3-run is not restarted, its context is rewound" {
  # a PHI3_BIN whose phi3-run logs each start
  mkdir -p shim
  for t in "$PHI3_BIN"/phi3-*; do ln -sf "$t" shim/; done
  rm -f shim/phi3-run
  printf '#!/bin/sh\necho "$*" >> %s/runs.log\nexec %s "$@"\n' "$BATS_TEST_TMPDIR" "$PHI3_BIN/phi3-run" > shim/phi3-run
  chmod +x shim/phi3-run
  S="bats-tty-$$"
  PHI3_BIN="$BATS_TEST_TMPDIR/shim" tm_start --session "$S" --greedy --ignore-eos -n 0
  wait_prompts 1
  # Ctrl-C as soon as the reply shows (it would run to the context limit, ~2000 tokens)
  base=$(text_lines)
  keys "Hello" Enter
  wait_text $((base + 1))
  keys C-c
  wait_prompts 2
  base=$(text_lines)
  keys "Again" Enter
  wait_text $((base + 1))
  keys C-c
  wait_prompts 3
  keys C-d
  wait_exit
  [ "$(cat exit.txt)" = EXIT=0 ]
  # (the wrapper also asks phi3-run --session-info whether the session is busy)
  [ "$(grep -vc -- --session-info runs.log)" -eq 1 ] || fail "phi3-run started: $(cat runs.log)"
  # the context phi3-run kept: prompt 1, part of reply 1, <|end|>, prompt 2, part of reply 2
  "$PHI3_BIN/phi3-run" --session-info "$S" > info.json
  "$PHI3_BIN/phi3-run" --session-rm "$S"
  tok() { printf '%s' "$1" | "$PHI3_BIN/phi3-tok" -m "$LONGROPE" --raw | "$PHI3_BIN/phi3-dump" | grep -o '"ids":\[[0-9,]*' | cut -c8- | tr , ' '; }
  $PY - "$(tok Hello)" "$(tok Again)" <<'P'
import json, sys
ids = json.load(open("info.json"))["ids"]
p1 = [32010] + [int(x) for x in sys.argv[1].split()] + [32007, 32001]
p2 = [32007, 32010] + [int(x) for x in sys.argv[2].split()] + [32007, 32001]
assert ids[:len(p1)] == p1, ids[:10]
k = next(i for i in range(len(p1) + 1, len(ids)) if ids[i:i + len(p2)] == p2)
r1, r2 = ids[len(p1):k], ids[k + len(p2):]
assert 0 < len(r1) < 1900 and 0 < len(r2), (len(r1), len(r2))
assert all(0 <= i < 32064 for i in r1 + r2)
P
  # and the saved conversation has both partial replies
  $PY - "$XDG_STATE_HOME/phi3/sessions/$S.json" <<'P'
import json, sys
m = json.load(open(sys.argv[1]))
assert [x["role"] for x in m] == ["user", "assistant"] * 2 and m[1]["content"] and m[3]["content"], m
P
}

@test "tty: a long prompt shows its progress on stderr, in chunks that change nothing in the text" {
  words=$(printf 'the tower %.0s' $(seq 300))
  printf '%s' "$words" > prompt.txt
  n=$("$ROOT/bin/phi3" count -m "$LONGROPE" -f prompt.txt)
  [ "$n" -gt 500 ]
  want=$("$ROOT/bin/phi3" generate -m "$LONGROPE" --greedy -n 8 -f prompt.txt 2> err)
  [ ! -s err ]
  tmux -L "$SOCK" new-session -d -s t -x 200 -y 50 \
    "cd $(printf '%q' "$BATS_TEST_TMPDIR"); export PHI3_BIN=$(printf '%q' "$PHI3_BIN") PHI3_PROGRESS_MIN=100 PHI3_PROGRESS_CHUNK=128; while [ ! -e go ]; do sleep 0.1; done; $(printf '%q' "$ROOT/bin/phi3") generate -m $(printf '%q' "$LONGROPE") --greedy -n 8 -f prompt.txt > out.txt; echo EXIT=\$? > exit.txt; sleep 60"
  tmux -L "$SOCK" pipe-pane -o -t t "cat >> $(printf '%q' "$BATS_TEST_TMPDIR/raw.txt")"
  touch go
  wait_exit
  [ "$(cat exit.txt)" = EXIT=0 ]
  [ "$(cat out.txt)" = "$want" ]
  grep -q "phi3: prompt 128/$n tokens" raw.txt || fail "$(cat -v raw.txt | head -5)"
  grep -q "phi3: prompt 512/$n tokens" raw.txt
}
