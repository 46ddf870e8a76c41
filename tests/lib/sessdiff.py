#!/usr/bin/env python3
"""sessdiff.py: sessions are a pure cache, checked differentially.

Random token streams (rewinds with pos, partial frames, empty frames, end frames, bad
positions, --all-logits, --ctx) go through phi3-run twice: fresh, and with one session
that lives across every stream of the run (so each stream meets what the earlier ones
left). stdout bytes and exit status must be equal. Prints one line per difference and a
summary; exit 1 if any stream differed.

usage: sessdiff.py PHI3_RUN MODEL_DIR VOCAB ORIG_MAX SESSION N_STREAMS SEED [SECONDS]
"""
import random
import subprocess
import sys
import time

import msgpack


def stream(r, base, vocab, orig):
    """One random stream: (frames bytes, options, description)."""
    frames, ctx, desc = [], 0, []
    opts = []
    if r.random() < 0.25:
        opts.append("--all-logits")
    limit = None
    if r.random() < 0.2:
        limit = r.choice([orig - 1, orig, orig + 1, orig + 20, 2 * orig + 10])
        opts += ["--ctx", str(limit)]
    for _ in range(r.randint(1, 8)):
        f = {"type": "tokens"}
        roll = r.random()
        if ctx and roll < 0.3:                       # a rewind (sometimes across orig)
            p = r.choice([r.randint(0, ctx), r.randint(0, min(ctx, orig)), min(ctx, orig), ctx])
            if r.random() < 0.03:
                p = ctx + 1                          # ahead of the context: an error
            f["pos"] = p
            ctx = min(p, ctx)
        elif roll < 0.4:
            f["pos"] = ctx                           # pos = the context: no rewind
        if r.random() < 0.07:
            n = 0
        elif r.random() < 0.5:
            n = r.randint(1, 4)
        else:
            n = r.choice([r.randint(5, 40), r.randint(orig - ctx - 3, orig - ctx + 3)])
        n = max(0, n)
        if r.random() < 0.8:                         # the shared base: reuse across streams
            ids = base[ctx:ctx + n]
            ids += [r.randrange(vocab) for _ in range(n - len(ids))]
        else:
            ids = [r.randrange(vocab) for _ in range(n)]
        if r.random() < 0.15 and ids:
            k = r.randrange(len(ids))
            ids[k] = r.randrange(vocab)              # one diverging id
        f["ids"] = ids
        if r.random() < 0.3:
            f["partial"] = True
        frames.append(msgpack.packb(f))
        desc.append({k: (v if k != "ids" else len(v)) for k, v in f.items() if k != "type"})
        ctx += n
        if r.random() < 0.1:
            frames.append(msgpack.packb({"type": "end", "reason": "stop"}))
    return b"".join(frames), opts, desc


def run(cmd, data):
    p = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    return p.returncode, p.stdout, p.stderr.decode(errors="replace").strip()


def main():
    run_bin, model, vocab, orig, sess, n, seed = sys.argv[1:8]
    seconds = float(sys.argv[8]) if len(sys.argv) > 8 else 1e9
    vocab, orig, n, seed = int(vocab), int(orig), int(n), int(seed)
    r = random.Random(seed)
    base = [r.randrange(vocab) for _ in range(4 * orig + 100)]
    bad = done = errs = 0
    t0 = time.time()
    for i in range(n):
        if time.time() - t0 > seconds:
            break
        data, opts, desc = stream(r, base, vocab, orig)
        common = [run_bin, "-m", model, "-q", "--backend", "cpu", "--threads", "1"] + opts
        a = run(common, data)
        b = run(common + ["--session", sess], data)
        done += 1
        errs += a[0] != 0
        if a[0] != b[0] or a[1] != b[1]:
            bad += 1
            print("stream %d (seed %d) %s %s: fresh exit %d (%d bytes) %s | session exit %d (%d bytes) %s"
                  % (i, seed, " ".join(opts), desc, a[0], len(a[1]), a[2], b[0], len(b[1]), b[2]))
    print("# %d streams (%d ended in an error, equal in both), %d differed, %.1f s"
          % (done, errs, bad, time.time() - t0))
    sys.exit(1 if bad or done == 0 else 0)


main()
