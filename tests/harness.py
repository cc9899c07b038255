#!/usr/bin/env python3
"""What every test suite shares: the command line, the server under test,
clients, waiting, the test certificates and the runner. A suite imports
this and nothing of another suite:

    import harness as it

    @it.test
    def something():
        srv = it.Server("--quiet")
        ...

    def main():
        it.finish("name", *it.run_suite())

Every suite is run as `SUITE.py BINARY FIXTURES_DIR [MORE...]` (test.sh
has each one's arguments); BIN and FIXTURES are the first two, arg(n) any
other. ONLY=name1,name2 runs the tests whose names contain one of those.
Each test prints "ok   NAME  SECONDS" or "FAIL NAME" and its traceback;
the last line is "SUITE: N passed, M failed", which test.sh counts.
"""
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import signal
import socket
import ssl
import string
import subprocess
import sys
import shutil
import tempfile
import threading
import time
import traceback


def arg(n):
    """The suite's n-th command-line argument as an absolute path, or None
    when it was not given."""
    return os.path.abspath(sys.argv[n]) if len(sys.argv) > n else None


BIN = arg(1)
FIXTURES = arg(2)
README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")
SECRET = "s3cr3t-consumer-secret-Zq8+/="
WORK = tempfile.mkdtemp(prefix="xwebhook-test-")
PKI = os.path.join(WORK, "pki")
CRC_OK_ALPHABET = string.ascii_letters + string.digits + "+/=_-"


# ---------------------------------------------------------------------------
# The runner

TESTS = []


def test(fn):
    """Registers fn as a test; run_suite runs them in the order defined."""
    TESTS.append(fn)
    return fn


def run_suite(shared=None, tests=None):
    """Run tests (by default every @test), passing shared to those that
    take one, printing a line for each and the traceback of each failure.
    Returns (passed, failed); finish prints the summary line."""
    # Only the running suite's own: a suite imported for a helper (acme's
    # Pebble) registers its tests here too, and they are not ours to run.
    tests = [fn for fn in TESTS if fn.__module__ == "__main__"] if tests is None else tests
    only = [o for o in os.environ.get("ONLY", "").split(",") if o]
    passed = failed = 0
    for fn in tests:
        if only and not any(o in fn.__name__ for o in only):
            continue
        t0 = time.monotonic()
        try:
            if fn.__code__.co_argcount == 1:
                fn(shared)
            else:
                fn()
            passed += 1
            print("ok   %-60s %6.2fs" % (fn.__name__, time.monotonic() - t0), flush=True)
        except Exception:  # noqa: BLE001
            failed += 1
            print("FAIL %s" % fn.__name__, flush=True)
            traceback.print_exc(file=sys.stdout)
    return passed, failed


def finish(name, passed, failed):
    """The summary line test.sh counts, and the exit status. The suite's
    files (logs, keys, traces) go with a pass, and stay, named, for a
    failure to be read."""
    if failed:
        print("    (%s's files are kept in %s)" % (name, WORK), flush=True)
    else:
        shutil.rmtree(WORK, ignore_errors=True)
    print("%s: %d passed, %d failed" % (name, passed, failed), flush=True)
    sys.exit(1 if failed else 0)


def require(name, tools, hint):
    """A suite that cannot run without tools fails whole, in one line:
    hint, with {tool} the first one missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        print("FAIL " + hint.replace("{tool}", missing[0]), flush=True)
        finish(name, 0, 1)


# ---------------------------------------------------------------------------
# The server under test, and clients

def sign(body, secret=SECRET):
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return "sha256=" + base64.b64encode(mac).decode()


def pretty(obj):
    """json.dumps(indent=2), as the reference app prints events. xwebhook
    copies strings byte for byte, so raw UTF-8 stays raw: the canonical
    form to compare with is the one without ensure_ascii."""
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


class Server:
    """One xwebhook process; stdout and stderr go to files we can read."""
    count = 0

    def __init__(self, *args, env=None, secret=SECRET, stdout=None, expect_start=True, preexec=None,
                 wrap=(), listen="127.0.0.1:0"):
        Server.count += 1
        self.name = os.path.join(WORK, "server%d" % Server.count)
        self.out_path = self.name + ".out"
        self.err_path = self.name + ".err"
        e = {k: v for k, v in os.environ.items() if "SECRET" not in k}
        if secret is not None:
            e["TWITTER_CONSUMER_SECRET"] = secret
        e.update(env or {})
        self.err = open(self.err_path, "wb")
        out = stdout if stdout is not None else open(self.out_path, "wb")
        self.proc = subprocess.Popen([*wrap, BIN, "--listen", listen, *args], stdout=out,
                                     stderr=self.err, stdin=subprocess.DEVNULL, env=e, preexec_fn=preexec)
        if stdout is None:
            out.close()
        self.port = None
        if expect_start:
            deadline = time.time() + 20
            while time.time() < deadline:
                text = self.stderr()
                m = re.search(r"serving (https?://\S+)", text)  # not "ACME: meanwhile serving the ..."
                if m:
                    self.port = int(m.group(1).rsplit(":", 1)[1].split("/", 1)[0])
                    break
                if self.proc.poll() is not None:
                    raise AssertionError("server exited at start: " + text)
                time.sleep(0.02)
            assert self.port, "no startup line: " + self.stderr()

    def stdout(self):
        with open(self.out_path, "rb") as f:
            return f.read()

    def stderr(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def conn(self, timeout=10):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def sock(self, timeout=10):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return s

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server did not stop within %d s" % timeout)
        self.err.close()
        check_sanitizers(self.stderr())
        return rc


def wait_until(cond, timeout=10):
    """Whether cond() came true within timeout seconds, polled: the one way
    the suites wait (assert wait_until(...), never a fixed sleep)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def wait_accepted(srv, before, n, timeout=20):
    """Wait until the server holds n more descriptors than before: every
    connection opened is accepted, however busy the machine."""
    assert wait_until(lambda: fd_count(srv.proc.pid) >= before + n, timeout), \
        "%d of %d connections accepted" % (fd_count(srv.proc.pid) - before, n)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on just now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def check_sanitizers(text):
    for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer"):
        assert marker not in text, "sanitizer report:\n" + text[-4000:]


def recv_all(s, limit=1 << 20):
    """Read until the peer closes (or the socket's timeout fires)."""
    data = b""
    try:
        while len(data) < limit:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return data


def read_response(s, buf=b""):
    """Read one HTTP response from a socket: (status, headers, body, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError("connection closed before a response head: %r" % buf)
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(buf) < n:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError("connection closed inside a body")
        buf += chunk
    return status, headers, buf[:n], buf[n:]


def is_closed(s, wait=3.0):
    """True if the peer has closed (EOF or reset) within wait seconds."""
    s.settimeout(wait)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def crc_request(port, token_query, method="GET"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, "/webhooks/twitter?" + token_query)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r, body


def post(c, body, sig=True, headers=None):
    h = {"Content-Type": "application/json"}
    if sig is True:
        h["x-twitter-webhooks-signature"] = sign(body)
    elif isinstance(sig, str):
        h["x-twitter-webhooks-signature"] = sig
    h.update(headers or {})
    c.request("POST", "/webhooks/twitter", body=body, headers=h)
    r = c.getresponse()
    return r, r.read()


def in_threads(fn, n):
    """fn(k) for k in range(n), each on a thread of its own; the first
    failure of any of them is raised here."""
    errors = []

    def run(k):
        try:
            fn(k)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def curl(*args, input=None):
    p = subprocess.run(["curl", "-sS", *args], input=input, capture_output=True, timeout=30)
    return p.returncode, p.stdout, p.stderr


def fixtures():
    names = sorted(n for n in os.listdir(FIXTURES) if n.endswith(".json"))
    assert names, "no fixtures in " + FIXTURES
    return [(n, open(os.path.join(FIXTURES, n), "rb").read()) for n in names]


def timed_crc(port, token=b"probe"):
    t0 = time.monotonic()
    r, body = crc_request(port, "crc_token=" + token.decode())
    took = time.monotonic() - t0
    assert r.status == 200 and json.loads(body)["response_token"] == sign(token)
    return took


def pipelined_events(srv, sock, n=200):
    """n signed POSTs, each followed by a CRC, in one write on one
    connection: each event waits on the writer while the requests behind
    it wait in the buffer; every answer must come, in order, and every
    event reach stdout once, in order."""
    wire = b""
    for i in range(n):
        body = b'{"pipelined_event":%d}' % i
        wire += (b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                 b"x-twitter-webhooks-signature: %s\r\n\r\n%s" % (len(body), sign(body).encode(), body))
        wire += b"GET /webhooks/twitter?crc_token=p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i
    sock.sendall(wire)
    rest = b""
    for i in range(n):
        st, _, b, rest = read_response(sock, rest)
        assert st == 200 and b == b"", (i, st, b)
        st, _, b, rest = read_response(sock, rest)
        assert st == 200 and json.loads(b)["response_token"] == sign(b"p%d" % i), (i, st, b)
    seen = [json.loads(line.split(b": ", 1)[1])
            for line in srv.stdout().splitlines() if b'"pipelined_event"' in line]
    assert seen == list(range(n)), seen[:20]


def threads_of(pid, name=None):
    """How many threads pid has; with name, how many of them are so named
    (the server names its threads: xwh-loop, xwh-conn, xwh-writer, ...)."""
    n = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                comm = f.read().strip()
        except FileNotFoundError:
            continue  # the thread ended while we looked
        n += name is None or comm == name
    return n


def pipeline_unread(srv, send, recv, n=80000):
    """Pipeline n CRCs and read nothing for a second: ~15 MB of
    answers fill the socket (an unread receive buffer does not grow), so the
    loop must leave the rest to a thread of the connection's own. Then every
    answer must arrive, whole and in order."""
    # Every request is exactly 64 bytes, and so are the loop's reads
    # (28,672 = 448 x 64) and TLS records (16,384 = 256 x 64): the loop only
    # ever holds whole requests, so the one thing that can send this
    # connection to a thread is an answer the socket will not take.
    reqs = [b"GET /webhooks/twitter?crc_token=p%05d HTTP/1.1\r\nHost: xxxxx\r\n\r\n" % i for i in range(n)]
    assert all(len(r) == 64 for r in reqs) and CONN_BUF_BYTES % 64 == 0
    chunks = [b"".join(reqs[k:k + 448]) for k in range(0, n, 448)]

    def send_all():
        for chunk in chunks:
            send(chunk)
    sender = threading.Thread(target=send_all)
    sender.start()
    # Within a second here; an ASan build on a busy machine may need
    # longer to answer the ~30,000 requests that fill the socket.
    deadline = time.monotonic() + 15
    # Counted by name: the loops and the writer may still be starting when
    # the startup line is out, so the total says nothing.
    while threads_of(srv.proc.pid, "xwh-conn") != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threads_of(srv.proc.pid, "xwh-conn") == 1, \
        "the stalled connection did not move to a thread: " + srv.stderr()[-1500:]
    # One pass with an offset: re-splitting a buffer per answer would be
    # quadratic, slow enough for the connection's 15 s idle time to pass.
    data, pos = bytearray(), 0
    for i in range(n):
        while True:
            end = data.find(b"\r\n\r\n", pos)
            if end >= 0:
                head = bytes(data[pos:end])
                length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
                if len(data) >= end + 4 + length:
                    break
            chunk = recv.recv(1 << 20)
            assert chunk, "connection closed after %d of %d answers" % (i, n)
            data += chunk
        body = bytes(data[end + 4:end + 4 + length])
        assert head.startswith(b"HTTP/1.1 200 ") and \
            json.loads(body)["response_token"] == sign(b"p%05d" % i), (i, head, body)
        pos = end + 4 + length
    assert pos == len(data), "bytes after the last answer"
    sender.join()


CONN_BUF_BYTES = 8192 + 16384 + 4096   # CONN_BUF in xwebhook.c


# Each framing error: the answer, then the connection closes.
FRAMING = [
    ("CL and TE", b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("two CL", b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 400),
    ("CL not digits", b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: 2a\r\n\r\n{}", 400),
    ("CL negative", b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: -2\r\n\r\n{}", 400),
    ("CL overflow", b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: 184467440737095516160\r\n\r\n", 400),
    ("TE gzip", b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    ("TE list", b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
    ("bad chunk size", b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
     b"x-twitter-webhooks-signature: sha256=x\r\n\r\nzz\r\n", 400),
    ("bad chunk terminator", b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
     b"x-twitter-webhooks-signature: sha256=x\r\n\r\n2\r\n{}XX0\r\n\r\n", 400),
    ("obs-fold", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n", 400),
    ("space before colon", b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    ("NUL", b"GET /healthz HTTP/1.1\r\nHost: x\x00\r\n\r\n", 400),
    ("control byte", b"GET /healthz HTTP/1.1\r\nHost: x\x1b[31m\r\n\r\n", 400),
    ("bare CR", b"GET /healthz HTTP/1.1\rHost: x\r\n\r\n", 400),
    ("bare LF", b"GET /healthz HTTP/1.1\nHost: x\n\n", 400),
    ("two spaces", b"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("no version", b"GET /healthz\r\n\r\n", 400),
    ("HTTP/2.0", b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 400),
    ("absolute form without a path", b"GET http://x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("no Host", b"GET /healthz HTTP/1.1\r\n\r\n", 400),
    ("two Hosts", b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    ("TLS hello", bytes.fromhex("160301020001") + b"\x00" * 40, 400),
    ("request line 8193", b"GET /" + b"a" * (8193 - 14) + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("header block 16385", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (16385 - 9 - 7 - 4) +
     b"\r\n\r\n", 431),
    ("101 fields", b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-F: 1\r\n" * 100 + b"\r\n", 431),
    ("Expect other", b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: something\r\n\r\n", 417),
]


# ---------------------------------------------------------------------------
# Probes and posters the event-path and broker suites share

# A CRC must be answered within this while a sink or a peer misbehaves.
# X allows 3 s; what these tests guard against (a loop waiting on a sink,
# or on a slow peer) takes 5 s or more, so a second tells the two apart
# even with an ASan build on a machine another test run keeps busy.
CRC_BOUND = 1.0


class CrcProbe(threading.Thread):
    """CRCs every interval from source address src, until stopped; keeps
    the slowest answer and every failure."""

    def __init__(self, port, interval=0.1, src="127.0.0.1"):
        super().__init__(daemon=True)
        self.port, self.interval, self.src = port, interval, src
        self.stop_flag = threading.Event()
        self.times, self.failures = [], []

    def run(self):
        n = 0
        while not self.stop_flag.is_set():
            n += 1
            token = b"probe%d" % n
            t0 = time.monotonic()
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                             source_address=(self.src, 0))
                s.sendall(b"GET /webhooks/twitter?crc_token=%s HTTP/1.1\r\nHost: x\r\n"
                          b"Connection: close\r\n\r\n" % token)
                status, _, body, _ = read_response(s)
                s.close()
                took = time.monotonic() - t0
                if status != 200 or json.loads(body)["response_token"] != sign(token):
                    self.failures.append("CRC %d: %d %r" % (n, status, body))
                self.times.append(took)
            except Exception as e:  # noqa: BLE001
                self.failures.append("CRC %d: %r after %.2f s" % (n, e, time.monotonic() - t0))
            time.sleep(self.interval)

    def finish(self, bound=CRC_BOUND):
        self.stop_flag.set()
        self.join()
        assert not self.failures, self.failures[:5]
        assert self.times, "no CRC was tried"
        worst = max(self.times)
        assert worst < bound, "a CRC took %.0f ms (bound %.0f ms)" % (worst * 1000, bound * 1000)
        return worst


def chunked_post(port, body, chunk, wrap=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    if wrap:
        s = wrap(s)
    head = (b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"x-twitter-webhooks-signature: %s\r\n\r\n" % sign(body).encode())
    parts = [head]
    for k in range(0, len(body), chunk):
        piece = body[k:k + chunk]
        parts.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    parts.append(b"0\r\n\r\n")
    wire = b"".join(parts)
    for k in range(0, len(wire), 1 << 20):
        s.sendall(wire[k:k + (1 << 20)])
    status, _, rbody, _ = read_response(s)
    s.close()
    return status, rbody


CHUNKED_CASES = [(40_000, 1), (40_000, 65536), (100_000, 4096), (300_000, 7), (1_000_000, 1000),
                 (1_500_000, 65536), (1_500_000, 1)]


def check_chunked(srv, wrap=None):
    for n, chunk in CHUNKED_CASES:
        pad = b"c" * (n - 30)
        body = b'{"size":%d,"chunk":%d,"p":"%s"}' % (n, chunk, pad)
        body = body[:-2 - (len(body) - n)] + b'"}' if len(body) > n else body
        status, rbody = chunked_post(srv.port, body, chunk, wrap)
        assert status == 200, "%d bytes in %d-byte chunks: %d %r" % (len(body), chunk, status, rbody[:200])
    assert wait_until(lambda: srv.stdout().count(b'"chunk": ') == len(CHUNKED_CASES), 5)


SYNC_DELAY_US = 300000


class Straced(Server):
    """A server under strace -f -yy (each socket named by its addresses),
    writing the calls strace's options choose to the file trace."""

    def __init__(self, trace, strace_options, *args):
        self.trace = trace
        # LeakSanitizer cannot run under ptrace; the rest of ASan can.
        super().__init__(*args, wrap=["strace", "-f", "-qq", "-yy", "-s", "512", "-o", trace, *strace_options],
                         env={"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0"})

    def calls(self, name, client_port):
        """The calls of name (say "recvfrom") the trace has on the server's
        end of the connection from client_port."""
        peer = "->127.0.0.1:%d]" % client_port
        with open(self.trace) as f:
            return [line for line in f if name + "(" in line and peer in line]

    def traced_pid(self):
        """The server's own pid (strace's child)."""
        return int(subprocess.check_output(["pgrep", "-P", str(self.proc.pid)]).split()[0])

    def stop(self, *a, **k):
        if self.proc.poll() is None:
            # SIGTERM to the server itself: strace ends when its tracee does.
            os.kill(self.traced_pid(), signal.SIGTERM)
        return super().stop(*a, **k)


class Traced(Straced):
    """A server under strace, appending to --output path, with every
    fdatasync held 300 ms before it runs (strace's delay injection). A 200
    released before the sync has returned then leaves while it is held,
    and the trace shows it: without the delay the sync returns first by
    luck of the scheduler (the 200 is sent by another thread)."""

    def __init__(self, path, *args):
        self.path = path
        super().__init__(path + ".strace", ("-e", "trace=write,fdatasync,sendto",
                                            "-e", "inject=fdatasync:delay_enter=%d" % SYNC_DELAY_US),
                         "--output", path, *args)

    def order(self, ports):
        """For each event {"gc":N} posted from client port p (ports maps p
        to N): whether some fdatasync returned after the write that put its
        line in --output and before its 200 was sent. (problems, the number
        of events in each --output write)."""
        written, answered, synced, batches = {}, {}, [], []
        port_of = {n: p for p, n in ports.items()}
        with open(self.trace) as f:
            for k, line in enumerate(f):
                if ("fdatasync(" in line and "unfinished" not in line) or "<... fdatasync resumed>" in line:
                    synced.append(k)  # it has returned
                elif "write(" in line and "<%s>" % self.path in line:
                    ns = [int(n) for n in re.findall(r'\{\\"gc\\":(\d+)\}', line)]
                    batches.append(len(ns))
                    for n in ns:
                        written[n] = k
                elif "sendto(" in line and "HTTP/1.1 200" in line:
                    m = re.search(r"->127\.0\.0\.1:(\d+)\]", line)
                    if m and int(m.group(1)) in ports:
                        answered[ports[int(m.group(1))]] = k
        problems = []
        for n in sorted(port_of):
            if n not in written or n not in answered:
                problems.append("event %d: written at %s, 200 at %s" % (n, written.get(n), answered.get(n)))
            elif not any(written[n] < s < answered[n] for s in synced):
                problems.append("event %d: its 200 (trace line %d) left before any fdatasync returned after "
                                "its write (line %d)" % (n, answered[n] + 1, written[n] + 1))
        return problems, batches


class TracedPoster(threading.Thread):
    """One signed POST on a connection of its own; port is the client's
    port, which names the connection in an strace -yy trace."""

    def __init__(self, srv, body):
        super().__init__(daemon=True)
        self.srv, self.body, self.status = srv, body, None
        self.c = srv.conn(timeout=20)
        self.c.connect()
        self.port = self.c.sock.getsockname()[1]
        self.start()

    def run(self):
        try:
            self.status = post(self.c, self.body)[0].status
        except OSError as e:
            self.status = repr(e)

    def result(self, timeout=15):
        self.join(timeout)
        return self.status


# ---------------------------------------------------------------------------
# Test certificates: a root, an intermediate and leaves, made with openssl

HOST = "xwebhook.test"


def openssl(*args, cwd=None):
    p = subprocess.run(["openssl", *args], capture_output=True, cwd=cwd or PKI, timeout=60)
    assert p.returncode == 0, "openssl %s: %s" % (" ".join(args), p.stderr.decode())
    return p.stdout


KEYGEN = {
    "rsa": ["-newkey", "rsa:2048"],
    "p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "p384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "k256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
}


LEAF_EXT = ("subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,"
            "keyEncipherment\nextendedKeyUsage=serverAuth\n" % HOST)


CA_EXT = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"


def make_pki(name, kind):
    """A root, an intermediate and a leaf for HOST, all of one key kind.
    Returns the paths: root, int, leaf, leaf_key (PKCS#8), leaf_key_trad,
    chain (leaf then intermediate), int_key."""
    d = os.path.join(PKI, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "ca.ext"), "w") as f:
        f.write(CA_EXT)
    with open(os.path.join(d, "leaf.ext"), "w") as f:
        f.write(LEAF_EXT)
    openssl("req", "-x509", *KEYGEN[kind], "-nodes", "-keyout", "root.key", "-out", "root.pem",
            "-days", "60", "-subj", "/CN=%s test root" % name, "-addext",
            "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", *KEYGEN[kind], "-nodes", "-keyout", "int.key", "-out", "int.csr",
            "-subj", "/CN=%s test intermediate" % name, cwd=d)
    openssl("x509", "-req", "-in", "int.csr", "-CA", "root.pem", "-CAkey", "root.key", "-CAcreateserial",
            "-out", "int.pem", "-days", "60", "-extfile", "ca.ext", cwd=d)
    p = leaf(d, "leaf", kind, days=40)
    p.update(root=os.path.join(d, "root.pem"), int=os.path.join(d, "int.pem"),
             int_key=os.path.join(d, "int.key"), dir=d)
    return p


def leaf(d, name, kind, days=40, host=HOST):
    """A leaf signed by the intermediate in d, with its key in both forms."""
    ext = os.path.join(d, name + ".ext")
    with open(ext, "w") as f:
        f.write(LEAF_EXT.replace(HOST, host))
    openssl("req", *KEYGEN[kind], "-nodes", "-keyout", name + ".key", "-out", name + ".csr",
            "-subj", "/CN=%s" % host, cwd=d)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", "int.pem", "-CAkey", "int.key", "-CAcreateserial",
            "-out", name + ".pem", "-days", str(days), "-extfile", ext, cwd=d)
    openssl("pkey", "-in", name + ".key", "-traditional", "-out", name + ".trad.key", cwd=d)
    with open(os.path.join(d, name + ".chain.pem"), "wb") as f:
        f.write(open(os.path.join(d, name + ".pem"), "rb").read() + open(os.path.join(d, "int.pem"), "rb").read())
    return {"leaf": os.path.join(d, name + ".pem"), "key": os.path.join(d, name + ".key"),
            "key_trad": os.path.join(d, name + ".trad.key"), "chain": os.path.join(d, name + ".chain.pem")}


def install_pair(p, d):
    """A test PKI's chain and key copied into d under certbot's names, as
    a deploy would put them: (fullchain.pem, privkey.pem)."""
    os.makedirs(d, exist_ok=True)
    chain, key = os.path.join(d, "fullchain.pem"), os.path.join(d, "privkey.pem")
    shutil.copy(p["chain"], chain)
    shutil.copy(p["key"], key)
    return chain, key


def tls_server(chain, key, *args, **kw):
    return Server("--cert", chain, "--key", key, *args, **kw)


def serial_of(pem):
    return openssl("x509", "-in", pem, "-noout", "-serial").decode().strip().split("=", 1)[1]


def tls_context(root):
    ctx = ssl.create_default_context(cafile=root)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def tls_sock(srv, root, timeout=10):
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
    return tls_context(root).wrap_socket(raw, server_hostname=HOST)


def openssl_ca_dir(d):
    """What `openssl ca -config ca.cnf` needs in d, to sign with any dates."""
    with open(os.path.join(d, "ca.cnf"), "w") as f:
        f.write("[ca]\ndefault_ca = ca\n[ca]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n"
                "default_md = sha256\npolicy = any\ncopy_extensions = copy\nunique_subject = no\n"
                "[any]\ncommonName = supplied\n")
    open(os.path.join(d, "index.txt"), "w").close()
    with open(os.path.join(d, "serial"), "w") as f:
        f.write("1000\n")
