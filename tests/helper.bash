# helper.bash: shared setup for every BATS file (`load helper`).
bats_require_minimum_version 1.5.0
# PHI3_BIN: the built tools (make test sets it; default bin/). FIX: the fixtures.
ROOT="$(cd "$BATS_TEST_DIRNAME/.." && pwd)"
: "${PHI3_BIN:=$ROOT/bin}"
FIX="$ROOT/tests/fixtures"
LONGROPE="$FIX/tiny-longrope"
GQA="$FIX/tiny-gqa-window"
# Debian's python3 has the msgpack module (python3-msgpack); a python3 earlier on PATH
# (pyenv) may not.
PY=/usr/bin/python3
export PHI3_BIN FIX PY ROOT
unset PHI3_MODEL

# tool NAME: path of a phi3 tool.
tool() { echo "$PHI3_BIN/$1"; }

# Fail with a message (works inside or outside `run`).
fail() { echo "$*" >&2; return 1; }

# assert_status N: the last `run` exited with N.
assert_status() {
  [ "$status" -eq "$1" ] || fail "expected exit $1, got $status; output: ${output:0:2000}"
}

# assert_err PREFIX SUBSTRING: after `run --separate-stderr`, stderr is exactly one line that
# starts with PREFIX and contains SUBSTRING.
assert_err() {
  local n
  n=$(printf '%s\n' "$stderr" | grep -c .)
  [ "$n" -eq 1 ] || fail "expected one stderr line, got $n: $stderr"
  [[ "$stderr" == "$1"* ]] || fail "stderr does not start with '$1': $stderr"
  [[ "$stderr" == *"$2"* ]] || fail "stderr does not mention '$2': $stderr"
}

# json2frames: JSON lines on stdin -> frames on stdout (phi3-dump -r).
json2frames() { "$PHI3_BIN/phi3-dump" -r; }
frames2json() { "$PHI3_BIN/phi3-dump"; }

# make_k256 DIR: DIR/k256, a random model (the benchmarks' generator) whose rows are whole
# 256-blocks, so the K types of Q4_K_M are used as llama.cpp uses them on Phi-3-mini;
# 8 layers for use_more_bits' pattern. Its vocabulary has 512 ids.
make_k256() {
  cc -O2 -o "$1/gen_model" "$ROOT/tests/bench/gen_model.c" -ljansson || return 1
  echo '{"architectures": ["Phi3ForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
    "max_position_embeddings": 4096, "num_attention_heads": 4, "num_hidden_layers": 8,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0,
    "sliding_window": 2047, "tie_word_embeddings": false, "vocab_size": 512}' > "$1/k256.json"
  "$1/gen_model" "$1/k256.json" "$1/k256" > /dev/null
}

# limbs_missing: why PHI3_QUANT_LIMBS=1 changes nothing here (a CPU feature qlimb needs,
# or PHI3_NO_AVX512/PHI3_NO_AVX set), or nothing when the limb kernels are used.
limbs_missing() {
  local f
  for f in avx512f avx512bw avx512vl avx512dq avx512_vnni; do
    grep -qw "$f" /proc/cpuinfo || { echo "this CPU lacks $f"; return; }
  done
  [ -z "${PHI3_NO_AVX512:-}${PHI3_NO_AVX:-}" ] || echo "PHI3_NO_AVX512 or PHI3_NO_AVX is set"
}
