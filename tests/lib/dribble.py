#!/usr/bin/python3
"""dribble.py SEED FILE: copy FILE to stdout in random pieces of 1..400 bytes with short
pauses, so that frames reach the reader split at arbitrary bytes."""
import os, random, sys, time

r = random.Random(int(sys.argv[1]))
data = open(sys.argv[2], "rb").read()
i = 0
while i < len(data):
    k = r.randint(1, 400)
    os.write(1, data[i:i + k])
    i += k
    if r.random() < 0.3:
        time.sleep(r.random() * 0.003)
