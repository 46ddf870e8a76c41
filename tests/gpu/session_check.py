"""session_check.py: the CUDA backend with --session (upload of the reused prefix, write
back of new rows). A 40-token prompt of tiny-longrope through a fresh session, then the
prompt + 30 greedy tokens (crossing the LongRoPE switch at 64) through the same session:
the second run must reuse the first 40 positions (its --stats line) and give logits within
the stated tolerance of a run without a session. Prints PASS/FAIL lines; exit 1 on a FAIL."""
import argparse, os, re, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from phi3io import argmax, rel_l2, st_tensor  # noqa: E402
import msgpack, struct  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--fix", required=True)
ap.add_argument("--tol", type=float, default=2e-2)
a = ap.parse_args()
model = os.path.join(a.fix, "tiny-longrope")
ref = os.path.join(model, "reference.safetensors")
prompt = list(st_tensor(ref, "cross.prompt")[1])
greedy = list(st_tensor(ref, "cross.greedy")[1])
name = "phi3gpucheck-%d" % os.getpid()
run = os.path.join(a.bin, "phi3-run")


def phi3_run(ids, session):
    cmd = [run, "-m", model, "--backend", "cuda", "-q", "--stats"]
    if session:
        cmd += ["--session", name]
    p = subprocess.run(cmd, input=msgpack.packb({"type": "tokens", "ids": ids}),
                       capture_output=True, timeout=120)
    up = msgpack.Unpacker(raw=False)
    up.feed(p.stdout)
    frames = [f for f in up if f.get("type") == "logits"]
    if p.returncode != 0 or not frames:
        raise RuntimeError("phi3-run exit %d: %s" % (p.returncode, p.stderr.decode()[-300:]))
    d = frames[-1]["data"]
    return struct.unpack("<%df" % (len(d) // 4), d), p.stderr.decode()


fails = 0


def check(label, ok, value):
    global fails
    print("%s %-55s %s" % ("PASS" if ok else "FAIL", label, value))
    fails += 0 if ok else 1


try:
    subprocess.run([run, "--session-rm", name], capture_output=True)
    first, _ = phi3_run(prompt, True)
    fresh40, _ = phi3_run(prompt, False)
    e = rel_l2(first, fresh40)
    check("cuda session: first run vs no session (40 tokens)", e <= a.tol, "%.3g" % e)
    longer = prompt + greedy[:30]
    again, stats = phi3_run(longer, True)
    m = re.search(r"reused (\d+)", stats)
    reused = int(m.group(1)) if m else -1
    # the context crosses 64: positions computed with the short factors cannot be reused
    check("cuda session: second run's --stats says reused", m is not None, "reused %d" % reused)
    fresh70, _ = phi3_run(longer, False)
    e = rel_l2(again, fresh70)
    check("cuda session: 70 tokens (across 64) vs no session", e <= a.tol and argmax(again) == argmax(fresh70),
          "%.3g" % e)
    short2 = prompt + greedy[:10]
    subprocess.run([run, "--session-rm", name], capture_output=True)
    phi3_run(prompt, True)                       # a fresh session of 40 (short factors)
    b, stats = phi3_run(short2, True)
    m = re.search(r"reused (\d+)", stats)
    fresh50, _ = phi3_run(short2, False)
    e = rel_l2(b, fresh50)
    check("cuda session: 50 tokens reusing 40 (short factors)",
          m is not None and int(m.group(1)) == 40 and e <= a.tol, "reused %s, %.3g" % (m and m.group(1), e))
finally:
    subprocess.run([run, "--session-rm", name], capture_output=True)
sys.exit(1 if fails else 0)
