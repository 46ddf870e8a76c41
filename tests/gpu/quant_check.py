#!/usr/bin/env python3
"""quant_check.py: quantized GGUF weights on the CUDA backend (PHI3_CUDA_QUANT=1, opt-in;
issue 12) against the CPU backend on the same files, the CPU being the exact reference (its
logits equal those of the weights dequantized to float32, tests/70-gguf.bats).

Models: the GGUF files `tests/gpu/bench.sh --prepare` writes under DIR (a random 256-wide
Phi-3, every row whole 256-blocks, so the Q4_K_M mix has Q4_K, Q5_K and Q6_K tensors; an
original context of 64): Q8_0, Q4_0, Q4_K_M. The stream: a 40-token prompt with
--all-logits (the dequantize + cuBLAS prefill), then 30 one-token frames (the GEMV decode),
crossing the LongRoPE switch at 64. PASS when every position's logits are within --tol
(2e-2, the fixtures' CUDA tolerance) relative L2 of the CPU's and the argmax agrees at 90%
of the positions or more.

--full MODEL_DIR (optional, when time is left): quantize that bf16 model to Q4_K_M here
(every core) and time decode on the CUDA backend, bf16 directory vs the Q4_K_M file
(phi3-run --stats, 512-token prompt, 64 steps): the issue's ">= 2.5x our bf16 decode".
Prints one line per check (PASS/FAIL/INFO); exit 1 on a FAIL."""
import argparse, os, random, re, subprocess, sys, time

import numpy as np
import msgpack

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--dir", required=True)
ap.add_argument("--tol", type=float, default=2e-2)
ap.add_argument("--full", default="")
ap.add_argument("--deadline", type=float, default=0)
a = ap.parse_args()
bad = 0
r = random.Random(11)
prompt = [1] + [r.randrange(3, 500) for _ in range(39)]
steps = [r.randrange(3, 500) for _ in range(30)]
stream = msgpack.packb({"type": "tokens", "ids": prompt}) + b"".join(
    msgpack.packb({"type": "tokens", "ids": [t]}) for t in steps)


def logits(model, backend, env):
    e = dict(os.environ)
    e.update(env)
    p = subprocess.run([os.path.join(a.bin, "phi3-run"), "--backend", backend, "-m", model, "-q",
                        "--all-logits"], input=stream, capture_output=True, env=e, timeout=120)
    if p.returncode:
        raise RuntimeError("%s %s: exit %d: %s" % (backend, model, p.returncode, p.stderr.decode()[-300:]))
    up = msgpack.Unpacker(raw=False)
    up.feed(p.stdout)
    return np.stack([np.frombuffer(f["data"], "<f4") for f in up if f.get("type") == "logits"])


for t in ("Q8_0", "Q4_0", "Q4_K_M"):
    model = os.path.join(a.dir, "k256-%s.gguf" % t)
    try:
        ref = logits(model, "cpu", {})
        got = logits(model, "cuda", {"PHI3_CUDA_QUANT": "1"})
    except Exception as ex:  # a crash or refusal is a FAIL with its message
        print("FAIL quant %s: %s" % (t, ex))
        bad += 1
        continue
    if ref.shape != got.shape:
        print("FAIL quant %s: %s logits frames on the CPU, %s on CUDA" % (t, ref.shape, got.shape))
        bad += 1
        continue
    rel = np.linalg.norm(ref - got, axis=1) / np.linalg.norm(ref, axis=1)
    agree = float(np.mean(ref.argmax(1) == got.argmax(1)))
    ok = bool(np.all(np.isfinite(got))) and rel.max() <= a.tol and agree >= 0.9
    bad += not ok
    print("%s quant %s: %d positions, max rel L2 %.2e (prefill %.2e, decode %.2e), argmax %.0f%%"
          % ("PASS" if ok else "FAIL", t, len(rel), rel.max(), rel[:40].max(), rel[40:].max(), 100 * agree))

if a.full and (not a.deadline or time.time() < a.deadline - 240):
    q = os.path.join(a.dir, "full-Q4_K_M.gguf")
    t0 = time.time()
    subprocess.run([os.path.join(a.bin, "phi3-quantize"), "-q", "-t", "Q4_K_M", a.full, q], check=True)
    print("INFO quant full: Q4_K_M written in %.0f s" % (time.time() - t0))
    rr = random.Random(512)
    s = msgpack.packb({"type": "tokens", "ids": [rr.randrange(32000) for _ in range(512)]}) + b"".join(
        msgpack.packb({"type": "tokens", "ids": [rr.randrange(32000)]}) for _ in range(64))
    rates = {}
    for name, m in (("bf16", a.full), ("Q4_K_M", q)):
        p = subprocess.run([os.path.join(a.bin, "phi3-run"), "--backend", "cuda", "-m", m, "-q", "--stats",
                            "--ctx", "600"], input=s, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env=dict(os.environ, PHI3_CUDA_QUANT="1"), timeout=300)
        mm = re.search(r"prefill ([0-9.]+) s \(1 frames\), decode ([0-9.]+) s \(([0-9]+) tokens", p.stderr.decode())
        if p.returncode or not mm:
            print("FAIL quant full %s: exit %d %s" % (name, p.returncode, p.stderr.decode()[-200:]))
            bad += 1
            continue
        rates[name] = (512 / float(mm.group(1)), int(mm.group(3)) / float(mm.group(2)))
        print("INFO quant full %s: prefill 512 %.0f tok/s, decode %.1f tok/s" % ((name,) + rates[name]))
    if len(rates) == 2:
        print("INFO quant full: Q4_K_M decode %.2fx bf16 (target >= 2.5x), prefill %.2fx"
              % (rates["Q4_K_M"][1] / rates["bf16"][1], rates["Q4_K_M"][0] / rates["bf16"][0]))
sys.exit(1 if bad else 0)
