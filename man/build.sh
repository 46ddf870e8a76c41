#!/usr/bin/env bash
# man/build.sh OUTDIR [BINDIR]: a man page (section 1) for every phi3 tool, made from its
# --help and --version with help2man (Debian package help2man), so the pages never go
# stale: `make install` runs this; nothing generated is committed.
set -eu
out=${1:?usage: man/build.sh OUTDIR [BINDIR]}
here=$(cd "$(dirname "$0")" && pwd)
bin=${2:-$here/../bin}
command -v help2man > /dev/null || { echo "man/build.sh: help2man not found (apt-get install help2man)" >&2; exit 1; }
mkdir -p "$out"

describe() {
  case "$1" in
    phi3) echo "generate text and chat with a Phi-3 model (the wrapper around the pipeline)" ;;
    phi3-template) echo "render chat messages with the Phi-3 chat template as text frames" ;;
    phi3-tok) echo "tokenize text frames into tokens frames" ;;
    phi3-run) echo "run the Phi-3 model: tokens frames in, logits frames out" ;;
    phi3-sample) echo "pick one token per logits frame (the sampling chain)" ;;
    phi3-detok) echo "decode tokens frames to UTF-8 text, streamed" ;;
    phi3-dump) echo "show a phi3 frame stream as JSON lines, and back" ;;
    *) echo "a tool of the phi3 pipeline" ;;
  esac
}

tools=()
for t in "$bin"/phi3 "$bin"/phi3-*; do
  [ -f "$t" ] && [ -x "$t" ] && [[ "$t" != *.so ]] && tools+=("$(basename "$t")")
done
printf '[SEE ALSO]\n%s\n.PP\nThe frame protocol, sessions and sampling are described in docs/PROTOCOL.md,\ndocs/SESSIONS.md and docs/SAMPLING.md of the phi3 sources.\n' \
  "$(for t in "${tools[@]}"; do printf '.BR %s (1)\n' "$t"; done)" > "$out/.see-also.h2m"
for t in "${tools[@]}"; do
  help2man --no-info --no-discard-stderr --section 1 --name "$(describe "$t")" \
    --include "$out/.see-also.h2m" --output "$out/$t.1" "$bin/$t"
done
rm -f "$out/.see-also.h2m"
