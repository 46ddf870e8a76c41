#!/usr/bin/env python3
"""compare.py: the fixture checks of phi3-run's CUDA backend, driving bin/phi3-run over pipes.

  compare.py --bin DIR --fix DIR [--backend cuda] [--json FILE] [--log FILE]

References are tests/fixtures/*/reference.safetensors (transformers, float32). Checks:
logits within --tol (2e-2) relative L2 per position (tiny-longrope short/long, tiny-gqa-window
all); teacher-forced greedy agreement >= --agree (0.98) on cross (across the LongRoPE switch
at 64) and gen; a prompt split over two frames across the switch; a rewind back under the
switch; the flash kernel against the split-KV kernel (PHI3_CUDA_ATTN=decode); the CUDA
backend against the CPU backend on the same inputs; two identical runs. One line per check
on stdout ("PASS"/"FAIL"), results as JSON; exit 1 if any check fails."""
import argparse, json, math, os, sys, traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from phi3io import PhiRun, argmax, rel_l2, rows, st_tensor  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--fix", required=True)
ap.add_argument("--backend", default="cuda")
ap.add_argument("--ref-backend", default="cpu")
ap.add_argument("--tol", type=float, default=2e-2)
ap.add_argument("--agree", type=float, default=0.98)
ap.add_argument("--json")
ap.add_argument("--log")
a = ap.parse_args()

RUN = os.path.join(a.bin, "phi3-run")
LR = os.path.join(a.fix, "tiny-longrope")
GW = os.path.join(a.fix, "tiny-gqa-window")
LOG = open(a.log, "ab") if a.log else None
results = []


def check(name, value, limit, ok, note=""):
    results.append({"check": name, "value": value, "limit": limit, "ok": bool(ok), "note": note})
    v = "%.3g" % value if isinstance(value, float) else str(value)
    print("%-4s %-44s %-12s %-10s %s" % ("PASS" if ok else "FAIL", name, v, limit, note), flush=True)


def ref(model, name):
    shape, flat = st_tensor(os.path.join(model, "reference.safetensors"), name)
    return shape, flat


def all_logits(model, ids, backend=None, env=None):
    r = PhiRun(RUN, model, backend or a.backend, ["--all-logits"], env, LOG)
    out = r.step(ids, count=len(ids))
    rc = r.close()
    if rc != 0:
        raise RuntimeError("phi3-run exit %d" % rc)
    return [v for _, v in out]


def worst(got_rows, ref_rows):
    errs = [rel_l2(g, r) for g, r in zip(got_rows, ref_rows)]
    if len(got_rows) != len(ref_rows):
        return float("inf"), errs
    return max(errs), errs


def logits_case(name, model, ids_name, logits_name, pos_name=None, backend=None, env=None):
    _, ids = ref(model, ids_name)
    shape, flat = ref(model, logits_name)
    want = rows(flat, shape[1])
    got = all_logits(model, ids, backend, env)
    if pos_name:
        _, pos = ref(model, pos_name)
        got = [got[p] for p in pos]
    w, _ = worst(got, want)
    return w, got


def teacher_forced(model, prompt_name, greedy_name, steps_name, rewind=None):
    """Feed the prompt, then the reference greedy tokens one at a time; compare each step's
    argmax with the reference token and its logits with the reference step logits.
    rewind=(k): afterwards send greedy[k] at position len(prompt)+k (a rewind) and compare
    with step k+1."""
    _, prompt = ref(model, prompt_name)
    _, greedy = ref(model, greedy_name)
    shape, flat = ref(model, steps_name)
    steps = rows(flat, shape[1])
    r = PhiRun(RUN, model, a.backend, [], None, LOG)
    got = [r.step(prompt)[0][1]]
    for t in greedy[:-1]:
        got.append(r.step([t])[0][1])
    rw = None
    if rewind is not None:
        k = rewind
        pos, lg = r.step([greedy[k]], pos=len(prompt) + k)[0]
        rw = (pos, rel_l2(lg, steps[k + 1]), argmax(lg) == greedy[k + 1])
    rc = r.close()
    if rc != 0:
        raise RuntimeError("phi3-run exit %d" % rc)
    agree, notes = 0, []
    for i, (g, s) in enumerate(zip(got, steps)):
        am = argmax(g)
        if am == greedy[i]:
            agree += 1
        else:
            sd = math.sqrt(sum(x * x for x in s) / len(s) - (sum(s) / len(s)) ** 2)
            notes.append("step %d: got %d want %d (reference gap %.2g sd)"
                         % (i, am, greedy[i], (s[greedy[i]] - s[am]) / sd))
    w, _ = worst(got, steps)
    return agree / len(steps), w, notes, rw


def guarded(name, fn):
    try:
        fn()
    except Exception as e:  # a crash of one case must not hide the others
        traceback.print_exc(file=sys.stderr)
        check(name, float("nan"), "-", False, "error: %s" % str(e)[:160])


T = a.tol
got_cache = {}


def c_short():
    w, got = logits_case("short", LR, "short.ids", "short.logits")
    got_cache["short"] = got
    check("tiny-longrope short logits (24 pos, short)", w, "<= %g" % T, w <= T)


def c_long():
    w, got = logits_case("long", LR, "long.ids", "long.logits", "long.pos")
    got_cache["long"] = got
    check("tiny-longrope long logits (150, long)", w, "<= %g" % T, w <= T)


def c_all():
    w, got = logits_case("all", GW, "all.ids", "all.logits")
    got_cache["all"] = got
    check("tiny-gqa-window all logits (GQA, W=16)", w, "<= %g" % T, w <= T)


def c_cross():
    ag, w, notes, rw = teacher_forced(LR, "cross.prompt", "cross.greedy", "cross.step_logits",
                                      rewind=10)
    check("tiny-longrope cross greedy agreement", ag, ">= %g" % a.agree, ag >= a.agree,
          "; ".join(notes[:3]))
    check("tiny-longrope cross step logits", w, "<= %g" % T, w <= T)
    if rw:
        pos, e, am_ok = rw
        check("tiny-longrope rewind 79 -> 50 (long -> short)", e, "<= %g" % T, e <= T and am_ok and pos == 51,
              "pos %d, argmax %s" % (pos, "ok" if am_ok else "WRONG"))


def c_gen():
    ag, w, notes, _ = teacher_forced(GW, "gen.prompt", "gen.greedy", "gen.step_logits")
    check("tiny-gqa-window gen greedy agreement", ag, ">= %g" % a.agree, ag >= a.agree,
          "; ".join(notes[:3]))
    check("tiny-gqa-window gen step logits", w, "<= %g" % T, w <= T)


def c_split_frames():
    _, ids = ref(LR, "long.ids")
    shape, flat = ref(LR, "long.logits")
    _, pos = ref(LR, "long.pos")
    want = rows(flat, shape[1])[list(pos).index(149)]
    r = PhiRun(RUN, LR, a.backend, [], None, LOG)
    r.step(ids[:40])
    p, lg = r.step(ids[40:])[0]
    rc = r.close()
    e = rel_l2(lg, want)
    check("tiny-longrope 40 + 110 tokens (switch in prefill)", e, "<= %g" % T, e <= T and p == 150 and rc == 0)


def c_flash_vs_decode():
    for key, model, args in (("long", LR, ("long.ids", "long.logits", "long.pos")),
                             ("all", GW, ("all.ids", "all.logits", None))):
        w, got = logits_case(key, model, *args, env={"PHI3_CUDA_ATTN": "decode"})
        check("%s logits, split-KV kernel only" % key, w, "<= %g" % T, w <= T)
        if key in got_cache:
            d, _ = worst(got_cache[key], got)
            check("%s flash vs split-KV kernel" % key, d, "<= %g" % T, d <= T)


def c_cpu():
    for key, model, args in (("short", LR, ("short.ids", "short.logits")),
                             ("long", LR, ("long.ids", "long.logits", "long.pos")),
                             ("all", GW, ("all.ids", "all.logits"))):
        w, got = logits_case(key, model, *args, backend=a.ref_backend)
        check("%s logits, %s backend (reference)" % (key, a.ref_backend), w, "<= 1e-4", w <= 1e-4)
        if key in got_cache:
            d, _ = worst(got_cache[key], got)
            check("%s %s vs %s backend" % (key, a.backend, a.ref_backend), d, "<= %g" % T, d <= T)


def c_repeat():
    if "short" not in got_cache:
        return
    _, ids = ref(LR, "short.ids")
    again = all_logits(LR, ids)
    diff = max(abs(x - y) for g, h in zip(got_cache["short"], again) for x, y in zip(g, h))
    check("short logits, two runs identical", diff, "== 0", diff == 0.0)


def c_repeat_decode():
    """Decode steps (one token per frame: the fast path's kernels and graph) twice: every
    step's logits identical (no float atomics, no order that depends on timing)."""
    _, prompt = ref(GW, "gen.prompt")
    _, greedy = ref(GW, "gen.greedy")
    runs = []
    for _ in range(2):
        r = PhiRun(RUN, GW, a.backend, [], None, LOG)
        got = [r.step(prompt)[0][1]]
        for t in greedy[:-1]:
            got.append(r.step([t])[0][1])
        r.close()
        runs.append(got)
    diff = max(abs(x - y) for g, h in zip(*runs) for x, y in zip(g, h))
    check("gen step logits, two runs identical", diff, "== 0", diff == 0.0)


for name, fn in (("short", c_short), ("long", c_long), ("all", c_all), ("cross", c_cross),
                 ("gen", c_gen), ("split frames", c_split_frames),
                 ("flash vs split-KV", c_flash_vs_decode), ("cpu", c_cpu), ("repeat", c_repeat),
                 ("repeat decode", c_repeat_decode)):
    guarded(name, fn)

if a.json:
    with open(a.json, "w") as f:
        json.dump(results, f, indent=1)
bad = [r for r in results if not r["ok"]]
print("fixtures: %d checks, %d failed" % (len(results), len(bad)), flush=True)
sys.exit(1 if bad else 0)
