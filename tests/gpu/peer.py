#!/usr/bin/env python3
"""peer.py: the transformers peer of tests/gpu/bench.sh on the same card in the same run
(the logic of ../shared/tools/hf_baseline.py and hf_compiled.py, copied here because the
team folder does not travel to the GPU machine). Full-size Phi-3-mini-128k from the real
config, randomly initialised in bf16 on the GPU (random weights do the same work):

  eager     eager PyTorch + SDPA: prefill of each --prefills length (time to the last
            logits, median), decode at each --contexts length (generate with n + 1 tokens
            minus generate with 1, per token)
  compiled  static cache + torch.compile (CUDA graphs) decode after a 512-token prompt,
            where the deadline allows (the compilation alone takes a minute or more)

Writes --json after every figure (a timeout keeps the rest). Needs torch + transformers."""
import argparse, json, os, shutil, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--config", required=True)
ap.add_argument("--json", required=True)
ap.add_argument("--prefills", default="512,4096,32768")
ap.add_argument("--contexts", default="512,4096,32768")
ap.add_argument("--decode-tokens", type=int, default=32)
ap.add_argument("--long", type=int, default=0, help="also prefill this many tokens (131072)")
ap.add_argument("--compiled", type=int, default=1)
ap.add_argument("--deadline", type=float, default=0)
a = ap.parse_args()

import torch  # noqa: E402
from transformers import Phi3Config, Phi3ForCausalLM  # noqa: E402

R = {}
if os.path.exists(a.json):                      # a second call (compiled) adds to the first
    try:
        R = json.load(open(a.json))
    except ValueError:
        R = {}
R.update({"device": torch.cuda.get_device_name(0), "torch": torch.__version__})


def save():
    with open(a.json, "w") as f:
        json.dump(R, f, indent=1, sort_keys=True)


def left():
    return a.deadline - time.time() if a.deadline else 1e9


def log(*x):
    print("peer:", *x, flush=True)


def timed(fn, reps):
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


cdir = tempfile.mkdtemp(prefix="phi3-peer-")          # from_pretrained wants a config.json
shutil.copy(a.config, os.path.join(cdir, "config.json"))
cfg = Phi3Config.from_pretrained(cdir)
try:
    cfg._attn_implementation = "sdpa"
except Exception as e:  # noqa: BLE001
    log("attn implementation:", e)
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
with torch.device("cuda"):
    model = Phi3ForCausalLM(cfg).eval()
torch.set_default_dtype(torch.float32)
R["params"] = sum(p.numel() for p in model.parameters())
save()
kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)

with torch.no_grad():
    def prefill(T):
        x = torch.randint(3, 32000, (1, T), device="cuda")
        return lambda: model(input_ids=x, use_cache=True, logits_to_keep=1)

    prefill(64)()
    ns = [int(n) for n in a.prefills.split(",") if n] + ([a.long] if a.long else [])
    for T in ns:
        need = 5 + (T / 32768) ** 2 * 3
        if left() < need:
            R["eager_prefill_%d_skipped" % T] = "deadline"
            continue
        try:
            R["eager_prefill_%d_s" % T] = round(timed(prefill(T), 3 if T <= 4096 else 1), 4)
        except Exception as e:  # noqa: BLE001
            R["eager_prefill_%d_error" % T] = repr(e)[:200]
        torch.cuda.empty_cache()
        save()
        log("prefill", T, R.get("eager_prefill_%d_s" % T))
    n = a.decode_tokens
    for C in [int(c) for c in a.contexts.split(",") if c]:
        if left() < 15 + C / 4000:
            R["eager_decode_%d_skipped" % C] = "deadline"
            continue
        try:
            x = torch.randint(3, 32000, (1, C), device="cuda")
            model.generate(x, max_new_tokens=2, min_new_tokens=2, **kw)
            t1 = timed(lambda: model.generate(x, max_new_tokens=1, min_new_tokens=1, **kw), 1)
            tn = timed(lambda: model.generate(x, max_new_tokens=n + 1, min_new_tokens=n + 1, **kw), 1)
            R["eager_decode_%d_ms" % C] = round((tn - t1) / n * 1e3, 3)
        except Exception as e:  # noqa: BLE001
            R["eager_decode_%d_error" % C] = repr(e)[:200]
        torch.cuda.empty_cache()
        save()
        log("decode", C, R.get("eager_decode_%d_ms" % C))
    if a.compiled and left() > 150:
        try:
            x = torch.randint(3, 32000, (1, 512), device="cuda")
            kc = dict(kw, cache_implementation="static")
            t = time.perf_counter()
            model.generate(x, max_new_tokens=16, min_new_tokens=16, **kc)
            torch.cuda.synchronize()
            R["compiled_first_call_s"] = round(time.perf_counter() - t, 1)
            save()
            t1 = timed(lambda: model.generate(x, max_new_tokens=1, min_new_tokens=1, **kc), 3)
            tn = timed(lambda: model.generate(x, max_new_tokens=n + 1, min_new_tokens=n + 1, **kc), 2)
            R["compiled_decode_512_ms"] = round((tn - t1) / n * 1e3, 3)
        except Exception as e:  # noqa: BLE001
            R["compiled_decode_512_error"] = repr(e)[:200]
        save()
        log("compiled decode 512", R.get("compiled_decode_512_ms"))
    elif a.compiled:
        R["compiled_decode_512_skipped"] = "less than 150 s left"
save()
log(json.dumps(R))
