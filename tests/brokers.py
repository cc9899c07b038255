#!/usr/bin/env python3
"""--forward against real brokers on loopback: redis-server, started here
on a free port with its append-only file synced on every write. Usage:

    brokers.py BINARY FIXTURES_DIR

The last line is 'brokers: N passed, N failed'.
"""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import integration as it  # noqa: E402
import events  # noqa: E402
import fault  # noqa: E402

TESTS = []
PASSWORD = "broker-pass-Zq8"


def test(fn):
    TESTS.append(fn)
    return fn


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Redis:
    """A redis-server of our own, durable: appendfsync always."""

    def __init__(self, port=None, data=None):
        self.port = port or free_port()
        self.data = data or tempfile.mkdtemp(prefix="redis-", dir=it.WORK)
        self.start()

    def start(self):
        self.log = open(os.path.join(self.data, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", self.data,
             "--requirepass", PASSWORD], stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        assert fault.wait_until(lambda: self.ping(), 10), "redis-server did not start"

    def ping(self):
        try:
            return self.cli("PING").strip() == "PONG"
        except subprocess.CalledProcessError:
            return False

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), "-a", PASSWORD, "--no-auth-warning", "--raw",
                               *args], capture_output=True, text=True, timeout=30, check=True).stdout

    def entries(self, key):
        """[(id, event JSON text, sha256 hex)] of the stream, in order."""
        out = self.cli("XRANGE", key, "-", "+").split("\n")
        got = []
        k = 0
        while k + 4 < len(out):
            fields = dict(zip(out[k + 1:k + 5:2], out[k + 2:k + 5:2]))
            got.append((out[k], fields["event"], fields["sha256"]))
            k += 5
        return got

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


def url(r, key, password=PASSWORD):
    return "redis://:%s@127.0.0.1:%d/%s" % (password, r.port, key)


@test
def redis_stream_gets_every_event_in_order_and_byte_exact():
    r = Redis()
    srv = it.Server("--forward", url(r, "x:events"))
    try:
        bodies = [b for _, b in it.fixtures()] + [b'{ "spaced" : [ 1 , 2 ] , "u" : "\\u00e9\\/" }']
        c = srv.conn()
        for b in bodies:
            assert it.post(c, b)[0].status == 200
        # Four posters at once: each one's events in its own order.
        def poster(k):
            cc = srv.conn()
            for i in range(50):
                assert it.post(cc, b'{"poster":%d,"i":%d}' % (k, i))[0].status == 200
        it.in_threads(poster, 4)
        assert "taken=stdout+redis " in srv.stderr()
        # The password is out of ps.
        assert PASSWORD.encode() not in open("/proc/%d/cmdline" % srv.proc.pid, "rb").read()
    finally:
        srv.stop()
        entries = r.entries("x:events")
        r.stop()
    first = entries[:len(bodies)]
    for b, (_, ev, sha) in zip(bodies, first):
        assert sha == hashlib.sha256(b).hexdigest()
        if b.startswith(b"{ "):
            assert ev == '{"spaced":[1,2],"u":"\\u00e9\\/"}', ev
        else:
            assert ev.encode() == json.dumps(json.loads(b), separators=(",", ":"), ensure_ascii=False).encode()
    rest = [json.loads(ev) for _, ev, _ in entries[len(bodies):]]
    assert len(rest) == 200
    for k in range(4):
        assert [o["i"] for o in rest if o["poster"] == k] == list(range(50))


@test
def bad_brokers_are_refused_at_start_with_one_line():
    r = Redis()
    try:
        for args, part in ((["--forward", url(r, "s", "wrong")], "WRONGPASS"),
                           (["--forward", "redis://127.0.0.1:%d/s" % free_port()], "Connection refused"),
                           (["--forward", "nats://127.0.0.1:4222/s"], "unknown scheme"),
                           (["--forward", "redis://:pw@127.0.0.1/s"], "with the port"),
                           (["--forward", "redis://127.0.0.1:%d/" % r.port], "expected redis://")):
            p = subprocess.run([it.BIN, "--listen", "127.0.0.1:0", *args], capture_output=True, timeout=30,
                               env={"TWITTER_CONSUMER_SECRET": it.SECRET, "PATH": os.environ["PATH"]})
            err = p.stderr.decode()
            it.check_sanitizers(err)
            assert p.returncode == 1 and part in err and err.count("\n") == 1, (args, p.returncode, err)
            assert "wrong" not in err and "pw@" not in err, err  # no password in a message
    finally:
        r.stop()


@test
def broker_killed_and_restarted_loses_no_acknowledged_event():
    r = Redis()
    srv = it.Server("--quiet", "--forward", url(r, "durable"))
    acked, lock = set(), threading.Lock()
    codes = []
    stop = threading.Event()
    try:
        def poster(k):
            i = 0
            c = srv.conn(timeout=15)
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    resp, _ = it.post(c, b'{"poster":%d,"i":%d}' % (k, i))
                    st = resp.status
                except (OSError, it.http.client.HTTPException):
                    st = "error"
                    c.close()
                    c = srv.conn(timeout=15)
                with lock:
                    codes.append((st, time.monotonic() - t0))
                    if st == 200:
                        acked.add((k, i))
                i += 1
            c.close()
        posters = [threading.Thread(target=poster, args=(k,)) for k in range(4)]
        for t in posters:
            t.start()
        time.sleep(1.5)
        probe = events.CrcProbe(srv.port)
        probe.start()
        r.kill()  # mid-load; every 200 before this is in its AOF
        time.sleep(2)
        worst = probe.finish()
        during = len(acked)
        r.start()
        # Back within the backoff (at most 5 s), and events flow again.
        assert fault.wait_until(lambda: len(acked) > during + 20, 15), "events did not resume"
        stop.set()
        for t in posters:
            t.join()
        assert "did not take the events" in srv.stderr() or "unreachable" in srv.stderr()
    finally:
        stop.set()
        srv.stop()
        entries = r.entries("durable")
        r.stop()
    statuses = {st for st, _ in codes}
    assert 503 in statuses, "no 503 while the broker was down: %r" % statuses
    assert statuses <= {200, 503}, statuses
    assert max(t for st, t in codes if st == 503) < 9, "a 503 took past X's 10 s"
    stored = {(o["poster"], o["i"]) for o in (json.loads(ev) for _, ev, _ in entries)}
    missing = acked - stored
    assert not missing, "%d acknowledged events are not in the stream" % len(missing)
    print("    (redis kill -9 under load: %d events acknowledged, all in the stream after restart; "
          "%d got 503 meanwhile; worst CRC %.1f ms)" % (len(acked), sum(1 for st, _ in codes if st == 503),
                                                       worst * 1000))


def main():
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        print("FAIL redis-server and redis-cli are not installed (.ci/run installs redis-server redis-tools)")
        print("brokers: 0 passed, 1 failed")
        sys.exit(1)
    passed, failed = it.run_suite(TESTS)
    print("brokers: %d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
