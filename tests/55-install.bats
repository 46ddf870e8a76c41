#!/usr/bin/env bats
# make install: the tools, the wrapper, a man page for every tool (help2man from --help),
# bash completion; the installed wrapper runs from its own directory and, having no
# bundled model, says how to name one.
load helper

setup() {
  command -v help2man > /dev/null || skip "help2man is not installed (make deps)"
  cd "$BATS_TEST_TMPDIR"
  exec < /dev/null
}

install_to() {   # DESTDIR: make install of the tools under test (no rebuild: -o all)
  local cuda=0
  [ -e "$PHI3_BIN/phi3-cuda.so" ] && cuda=1
  make -s -C "$ROOT" -o all install DESTDIR="$1" PREFIX=/usr BINDIR="$PHI3_BIN" CUDA=$cuda > make.log 2>&1 ||
    fail "make install failed: $(tail -5 make.log)"
}

@test "install: make install DESTDIR=... PREFIX=/usr; the installed phi3 runs and finds its tools" {
  install_to "$BATS_TEST_TMPDIR/root"
  R="$BATS_TEST_TMPDIR/root/usr"
  for t in "$PHI3_BIN"/phi3-*; do
    [[ "$t" == *.so ]] && continue
    [ -x "$R/bin/$(basename "$t")" ] || fail "$(basename "$t") not installed"
  done
  [ -x "$R/bin/phi3" ]
  # the wrapper uses the tools next to it, not PHI3_BIN or PATH
  run --separate-stderr env -u PHI3_BIN PATH=/usr/bin:/bin "$R/bin/phi3" generate --version
  assert_status 0
  [ "$output" = "phi3 0.1.0" ]
  run --separate-stderr env -u PHI3_BIN PATH=/usr/bin:/bin "$R/bin/phi3" generate "Hello"
  assert_status 2
  assert_err "phi3: no model: pass -m DIR" "PHI3_MODEL"
  run --separate-stderr env -u PHI3_BIN PATH=/usr/bin:/bin "$R/bin/phi3" generate -m "$LONGROPE" --greedy -n 5 "Hello"
  assert_status 0
  [ "$output" = "$("$ROOT/bin/phi3" generate -m "$LONGROPE" --greedy -n 5 "Hello")" ]
  PHI3_MODEL="$LONGROPE" run --separate-stderr env -u PHI3_BIN "$R/bin/phi3" count "Hello world"
  assert_status 0
  [ "$output" -gt 0 ]
}

@test "install: a man page for every tool, built from its --help, without groff warnings" {
  install_to "$BATS_TEST_TMPDIR/root"
  M="$BATS_TEST_TMPDIR/root/usr/share/man/man1"
  n=0
  for t in "$BATS_TEST_TMPDIR"/root/usr/bin/phi3*; do
    name=$(basename "$t")
    [ -s "$M/$name.1" ] || fail "no man page for $name"
    grep -q "^\.TH ${name^^} \"1\"" "$M/$name.1" || fail "$name.1: $(head -3 "$M/$name.1")"
    out=$(groff -man -Tascii -ww "$M/$name.1" 2>&1 > page.txt); [ -z "$out" ] || fail "$name.1: $out"
    grep -q "^NAME" page.txt && grep -q "^SEE ALSO" page.txt
    grep -q -- "$name" page.txt
    n=$((n + 1))
  done
  [ "$n" -ge 7 ]
  groff -man -Tascii "$M/phi3.1" | sed "s/.\x08//g" | grep -q -- "--session NAME"
}

@test "install: bash completion for phi3 and every tool" {
  install_to "$BATS_TEST_TMPDIR/root"
  C="$BATS_TEST_TMPDIR/root/usr/share/bash-completion/completions"
  [ -s "$C/phi3" ]
  for t in "$PHI3_BIN"/phi3-*; do
    [[ "$t" == *.so ]] && continue
    [ "$(readlink "$C/$(basename "$t")")" = phi3 ] || fail "no completion link for $(basename "$t")"
  done
  run bash -c '
    PATH="$1:$PATH"; source "$2"
    c() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); "$F"; echo "${COMPREPLY[*]}"; }
    F=_phi3; c phi3 gen; c phi3 chat --sess; c phi3 generate --backend c; c phi3 generate --gr
    F=_phi3_tool; c phi3-run --all; c phi3-sample --top-; complete -p phi3-detok' _ "$BATS_TEST_TMPDIR/root/usr/bin" "$C/phi3"
  assert_status 0
  [ "${lines[0]}" = generate ]
  [ "${lines[1]}" = --session ]
  [ "${lines[2]}" = "cpu cuda" ]
  [ "${lines[3]}" = --greedy ]
  [ "${lines[4]}" = --all-logits ]
  [ "${lines[5]}" = "--top-k --top-p" ]
  [ "${lines[6]}" = "complete -F _phi3_tool phi3-detok" ]
}
