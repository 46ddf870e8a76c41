#!/usr/bin/python3
"""gguf_info.py FILE: a GGUF file's metadata and tensor table as one JSON object, read
here with struct alone (independent of embed/gguf.c): {"version", "kv": {key: [type
name, value]}, "tensors": {name: [ggml type number, [ne0, ne1, ...], offset]}}. String
and number arrays are given as [element type, length, first elements...]."""
import json, struct, sys

TYPES = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64"]
FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

class R:
    def __init__(self, b):
        self.b, self.p = b, 0
    def take(self, fmt):
        v = struct.unpack_from(fmt, self.b, self.p)[0]
        self.p += struct.calcsize(fmt)
        return v
    def s(self):
        n = self.take("<Q")
        v = self.b[self.p:self.p + n].decode("utf-8")
        self.p += n
        return v
    def val(self, t):
        if t == 8:
            return self.s()
        if t == 9:
            et, n = self.take("<I"), self.take("<Q")
            items = [self.val(et) for _ in range(n)]
            return [TYPES[et], n] + items[:4]
        return self.take(FMT[t])

def main():
    b = open(sys.argv[1], "rb").read()
    r = R(b)
    assert r.b[:4] == b"GGUF"
    r.p = 4
    ver, nt, nkv = r.take("<I"), r.take("<Q"), r.take("<Q")
    kv = {}
    for _ in range(nkv):
        k = r.s()
        t = r.take("<I")
        kv[k] = [TYPES[t], r.val(t)]
    ts = {}
    for _ in range(nt):
        name = r.s()
        nd = r.take("<I")
        ne = [r.take("<Q") for _ in range(nd)]
        ts[name] = [r.take("<I"), ne, r.take("<Q")]
    print(json.dumps({"version": ver, "kv": kv, "tensors": ts}))

main()
