#!/usr/bin/env python3
"""HTTPS tests: the TLS build of xwebhook, with certificates made here by
openssl, driven by curl, openssl s_client and Python's ssl module, and
`xwebhook check` against it. Usage:

    tls.py TLS_BINARY FIXTURES_DIR

The last line is 'tls: N passed, N failed'.
"""
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as it  # noqa: E402  (what every suite shares)
from harness import HOST, KEYGEN, PKI, leaf, make_pki, openssl, openssl_ca_dir, tls_server  # noqa: E402

BIN = it.BIN

test = it.test


def https(srv, root, path="/webhooks/twitter?crc_token=abc"):
    c = http.client.HTTPSConnection("127.0.0.1", srv.port, timeout=10, context=it.tls_context(root))
    c._tunnel_host = None
    # Verify against HOST while dialling 127.0.0.1.
    c.sock = it.tls_sock(srv, root)
    c.request("GET", path, headers={"Host": HOST})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def s_client(srv, *args, input=b""):
    p = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % srv.port, "-servername", HOST,
                        *args], input=input, capture_output=True, timeout=20)
    return p.stdout.decode("latin-1") + p.stderr.decode("latin-1")


def run(args, env=None):
    e = {k: v for k, v in os.environ.items() if "SECRET" not in k}
    e.update(env or {})
    p = subprocess.run([BIN, *args], env=e, capture_output=True, timeout=60)
    err = p.stderr.decode("utf-8", "replace")
    it.check_sanitizers(err)
    return p.returncode, p.stdout.decode("utf-8", "replace"), err


def check(url, *args, secret=it.SECRET):
    env = {"TWITTER_CONSUMER_SECRET": secret} if secret else {}
    return run(["check", *args, url], env=env)


# ---------------------------------------------------------------------------

@test
def every_key_kind_and_form_serves_curl():
    for name in ("rsa", "p256", "p384"):
        p = PKIS[name]
        for key in (p["key"], p["key_trad"]):
            head = open(key).readline().strip()
            srv = tls_server(p["chain"], key)
            try:
                rc = subprocess.run(["curl", "-sS", "--cacert", p["root"], "--resolve",
                                     "%s:%d:127.0.0.1" % (HOST, srv.port),
                                     "https://%s:%d/webhooks/twitter?crc_token=%s" % (HOST, srv.port, name)],
                                    capture_output=True, timeout=20)
                assert rc.returncode == 0, (name, head, rc.stderr)
                assert json.loads(rc.stdout)["response_token"] == it.sign(name.encode()), rc.stdout
                assert "(%s key, chain of 2)" % ("RSA" if name == "rsa" else "EC") in srv.stderr()
                assert it.serial_of(p["leaf"]) in srv.stderr()
            finally:
                assert srv.stop() == 0, (name, head)


@test
def fresh_rsa_keys_all_match_their_certificates():
    # BearSSL cannot recover e from every RSA key, so the match check must
    # not depend on that: ten fresh keys, each must start.
    d = os.path.join(PKI, "fresh")
    os.makedirs(d, exist_ok=True)
    for i in range(10):
        openssl("req", "-x509", *KEYGEN["rsa"], "-nodes", "-keyout", "k%d.key" % i, "-out", "c%d.pem" % i,
                "-days", "5", "-subj", "/CN=" + HOST, cwd=d)
        srv = tls_server(os.path.join(d, "c%d.pem" % i), os.path.join(d, "k%d.key" % i))
        srv.stop()
    # And the key of one with the certificate of another is refused.
    rc, out, err = run(["--listen", "127.0.0.1:0", "--cert", os.path.join(d, "c0.pem"),
                        "--key", os.path.join(d, "k1.key")], env={"TWITTER_CONSUMER_SECRET": "x"})
    assert rc == 1 and "does not match" in err, err


@test
def openssl_s_client_versions_and_suites():
    p = PKIS["rsa"]
    srv = tls_server(p["chain"], p["key"])
    try:
        out = s_client(srv, "-CAfile", p["root"], "-tls1_2")
        assert "Verify return code: 0 (ok)" in out, out
        line = [l for l in out.splitlines() if "Cipher is" in l][0]
        assert "ECDHE-RSA-" in line and ("GCM" in line or "CHACHA20" in line), line
        for v in ("-tls1", "-tls1_1"):
            out = s_client(srv, v, "-cipher", "DEFAULT@SECLEVEL=0")
            assert "Cipher is (NONE)" in out, (v, out)
        # Static RSA (with CBC or GCM) and ECDHE with CBC: all refused.
        for suite in ("AES128-SHA", "AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384"):
            out = s_client(srv, "-tls1_2", "-cipher", suite + "@SECLEVEL=0")
            assert "Cipher is (NONE)" in out, (suite, out)
        # TLS 1.3 only: refused, since BearSSL speaks 1.2.
        out = s_client(srv, "-tls1_3")
        assert "Cipher is (NONE)" in out or "TLSv1.3" not in out
    finally:
        srv.stop()
    p = PKIS["p256"]
    srv = tls_server(p["chain"], p["key"])
    try:
        out = s_client(srv, "-CAfile", p["root"], "-tls1_2")
        line = [l for l in out.splitlines() if "Cipher is" in l][0]
        assert "ECDHE-ECDSA-" in line and ("GCM" in line or "CHACHA20" in line), line
    finally:
        srv.stop()


@test
def every_tls12_suite_but_ecdhe_aead_is_refused():
    """Each TLS 1.2 suite this OpenSSL knows, offered alone, against an RSA
    and an ECDSA server: only ECDHE with AES-GCM or ChaCha20-Poly1305 may
    complete a handshake."""
    names = openssl("ciphers", "-tls1_2", "-s", "ALL:COMPLEMENTOFALL:@SECLEVEL=0").decode().strip().split(":")
    names = [n for n in names if n and not n.startswith("TLS_")]  # the TLS 1.3 ones
    assert len(names) > 40, names
    for kind, keyx in (("rsa", "ECDHE-RSA-"), ("p256", "ECDHE-ECDSA-")):
        p = PKIS[kind]
        srv = tls_server(p["chain"], p["key"], "--quiet")
        accepted = []
        try:
            for n in names:
                out = s_client(srv, "-tls1_2", "-cipher", n + "@SECLEVEL=0")
                if "Cipher is (NONE)" not in out and "Cipher is " in out:
                    accepted.append(n)
        finally:
            srv.stop()
        bad = [n for n in accepted if not (n.startswith(keyx) and ("GCM" in n or "CHACHA20" in n))]
        assert not bad, "%s server negotiated %s" % (kind, bad)
        assert accepted, "%s server negotiated nothing" % kind


@test
def python_ssl_keep_alive_and_alpn():
    p = PKIS["p256"]
    srv = tls_server(p["chain"], p["key"])
    try:
        s = it.tls_sock(srv, p["root"])
        assert s.version() == "TLSv1.2" and s.selected_alpn_protocol() == "http/1.1"
        rest = b""
        for i in range(50):
            if i % 2:
                s.sendall(b"GET /webhooks/twitter?crc_token=k%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
                st, _, body, rest = it.read_response(s, rest)
                assert st == 200 and json.loads(body)["response_token"] == it.sign(b"k%d" % i)
            else:
                body = b'{"tls":%d}' % i
                s.sendall(b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                          b"x-twitter-webhooks-signature: %s\r\n\r\n%s" % (len(body), it.sign(body).encode(), body))
                st, _, _, rest = it.read_response(s, rest)
                assert st == 200
        s.close()
    finally:
        srv.stop()
    assert srv.stdout() == b"".join(it.pretty({"tls": i}).encode() for i in range(0, 50, 2))


class TlsPeer:
    """TLS over a raw socket through ssl.MemoryBIO, so that one thread can
    send the encrypted bytes while this one reads: the ssl module's own
    sockets may not be used from two threads at once."""

    def __init__(self, raw, root):
        self.raw = raw
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = it.tls_context(root).wrap_bio(self.inc, self.out, server_hostname=HOST)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.raw.sendall(self.out.read())
                self.inc.write(self.raw.recv(65536))
        self.raw.sendall(self.out.read())

    def encrypt(self, data):
        self.obj.write(data)
        return self.out.read()

    def recv(self, n):
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                data = self.raw.recv(65536)
                if not data:
                    return b""
                self.inc.write(data)


@test
def tls_answers_a_loop_cannot_send_at_once_still_arrive():
    p = PKIS["p256"]
    srv = tls_server(p["chain"], p["key"], "--quiet")
    try:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        peer = TlsPeer(raw, p["root"])
        it.pipeline_unread(srv, lambda reqs: raw.sendall(peer.encrypt(reqs)), peer)
        raw.sendall(peer.encrypt(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
        st, _, body, _ = it.read_response(peer)
        assert st == 200 and body == b"ok\n"
        raw.close()
    finally:
        assert srv.stop() == 0


@test
def pipelined_events_over_tls_are_answered_in_order():
    p = PKIS["p256"]
    srv = tls_server(p["chain"], p["key"], "--quiet")
    try:
        s = it.tls_sock(srv, p["root"])
        it.pipelined_events(srv, s)
        s.close()
    finally:
        srv.stop()


@test
def session_resumption():
    p = PKIS["p256"]
    srv = tls_server(p["chain"], p["key"])
    sess = os.path.join(it.WORK, "session.pem")
    try:
        out = s_client(srv, "-CAfile", p["root"], "-tls1_2", "-sess_out", sess)
        assert "New, TLSv1.2" in out, out
        out = s_client(srv, "-CAfile", p["root"], "-tls1_2", "-sess_in", sess)
        assert "Reused, TLSv1.2" in out, out
    finally:
        srv.stop()


@test
def refusals_at_start():
    p, q = PKIS["p256"], PKIS["rsa"]
    d = os.path.join(PKI, "bad")
    os.makedirs(d, exist_ok=True)
    garbage = os.path.join(d, "garbage.pem")
    with open(garbage, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
    encrypted = os.path.join(d, "enc.key")
    openssl("pkey", "-in", p["key"], "-aes256", "-passout", "pass:x", "-out", encrypted)
    encrypted_trad = os.path.join(d, "enc.trad.key")
    openssl("pkey", "-in", q["key"], "-traditional", "-aes256", "-passout", "pass:x", "-out", encrypted_trad)
    # A key and self-signed certificate on secp256k1, which X's clients do not use.
    openssl("req", "-x509", *KEYGEN["k256"], "-nodes", "-keyout", "k1.key", "-out", "k1.pem", "-days", "5",
            "-subj", "/CN=" + HOST, cwd=d)
    env = {"TWITTER_CONSUMER_SECRET": "x"}
    for args, part in [
            (["--cert", "/nonexistent/chain.pem", "--key", p["key"]], "cannot read --cert /nonexistent/chain.pem"),
            (["--cert", p["chain"], "--key", "/nonexistent/key.pem"], "cannot read --key /nonexistent/key.pem"),
            (["--cert", p["chain"], "--key", encrypted], "is encrypted"),
            (["--cert", q["chain"], "--key", encrypted_trad], "is encrypted"),
            (["--cert", p["chain"], "--key", q["key"]], "does not match the certificate"),
            (["--cert", p["chain"], "--key", PKIS["p384"]["key"]], "does not match the certificate"),
            (["--cert", garbage, "--key", p["key"]], "is not valid PEM"),
            (["--cert", p["key"], "--key", p["key"]], "holds no certificate"),
            (["--cert", p["chain"], "--key", p["chain"]], "holds no private key"),
            (["--cert", os.path.join(d, "k1.pem"), "--key", os.path.join(d, "k1.key")], "unsupported"),
            (["--cert", p["chain"]], "both --cert FILE and --key FILE")]:
        rc, out, err = run(["--listen", "127.0.0.1:0", *args], env=env)
        assert rc == 1 and part in err, (args, rc, err)
        assert err.count("\n") == 1, err


@test
def warnings_for_expiry_and_single_certificate():
    p = PKIS["p256"]
    soon = leaf(p["dir"], "soon", "p256", days=5)
    srv = tls_server(soon["chain"], soon["key"])
    srv.stop()
    assert "expires in 4 day(s)" in srv.stderr() or "expires in 5 day(s)" in srv.stderr(), srv.stderr()
    srv = tls_server(p["leaf"], p["key"])
    srv.stop()
    assert "holds a single certificate" in srv.stderr(), srv.stderr()
    srv = tls_server(EXPIRED["chain"], EXPIRED["key"])
    srv.stop()
    assert "expired on 2020-02-01" in srv.stderr(), srv.stderr()


@test
def sighup_swaps_the_certificate_and_keeps_a_good_one():
    p = PKIS["p256"]
    chain, key = it.install_pair(p, os.path.join(PKI, "live"))
    fresh = leaf(p["dir"], "renewed", "p256", days=50)
    srv = tls_server(chain, key)
    try:
        def served_serial():
            s = it.tls_sock(srv, p["root"])
            der = s.getpeercert(binary_form=True)
            s.close()
            pem = ssl.DER_cert_to_PEM_cert(der)
            path = os.path.join(it.WORK, "peer.pem")
            with open(path, "w") as f:
                f.write(pem)
            return it.serial_of(path)

        kept = it.tls_sock(srv, p["root"])   # in flight across the reload
        assert served_serial() == it.serial_of(p["leaf"])
        shutil.copy(fresh["chain"], chain)
        shutil.copy(fresh["key"], key)
        srv.proc.send_signal(signal.SIGHUP)
        assert it.wait_until(lambda: "SIGHUP: now serving" in srv.stderr())
        assert served_serial() == it.serial_of(fresh["leaf"])
        # The connection made before the reload still works.
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert it.read_response(kept)[0] == 200
        kept.close()
        # A broken file: the good pair stays.
        with open(chain, "w") as f:
            f.write("garbage\n")
        srv.proc.send_signal(signal.SIGHUP)
        assert it.wait_until(lambda: "still serving certificate" in srv.stderr())
        assert served_serial() == it.serial_of(fresh["leaf"])
        assert "SIGHUP: --cert %s holds no certificate; still serving certificate %s" % (
            chain, it.serial_of(fresh["leaf"])) in srv.stderr(), srv.stderr()
    finally:
        srv.stop()


@test
def chunked_bodies_of_any_size_over_tls():
    p = PKIS["p256"]
    srv = tls_server(p["chain"], p["key"], "--quiet", "--max-body", "2M")
    ctx = it.tls_context(p["root"])
    try:
        it.check_chunked(srv, wrap=lambda raw: ctx.wrap_socket(raw, server_hostname=HOST))
    finally:
        srv.stop()


@test
def check_passes_against_a_good_server():
    p = PKIS["p256"]
    srv = tls_server(p["chain"], p["key"])
    try:
        rc, out, err = check("https://%s/webhooks/twitter" % HOST, "--connect", "127.0.0.1:%d" % srv.port,
                             "--cacert", p["root"], "--post")
        assert rc == 0 and out.rstrip().endswith("X would accept this URL."), out + err
        assert "[FAIL]" not in out
        for part in ("[ok] TLS 1.2, ECDHE-ECDSA-", "[ok] certificate chain verified", "[ok] certificate is for " + HOST,
                     "[ok] certificate expires", "[ok] the CRC was answered 200", "[ok] the CRC was answered in",
                     "[ok] response_token is the HMAC", "[ok] a signed test event was answered 200"):
            assert part in out, (part, out)
    finally:
        srv.stop()
    assert b'"xwebhook_check"' in srv.stdout()


@test
def check_without_a_secret_cannot_tell():
    """Without the consumer secret the CRC answer's value cannot be
    checked, and X refuses any but the right one: no acceptance, exit 2."""
    p = PKIS["p256"]
    url = "https://%s/webhooks/twitter" % HOST
    srv = tls_server(p["chain"], p["key"])
    try:
        rc, out, err = check(url, "--connect", "127.0.0.1:%d" % srv.port, "--cacert", p["root"], secret=None)
        assert rc == 2, (rc, out + err)
        assert "\nX would accept this URL." not in out and "[FAIL]" not in out, out
        for part in ("[ok] certificate chain verified", "[ok] the CRC was answered 200",
                     "[unknown] response_token has the right shape, but its value was not checked: no consumer "
                     "secret here"):
            assert part in out, (part, out)
        assert out.rstrip().endswith("check cannot tell whether X would accept this URL: what it checked passed, "
                                     "but not what [unknown] names."), out
    finally:
        srv.stop()
    # Something X refuses still decides: exit 1.
    srv = tls_server(p["chain"], p["key"], secret="the server's other secret")
    try:
        rc, out, err = check("https://%s/elsewhere" % HOST, "--connect", "127.0.0.1:%d" % srv.port,
                             "--cacert", p["root"], secret=None)
        assert rc == 1 and "[FAIL] the CRC was answered 404" in out, out
        assert out.rstrip().endswith("X would not accept this URL."), out
    finally:
        srv.stop()


@test
def check_fails_for_each_reason_x_would():
    p = PKIS["p256"]
    url = "https://%s/webhooks/twitter" % HOST
    srv = tls_server(p["chain"], p["key"])
    try:
        where = ["--connect", "127.0.0.1:%d" % srv.port, "--cacert", p["root"]]
        rc, out, _ = check(url, *where, secret="not the secret")
        assert rc == 1 and "[FAIL] response_token does not match" in out, out
        rc, out, _ = check("https://other.test/webhooks/twitter", *where)
        assert rc == 1 and "[FAIL] certificate does not name other.test" in out, out
        rc, out, _ = check("https://%s:8443/webhooks/twitter" % HOST, *where)
        assert rc == 1 and "[FAIL] the URL names port 8443" in out, out
        rc, out, _ = check("https://%s/elsewhere" % HOST, *where)
        assert rc == 1 and "[FAIL] the CRC was answered 404" in out, out
    finally:
        srv.stop()
    # A chain without its intermediate: X will not fetch it.
    srv = tls_server(p["leaf"], p["key"])
    try:
        rc, out, _ = check(url, "--connect", "127.0.0.1:%d" % srv.port, "--cacert", p["root"])
        assert rc == 1 and "[FAIL] certificate not trusted (unknown CA): the chain the server sent does not lead " \
            "to a root in %s (is an intermediate missing?); X will not fetch a missing one" % p["root"] in out, out
        assert "[info] the server's certificate expires" in out, out
    finally:
        srv.stop()
    # Expired.
    srv = tls_server(EXPIRED["chain"], EXPIRED["key"])
    try:
        rc, out, _ = check(url, "--connect", "127.0.0.1:%d" % srv.port, "--cacert", p["root"])
        assert rc == 1 and "[FAIL] certificate expired on 2020-02-01" in out, out
        assert "expires 2020-02-01" in out, out
    finally:
        srv.stop()
    # Too slow, and a redirect: Python HTTPS servers with the same certificate.
    for behaviour, part in (("slow", "(X allows 3000 ms)"), ("redirect", "a redirect to https://elsewhere.test/")):
        stop = threading.Event()
        port = fake_server(p, behaviour, stop)
        try:
            rc, out, _ = check(url, "--connect", "127.0.0.1:%d" % port, "--cacert", p["root"])
            assert rc == 1 and part in out and "[FAIL]" in out, (behaviour, out)
        finally:
            stop.set()
    # http URLs are checked, and reported as not acceptable.
    srv = it.Server()
    try:
        rc, out, _ = check("http://%s/webhooks/twitter" % HOST, "--connect", "127.0.0.1:%d" % srv.port)
        assert rc == 1 and "[FAIL] http URL: X only calls https URLs" in out, out
        assert "[ok] response_token is the HMAC" in out, out
    finally:
        srv.stop()


def crc_answer_for(req):
    """The right response_token for the crc_token in a request head."""
    target = req.split(b" ", 2)[1].decode()
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    return it.sign(query["crc_token"][0].encode())


def fake_server(p, behaviour, stop):
    """An HTTPS server with p's certificate that misbehaves as told."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(p["chain"], p["key"])
    if behaviour == "tls13":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if behaviour == "alert":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("AES256-SHA")  # nothing BearSSL's client offers with ECDHE
    ls = socket.create_server(("127.0.0.1", 0))
    ls.settimeout(0.2)
    served = [0]

    def answer(s, req):
        if req.startswith(b"POST "):
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return
        token = crc_answer_for(req)
        if behaviour == "slow":
            time.sleep(3.5)
            body = b'{"response_token":"sha256=x"}'
        elif behaviour == "redirect":
            s.sendall(b"HTTP/1.1 302 Found\r\nLocation: https://elsewhere.test/\r\nContent-Length: 0\r\n\r\n")
            return
        elif behaviour == "nested":
            body = json.dumps({"data": {"response_token": token}}).encode()
        elif behaviour == "escaped":
            # PHP's json_encode writes '/' as '\/'; and '=' as \u003d.
            body = (b'{"response_token":"%s"}' % token.replace("/", "\\/").replace("=", "\\u003d").encode())
        elif behaviour == "huge":
            body = b'{"response_token":"%s","pad":"%s"}' % (token.encode(), b"x" * (10 << 20))
        elif behaviour == "chunked":
            body = b'{"response_token":"%s"}' % token.encode()
            s.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
                      b"".join(b"%x\r\n%s\r\n" % (len(body[k:k + 7]), body[k:k + 7])
                               for k in range(0, len(body), 7)) + b"0\r\n\r\n")
            return
        else:  # "linger", "post-refused": a right answer at once
            body = b'{"response_token":"%s"}' % token.encode()
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(body), body))
        if behaviour == "linger":
            time.sleep(3.5)  # the answer is whole; the connection stays

    def serve():
        while not stop.is_set():
            try:
                raw, _ = ls.accept()
            except socket.timeout:
                continue
            served[0] += 1
            if behaviour == "post-refused" and served[0] > 1:
                raw.close()  # a second connection never gets a handshake
                continue
            try:
                s = ctx.wrap_socket(raw, server_side=True)
                s.settimeout(10)
                req = b""
                while b"\r\n\r\n" not in req:
                    req += s.recv(4096)
                answer(s, req)
                s.close()
            except (OSError, ssl.SSLError):
                raw.close()
        ls.close()
    threading.Thread(target=serve, daemon=True).start()
    return ls.getsockname()[1]


@test
def check_against_hostile_servers():
    p = PKIS["p256"]
    url = "https://%s/webhooks/twitter" % HOST
    cases = [
        ("nested", 1, "[FAIL] the answer is not a JSON object with a response_token string at its top level"),
        ("escaped", 0, "[ok] response_token is the HMAC"),
        ("chunked", 0, "[ok] response_token is the HMAC"),
        ("huge", 1, "[FAIL] the CRC: the answer is larger than 1 MiB"),
        ("linger", 0, "[ok] the CRC was answered in"),
        ("post-refused", 1, "[FAIL] the signed test event: TLS handshake failed"),
        ("tls13", 2, "[unknown] cannot check: the server wants a TLS version this build lacks"),
        ("alert", 1, "the peer sent the alert handshake_failure (40)"),
    ]
    for behaviour, want_rc, part in cases:
        stop = threading.Event()
        port = fake_server(p, behaviour, stop)
        try:
            t0 = time.monotonic()
            rc, out, err = check(url, "--connect", "127.0.0.1:%d" % port, "--cacert", p["root"], "--post")
            took = time.monotonic() - t0
            assert rc == want_rc and part in out, (behaviour, rc, out + err)
            assert "BearSSL error" not in out, (behaviour, out)
            verdict = ("X would accept this URL." if want_rc == 0 else
                       "check cannot tell whether X would accept this URL: what it checked passed, but not what "
                       "[unknown] names." if want_rc == 2 else "X would not accept this URL.")
            assert out.rstrip().endswith(verdict), (behaviour, out)
            if behaviour == "linger":
                ms = int(out.split("the CRC was answered in ")[1].split()[0])
                assert ms < 1000 and took < 10, (ms, took)
        finally:
            stop.set()


@test
def tls_port_answers_alpn_mismatch_and_renegotiation_plainly():
    """(Plain HTTP on this port: silent_and_plain_clients_are_closed.)"""
    p = PKIS["p256"]
    srv = tls_server(p["chain"], p["key"])
    try:
        # ALPN offered without http/1.1: the alert no_application_protocol.
        ctx = ssl.create_default_context(cafile=p["root"])
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        try:
            ctx.wrap_socket(raw, server_hostname=HOST)
            raise AssertionError("a handshake offering only h2 succeeded")
        except ssl.SSLError as e:
            assert "NO APPLICATION PROTOCOL" in str(e).upper().replace("_", " "), e
        raw.close()
        # No ALPN at all is served.
        ctx = ssl.create_default_context(cafile=p["root"])
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10), server_hostname=HOST)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert it.read_response(s)[0] == 200
        s.close()
        # A client asking to renegotiate after its handshake is no failed
        # handshake in the log.
        before = srv.stderr().count("TLS handshake failed")
        r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % srv.port, "-servername", HOST,
                            "-tls1_2", "-CAfile", p["root"]], input=b"R\n", capture_output=True, timeout=20)
        assert b"Verify return code: 0" in r.stdout, r.stdout[-500:]
        time.sleep(0.3)
        assert srv.stderr().count("TLS handshake failed") == before, srv.stderr()[-800:]
    finally:
        srv.stop()


@test
def handshake_flood_does_not_delay_a_crc():
    p = PKIS["p256"]
    srv = tls_server(p["chain"], p["key"])
    silent = []
    try:
        for _ in range(300):
            silent.append(socket.create_connection(("127.0.0.1", srv.port), timeout=10))
        time.sleep(0.3)
        t0 = time.monotonic()
        st, body = https(srv, p["root"], "/webhooks/twitter?crc_token=flood")
        took = time.monotonic() - t0
        assert st == 200 and json.loads(body)["response_token"] == it.sign(b"flood")
        assert took < 1.0, "CRC over TLS took %.3f s behind 300 silent handshakes" % took
        print("    (300 silent handshakes: CRC over TLS in %.1f ms)" % (took * 1000))
    finally:
        for s in silent:
            s.close()
        srv.stop()


@test
def silent_and_plain_clients_are_closed():
    p = PKIS["p256"]
    srv = tls_server(p["chain"], p["key"])
    try:
        # Plain HTTP to the TLS port: a 400 that says so, then closed, and
        # the server carries on.
        s = srv.sock()
        s.sendall(b"GET /webhooks/twitter?crc_token=abc HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body, _ = it.read_response(s)
        assert status == 400 and b"https://" in body and headers.get("connection") == "close", (status, body)
        assert it.is_closed(s)
        s.close()
        # Bytes that are neither HTTP nor TLS: a failed handshake, logged.
        s = srv.sock()
        s.sendall(b"\x16\x03\x01\x00\x05garbage")
        it.recv_all(s)
        s.close()
        st, body = https(srv, p["root"])
        assert st == 200
        assert it.wait_until(lambda: "TLS handshake failed" in srv.stderr())
        # Saying nothing: closed by the head deadline (10 s), not the idle one (15 s).
        s = srv.sock(timeout=30)
        t0 = time.monotonic()
        assert it.is_closed(s, 20)
        took = time.monotonic() - t0
        assert 9 <= took <= 12, took
        s.close()
    finally:
        srv.stop()


@test
def user_drop_and_reload_after_it():
    if os.geteuid() != 0:
        print("    (skipped: needs root)")
        return
    nobody = pwd.getpwnam("nobody")
    p = PKIS["p256"]
    d = os.path.join(it.WORK, "for-nobody")
    chain, key = it.install_pair(p, d)
    os.chmod(it.WORK, 0o755)
    os.chmod(d, 0o755)
    os.chown(key, nobody.pw_uid, nobody.pw_gid)
    os.chmod(key, 0o600)
    os.chmod(chain, 0o644)
    srv = tls_server(chain, key, "--user", "nobody")
    try:
        status = open("/proc/%d/status" % srv.proc.pid).read()
        uid_line = [l for l in status.splitlines() if l.startswith("Uid:")][0].split()
        assert uid_line[1:] == [str(nobody.pw_uid)] * 4, uid_line
        st, _ = https(srv, p["root"])
        assert st == 200
        assert "running as root" not in srv.stderr()
        # Reloading works after the drop when nobody can read the files...
        srv.proc.send_signal(signal.SIGHUP)
        assert it.wait_until(lambda: "SIGHUP: now serving" in srv.stderr())
        # ...and keeps the old pair, saying why, when it cannot.
        os.chown(key, 0, 0)
        srv.proc.send_signal(signal.SIGHUP)
        assert it.wait_until(lambda: "Permission denied; still serving" in srv.stderr())
        st, _ = https(srv, p["root"])
        assert st == 200
    finally:
        srv.stop()
    rc, out, err = run(["--listen", "127.0.0.1:0", "--user", "no-such-user-xw"], env={"TWITTER_CONSUMER_SECRET": "x"})
    assert rc == 1 and "no such user" in err


# ---------------------------------------------------------------------------


def make_expired(p):
    """A leaf whose validity ended in 2020, signed by p's intermediate."""
    d = p["dir"]
    openssl_ca_dir(d)
    openssl("req", *KEYGEN["p256"], "-nodes", "-keyout", "expired.key", "-out", "expired.csr",
            "-subj", "/CN=" + HOST, cwd=d)
    openssl("ca", "-batch", "-config", "ca.cnf", "-cert", "int.pem", "-keyfile", "int.key", "-in", "expired.csr",
            "-out", "expired.pem", "-startdate", "20200101000000Z", "-enddate", "20200201000000Z",
            "-extfile", "leaf.ext", "-notext", cwd=d)
    chain = os.path.join(d, "expired.chain.pem")
    with open(chain, "wb") as f:
        f.write(open(os.path.join(d, "expired.pem"), "rb").read() + open(os.path.join(d, "int.pem"), "rb").read())
    return {"chain": chain, "key": os.path.join(d, "expired.key")}


def main():
    global PKIS, EXPIRED
    os.makedirs(PKI, exist_ok=True)
    PKIS = {name: make_pki(name, name) for name in ("rsa", "p256", "p384")}
    EXPIRED = make_expired(PKIS["p256"])
    it.finish("tls", *it.run_suite())


if __name__ == "__main__":
    main()
