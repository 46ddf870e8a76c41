#!/usr/bin/python3
"""logits_check.py REF NAME [--pos P,P..] [--argmax IDSNAME] [--tol T]: compare the logits
frames of a phi3-run stream on stdin with the float32 tensor NAME [rows, vocab] of the
safetensors file REF (parsed here with json + struct, independent of embed/).

Frame k is compared with row k; with --pos, only frames whose pos - 1 is in the list are
compared, in that order. Relative L2 error per row must be < T (default 1e-5); with
--argmax the argmax of each compared frame must equal the integer tensor IDSNAME.
Prints the worst error; exit 1 on a mismatch."""
import json, math, struct, sys
import msgpack

def tensor(path, name):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        head = json.loads(f.read(n))
        t = head[name]
        a, b = t["data_offsets"]
        f.seek(8 + n + a)
        raw = f.read(b - a)
    code = {"F32": "f", "I32": "i"}[t["dtype"]]
    return t["shape"], struct.unpack("<%d%s" % (len(raw) // 4, code), raw)

def main():
    args = sys.argv[1:]
    ref, name = args[0], args[1]
    opt = dict(zip(args[2::2], args[3::2]))
    tol = float(opt.get("--tol", "1e-5"))
    shape, data = tensor(ref, name)
    rows, vocab = shape
    want_pos = [int(p) for p in opt["--pos"].split(",")] if "--pos" in opt else None
    greedy = tensor(ref, opt["--argmax"])[1] if "--argmax" in opt else None
    frames = [f for f in msgpack.Unpacker(sys.stdin.buffer, raw=False) if f.get("type") == "logits"]
    if want_pos is not None:
        frames = [f for p in want_pos for f in frames if f["pos"] == p + 1]
    if len(frames) != rows:
        sys.exit("logits_check.py: %d logits frames to compare, reference has %d rows" % (len(frames), rows))
    worst, bad = 0.0, []
    for k, f in enumerate(frames):
        got = struct.unpack("<%df" % vocab, f["data"])
        r = data[k * vocab:(k + 1) * vocab]
        num = sum((g - x) ** 2 for g, x in zip(got, r))
        den = sum(x * x for x in r)
        e = math.sqrt(num / den)
        worst = max(worst, e)
        if e >= tol:
            bad.append("row %d: rel L2 %.3g" % (k, e))
        if greedy is not None:
            am = max(range(vocab), key=got.__getitem__)
            if am != greedy[k]:
                bad.append("row %d: argmax %d, reference %d" % (k, am, greedy[k]))
    print("worst rel L2 %.3g over %d rows" % (worst, rows))
    if bad:
        sys.exit("logits_check.py: " + "; ".join(bad[:5]))

main()
