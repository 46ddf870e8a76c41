#!/usr/bin/python3
"""rawclient.py SOCKET FIRST REST OUT MODE: a phi3-run --serve client without --connect,
for the drain test. Sends the frames of file FIRST and waits for a logits frame; creates
OUT.ready and waits for OUT.go; sends file REST, creates OUT.sent; with MODE eof shuts
its write side (end of input), with MODE open keeps it open; then reads to the end. The
bytes of every frame but a final done/error go to OUT; that frame's type and message to
OUT.last."""
import msgpack, os, socket, sys, time

sock, first, rest, out, mode = sys.argv[1:6]
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
s.sendall(open(first, "rb").read())
u = msgpack.Unpacker(raw=False)
raw, frames, pos = b"", [], 0


def pump():
    global raw
    b = s.recv(1 << 20)
    if b:
        raw += b
        u.feed(b)
        for f in u:
            end = u.tell()
            frames.append((f, raw[frames[-1][2] if frames else 0:end], end))
    return bool(b)


while not any(f[0]["type"] == "logits" for f in frames):
    if not pump():
        sys.exit("server closed early")
open(out + ".ready", "w").close()
while not os.path.exists(out + ".go"):
    time.sleep(0.01)
s.sendall(open(rest, "rb").read())
open(out + ".sent", "w").close()
if mode == "eof":
    s.shutdown(socket.SHUT_WR)
while pump():
    pass
last = frames[-1][0] if frames else {"type": "none"}
body = frames[:-1] if last["type"] in ("done", "error") else frames
with open(out, "wb") as fh:
    for f in body:
        fh.write(f[1])
with open(out + ".last", "w") as fh:
    fh.write(last["type"] + " " + last.get("message", "") + "\n")
