#!/usr/bin/env python3
"""full_model.py: stages 4 and 5 of tests/gpu/check.sh on a full-size random-weight
Phi-3-mini-128k (real config, random bf16 weights; random weights do the same work):

  copy    device-to-device copy bandwidth with torch (bytes read + written)
  gen     write the model directory (2 shards + index + the real config.json), once
  run     one phi3-run --backend cuda process: last-position logits of a 300-token and a
          5,000-token prompt (long factors), then decode (512-token prompt, 256 greedy
          tokens fed back one frame at a time, wall clock per token through the pipes)
          and prefill (4,096 and 32,768 tokens in one frame, time to the logits)
  hf      transformers float32 on the same GPU: the same two prompts; relative L2 of the
          last-position logits and top-1 agreement
  peer    the same transformers model in bf16 (eager PyTorch + SDPA): prefill 4,096 and
          decode after a 512-token prompt (64 tokens), for the table

Needs torch, transformers, numpy, msgpack, safetensors. Results: --json (rewritten after
every part, so a timeout keeps what was done). Parts past --deadline (epoch s) are skipped."""
import argparse, gc, json, os, shutil, struct, sys, time, traceback

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from phi3io import PhiRun  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--bin", required=True)
ap.add_argument("--config", required=True)
ap.add_argument("--dir", default="/tmp/phi3-mini-rand")
ap.add_argument("--json", required=True)
ap.add_argument("--log")
ap.add_argument("--deadline", type=float, default=0)
ap.add_argument("--decode-tokens", type=int, default=256)
ap.add_argument("--peer-tokens", type=int, default=64)
ap.add_argument("--parts", default="copy,gen,run,hf,peer")
ap.add_argument("--timing", type=int, default=1,
                help="0: the run part only takes the logits (tests/gpu/bench.sh does the timings)")
a = ap.parse_args()
parts = a.parts.split(",")
R = {"device": torch.cuda.get_device_name(0)}
LOG = open(a.log, "ab") if a.log else None
cfg = json.load(open(a.config))


def save():
    with open(a.json, "w") as f:
        json.dump(R, f, indent=1)


def log(*x):
    print("full_model:", *x, flush=True)


def time_left():
    return a.deadline - time.time() if a.deadline else 1e9


def part(name, fn, need_s=0):
    if name not in parts:
        return
    if time_left() < need_s:
        R[name + "_skipped"] = "less than %d s left" % need_s
        log("skip", name, R[name + "_skipped"])
        save()
        return
    t = time.time()
    try:
        fn()
    except Exception as e:
        traceback.print_exc()
        R[name + "_error"] = repr(e)[:300]
    R[name + "_s"] = round(time.time() - t, 1)
    log(name, "done in", R[name + "_s"], "s")
    torch.cuda.empty_cache()
    save()


def rand_ids(n, seed):
    g = np.random.default_rng(seed)
    return g.integers(3, 32000, size=n).tolist()


IDS = {"p200": rand_ids(200, 6), "p300": rand_ids(300, 1), "p5000": rand_ids(5000, 2), "p512": rand_ids(512, 3),
       "p4096": rand_ids(4096, 4), "p32768": rand_ids(32768, 5)}


# ---- copy bandwidth ----
def p_copy():
    buf = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    buf.random_(0, 255)
    dst = torch.empty_like(buf)
    for _ in range(3):
        dst.copy_(buf)
    ts = []
    for _ in range(5):
        e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True)
        e0.record()
        for _ in range(5):
            dst.copy_(buf)
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1) / 1e3 / 5)
    ts.sort()
    R["copy_TBps"] = round(2 * buf.numel() / ts[len(ts) // 2] / 1e12, 3)
    del buf, dst


# ---- model directory ----
def shapes():
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = H // nh
    out = [("model.embed_tokens.weight", (V, H))]
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        out += [(p + "input_layernorm.weight", (H,)),
                (p + "self_attn.qkv_proj.weight", ((nh + 2 * nkv) * hd, H)),
                (p + "self_attn.o_proj.weight", (H, nh * hd)),
                (p + "post_attention_layernorm.weight", (H,)),
                (p + "mlp.gate_up_proj.weight", (2 * I, H)),
                (p + "mlp.down_proj.weight", (H, I))]
    out += [("model.norm.weight", (H,)), ("lm_head.weight", (V, H))]
    return out


def p_gen():
    from safetensors.torch import save_file
    done = os.path.join(a.dir, ".complete")
    if os.path.exists(done):
        R["gen_reused"] = True
        return
    shutil.rmtree(a.dir, ignore_errors=True)
    os.makedirs(a.dir)
    torch.manual_seed(1234)
    sh = shapes()
    half = len(sh) // 2
    wmap, total = {}, 0
    for k, names in enumerate((sh[:half], sh[half:])):
        fn = "model-%05d-of-00002.safetensors" % (k + 1)
        td = {}
        for name, shape in names:
            if len(shape) == 1:   # norm weights near 1, matrices N(0, initializer_range)
                t = 1.0 + 0.1 * torch.randn(shape, device="cuda", dtype=torch.float32)
            else:
                t = cfg.get("initializer_range", 0.02) * torch.randn(shape, device="cuda", dtype=torch.float32)
            td[name] = t.to(torch.bfloat16).cpu()
            wmap[name] = fn
            total += td[name].numel() * 2
        save_file(td, os.path.join(a.dir, fn), metadata={"format": "pt"})
        del td
    with open(os.path.join(a.dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f)
    shutil.copy(a.config, os.path.join(a.dir, "config.json"))
    open(done, "w").close()
    R["weight_bytes"] = total


def weight_bytes():
    if "weight_bytes" not in R:
        idx = json.load(open(os.path.join(a.dir, "model.safetensors.index.json")))
        R["weight_bytes"] = idx["metadata"]["total_size"]
    return R["weight_bytes"]


# ---- phi3-run ----
OURS = {}


def as_np(raw):
    return np.frombuffer(raw, dtype="<f4").copy()


def decode_timing(run, n):
    """512-token prompt, then n greedy tokens fed back one frame at a time: median wall
    clock per token (send -> logits frame received), after 8 warm-up steps."""
    lg = run.step(IDS["p512"], pos=0)[0][1]
    tok = int(np.argmax(np.asarray(lg, dtype=np.float32)))
    ts = []
    for i in range(n):
        t = time.perf_counter()
        run.send([tok])
        while True:
            f = run.frame()
            if f.get("type") == "logits":
                break
        ts.append(time.perf_counter() - t)
        tok = int(np.argmax(as_np(f["data"])))
    body = ts[8:] if len(ts) > 16 else ts
    return float(np.median(body)), float(np.mean(body)), len(ts)


def p_run():
    run = PhiRun(os.path.join(a.bin, "phi3-run"), a.dir, "cuda", ["--ctx", "33280"], None, LOG)
    t = time.time()
    run.step([1, 2, 3], pos=0)                       # load + warm-up
    R["ours_load_s"] = round(time.time() - t, 2)
    for key in ("p300", "p5000"):
        t = time.perf_counter()
        pos, lg = run.step(IDS[key], pos=0)[0]
        OURS[key] = np.asarray(lg, dtype=np.float32)
        R["ours_%s_s" % key] = round(time.perf_counter() - t, 3)
    save()
    if not a.timing:
        R["ours_exit"] = run.close()
        return
    med, mean, cnt = decode_timing(run, a.decode_tokens)
    R["ours_decode_ms_median"] = round(med * 1e3, 3)
    R["ours_decode_ms_mean"] = round(mean * 1e3, 3)
    R["ours_decode_tok_s"] = round(1.0 / med, 1)
    R["ours_decode_tokens"] = cnt
    save()
    for key, reps in (("p4096", 2), ("p32768", 1)):
        if time_left() < (60 if key == "p32768" else 20):
            R["ours_prefill_%s_skipped" % key] = "deadline"
            continue
        best = []
        for _ in range(reps):
            t = time.perf_counter()
            run.step(IDS[key], pos=0)
            best.append(time.perf_counter() - t)
        s = best[-1]                                    # the last (warm) run
        R["ours_prefill_%s_s" % key[1:]] = round(s, 3)
        R["ours_prefill_%s_tok_s" % key[1:]] = round(len(IDS[key]) / s, 1)
        save()
    R["ours_exit"] = run.close()
    if time_left() > 150:
        # the same decode with bf16-only inputs to the products (no hi + lo split)
        run = PhiRun(os.path.join(a.bin, "phi3-run"), a.dir, "cuda", ["--ctx", "4096"],
                     {"PHI3_CUDA_SPLIT_MAX": "0"}, LOG)
        med, _, _ = decode_timing(run, 64)
        R["ours_decode_nosplit_tok_s"] = round(1.0 / med, 1)
        R["ours_nosplit_exit"] = run.close()


OURS_FAST = {}


def p_runfast():
    """The last-position logits of the two prompts on the opt-in fast path."""
    run = PhiRun(os.path.join(a.bin, "phi3-run"), a.dir, "cuda", ["--ctx", "8192"],
                 {"PHI3_CUDA_FAST": "1"}, LOG)
    for key in ("p300", "p5000"):
        pos, lg = run.step(IDS[key], pos=0)[0]
        OURS_FAST[key] = np.asarray(lg, dtype=np.float32)
    R["ours_fast_exit"] = run.close()


# ---- transformers ----
HF = {}


def load_hf(dtype):
    """The transformers model built on the GPU from the directory's config, then filled
    with the directory's tensors (every parameter must be covered)."""
    import glob
    from safetensors.torch import load_file
    from transformers import Phi3Config, Phi3ForCausalLM
    cfg = Phi3Config.from_pretrained(a.dir)
    try:
        cfg._attn_implementation = "sdpa"
    except Exception as e:
        log("attn implementation:", e)
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda"):
            m = Phi3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    want = set(m.state_dict().keys())
    seen, unexpected = set(), set()
    for shard in sorted(glob.glob(os.path.join(a.dir, "*.safetensors"))):
        sd = load_file(shard, device="cuda")
        r = m.load_state_dict(sd, strict=False)
        seen |= set(sd.keys())
        unexpected |= set(r.unexpected_keys)
        del sd
    missing = sorted(want - seen)
    if missing or unexpected:
        raise RuntimeError("state dict mismatch: missing %s, unexpected %s"
                           % (missing[:5], sorted(unexpected)[:5]))
    return m.eval()


@torch.no_grad()
def hf_last_logits(m, ids):
    x = torch.tensor([ids], device="cuda")
    try:
        out = m(input_ids=x, use_cache=False, logits_to_keep=1)
    except TypeError:
        out = m(input_ids=x, use_cache=False)
    return out.logits[0, -1].float().cpu().numpy()


def p_hf():
    torch.backends.cuda.matmul.allow_tf32 = False   # float32 means float32
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    t = time.time()
    HF["model"] = load_hf(torch.float32)
    R["hf_load_s"] = round(time.time() - t, 1)
    rp = getattr(HF["model"].config, "rope_parameters", None) or getattr(HF["model"].config, "rope_scaling", None)
    R["hf_rope"] = str(rp.get("rope_type", rp.get("type")) if isinstance(rp, dict) else rp)
    for key in ("p300", "p5000"):
        ref = hf_last_logits(HF["model"], IDS[key])
        if key not in OURS:
            R["cmp_%s" % key] = "no phi3-run logits"
            continue
        ours = OURS[key]
        rel = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
        R["cmp_%s_rel_l2" % key] = round(rel, 5) if np.isfinite(rel) else str(rel)
        R["cmp_%s_top1" % key] = int(np.argmax(ours)) == int(np.argmax(ref))
        R["cmp_%s_ref_gap_sd" % key] = round(float((ref.max() - ref[int(np.argmax(ours))]) / ref.std()), 4)
        top5 = set(np.argsort(-ref)[:5].tolist())
        R["cmp_%s_top5_overlap" % key] = len(top5 & set(np.argsort(-ours)[:5].tolist()))
        if key in OURS_FAST:
            f = OURS_FAST[key]
            rel = float(np.linalg.norm(f - ref) / np.linalg.norm(ref))
            R["cmpfast_%s_rel_l2" % key] = round(rel, 5) if np.isfinite(rel) else str(rel)
            R["cmpfast_%s_top1" % key] = int(np.argmax(f)) == int(np.argmax(ref))
        save()


def p_dec32():
    """Full-size decode check: a 200-token prompt, then 32 one-token frames fed
    transformers' (float32) greedy ids; every step's logits compared (33 positions), for
    the default, the fast and the fast + PDL path. Teacher-forced argmax agreement is reported with the
    reference gap (in standard deviations) of each disagreement."""
    m = HF["model"]
    prompt = IDS["p200"]
    with torch.no_grad():
        out = m(input_ids=torch.tensor([prompt], device="cuda"), use_cache=True)
        past = out.past_key_values
        ref = [out.logits[0, -1].float().cpu().numpy()]
        ids = []
        for _ in range(32):
            ids.append(int(np.argmax(ref[-1])))
            out = m(input_ids=torch.tensor([[ids[-1]]], device="cuda"), past_key_values=past,
                    use_cache=True)
            past = out.past_key_values
            ref.append(out.logits[0, -1].float().cpu().numpy())
    for path, env in (("default", {}), ("fast", {"PHI3_CUDA_FAST": "1"}),
                      ("pdl", {"PHI3_CUDA_FAST": "2"})):
        run = PhiRun(os.path.join(a.bin, "phi3-run"), a.dir, "cuda", ["--ctx", "512"], env, LOG)
        got = [np.asarray(run.step(prompt, pos=0)[0][1], dtype=np.float32)]
        for t in ids:
            got.append(np.asarray(run.step([t])[0][1], dtype=np.float32))
        R["dec32_%s_exit" % path] = run.close()
        rels = [float(np.linalg.norm(g - r) / np.linalg.norm(r)) for g, r in zip(got, ref)]
        R["dec32_%s_max_rel_l2" % path] = round(max(rels), 5) if all(np.isfinite(rels)) else "nan"
        R["dec32_%s_mean_rel_l2" % path] = round(float(np.mean(rels)), 5)
        agree, gaps = 0, []
        for i, t in enumerate(ids):
            am = int(np.argmax(got[i]))
            if am == t:
                agree += 1
            else:
                gaps.append(round(float((ref[i][t] - ref[i][am]) / ref[i].std()), 4))
        R["dec32_%s_agree" % path] = round(agree / len(ids), 4)
        R["dec32_%s_mismatch_gaps_sd" % path] = gaps
        save()


def p_peer():
    if "model" not in HF:
        HF["model"] = load_hf(torch.bfloat16)
    else:
        HF["model"] = HF["model"].to(torch.bfloat16)
    m = HF["model"]
    gc.collect()
    torch.cuda.empty_cache()

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

    with torch.no_grad():
        x = torch.tensor([IDS["p4096"]], device="cuda")
        fwd = lambda: m(input_ids=x, use_cache=True, logits_to_keep=1)   # noqa: E731
        fwd()
        s = timed(fwd, 2)
        R["peer_prefill_4096_s"] = round(s, 3)
        R["peer_prefill_4096_tok_s"] = round(4096 / s, 1)
        save()
        x = torch.tensor([IDS["p512"]], device="cuda")
        kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
        n = a.peer_tokens
        m.generate(x, max_new_tokens=4, min_new_tokens=4, **kw)
        t1 = timed(lambda: m.generate(x, max_new_tokens=1, min_new_tokens=1, **kw), 2)
        tn = timed(lambda: m.generate(x, max_new_tokens=n + 1, min_new_tokens=n + 1, **kw), 1)
        R["peer_decode_ms"] = round((tn - t1) / n * 1e3, 3)
        R["peer_decode_tok_s"] = round(n / (tn - t1), 2)
        save()


part("copy", p_copy)
part("gen", p_gen)
weight_bytes()
part("run", p_run, need_s=40)
part("runfast", p_runfast, need_s=30)
part("hf", p_hf, need_s=40)
part("dec32", p_dec32, need_s=30)
part("peer", p_peer, need_s=30)
if "copy_TBps" in R:
    floor = R["copy_TBps"] * 1e12 / weight_bytes()
    R["decode_floor_tok_s"] = round(floor, 1)
    for k in ("ours_decode_tok_s", "peer_decode_tok_s"):
        if k in R:
            R[k.replace("_tok_s", "_fraction_of_floor")] = round(R[k] / floor, 3)
save()
log(json.dumps(R))
