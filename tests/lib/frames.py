#!/usr/bin/python3
"""frames.py: craft phi3 frames for tests (Debian python3 with python3-msgpack).

  frames.py json  < json-lines   JSON lines -> frames; a list under logits "data" is
                                  packed as float32 LE; NaN/Infinity literals allowed
  frames.py onehot N ID...       one logits frame per ID: N floats, 0 except 8.0 at ID
"""
import json, struct, sys
import msgpack

def pack(obj):
    if obj.get("type") == "logits" and isinstance(obj.get("data"), list):
        obj["data"] = struct.pack("<%df" % len(obj["data"]), *obj["data"])
    return msgpack.packb(obj, use_bin_type=True)

def main():
    out = sys.stdout.buffer
    if sys.argv[1] == "json":
        for line in sys.stdin:
            if line.strip():
                out.write(pack(json.loads(line)))
    elif sys.argv[1] == "onehot":
        n = int(sys.argv[2])
        for pos, a in enumerate(sys.argv[3:]):
            v = [0.0] * n
            v[int(a)] = 8.0
            out.write(pack({"type": "logits", "pos": pos, "data": v}))
    else:
        sys.exit("frames.py: unknown mode " + sys.argv[1])

main()
