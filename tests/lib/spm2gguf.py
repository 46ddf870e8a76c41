#!/usr/bin/python3
"""spm2gguf.py TOKENIZER.MODEL MODEL_DIR OUT.gguf: a GGUF file holding only the
vocabulary, made the way llama.cpp's convert_hf_to_gguf.py makes it for Phi-3 (its
Phi3MiniModel.set_vocab): pieces, SentencePiece scores and types from tokenizer.model
(protobuf read here by hand), padded to config.json's vocab_size with [PADn] unused
tokens, then tokenizer.json's added tokens as control (special) or user-defined tokens
with score -1000, special ids and add_bos/add_eos from tokenizer_config.json. The
scores are the real ones (-(id - 259), "▁▁" -1e9), not the ones phi3-quantize derives."""
import json, struct, sys

def varint(b, i):
    r = s = 0
    while True:
        c = b[i]; i += 1; r |= (c & 0x7f) << s; s += 7
        if c < 0x80:
            return r, i

def pieces(path):
    b, i, out = open(path, "rb").read(), 0, []
    while i < len(b):
        k, i = varint(b, i)
        w = k & 7
        if w == 2:
            n, i = varint(b, i)
            d, i = b[i:i + n], i + n
            if k >> 3 == 1:                      # ModelProto.pieces
                j, p, sc, ty = 0, None, 0.0, 1
                while j < len(d):
                    kk, j = varint(d, j)
                    if kk & 7 == 2:
                        ll, j = varint(d, j); p = d[j:j + ll].decode(); j += ll
                    elif kk & 7 == 5:
                        sc = struct.unpack("<f", d[j:j + 4])[0]; j += 4
                    else:
                        ty, j = varint(d, j)
                out.append((p, sc, ty))
        elif w == 0:
            _, i = varint(b, i)
        elif w == 5:
            i += 4
        else:
            i += 8
    return out

def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b

def main():
    model, d, out = sys.argv[1:4]
    cfg = json.load(open(d + "/config.json"))
    n = cfg["vocab_size"]
    toks, scores, types = ["[PAD%d]" % i for i in range(n)], [-10000.0] * n, [5] * n
    for i, (p, sc, ty) in enumerate(pieces(model)):
        toks[i], scores[i], types[i] = p, sc, ty
    for a in json.load(open(d + "/tokenizer.json"))["added_tokens"]:
        toks[a["id"]], scores[a["id"]], types[a["id"]] = a["content"], -1000.0, 3 if a["special"] else 4
    tc = json.load(open(d + "/tokenizer_config.json"))
    tid = lambda key: toks.index(tc[key] if isinstance(tc[key], str) else tc[key]["content"])
    kv = [s("general.architecture") + struct.pack("<I", 8) + s("phi3"),
          s("general.name") + struct.pack("<I", 8) + s("Phi3"),
          s("tokenizer.ggml.model") + struct.pack("<I", 8) + s("llama"),
          s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, n) + b"".join(s(t) for t in toks),
          s("tokenizer.ggml.scores") + struct.pack("<IIQ", 9, 6, n) + struct.pack("<%df" % n, *scores),
          s("tokenizer.ggml.token_type") + struct.pack("<IIQ", 9, 5, n) + struct.pack("<%di" % n, *types)]
    for key, name in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        kv.append(s("tokenizer.ggml.%s_token_id" % name) + struct.pack("<II", 4, tid(key)))
    for key in ("add_bos_token", "add_eos_token"):
        kv.append(s("tokenizer.ggml." + key) + struct.pack("<I?", 7, tc[key]))
    with open(out, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + b"".join(kv))

main()
