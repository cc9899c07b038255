#!/usr/bin/env python3
"""Integration tests: the real xwebhook binary on loopback, driven by real
clients (curl, http.client, raw sockets). Usage:

    integration.py BINARY FIXTURES_DIR

The binary is normally the ASan+UBSan build; any sanitizer report in its
stderr fails the test that ran it. The last line is 'N passed, N failed'.
"""
import base64
import fcntl
import hashlib
import hmac
import http.client
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402  (what every suite shares)
    BIN, CRC_OK_ALPHABET, FIXTURES, FRAMING, SECRET, Server, WORK, check_sanitizers, crc_request,
    curl, fd_count, finish, fixtures, in_threads, is_closed, pipeline_unread, pipelined_events, post, pretty,
    read_response, run_suite, sign, test, wait_accepted, wait_until)


# ---------------------------------------------------------------------------
# The CRC

@test
def crc_matches_python_hmac_for_random_tokens(srv):
    rnd = random.Random(4231)
    c = srv.conn()
    for i in range(300):
        n = rnd.choice([1, 2, 3, 16, 43, 44, 48, 64, 100, 200, 254, 255, rnd.randint(1, 255)])
        token = "".join(rnd.choice(CRC_OK_ALPHABET) for _ in range(n))
        # Sometimes every reserved character percent-encoded (as X does),
        # sometimes lower-case escapes, sometimes left as is where legal.
        if i % 3 == 0:
            q = urllib.parse.quote(token, safe="")
        elif i % 3 == 1:
            q = urllib.parse.quote(token, safe="").replace("%2B", "%2b").replace("%2F", "%2f")
        else:
            q = urllib.parse.quote(token, safe="/=")
        c.request("GET", "/webhooks/twitter?crc_token=%s&nonce=MTc2OTUxODI5MjkxNA" % q)
        r = c.getresponse()
        body = r.read()
        assert r.status == 200, (token, r.status, body)
        assert r.getheader("Content-Type") == "application/json"
        want = {"response_token": sign(token.encode())}
        assert json.loads(body) == want, (token, body)
        assert body == json.dumps(want, separators=(",", ":")).encode()
    c.close()


@test
def crc_percent_escapes_of_plus_slash_equals(srv):
    for q, token in [("a%2Bb%2Fc%3D", "a+b/c="), ("%2B%2F%3D", "+/="), ("x%3d%3d", "x==")]:
        r, body = crc_request(srv.port, "crc_token=" + q)
        assert r.status == 200 and json.loads(body)["response_token"] == sign(token.encode()), q


@test
def crc_known_vector_through_curl():
    srv = Server(secret="secret")
    try:
        rc, out, err = curl("-i", "http://127.0.0.1:%d/webhooks/twitter?crc_token=foo&nonce=x" % srv.port)
        assert rc == 0, err
        head, body = out.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 OK"), head
        assert b"\r\nContent-Type: application/json" in head
        assert body == b'{"response_token":"sha256=dzukRpPHVT1u4g9h6l0nV6mk9KRNKEGuTpW1LkzWLbQ="}', body
    finally:
        assert srv.stop() == 0


@test
def crc_refusals(srv):
    cases = [
        ("", "No crc_token"),
        ("nonce=abc", "No crc_token"),
        ("crc_tokenx=abc", "No crc_token"),
        ("crc_token=", "crc_token must be"),
        ("crc_token", "crc_token must be"),
        ("crc_token=a+b", "crc_token must be"),          # '+' decodes to a space
        ("crc_token=a%20b", "crc_token must be"),
        ("crc_token=a%00b", "crc_token must be"),
        ("crc_token=%zz", "crc_token must be"),
        ("crc_token=" + "A" * 256, "crc_token must be"),
        ("crc_token=" + urllib.parse.quote('{"a":1}', safe=""), "crc_token must be"),  # the oracle
        ("crc_token=" + urllib.parse.quote('{"for_user_id":"1","tweet_create_events":[]}', safe=""),
         "crc_token must be"),
        ("crc_token=%C3%A9", "crc_token must be"),
    ]
    for q, why in cases:
        r, body = crc_request(srv.port, q)
        assert r.status == 400, (q, r.status, body)
        assert r.getheader("Content-Type") == "application/json"
        assert why in json.loads(body)["error"], (q, body)
    r, body = crc_request(srv.port, "")
    assert body == b'{"error":"No crc_token"}'
    # Every byte outside the alphabet, alone in an otherwise good token
    # (each case above also holds some other refused byte).
    for b in range(256):
        if chr(b) in CRC_OK_ALPHABET:
            continue
        q = "crc_token=ab%%%02Xcd" % b
        r, body = crc_request(srv.port, q)
        assert r.status == 400 and "crc_token must be" in json.loads(body)["error"], (q, r.status, body)
    # 255 bytes is the limit, inclusive.
    r, body = crc_request(srv.port, "crc_token=" + "A" * 255)
    assert r.status == 200 and json.loads(body)["response_token"] == sign(b"A" * 255)


@test
def head_is_get_without_a_body(srv):
    c = srv.conn()
    c.request("HEAD", "/webhooks/twitter?crc_token=foo")
    r = c.getresponse()
    assert r.status == 200 and r.read() == b""
    assert r.getheader("Content-Length") == "72"
    # The connection is still in step: a GET on it works.
    c.request("GET", "/webhooks/twitter?crc_token=foo")
    r = c.getresponse()
    assert r.status == 200 and json.loads(r.read())["response_token"] == sign(b"foo")
    c.close()


# ---------------------------------------------------------------------------
# Events

@test
def fixtures_are_printed_as_json_dumps_indent_2():
    srv = Server()
    try:
        c = srv.conn()
        expected = b""
        for name, body in fixtures():
            r, rb = post(c, body)
            assert r.status == 200 and rb == b"", (name, r.status, rb)
            expected += pretty(json.loads(body)).encode()
        c.close()
    finally:
        assert srv.stop() == 0
    assert srv.stdout() == expected, "stdout differs from json.dumps(indent=2)"


@test
def tokens_are_copied_byte_for_byte():
    srv = Server()
    body = ('{"text":"caf\u00e9 \\u00e9 \\ud83d\\ude00 \\/ \\"q\\"","id":12345678901234567890123,'
            '"f":1.50,"e":1E+2,"n":-0,"empty":{},"list":[]}').encode()
    try:
        r, _ = post(srv.conn(), body)
        assert r.status == 200
    finally:
        srv.stop()
    out = srv.stdout().decode()
    want = ('{\n  "text": "caf\u00e9 \\u00e9 \\ud83d\\ude00 \\/ \\"q\\"",\n  "id": 12345678901234567890123,\n'
            '  "f": 1.50,\n  "e": 1E+2,\n  "n": -0,\n  "empty": {},\n  "list": []\n}\n')
    assert out == want, out


@test
def unsigned_and_badly_signed_posts_get_401_and_emit_nothing():
    srv = Server()
    body = b'{"for_user_id":"1","tweet_create_events":[]}'
    try:
        c = srv.conn()
        r, rb = post(c, body, sig=False)
        assert r.status == 401 and b"missing x-twitter-webhooks-signature" in rb, rb
        assert r.getheader("Content-Type") == "application/json"
        c = srv.conn()
        for bad in ["sha256=" + base64.b64encode(b"x" * 32).decode(), "sha256=", "", "garbage",
                    sign(body, "wrong secret"), sign(body + b" "), sign(body)[:-1],
                    sign(body).replace("sha256=", "SHA256="), "sha256=" + hmac.new(
                        SECRET.encode(), body, hashlib.sha256).hexdigest()]:
            r, rb = post(c, body, sig=bad)
            assert r.status == 401, (bad, r.status)
            assert json.loads(rb)["error"], rb
        # Near misses: one character changed at each place of a good
        # signature (so a compare of a prefix only would let one
        # through), and a good signature with a byte more after it.
        good = sign(body)
        near = []
        for k in range(len("sha256="), len(good) - 1):
            ch = "A" if good[k] != "A" else "B"
            near.append(good[:k] + ch + good[k + 1:])
        near += [good + "A", good + "=", good + " x"]
        for bad in near:
            r, rb = post(c, body, sig=bad)
            assert r.status == 401, (bad, r.status)
        # The connection survives a 401 whose body was read.
        r, rb = post(c, body)
        assert r.status == 200
        c.close()
    finally:
        srv.stop()
    assert srv.stdout() == pretty(json.loads(body)).encode()
    log = srv.stderr()
    assert log.count("sig=bad") == 9 + len(near) and log.count("sig=missing") == 1, log


@test
def signed_but_not_a_json_object_is_400(srv):
    before = len(srv.stdout())
    c = srv.conn()
    for body, why in [(b"", "found end of input"), (b"not json", "line 1, column 1"),
                      (b"[1,2]", "an event is a JSON object"), (b'"str"', "an event is a JSON object"),
                      (b'{"a":1', "line 1, column 7"), (b'{"a":1} {}', "expected end of input"),
                      (b'{"a":"\xff"}', "invalid UTF-8"), (b'{"a":' + b"[" * 300, "nesting deeper than 256")]:
        r, rb = post(c, body)
        assert r.status == 400, (body, r.status)
        assert why in json.loads(rb)["error"], (body, rb)
    c.close()
    assert srv.stdout()[before:] == b""


@test
def chunked_bodies_are_decoded_and_signed_as_decoded(srv):
    before = len(srv.stdout())
    body = b'{"for_user_id":"2","chunked":true,"pad":"' + b"x" * 5000 + b'"}'
    # curl sends chunked with this header and a body from stdin.
    rc, out, err = curl("-i", "-H", "Transfer-Encoding: chunked", "-H",
                        "x-twitter-webhooks-signature: " + sign(body), "--data-binary", "@-",
                        "http://127.0.0.1:%d/webhooks/twitter" % srv.port, input=body)
    assert rc == 0 and out.startswith(b"HTTP/1.1 200"), (out, err)
    # By hand, with extensions, tiny chunks and a trailer.
    s = srv.sock()
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                      for i in range(0, len(body), 7))
    s.sendall(b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
              b"x-twitter-webhooks-signature: " + sign(body).encode() + b"\r\n\r\n" + chunks +
              b"0\r\nX-Trailer: yes\r\n\r\n")
    status, _, _, _ = read_response(s)
    assert status == 200
    s.close()
    assert srv.stdout()[before:] == pretty(json.loads(body)).encode() * 2


@test
def expect_100_continue(srv):
    body = b'{"expect":"continue"}'
    s = srv.sock()
    s.sendall(b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n"
              b"x-twitter-webhooks-signature: %s\r\n\r\n" % (len(body), sign(body).encode()))
    s.settimeout(5)
    got = s.recv(100)
    assert got == b"HTTP/1.1 100 Continue\r\n\r\n", got
    s.sendall(body)
    status, _, _, _ = read_response(s)
    assert status == 200
    s.close()
    # curl, forced to ask, with a body over 1 KiB.
    big = b'{"pad":"' + b"y" * 3000 + b'"}'
    rc, out, err = curl("-v", "-H", "Expect: 100-continue", "-H", "x-twitter-webhooks-signature: " + sign(big),
                        "--data-binary", "@-", "http://127.0.0.1:%d/webhooks/twitter" % srv.port, input=big)
    assert rc == 0 and b"HTTP/1.1 100 Continue" in err and b"HTTP/1.1 200 OK" in err, err
    # Unsigned with Expect: refused at once, before any body is sent.
    s = srv.sock()
    s.sendall(b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
    status, headers, rb, _ = read_response(s)
    assert status == 401 and headers.get("connection") == "close", (status, headers)
    s.close()


@test
def bodies_over_max_body_get_413():
    srv = Server("--max-body", "1K")
    try:
        small = b'{"a":"' + b"z" * 1000 + b'"}'   # 1008 bytes: fits
        big = b'{"a":"' + b"z" * 1100 + b'"}'
        r, _ = post(srv.conn(), small)
        assert r.status == 200
        # The limit is inclusive, to the byte, whether declared or chunked.
        exact = b'{"a":"' + b"z" * (1024 - 8) + b'"}'
        assert len(exact) == 1024
        r, _ = post(srv.conn(), exact)
        assert r.status == 200
        r, _ = post(srv.conn(), exact[:-2] + b'z"}')
        assert r.status == 413
        # Declared too large: 413 from the head alone, then close.
        s = srv.sock()
        s.sendall(b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                  b"x-twitter-webhooks-signature: %s\r\n\r\n" % (len(big), sign(big).encode()) + big)
        status, headers, rb, _ = read_response(s)
        assert status == 413 and headers.get("connection") == "close", (status, headers)
        assert "max-body" in json.loads(rb)["error"]
        assert is_closed(s)
        s.close()
        # With Expect: the 413 comes instead of 100 Continue.
        rc, out, err = curl("-v", "-H", "Expect: 100-continue", "-H", "x-twitter-webhooks-signature: " + sign(big),
                            "--data-binary", "@-", "http://127.0.0.1:%d/webhooks/twitter" % srv.port, input=big)
        assert b"100 Continue" not in err and b"HTTP/1.1 413" in err, err
        # Chunked: counted as it is decoded.
        s = srv.sock()
        s.sendall(b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"x-twitter-webhooks-signature: %s\r\n\r\n" % sign(big).encode() +
                  b"200\r\n" + big[:512] + b"\r\n200\r\n" + big[512:1024] + b"\r\n100\r\n")
        status, headers, _, _ = read_response(s)
        assert status == 413 and is_closed(s)
        s.close()
    finally:
        srv.stop()
    assert srv.stdout() == pretty(json.loads(small)).encode() + pretty(json.loads(exact)).encode()


# ---------------------------------------------------------------------------
# Connections

@test
def keep_alive_carries_many_requests(srv):
    c = srv.conn()
    for i in range(200):
        if i % 2:
            c.request("GET", "/webhooks/twitter?crc_token=t%d" % i)
            r = c.getresponse()
            assert r.status == 200 and json.loads(r.read())["response_token"] == sign(b"t%d" % i)
        else:
            r, _ = post(c, b'{"i":%d}' % i)
            assert r.status == 200
    port = c.sock.getsockname()[1]
    c.close()
    # One connection served them all: one peer port in the access log.
    deadline = time.time() + 5
    while time.time() < deadline:
        lines = [l for l in srv.stderr().splitlines() if ":%d " % port in l]
        if len(lines) >= 200:
            break
        time.sleep(0.01)
    assert len(lines) == 200, len(lines)


@test
def pipelined_requests_are_answered_in_order(srv):
    body = b'{"pipelined":1}'
    s = srv.sock()
    s.sendall(b"GET /webhooks/twitter?crc_token=one HTTP/1.1\r\nHost: x\r\n\r\n"
              b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
              b"x-twitter-webhooks-signature: %s\r\n\r\n%s"
              b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
              b"GET /webhooks/twitter?crc_token=two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
              % (len(body), sign(body).encode(), body))
    rest = b""
    st, _, b1, rest = read_response(s, rest)
    assert st == 200 and json.loads(b1)["response_token"] == sign(b"one")
    st, _, b2, rest = read_response(s, rest)
    assert st == 200 and b2 == b""
    st, _, b3, rest = read_response(s, rest)
    assert st == 200 and b3 == b"ok\n"
    st, h, b4, rest = read_response(s, rest)
    assert st == 200 and json.loads(b4)["response_token"] == sign(b"two") and h["connection"] == "close"
    assert is_closed(s)
    s.close()


@test
def pipelined_events_are_answered_in_order():
    srv = Server("--quiet")
    try:
        s = srv.sock()
        pipelined_events(srv, s)
        s.close()
    finally:
        srv.stop()


class RawPeer:
    """A plain socket, as read_response wants it."""

    def __init__(self, s):
        self.s = s

    def recv(self, n):
        return self.s.recv(n)


@test
def answers_a_loop_cannot_send_at_once_still_arrive():
    srv = Server("--quiet")
    try:
        s = srv.sock(timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipeline_unread(srv, s.sendall, RawPeer(s))
        # The connection carries on, now on its thread.
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        st, _, body, _ = read_response(s)
        assert st == 200 and body == b"ok\n"
        s.close()
    finally:
        assert srv.stop() == 0


@test
def http_10_and_connection_close(srv):
    s = srv.sock()
    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    st, h, body, _ = read_response(s)
    assert st == 200 and h.get("connection") == "close" and is_closed(s)
    s.close()
    s = srv.sock()
    s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    st, h, body, rest = read_response(s)
    assert st == 200 and h.get("connection") == "keep-alive" and not is_closed(s, 0.3)
    s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    st, h, body, rest = read_response(s, rest)
    assert st == 200
    s.close()
    s = srv.sock()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    st, h, body, _ = read_response(s)
    assert st == 200 and h.get("connection") == "close" and is_closed(s)
    s.close()


@test
def routes_and_methods(srv):
    c = srv.conn()
    for method, path, status, allow in [
            ("GET", "/healthz", 200, None), ("HEAD", "/healthz", 200, None),
            ("POST", "/healthz", 405, "GET, HEAD"), ("PUT", "/webhooks/twitter", 405, "GET, HEAD, POST"),
            ("DELETE", "/webhooks/twitter", 405, "GET, HEAD, POST"),
            ("OPTIONS", "/webhooks/twitter", 405, "GET, HEAD, POST"),
            ("GET", "/", 404, None), ("GET", "/webhooks/twitter/", 404, None),
            ("GET", "/webhooks", 404, None), ("POST", "/other", 404, None)]:
        c.request(method, path)
        r = c.getresponse()
        body = r.read()
        assert r.status == status, (method, path, r.status)
        assert r.getheader("Allow") == allow, (method, path, r.getheader("Allow"))
        if status >= 400:
            assert r.getheader("Content-Type") == "application/json" and json.loads(body)["error"]
    c.request("GET", "/healthz")
    r = c.getresponse()
    assert r.read() == b"ok\n"
    c.close()


@test
def custom_path():
    srv = Server("--path", "/hooks/x")
    try:
        r, body = http_get(srv.port, "/hooks/x?crc_token=abc")
        assert r == 200 and json.loads(body)["response_token"] == sign(b"abc")
        r, _ = http_get(srv.port, "/webhooks/twitter?crc_token=abc")
        assert r == 404
    finally:
        srv.stop()
    assert "serving http://127.0.0.1:%d/hooks/x" % srv.port in srv.stderr()


def http_get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


@test
def rfc9112_target_forms_host_values_chunk_whitespace_and_empty_lines(srv):
    def ask(raw):
        s = srv.sock()
        s.sendall(raw)
        status, _, body, _ = read_response(s)
        s.close()
        return status, body
    # 3.2.2: absolute-form is accepted, and its path is what counts.
    for target in (b"http://127.0.0.1/webhooks/twitter?crc_token=abs",
                   b"HTTP://x.example:8080/webhooks/twitter?crc_token=abs",
                   b"https://x.example/webhooks/twitter?crc_token=abs"):
        status, body = ask(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
        assert status == 200 and json.loads(body)["response_token"] == sign(b"abs"), (target, status, body)
    for target in (b"http://", b"http:///webhooks/twitter", b"http://x.example", b"http://a b/x",
                   b"http://x.example?crc_token=a"):
        status, _ = ask(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
        assert status == 400, (target, status)
    # 3.2: a Host that is not a host and port is 400.
    for host in (b"a b", b"a,b", b"a/b", b"user@a"):
        status, body = ask(b"GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        assert status == 400 and b"Host" in body, (host, status, body)
    for host in (b"x.example", b"x.example:443", b"[::1]:8080", b"127.0.0.1"):
        assert ask(b"GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n" % host)[0] == 200, host
    # 7.1.1: whitespace before a chunk extension's ';' is allowed; a size
    # followed by whitespace alone is not.
    body = b'{"bws":1}'
    head = (b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"x-twitter-webhooks-signature: %s\r\n\r\n" % sign(body).encode())
    status, _ = ask(head + b"%x \t ;name=value\r\n%s\r\n0 ;last\r\n\r\n" % (len(body), body))
    assert status == 200, status
    status, _ = ask(head + b"%x \r\n%s\r\n0\r\n\r\n" % (len(body), body))
    assert status == 400, status
    # 2.2: empty lines before a request line are ignored, also between
    # pipelined requests.
    s = srv.sock()
    s.sendall(b"\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _, rest = read_response(s)
    assert status == 200
    assert read_response(s, rest)[0] == 200
    s.close()


@test
def framing_errors_answer_and_close(srv):
    for name, raw, status in FRAMING:
        s = srv.sock()
        s.sendall(raw)
        st, h, body, _ = read_response(s)
        assert st == status, (name, st, body)
        assert h.get("connection") == "close", (name, h)
        assert h.get("content-type") == "application/json" and json.loads(body)["error"], (name, body)
        assert is_closed(s), name + ": still open"
        s.close()
    # The limits themselves pass.
    for raw in [b"GET /" + b"a" * (8192 - 14) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (16384 - 9 - 7 - 4) + b"\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-F: 1\r\n" * 99 + b"\r\n"]:
        s = srv.sock()
        s.sendall(raw)
        st, _, _, _ = read_response(s)
        assert st in (200, 404), st
        s.close()
    # Control bytes never reach the log raw.
    assert "\x1b" not in srv.stderr() and "\x00" not in srv.stderr()


@test
def access_log_lines(srv):
    body = b'{"log":1}'
    post(srv.conn(), body)
    crc_request(srv.port, "crc_token=abc&nonce=secretish")
    http_get(srv.port, '/a"b\\c')
    # Each line is written just after its response goes out.
    deadline = time.time() + 5
    while '"GET /a\\x22b' not in srv.stderr() and time.time() < deadline:
        time.sleep(0.01)
    log = srv.stderr()
    assert '"POST /webhooks/twitter" 200 in=9 out=0 ' in log and "sig=ok" in log, log
    assert '"GET /webhooks/twitter" 200 in=0 out=72 ' in log
    assert "nonce=secretish" not in log and "abc" not in log.split("serving", 1)[1], "the query is not logged"
    assert '"GET /a\\x22b\\x5cc" 404' in log, log
    for line in log.split("serving http", 1)[1].splitlines()[1:]:
        assert line[:4].isdigit() and line[10] == "T" and "ms" in line, line


@test
def thousand_idle_connections_do_not_delay_a_crc():
    srv = Server()  # its own: its descriptors count the connections accepted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    idle = []
    try:
        before = fd_count(srv.proc.pid)
        for i in range(1000):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            if i % 2:
                s.sendall(b"GET /webhooks/twitter?crc_token=x HTTP/1.1\r\nHo")  # half a head
            idle.append(s)
        wait_accepted(srv, before, 1000)
        t0 = time.monotonic()
        r, body = crc_request(srv.port, "crc_token=busy")
        took = time.monotonic() - t0
        assert r.status == 200 and json.loads(body)["response_token"] == sign(b"busy")
        assert took < 1.0, "CRC took %.3f s with 1000 idle connections" % took
        rss = int([l for l in open("/proc/%d/status" % srv.proc.pid) if l.startswith("VmRSS")][0].split()[1])
        print("    (1000 idle: CRC in %.1f ms, server RSS %d KiB under ASan)" % (took * 1000, rss))
    finally:
        for s in idle:
            s.close()
        srv.stop()


@test
def connection_limit_takes_the_slot_of_the_oldest_silent_connection():
    srv = Server("--max-conns", "5")
    try:
        held = [srv.sock() for _ in range(5)]
        time.sleep(0.3)
        # All five slots are taken by connections that never sent a
        # request: a sixth is served, in the slot of the oldest.
        r, body = crc_request(srv.port, "crc_token=sixth")
        assert r.status == 200 and json.loads(body)["response_token"] == sign(b"sixth")
        assert is_closed(held[0], 3), "the oldest silent connection was not closed"
        for h in held[1:]:
            assert not is_closed(h, 0.1), "a younger connection was closed"
        # A connection that has had an answer is kept over a silent one.
        h = held[1]
        h.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(h)[0] == 200
        held.append(srv.sock())  # the fifth slot: all are taken again
        held.append(srv.sock())  # a sixth: held[1] was answered, held[2] is the oldest silent
        time.sleep(0.3)
        assert is_closed(held[2], 3), "the oldest silent connection was not closed"
        assert not is_closed(h, 0.1), "a connection that was answered lost its slot"
        for h in held:
            h.close()
        assert "closed to make room" in srv.stderr()
    finally:
        srv.stop()


@test
def deadlines_close_slow_and_idle_clients():
    # Started together so that the suite waits once for the longest (15 s).
    srv = Server()
    try:
        idle = srv.sock(timeout=30)
        slow_head = srv.sock(timeout=30)
        slow_head.sendall(b"GET /healthz HTTP/1.1\r\nHost")
        kept = srv.sock(timeout=30)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        read_response(kept)
        t0 = time.monotonic()
        # The slow head gets 408 after 10 s.
        st, h, body, _ = read_response(slow_head)
        t_head = time.monotonic() - t0
        assert st == 408 and "10 s" in json.loads(body)["error"], body
        assert 9 <= t_head <= 12, t_head
        # The silent and the kept-alive connections close at 15 s.
        assert is_closed(idle, 10) and is_closed(kept, 10)
        t_idle = time.monotonic() - t0
        assert 14 <= t_idle <= 17, t_idle
    finally:
        srv.stop()


@test
def body_deadline_is_30_seconds():
    srv = Server()
    try:
        s = srv.sock(timeout=45)
        s.sendall(b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                  b"x-twitter-webhooks-signature: sha256=x\r\n\r\n{\"a\":")
        t0 = time.monotonic()
        st, h, body, _ = read_response(s)
        took = time.monotonic() - t0
        assert st == 408 and "30 s" in json.loads(body)["error"] and 29 <= took <= 33, (st, took)
        assert is_closed(s)
    finally:
        srv.stop()
    assert srv.stdout() == b""


# ---------------------------------------------------------------------------
# --output

@test
def output_file_gets_compact_lines_synced():
    path = os.path.join(WORK, "events.jsonl")
    srv = Server("--output", path)
    bodies = [b for _, b in fixtures()] + [b'{ "spaced" : [ 1 , 2 ] , "u" : "\\u00e9\\/" }']
    try:
        c = srv.conn()
        for b in bodies:
            r, _ = post(c, b)
            assert r.status == 200
        r, _ = post(c, b"[1]")
        assert r.status == 400
        # Concurrent posters: whole lines, never interleaved.
        def worker(k):
            cc = srv.conn()
            for i in range(25):
                rr, _ = post(cc, b'{"worker":%d,"i":%d,"pad":"%s"}' % (k, i, b"p" * 3000))
                assert rr.status == 200
        in_threads(worker, 8)
    finally:
        srv.stop()
    lines = open(path, "rb").read().split(b"\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    assert len(lines) == len(bodies) + 200, len(lines)
    for b, line in zip(bodies, lines):
        if b.startswith(b"{ "):
            assert line == b'{"spaced":[1,2],"u":"\\u00e9\\/"}', line
        else:
            assert json.loads(line) == json.loads(b)
            assert line == json.dumps(json.loads(b), separators=(",", ":"), ensure_ascii=False).encode(), line
    seen = set()
    for line in lines[len(bodies):]:
        obj = json.loads(line)
        seen.add((obj["worker"], obj["i"]))
    assert len(seen) == 200
    assert os.stat(path).st_mode & 0o777 == 0o600


@test
def output_is_synced_before_the_200_leaves():
    """kill -9 keeps the page cache, so only the order of the calls shows
    that the 200 waits for fdatasync: write the line, sync, then answer."""
    if shutil.which("strace") is None:
        raise AssertionError("strace is not installed (.ci/run installs it)")
    path = os.path.join(WORK, "traced.jsonl")
    trace = os.path.join(WORK, "strace.out")
    # LeakSanitizer cannot run under ptrace; the rest of ASan can.
    srv = Server("--output", path, wrap=["strace", "-f", "-qq", "-s", "32", "-o", trace,
                                        "-e", "trace=write,fdatasync,sendto"],
                 env={"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0"})
    try:
        c = srv.conn()
        for i in range(3):
            r, _ = post(c, b'{"traced":%d}' % i)
            assert r.status == 200
        # SIGTERM to the server itself: strace ends when its tracee does.
        child = int(subprocess.check_output(["pgrep", "-P", str(srv.proc.pid)]).split()[0])
        os.kill(child, signal.SIGTERM)
    finally:
        srv.stop()
    calls = []
    for line in open(trace):
        if "write(" in line and "traced" in line:
            calls.append("line")
        elif "fdatasync(" in line:
            calls.append("sync")
        elif "sendto(" in line and "HTTP/1.1 200" in line:
            calls.append("200")
    # One event at a time: its lines (--output, stdout), one sync, its 200.
    assert calls == ["line", "line", "sync", "200"] * 3, calls


@test
def output_write_failure_is_500_and_crc_still_works():
    if not os.path.exists("/dev/full"):
        return
    srv = Server("--output", "/dev/full")
    try:
        c = srv.conn()
        r, body = post(c, b'{"lost":false}')
        assert r.status == 500 and "--output" in json.loads(body)["error"], body
        c.request("GET", "/webhooks/twitter?crc_token=stillhere")
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["response_token"] == sign(b"stillhere")
    finally:
        srv.stop()
    assert srv.stdout() == b"", "an event that got 500 must not be emitted"


@test
def output_torn_last_line_is_cut_at_start():
    path = os.path.join(WORK, "torn.jsonl")
    with open(path, "wb") as f:
        f.write(b'{"whole":1}\n{"torn":')
    srv = Server("--output", path)
    try:
        r, _ = post(srv.conn(), b'{"next":2}')
        assert r.status == 200
    finally:
        srv.stop()
    assert open(path, "rb").read() == b'{"whole":1}\n{"next":2}\n'
    assert "torn line" in srv.stderr()


@test
def stdout_closed_gives_500():
    r_fd, w_fd = os.pipe()
    os.close(r_fd)
    srv = Server(stdout=os.fdopen(w_fd, "wb"))
    try:
        r, body = post(srv.conn(), b'{"a":1}')
        assert r.status == 500 and "stdout" in json.loads(body)["error"]
    finally:
        srv.stop()


# ---------------------------------------------------------------------------
# Signals, secrets, the command line

@test
def sigterm_lets_a_request_in_flight_finish():
    srv = Server()
    body = b'{"in":"flight"}'
    before = fd_count(srv.proc.pid)
    s = srv.sock()
    idle = srv.sock()
    s.sendall(b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
              b"x-twitter-webhooks-signature: %s\r\n\r\n" % (len(body), sign(body).encode()) + body[:5])
    wait_accepted(srv, before, 2)
    srv.proc.send_signal(signal.SIGTERM)
    # The idle one closing says the stop has begun: only then the rest.
    assert is_closed(idle, 5), "an idle connection is closed at once"
    s.sendall(body[5:])
    st, h, _, _ = read_response(s)
    assert st == 200 and h.get("connection") == "close"
    assert srv.stop() == 0
    assert srv.stdout() == pretty(json.loads(body)).encode()
    # No new connections after the stop.
    try:
        socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
        raise AssertionError("still accepting")
    except ConnectionRefusedError:
        pass


@test
def sigint_stops_with_status_0():
    srv = Server()
    assert srv.stop(signal.SIGINT) == 0
    assert "stopped" in srv.stderr()


def run(args, env=None, input=None):
    e = {k: v for k, v in os.environ.items() if "SECRET" not in k}
    e.update(env or {})
    p = subprocess.run([BIN, *args], env=e, input=input, capture_output=True, timeout=30)
    check_sanitizers(p.stderr.decode("utf-8", "replace"))
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


@test
def secret_sources():
    rc, out, err = run(["--listen", "127.0.0.1:0"])
    assert rc == 1 and "TWITTER_CONSUMER_SECRET" in err and err.count("\n") == 1, (rc, err)
    rc, out, err = run(["crc", "foo"], env={"TWITTER_CONSUMER_SECRET": ""})
    assert rc == 1 and "TWITTER_CONSUMER_SECRET" in err
    rc, out, err = run(["crc", "foo"], env={"CONSUMER_SECRET": "secret"})
    assert rc == 0 and out == b'{"response_token":"sha256=dzukRpPHVT1u4g9h6l0nV6mk9KRNKEGuTpW1LkzWLbQ="}\n', out
    rc, out, err = run(["crc", "foo"], env={"TWITTER_CONSUMER_SECRET": "secret", "CONSUMER_SECRET": "other"})
    assert rc == 0 and b"dzukRp" in out
    path = os.path.join(WORK, "secret.txt")
    with open(path, "w") as f:
        f.write("secret\n")
    rc, out, err = run(["--secret-file", path, "crc", "foo"])
    assert rc == 0 and b"dzukRp" in out, err
    with open(path, "w") as f:
        f.write("")
    rc, out, err = run(["--secret-file", path, "crc", "foo"])
    assert rc == 1 and "empty" in err
    rc, out, err = run(["--secret-file", "/nonexistent/secret", "crc", "foo"])
    assert rc == 1 and "/nonexistent/secret" in err and "No such file" in err
    rc, out, err = run(["--secret", "secret", "crc", "foo"])
    assert rc != 0 and "never taken from the command line" in err


@test
def secret_stays_out_of_proc_and_output():
    srv = Server()
    try:
        post(srv.conn(), b'{"a":1}')
        crc_request(srv.port, "crc_token=abc")
        cmdline = open("/proc/%d/cmdline" % srv.proc.pid, "rb").read()
        environ = open("/proc/%d/environ" % srv.proc.pid, "rb").read()
        assert SECRET.encode() not in cmdline and SECRET.encode() not in environ
    finally:
        srv.stop()
    assert SECRET not in srv.stderr() and SECRET.encode() not in srv.stdout()


@test
def bad_command_lines_fail_with_one_line():
    env = {"TWITTER_CONSUMER_SECRET": "x"}
    for args, part in [(["--bogus"], "unknown option '--bogus'"), (["frobnicate"], "unknown command"),
                       (["--listen"], "needs a value"), (["--listen", "nope"], "bad --listen"),
                       (["--listen", "127.0.0.1:99999"], "bad --listen"),
                       (["--listen", "::1:80"], "brackets"), (["--listen", "256.1.1.1:80"], "cannot listen"),
                       (["--max-body", "0"], "bad --max-body"), (["--max-body", "2G"], "bad --max-body"),
                       (["--max-body", "12x"], "bad --max-body"), (["--max-conns", "0"], "bad --max-conns"),
                       (["--path", "noslash"], "bad --path"), (["--path", "/a?b"], "bad --path"),
                       (["crc"], "usage"), (["crc", "a", "b"], "usage"), (["fmt", "a", "b"], "usage"),
                       (["--output", "/nonexistent/dir/file", "--listen", "127.0.0.1:0"], "cannot open --output")]:
        rc, out, err = run(args, env=env)
        assert rc != 0 and part in err and err.count("\n") == 1 and out == b"", (args, rc, err)
    # An address already in use.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    rc, out, err = run(["--listen", "127.0.0.1:%d" % holder.getsockname()[1]], env=env)
    holder.close()
    assert rc == 1 and "Address already in use" in err and err.count("\n") == 1, err
    rc, out, err = run(["--help"])
    assert rc == 0 and b"--listen" in out and b"--max-body" in out
    rc, out, err = run(["--version"])
    assert rc == 0 and out.startswith(b"xwebhook ")


@test
def ipv6_listen():
    if not socket.has_ipv6:
        return
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return
    e = {k: v for k, v in os.environ.items() if "SECRET" not in k}
    e["TWITTER_CONSUMER_SECRET"] = SECRET
    err_path = os.path.join(WORK, "v6.err")
    with open(err_path, "wb") as err:
        p = subprocess.Popen([BIN, "--listen", "[::1]:0"], stdout=subprocess.DEVNULL, stderr=err, env=e)
    try:
        for _ in range(500):
            text = open(err_path).read()
            if "serving" in text:
                break
            time.sleep(0.02)
        assert "serving http://[::1]:" in text, text
        port = int(text.split("]:", 1)[1].split("/", 1)[0])
        c = http.client.HTTPConnection("::1", port, timeout=5)
        c.request("GET", "/webhooks/twitter?crc_token=v6")
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["response_token"] == sign(b"v6")
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    check_sanitizers(open(err_path).read())


@test
def sign_and_fmt_subcommands():
    env = {"TWITTER_CONSUMER_SECRET": SECRET}
    for name, body in fixtures():
        rc, out, err = run(["sign"], env=env, input=body)
        assert rc == 0 and out == (sign(body) + "\n").encode(), (name, out)
        path = os.path.join(FIXTURES, name)
        rc, out, err = run(["sign", path], env=env)
        assert rc == 0 and out == (sign(body) + "\n").encode()
        rc, out, err = run(["fmt", path])
        assert rc == 0 and out == pretty(json.loads(body)).encode(), name
        rc, out2, err = run(["fmt"], input=body)
        assert rc == 0 and out2 == out
    # A stream of values, as --output writes them.
    rc, out, err = run(["fmt"], input=b'{"a":1}\n{"b":[]}\n')
    assert rc == 0 and out == b'{\n  "a": 1\n}\n{\n  "b": []\n}\n', out
    # Invalid JSON: status 1 and where.
    rc, out, err = run(["fmt"], input=b'{\n  "a": 1,\n  "b" 2\n}\n')
    assert rc == 1 and "line 3, column 7: expected ':'" in err and err.count("\n") == 1, err
    assert out == b"", "nothing of an invalid value is written: %r" % out
    # Whole values before an invalid one are written, none of it after,
    # even when the whole values fill more than one read.
    big = b"".join(b'{"n":%d,"pad":"%s"}\n' % (i, b"p" * 500) for i in range(400))
    rc, out, err = run(["fmt"], input=big + b'{"bad":[1,2,}\n{"never":1}\n')
    assert rc == 1 and "line 401, column 13" in err, err
    assert out == b"".join(pretty(json.loads(l)).encode() for l in big.splitlines()), out[-200:]
    # A byte-order mark is named, in fmt and in events.
    rc, out, err = run(["fmt"], input=b'\xef\xbb\xbf{"a":1}')
    assert rc == 1 and "byte-order mark" in err and out == b"", (out, err)
    rc, out, err = run(["fmt"], input=b"")
    assert rc == 1 and "line 1, column 1: expected a value" in err
    rc, out, err = run(["fmt", "/nonexistent.json"])
    assert rc == 1 and "/nonexistent.json" in err
    # Random canonical documents against json.dumps(indent=2).
    rnd = random.Random(7)

    def gen(d=0):
        k = rnd.randint(0, 7 if d < 5 else 4)
        if k == 0:
            return rnd.randint(-2 ** 70, 2 ** 70)
        if k == 1:
            return "".join(rnd.choice("ab\"\\/\n\t\u00e9\u20ac\U0001F600 ") for _ in range(rnd.randint(0, 8)))
        if k == 2:
            return rnd.choice([True, False, None])
        if k == 3:
            return rnd.random() * 10 ** rnd.randint(-5, 5)
        if k == 4:
            return rnd.randint(0, 9)
        if k in (5, 6):
            return [gen(d + 1) for _ in range(rnd.randint(0, 4))]
        return {"k%d" % i: gen(d + 1) for i in range(rnd.randint(0, 4))}
    docs = [gen() for _ in range(300)]
    text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode()
    rc, out, err = run(["fmt"], input=text)
    assert rc == 0 and out == "".join(pretty(d) for d in docs).encode()


@test
def check_in_the_plain_build(srv):
    env = {"TWITTER_CONSUMER_SECRET": SECRET}
    tls = b"through BearSSL" in run(["--version"])[1]
    rc, out, err = run(["check", "--connect", "127.0.0.1:%d" % srv.port, "http://xwebhook.test/webhooks/twitter"],
                       env=env)
    out = out.decode()
    assert rc == 1 and "[FAIL] http URL: X only calls https URLs" in out, out
    assert "[ok] the CRC was answered 200" in out and "[ok] response_token is the HMAC" in out, out
    rc, out, err = run(["check", "http://127.0.0.1:%d/webhooks/twitter" % srv.port], env=env)
    assert rc == 1 and "[FAIL] the URL names port %d" % srv.port in out.decode(), out
    rc, out, err = run(["check", "not a url"], env=env)
    assert rc == 1 and "not an http:// or https:// URL" in err
    if not tls:
        rc, out, err = run(["check", "https://xwebhook.test/webhooks/twitter"], env=env)
        assert rc == 1 and "https needs the TLS build" in out.decode(), out
        rc, out, err = run(["--cert", "a.pem", "--key", "b.pem"], env=env)
        assert rc == 1 and "needs the TLS build" in err, err


def heads_recorder(family, addr):
    """A plain HTTP stand-in that keeps each request's head and answers
    200 with a JSON object: the bytes check puts on the wire."""
    ls = socket.socket(family, socket.SOCK_STREAM)
    ls.bind((addr, 0))
    ls.listen(8)
    heads = []

    def serve():
        while True:
            try:
                s, _ = ls.accept()
            except OSError:
                return
            with s:
                got = b""
                while b"\r\n\r\n" not in got:
                    more = s.recv(4096)
                    if not more:
                        break
                    got += more
                head = got.split(b"\r\n\r\n")[0]
                heads.append(head)
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                          b"Connection: close\r\n\r\n{}")
    threading.Thread(target=serve, daemon=True).start()
    return ls, heads


@test
def check_sends_host_with_its_port_and_brackets():
    # RFC 9112 3.2: Host is the URL's authority, an IPv6 literal in
    # brackets and the port kept unless it is the scheme's default.
    env = {"TWITTER_CONSUMER_SECRET": SECRET}
    for family, addr, shown in ((socket.AF_INET, "127.0.0.1", "127.0.0.1"), (socket.AF_INET6, "::1", "[::1]")):
        ls, heads = heads_recorder(family, addr)
        port = ls.getsockname()[1]
        try:
            rc, out, err = run(["check", "--post", "http://%s:%d/hook?a=b" % (shown, port)], env=env)
            assert len(heads) == 2, (heads, out, err)
            lines = heads[0].split(b"\r\n")
            assert lines[0].startswith(b"GET /hook?a=b&crc_token=") and lines[0].endswith(b" HTTP/1.1"), lines
            assert lines[1:] == [b"Host: %s:%d" % (shown.encode(), port), b"User-Agent: xwebhook-check",
                                 b"Accept-Encoding: gzip", b"Connection: close"], lines
            lines = heads[1].split(b"\r\n")
            assert lines[:5] == [b"POST /hook?a=b HTTP/1.1", b"Host: %s:%d" % (shown.encode(), port),
                                 b"User-Agent: xwebhook-check", b"Content-Type: application/json",
                                 b"Connection: close"], lines
            assert lines[5].startswith(b"x-twitter-webhooks-signature: sha256=") and \
                lines[6].startswith(b"Content-Length: ") and len(lines) == 7, lines
        finally:
            ls.close()
    # The scheme's own port is left out, and --connect changes only where
    # check dials.
    ls, heads = heads_recorder(socket.AF_INET, "127.0.0.1")
    try:
        run(["check", "--connect", "127.0.0.1:%d" % ls.getsockname()[1], "http://Xwebhook.test:80/hook"], env=env)
        assert heads and heads[0].split(b"\r\n")[1] == b"Host: Xwebhook.test", heads
    finally:
        ls.close()


# ---------------------------------------------------------------------------

ROOT_WARNING = "xwebhook: warning: running as root; --user NAME drops to NAME once the port is bound\n"


@test
def pid_file_is_written_locked_refused_twice_and_removed():
    d = tempfile.mkdtemp(prefix="pid-", dir=WORK)
    pf = os.path.join(d, "xwebhook.pid")
    name = os.path.basename(BIN)[:15]
    srv = Server("--pid-file", pf)
    try:
        # Written before the startup line, whole, and locked.
        assert open(pf).read() == "%d\n" % srv.proc.pid
        with open(pf) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                raise AssertionError("the pid file is not locked")
            except BlockingIOError:
                pass
        # What the README's scripts run finds exactly this server.
        r = subprocess.run(["pkill", "-0", "-L", "-F", pf, "-x", name], capture_output=True)
        assert r.returncode == 0, r
        # A second server given the same file is refused, and the file stays.
        second = Server("--pid-file", pf, expect_start=False)
        assert second.proc.wait(20) == 1
        err = second.stderr().replace(ROOT_WARNING, "")
        assert err == "xwebhook: --pid-file %s is held by another xwebhook that is running\n" % pf, err
        assert open(pf).read() == "%d\n" % srv.proc.pid
    finally:
        assert srv.stop() == 0
    assert not os.path.exists(pf), "the pid file outlived the server"
    # One left by a crash is not locked: pkill -L signals nothing, and the
    # next server takes it over.
    srv = Server("--pid-file", pf)
    srv.proc.kill()
    srv.proc.wait()
    assert open(pf).read() == "%d\n" % srv.proc.pid
    r = subprocess.run(["pkill", "-0", "-L", "-F", pf, "-x", name], capture_output=True)
    assert r.returncode != 0, r
    srv = Server("--pid-file", pf)
    try:
        assert open(pf).read() == "%d\n" % srv.proc.pid
    finally:
        assert srv.stop() == 0


@test
def pid_file_that_is_a_symlink_or_not_a_file_is_refused():
    d = tempfile.mkdtemp(prefix="pid-", dir=WORK)
    target = os.path.join(d, "precious")
    with open(target, "w") as f:
        f.write("keep\n")
    link = os.path.join(d, "link.pid")
    os.symlink(target, link)
    srv = Server("--pid-file", link, expect_start=False)
    assert srv.proc.wait(20) == 1
    assert srv.stderr().replace(ROOT_WARNING, "") == (
        "xwebhook: --pid-file %s is a symbolic link: refused, as it is never followed\n" % link), srv.stderr()
    assert open(target).read() == "keep\n"
    fifo = os.path.join(d, "fifo.pid")
    os.mkfifo(fifo)
    srv = Server("--pid-file", fifo, expect_start=False)
    assert srv.proc.wait(20) == 1
    assert srv.stderr().replace(ROOT_WARNING, "") == \
        "xwebhook: --pid-file %s is not a regular file\n" % fifo, srv.stderr()
    hard = os.path.join(d, "hard.pid")
    os.link(target, hard)
    srv = Server("--pid-file", hard, expect_start=False)
    assert srv.proc.wait(20) == 1
    assert srv.stderr().replace(ROOT_WARNING, "") == \
        "xwebhook: --pid-file %s has 2 links: refused, as another file would be written\n" % hard, srv.stderr()
    assert open(target).read() == "keep\n"


@test
def subcommands_are_not_ended_by_sighup():
    """A SIGHUP meant for the server (a pkill by name, a hangup) leaves
    `tail -f | xwebhook fmt` running."""
    p = subprocess.Popen([BIN, "fmt"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def ignoring_hup():
            for line in open("/proc/%d/status" % p.pid):
                if line.startswith("SigIgn:"):
                    return int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)) != 0
            return False
        assert wait_until(ignoring_hup, 10), "fmt does not ignore SIGHUP"
        p.send_signal(signal.SIGHUP)
        out, err = p.communicate(b'{"a":[1]}', timeout=10)
        assert p.returncode == 0 and out == b'{\n  "a": [\n    1\n  ]\n}\n', (p.returncode, out, err)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def main():
    shared = Server()
    passed, failed = run_suite(shared)
    try:
        rc = shared.stop()
        assert rc == 0, "shared server exited %d" % rc
    except Exception:  # noqa: BLE001
        failed += 1
        print("FAIL shared server shutdown", flush=True)
        traceback.print_exc(file=sys.stdout)
    finish("integration", passed, failed)


if __name__ == "__main__":
    main()
