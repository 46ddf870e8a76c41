#!/usr/bin/python3
"""sampler.py: a phi3 sampler in Python (Debian python3 + python3-msgpack, no numpy),
to show that the loop's sampler is replaceable without recompiling anything:

    phi3 generate --sampler examples/sampler.py -t 0.8 --top-k 40 "Once upon a time"
    ... | phi3-run -m M | examples/sampler.py -t 0 | tee fb | phi3-detok -m M

Reads logits frames (the context tokens frames that phi3-run forwards are skipped),
writes one tokens frame per logits frame; on a --stop-ids id or after -n ids writes that id
and an end frame, then exits 0. -t 0 (or --greedy) is the argmax, lowest id on a tie.
"""
import argparse, os, random, struct, sys
import math
import msgpack


def parse_args():
    ap = argparse.ArgumentParser(prog="sampler.py", description=__doc__.split("\n")[0])
    ap.add_argument("-t", "--temperature", type=float, default=1.0)
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("-n", "--max-tokens", type=int, default=0)
    ap.add_argument("--stop-ids", dest="stop", default="", help="comma separated stop ids")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    try:
        a.stop = {int(x) for x in a.stop.split(",")} if a.stop else set()
    except ValueError:
        ap.error("--stop-ids: expected ids like 32000,32007")
    if a.temperature < 0:
        ap.error("--temperature must be >= 0")
    return a


def pick(logits, a, rng):
    if a.greedy or a.temperature == 0:
        return max(range(len(logits)), key=logits.__getitem__)   # first max wins
    ids = sorted(range(len(logits)), key=lambda i: -logits[i])
    if a.top_k > 0:
        ids = ids[: a.top_k]
    top = logits[ids[0]]
    w = [math.exp((logits[i] - top) / a.temperature) for i in ids]
    return rng.choices(ids, weights=w)[0]


def main():
    a = parse_args()
    rng = random.Random(a.seed)
    out = sys.stdout.buffer
    unpacker = msgpack.Unpacker(raw=False)
    done = 0
    while True:
        chunk = os.read(0, 1 << 16)     # not sys.stdin.read(n): that waits for n bytes
        if not chunk:
            return 0
        unpacker.feed(chunk)
        for fr in unpacker:
            if not isinstance(fr, dict) or fr.get("type") != "logits":
                continue
            data = fr["data"]
            logits = struct.unpack("<%df" % (len(data) // 4), data)
            tok = pick(logits, a, rng)
            done += 1
            frame = {"type": "tokens", "ids": [tok]}
            if "pos" in fr:
                frame["pos"] = fr["pos"]
            out.write(msgpack.packb(frame))
            reason = "stop" if tok in a.stop else \
                     "length" if a.max_tokens and done >= a.max_tokens else None
            if reason:
                out.write(msgpack.packb({"type": "end", "reason": reason}))
            out.flush()
            if reason:
                return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:             # the reader went away: a normal end
        sys.stderr.close()
        sys.exit(0)
