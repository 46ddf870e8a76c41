"""streamprobe.py: drive a filter (phi3-detok) one frame at a time and check what it has
written so far: the tests that text comes out as soon as it is final, and not before.
    p = Probe([tool, args...]); p.feed(id); p.got(b"text"); p.nothing(); sys.exit(p.close())
got and nothing exit the script with the reason on a mismatch."""
import msgpack, os, select, subprocess, sys


class Probe:
    def __init__(self, argv):
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def send(self, frame):
        self.p.stdin.write(msgpack.packb(frame)); self.p.stdin.flush()

    def feed(self, i):
        """one tokens frame holding the one id i"""
        self.send({"type": "tokens", "ids": [i]})

    def got(self, want):
        """exactly the bytes want come out next (within 10 s)"""
        buf = b""
        while len(buf) < len(want):
            r, _, _ = select.select([self.p.stdout], [], [], 10)
            if not r: sys.exit("timed out waiting for %r (have %r)" % (want, buf))
            buf += os.read(self.p.stdout.fileno(), 100)
        if buf != want: sys.exit("got %r, want %r" % (buf, want))

    def nothing(self):
        """nothing comes out within 0.3 s"""
        r, _, _ = select.select([self.p.stdout], [], [], 0.3)
        if r: sys.exit("unexpected output %r" % os.read(self.p.stdout.fileno(), 100))

    def close(self):
        """end the input; the tool's exit status"""
        self.p.stdin.close(); self.p.wait()
        return self.p.returncode
