#!/usr/bin/env python3
"""--forward against real brokers on loopback: redis-server, started here
on a free port with its append-only file synced on every write, and
nats-server with JetStream on file storage, its stream created here over
the NATS protocol (Debian has no NATS CLI); and haproxy in front of two
instances sharing them. Usage:

    brokers.py BINARY FIXTURES_DIR

The last line is 'brokers: N passed, N failed'.
"""
import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as it  # noqa: E402  (what every suite shares)

PASSWORD = "broker-pass-Zq8"
TOKEN = "nats-token-Kx3"

test = it.test
free_port = it.free_port


class Broker:
    """A broker process of the tests' own, with its log."""

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


class Redis(Broker):
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
        assert it.wait_until(lambda: self.ping(), 10), "redis-server did not start"

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


def refused_at_start(*args):
    """xwebhook started with args must exit 1 with one line on stderr:
    that line."""
    p = subprocess.run([it.BIN, "--listen", "127.0.0.1:0", *args], capture_output=True, timeout=30,
                       env={"TWITTER_CONSUMER_SECRET": it.SECRET, "PATH": os.environ["PATH"]})
    err = p.stderr.decode()
    it.check_sanitizers(err)
    assert p.returncode == 1 and err.count("\n") == 1, (args, p.returncode, err)
    return err


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
                           (["--forward", "amqp://127.0.0.1:5672/s"], "unknown scheme"),
                           (["--forward", "redis://:pw@127.0.0.1/s"], "with the port"),
                           (["--forward", "redis://127.0.0.1:%d/" % r.port], "expected redis://"),
                           (["--forward", url(r, "s?maxlen=0")], "?maxlen= takes a number"),
                           (["--forward", url(r, "s?maxlen=-5")], "?maxlen= takes a number"),
                           (["--forward", url(r, "s?maxlen=1000000000000")], "?maxlen= takes a number"),
                           (["--forward", url(r, "s?max=5")], "unknown parameter"),
                           (["--forward", url(r, "?maxlen=5")], "stream's name is missing"),
                           (["--forward", url(r, "s?dedupe=-1")], "?dedupe= takes the window"),
                           (["--forward", url(r, "s?dedupe=86401")], "?dedupe= takes the window"),
                           (["--forward", url(r, "s?dedupe=")], "?dedupe= takes the window"),
                           (["--forward", url(r, "s?dedupe=10s")], "?dedupe= takes the window"),
                           (["--forward", url(r, "s?dedupe=99999999999999999999")], "?dedupe= takes the window"),
                           (["--forward", url(r, "s?maxlen=5&")], "end with an empty one"),
                           (["--forward", url(r, "s?maxlen=5&dedup=5")], "unknown parameter"),
                           (["--forward", url(r, "x:{type}:{type}")], "can stand once")):
            err = refused_at_start(*args)
            assert part in err, (args, err)
            assert "wrong" not in err and "pw@" not in err, err  # no password in a message
    finally:
        r.stop()


@test
def maxlen_trims_the_stream_and_keeps_the_newest():
    # MAXLEN ~ 100: Redis trims whole nodes (100 entries each by default),
    # so about 100 stay, never fewer, and they are the newest, in order.
    r = Redis()
    srv = it.Server("--forward", url(r, "trim?maxlen=100"))
    try:
        assert "redis://127.0.0.1:%d/trim?maxlen=100" % r.port in srv.stderr()
        c = srv.conn()
        for i in range(450):
            assert it.post(c, b'{"i":%d}' % i)[0].status == 200
    finally:
        srv.stop()
        got = [json.loads(ev)["i"] for _, ev, _ in r.entries("trim")]
        r.stop()
    assert 100 <= len(got) < 300, len(got)
    assert got == list(range(450 - len(got), 450)), got[:5]


def killed_and_restarted(broker, forward, stored_events, what):
    """Signed POSTs from four posters while the broker is kill -9'ed and
    restarted: every 200'd event is stored afterwards, the outage gives
    503 within X's 10 s, and CRCs go on meanwhile."""
    srv = it.Server("--quiet", "--forward", forward)
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
        probe = it.CrcProbe(srv.port)
        probe.start()
        broker.kill()  # mid-load; every 200 before this is stored
        time.sleep(2)
        worst = probe.finish()
        during = len(acked)
        broker.start()
        # Back within the backoff (at most 5 s), and events flow again.
        assert it.wait_until(lambda: len(acked) > during + 20, 15), "events did not resume"
        stop.set()
        for t in posters:
            t.join()
        # Said once, whichever noticed first: a batch, or the idle look.
        assert "did not take the events" in srv.stderr() or "POSTs get 503 until it answers" in srv.stderr(), \
            srv.stderr()
    finally:
        stop.set()
        srv.stop()
        try:
            stored = {(o["poster"], o["i"]) for o in (json.loads(ev) for ev in stored_events())}
        finally:
            broker.stop()
    statuses = {st for st, _ in codes}
    assert 503 in statuses, "no 503 while the broker was down: %r" % statuses
    assert statuses <= {200, 503}, statuses
    assert max(t for st, t in codes if st == 503) < 9, "a 503 took past X's 10 s"
    missing = acked - stored
    assert not missing, "%d acknowledged events are not in the stream" % len(missing)
    print("    (%s kill -9 under load: %d events acknowledged, all in the stream after restart; "
          "%d got 503 meanwhile; worst CRC %.1f ms)" % (what, len(acked), sum(1 for st, _ in codes if st == 503),
                                                       worst * 1000))


@test
def a_broker_that_dies_while_idle_is_logged_and_its_return_too():
    # No event in flight: the writer sees the connection close, dials
    # again at once and fails. That failure is one line in the log (it
    # was silent, and the next POSTs got 503 with no line at all), and
    # the broker's return is another, without any event to find it.
    r = Redis()
    srv = it.Server("--forward", url(r, "idle"))
    try:
        assert it.post(srv.conn(), b'{"while":"first"}')[0].status == 200
        r.kill()
        assert it.wait_until(lambda: "POSTs get 503 until it answers" in srv.stderr(), 10), srv.stderr()
        assert it.post(srv.conn(), b'{"while":"down"}')[0].status == 503
        # Once an outage, not once a dial: a listener on the port that
        # closes each connection sees three more dials fail, silently.
        dials = []
        lsn = socket.create_server(("127.0.0.1", r.port))

        def closer():
            while True:
                try:
                    c, _ = lsn.accept()
                except OSError:
                    return
                dials.append(1)
                c.close()
        threading.Thread(target=closer, daemon=True).start()
        try:
            assert it.wait_until(lambda: len(dials) >= 3, 20), len(dials)
        finally:
            lsn.close()
        assert srv.stderr().count("POSTs get 503 until it answers") == 1, srv.stderr()
        r.start()
        assert it.wait_until(lambda: srv.stderr().endswith(": connected\n"), 15), srv.stderr()
        assert it.post(srv.conn(), b'{"while":"up"}')[0].status == 200
    finally:
        srv.stop()
        r.stop()


@test
def redis_killed_and_restarted_loses_no_acknowledged_event():
    r = Redis()
    killed_and_restarted(r, url(r, "durable"), lambda: [ev for _, ev, _ in r.entries("durable")], "redis")


@test
def idle_connections_closed_by_redis_cost_no_event():
    """A Redis that closes idle clients (timeout 1): the next event finds
    out before it is sent, not by getting 503."""
    r = Redis()
    r.cli("CONFIG", "SET", "timeout", "1")
    srv = it.Server("--forward", url(r, "idle"))
    try:
        c = srv.conn()
        assert it.post(c, b'{"n":1}')[0].status == 200
        time.sleep(12)  # redis checks its timeouts every few seconds
        for n in range(2, 5):
            c = srv.conn()
            assert it.post(c, b'{"n":%d}' % n)[0].status == 200
    finally:
        srv.stop()
        entries = r.entries("idle")
        r.stop()
    assert [json.loads(ev)["n"] for _, ev, _ in entries] == [1, 2, 3, 4]


@test
def redis_dedupe_stores_a_resend_once_across_two_instances_and_dedupe_0_does_not():
    # Two instances on one Redis: the same signed event posted to each,
    # twice, is one entry, and every POST is answered 200; its dedupe key
    # is the stream's own and lives the window. With dedupe=0 the plain
    # XADD of before stores each resend.
    r = Redis()
    a = it.Server("--forward", url(r, "dd?dedupe=120"))
    b = it.Server("--forward", url(r, "dd"))
    off = it.Server("--forward", url(r, "plain?dedupe=0"))
    other = it.Server("--forward", url(r, "dd2"))  # another stream: its own keys
    ev = b'{"for_user_id":"7","tweet_create_events":[{"id_str":"1"}]}'
    sha = hashlib.sha256(ev).hexdigest()
    try:
        for srv in (a, b, a, b):
            assert it.post(srv.conn(), ev)[0].status == 200
        assert it.post(a.conn(), b'{"other":1}')[0].status == 200
        for _ in range(2):
            assert it.post(off.conn(), ev)[0].status == 200
            assert it.post(other.conn(), ev)[0].status == 200
        ttl = int(r.cli("TTL", "dd:sha256:" + sha))
        stored = r.cli("GET", "dd:sha256:" + sha).strip()
        keys = sorted(r.cli("KEYS", "dd:*").split())
    finally:
        for srv in (a, b, off, other):
            srv.stop()
        got = r.entries("dd")
        plain = r.entries("plain")
        got2 = r.entries("dd2")
        r.stop()
    assert [(e, h) for _, e, h in got] == [(ev.decode(), sha), ('{"other":1}', hashlib.sha256(b'{"other":1}').hexdigest())], got
    assert stored == got[0][0], (stored, got[0])  # the key names the entry it stands for
    assert 100 < ttl <= 120, ttl  # the first instance's window
    assert keys == sorted(["dd:sha256:" + sha, "dd:sha256:" + hashlib.sha256(b'{"other":1}').hexdigest()]), keys
    assert [e for _, e, _ in plain] == [ev.decode()] * 2, plain
    assert [e for _, e, _ in got2] == [ev.decode()], got2


@test
def redis_script_flush_is_loaded_again_and_nothing_is_added_twice():
    # SCRIPT FLUSH (or a Redis that restarted) makes EVALSHA answer
    # NOSCRIPT: xwebhook loads the script again and resends; the event
    # is stored once, and an earlier event's resend is still a duplicate.
    r = Redis()
    srv = it.Server("--forward", url(r, "fl"))
    try:
        assert it.post(srv.conn(), b'{"n":1}')[0].status == 200
        r.cli("SCRIPT", "FLUSH")
        for body in (b'{"n":2}', b'{"n":1}', b'{"n":3}'):
            assert it.post(srv.conn(), body)[0].status == 200, body
        assert it.wait_until(lambda: "Redis had lost the dedupe script" in srv.stderr(), 10), srv.stderr()  # (the log is written apart)
    finally:
        srv.stop()
        got = [json.loads(e)["n"] for _, e, _ in r.entries("fl")]
        r.stop()
    assert got == [1, 2, 3], got


@test
def noscript_resends_the_batch_and_a_second_at_once_fails_it():
    # A stand-in: NOSCRIPT to the first EVALSHA, then the resend on a
    # fresh connection (after SCRIPT LOAD) is answered and taken: 200.
    # NOSCRIPT again straight after the reload is 503, not a loop.
    h, _, srv = held()
    try:
        p = Poster(srv, b'{"n":1}')
        assert h.wait_xadds(1)
        h.answer(0, b"-NOSCRIPT No matching script. Please use EVAL.\r\n")
        assert h.wait_xadds(2), "the event was not sent again"
        assert h.xadds[1][1] == b'{"n":1}' and h.xadds[1][0] is not h.xadds[0][0]
        assert p.status is None
        h.answer(1)
        assert p.result() == 200
        q = Poster(srv, b'{"n":2}')
        assert h.wait_xadds(3)
        h.answer(2, b"-NOSCRIPT No matching script. Please use EVAL.\r\n")
        assert h.wait_xadds(4)
        h.answer(3, b"-NOSCRIPT No matching script. Please use EVAL.\r\n")
        assert q.result() == 503
        assert it.wait_until(lambda: "lost the dedupe script again" in srv.stderr(), 10), srv.stderr()  # (the log is written apart)
    finally:
        srv.stop()
        h.close()


@test
def noscript_mid_batch_resends_it_whole_and_its_first_ack_stands_for_nothing():
    # Four batches out (the most), two events queued meanwhile go out as
    # one batch. Its first event is stored (an entry id), its second gets
    # NOSCRIPT: the batch is sent again whole on a fresh connection, and
    # only the replies to that resend count: the first one ("duplicate")
    # answers nobody alone, the second lets both have their 200.
    h, _, srv = held(metrics=True)
    try:
        posters = []
        for k in range(4):
            posters.append(Poster(srv, b'{"n":%d}' % k))
            assert h.wait_xadds(k + 1)
        posters += [Poster(srv, b'{"n":4}'), Poster(srv, b'{"n":5}')]
        # Both queued at the writer, which has four out.
        assert it.wait_until(lambda: writer_queue(srv) == 6, 10), writer_queue(srv)
        h.answer_together(0, 3)
        assert h.wait_xadds(6) and h.xadds[4][0] is h.xadds[5][0]
        assert [p.result() for p in posters[:4]] == [200] * 4
        h.answer(4)
        h.answer(5, b"-NOSCRIPT No matching script. Please use EVAL.\r\n")
        assert h.wait_xadds(8), "the batch was not sent again"
        # (4 and 5 were posted at once: either may come first)
        batch = [e for _, e in h.xadds[4:6]]
        assert sorted(batch) == [b'{"n":4}', b'{"n":5}'], batch
        assert [e for _, e in h.xadds[6:]] == batch, "the resend is not the batch, whole and in its order"
        h.answer(6, b"+duplicate\r\n")
        posters[4].join(1)
        assert posters[4].status is None and posters[5].status is None, "answered before the resend's replies"
        h.answer(7)
        assert [p.result() for p in posters[4:]] == [200, 200]
    finally:
        srv.stop()
        h.close()


@test
def a_redis_that_does_not_load_the_script_is_refused_at_start():
    # SCRIPT LOAD must answer the SHA-1 that EVALSHA will name: another
    # name, an error, or no bulk string is one line and exit 1.
    for reply, part in ((b"$40\r\n" + b"0" * 40 + b"\r\n", "did not load the dedupe script"),
                        (b"-ERR unknown command 'SCRIPT'\r\n", "did not load the dedupe script"),
                        (b"+OK\r\n", "did not load the dedupe script")):
        h = HeldRedis(script=reply)
        try:
            err = refused_at_start("--forward", "redis://127.0.0.1:%d/s" % h.port)
            assert part in err, (reply, err)
        finally:
            h.close()


@test
def duplicate_is_an_acknowledgement_only_from_the_script():
    # "+duplicate" is what the script answers for a resend; to a plain
    # XADD (dedupe=0) it is no entry id; near misses are none either.
    for params, reply, want in (("", b"+duplicate\r\n", 200),
                                ("?dedupe=0", b"+duplicate\r\n", 503),
                                ("", b"+duplicates\r\n", 503),
                                ("", b"$9\r\nduplicate\r\n", 503),
                                ("", b"-ERR duplicate\r\n", 503),
                                ("", b":1\r\n", 503)):
        h = HeldRedis(auto=reply)
        srv = it.Server("--forward", "redis://127.0.0.1:%d/s%s" % (h.port, params))
        try:
            assert it.post(srv.conn(), b'{"n":1}')[0].status == want, (params, reply)
        finally:
            srv.stop()
            h.close()


@test
def redis_type_routing_puts_each_event_on_its_types_stream():
    r = Redis()
    srv = it.Server("--forward", url(r, "x:{type}?maxlen=1000&dedupe=60"))
    try:
        for body in (b'{"for_user_id":"1","tweet_create_events":[]}', b'{"data":{"event_type":"Post.Create"}}',
                     b'{"for_user_id":"1","user_event":{}}', b'{"n":1}', b'{"for_user_id":"1","tweet_create_events":[1]}'):
            assert it.post(srv.conn(), body)[0].status == 200
        assert "x:{type}?maxlen=1000" in srv.stderr()
    finally:
        srv.stop()
        streams = {k: [json.loads(e) for _, e, _ in r.entries(k)] for k in
                   ("x:tweet_create_events", "x:post.create", "x:user_event", "x:other")}
        r.stop()
    assert [len(v) for v in streams.values()] == [2, 1, 1, 1], streams
    assert streams["x:tweet_create_events"][1]["tweet_create_events"] == [1]


@test
def nats_type_routing_publishes_on_the_types_subject_and_needs_a_stream_for_all():
    n = Nats()
    n.create_stream("EVENTS", ["x.events.>"])
    n.create_stream("ONE", ["y.events.*"])
    n.create_stream("SOME", ["z.events.post.*", "z.events.a"])
    srv = it.Server("--forward", nats_url(n, "x.events.{type}"))
    try:
        assert "JetStream stream EVENTS takes the events" in srv.stderr()
        for body in (b'{"data":{"event_type":"post.create"}}', b'{"for_user_id":"1","user_event":{}}', b'{"n":1}'):
            assert it.post(srv.conn(), body)[0].status == 200
        c = NatsClient(n.port)
        subjects = [c.request("$JS.API.STREAM.MSG.GET.EVENTS", {"seq": k})["message"]["subject"] for k in (1, 2, 3)]
        c.close()
        for subject, part in (("y.events.{type}", "no JetStream stream captures every subject"),
                              ("z.events.{type}", "no JetStream stream captures every subject"),
                              ("q.{type}", "no JetStream stream captures every subject"),
                              ("x.{type}.in", "can only be a NATS subject's last name"),
                              ("x.ev{type}", "can only be a NATS subject's last name"),
                              ("x.{type}.{type}", "can stand once"),
                              ("x.*.{type}", "without wildcards")):
            err = refused_at_start("--forward", nats_url(n, subject))
            assert part in err, (subject, err)
    finally:
        srv.stop()
        n.stop()
    assert subjects == ["x.events.post.create", "x.events.user_event", "x.events.other"], subjects


# ---- NATS JetStream ----

class NatsClient:
    """Just enough of the NATS protocol to ask JetStream's API."""

    def __init__(self, port, token=TOKEN):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.f = self.s.makefile("rb")
        info = self.f.readline()
        assert info.startswith(b"INFO "), info
        opts = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True}
        if token:
            opts["auth_token"] = token
        self.s.sendall(b"CONNECT " + json.dumps(opts).encode() + b"\r\nPING\r\n")
        while True:
            line = self.f.readline()
            if line.startswith(b"PONG"):
                break
            if not line or line.startswith(b"-ERR"):
                raise RuntimeError(line)
        self.inbox = "_INBOX.t" + os.urandom(6).hex()
        self.s.sendall(b"SUB %s.* 1\r\n" % self.inbox.encode())
        self.n = 0

    def request(self, subject, payload=b""):
        self.n += 1
        reply = "%s.%d" % (self.inbox, self.n)
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
        self.s.sendall(b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(payload), payload))
        while True:
            line = self.f.readline()
            parts = line.split()
            if not parts:
                raise RuntimeError("NATS closed the connection")
            if parts[0] == b"PING":
                self.s.sendall(b"PONG\r\n")
            elif parts[0] in (b"MSG", b"HMSG"):
                data = self.f.read(int(parts[-1]) + 2)[:-2]
                if parts[1].decode() == reply:
                    if parts[0] == b"HMSG":
                        return {"status": data[:int(parts[-2])].decode()}
                    return json.loads(data)
            elif parts[0] == b"-ERR":
                raise RuntimeError(line)

    def close(self):
        self.s.close()


class Nats(Broker):
    """A nats-server of our own: JetStream on file storage, a token."""

    def __init__(self, jetstream=True, extra=""):
        self.port = free_port()
        self.data = tempfile.mkdtemp(prefix="nats-", dir=it.WORK)
        self.conf = os.path.join(self.data, "nats.conf")
        with open(self.conf, "w") as f:
            f.write("listen: 127.0.0.1:%d\nauthorization { token: %s }\n%s\n" % (self.port, TOKEN, extra))
            if jetstream:
                f.write("jetstream { store_dir: %s }\n" % json.dumps(os.path.join(self.data, "js")))
        self.start()

    def start(self):
        self.log = open(os.path.join(self.data, "nats.log"), "ab")
        self.proc = subprocess.Popen(["nats-server", "-c", self.conf], stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        assert it.wait_until(self.up, 10), "nats-server did not start"

    def up(self):
        try:
            NatsClient(self.port).close()
            return True
        except (OSError, RuntimeError, AssertionError):
            return False

    def create_stream(self, name, subjects):
        c = NatsClient(self.port)
        try:
            got = c.request("$JS.API.STREAM.CREATE." + name,
                            {"name": name, "subjects": subjects, "storage": "file",
                             "duplicate_window": 120 * 10**9})
        finally:
            c.close()
        assert "error" not in got, got

    def messages(self, stream):
        """[(data bytes, Nats-Msg-Id)] of the stream, in order."""
        c = NatsClient(self.port)
        try:
            last = c.request("$JS.API.STREAM.INFO." + stream)["state"]["last_seq"]
            got = []
            for seq in range(1, last + 1):
                m = c.request("$JS.API.STREAM.MSG.GET." + stream, {"seq": seq})["message"]
                hdrs = base64.b64decode(m.get("hdrs", "")).decode()
                ids = [h.split(":", 1)[1].strip() for h in hdrs.split("\r\n") if h.lower().startswith("nats-msg-id:")]
                got.append((base64.b64decode(m.get("data", "")), ids[0] if ids else None))
            return got
        finally:
            c.close()


def nats_url(n, subject, token=TOKEN):
    return "nats://%s@127.0.0.1:%d/%s" % (token, n.port, subject)


class Haproxy:
    """A real haproxy of the test's own in front of xwebhook instances:
    its config generated into the test's temp dir, free loopback ports,
    each instance's GET /healthz on its --metrics port as its health check
    (as the README's runbook says; every 100 ms, down after two failures),
    and its stats page to see what it thinks of each. ports: (webhook
    port, metrics port) of each instance."""

    def __init__(self, ports):
        self.port, self.stats = free_port(), free_port()
        self.data = tempfile.mkdtemp(prefix="haproxy-", dir=it.WORK)
        self.conf = os.path.join(self.data, "haproxy.cfg")
        servers = "".join("    server i%d 127.0.0.1:%d check port %d inter 100ms fall 2 rise 1\n" % (k, p, m)
                          for k, (p, m) in enumerate(ports))
        with open(self.conf, "w") as f:
            f.write("global\n    maxconn 512\n"
                    "defaults\n    mode http\n    timeout connect 2s\n    timeout client 20s\n"
                    "    timeout server 20s\n    retries 3\n    option redispatch\n"
                    "frontend webhook\n    bind 127.0.0.1:%d\n    default_backend xwebhook\n"
                    "backend xwebhook\n    option httpchk GET /healthz\n"
                    "    http-check expect status 200\n%s"
                    "listen stats\n    bind 127.0.0.1:%d\n    stats enable\n    stats uri /stats\n"
                    % (self.port, servers, self.stats))
        self.log = open(os.path.join(self.data, "haproxy.log"), "ab")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", self.conf], stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        assert it.wait_until(lambda: self.states() == ["UP"] * len(ports), 10), \
            "haproxy did not see every instance up: %r" % self.states()

    def states(self):
        """Each instance's status as haproxy's stats page gives it."""
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.stats, timeout=5)
            c.request("GET", "/stats;csv")
            rows = c.getresponse().read().decode().splitlines()
            c.close()
        except OSError:
            return []
        head = rows[0].lstrip("# ").split(",")
        return [dict(zip(head, r.split(",")))["status"] for r in rows[1:]
                if r.startswith("xwebhook,i")]

    def conn(self, timeout=10):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def post_until_200(conn, body, deadline):
    """POST body as X does: again on anything but 200 (503, haproxy's
    502, a reset) until it is taken. How many tries it took."""
    tries = 0
    while True:
        tries += 1
        try:
            c = conn()
            if it.post(c, body)[0].status == 200:
                return tries
            c.close()
        except (OSError, http.client.HTTPException):
            pass
        assert time.time() < deadline, "%r never got 200 in %d tries" % (body, tries)


@test
def two_instances_behind_haproxy_store_each_event_once_through_a_kill_9():
    # Two instances on one Redis and one NATS, behind a real haproxy.
    # The same signed event posted to each directly and twice through
    # haproxy is one Redis entry and one NATS message. Then four clients
    # post distinct events through haproxy, retrying as X does, while
    # one instance is kill -9'd: every event gets its 200 in the end and
    # is in each stream exactly once.
    r = Redis()
    n = Nats()
    n.create_stream("EVENTS", ["x.events.>"])
    fwd = ("--forward", url(r, "x:events"), "--forward", nats_url(n, "x.events.{type}"), "--quiet")
    ma, mb = free_port(), free_port()
    a = it.Server(*fwd, "--metrics", "127.0.0.1:%d" % ma)
    b = it.Server(*fwd, "--metrics", "127.0.0.1:%d" % mb)
    hp = Haproxy([(a.port, ma), (b.port, mb)])
    same = b'{"for_user_id":"9","tweet_create_events":[{"id_str":"42"}]}'
    done = {}
    try:
        for conn in (a.conn, b.conn, hp.conn, hp.conn):
            assert it.post(conn(), same)[0].status == 200
        killed = threading.Event()

        def poster(k):
            deadline = time.time() + 60
            for i in range(120):
                body = b'{"load":%d,"i":%d}' % (k, i)
                done[body] = post_until_200(hp.conn, body, deadline)
                if k == 0 and i == 40:
                    a.proc.send_signal(signal.SIGKILL)  # mid-stream, the others posting
                    killed.set()
        it.in_threads(poster, 4)
        assert killed.is_set()
        assert it.wait_until(lambda: hp.states() == ["DOWN", "UP"], 10), hp.states()
    finally:
        hp.stop()
        a.stop()
        b.stop()
        entries = [e for _, e, _ in r.entries("x:events")]
        msgs = n.messages("EVENTS")
        r.stop()
        n.stop()
    retried = sum(1 for t in done.values() if t > 1)
    print("    (%d events through haproxy, %d retried across the kill -9; %d Redis entries, %d NATS messages)"
          % (len(done), retried, len(entries), len(msgs)))
    want = sorted([same] + list(done))
    assert sorted(e.encode() for e in entries) == want, "Redis: %d entries for %d events" % (len(entries), len(want))
    assert sorted(d for d, _ in msgs) == want, "NATS: %d messages for %d events" % (len(msgs), len(want))
    assert sorted(i for _, i in msgs) == sorted(hashlib.sha256(w).hexdigest() for w in want)


@test
def nats_stream_gets_every_event_in_order_byte_exact_and_resends_once():
    n = Nats()
    n.create_stream("EVENTS", ["x.events.>"])
    srv = it.Server("--forward", nats_url(n, "x.events.in"))
    try:
        bodies = [b for _, b in it.fixtures()] + [b'{ "spaced" : [ 1 , 2 ] , "u" : "\\u00e9\\/" }']
        c = srv.conn()
        for b in bodies:
            assert it.post(c, b)[0].status == 200
        # X's resend of the same bytes is stored once (Nats-Msg-Id).
        for _ in range(2):
            assert it.post(c, bodies[0])[0].status == 200

        def poster(k):
            cc = srv.conn()
            for i in range(50):
                assert it.post(cc, b'{"poster":%d,"i":%d}' % (k, i))[0].status == 200
        it.in_threads(poster, 4)
        err = srv.stderr()
        assert "taken=stdout+nats " in err and "JetStream stream EVENTS takes the events" in err, err
        assert TOKEN.encode() not in open("/proc/%d/cmdline" % srv.proc.pid, "rb").read()
    finally:
        srv.stop()
        msgs = n.messages("EVENTS")
        n.stop()
    assert TOKEN not in srv.stderr()
    for b, (data, msg_id) in zip(bodies, msgs):
        assert msg_id == hashlib.sha256(b).hexdigest()
        if b.startswith(b"{ "):
            assert data == b'{"spaced":[1,2],"u":"\\u00e9\\/"}', data
        else:
            assert data == json.dumps(json.loads(b), separators=(",", ":"), ensure_ascii=False).encode()
    rest = [json.loads(d) for d, _ in msgs[len(bodies):]]
    assert len(rest) == 200, "%d messages after the fixtures: the resends were stored again?" % len(rest)
    for k in range(4):
        assert [o["i"] for o in rest if o["poster"] == k] == list(range(50))


@test
def bad_nats_is_refused_at_start_with_one_line():
    n = Nats()
    bare = Nats(jetstream=False)
    n.create_stream("EVENTS", ["x.events"])
    try:
        for args, part in ((["--forward", nats_url(n, "x.events", "wrong-token")], "Authorization Violation"),
                           (["--forward", nats_url(n, "y.elsewhere")], "no JetStream stream captures"),
                           (["--forward", nats_url(bare, "x.events")], "started with -js"),
                           (["--forward", nats_url(n, "x.*")], "without wildcards"),
                           (["--forward", nats_url(n, "x..events")], "without wildcards"),
                           (["--forward", "nats://%s@127.0.0.1/x" % TOKEN], "with the port"),
                           (["--forward", "nats://127.0.0.1:%d/x" % n.port], "Authorization Violation"),
                           (["--forward", "kafka://127.0.0.1:9092/x"], "unknown scheme")):
            err = refused_at_start(*args)
            assert part in err, (args, err)
            assert "wrong-token" not in err and TOKEN not in err, err
    finally:
        n.stop()
        bare.stop()


@test
def nats_max_payload_lowers_max_body_and_the_limit_holds():
    n = Nats(extra="max_payload: 4096")
    n.create_stream("EVENTS", ["x.events"])
    srv = it.Server("--forward", nats_url(n, "x.events"))
    try:
        err = srv.stderr()
        assert "--max-body lowered to %d bytes" % (4096 - 91) in err, err
        c = srv.conn()
        fits = b'{"pad":"%s"}' % (b"a" * (4096 - 91 - 10))
        assert len(fits) == 4096 - 91
        assert it.post(c, fits)[0].status == 200
        c = srv.conn()
        assert it.post(c, fits[:-2] + b'a"}')[0].status == 413
    finally:
        srv.stop()
        msgs = n.messages("EVENTS")
        n.stop()
    assert [d for d, _ in msgs] == [fits]


@test
def idle_nats_connection_answers_pings_and_survives():
    """nats-server PINGs every second and drops a client that leaves
    three unanswered; the idle writer answers them, and an event after a long
    quiet spell is taken at once."""
    n = Nats(extra="ping_interval: \"1s\"\nping_max: 3")
    n.create_stream("EVENTS", ["x.events"])
    srv = it.Server("--forward", nats_url(n, "x.events"))
    try:
        c = srv.conn()
        assert it.post(c, b'{"n":1}')[0].status == 200
        time.sleep(6)
        for k in range(2, 5):
            c = srv.conn()
            assert it.post(c, b'{"n":%d}' % k)[0].status == 200
        assert srv.stderr().count("connected") == 0, srv.stderr()
    finally:
        srv.stop()
        msgs = n.messages("EVENTS")
        n.stop()
    assert [json.loads(d)["n"] for d, _ in msgs] == [1, 2, 3, 4]


class HostileNats(threading.Thread):
    """A NATS server that goes as far as `upto` in the handshake and then
    does `then` (bytes to send, or None to go silent)."""

    def __init__(self, upto, then):
        super().__init__(daemon=True)
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.port = self.ls.getsockname()[1]
        self.upto, self.then = upto, then
        self.conns = []
        self.start()

    def run(self):
        while True:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            self.conns.append(s)
            threading.Thread(target=self.serve, args=(s,), daemon=True).start()

    def serve(self, s):
        f = s.makefile("rb")
        try:
            steps = ["info", "pong", "names", "publish"]
            for step in steps[:steps.index(self.upto)]:
                if step == "info":
                    s.sendall(b'INFO {"server_id":"h","headers":true,"max_payload":1048576}\r\n')
                elif step == "pong":
                    while not f.readline().startswith(b"PING"):
                        pass
                    s.sendall(b"PONG\r\n")
                elif step == "names":
                    f.readline()  # SUB
                    pub = f.readline().split()
                    f.read(int(pub[-1]) + 2)
                    body = b'{"streams":["S"]}'
                    s.sendall(b"MSG %s 1 %d\r\n%s\r\n" % (pub[2], len(body), body))
            if self.then is not None:
                s.sendall(self.then)
            while f.read(65536):
                pass
        except OSError:
            pass

    def close(self):
        self.ls.close()
        for s in self.conns:
            s.close()


@test
def hostile_nats_servers_get_one_line_at_start():
    cases = (("info", None, "no reply in time"),
             ("info", b"x" * 70000, "a line longer than 65536 bytes"),
             ("info", b"HTTP/1.1 400 Bad Request\r\n\r\n", "not the NATS protocol"),
             ("info", b'INFO {"headers":false}\r\n', "does not take message headers"),
             ("info", b'INFO {"tls_required":true,"headers":true}\r\n', "requires TLS"),
             ("pong", None, "no reply in time"),
             ("pong", b"-ERR 'Authorization Violation'\r\n", "Authorization Violation"),
             ("names", None, "no reply in time"),
             ("names", b"MSG _INBOX.zz.1 1 99999999\r\n", "a message of a size we do not take"),
             ("names", b"\x1b[2J\r\n", "not the NATS protocol: \\x1b[2J"))
    for upto, then, part in cases:
        h = HostileNats(upto, then)
        try:
            t0 = time.monotonic()
            p = subprocess.run([it.BIN, "--listen", "127.0.0.1:0", "--forward", "nats://127.0.0.1:%d/s" % h.port],
                               capture_output=True, timeout=30,
                               env={"TWITTER_CONSUMER_SECRET": it.SECRET, "PATH": os.environ["PATH"]})
            took = time.monotonic() - t0
        finally:
            h.close()
        err = p.stderr.decode()
        it.check_sanitizers(err)
        assert p.returncode == 1 and part in err and err.count("\n") == 1, (upto, then, p.returncode, err)
        assert "\x1b" not in err
        assert took < 6, "%s: %.1f s to give up" % (part, took)


@test
def a_nats_that_never_acknowledges_gets_503_within_x_s_bound():
    for then in (None, b"MSG _INBOX.zz.1 1 5\r\nhello\r\nPING\r\n", b"-ERR 'Maximum Payload Violation'\r\n"):
        h = HostileNats("publish", then)
        srv = it.Server("--forward", "nats://127.0.0.1:%d/s" % h.port)
        try:
            t0 = time.monotonic()
            c = srv.conn(timeout=15)
            resp, _ = it.post(c, b'{"n":1}')
            took = time.monotonic() - t0
            assert resp.status == 503, resp.status
            assert took < 9, "%.1f s" % took
            # CRCs meanwhile are answered at once.
            c = srv.conn()
            t0 = time.monotonic()
            c.request("GET", "/webhooks/twitter?crc_token=abc")
            assert c.getresponse().status == 200 and time.monotonic() - t0 < 0.3
            if then is not None and then.startswith(b"-ERR"):
                assert "Maximum Payload Violation" in srv.stderr()
        finally:
            srv.stop()
            h.close()


@test
def nats_killed_and_restarted_loses_no_acknowledged_event():
    n = Nats()
    n.create_stream("DURABLE", ["durable"])
    killed_and_restarted(n, nats_url(n, "durable"), lambda: [d for d, _ in n.messages("DURABLE")], "nats")


class HeldRedis(threading.Thread):
    """A Redis stand-in that answers PING at once and holds every XADD's
    reply until the test gives it (answer), so a test sees what xwebhook
    sends while replies are owed, and makes a broker fail at the moment it
    chooses. Each connection is served on a thread of its own; xadds is
    every XADD in arrival order, as (connection, event). With auto, every
    XADD is answered at once with auto instead."""

    def __init__(self, auto=None, script=None):
        super().__init__(daemon=True)
        self.auto, self.script = auto, script
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.cv = threading.Condition()
        self.xadds = []
        self.connections = 0
        self.closing = False
        self.start()

    def run(self):
        while True:
            try:
                s, _ = self.listener.accept()
            except OSError:
                return
            with self.cv:
                self.connections += 1
            threading.Thread(target=self.serve, args=(s,), daemon=True).start()

    def serve(self, s):
        f = s.makefile("rb")
        try:
            while True:
                head = f.readline()
                if not head.startswith(b"*"):
                    return
                words = []
                for _ in range(int(head[1:])):
                    n = int(f.readline()[1:])
                    words.append(f.read(n + 2)[:-2])
                if words[0].upper() == b"PING":
                    s.sendall(b"+PONG\r\n")
                elif words[0].upper() == b"SCRIPT":
                    sha = hashlib.sha1(words[2]).hexdigest().encode()
                    s.sendall(self.script if self.script is not None else b"$40\r\n" + sha + b"\r\n")
                elif words[0].upper() in (b"XADD", b"EVALSHA"):
                    # XADD s * event E ...; EVALSHA sha 2 s key E ...
                    with self.cv:
                        self.xadds.append((s, words[4] if words[0].upper() == b"XADD" else words[5]))
                        self.cv.notify_all()
                    if self.auto is not None:
                        s.sendall(self.auto)
                else:
                    s.sendall(b"-ERR unknown command\r\n")
        except (OSError, ValueError, IndexError):
            return

    def wait_xadds(self, n, timeout=5):
        with self.cv:
            return self.cv.wait_for(lambda: len(self.xadds) >= n, timeout)

    def answer(self, i, reply=None):
        """Reply to the i-th XADD: an entry id, or the reply given."""
        s = self.xadds[i][0]
        s.sendall(reply if reply is not None else b"$5\r\n1-%03d\r\n" % i)

    def answer_together(self, first, last):
        """Entry ids for XADDs first..last, in one write."""
        self.xadds[first][0].sendall(b"".join(b"$5\r\n1-%03d\r\n" % i for i in range(first, last + 1)))

    def close(self):
        self.listener.close()
        with self.cv:
            for s, _ in self.xadds:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def held(output=False, metrics=False):
    """A HeldRedis, and a server forwarding to it (with output, also to
    an --output file; with metrics, --metrics on srv.metrics_port):
    (stand-in, the file's path, server)."""
    h = HeldRedis()
    path = os.path.join(it.WORK, "held-%d.jsonl" % h.port)
    args = ["--output", path] if output else []
    port = it.free_port()
    if metrics:
        args += ["--metrics", "127.0.0.1:%d" % port]
    srv = it.Server(*args, "--forward", "redis://127.0.0.1:%d/s" % h.port)
    srv.metrics_port = port
    return h, path, srv


def writer_queue(srv):
    """xwebhook_writer_queue_events, from the server's --metrics."""
    c = http.client.HTTPConnection("127.0.0.1", srv.metrics_port, timeout=10)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    return int(re.search(r"^xwebhook_writer_queue_events (\d+)$", text, re.M).group(1))


class Poster(threading.Thread):
    """One signed POST on a connection of its own, its status kept."""

    def __init__(self, srv, body):
        super().__init__(daemon=True)
        self.srv, self.body, self.status = srv, body, None
        self.t0 = time.monotonic()
        self.start()

    def run(self):
        try:
            self.status = it.post(self.srv.conn(timeout=20), self.body)[0].status
        except OSError as e:
            self.status = repr(e)
        self.took = time.monotonic() - self.t0

    def result(self, timeout=15):
        self.join(timeout)
        return self.status


@test
def the_next_batch_goes_out_while_the_last_is_unacknowledged():
    h, _, srv = held()
    try:
        a = Poster(srv, b'{"n":1}')
        assert h.wait_xadds(1)
        b = Poster(srv, b'{"n":2}')
        # Event 2 goes to Redis while event 1's entry id is still owed:
        # one broker round trip at a time would hold it back.
        assert h.wait_xadds(2), "the second batch waited for the first's reply"
        assert [e for _, e in h.xadds] == [b'{"n":1}', b'{"n":2}']
        assert a.status is None and b.status is None, "answered before Redis replied"
        h.answer(0)
        assert a.result() == 200
        assert b.status is None, "event 2 answered before its entry id came"
        h.answer(1)
        assert b.result() == 200
    finally:
        srv.stop()
        h.close()


@test
def a_broker_failing_with_batches_out_fails_those_and_output_keeps_none():
    h, path, srv = held(output=True)
    try:
        a = Poster(srv, b'{"n":1}')
        assert h.wait_xadds(1)
        b = Poster(srv, b'{"n":2}')
        assert h.wait_xadds(2)
        c = Poster(srv, b'{"n":3}')
        assert h.wait_xadds(3)
        # The first batch's reply: it is taken, ahead of the others.
        h.answer(0)
        assert a.result() == 200
        # The second's is an error: it and the third, out on the same
        # connection, fail; --output keeps only the first.
        h.answer(1, b"-OOM command not allowed when used memory > 'maxmemory'\r\n")
        assert b.result() == 503 and c.result() == 503, (b.status, c.status)
        assert open(path, "rb").read() == b'{"n":1}\n'
        assert it.wait_until(lambda: "OOM command not allowed" in srv.stderr(), 5), srv.stderr()
        # Dialled again for the next event (after the backoff).
        time.sleep(0.3)
        d = Poster(srv, b'{"n":4}')
        assert h.wait_xadds(4)
        h.answer(3)
        assert d.result() == 200
        assert h.connections == 2
        assert open(path, "rb").read() == b'{"n":1}\n{"n":4}\n'
    finally:
        srv.stop()
        h.close()


@test
def replies_owed_to_a_failed_batch_are_not_taken_for_the_next():
    # Two brokers: the second fails event 1 while the first still owes
    # its reply. When that late reply comes, with event 2 out, it must
    # not count as event 2's: event 2 waits for its own.
    h1, h2 = HeldRedis(), HeldRedis()
    srv = it.Server("--forward", "redis://127.0.0.1:%d/s" % h1.port,
                    "--forward", "redis://127.0.0.1:%d/s" % h2.port)
    try:
        a = Poster(srv, b'{"n":1}')
        assert h1.wait_xadds(1) and h2.wait_xadds(1)
        h2.answer(0, b"-ERR no\r\n")
        assert a.result() == 503
        time.sleep(0.3)  # the second broker's backoff
        b = Poster(srv, b'{"n":2}')
        assert h1.wait_xadds(2) and h2.wait_xadds(2)
        h2.answer(1)
        h1.answer(0)  # event 1's, late
        time.sleep(1)
        assert b.status is None, "event 2 was answered %s on event 1's late reply" % b.status
        h1.answer(1)
        assert b.result() == 200
    finally:
        srv.stop()
        h1.close()
        h2.close()


@test
def sighup_with_a_batch_out_cuts_it_from_the_file_it_went_to():
    h, path, srv = held(output=True)
    try:
        a = Poster(srv, b'{"n":1}')
        assert h.wait_xadds(1)
        h.answer(0)
        assert a.result() == 200
        b = Poster(srv, b'{"n":2}')
        assert h.wait_xadds(2)
        # logrotate moves the file and sends SIGHUP while event 2 is out.
        os.rename(path, path + ".1")
        srv.proc.send_signal(signal.SIGHUP)
        assert it.wait_until(lambda: "SIGHUP: reopened" in srv.stderr(), 5)
        c = Poster(srv, b'{"n":3}')
        time.sleep(0.3)
        h.answer(1, b"-ERR no\r\n")
        assert b.result() == 503
        # Event 2 is cut from the moved file it was written to; the new
        # file takes event 3 only, with nothing of the old one's offsets.
        assert open(path + ".1", "rb").read() == b'{"n":1}\n'
        assert c.result() in (200, 503)
        if c.status == 503:  # it came within the backoff: once more
            time.sleep(0.3)
            c = Poster(srv, b'{"n":3}')
        assert h.wait_xadds(3)
        h.answer(len(h.xadds) - 1)
        assert c.result() == 200
        assert open(path, "rb").read() == b'{"n":3}\n'
    finally:
        srv.stop()
        h.close()


class HeldNats(HostileNats):
    """A NATS stand-in through the handshake (stream S) that then keeps
    every publish's reply subject (pubs, in arrival order) and sends its
    PubAck only when the test says (ack), in any order, as often as it
    says. With auto, every publish is answered at once with auto instead;
    conns holds every connection made to it."""

    def __init__(self, auto=None):
        self.pubs = []
        self.cv = threading.Condition()
        self.auto = auto
        super().__init__("publish", None)

    def serve(self, s):
        f = s.makefile("rb")
        try:
            s.sendall(b'INFO {"server_id":"h","headers":true,"max_payload":1048576}\r\n')
            while not f.readline().startswith(b"PING"):
                pass
            s.sendall(b"PONG\r\n")
            f.readline()  # SUB
            pub = f.readline().split()
            f.read(int(pub[-1]) + 2)
            body = b'{"streams":["S"]}'
            s.sendall(b"MSG %s 1 %d\r\n%s\r\n" % (pub[2], len(body), body))
            while True:
                line = f.readline().split()
                if not line:
                    return
                if line[0] == b"HPUB":
                    f.read(int(line[-1]) + 2)
                    with self.cv:
                        self.pubs.append((s, line[2]))
                        self.cv.notify_all()
                    if self.auto is not None:
                        s.sendall(b"MSG %s 1 %d\r\n%s\r\n" % (line[2], len(self.auto), self.auto))
        except (OSError, ValueError):
            pass

    def wait_pubs(self, n, timeout=5):
        with self.cv:
            return self.cv.wait_for(lambda: len(self.pubs) >= n, timeout)

    def ack(self, i, body=None):
        """The i-th publish's PubAck: stream S's, or the body given."""
        s, reply = self.pubs[i]
        if body is None:
            body = b'{"stream":"S","seq":%d}' % (i + 1)
        s.sendall(b"MSG %s 1 %d\r\n%s\r\n" % (reply, len(body), body))


@test
def pubacks_out_of_order_release_each_batch_in_order_and_only_its_own():
    # Two batches out; the second's PubAck comes first. It must count
    # for the second batch only (it names its event), and neither is
    # answered until the first's comes.
    h = HeldNats()
    srv = it.Server("--forward", "nats://127.0.0.1:%d/s" % h.port)
    try:
        a = Poster(srv, b'{"n":1}')
        assert h.wait_pubs(1)
        b = Poster(srv, b'{"n":2}')
        assert h.wait_pubs(2), "the second batch waited for the first's PubAck"
        h.ack(1)
        time.sleep(1)
        assert a.status is None, "event 1 answered %s on event 2's PubAck" % a.status
        assert b.status is None, "event 2 answered %s before event 1" % b.status
        h.ack(0)
        assert a.result() == 200 and b.result() == 200, (a.status, b.status)
    finally:
        srv.stop()
        h.close()


# ---- Every 200 backed by an acknowledgement: hostile replies ----

def taken_again(srv, sent, answer, body):
    """POST body until it reaches the stand-in (sent() counts what it has
    had; a POST within the backoff after a failure gets 503 without being
    sent), have answer(i) acknowledge it, and give its status."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        before = sent()
        p = Poster(srv, body)
        assert it.wait_until(lambda: sent() > before or p.status is not None, 10), "no answer"
        if sent() > before:
            answer(before)
            return p.result()
        assert p.status == 503, p.status
        time.sleep(0.05)
    raise AssertionError("the broker was not dialled again within 10 s")


def each_refused_then_taken(srv, path, cases, sent, wait, answer, connections):
    """For each (reply, part) in cases: an event the stand-in answers with
    reply gets 503, the log names part, --output keeps nothing of it, and
    the next event, on a connection dialled afresh, gets 200. Returns what
    --output holds."""
    kept = b""
    for n, (reply, part) in enumerate(cases):
        before = sent()
        bad = Poster(srv, b'{"bad":%d}' % n)
        assert wait(before + 1)
        answer(before, reply)
        assert bad.result() == 503, (reply, bad.status)
        assert it.wait_until(lambda: part in srv.stderr(), 5), (part, srv.stderr()[-600:])
        assert open(path, "rb").read() == kept, (reply, open(path, "rb").read())
        good = b'{"good":%d}' % n
        assert taken_again(srv, sent, answer, good) == 200, reply
        kept += good + b"\n"
        assert connections() == n + 2, (reply, connections())
    return kept


@test
def redis_replies_that_are_no_entry_id_fail_the_event_and_the_next_dials_again():
    # Only an entry id says XADD stored the entry: anything else is 503,
    # the event is cut from --output, and the connection is dialled
    # afresh for the next event, which a good reply takes.
    cases = ((b"$-1\r\n", "answered no entry id: $(null or empty)"),
             (b"-ERR unknown command 'XADD'\r\n", "answered: -ERR unknown command"),
             (b"$5\r\nhello\r\n", "answered no entry id: $hello"),
             (b":1\r\n", "answered: :1"),
             (b"+OK\r\n", "answered: +OK"),
             (b"$0\r\n\r\n", "answered no entry id: $(null or empty)"),
             (b"$4\r\n1-2\x00\r\n", "answered no entry id: $1-2\\x00"),
             (b"$3\r\n-12\r\n", "answered no entry id: $-12"),
             (b"$3\r\n0-0\r\n", "answered no entry id: $0-0"),
             (b"$3\r\n1-1XX", "a bulk string longer than its length says"))
    h, path, srv = held(output=True)
    try:
        kept = each_refused_then_taken(srv, path, cases, lambda: len(h.xadds), h.wait_xadds, h.answer,
                                       lambda: h.connections)
        assert open(path, "rb").read() == kept
    finally:
        srv.stop()
        h.close()


def forty_posts(srv, what):
    """40 signed POSTs, one after another: how many were answered 200."""
    codes = []
    for i in range(40):
        codes.append(it.post(srv.conn(), b'{"i":%d}' % i)[0].status)
    assert set(codes) <= {200, 503}, codes
    print("    (%s: %d of 40 POSTs answered 200)" % (what, codes.count(200)))
    return codes.count(200)


@test
def a_redis_answering_null_to_every_xadd_gets_no_200():
    h = HeldRedis(auto=b"$-1\r\n")
    path = os.path.join(it.WORK, "null-redis.jsonl")
    srv = it.Server("--output", path, "--forward", "redis://127.0.0.1:%d/s" % h.port)
    try:
        ok = forty_posts(srv, "Redis answering $-1")
        assert ok == 0 and len(h.xadds) > 0, "%d of 40 POSTs answered 200; Redis stored none" % ok
        assert open(path, "rb").read() == b""
    finally:
        srv.stop()
        h.close()


@test
def a_nats_acknowledging_with_nothing_or_another_stream_gets_no_200():
    for body in (b"", b'{"stream":"OTHER","seq":1}'):
        h = HeldNats(auto=body)
        path = os.path.join(it.WORK, "empty-nats-%d.jsonl" % h.port)
        srv = it.Server("--output", path, "--forward", "nats://127.0.0.1:%d/s" % h.port)
        try:
            ok = forty_posts(srv, "PubAck %r" % body)
            assert ok == 0 and len(h.pubs) > 0, "%d of 40 POSTs answered 200; JetStream stored none" % ok
            assert open(path, "rb").read() == b""
        finally:
            srv.stop()
            h.close()


@test
def pubacks_that_do_not_say_stored_fail_the_event_and_the_next_dials_again():
    cases = ((b"", "no PubAck"),
             (b'{"stream":"OTHER","seq":1}', 'a PubAck from stream "OTHER", not S'),
             (b'{"stream":"S"}', "without the message's seq"),
             (b'{"stream":"S","seq":"7"}', "without the message's seq"),
             (b'{"seq":7}', "names no stream"),
             (b'{"stream":"S","seq":7,"error":{"code":503,"err_code":10077,'
              b'"description":"maximum messages exceeded"}}', "JetStream did not store it: maximum messages exceeded"),
             (b'{"error":{"code":500,"description":"no quorum"}}', "JetStream did not store it: no quorum"))
    h = HeldNats()
    path = os.path.join(it.WORK, "hostile-pubacks.jsonl")
    srv = it.Server("--output", path, "--forward", "nats://127.0.0.1:%d/s" % h.port)
    try:
        kept = each_refused_then_taken(srv, path, cases, lambda: len(h.pubs), h.wait_pubs, h.ack,
                                       lambda: len(h.conns))
        # A resend JetStream stored before: "duplicate", the original's seq.
        before = len(h.pubs)
        dup = Poster(srv, b'{"resent":1}')
        assert h.wait_pubs(before + 1)
        h.ack(before, b'{"stream":"S","seq":3,"duplicate":true}')
        assert dup.result() == 200
        assert open(path, "rb").read() == kept + b'{"resent":1}\n'
    finally:
        srv.stop()
        h.close()


@test
def a_duplicated_puback_does_not_stand_in_for_a_missing_one():
    # Two events in one batch: publish 1's PubAck comes twice, publish 2's
    # never. Matched by reply subject, the batch is still owed one, and
    # fails at its deadline (X's 10 s) and leaves --output.
    h = HeldNats()
    path = os.path.join(it.WORK, "dup-ack.jsonl")
    srv = it.Server("--output", path, "--forward", "nats://127.0.0.1:%d/s" % h.port)
    try:
        first = []
        for n in range(4):  # four batches out: the writer takes no more
            first.append(Poster(srv, b'{"n":%d}' % n))
            assert h.wait_pubs(n + 1)
        pair = [Poster(srv, b'{"n":%d}' % n) for n in (4, 5)]
        time.sleep(0.5)  # both queued at the writer (nothing outside shows it)
        h.ack(0)  # one batch leaves: one more goes out, with what is queued
        assert first[0].result() == 200
        assert h.wait_pubs(6), "events 4 and 5 did not go out as one batch (%d publishes)" % len(h.pubs)
        for n in (1, 2, 3):
            h.ack(n)
            assert first[n].result() == 200
        h.ack(4)
        h.ack(4)
        assert [p.result() for p in pair] == [503, 503], [p.status for p in pair]
        assert max(p.took for p in pair) < 9, [p.took for p in pair]
        assert open(path, "rb").read() == b'{"n":0}\n{"n":1}\n{"n":2}\n{"n":3}\n'
        assert it.wait_until(lambda: "no reply in time" in srv.stderr(), 5), srv.stderr()[-600:]
    finally:
        srv.stop()
        h.close()


@test
def group_commit_with_forward_syncs_output_before_any_200_of_its_batches():
    """With --forward: four batches out at once, released together once
    Redis answers them all, and three events queued meanwhile going out
    as one batch; every fdatasync held 300 ms by strace. No 200 may leave
    before a sync that returned after its event's line was written."""
    if shutil.which("strace") is None:
        raise AssertionError("strace is not installed (.ci/run installs it)")
    h = HeldRedis()
    path = os.path.join(it.WORK, "group-commit-forward.jsonl")
    srv = it.Traced(path, "--forward", "redis://127.0.0.1:%d/s" % h.port)
    posters = []
    try:
        for n in range(4):
            posters.append(it.TracedPoster(srv, b'{"gc":%d}' % n))
            assert h.wait_xadds(n + 1)
        posters += [it.TracedPoster(srv, b'{"gc":%d}' % n) for n in (4, 5, 6)]
        time.sleep(0.5)  # queued at the writer, which has four out
        h.answer_together(0, 3)
        assert h.wait_xadds(7), "events 4 to 6 did not go out as one batch"
        h.answer_together(4, 6)
        statuses = [p.result() for p in posters]
        assert statuses == [200] * 7, statuses
    finally:
        srv.stop()
        h.close()
    problems, batches = srv.order({p.port: n for n, p in enumerate(posters)})
    assert not problems, problems
    assert batches == [1, 1, 1, 1, 3], batches


def main():
    it.require("brokers", ("redis-server", "redis-cli", "nats-server", "haproxy"),
               "redis-server, redis-cli, nats-server and haproxy are not all installed "
               "(.ci/run installs redis-server redis-tools nats-server haproxy)")
    it.finish("brokers", *it.run_suite())


if __name__ == "__main__":
    main()
