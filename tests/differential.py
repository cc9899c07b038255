#!/usr/bin/env python3
"""Differential checks: xwebhook's SHA-256 and HMAC-SHA256 against Python's
hashlib and hmac, for random keys and messages of every length from 0 to
300 bytes and some large ones; its JSON indenter against
json.dumps(indent=2) on random canonical documents. Usage:

    differential.py DRIVER

The last line is 'differential: N passed, N failed'.
"""
import hashlib
import hmac
import json
import random
import subprocess
import sys

driver = subprocess.Popen([sys.argv[1]], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
passed = failed = 0


def ask(line):
    driver.stdin.write(line.encode() + b"\n")
    driver.stdin.flush()
    return driver.stdout.readline().decode().strip()


def hx(b):
    return b.hex() if b else "-"


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL " + what, flush=True)


rnd = random.Random(20261128)
# Keys: empty, short, exactly one block, longer than a block (hashed first).
keys = [b"", b"k", bytes(rnd.randrange(256) for _ in range(32)), bytes(range(64)),
        bytes(rnd.randrange(256) for _ in range(65)), bytes(rnd.randrange(256) for _ in range(200))]
for length in range(0, 301):
    msg = bytes(rnd.randrange(256) for _ in range(length))
    key = keys[length % len(keys)]
    got = ask("H %s %s" % (hx(key), hx(msg))).split()
    want = [hashlib.sha256(msg).hexdigest(), hmac.new(key, msg, hashlib.sha256).hexdigest()]
    want += [want[1], want[0]]  # the two again, taken in one pass
    check(got == want, "length %d key %d: %s != %s" % (length, len(key), got, want))
for length in (1000, 4095, 4096, 4097, 65536, 1 << 20, 3 * (1 << 20) + 7):
    msg = bytes(rnd.randrange(256) for _ in range(length))
    key = keys[length % len(keys)]
    got = ask("H %s %s" % (hx(key), hx(msg))).split()
    want = [hashlib.sha256(msg).hexdigest(), hmac.new(key, msg, hashlib.sha256).hexdigest()]
    want += [want[1], want[0]]  # the two again, taken in one pass
    check(got == want, "large length %d" % length)


def gen(depth=0):
    k = rnd.randint(0, 8 if depth < 6 else 4)
    if k == 0:
        return rnd.randint(-2 ** 80, 2 ** 80)
    if k == 1:
        alphabet = "ab \"\\/\n\t\r\b\f\x01\x1f\u00e9\u20ac\U0001F600\u0800\uffff"
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))
    if k == 2:
        return rnd.choice([True, False, None])
    if k == 3:
        return rnd.uniform(-1e6, 1e6) * 10 ** rnd.randint(-30, 30)
    if k == 4:
        return rnd.randint(0, 9)
    if k in (5, 6):
        return [gen(depth + 1) for _ in range(rnd.randint(0, 5))]
    return {"k%d%s" % (i, rnd.choice(["", "\u00e9", "\\", "\""])): gen(depth + 1) for i in range(rnd.randint(0, 5))}


for i in range(2000):
    doc = gen()
    ascii_only = i % 2 == 0  # both escaping styles are canonical tokens
    src = json.dumps(doc, ensure_ascii=ascii_only, separators=(",", ":") if i % 3 else (", ", ": "))
    want = json.dumps(doc, indent=2, ensure_ascii=ascii_only) + "\n"
    got = ask("J " + hx(src.encode()))
    check(got != "ERR" and bytes.fromhex(got).decode() == want, "document %d: %s" % (i, src[:200]))
# Deep nesting at the bound, as Python prints it.
for depth in (1, 100, 256):
    doc = 0
    for _ in range(depth):
        doc = [doc]
    got = ask("J " + hx(json.dumps(doc).encode()))
    check(got != "ERR" and bytes.fromhex(got).decode() == json.dumps(doc, indent=2) + "\n", "depth %d" % depth)
check(ask("J " + hx(b"[" * 257 + b"]" * 257)) == "ERR", "depth 257 is refused")

driver.stdin.close()
driver.wait()
print("differential: %d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
