"""phi3io.py: helpers of the GPU check scripts: a safetensors reader (json + struct, no
numpy, independent of embed/), a driver of bin/phi3-run over pipes (msgpack frames), and
the float comparisons. Pure Python so that it also runs where numpy is missing."""
import json, math, os, struct, subprocess, time
import msgpack


def st_tensor(path, name):
    """(shape, flat tuple) of tensor name (F32 or I32) in a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        head = json.loads(f.read(n))
        t = head[name]
        a, b = t["data_offsets"]
        f.seek(8 + n + a)
        raw = f.read(b - a)
    code = {"F32": "f", "I32": "i"}[t["dtype"]]
    return t["shape"], struct.unpack("<%d%s" % (len(raw) // 4, code), raw)


def rows(flat, width):
    return [flat[i:i + width] for i in range(0, len(flat), width)]


def rel_l2(got, ref):
    num = sum((g - r) ** 2 for g, r in zip(got, ref))
    den = sum(r * r for r in ref)
    if len(got) != len(ref) or not math.isfinite(num):
        return float("inf")
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


def argmax(v):
    return max(range(len(v)), key=v.__getitem__)


class PhiRun:
    """One phi3-run process; tokens frames in, its frames out (read as they come)."""

    def __init__(self, binary, model, backend, extra=(), env=None, log=None):
        e = dict(os.environ)
        e.update(env or {})
        self.cmd = [binary, "-m", model, "--backend", backend, "-q"] + list(extra)
        self.log = log
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=log if log else subprocess.DEVNULL, env=e)
        self.unp = msgpack.Unpacker(raw=False, max_buffer_size=1 << 30)
        self.fd = self.p.stdout.fileno()

    def send(self, ids, pos=None):
        fr = {"type": "tokens", "ids": [int(i) for i in ids]}
        if pos is not None:
            fr["pos"] = int(pos)
        self.p.stdin.write(msgpack.packb(fr, use_bin_type=True))
        self.p.stdin.flush()

    def frame(self):
        while True:
            try:
                return next(self.unp)
            except StopIteration:
                pass
            data = os.read(self.fd, 1 << 20)
            if not data:
                rc = self.p.wait()
                raise RuntimeError("phi3-run ended (exit %s) before the expected frame: %s"
                                   % (rc, " ".join(self.cmd)))
            self.unp.feed(data)

    def logits(self, count=1):
        """The next count logits frames as (pos, tuple of floats)."""
        out = []
        while len(out) < count:
            f = self.frame()
            if f.get("type") == "logits":
                d = f["data"]
                out.append((f["pos"], struct.unpack("<%df" % (len(d) // 4), d)))
        return out

    def step(self, ids, pos=None, count=1):
        self.send(ids, pos)
        return self.logits(count)

    def close(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            rc = self.p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        return rc


def now():
    return time.perf_counter()
