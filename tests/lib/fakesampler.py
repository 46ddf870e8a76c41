#!/usr/bin/python3
"""fakesampler.py [--id ID] [--pos] [--sleep S] [--die-at N STATUS] [--exit-after N STATUS]:
a sampler stage for the loop tests. It answers each logits frame with one tokens frame
{"ids": [ID]} (ID 450 unless given; with --pos, the frame's pos too), after S seconds
with --sleep. --die-at: on the Nth logits frame, exit STATUS without answering.
--exit-after: answer the Nth logits frame, then exit STATUS (SIGKILL itself instead when
$KILLME is set). At the end of its input it exits 0."""
import argparse, os, sys, time
import msgpack

ap = argparse.ArgumentParser()
ap.add_argument("--id", type=int, default=450)
ap.add_argument("--pos", action="store_true")
ap.add_argument("--sleep", type=float, default=0)
ap.add_argument("--die-at", type=int, nargs=2, metavar=("N", "STATUS"))
ap.add_argument("--exit-after", type=int, nargs=2, metavar=("N", "STATUS"))
a = ap.parse_args()
u = msgpack.Unpacker(raw=False)
n = 0
while True:
    b = os.read(0, 65536)
    if not b: sys.exit(0)
    u.feed(b)
    for f in u:
        if f.get("type") != "logits": continue
        n += 1
        if a.die_at and n == a.die_at[0]: os._exit(a.die_at[1])
        if a.sleep: time.sleep(a.sleep)
        t = {"type": "tokens", "ids": [a.id]}
        if a.pos: t["pos"] = f["pos"]
        sys.stdout.buffer.write(msgpack.packb(t)); sys.stdout.buffer.flush()
        if a.exit_after and n == a.exit_after[0]:
            if os.environ.get("KILLME"): os.kill(os.getpid(), 9)
            sys.exit(a.exit_after[1])
