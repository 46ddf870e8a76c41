#!/usr/bin/python3
"""randstreams.py SEED N DIR [VOCAB]: N random phi3-run input streams DIR/in.K (K = 1..N) for the
server tests, and DIR/flags.K (the per-stream phi3-run flags: "" or "--all-logits").
Each stream is a prompt (sometimes split into partial frames), decode steps of one token,
rewinds (a frame whose pos is behind the context), end frames, and for some streams a
context that crosses tiny-longrope's LongRoPE switch at 64 positions."""
import msgpack, random, sys

seed, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
V = int(sys.argv[4]) if len(sys.argv) > 4 else 32064
r = random.Random(seed)
for k in range(1, n + 1):
    frames, ctx = [], 0
    limit = r.choice([60, 100, 150])
    def tok(ids, **kw):
        f = {"type": "tokens", "ids": ids}
        f.update(kw)
        frames.append(f)
    for turn in range(r.randint(1, 3)):
        # a prompt, maybe in partial pieces
        parts = r.randint(1, 3)
        for p in range(parts):
            m = r.randint(1, 40)
            if ctx + m > limit - 10:
                m = max(1, limit - 10 - ctx)
            f = {"partial": True} if p < parts - 1 else {}
            tok([r.randrange(V) for _ in range(m)], **f)
            ctx += m
        for _ in range(r.randint(1, 12)):           # decode steps
            if ctx + 1 > limit:
                break
            tok([r.randrange(V)])
            ctx += 1
        if r.random() < 0.5 and ctx > 2:            # rewind
            pos = r.randrange(1, ctx)
            m = r.randint(1, 5)
            tok([r.randrange(V) for _ in range(m)], pos=pos)
            ctx = pos + m
        frames.append({"type": "end", "reason": "stop"})
    if r.random() < 0.4:                            # cross 64 in one frame
        if ctx < 60:
            m = 70 - ctx
            tok([r.randrange(V) for _ in range(m)])
            ctx += m
            tok([r.randrange(V)])
    with open(f"{out}/in.{k}", "wb") as fh:
        for f in frames:
            fh.write(msgpack.packb(f))
    with open(f"{out}/flags.{k}", "w") as fh:
        fh.write("--all-logits" if r.random() < 0.3 else "")
