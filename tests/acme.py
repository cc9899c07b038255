#!/usr/bin/env python3
"""--acme against a real ACME server on loopback: Debian's pebble, with
pebble-challtestsrv as its DNS (every name is 127.0.0.1), both started here
on free ports. Usage:

    acme.py TLS_BINARY FIXTURES_DIR [PLAIN_BINARY]

The last line is 'acme: N passed, N failed'.
"""
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as it  # noqa: E402  (what every suite shares)

PLAIN = it.arg(3)
DOMAIN = "hooks.xwebhook.test"

test = it.test
free_port = it.free_port


class Pebble:
    """pebble and pebble-challtestsrv. The validator dials tls_port for
    tls-alpn-01 and http_port for http-01, on 127.0.0.1."""

    def __init__(self, nonce_reject=None):
        self.dir = tempfile.mkdtemp(prefix="pebble-", dir=it.WORK)
        self.port, self.mgmt, self.dns = free_port(), free_port(), free_port()
        self.tls_port, self.http_port = free_port(), free_port()
        key, cert = os.path.join(self.dir, "pebble.key"), os.path.join(self.dir, "pebble.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True, timeout=60)
        self.cacert = cert  # the roots for pebble's own HTTPS
        with open(os.path.join(self.dir, "config.json"), "w") as f:
            json.dump({"pebble": {"listenAddress": "127.0.0.1:%d" % self.port,
                                  "managementListenAddress": "127.0.0.1:%d" % self.mgmt,
                                  "certificate": cert, "privateKey": key, "httpPort": self.http_port,
                                  "tlsPort": self.tls_port, "ocspResponderURL": "",
                                  "externalAccountBindingRequired": False}}, f)
        self.logs = []
        log = open(os.path.join(self.dir, "challtestsrv.log"), "wb")
        self.logs.append(log)
        self.cts = subprocess.Popen(["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                                     "-dns01", "127.0.0.1:%d" % self.dns, "-http01", "", "-https01", "",
                                     "-tlsalpn01", "", "-management", "127.0.0.1:%d" % free_port()],
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.env = dict(os.environ, PEBBLE_VA_NOSLEEP="1")
        if nonce_reject is not None:
            self.env["PEBBLE_WFE_NONCEREJECT"] = str(nonce_reject)
        self.log_path = os.path.join(self.dir, "pebble.log")
        self.start()

    def start(self):
        log = open(self.log_path, "ab")
        self.logs.append(log)
        self.proc = subprocess.Popen(["pebble", "-config", os.path.join(self.dir, "config.json"), "-dnsserver",
                                      "127.0.0.1:%d" % self.dns], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     env=self.env)
        assert it.wait_until(lambda: "Listening on" in self.log(), 20), self.log()

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def orders(self):
        """Orders made (not requests for one: a badNonce makes two)."""
        return self.log().count('Added order "')

    def issued(self):
        return re.findall(r"Issued certificate serial ([0-9a-f]+)", self.log())

    def root(self):
        """The root pebble issues under (it makes a new one each start)."""
        ctx = ssl.create_default_context(cafile=self.cacert)
        with urllib.request.urlopen("https://localhost:%d/roots/0" % self.mgmt, context=ctx, timeout=10) as r:
            pem = r.read()
        path = os.path.join(self.dir, "root-%d.pem" % self.proc.pid)
        with open(path, "wb") as f:
            f.write(pem)
        return path

    def url(self):
        return "https://localhost:%d/dir" % self.port

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def close(self):
        self.stop()
        self.cts.terminate()
        self.cts.wait(10)
        for log in self.logs:
            log.close()


def acme_server_at(directory, cacert, state, *extra, listen="127.0.0.1:0", **kw):
    """The TLS build (it.BIN) with --acme against the CA at directory."""
    return it.Server("--acme", DOMAIN, "--acme-server", directory, "--acme-cacert", cacert, "--state-dir", state,
                     *extra, listen=listen, **kw)


def acme_server(p, state, *extra, listen=None, **kw):
    """Against pebble, listening where its validator dials for tls-alpn-01
    (unless told otherwise)."""
    return acme_server_at(p.url(), p.cacert, state, *extra, listen=listen or "127.0.0.1:%d" % p.tls_port, **kw)


def https_crc(port, root):
    ctx = ssl.create_default_context(cafile=root)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname=DOMAIN)
    s.sendall(b"GET /webhooks/twitter?crc_token=abc HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
              % DOMAIN.encode())
    status, _, body, _ = it.read_response(s)
    serial = s.getpeercert()["serialNumber"].lower().lstrip("0")
    s.close()
    return status, body, serial


def check_url(port, root):
    p = subprocess.run([it.BIN, "check", "--connect", "127.0.0.1:%d" % port, "--cacert", root,
                        "https://%s/webhooks/twitter" % DOMAIN], capture_output=True, timeout=60,
                       env={"PATH": os.environ["PATH"], "TWITTER_CONSUMER_SECRET": it.SECRET})
    return p.returncode, p.stdout.decode()


def scrape(port):
    """--metrics' samples, {name with labels: value}."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        text = r.read().decode()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))}


def mode(path):
    st = os.stat(path)
    return st.st_mode & 0o777, st.st_uid


@test
def tls_alpn_01_issues_serves_and_check_passes():
    # pebble refuses 40% of nonces: with nine or so requests, the chance
    # that none is refused is about 1%, so without the retry on badNonce
    # this fails.
    p = Pebble(nonce_reject=40)
    state = os.path.join(p.dir, "state")
    metrics = free_port()
    srv = acme_server(p, state, "--metrics", "127.0.0.1:%d" % metrics)
    try:
        assert it.wait_until(lambda: "ACME: now serving certificate" in srv.stderr(), 60), srv.stderr()
        issued = p.issued()
        assert len(issued) == 1 and p.orders() == 1, p.log()[-2000:]
        # --metrics: the order counted, and the served leaf's notAfter.
        m = scrape(metrics)
        assert m['xwebhook_acme_orders_total{outcome="valid"}'] == 1, m
        assert m['xwebhook_acme_orders_total{outcome="failed"}'] == 0, m
        end = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", os.path.join(state, DOMAIN,
                              "fullchain.pem")], capture_output=True, text=True, timeout=30).stdout
        end = end.strip().split("=", 1)[1].replace(" GMT", "")
        want = time.mktime(time.strptime(end, "%b %d %H:%M:%S %Y")) - time.timezone
        assert m["xwebhook_certificate_not_after_seconds"] == want, (m, want)
        assert "reject 40% of good nonces" in p.log()
        root = p.root()
        status, body, serial = https_crc(srv.port, root)
        assert status == 200 and json.loads(body)["response_token"] == it.sign(b"abc")
        assert serial == issued[0].lstrip("0"), (serial, issued)
        rc, out = check_url(srv.port, root)
        assert rc == 0 and "X would accept this URL." in out, out
        # Files: certbot's names, private, in private directories.
        d = os.path.join(state, DOMAIN)
        assert mode(state)[0] == 0o700 and mode(d)[0] == 0o700
        for f in ("fullchain.pem", "privkey.pem"):
            assert mode(os.path.join(d, f))[0] == 0o600, f
        assert mode(os.path.join(state, "account.key"))[0] == 0o600
        chain = open(os.path.join(d, "fullchain.pem")).read()
        assert chain.count("BEGIN CERTIFICATE") == 2, chain
        # The file is one openssl reads, for the domain.
        text = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"], input=chain.encode(),
                              capture_output=True, timeout=30).stdout.decode()
        assert "DNS:" + DOMAIN in text, text
        # A handshake offering only acme-tls/1 with nothing pending: refused.
        ctx = ssl.create_default_context(cafile=root)
        ctx.set_alpn_protocols(["acme-tls/1"])
        try:
            ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10), server_hostname=DOMAIN)
            raise AssertionError("an acme-tls/1 handshake with no challenge pending was served")
        except ssl.SSLError:
            pass
    finally:
        srv.stop()
        p.close()


@test
def restart_serves_the_stored_certificate_without_asking_the_ca():
    p = Pebble()
    state = os.path.join(p.dir, "state")
    srv = acme_server(p, state)
    try:
        assert it.wait_until(lambda: "ACME: now serving certificate" in srv.stderr(), 60), srv.stderr()
    finally:
        srv.stop()
    posts_before = p.log().count("POST /")
    orders = p.orders()
    srv = acme_server(p, state)
    try:
        assert "ACME: stored certificate serial" in srv.stderr(), srv.stderr()
        status, _, serial = https_crc(srv.port, p.root())
        assert status == 200 and serial == p.issued()[0].lstrip("0")
        time.sleep(1)
        # No order, no account, nothing signed: at most a look at the
        # directory, for renewal information.
        assert p.orders() == orders and p.log().count("POST /") == posts_before, "the restart asked the CA"
        assert "next renewal" in srv.stderr()
    finally:
        srv.stop()
        p.close()


@test
def http_01_on_its_own_port_and_nothing_else_there():
    p = Pebble()
    state = os.path.join(p.dir, "state")
    https_port = free_port()
    srv = acme_server(p, state, "--acme-http", "127.0.0.1:%d" % p.http_port, listen="127.0.0.1:%d" % https_port)
    try:
        assert it.wait_until(lambda: "ACME: now serving certificate" in srv.stderr(), 60), srv.stderr()
        assert "answering http-01 on http://127.0.0.1:%d" % p.http_port in srv.stderr()
        assert "GET /.well-known/acme-challenge/" in srv.stderr()  # pebble's validation, logged
        status, _, _ = https_crc(https_port, p.root())
        assert status == 200
        c = it.http.client.HTTPConnection("127.0.0.1", p.http_port, timeout=10)
        c.request("GET", "/webhooks/twitter?crc_token=abc")
        r = c.getresponse()
        r.read()
        assert r.status == 301 and r.getheader("Location") == "https://%s/webhooks/twitter?crc_token=abc" % DOMAIN
        c.request("GET", "/.well-known/acme-challenge/not-pending")
        r = c.getresponse()
        r.read()
        assert r.status == 404
        c.close()
    finally:
        srv.stop()
        p.close()


def stored_cert(state, days_before, days_after, name=DOMAIN):
    """A certificate for name in state, from a CA of the test's, valid from
    days_before ago to days_after ahead."""
    d = os.path.join(state, DOMAIN)
    os.makedirs(d, mode=0o700, exist_ok=True)
    ca = tempfile.mkdtemp(prefix="ca-", dir=it.WORK)
    run = lambda *a: subprocess.run(a, cwd=ca, check=True, capture_output=True, timeout=60)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
        "ca.key", "-out", "ca.pem", "-days", "400", "-subj", "/CN=old CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign")
    it.openssl_ca_dir(ca)
    with open(os.path.join(ca, "leaf.ext"), "w") as f:
        f.write("subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid\n" % name)
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
        os.path.join(d, "privkey.pem"), "-out", "leaf.csr", "-subj", "/CN=" + name)
    fmt = lambda t: time.strftime("%Y%m%d%H%M%SZ", time.gmtime(t))  # noqa: E731
    now = time.time()
    run("openssl", "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-in", "leaf.csr",
        "-out", "leaf.pem", "-startdate", fmt(now - days_before * 86400), "-enddate", fmt(now + days_after * 86400),
        "-extfile", "leaf.ext", "-notext")
    with open(os.path.join(d, "fullchain.pem"), "wb") as f:
        f.write(open(os.path.join(ca, "leaf.pem"), "rb").read() + open(os.path.join(ca, "ca.pem"), "rb").read())
    os.chmod(os.path.join(d, "privkey.pem"), 0o600)
    return os.path.join(ca, "ca.pem")


@test
def a_stored_certificate_expiring_in_5_days_is_renewed_first():
    p = Pebble()
    state = os.path.join(p.dir, "state")
    old_root = stored_cert(state, 85, 5)
    old = open(os.path.join(state, DOMAIN, "fullchain.pem")).read()
    srv = acme_server(p, state)
    try:
        err = srv.stderr()
        assert "due for renewal; ordering its successor first" in err, err
        assert it.wait_until(lambda: "ACME: now serving certificate" in srv.stderr(), 60), srv.stderr()
        assert p.orders() == 1
        new = open(os.path.join(state, DOMAIN, "fullchain.pem")).read()
        assert new != old
        status, _, serial = https_crc(srv.port, p.root())
        assert status == 200 and serial == p.issued()[0].lstrip("0")
        assert old_root  # the old chain is no longer what serves
    finally:
        srv.stop()
        p.close()


@test
def the_ca_down_with_a_certificate_stored_serves_it():
    p = Pebble()
    state = os.path.join(p.dir, "state")
    root = stored_cert(state, 10, 80)  # outside its window: no request at all
    p.stop()
    try:
        srv = acme_server(p, state)
        try:
            assert "ACME: stored certificate serial" in srv.stderr()
            assert https_crc(srv.port, root)[0] == 200
        finally:
            srv.stop()
        # Inside its window, with the CA down: the order fails, the stored
        # one serves meanwhile, and the next try is backed off.
        shutil.rmtree(state)
        root = stored_cert(state, 85, 5)
        srv = acme_server(p, state)
        try:
            assert it.wait_until(lambda: "meanwhile serving the stored certificate" in srv.stderr(), 30), \
                srv.stderr()
            assert "trying again in 30 s" in srv.stderr() and "Connection refused" in srv.stderr(), srv.stderr()
            assert https_crc(srv.port, root)[0] == 200
        finally:
            srv.stop()
        # Nothing stored, the CA down: no HTTPS yet, and it says so.
        shutil.rmtree(state)
        srv = acme_server(p, state)
        try:
            assert it.wait_until(lambda: "no certificate to serve HTTPS with yet, trying again in 30 s"
                                    in srv.stderr(), 30), srv.stderr()
            try:
                https_crc(srv.port, root)
                raise AssertionError("HTTPS served without a certificate")
            except (ssl.SSLError, ConnectionError):
                pass
            # Plain CRCs are no business of this port; the server is alive.
            assert srv.proc.poll() is None
        finally:
            srv.stop()
    finally:
        p.close()


@test
def a_failed_validation_logs_the_cas_problem_and_backs_off():
    p = Pebble()
    state = os.path.join(p.dir, "state")
    metrics = free_port()
    srv = acme_server(p, state, "--metrics", "127.0.0.1:%d" % metrics,
                      listen="127.0.0.1:%d" % free_port())  # not where the validator dials
    try:
        assert it.wait_until(lambda: "trying again in 30 s" in srv.stderr(), 60), srv.stderr()
        m = scrape(metrics)
        assert m['xwebhook_acme_orders_total{outcome="failed"}'] == 1, m
        assert m['xwebhook_acme_orders_total{outcome="valid"}'] == 0, m
        assert "xwebhook_certificate_not_after_seconds" not in m, m  # nothing served yet
        err = srv.stderr()
        assert "the CA found the tls-alpn-01 challenge invalid" in err and "urn:ietf:params:acme:error:" in err, err
        assert err.count("ACME: ordering") == 1  # no tight loop
    finally:
        srv.stop()
        p.close()


class AriDirectory:
    """Pebble 2.4 has no ACME Renewal Information (RFC 9773). This serves
    pebble's directory with a renewalInfo URL added, pointing here, and
    answers it for one certificate id with a given window; every other URL
    in the directory is pebble's own."""

    def __init__(self, p, cert_id, start, end):
        import http.server
        import threading
        self.seen = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.seen.append(self.path)
                if self.path == "/dir":
                    ctx = ssl.create_default_context(cafile=p.cacert)
                    with urllib.request.urlopen("https://localhost:%d/dir" % p.port, context=ctx, timeout=10) as r:
                        d = json.loads(r.read())
                    d["renewalInfo"] = "https://localhost:%d/renewal-info" % outer.port
                    self.answer(200, d)
                elif self.path == "/renewal-info/" + cert_id:
                    fmt = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
                    self.answer(200, {"suggestedWindow": {"start": fmt(start), "end": fmt(end)}},
                                {"Retry-After": "21600"})
                else:
                    self.answer(404, {"type": "urn:ietf:params:acme:error:malformed", "detail": "unknown id"})

            def answer(self, status, obj, extra=None):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(p.cacert, os.path.join(p.dir, "pebble.key"))  # pebble's own: for localhost
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def ari_id(pem_path):
    """RFC 9773's certificate id, computed here with openssl's help."""
    import base64
    out = subprocess.run(["openssl", "x509", "-in", pem_path, "-noout", "-serial", "-ext", "authorityKeyIdentifier"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    serial = bytes.fromhex(re.search(r"serial=([0-9A-F]+)", out).group(1).rjust(2, "0"))
    if len(serial) % 2:
        serial = b"\0" + serial
    if serial[0] & 0x80:
        serial = b"\0" + serial
    keyid = bytes.fromhex(re.search(r"(?:keyid:)?((?:[0-9A-F]{2}:)+[0-9A-F]{2})", out.split("Identifier:", 1)[1])
                          .group(1).replace(":", ""))
    b64 = lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")  # noqa: E731
    return b64(keyid) + "." + b64(serial)


@test
def ari_window_from_the_ca_renews_early_and_otherwise_waits():
    p = Pebble()
    state = os.path.join(p.dir, "state")
    stored_cert(state, 10, 80)  # by its lifetime, not due for 50 days
    leaf = os.path.join(p.dir, "leaf.pem")
    with open(leaf, "w") as f:
        f.write(open(os.path.join(state, DOMAIN, "fullchain.pem")).read().split("-----END CERTIFICATE-----")[0] +
                "-----END CERTIFICATE-----\n")
    cid = ari_id(leaf)
    now = time.time()
    # A window next week: no renewal now, and the date says so.
    ari = AriDirectory(p, cid, now + 7 * 86400, now + 8 * 86400)
    saved = p.url
    p.url = lambda: "https://localhost:%d/dir" % ari.port
    try:
        srv = acme_server(p, state)
        try:
            assert it.wait_until(lambda: "in the CA's renewal window" in srv.stderr(), 30), srv.stderr()
            assert "/renewal-info/" + cid in ari.seen, ari.seen
            when = time.strftime("%Y-%m-%d", time.gmtime(now + 7 * 86400))
            assert "next renewal %s" % when in srv.stderr() or \
                "next renewal %s" % time.strftime("%Y-%m-%d", time.gmtime(now + 8 * 86400)) in srv.stderr()
            assert p.orders() == 0
        finally:
            srv.stop()
        ari.close()
        # A window that has come (a revocation, say): renewed at once.
        ari = AriDirectory(p, cid, now - 3600, now - 1800)
        srv = acme_server(p, state)
        try:
            assert it.wait_until(lambda: "ACME: now serving certificate" in srv.stderr(), 60), srv.stderr()
            assert "the CA's renewal window has come" in srv.stderr()
            assert p.orders() == 1 and "/renewal-info/" + cid in ari.seen
        finally:
            srv.stop()
    finally:
        p.url = saved
        ari.close()
        p.close()


class HostileCa:
    """An ACME server that misbehaves in one way: 'garbage' (a directory
    that is not JSON), 'huge' (a 2 MiB directory), 'ratelimited' (a
    fine directory and nonce, then 429 rateLimited with Retry-After: 120
    and a subproblem, for the account), or 'pending' (an authorization
    never decided, polled again after retry_after)."""

    def __init__(self, mode, token="tok-Zq8_challenge", retry_after="1"):
        import http.server
        import threading
        self.seen = []
        d = tempfile.mkdtemp(prefix="hostile-ca-", dir=it.WORK)
        self.cert, key = os.path.join(d, "ca.pem"), os.path.join(d, "ca.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", key, "-out", self.cert, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True, timeout=60)
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def send(self, status, body, headers):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                base = "https://localhost:%d" % outer.port
                if mode == "garbage":
                    return self.send(200, b"<html>\x1b[31mnot ACME</html>", {"Content-Type": "text/html"})
                if mode == "huge":
                    return self.send(200, b"{" + b" " * (2 << 20) + b"}", {"Content-Type": "application/json"})
                if self.path == "/dir":
                    return self.send(200, json.dumps({"newNonce": base + "/nonce", "newAccount": base + "/acct",
                                                      "newOrder": base + "/order"}).encode(),
                                     {"Content-Type": "application/json"})
                self.send(204, b"", {"Replay-Nonce": "nonce-%d" % time.time_ns()})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.seen.append(self.path)
                base = "https://localhost:%d" % outer.port
                nonce = {"Replay-Nonce": "nonce-%d" % time.time_ns(), "Content-Type": "application/json"}
                if mode == "pending":
                    # A CA that hands out a tls-alpn-01 challenge and never
                    # decides it: the challenge certificate stays up.
                    if self.path == "/acct":
                        return self.send(201, b'{"status":"valid"}', dict(nonce, Location=base + "/acct/1"))
                    if self.path == "/order":
                        return self.send(201, json.dumps({"status": "pending", "finalize": base + "/fin",
                                                          "authorizations": [base + "/authz"]}).encode(),
                                         dict(nonce, Location=base + "/order/1"))
                    if self.path == "/authz":
                        return self.send(200, json.dumps({"status": "pending", "challenges": [
                            {"type": "http-01", "url": base + "/chall-http", "token": "other"},
                            {"type": "tls-alpn-01", "url": base + "/chall", "token": token}]}).encode(),
                            dict(nonce, **{"Retry-After": retry_after}))
                    return self.send(200, b"{}", nonce)
                problem = {"type": "urn:ietf:params:acme:error:rateLimited",
                           "detail": "too many new accounts\x1b[2J from this address",
                           "subproblems": [{"type": "urn:ietf:params:acme:error:rateLimited",
                                            "detail": "limit: 10 per 3 hours"}]}
                self.send(429, json.dumps(problem).encode(), {"Content-Type": "application/problem+json",
                                                               "Retry-After": "120",
                                                               "Replay-Nonce": "nonce-%d" % time.time_ns()})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.handle_error = lambda *a: None  # the client hanging up on 2 MiB is the point
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@test
def hostile_cas_get_one_line_and_a_wait_never_a_crash():
    for mode, parts, wait in (("garbage", ["without an ACME directory"], 30),
                              ("huge", ["larger than 1 MiB"], 30),
                              ("ratelimited", ["429 urn:ietf:params:acme:error:rateLimited",
                                               "too many new accounts\\x1b[2J from this address",
                                               "limit: 10 per 3 hours"], 120)):
        ca = HostileCa(mode)
        state = tempfile.mkdtemp(prefix="state-", dir=it.WORK)
        srv = acme_server_at("https://localhost:%d/dir" % ca.port, ca.cert, state)
        try:
            want = "trying again in %d s" % wait
            assert it.wait_until(lambda: want in srv.stderr(), 30), (mode, srv.stderr())
            line = [ln for ln in srv.stderr().splitlines() if want in ln][0]
            assert all(p in line for p in parts), (mode, line)
            assert "\x1b" not in srv.stderr()
            time.sleep(1)
            assert srv.stderr().count("trying again") == 1, "a tight loop: " + srv.stderr()
            assert srv.proc.poll() is None
        finally:
            srv.stop()
            ca.close()


@test
def the_tls_alpn_01_certificate_is_for_the_domain_and_the_acme_tls_handshake_alone():
    """While a challenge is pending (a CA that never decides it): a
    handshake offering only acme-tls/1 for the domain gets a self-signed
    certificate with the critical acmeIdentifier extension holding SHA-256
    of the key authorization; for another name, or an ordinary handshake
    (no certificate yet), nothing; and no HTTP after it."""
    import base64
    import hashlib
    token = "tok-Zq8_challenge"
    ca = HostileCa("pending", token)
    state = tempfile.mkdtemp(prefix="state-", dir=it.WORK)
    srv = acme_server_at("https://localhost:%d/dir" % ca.port, ca.cert, state)
    try:
        assert it.wait_until(lambda: "/chall" in ca.seen, 30), ca.seen
        # The key authorization, from the account key the server made.
        text = subprocess.run(["openssl", "ec", "-in", os.path.join(state, "account.key"), "-noout", "-text"],
                              capture_output=True, text=True, timeout=30, check=True).stdout
        pub = bytes.fromhex("".join(text.split("pub:")[1].split("ASN1")[0].split()).replace(":", ""))
        b64 = lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")  # noqa: E731
        jwk = '{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}' % (b64(pub[1:33]), b64(pub[33:65]))
        key_auth = token + "." + b64(hashlib.sha256(jwk.encode()).digest())
        want = b"\x04\x20" + hashlib.sha256(key_auth.encode()).digest()

        def handshake(alpn, name):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            if alpn:
                ctx.set_alpn_protocols(alpn)
            return ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10),
                                   server_hostname=name)

        s = handshake(["acme-tls/1"], DOMAIN)
        der = s.getpeercert(binary_form=True)
        assert s.selected_alpn_protocol() == "acme-tls/1"
        assert der.count(want) == 1, "the acmeIdentifier does not hold SHA-256 of the key authorization"
        cert = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-text"], input=der,
                              capture_output=True, timeout=30).stdout.decode()
        assert "1.3.6.1.5.5.7.1.31: critical" in cert and "DNS:" + DOMAIN in cert, cert
        # Nothing is served after it.
        try:
            s.sendall(b"GET /webhooks/twitter?crc_token=abc HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100) == b""
        except (ssl.SSLError, OSError):
            pass
        s.close()
        for alpn, name in ((["acme-tls/1"], "other.xwebhook.test"), (["http/1.1"], DOMAIN), (None, DOMAIN)):
            try:
                handshake(alpn, name).close()
                raise AssertionError("a handshake %r for %s was served" % (alpn, name))
            except (ssl.SSLError, ConnectionError):
                pass
        assert srv.proc.poll() is None
    finally:
        srv.stop()
        ca.close()


class IssuingCa:
    """An ACME CA stand-in that validates nothing (every authorization is
    already valid) and issues, with `openssl ca`, what mode says:

    'good': for the CSR's key and name, valid for 90 days;
    'ari-past': the same, and renewal information whose window has passed,
        for every certificate;
    'short': an hour's lifetime, 45 minutes of it gone: due at once;
    'name:NAME': for NAME instead of the domain;
    'expired': ended a day ago;
    'key': for a key that is not the CSR's;
    'chain': signed by one intermediate, given with another of the same
        name and a different key;
    'nc': signed by an intermediate with critical name constraints, signed
        by a root: given as [leaf, intermediate, root];
    'pss': the same without name constraints, the intermediate signed by
        an RSA root with RSA-PSS;
    'fail:N': the first N orders' authorizations are invalid (a failed
        validation), then as 'good'.

    orders counts newOrder requests; issued holds the serials, in hex."""

    def __init__(self, mode):
        import base64
        import http.server
        import threading
        self.orders = 0
        self.issued = []
        self.lock = threading.Lock()
        self.dir = d = tempfile.mkdtemp(prefix="issuing-ca-", dir=it.WORK)
        run = lambda *a, **kw: subprocess.run(a, cwd=d, check=True, capture_output=True, timeout=60, **kw)  # noqa
        self.cert, key = os.path.join(d, "https.pem"), os.path.join(d, "https.key")
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            key, "-out", self.cert, "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost")
        for name in ("int", "other"):  # two intermediates of one name
            run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", name + ".key", "-out", name + ".pem", "-days", "400", "-subj", "/CN=Hostile Intermediate",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
        self.root = os.path.join(d, "int.pem")  # what the issued certificates chain to
        ca_cert, ca_key, above = "int.pem", "int.key", b""
        if mode in ("nc", "pss"):
            rsa = mode == "pss"
            run("openssl", "req", "-x509", "-newkey", "rsa:2048" if rsa else "ec", *(() if rsa else (
                "-pkeyopt", "ec_paramgen_curve:P-256")), "-nodes", "-keyout", "root.key", "-out", "root.pem",
                "-days", "400", "-subj", "/CN=Test Root", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign")
            run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                "nc.key", "-out", "nc.csr", "-subj", "/CN=Constrained Intermediate")
            with open(os.path.join(d, "nc.ext"), "w") as f:
                f.write("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n"
                        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" +
                        ("" if rsa else "nameConstraints=critical,permitted;DNS:xwebhook.test\n"))
            run("openssl", "x509", "-req", "-in", "nc.csr", "-CA", "root.pem", "-CAkey", "root.key",
                "-set_serial", "77", "-days", "400", "-extfile", "nc.ext", "-out", "nc.pem",
                *(("-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32") if rsa else ()))
            ca_cert, ca_key = "nc.pem", "nc.key"
            self.root = os.path.join(d, "root.pem")
            with open(self.root, "rb") as f:
                above = f.read()
        it.openssl_ca_dir(d)
        with open(os.path.join(d, "serial"), "w") as f:
            f.write("A000\n")  # not stored_cert's 1000
        cnf = os.path.join(d, "ca.cnf")
        with open(cnf) as f:
            text = f.read().replace("copy_extensions = copy", "copy_extensions = none")
        with open(cnf, "w") as f:
            f.write(text)
        outer = self
        b64d = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))  # noqa: E731
        fmt = lambda t: time.strftime("%Y%m%d%H%M%SZ", time.gmtime(t))  # noqa: E731
        chains = {}

        def issue(n, csr_der):
            now = time.time()
            name, start, end = DOMAIN, now - 60, now + 90 * 86400
            if mode.startswith("name:"):
                name = mode[5:]
            elif mode == "expired":
                start, end = now - 90 * 86400, now - 86400
            elif mode == "short":
                start, end = now - 45 * 60, now + 15 * 60
            csr = "req%d.pem" % n
            run("openssl", "req", "-inform", "DER", "-out", csr, input=csr_der)
            if mode == "key":
                run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                    "stranger%d.key" % n, "-out", csr, "-subj", "/CN=" + DOMAIN)
            with open(os.path.join(d, "leaf.ext"), "w") as f:
                f.write("subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid\n"
                        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n" % name)
            leaf = "leaf%d.pem" % n
            with outer.lock:  # openssl ca keeps its serial and index in d
                run("openssl", "ca", "-batch", "-config", "ca.cnf", "-cert", ca_cert, "-keyfile", ca_key,
                    "-in", csr, "-out", leaf, "-startdate", fmt(start), "-enddate", fmt(end), "-extfile",
                    "leaf.ext", "-notext")
                outer.issued.append(pem_serial(os.path.join(d, leaf)))
            with open(os.path.join(d, leaf), "rb") as f, \
                    open(os.path.join(d, "other.pem" if mode == "chain" else ca_cert), "rb") as g:
                chains[n] = f.read() + g.read() + above

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def send(self, status, obj, headers=None, ctype="application/json"):
                body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Replay-Nonce", "nonce-%d" % time.time_ns())
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                base = "https://localhost:%d" % outer.port
                if self.path == "/dir":
                    dr = {"newNonce": base + "/nonce", "newAccount": base + "/acct", "newOrder": base + "/order"}
                    if mode == "ari-past":
                        dr["renewalInfo"] = base + "/renewal-info"
                    return self.send(200, dr)
                if self.path.startswith("/renewal-info/") and mode == "ari-past":
                    iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
                    return self.send(200, {"suggestedWindow": {"start": iso(time.time() - 7200),
                                                               "end": iso(time.time() - 3600)}})
                self.send(204, b"")

            def do_POST(self):
                jws = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                payload = json.loads(b64d(jws["payload"])) if jws["payload"] else None
                base = "https://localhost:%d" % outer.port
                part = self.path.split("/")
                if self.path == "/acct":
                    return self.send(201, {"status": "valid"}, {"Location": base + "/acct/1"})
                if self.path == "/order":
                    with outer.lock:
                        outer.orders += 1
                        n = outer.orders
                    return self.send(201, {"status": "pending", "finalize": base + "/fin/%d" % n,
                                           "authorizations": [base + "/authz/%d" % n]},
                                     {"Location": base + "/order/%d" % n})
                n = int(part[2])
                if part[1] == "authz" and mode.startswith("fail:") and n <= int(mode[5:]):
                    return self.send(200, {"status": "invalid", "identifier": {"type": "dns", "value": DOMAIN},
                                           "challenges": []})
                if part[1] == "authz":
                    return self.send(200, {"status": "valid", "identifier": {"type": "dns", "value": DOMAIN},
                                           "challenges": []})
                if part[1] == "fin":
                    issue(n, b64d(payload["csr"]))
                    return self.send(200, {"status": "processing"})
                if part[1] == "order":
                    return self.send(200, {"status": "valid", "certificate": base + "/cert/%d" % n}
                                     if n in chains else {"status": "processing"})
                if part[1] == "cert":
                    return self.send(200, chains[n], ctype="application/pem-certificate-chain")
                self.send(404, {"type": "urn:ietf:params:acme:error:malformed"})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = "https://localhost:%d/dir" % self.port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def pem_serial(path):
    """A certificate's serial as https_crc gives it: lower-case hex."""
    out = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-serial"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return out.strip().split("=", 1)[1].lower().lstrip("0")


def cpu_seconds(pid):
    """User and system time the process has used."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def next_renewal(err):
    """The time of the last 'next renewal' line."""
    import calendar
    when = re.findall(r"next renewal (\d{4}-\d\d-\d\d \d\d:\d\d) UTC", err)[-1]
    return calendar.timegm(time.strptime(when, "%Y-%m-%d %H:%M"))


@test
def a_ca_issuing_certificates_already_due_gets_one_order_not_a_loop():
    """A renewal window already past, or an hour's certificate with 15
    minutes left: one order, then the floor (a third of the lifetime, at
    most a day, and a minute before notAfter at the latest: 14 minutes for
    the hour's certificate, not 20, past its end) before the next, and an
    idle thread meanwhile. Main's code ordered again at once, forever
    (hundreds of orders, 50% CPU)."""
    for mode, keep in (("ari-past", 86400), ("short", 15 * 60 - 60)):
        ca = IssuingCa(mode)
        state = tempfile.mkdtemp(prefix="state-", dir=it.WORK)
        srv = acme_server_at(ca.url, ca.cert, state)
        try:
            assert it.wait_until(lambda: "ACME: now serving certificate" in srv.stderr(), 30), srv.stderr()
            issued, cpu = time.time(), cpu_seconds(srv.proc.pid)
            assert not it.wait_until(lambda: ca.orders > 1, 5), (mode, ca.orders, srv.stderr()[-3000:])
            cpu = cpu_seconds(srv.proc.pid) - cpu
            assert cpu < 1.0, (mode, "%.2f s of CPU in 5 s" % cpu)
            assert it.wait_until(lambda: "the soonest for a certificate this new" in srv.stderr(), 10), \
                srv.stderr()
            assert abs(next_renewal(srv.stderr()) - (issued + keep)) < 120, (mode, srv.stderr())
            assert ca.orders == 1 and len(ca.issued) == 1
            assert https_crc(srv.port, ca.root)[2] == ca.issued[0]
        finally:
            srv.stop()
            ca.close()


@test
def a_certificate_the_ca_should_not_have_issued_is_neither_stored_nor_served():
    """For another name (a prefix of the domain, the domain with more after
    it), expired, for a key not ours, or under an intermediate that did not
    sign it: one line with the reason, a backoff, the stored certificate
    untouched and still what HTTPS serves."""
    for mode, reason in (("name:other.xwebhook.test", "is not for " + DOMAIN),
                         ("name:" + DOMAIN[:-1], "is not for " + DOMAIN),
                         ("name:" + DOMAIN + "x", "is not for " + DOMAIN),
                         ("expired", "the CA issued a certificate that expired"),
                         ("key", "does not match the certificate"),
                         ("chain", "is not signed by the next one given")):
        ca = IssuingCa(mode)
        state = tempfile.mkdtemp(prefix="state-", dir=it.WORK)
        old_root = stored_cert(state, 85, 5)  # due, still valid
        d = os.path.join(state, DOMAIN)
        old = {f: open(os.path.join(d, f), "rb").read() for f in ("fullchain.pem", "privkey.pem")}
        old_serial = pem_serial(os.path.join(d, "fullchain.pem"))
        srv = acme_server_at(ca.url, ca.cert, state)
        try:
            want = "trying again in 30 s"
            assert it.wait_until(lambda: want in srv.stderr(), 30), (mode, srv.stderr())
            line = [ln for ln in srv.stderr().splitlines() if want in ln][0]
            assert reason in line and "still serving the current certificate" in line, (mode, line)
            assert ca.orders == 1 and len(ca.issued) == 1, (mode, ca.orders)
            assert {f: open(os.path.join(d, f), "rb").read() for f in old} == old, mode
            status, _, serial = https_crc(srv.port, old_root)
            assert status == 200 and serial == old_serial != ca.issued[0], (mode, serial, old_serial)
            assert "now serving" not in srv.stderr(), (mode, srv.stderr())
        finally:
            srv.stop()
            ca.close()


@test
def a_chain_through_a_name_constrained_or_rsa_pss_signed_intermediate_is_stored_and_served():
    """[leaf, intermediate with critical name constraints, root], and the
    same with the intermediate RSA-PSS-signed: the leaf is signed by the
    intermediate, which is the one link checked; the chain is stored and
    served. Main's code checked every link with BearSSL and refused them
    (error 57, a critical extension; 49, unsupported)."""
    for mode in ("nc", "pss"):
        ca = IssuingCa(mode)
        state = tempfile.mkdtemp(prefix="state-", dir=it.WORK)
        srv = acme_server_at(ca.url, ca.cert, state)
        try:
            assert it.wait_until(lambda: "ACME: now serving certificate" in srv.stderr(), 30), \
                (mode, srv.stderr())
            assert ca.orders == 1 and len(ca.issued) == 1, (mode, ca.orders)
            stored = open(os.path.join(state, DOMAIN, "fullchain.pem")).read()
            assert stored.count("BEGIN CERTIFICATE") == 3, (mode, stored)
            status, _, serial = https_crc(srv.port, ca.root)
            assert status == 200 and serial == ca.issued[0], (mode, status, serial)
        finally:
            srv.stop()
            ca.close()


@test
def failed_validations_do_not_count_against_the_weekly_cap():
    """Three certificates issued this week already, then a CA whose
    validations fail twice before the third order succeeds: the backoff
    paces the retries, the certificate is issued and served, and the
    orders file counts four certificates, not six. Main's code counted
    every attempt: capped after the second failure, no HTTPS for a week."""
    ca = IssuingCa("fail:2")
    state = tempfile.mkdtemp(prefix="state-", dir=it.WORK)
    os.makedirs(os.path.join(state, DOMAIN), mode=0o700)
    now = int(time.time())
    orders = os.path.join(state, DOMAIN, "orders")
    with open(orders, "w") as f:
        f.write("".join("%d\n" % (now - 3600 * k) for k in (3, 2, 1)))
    os.chmod(orders, 0o600)
    srv = acme_server_at(ca.url, ca.cert, state)
    try:
        assert it.wait_until(lambda: "ACME: now serving certificate" in srv.stderr(), 150), srv.stderr()
        err = srv.stderr()
        assert err.count("trying again in") == 2 and "trying again in 30 s" in err and \
            "trying again in 60 s" in err, err
        assert ca.orders == 3 and len(ca.issued) == 1, (ca.orders, ca.issued)
        lines = open(orders).read().split()
        assert len(lines) == 4 and int(lines[-1]) >= now, lines
        assert https_crc(srv.port, ca.root)[2] == ca.issued[0]
    finally:
        srv.stop()
        ca.close()


@test
def a_stored_certificate_not_yet_valid_is_replaced_at_once():
    """A stored certificate valid from 10 days ahead: unusable now, so one
    is ordered at once. Main's code kept it, with its renewal counted from
    its notBefore (a date that could be millennia ahead)."""
    ca = IssuingCa("good")
    state = tempfile.mkdtemp(prefix="state-", dir=it.WORK)
    stored_cert(state, -10, 90)
    srv = acme_server_at(ca.url, ca.cert, state)
    try:
        assert it.wait_until(lambda: "ACME: now serving certificate" in srv.stderr(), 30), srv.stderr()
        assert "the stored certificate is not valid before" in srv.stderr(), srv.stderr()
        assert ca.orders == 1 and https_crc(srv.port, ca.root)[2] == ca.issued[0]
    finally:
        srv.stop()
        ca.close()


@test
def a_pending_authorization_with_a_huge_retry_after_is_polled_within_its_limit():
    """Retry-After: 999999999 on a pending authorization: the next poll is
    within the 180 s the poll has (main's code slept a day). The wait is
    read from the log: the test does not wait 180 s."""
    ca = HostileCa("pending", retry_after="999999999")
    state = tempfile.mkdtemp(prefix="state-", dir=it.WORK)
    srv = acme_server_at("https://localhost:%d/dir" % ca.port, ca.cert, state)
    try:
        want = re.compile(r"ACME: the CA asks to poll the authorization again in (\d+) s, past the 180 s it is "
                          r"given; polling it once more in (\d+) s")
        assert it.wait_until(lambda: want.search(srv.stderr()), 30), srv.stderr()
        asked, wait = map(int, want.search(srv.stderr()).groups())
        assert asked == 86400 and 170 <= wait <= 180, (asked, wait)
    finally:
        t0 = time.monotonic()
        srv.stop()
        assert time.monotonic() - t0 < 10  # the wait ends at shutdown
        ca.close()


@test
def the_weekly_order_cap_survives_restarts():
    """A crash-restart loop with a CA whose certificates are due at once:
    each start orders once, until five in the week; the sixth start places
    no order, says when ordering resumes, and serves the stored one."""
    ca = IssuingCa("short")
    state = tempfile.mkdtemp(prefix="state-", dir=it.WORK)
    try:
        first = time.time()
        for i in range(5):
            srv = acme_server_at(ca.url, ca.cert, state)
            try:
                assert it.wait_until(lambda: "ACME: now serving certificate" in srv.stderr(), 30), srv.stderr()
                assert ca.orders == i + 1, (i, ca.orders, srv.stderr())
            finally:
                srv.stop()
        orders = open(os.path.join(state, DOMAIN, "orders")).read().split()
        assert len(orders) == 5 and all(abs(int(t) - first) < 120 for t in orders), orders
        assert mode(os.path.join(state, DOMAIN, "orders"))[0] == 0o600
        srv = acme_server_at(ca.url, ca.cert, state)
        try:
            assert it.wait_until(lambda: "ordering resumes" in srv.stderr(), 30), srv.stderr()
            assert not it.wait_until(lambda: ca.orders > 5, 3), srv.stderr()
            err = srv.stderr()
            assert err.count("ordering resumes") == 1, err
            line = [ln for ln in err.splitlines() if "ordering resumes" in ln][0]
            resume = time.strftime("%Y-%m-%d", time.gmtime(int(orders[0]) + 7 * 86400))
            assert "5 orders for %s in the last 7 days" % DOMAIN in line and resume in line, line
            assert "meanwhile serving the stored certificate" in err
            assert https_crc(srv.port, ca.root)[2] == ca.issued[-1]
        finally:
            srv.stop()
    finally:
        ca.close()


def need_root(why):
    if os.geteuid() != 0:
        raise AssertionError("needs root (%s): run the suite as root, as CI does" % why)


@test
def works_after_dropping_root_and_everything_is_the_users():
    need_root("--user")
    nobody = pwd.getpwnam("nobody")
    p = Pebble()
    state = os.path.join(p.dir, "state")
    for d in (it.WORK, p.dir):
        os.chmod(d, 0o755)  # for nobody to reach its state directory
    srv = acme_server(p, state, "--user", "nobody")
    try:
        assert it.wait_until(lambda: "ACME: now serving certificate" in srv.stderr(), 60), srv.stderr()
        for path in (state, os.path.join(state, DOMAIN), os.path.join(state, "account.key"),
                     os.path.join(state, DOMAIN, "fullchain.pem"), os.path.join(state, DOMAIN, "privkey.pem")):
            assert mode(path)[1] == nobody.pw_uid, path
        assert https_crc(srv.port, p.root())[0] == 200
    finally:
        srv.stop()
        p.close()


_self_signed = []


def self_signed():
    """A certificate for --acme-cacert (these runs stop before any order)."""
    if not _self_signed:
        d = tempfile.mkdtemp(prefix="cacert-", dir=it.WORK)
        cert = os.path.join(d, "ca.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", os.path.join(d, "ca.key"), "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
                       check=True, capture_output=True, timeout=60)
        _self_signed.append(cert)
    return _self_signed[0]


def owned(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid, st.st_mode


class Planted:
    """A state directory as --user nobody left it (the directory and DOMAIN
    in it nobody's, 0700), and, beside it, root's file and directory that
    a link planted there could hand over."""

    def __init__(self):
        need_root("--user, and files of root's and nobody's")
        self.nobody = pwd.getpwnam("nobody")
        os.chmod(it.WORK, 0o755)
        self.base = tempfile.mkdtemp(prefix="planted-", dir=it.WORK)
        os.chmod(self.base, 0o755)
        self.state = os.path.join(self.base, "state")
        self.domain = os.path.join(self.state, DOMAIN)
        os.makedirs(self.domain)
        for d in (self.state, self.domain):
            os.chmod(d, 0o700)
            self.give(d)
        self.victim = os.path.join(self.base, "roots-file")
        with open(self.victim, "w") as f:
            f.write("root's alone\n")
        os.chmod(self.victim, 0o640)
        self.victim_dir = os.path.join(self.base, "roots-dir")
        os.mkdir(self.victim_dir, 0o755)
        self.before = {p: owned(p) for p in (self.victim, self.victim_dir)}

    def give(self, path):
        os.lchown(path, self.nobody.pw_uid, self.nobody.pw_gid)

    def link(self, path, target):
        """A symbolic link, as nobody would make it."""
        os.symlink(target, path)
        self.give(path)

    def run(self, *extra, state=None):
        """The server as root with --user nobody: (returncode, stderr)."""
        env = {"PATH": os.environ["PATH"], "TWITTER_CONSUMER_SECRET": it.SECRET}
        try:
            p = subprocess.run([it.BIN, "--listen", "127.0.0.1:0", "--acme", DOMAIN, "--acme-server",
                                "https://127.0.0.1:1/dir", "--acme-cacert", self_signed(), "--state-dir",
                                state or self.state, "--user", "nobody", *extra],
                               capture_output=True, timeout=15, env=env)
        except subprocess.TimeoutExpired as e:
            raise AssertionError("no refusal: still running (or stuck on a FIFO) after 15 s; %s now %r: %r"
                                 % (self.victim, owned(self.victim), e.stderr))
        err = p.stderr.decode(errors="replace")
        it.check_sanitizers(err)
        return p.returncode, err

    def unchanged(self):
        for p, was in self.before.items():
            assert owned(p) == was, "%s changed: %r, was %r" % (p, owned(p), was)
        assert open(self.victim).read() == "root's alone\n"


def refused(rc, err, path, reason):
    lines = err.splitlines()
    assert rc == 1 and len(lines) == 1 and path in lines[0] and reason in lines[0], (rc, err, path, reason)


@test
def links_planted_in_the_state_dir_are_refused_and_their_targets_untouched():
    # nobody, once compromised, plants a link to a file of root's in its
    # own state directory; at the next start as root, nothing is followed.
    for name in ("privkey.pem", "fullchain.pem", "account.key"):
        t = Planted()
        path = os.path.join(t.domain if name != "account.key" else t.state, name)
        t.link(path, t.victim)
        rc, err = t.run()
        refused(rc, err, path, "is a symbolic link")
        t.unchanged()
        assert os.path.islink(path) and owned(path)[0] == t.nobody.pw_uid
    # A dangling link too: nothing is made at its target.
    t = Planted()
    path = os.path.join(t.domain, "privkey.pem")
    t.link(path, os.path.join(t.base, "made-by-root"))
    refused(*t.run(), path, "is a symbolic link")
    assert not os.path.lexists(os.path.join(t.base, "made-by-root"))


@test
def a_linked_domain_dir_or_state_dir_is_refused_and_its_target_untouched():
    t = Planted()
    shutil.rmtree(t.domain)
    t.link(t.domain, t.victim_dir)
    refused(*t.run(), t.domain, "is a symbolic link")
    t.unchanged()
    # The state directory itself (its last component): given as typed,
    # and with a trailing slash, which would follow it.
    for given in ("state", "state/"):
        t = Planted()
        shutil.rmtree(t.state)
        t.link(t.state, t.victim_dir)
        refused(*t.run(state=os.path.join(t.base, given)), t.state, "is a symbolic link")
        t.unchanged()
        assert os.listdir(t.victim_dir) == []


@test
def a_link_on_the_state_dirs_path_or_a_dot_dot_is_refused():
    """--state-dir two levels below a directory of nobody's: a link nobody
    plants there (lib/sub -> root's directory) is not followed, so root's
    directory of that name is neither made 0700 nor given to nobody. And
    --state-dir DIR/.. would have root chmod and chown DIR's parent."""
    t = Planted()
    lib = os.path.join(t.base, "lib")
    os.mkdir(lib, 0o755)
    t.give(lib)
    target = os.path.join(t.victim_dir, "acme")
    os.mkdir(target, 0o755)
    was = owned(target)
    t.link(os.path.join(lib, "sub"), t.victim_dir)
    refused(*t.run(state=os.path.join(lib, "sub", "acme")), os.path.join(lib, "sub", "acme"),
            "a directory on its path is a symbolic link, which root does not follow")
    assert owned(target) == was, (owned(target), was)
    t.unchanged()
    was = owned(t.base)
    refused(*t.run(state=os.path.join(lib, "..")), os.path.join(lib, ".."), "not . or ..")
    assert owned(t.base) == was


@test
def a_fifo_a_hard_link_or_a_third_users_file_in_the_state_dir_is_refused():
    t = Planted()
    path = os.path.join(t.domain, "fullchain.pem")
    os.mkfifo(path, 0o600)
    t.give(path)
    refused(*t.run(), path, "is not a regular file")
    assert owned(path)[0] == t.nobody.pw_uid
    # A hard link to root's file (fs.protected_hardlinks=0 lets nobody make one).
    t = Planted()
    path = os.path.join(t.domain, "privkey.pem")
    os.link(t.victim, path)
    refused(*t.run(), path, "hard links")
    t.unchanged()
    # A file of a third user's (and a directory): not given to nobody.
    third = 54321
    t = Planted()
    path = os.path.join(t.state, "account.key")
    with open(path, "w") as f:
        f.write("a third user's\n")
    os.chown(path, third, third)
    os.chmod(path, 0o640)
    was = owned(path)
    refused(*t.run(), path, "belongs to uid %d" % third)
    assert owned(path) == was
    t = Planted()
    os.chown(t.domain, third, third)
    was = owned(t.domain)
    refused(*t.run(), t.domain, "belongs to uid %d" % third)
    assert owned(t.domain) == was


@test
def leftover_temp_files_are_removed_at_start_links_among_them_unfollowed():
    # What a write cut off by SIGTERM or a crash leaves: NAME.tmp, here
    # also as a link nobody planted (root must remove the link, not its
    # target, and never write through it).
    t = Planted()
    leftovers = [os.path.join(t.domain, "fullchain.pem.tmp"), os.path.join(t.domain, "privkey.pem.tmp"),
                 os.path.join(t.state, "account.key.tmp")]
    with open(leftovers[0], "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\ncut off\n")
    t.give(leftovers[0])
    t.link(leftovers[1], t.victim)
    t.link(leftovers[2], t.victim)
    srv = acme_server_at("https://127.0.0.1:1/dir", self_signed(), t.state, "--user", "nobody")
    try:
        for p in leftovers:
            assert "removed %s" % p in srv.stderr(), srv.stderr()
            # (account.key.tmp comes back for a moment: the new account key.)
            assert it.wait_until(lambda: not os.path.lexists(p), 10), (p, srv.stderr())
        assert it.wait_until(lambda: "trying again" in srv.stderr(), 30), srv.stderr()
        assert srv.proc.poll() is None
    finally:
        srv.stop()
    t.unchanged()


def children(pid):
    out = []
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
            out += [int(c) for c in f.read().split()]
    return out


def stop_traced(srv):
    """Stop a server run under strace (which SIGTERM would only detach)."""
    if srv.proc.poll() is None:
        for pid in children(srv.proc.pid):
            os.kill(pid, signal.SIGTERM)
        srv.proc.wait(30)
    srv.stop()


@test
def sigterm_while_the_certificate_is_written_leaves_a_temp_file_the_next_start_removes():
    # strace holds the ACME thread's third fsync (the orders count's,
    # privkey.pem's, then fullchain.pem's; strace counts per thread) for
    # 8 s: SIGTERM arrives while fullchain.pem.tmp is half made. The temp
    # file survives that exit; the next start removes it before anything
    # else.
    need_root("--user")
    if shutil.which("strace") is None:
        raise AssertionError("strace is not installed")
    p = Pebble()
    state = os.path.join(p.dir, "state")
    tmp = os.path.join(state, DOMAIN, "fullchain.pem.tmp")
    for d in (it.WORK, p.dir):
        os.chmod(d, 0o755)
    srv = acme_server(p, state, "--user", "nobody",
                      env={"ASAN_OPTIONS": "detect_leaks=0"},  # LeakSanitizer cannot run under ptrace
                      wrap=("strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync",
                            "-e", "inject=fsync:delay_enter=8000000:when=3"))
    try:
        assert it.wait_until(lambda: os.path.exists(tmp), 60), srv.stderr()
        server = children(srv.proc.pid)
        assert len(server) == 1, server
        os.kill(server[0], signal.SIGTERM)
        assert it.wait_until(lambda: "stopped" in srv.stderr(), 5), srv.stderr()
        srv.proc.wait(30)  # the process ends once strace lets the held thread go
    finally:
        stop_traced(srv)
    assert os.path.exists(tmp) and not os.path.exists(tmp[:-4]), os.listdir(os.path.dirname(tmp))
    srv = acme_server(p, state, "--user", "nobody")
    try:
        assert "removed %s" % tmp in srv.stderr(), srv.stderr()
        assert it.wait_until(lambda: "ACME: now serving certificate" in srv.stderr(), 60), srv.stderr()
        assert not os.path.exists(tmp)
        assert https_crc(srv.port, p.root())[0] == 200
    finally:
        srv.stop()
        p.close()


@test
def a_link_at_a_temp_name_while_running_is_never_written_through():
    # As root without --user, the writes are root's. strace holds the
    # privkey.pem write in fsync (the ACME thread's second, after the
    # orders count's); meanwhile a link to root's file appears
    # at fullchain.pem.tmp. The certificate's write fails (a temp file is
    # always new: O_EXCL, O_NOFOLLOW) instead of filling root's file.
    need_root("files of root's")
    p = Pebble()
    state = os.path.join(p.dir, "state")
    domain = os.path.join(state, DOMAIN)
    victim = os.path.join(p.dir, "roots-file")
    with open(victim, "w") as f:
        f.write("root's alone\n")
    os.chmod(victim, 0o640)
    was = owned(victim)
    srv = acme_server(p, state, env={"ASAN_OPTIONS": "detect_leaks=0"},
                      wrap=("strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync",
                            "-e", "inject=fsync:delay_enter=3000000:when=2"))
    try:
        assert it.wait_until(lambda: os.path.exists(os.path.join(domain, "privkey.pem.tmp")), 60), srv.stderr()
        os.symlink(victim, os.path.join(domain, "fullchain.pem.tmp"))
        want = "cannot write %s: File exists" % os.path.join(domain, "fullchain.pem")
        assert it.wait_until(lambda: want in srv.stderr() or "now serving" in srv.stderr(), 30), srv.stderr()
        assert owned(victim) == was and open(victim).read() == "root's alone\n", open(victim).read()[:80]
        assert want in srv.stderr(), srv.stderr()
    finally:
        stop_traced(srv)
        p.close()


@test
def bad_acme_options_are_refused_with_one_line():
    env = {"PATH": os.environ["PATH"], "TWITTER_CONSUMER_SECRET": it.SECRET}
    d = tempfile.mkdtemp(dir=it.WORK)
    cases = [(["--acme", DOMAIN, "--cert", "c.pem", "--key", "k.pem"], "without --cert and --key"),
             (["--acme-http", ":80"], "go with --acme DOMAIN"),
             (["--state-dir", d], "go with --acme DOMAIN"),
             (["--acme", "*.example.com", "--state-dir", d], "bad --acme"),
             (["--acme", "127.0.0.1", "--state-dir", d], "bad --acme"),
             (["--acme", "localhost", "--state-dir", d], "bad --acme"),
             (["--acme", DOMAIN, "--state-dir", "/proc/version"], "--state-dir"),
             (["--acme", DOMAIN, "--state-dir", d, "--acme-cacert", "/nonexistent.pem"], "/nonexistent.pem")]
    for args, part in cases:
        p = subprocess.run([it.BIN, "--listen", "127.0.0.1:0", *args], capture_output=True, timeout=30, env=env)
        err = p.stderr.decode()
        it.check_sanitizers(err)
        lines = [ln for ln in err.splitlines() if not ln.startswith(("xwebhook: warning: running as root",
                                                                      "xwebhook: ACME: no certificate",
                                                                      "xwebhook: serving"))]
        assert p.returncode == 1 and len(lines) == 1 and part in lines[0], (args, p.returncode, err)
    if PLAIN is not None:
        p = subprocess.run([PLAIN, "--acme", DOMAIN], capture_output=True, timeout=30, env=env)
        assert p.returncode == 1 and "needs the TLS build" in p.stderr.decode(), p.stderr


def main():
    it.require("acme", ("pebble", "pebble-challtestsrv"),
               "{tool} is not installed (./test.sh installs pebble as root)")
    os.makedirs(it.PKI, exist_ok=True)
    it.finish("acme", *it.run_suite())


if __name__ == "__main__":
    main()
