#!/usr/bin/env python3
"""bench.py: the driver of tests/gpu/bench.sh (issue 10 item 1). Pure Python + msgpack, so the
same code runs in the CPU dry run (tests/61-gpu-scripts.bats) and on the GPU machine.

Parts (each adds to --json, rewritten after every measurement, so a later part's timeout
keeps what the earlier ones measured):

  run     per path (default, fast) and context C: one phi3-run process on a prepared stream
          (a prompt frame of C tokens, again at pos 0 when C <= 4096 so that a warm prefill
          is timed, then N one-token frames; no Python in the loop: the stream is a file).
          With the CUDA backend, PHI3_CUDA_TIMING=1 gives per decode step the GPU time
          (CUDA events), the time in forward and the interval between consecutive steps
          (= phi3-run's own wall time per token), and the GPU time of each prefill. Without
          it (CPU backend) --stats gives the decode time per token and the prefill time.
          One more short process per path with PHI3_CUDA_TIMING=2: the per-op timeline.
  loop    per path: the FIFO loop (prompt | phi3-run | phi3-sample --greedy -n N | tee FIFO)
          at context 512, then phi3-run alone on the loop's ids as a prepared stream; the
          loop must reproduce them; overhead per token = loop interval - alone interval.
  long    per path: one prefill of --long tokens (131072), if the deadline allows.
  table   the table (markdown, also on stdout): each figure beside its floor; decode:
          (weights read per token, embedding excluded, + KV bytes of the context) / read
          bandwidth; prefill: FLOPs / bf16 GEMM rate; the transformers peer (peer.json).

The ceilings come from --ceilings (gpu_bench's JSON: read_TBps, gemm_TFLOPs); model facts
from the model's config.json."""
import argparse, json, os, random, re, shlex, subprocess, sys, time

import msgpack

ap = argparse.ArgumentParser()
ap.add_argument("part", choices=["run", "loop", "long", "table", "facts", "parse"])
ap.add_argument("--bin", default="bin")
ap.add_argument("--model")
ap.add_argument("--backend", default="cuda")
ap.add_argument("--out", default="/tmp/phi3-bench")
ap.add_argument("--json", help="results (default OUT/bench.json)")
ap.add_argument("--paths", default="default,fast", help="of default, fast, pdl")
ap.add_argument("--contexts", default="512,4096,32768")
ap.add_argument("--decode-tokens", type=int, default=64)
ap.add_argument("--loop-tokens", type=int, default=128)
ap.add_argument("--loop-context", type=int, default=512)
ap.add_argument("--long", type=int, default=131072)
ap.add_argument("--ceilings", help="gpu_bench JSON (read_TBps, gemm_TFLOPs)")
ap.add_argument("--peer", help="peer.py JSON")
ap.add_argument("--deadline", type=float, default=0, help="epoch seconds; parts past it skip")
ap.add_argument("--kv-bytes", type=int, default=0,
                help="bytes per cached K or V element (default: 2 on cuda, 4 on cpu)")
ap.add_argument("file", nargs="?", help="parse: a phi3-run stderr log")
a = ap.parse_args()
os.makedirs(a.out, exist_ok=True)
JSON = a.json or os.path.join(a.out, "bench.json")
PATHS = [p for p in a.paths.split(",") if p]
CONTEXTS = [int(c) for c in a.contexts.split(",") if c]
PATH_ENV = {"default": {}, "fast": {"PHI3_CUDA_FAST": "1"},
            "pdl": {"PHI3_CUDA_FAST": "2"}}          # fast + programmatic dependent launch


def log(*x):
    print("bench:", *x, file=sys.stderr, flush=True)


def load_json(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


R = load_json(JSON, {})


def save():
    tmp = JSON + ".tmp"
    with open(tmp, "w") as f:
        json.dump(R, f, indent=1, sort_keys=True)
    os.replace(tmp, JSON)


def time_left():
    return a.deadline - time.time() if a.deadline else 1e9


# ---- the model: bytes and FLOPs ----

def facts(model_dir):
    c = load_json(os.path.join(model_dir, "config.json"), None)
    if c is None:
        raise SystemExit("bench: no config.json in %s" % model_dir)
    H, I, V, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    nh = c["num_attention_heads"]
    nkv = c.get("num_key_value_heads") or nh
    hd = H // nh
    layer_mat = (nh + 2 * nkv) * hd * H + H * nh * hd + 2 * I * H + H * I   # elements
    tied = bool(c.get("tie_word_embeddings", False))
    kvb = a.kv_bytes or (2 if a.backend == "cuda" else 4)
    return {
        "hidden": H, "layers": L, "heads": nh, "kv_heads": nkv, "head_dim": hd, "vocab": V,
        # decode reads every layer matrix, the norms (float32 on the GPU: 4 bytes; counted
        # as 2 here, the file's bf16, a rounding error of 0.003%) and lm_head; not the
        # embedding table (one row)
        "weight_bytes_per_token": 2 * (L * (layer_mat + 2 * H) + H + V * H) + 2 * H,
        "weight_bytes_total": 2 * (L * (layer_mat + 2 * H) + H + V * H * (1 if tied else 2)),
        "kv_bytes_per_position": L * 2 * nkv * hd * kvb,
        "kv_element_bytes": kvb,
        # prefill of n tokens: 2 FLOP per weight element per token for the layers, one row
        # of logits, and causal attention 2 * (n^2 / 2) * hd * nh * 2 = 2 n^2 H per layer
        "flop_per_token_layers": 2 * L * layer_mat,
        "flop_logits_row": 2 * V * H,
        "flop_attn_coeff": 2 * L * nh * hd,
    }


def prefill_flop(F, n):
    return F["flop_per_token_layers"] * n + F["flop_logits_row"] + F["flop_attn_coeff"] * n * n


# ---- streams ----

def tokens(ids, pos=None):
    f = {"type": "tokens", "ids": [int(i) for i in ids]}
    if pos is not None:
        f["pos"] = int(pos)
    return msgpack.packb(f, use_bin_type=True)


def rand_ids(n, seed, vocab):
    g = random.Random(seed)
    hi = min(vocab, 32000) - 1
    return [g.randint(3, hi) for _ in range(n)]


def decode_stream(path, ctx, n, vocab, warm_prefill):
    """A prompt of ctx tokens (twice, the second at pos 0, when warm_prefill), then n
    one-token frames. Returns the number of frames written."""
    prompt = rand_ids(ctx, ctx, vocab)
    frames = [tokens(prompt, 0)] + ([tokens(prompt, 0)] if warm_prefill else [])
    frames += [tokens([i]) for i in rand_ids(n, ctx + 1, vocab)]
    with open(path, "wb") as f:
        f.write(b"".join(frames))
    return len(frames)


# ---- phi3-run's stderr ----

NUM = r"(-?[0-9.]+)"
RE_DEC = re.compile(r"cuda timing: decode ctx (\d+)\.\.(\d+) steps (\d+) path (\S+): gpu ms median "
                    + NUM + " p10 " + NUM + " p90 " + NUM + "; forward ms median " + NUM
                    + "; interval ms median " + NUM + " p10 " + NUM + " p90 " + NUM)
RE_PRE = re.compile(r"cuda timing: prefill n (\d+) at pos (\d+) path (\S+): gpu ms " + NUM
                    + "; forward ms " + NUM)
RE_TL = re.compile(r"cuda timeline: decode ctx (\d+)\.\.(\d+), median ms per step: (.*); sum " + NUM)
RE_STATS = re.compile(r"stats: reused (\d+), computed (\d+), prefill " + NUM + r" s \((\d+) frames\), "
                      r"decode " + NUM + r" s \((\d+) tokens")


def parse(text):
    out = {"decode": [], "prefill": [], "timeline": [], "stats": None}
    for line in text.splitlines():
        m = RE_DEC.search(line)
        if m:
            g = m.groups()
            out["decode"].append({"ctx0": int(g[0]), "ctx1": int(g[1]), "steps": int(g[2]),
                                  "path": g[3], "gpu_ms": float(g[4]), "gpu_p10": float(g[5]),
                                  "gpu_p90": float(g[6]), "forward_ms": float(g[7]),
                                  "interval_ms": float(g[8]), "interval_p10": float(g[9]),
                                  "interval_p90": float(g[10])})
            continue
        m = RE_PRE.search(line)
        if m:
            g = m.groups()
            out["prefill"].append({"n": int(g[0]), "pos": int(g[1]), "path": g[2],
                                   "gpu_ms": float(g[3]), "forward_ms": float(g[4])})
            continue
        m = RE_TL.search(line)
        if m:
            ops = {}
            toks = m.group(3).split()
            for k in range(0, len(toks) - 1, 2):
                ops[toks[k]] = float(toks[k + 1])
            out["timeline"].append({"ctx0": int(m.group(1)), "ops": ops, "sum_ms": float(m.group(4))})
            continue
        m = RE_STATS.search(line)
        if m:
            g = m.groups()
            out["stats"] = {"reused": int(g[0]), "computed": int(g[1]), "prefill_s": float(g[2]),
                            "prefill_frames": int(g[3]), "decode_s": float(g[4]),
                            "decode_tokens": int(g[5])}
    return out


# ---- running phi3-run ----

def phi3_run_cmd(ctx_limit):
    return [os.path.join(a.bin, "phi3-run"), "-m", a.model, "--backend", a.backend, "-q",
            "--stats", "--ctx", str(ctx_limit)]


def run_stream(name, stream, ctx_limit, env_extra, timeout, stdout=subprocess.DEVNULL):
    """phi3-run on a stream file; returns (exit code or 'timeout', wall s, stderr text)."""
    env = dict(os.environ)
    env.update(env_extra)
    logp = os.path.join(a.out, "phi3-run-%s.log" % name)
    t = time.perf_counter()
    with open(stream, "rb") as fin, open(logp, "wb") as ferr:
        try:
            p = subprocess.run(phi3_run_cmd(ctx_limit), stdin=fin, stdout=stdout, stderr=ferr,
                               env=env, timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t
    with open(logp, errors="replace") as f:
        text = f.read()
    return rc, wall, text


def timing_env(level):
    return {"PHI3_CUDA_TIMING": str(level)} if a.backend == "cuda" else {}


def summarise(key, rc, wall, text, ctx, n):
    P = parse(text)
    r = {"exit": rc, "wall_s": round(wall, 3)}
    if rc != 0:
        r["error"] = (text.strip().splitlines() or ["(no stderr)"])[-1][:200]
    dec = [d for d in P["decode"] if d["steps"] >= max(2, n // 2)]
    if dec:
        d = dec[-1]
        r.update({"gpu_ms": d["gpu_ms"], "gpu_p10": d["gpu_p10"], "gpu_p90": d["gpu_p90"],
                  "forward_ms": d["forward_ms"], "own_ms": d["interval_ms"],
                  "own_p10": d["interval_p10"], "own_p90": d["interval_p90"],
                  "steps": d["steps"], "kernel_path": d["path"], "source": "cuda timing"})
    elif P["stats"] and P["stats"]["decode_tokens"]:
        s = P["stats"]
        r.update({"own_ms": round(s["decode_s"] / s["decode_tokens"] * 1e3, 4),
                  "steps": s["decode_tokens"], "source": "--stats (no CUDA timing)"})
    pre = [p for p in P["prefill"] if p["n"] == ctx]
    if pre:
        r["prefill_gpu_ms"] = pre[-1]["gpu_ms"]
        r["prefill_forward_ms"] = pre[-1]["forward_ms"]
        r["prefill_runs"] = len(pre)
    elif P["stats"] and P["stats"]["prefill_frames"]:
        r["prefill_forward_ms"] = round(P["stats"]["prefill_s"] / P["stats"]["prefill_frames"] * 1e3, 3)
        r["prefill_source"] = "--stats (mean of %d frames)" % P["stats"]["prefill_frames"]
    if P["timeline"]:
        r["timeline"] = P["timeline"][-1]
    R[key] = r
    save()
    return r


def part_run(F):
    for path in PATHS:
        for ctx in CONTEXTS:
            key = "run_%s_%d" % (path, ctx)
            need = 15 + ctx / 4000.0
            if time_left() < need:
                R[key] = {"skipped": "deadline (%.0f s left)" % time_left()}
                save()
                continue
            stream = os.path.join(a.out, "stream-%d.bin" % ctx)
            nfr = decode_stream(stream, ctx, a.decode_tokens, F["vocab"], ctx <= 4096)
            R["stream_%d_frames" % ctx] = nfr
            env = dict(PATH_ENV[path])
            env.update(timing_env(1))
            rc, wall, text = run_stream("%s-%d" % (path, ctx), stream, ctx + a.decode_tokens + 8,
                                        env, max(5, time_left() - 5))
            r = summarise(key, rc, wall, text, ctx, a.decode_tokens)
            log(key, json.dumps(r))
        if a.backend == "cuda" and time_left() > 20:
            # the per-op timeline of a few decode steps (events between the ops)
            ctx = CONTEXTS[0]
            stream = os.path.join(a.out, "stream-tl.bin")
            decode_stream(stream, ctx, 16, F["vocab"], False)
            env = dict(PATH_ENV[path])
            env.update(timing_env(2))
            rc, wall, text = run_stream("%s-timeline" % path, stream, ctx + 32, env,
                                        max(5, time_left() - 5))
            P = parse(text)
            R["timeline_%s" % path] = P["timeline"][-1] if P["timeline"] else {"exit": rc}
            save()


def part_loop(F):
    ctx, n = a.loop_context, a.loop_tokens
    sample = os.path.join(a.bin, "phi3-sample")
    for path in PATHS:
        key = "loop_%s" % path
        if time_left() < 20:
            R[key] = {"skipped": "deadline"}
            save()
            continue
        d = os.path.join(a.out, "loop-%s" % path)
        os.makedirs(d, exist_ok=True)
        prompt = os.path.join(d, "prompt.bin")
        with open(prompt, "wb") as f:
            f.write(tokens(rand_ids(ctx, 7, F["vocab"]), 0))
        fifo = os.path.join(d, "fb")
        if os.path.exists(fifo):
            os.unlink(fifo)
        os.mkfifo(fifo)
        out = os.path.join(d, "out.bin")
        run = " ".join(shlex.quote(x) for x in phi3_run_cmd(ctx + n + 8))
        cmd = ("{ cat %s; cat %s; } | %s 2> %s | %s --greedy -n %d | tee %s > %s" % (
            shlex.quote(prompt), shlex.quote(fifo), run, shlex.quote(os.path.join(d, "loop.log")),
            shlex.quote(sample), n, shlex.quote(fifo), shlex.quote(out)))
        env = dict(os.environ)
        env.update(PATH_ENV[path])
        env.update(timing_env(1))
        t = time.perf_counter()
        try:
            p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=env,
                               timeout=max(5, time_left() - 5))
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        wall_loop = time.perf_counter() - t
        with open(os.path.join(d, "loop.log"), errors="replace") as f:
            loop_text = f.read()
        ids = []
        try:
            with open(out, "rb") as f:
                for fr in msgpack.Unpacker(f, raw=False):
                    if fr.get("type") == "tokens":
                        ids += fr["ids"]
        except (OSError, ValueError) as e:
            log("loop output:", e)
        r = {"exit": rc, "wall_s": round(wall_loop, 3), "tokens": len(ids)}
        Pl = parse(loop_text)
        dec = [x for x in Pl["decode"] if x["steps"] >= 2]
        if dec:
            r["loop_ms"] = dec[-1]["interval_ms"]
            r["loop_gpu_ms"] = dec[-1]["gpu_ms"]
        # phi3-run alone on the loop's ids (a prepared stream)
        alone = os.path.join(d, "alone.bin")
        with open(alone, "wb") as f:
            with open(prompt, "rb") as fp:
                f.write(fp.read())
            for i in ids:
                f.write(tokens([i]))
        logits = os.path.join(d, "alone-logits.bin")
        env2 = dict(PATH_ENV[path])
        env2.update(timing_env(1))
        with open(logits, "wb") as fo:
            rc2, wall_alone, text = run_stream("%s-alone" % path, alone, ctx + n + 8, env2,
                                               max(5, time_left() - 5), stdout=fo)
        r["alone_exit"] = rc2
        r["alone_wall_s"] = round(wall_alone, 3)
        Pa = parse(text)
        dec = [x for x in Pa["decode"] if x["steps"] >= 2]
        if dec:
            r["alone_ms"] = dec[-1]["interval_ms"]
            r["alone_gpu_ms"] = dec[-1]["gpu_ms"]
        # the loop's ids are the argmax of alone's logits (greedy)
        got = []
        try:
            with open(logits, "rb") as f:
                for fr in msgpack.Unpacker(f, raw=False, max_buffer_size=1 << 31):
                    if fr.get("type") == "logits":
                        v = memoryview(fr["data"]).cast("f")
                        got.append(max(range(len(v)), key=v.__getitem__))
        except (OSError, ValueError) as e:
            log("alone logits:", e)
        r["ids_reproduced"] = len(ids) == n and got[:n] == ids
        if "loop_ms" in r and "alone_ms" in r:
            r["overhead_ms"] = round(r["loop_ms"] - r["alone_ms"], 4)
            r["overhead_source"] = "interval medians (cuda timing)"
        elif ids:
            r["overhead_ms"] = round((wall_loop - wall_alone) / max(1, len(ids)) * 1e3, 4)
            r["overhead_source"] = "whole-run wall difference / tokens"
            if Pa["stats"] and Pa["stats"]["decode_tokens"]:
                r["alone_ms"] = round(Pa["stats"]["decode_s"] / Pa["stats"]["decode_tokens"] * 1e3, 4)
                r["loop_ms"] = round(r["alone_ms"] + r["overhead_ms"], 4)
        R[key] = r
        save()
        log(key, json.dumps(r))


def part_long(F):
    n = a.long
    for path in sorted(PATHS, key=lambda p: p == "default"):   # the opt-in path first
        if path == "pdl":
            continue                     # its prefill is the fast path's
        key = "long_%s_%d" % (path, n)
        # estimate from the 32K prefill: attention grows with n^2
        ref = R.get("run_%s_%d" % (path, max(CONTEXTS)), {})
        ms = ref.get("prefill_gpu_ms") or ref.get("prefill_forward_ms")
        est = (ms / 1e3) * (n / max(CONTEXTS)) ** 2 + 10 if ms else 60
        if time_left() < est + 10:
            R[key] = {"skipped": "estimated %.0f s, %.0f s left" % (est, time_left())}
            save()
            log(key, R[key])
            continue
        stream = os.path.join(a.out, "stream-long.bin")
        with open(stream, "wb") as f:
            f.write(tokens(rand_ids(n, n, F["vocab"]), 0))
        env = dict(PATH_ENV[path])
        env.update(timing_env(1))
        rc, wall, text = run_stream("%s-long" % path, stream, n, env, max(5, time_left() - 5))
        r = summarise(key, rc, wall, text, n, 0)
        log(key, json.dumps(r))


# ---- the table ----

def fmt(v, spec="%.3f"):
    return spec % v if isinstance(v, (int, float)) else "n/a"


def part_table(F):
    C = load_json(a.ceilings, {}) if a.ceilings else {}
    PEER = load_json(a.peer, {}) if a.peer else {}
    bw = C.get("read_TBps")
    gemm = C.get("gemm_TFLOPs")
    rows = []

    def row(*cells):
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")

    head = ["# phi3-run benchmark (tests/gpu/bench.sh)", "",
            "%s; backend %s; model %s" % (C.get("device", R.get("device", "?")), a.backend, a.model),
            "ceilings%s: read bandwidth %s TB/s, copy %s TB/s, bf16 GEMM %s TFLOP/s" % (
                " (NOMINAL, dry run)" if C.get("nominal") else " (measured in this run)",
                fmt(bw, "%.3f"), fmt(C.get("copy_TBps"), "%.3f"), fmt(gemm, "%.4g")),
            "weights read per decode token (no embedding): %.3f GB; KV per position: %d bytes" % (
                F["weight_bytes_per_token"] / 1e9, F["kv_bytes_per_position"]),
            "fraction = floor / measured (1.00 = at the floor)", ""]
    row("measure", "path", "measured", "floor", "fraction", "transformers", "ours / transformers")
    row(*["---"] * 7)
    for ctx in CONTEXTS:
        kv = F["kv_bytes_per_position"] * (ctx + a.decode_tokens // 2)
        floor_ms = (F["weight_bytes_per_token"] + kv) / (bw * 1e12) * 1e3 if bw else None
        peer_ms = PEER.get("eager_decode_%d_ms" % ctx)
        comp_ms = PEER.get("compiled_decode_%d_ms" % ctx)
        for path in PATHS:
            r = R.get("run_%s_%d" % (path, ctx), {})
            if not r:
                row("decode ctx %d" % ctx, path, "not run", "", "", "", "")
                continue
            if "skipped" in r or ("exit" in r and r["exit"] != 0):
                row("decode ctx %d" % ctx, path, r.get("skipped") or "exit %s: %s" % (
                    r.get("exit"), r.get("error", "")), "", "", "", "")
                continue
            for what, k in (("GPU time per step", "gpu_ms"), ("phi3-run wall per token", "own_ms")):
                v = r.get(k)
                if v is None and k == "gpu_ms":
                    continue                    # no CUDA timing (CPU backend)
                frac = floor_ms / v if v and floor_ms else None
                peer = comp_ms if comp_ms else peer_ms
                row("decode ctx %d: %s" % (ctx, what), path,
                    "%s ms (%s tok/s)" % (fmt(v, "%.3f"), fmt(1e3 / v if v else None, "%.1f")),
                    "%s ms" % fmt(floor_ms, "%.3f"), fmt(frac, "%.2f"),
                    "%s ms%s" % (fmt(peer, "%.2f"), " (compiled)" if comp_ms else " (eager)") if peer else "n/a",
                    fmt(peer / v if peer and v else None, "%.2fx"))
    for path in PATHS:
        r = R.get("loop_%s" % path, {})
        if not r or "skipped" in r:
            row("FIFO loop ctx %d" % a.loop_context, path, r.get("skipped", "not run"), "", "", "", "")
            continue
        step = r.get("alone_ms")
        ov = r.get("overhead_ms")
        row("FIFO loop per token (phi3-run | phi3-sample)", path, "%s ms" % fmt(r.get("loop_ms")),
            "", "", "", "")
        row("pipeline overhead (loop - alone)%s" % ("" if r.get("ids_reproduced") else
                                                    " [ids NOT reproduced]"), path,
            "%s ms = %s of a step" % (fmt(ov, "%.4f"), fmt(100.0 * ov / step if ov is not None and step else None, "%.1f%%")),
            "target <= 5%", "", "", "")
    pre_ns = sorted(set(CONTEXTS + [a.long]))
    for n in pre_ns:
        floor_s = prefill_flop(F, n) / (gemm * 1e12) if gemm else None
        peer_s = PEER.get("eager_prefill_%d_s" % n)
        for path in PATHS:
            r = R.get("run_%s_%d" % (path, n)) if n in CONTEXTS else R.get("long_%s_%d" % (path, n))
            if not r:
                continue
            if "skipped" in r or r.get("exit") not in (0, None):
                row("prefill %d" % n, path, r.get("skipped") or "exit %s: %s" % (
                    r.get("exit"), r.get("error", "")), "", "", "", "")
                continue
            ms = r.get("prefill_gpu_ms") or r.get("prefill_forward_ms")
            s = ms / 1e3 if ms else None
            row("prefill %d tokens%s" % (n, "" if r.get("prefill_gpu_ms") else " (wall)"), path,
                "%s s (%s tok/s)" % (fmt(s, "%.4f"), fmt(n / s if s else None, "%.0f")),
                "%s s" % fmt(floor_s, "%.4f"), fmt(floor_s / s if s and floor_s else None, "%.2f"),
                "%s s" % fmt(peer_s, "%.4f") if peer_s else "n/a",
                fmt(peer_s / s if peer_s and s else None, "%.2fx"))
    for path in PATHS:
        tl = R.get("timeline_%s" % path)
        if tl and "ops" in tl:
            head_tl = ", ".join("%s %.3f" % kv for kv in sorted(tl["ops"].items(), key=lambda kv: -kv[1]))
            rows.append("")
            rows.append("timeline (%s path, ms per decode step, events between ops): %s; sum %.3f"
                        % (path, head_tl, tl["sum_ms"]))
    try:
        with open(os.path.join(a.out, "nsys.txt")) as f:
            rows += [""] + ["    " + x.rstrip() for x in f]
    except OSError:
        pass
    skipped = {k: v for k, v in PEER.items() if k.endswith("_error") or k.endswith("_skipped")}
    if skipped:
        rows += ["", "transformers: " + "; ".join("%s: %s" % kv for kv in sorted(skipped.items()))]
    text = "\n".join(head + rows) + "\n"
    with open(os.path.join(a.out, "bench.md"), "w") as f:
        f.write(text)
    print(text)


if a.part == "parse":
    with open(a.file, errors="replace") as f:
        print(json.dumps(parse(f.read()), indent=1))
    sys.exit(0)
if not a.model:
    raise SystemExit("bench: --model is needed")
F = facts(a.model)
R["facts"] = F
R["backend"] = a.backend
save()
if a.part == "facts":
    print(json.dumps(F, indent=1))
elif a.part == "run":
    part_run(F)
elif a.part == "loop":
    part_loop(F)
elif a.part == "long":
    part_long(F)
else:
    part_table(F)
# a phi3-run that failed makes the part fail (the figures measured stay in the JSON)
failed = [k for k, v in R.items() if k.startswith(a.part + "_") and isinstance(v, dict) and
          ((v.get("exit") not in (None, 0)) or (v.get("alone_exit") not in (None, 0)))]
if failed and a.part in ("run", "loop", "long"):
    log("failed:", ", ".join(sorted(failed)))
    sys.exit(1)
