#!/usr/bin/env python3
"""server_check.py: the batching server on the CUDA backend (PHI3_CUDA_BATCH=1, opt-in;
issue 13): one copy of the weights, every stream's tokens in one forward per step.

1. N random streams (tests/lib/randstreams.py: prompts in partial pieces, decode steps,
   rewinds, --all-logits, the LongRoPE switch of tiny-longrope) at once through one
   `phi3-run --serve --backend cuda`, each compared with its solo `phi3-run --backend cuda`:
   the same frames, token ids exactly, logits within --tol (2e-2) relative L2. PASS/FAIL.
2. --full MODEL (optional): S concurrent decode streams (a 64-token prompt, then 32 steps
   each, through --connect) against one stream alone on the same server: aggregate tokens/s
   and the per-stream step time (the issue's 32 streams >= 15x one, step <= 2x). INFO.
Exit 1 on a FAIL."""
import argparse, os, random, signal, subprocess, sys, tempfile, time

import numpy as np
import msgpack

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--fix", required=True)
ap.add_argument("--streams", type=int, default=8)
ap.add_argument("--tol", type=float, default=2e-2)
ap.add_argument("--full", default="")
ap.add_argument("--full-streams", type=int, default=32)
a = ap.parse_args()
RUN = os.path.join(a.bin, "phi3-run")
env = dict(os.environ, PHI3_CUDA_BATCH="1")
work = tempfile.mkdtemp(prefix="phi3-srv-")
bad = 0


def frames(b):
    up = msgpack.Unpacker(raw=False)
    up.feed(b)
    return list(up)


def serve(model, sock, extra=()):
    p = subprocess.Popen([RUN, "--serve", sock, "-m", model, "--backend", "cuda", "-q", "--stats"] + list(extra),
                         env=env, stderr=open(os.path.join(work, "server.err"), "ab"))
    for _ in range(600):
        if os.path.exists(sock):
            return p
        if p.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError("server did not start: " + open(os.path.join(work, "server.err")).read()[-300:])


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()


# 1. correctness
model = os.path.join(a.fix, "tiny-longrope")
subprocess.run([sys.executable, "tests/lib/randstreams.py", "7", str(a.streams), work, "32064"], check=True)
sock = os.path.join(work, "s.sock")
srv = serve(model, sock)
try:
    procs = []
    for k in range(1, a.streams + 1):
        flags = open(os.path.join(work, "flags.%d" % k)).read().split()
        procs.append((k, flags, subprocess.Popen([RUN, "--connect", sock] + flags,
                                                 stdin=open(os.path.join(work, "in.%d" % k), "rb"),
                                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    via = {k: p.communicate(timeout=300) + (p.returncode,) for k, _, p in procs}
finally:
    stop(srv)
worst = 0.0
for k, flags, _ in procs:
    solo = subprocess.run([RUN, "-m", model, "--backend", "cuda", "-q"] + flags,
                          stdin=open(os.path.join(work, "in.%d" % k), "rb"), capture_output=True, env=env)
    out, err, rc = via[k]
    if rc or solo.returncode:
        print("FAIL server stream %d: exit %d (solo %d): %s" % (k, rc, solo.returncode, (err or solo.stderr).decode()[-200:]))
        bad += 1
        continue
    fa, fb = frames(solo.stdout), frames(out)
    why = ""
    if [f.get("type") for f in fa] != [f.get("type") for f in fb]:
        why = "frame types differ"
    for x, y in zip(fa, fb):
        if why:
            break
        if x.get("type") == "tokens" and (x.get("ids") != y.get("ids") or x.get("pos") != y.get("pos")):
            why = "tokens frame differs"
        elif x.get("type") == "logits":
            u, v = np.frombuffer(x["data"], "<f4"), np.frombuffer(y["data"], "<f4")
            e = float(np.linalg.norm(u - v) / np.linalg.norm(u))
            worst = max(worst, e)
            if not e <= a.tol:
                why = "logits at pos %s: relative L2 %.2e" % (x.get("pos"), e)
    if why:
        print("FAIL server stream %d (%s): %s" % (k, " ".join(flags) or "plain", why))
        bad += 1
if not bad:
    print("PASS server cuda-batch: %d concurrent streams equal their solo runs (worst logits %.2e)" % (a.streams, worst))

# 2. throughput on the full-size model
if a.full:
    r = random.Random(3)
    def stream_bytes():
        s = msgpack.packb({"type": "tokens", "ids": [r.randrange(32000) for _ in range(64)]})
        return s + b"".join(msgpack.packb({"type": "tokens", "ids": [r.randrange(32000)]}) for _ in range(32))
    sock = os.path.join(work, "f.sock")
    srv = serve(a.full, sock, ["--max-streams", str(a.full_streams + 1), "--ctx", "128"])
    try:
        rates = {}
        for s in (1, a.full_streams):
            data = [stream_bytes() for _ in range(s)]
            t0 = time.time()
            ps = [subprocess.Popen([RUN, "--connect", sock, "--ctx", "128"], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(s)]
            for p, d in zip(ps, data):
                p.stdin.write(d)
                p.stdin.close()
            for p in ps:
                p.wait(600)
            rates[s] = s * 96 / (time.time() - t0)
            print("INFO server full: %d stream(s): %.1f tokens/s aggregate (prompt + steps, wall)" % (s, rates[s]))
        print("INFO server full: %d streams %.1fx one stream (target >= 15x)" % (a.full_streams, rates[a.full_streams] / rates[1]))
    finally:
        stop(srv)
    print("INFO server full stats: " + open(os.path.join(work, "server.err")).read()[-400:].replace("\n", " | "))
sys.exit(1 if bad else 0)
