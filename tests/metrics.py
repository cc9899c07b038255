#!/usr/bin/env python3
"""--metrics: GET /metrics and GET /healthz on a listener of their own,
checked with the real tools: promtool (Debian's prometheus package) reads
every exposition, a real prometheus scrapes the listener and is asked
back through its HTTP API, a real redis-server is killed and restarted
under --forward for /healthz. Usage:

    metrics.py BINARY FIXTURES_DIR TLS_BINARY

The last line is 'metrics: N passed, N failed'.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as it  # noqa: E402  (what every suite shares)

test = it.test
TLS_BIN = it.arg(3)

# Each fixture's type, as X documents it: AAA's top-level key, XAA's
# data.event_type, filtered stream's matching_rules.
FIXTURE_TYPES = {
    "direct_message_events.json": "direct_message_events",
    "direct_message_indicate_typing_events.json": "direct_message_indicate_typing_events",
    "tweet_delete_events.json": "tweet_delete_events",
    "user_event_revoke.json": "user_event",
    "v2_filtered_stream_webhook_post.json": "filtered_stream",
    "v2activity_chat.received.json": "chat.received",
    "v2activity_dm.received.json": "dm.received",
    "v2activity_follow.follow.json": "follow.follow",
    "v2activity_like.create.json": "like.create",
    "v2activity_news.new.json": "news.new",
    "v2activity_post.create.json": "post.create",
    "v2activity_profile.update.bio.json": "profile.update.bio",
}


def metrics_server(*args, binary=None, **kw):
    """A server with --metrics on a free loopback port: (server, port)."""
    port = it.free_port()
    if binary is not None:
        old, it.BIN = it.BIN, binary
        try:
            srv = it.Server("--metrics", "127.0.0.1:%d" % port, *args, **kw)
        finally:
            it.BIN = old
    else:
        srv = it.Server("--metrics", "127.0.0.1:%d" % port, *args, **kw)
    return srv, port


def get(port, path, method="GET"):
    """(status, headers, body) of one request to the metrics listener."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(b"%s %s HTTP/1.1\r\nHost: m\r\n\r\n" % (method.encode(), path.encode()))
        status, headers, body, _ = it.read_response(s)
    finally:
        s.close()
    return status, headers, body


def scrape(port):
    """The exposition as {sample name with labels: value}."""
    status, headers, body = get(port, "/metrics")
    assert status == 200, (status, body)
    assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples, body


def promtool(body):
    p = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
        "promtool: rc %d %s %s\n%s" % (p.returncode, p.stdout, p.stderr, body.decode()[:3000])


def signed_post(srv, body, sig=True):
    c = srv.conn()
    try:
        return it.post(c, body, sig)[0].status
    finally:
        c.close()


@test
def counts_move_exactly_with_the_traffic():
    """N CRCs, M events of known types (on loops and on connection
    threads), bad and missing signatures: each count moves by exactly
    that much, and the histograms count the same requests."""
    srv, port = metrics_server()
    try:
        before, body = scrape(port)
        promtool(body)
        assert before['xwebhook_crc_answered_total'] == 0
        assert not any(k.startswith("xwebhook_events_total{") for k in before), before
        crcs = 7
        for k in range(crcs):
            r, _ = it.crc_request(srv.port, "crc_token=tok%d" % k)
            assert r.status == 200
        # Keep-alive on one connection (a loop's), then a fresh one each,
        # then chunked bodies, which go to connection threads.
        want = {}
        c = srv.conn()
        for name, data in it.fixtures():
            assert it.post(c, data)[0].status == 200
            want[FIXTURE_TYPES[name]] = want.get(FIXTURE_TYPES[name], 0) + 1
        c.close()
        for name, data in it.fixtures()[:3]:
            assert signed_post(srv, data) == 200
            want[FIXTURE_TYPES[name]] += 1
        name, data = it.fixtures()[2]
        for k in range(3):
            r = it.chunked_post(srv.port, data, 100)
            assert r[0] == 200, r
            want[FIXTURE_TYPES[name]] += 1
        events = sum(want.values())
        assert signed_post(srv, b'{"x":1}', sig=it.sign(b'{"x":2}')) == 401
        assert signed_post(srv, b'{"x":1}', sig=it.sign(b'{"x":3}')) == 401
        assert signed_post(srv, b'{"x":1}', sig=None) == 401
        r, _ = it.crc_request(srv.port, "nocrc=1")  # no crc_token: 400
        assert r.status == 400
        c = srv.conn()
        c.request("GET", "/nowhere")
        assert c.getresponse().status == 404
        c.close()
        after, body = scrape(port)
        promtool(body)
    finally:
        srv.stop()
    assert after["xwebhook_crc_answered_total"] == crcs
    assert after['xwebhook_requests_total{route="crc",code="2xx"}'] == crcs
    assert after['xwebhook_requests_total{route="crc",code="4xx"}'] == 1
    assert after['xwebhook_requests_total{route="event",code="2xx"}'] == events
    assert after['xwebhook_requests_total{route="event",code="4xx"}'] == 3
    assert after['xwebhook_requests_total{route="other",code="4xx"}'] == 1
    got = {k[len('xwebhook_events_total{type="'):-2]: v for k, v in after.items()
           if k.startswith("xwebhook_events_total{")}
    assert got == want, (got, want)
    assert after['xwebhook_signature_failures_total{reason="bad"}'] == 2
    assert after['xwebhook_signature_failures_total{reason="missing"}'] == 1
    assert after["xwebhook_events_refused_total"] == 0
    assert after["xwebhook_crc_duration_seconds_count"] == crcs
    assert after['xwebhook_crc_duration_seconds_bucket{le="+Inf"}'] == crcs
    assert after["xwebhook_event_duration_seconds_count"] == events
    assert after["xwebhook_sink_duration_seconds_count"] == events
    assert 0 < after["xwebhook_event_duration_seconds_sum"] < events * 10
    assert after["xwebhook_writer_queue_events"] == 0
    assert after['xwebhook_build_info{version="0.1.0",tls="0"}'] == 1
    assert abs(after["xwebhook_start_time_seconds"] - time.time()) < 120


@test
def connections_and_slots_are_gauges_that_go_up_and_down():
    """Three idle connections held: connections and slots_used say 3 (of
    --max-conns 50); closed, they go back to 0."""
    srv, port = metrics_server("--max-conns", "50")
    try:
        held = [srv.sock() for _ in range(3)]

        def gauges():
            m = scrape(port)[0]
            return m["xwebhook_connections"], m["xwebhook_slots_used"], m["xwebhook_slots_max"]
        assert it.wait_until(lambda: gauges() == (3, 3, 50), 10), gauges()
        for s in held:
            s.close()
        assert it.wait_until(lambda: gauges() == (0, 0, 50), 10), gauges()
    finally:
        srv.stop()


@test
def events_the_sinks_refuse_are_counted_and_not_by_type():
    """stdout closed for good with no --output: every event gets 500, is
    counted as refused, and under no type."""
    r, w = os.pipe()
    os.close(r)
    srv, port = metrics_server(stdout=os.fdopen(w, "wb"))
    try:
        for _ in range(4):
            assert signed_post(srv, b'{"tweet_create_events":[]}') == 500
        after, body = scrape(port)
        promtool(body)
    finally:
        srv.stop()
    assert after["xwebhook_events_refused_total"] == 4
    assert after['xwebhook_requests_total{route="event",code="5xx"}'] == 4
    assert not any(k.startswith("xwebhook_events_total{") for k in after), after


@test
def prometheus_scrapes_it_and_answers_a_known_value():
    """A real prometheus, on a free loopback port with a generated
    config, scrapes --metrics every second; its HTTP API then gives back
    the number of CRCs we sent."""
    srv, port = metrics_server()
    d = tempfile.mkdtemp(prefix="prometheus-", dir=it.WORK)
    web = it.free_port()
    with open(os.path.join(d, "prometheus.yml"), "w") as f:
        f.write("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: xwebhook\n"
                "    static_configs:\n      - targets: ['127.0.0.1:%d']\n" % port)
    log = open(os.path.join(d, "prometheus.log"), "wb")
    prom = subprocess.Popen(["prometheus", "--config.file", os.path.join(d, "prometheus.yml"),
                             "--storage.tsdb.path", os.path.join(d, "data"),
                             "--web.listen-address", "127.0.0.1:%d" % web],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def query(q):
        u = "http://127.0.0.1:%d/api/v1/query?query=%s" % (web, urllib.parse.quote(q))
        try:
            with urllib.request.urlopen(u, timeout=5) as r:
                res = json.load(r)["data"]["result"]
        except (OSError, ValueError, KeyError):
            return None
        return res[0]["value"][1] if res else None

    try:
        for k in range(5):
            r, _ = it.crc_request(srv.port, "crc_token=prom%d" % k)
            assert r.status == 200
        assert signed_post(srv, open(os.path.join(it.FIXTURES, "tweet_delete_events.json"), "rb").read()) == 200
        assert it.wait_until(lambda: query("xwebhook_crc_answered_total") == "5", 60), \
            "prometheus never saw 5 CRCs: %s" % open(os.path.join(d, "prometheus.log")).read()[-2000:]
        assert query('xwebhook_events_total{type="tweet_delete_events"}') == "1"
        assert query('up{job="xwebhook"}') == "1"
    finally:
        prom.terminate()
        prom.wait(30)
        log.close()
        srv.stop()


class Redis:
    """A redis-server of the test's own, on a port that survives a restart."""

    def __init__(self):
        self.port = it.free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-", dir=it.WORK)
        self.start()

    def start(self):
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--dir", self.dir],
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        assert it.wait_until(self.ping, 10), "redis-server did not start"

    def ping(self):
        p = subprocess.run(["redis-cli", "-p", str(self.port), "PING"], capture_output=True, text=True)
        return p.stdout.strip() == "PONG"

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()


def health(port):
    status, headers, body = get(port, "/healthz")
    assert headers["content-type"] == "application/json", headers
    assert body.endswith(b"\n") and body.count(b"\n") == 1, body  # one line
    return status, json.loads(body)


@test
def healthz_follows_a_broker_killed_and_brought_back():
    """200 {"status":"ok"} with the broker up; 503 naming it once it is
    killed, and broker_up 0; 200 again once it is back, with no event
    needed to find out; an event then counts its acknowledgement."""
    r = Redis()
    url = "redis://127.0.0.1:%d/health" % r.port
    srv, port = metrics_server("--forward", url)
    try:
        assert health(port) == (200, {"status": "ok"})
        assert scrape(port)[0]['xwebhook_broker_up{broker="%s"}' % url] == 1
        r.kill()
        assert it.wait_until(lambda: health(port)[0] == 503, 10), health(port)
        st, said = health(port)
        assert said == {"status": "unavailable", "reason": "--forward %s is not connected" % url}, said
        samples, body = scrape(port)
        promtool(body)
        assert samples['xwebhook_broker_up{broker="%s"}' % url] == 0
        assert signed_post(srv, b'{"tweet_create_events":[]}') == 503
        r.start()
        assert it.wait_until(lambda: health(port)[0] == 200, 20), health(port)
        assert signed_post(srv, b'{"tweet_create_events":[]}') == 200
        samples, body = scrape(port)
        promtool(body)
    finally:
        srv.stop()
        r.kill()
    assert samples['xwebhook_broker_up{broker="%s"}' % url] == 1
    assert samples['xwebhook_broker_ack_duration_seconds_count{broker="%s"}' % url] == 1
    assert samples["xwebhook_events_refused_total"] == 1
    assert samples['xwebhook_events_total{type="tweet_create_events"}'] == 1


@test
def healthz_is_503_while_the_server_stops():
    """SIGTERM with a request still in flight: the listener says
    "stopping" while the drain lasts, so a balancer sends no more."""
    srv, port = metrics_server()
    try:
        assert health(port) == (200, {"status": "ok"})
        s = srv.sock()
        s.sendall(b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                  b"x-twitter-webhooks-signature: " + it.sign(b"0123456789").encode() + b"\r\n\r\n01")
        assert it.wait_until(lambda: it.threads_of(srv.proc.pid, "xwh-conn") >= 1, 10)
        srv.proc.send_signal(signal.SIGTERM)
        assert it.wait_until(lambda: "stopping" in srv.stderr(), 10)
        assert health(port) == (503, {"status": "unavailable", "reason": "stopping"})
        s.close()
    finally:
        srv.stop()


@test
def hostile_metrics_clients_do_not_touch_the_webhook():
    """Hundreds of silent and trickling clients, a huge head, binary
    garbage and a flood of scrapes on the metrics port: every CRC on the
    webhook port is answered meanwhile, the bad requests get their
    statuses, and a scrape afterwards is served."""
    srv, port = metrics_server()
    socks = []
    try:
        probe = it.CrcProbe(srv.port)
        probe.start()
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /metr")
            socks.append(s)
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: m\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
        assert it.read_response(s)[0] == 431
        s.close()
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64))
        assert it.read_response(s)[0] == 400
        s.close()
        assert get(port, "/metrics", "POST")[0] == 405
        assert get(port, "/webhooks/twitter")[0] == 404

        def flood(k):
            for _ in range(20):
                assert get(port, "/metrics")[0] == 200
        it.in_threads(flood, 4)
        probe.finish()
        samples, _ = scrape(port)
        assert samples["xwebhook_crc_answered_total"] >= 1
    finally:
        for s in socks:
            s.close()
        srv.stop()


@test
def metrics_is_off_by_default_and_never_on_the_public_port():
    """No --metrics: no listener (and /metrics on the webhook port is a
    404). --metrics on --listen's port, a bare port or garbage: exit 1
    with one line, before anything is served."""
    srv = it.Server()
    try:
        assert "metrics" not in srv.stderr()
        c = srv.conn()
        c.request("GET", "/metrics")
        assert c.getresponse().status == 404
        c.close()
    finally:
        srv.stop()
    port = it.free_port()
    for spec, said in (("127.0.0.1:%d" % port, "never the public one"),
                       ("0.0.0.0:%d" % port, "never the public one"),
                       (str(it.free_port()), "expected ADDR:PORT"),
                       ("127.0.0.1:x", "bad --metrics")):
        p = subprocess.run([it.BIN, "--listen", "127.0.0.1:%d" % port, "--metrics", spec],
                           env={"TWITTER_CONSUMER_SECRET": it.SECRET}, capture_output=True, text=True, timeout=30)
        assert p.returncode == 1 and said in p.stderr and p.stderr.count("\n") == 1, (spec, p.returncode, p.stderr)
        assert "serving" not in p.stderr


@test
def tls_build_says_so_and_gives_the_certificate_not_after():
    """The TLS build: build_info tls="1", and the served leaf's notAfter
    as Unix time, as openssl reads it."""
    p = it.make_pki("metrics", "p256")
    srv, port = metrics_server("--cert", p["chain"], "--key", p["key"], binary=TLS_BIN)
    try:
        samples, body = scrape(port)
        promtool(body)
    finally:
        srv.stop()
    end = it.openssl("x509", "-in", p["leaf"], "-noout", "-enddate").decode().strip().split("=", 1)[1]
    want = time.mktime(time.strptime(end.replace(" GMT", ""), "%b %d %H:%M:%S %Y")) - time.timezone
    assert samples['xwebhook_build_info{version="0.1.0",tls="1"}'] == 1
    assert samples["xwebhook_certificate_not_after_seconds"] == want, (samples, want)


def main():
    it.require("metrics", ("promtool", "prometheus", "redis-server", "redis-cli"),
               "{tool} is not installed (.ci/run installs prometheus redis-server redis-tools)")
    assert TLS_BIN, "usage: metrics.py BINARY FIXTURES_DIR TLS_BINARY"
    it.finish("metrics", *it.run_suite())


if __name__ == "__main__":
    main()
