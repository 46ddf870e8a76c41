#!/usr/bin/python3
"""mkbad.py KIND SRC DST: copy the model directory SRC to DST and break it one way
(for phi3-run's bad-input tests), or convert it (as-f32, as-f16, tied). Safetensors headers are rewritten with json + struct."""
import json, os, shutil, struct, sys

def read_st(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), f.read()

def write_st(path, head, data):
    h = json.dumps(head).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)

def edit_config(d, fn):
    p = os.path.join(d, "config.json")
    c = json.load(open(p))
    fn(c)
    json.dump(c, open(p, "w"))

def shard(d):
    """the (last) shard file of d"""
    fs = sorted(f for f in os.listdir(d) if f.startswith("model") and f.endswith(".safetensors"))
    return os.path.join(d, fs[-1])

def main():
    kind, src, dst = sys.argv[1:4]
    shutil.copytree(src, dst)
    os.remove(os.path.join(dst, "reference.safetensors"))
    s = shard(dst)
    if kind == "truncated":
        size = os.path.getsize(s)
        os.truncate(s, size - 4096)
    elif kind == "short":                      # shorter than a header length
        os.truncate(s, 5)
    elif kind == "header":                     # not JSON
        b = bytearray(open(s, "rb").read()); b[8] = ord("x"); open(s, "wb").write(b)
    elif kind == "hdrlen":                     # header length beyond the file
        b = bytearray(open(s, "rb").read()); b[0:8] = struct.pack("<Q", 1 << 40); open(s, "wb").write(b)
    elif kind in ("dtype", "overlap", "missing-tensor", "shape-bytes"):
        head, data = read_st(s)
        name = "model.norm.weight"
        if kind == "dtype":
            head[name]["dtype"] = "I16"
        elif kind == "overlap":
            other = next(k for k in head if k != "__metadata__" and k != name)
            a, b = head[other]["data_offsets"]
            n = head[name]["data_offsets"][1] - head[name]["data_offsets"][0]
            head[name]["data_offsets"] = [a, a + n]
        elif kind == "missing-tensor":
            del head[name]
        else:
            head[name]["shape"] = [head[name]["shape"][0] + 1]
        write_st(s, head, data)
    elif kind in ("as-f32", "as-f16"):         # not broken: every BF16 tensor converted
        for f in os.listdir(dst):
            if not f.endswith(".safetensors"):
                continue
            head, data = read_st(os.path.join(dst, f))
            out, off = bytearray(), 0
            for name in sorted((k for k in head if k != "__metadata__"), key=lambda k: head[k]["data_offsets"][0]):
                a, b = head[name]["data_offsets"]
                vals = struct.unpack("<%dH" % ((b - a) // 2), data[a:b])
                fl = struct.unpack("<%df" % len(vals), struct.pack("<%dI" % len(vals), *(v << 16 for v in vals)))
                raw = struct.pack("<%d%s" % (len(fl), "f" if kind == "as-f32" else "e"), *fl)
                head[name].update(dtype="F32" if kind == "as-f32" else "F16", data_offsets=[off, off + len(raw)])
                out += raw
                off += len(raw)
            write_st(os.path.join(dst, f), head, bytes(out))
    elif kind == "tied":                       # lm_head dropped, config says tied
        edit_config(dst, lambda c: c.update(tie_word_embeddings=True))
        head, data = read_st(s)
        del head["lm_head.weight"]
        write_st(s, head, data)
    elif kind == "missing-shard":
        os.remove(s)
    elif kind == "arch":
        edit_config(dst, lambda c: c.update(architectures=["LlamaForCausalLM"]))
    elif kind == "rope":
        edit_config(dst, lambda c: c["rope_scaling"].update(type="yarn", rope_type="yarn"))
    elif kind == "factors":
        edit_config(dst, lambda c: c["rope_scaling"]["short_factor"].pop())
    elif kind == "config-shape":               # the config disagrees with the tensors
        edit_config(dst, lambda c: c.update(intermediate_size=c["intermediate_size"] - 16))
    elif kind == "config-json":
        open(os.path.join(dst, "config.json"), "w").write("{\"hidden_size\": 12")
    else:
        sys.exit("mkbad.py: unknown kind " + kind)

main()
