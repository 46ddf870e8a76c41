#!/usr/bin/python3
"""logits_cmp.py A B [--tol T | --exact]: compare the logits frames of two phi3-run
streams (files A and B) frame by frame: the same number of frames, the same pos, and a
relative L2 error per frame below T (default 1e-5), or every float bit-identical with
--exact. Prints the worst error; exit 1 on a mismatch."""
import math, struct, sys
import msgpack

def logits(path):
    out = []
    with open(path, "rb") as f:
        for fr in msgpack.Unpacker(f, raw=False):
            if fr.get("type") == "logits":
                d = fr["data"]
                out.append((fr.get("pos"), struct.unpack("<%df" % (len(d) // 4), d), d))
    return out

def main():
    a, b = logits(sys.argv[1]), logits(sys.argv[2])
    opt = sys.argv[3:]
    exact = "--exact" in opt
    tol = float(opt[opt.index("--tol") + 1]) if "--tol" in opt else 1e-5
    if len(a) != len(b) or not a:
        print("frames: %d vs %d" % (len(a), len(b)))
        return 1
    worst = 0.0
    for k, ((pa, xa, ra), (pb, xb, rb)) in enumerate(zip(a, b)):
        if pa != pb or len(xa) != len(xb):
            print("frame %d: pos %s vs %s, %d vs %d logits" % (k, pa, pb, len(xa), len(xb)))
            return 1
        if exact and ra != rb:
            print("frame %d: not bit-identical" % k)
            return 1
        num = math.sqrt(sum((p - q) ** 2 for p, q in zip(xa, xb)))
        den = math.sqrt(sum(q * q for q in xb)) or 1.0
        worst = max(worst, num / den)
    print("%d frames, worst relative L2 %.3g%s" % (len(a), worst, " (bit-identical)" if exact else ""))
    return 0 if worst <= tol else 1

sys.exit(main())
