#!/usr/bin/python3
"""mkgguf.py OUT [VARIANT]: write a tiny GGUF file by hand (struct only, independent of
embed/gguf.c): a phi3 model with hidden 8, 2 heads (head size 4), 1 kv head, 1 layer,
LongRoPE factor tensors and a 10-token llama vocabulary; F32 weights from a fixed seed.
Used for the fuzz seeds and the BATS error cases. VARIANT: ok (default), nested (an
array of arrays in the metadata), q8 (token_embd as Q8_0 blocks, hidden 32), q41 (the same as Q4_1)."""
import random, struct, sys

def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b

def kv(key, t, payload):
    return s(key) + struct.pack("<I", t) + payload

U32, I32, F32, BOOL, STR, ARR = 4, 5, 6, 7, 8, 9

def arr(t, items, enc):
    return struct.pack("<IQ", t, len(items)) + b"".join(enc(i) for i in items)

def main():
    out, var = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "ok")
    rnd = random.Random(7)
    big = var in ("q8", "q41")
    H, NH, NKV, HD, I, L = (32 if big else 8), 2, 1, (16 if big else 4), 8, 1
    toks = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "ab", "\u2581ab", "<|end|>"]
    types = [3, 3, 4, 1, 1, 1, 1, 1, 1, 3]
    scores = [-1000.0, -1000.0, -1000.0, -5.0, -6.0, -7.0, -1.0, -2.0, -3.0, -1000.0]
    V = len(toks)
    meta = [
        kv("general.architecture", STR, s("phi3")),
        kv("general.name", STR, s("tiny phi3")),
        kv("phi3.context_length", U32, struct.pack("<I", 128)),
        kv("phi3.rope.scaling.original_context_length", U32, struct.pack("<I", 16)),
        kv("phi3.embedding_length", U32, struct.pack("<I", H)),
        kv("phi3.feed_forward_length", U32, struct.pack("<I", I)),
        kv("phi3.block_count", U32, struct.pack("<I", L)),
        kv("phi3.attention.head_count", U32, struct.pack("<I", NH)),
        kv("phi3.attention.head_count_kv", U32, struct.pack("<I", NKV)),
        kv("phi3.attention.layer_norm_rms_epsilon", F32, struct.pack("<f", 1e-5)),
        kv("phi3.rope.dimension_count", U32, struct.pack("<I", HD)),
        kv("phi3.rope.freq_base", F32, struct.pack("<f", 10000.0)),
        kv("phi3.attention.sliding_window", U32, struct.pack("<I", 64)),
        kv("tokenizer.ggml.model", STR, s("llama")),
        kv("tokenizer.ggml.tokens", ARR, arr(STR, toks, s)),
        kv("tokenizer.ggml.scores", ARR, arr(F32, scores, lambda x: struct.pack("<f", x))),
        kv("tokenizer.ggml.token_type", ARR, arr(I32, types, lambda x: struct.pack("<i", x))),
        kv("tokenizer.ggml.bos_token_id", U32, struct.pack("<I", 1)),
        kv("tokenizer.ggml.eos_token_id", U32, struct.pack("<I", 2)),
        kv("tokenizer.ggml.unknown_token_id", U32, struct.pack("<I", 0)),
        kv("tokenizer.ggml.add_bos_token", BOOL, b"\x00"),
    ]
    if var == "nested":
        meta.append(kv("x.nested", ARR, struct.pack("<IQ", ARR, 2) + arr(U32, [1, 2], lambda x: struct.pack("<I", x))
                       + arr(STR, ["p", "q"], s)))
    qkv = (NH + 2 * NKV) * HD
    tensors = [("token_embd.weight", [H, V]), ("rope_factors_long.weight", [HD // 2]),
               ("rope_factors_short.weight", [HD // 2]), ("blk.0.attn_norm.weight", [H]),
               ("blk.0.attn_qkv.weight", [H, qkv]), ("blk.0.attn_output.weight", [NH * HD, H]),
               ("blk.0.ffn_norm.weight", [H]), ("blk.0.ffn_up.weight", [H, 2 * I]),
               ("blk.0.ffn_down.weight", [I, H]), ("output_norm.weight", [H]), ("output.weight", [H, V])]
    info, data = b"", b""
    for name, ne in tensors:
        n = 1
        for d in ne:
            n *= d
        if name.startswith("rope_factors"):
            vals = [1.0 + 0.5 * k for k in range(n)]
        elif name.endswith("norm.weight"):
            vals = [1.0 + rnd.uniform(-0.1, 0.1) for _ in range(n)]
        else:
            vals = [rnd.uniform(-0.5, 0.5) for _ in range(n)]
        if var == "q8" and name == "token_embd.weight":
            t, raw = 8, b""
            for b in range(n // 32):
                blk = vals[32 * b:32 * b + 32]
                d = max(abs(x) for x in blk) / 127
                raw += struct.pack("<e", d) + bytes((round(x / d) & 0xff) for x in blk)
        elif var == "q41" and name == "token_embd.weight":
            t, raw = 3, b"".join(struct.pack("<ee", 0.01, -0.05) + bytes(range(16)) for _ in range(n // 32))
        else:
            t, raw = 0, struct.pack("<%df" % n, *vals)
        data += b"\0" * (-len(data) % 32)
        info += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        info += struct.pack("<IQ", t, len(data))
        data += raw
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)) + b"".join(meta) + info
    head += b"\0" * (-len(head) % 32)
    with open(out, "wb") as f:
        f.write(head + data)

main()
