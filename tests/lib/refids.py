#!/usr/bin/python3
"""refids.py FILE NAME: print the integer tensor NAME of a safetensors FILE as space-
separated ids (reference token ids for the loop tests). The format is parsed here with
json + struct (8-byte LE header length, JSON header, data), independent of embed/."""
import json, struct, sys

INTS = {"I32": "i", "I64": "q", "I16": "h", "U8": "B", "I8": "b"}

def main():
    path, name = sys.argv[1], sys.argv[2]
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        head = json.loads(f.read(n))
        if name not in head:
            sys.exit("refids.py: %s has no tensor %s" % (path, name))
        t = head[name]
        if t["dtype"] not in INTS:
            sys.exit("refids.py: %s is %s, not an integer tensor" % (name, t["dtype"]))
        a, b = t["data_offsets"]
        f.seek(8 + n + a)
        raw = f.read(b - a)
    code = INTS[t["dtype"]]
    k = struct.calcsize(code)
    print(" ".join(str(v) for v in struct.unpack("<%d%s" % (len(raw) // k, code), raw)))

main()
