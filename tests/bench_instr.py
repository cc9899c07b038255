#!/usr/bin/env python3
"""What --metrics costs a request, counted in instructions, not seconds:
valgrind's callgrind counts the same for the same binary and requests
whatever else the machine does, where two wrk runs of one server differ by
a few percent. Part of tests/bench.sh, not of ./test.sh. Usage:

    bench_instr.py BINARY POST_LUA

BINARY: an -O2 build. POST_LUA: the bench's wrk script, whose body and
signature are posted. Prints "instr.<kind>.<plain|met> N" lines: the
instructions of the whole process per CRC and per signed POST, each over
2,000 requests on one kept-alive connection, counted between two dumps.
"""
import glob
import os
import re
import socket
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as it  # noqa: E402  (free_port, and a temporary directory)
from harness import free_port  # noqa: E402

BIN, LUA = it.BIN, sys.argv[2]
N = 2000
CRC = b"GET /webhooks/twitter?crc_token=M2RkODJkZmMtYjlkYi00NmQ4LTk0MGUtM2JjYzkwM2Q4MjQ0 HTTP/1.1\r\nHost: x\r\n\r\n"


def post_request():
    lua = open(LUA).read()
    body = re.search(r"\[\[(.*)\]\]", lua, re.S).group(1).encode()
    sig = re.search(r'signature"\] = "([^"]+)"', lua).group(1).encode()
    return (b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nx-twitter-webhooks-signature: %s\r\n\r\n%s" % (len(body), sig, body))


def exchange(s, req, n):
    for _ in range(n):
        s.sendall(req)
        got = b""
        while True:
            got += s.recv(65536)
            head, sep, rest = got.partition(b"\r\n\r\n")
            if sep:
                length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
                if len(rest) >= length:
                    break
        assert got.startswith(b"HTTP/1.1 200"), got[:200]


def total(path):
    with open(path) as f:
        for line in f:
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise SystemExit("bench_instr: no summary in " + path)


def measure(work, label, extra):
    port = free_port()
    out = os.path.join(work, label + ".cg")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, BIN, "--quiet",
                             "--listen", "127.0.0.1:%d" % port, *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit("bench_instr: the server under valgrind did not start")
                time.sleep(0.1)
        exchange(s, CRC, 200)  # warm: every path taken once
        exchange(s, post_request(), 200)
        parts = {}
        for kind, req in (("crc", CRC), ("post", post_request())):
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
            exchange(s, req, N)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
            dumps = sorted(glob.glob(out + ".*"), key=lambda d: int(d.rsplit(".", 1)[1]))
            parts[kind] = total(dumps[-1])  # out.1, out.2: the latest dump
        s.close()
    finally:
        proc.terminate()
        proc.wait(60)
    for kind, n in parts.items():
        print("instr.%s.%s %d" % (kind, label, n // N))


def main():
    try:
        measure(it.WORK, "plain", [])
        measure(it.WORK, "met", ["--metrics", "127.0.0.1:%d" % free_port()])
    finally:
        shutil.rmtree(it.WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
