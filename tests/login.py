#!/usr/bin/env python3
"""xwebhook login and logout (OAuth 2.0 user context, Authorization Code
with PKCE) and the user token's use, refresh and lock, against the X
stand-in of tests/x_standin.py, with a Python client in the browser's
place. Usage:

    login.py TLS_BINARY FIXTURES_DIR [PLAIN_BINARY]

The last line is 'login: N passed, N failed'.
"""
import http.client
import json
import os
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as it  # noqa: E402  (what every suite shares)
import x_standin as xs  # noqa: E402

PLAIN = it.arg(3)
USER_ID = "2244994945"
WID = "1460000000000000001"
CRED = {
    "TWITTER_BEARER_TOKEN": "AAAAAAAAAAAAAAAAAAAAAbearer-Zq8x",
    "TWITTER_CONSUMER_KEY": "ck-consumer-key-Zq8x",
    "TWITTER_CONSUMER_SECRET": it.SECRET,
    "TWITTER_ACCESS_TOKEN": "%s-access-token-Zq8x" % USER_ID,
    "TWITTER_ACCESS_TOKEN_SECRET": "ats-access-token-secret-Zq8x",
}
CLIENT_SECRET = "cs-client-secret-Zq8x+/="
PKI = {}

test = it.test


class World:
    """The stand-in (with one webhook registered), a state dir, and runs of
    xwebhook against them; every output is checked for every secret."""

    def __init__(self, confidential=False):
        app = xs.App(CRED["TWITTER_CONSUMER_KEY"], it.SECRET, CRED["TWITTER_BEARER_TOKEN"],
                     {CRED["TWITTER_ACCESS_TOKEN"]: (CRED["TWITTER_ACCESS_TOKEN_SECRET"], USER_ID)})
        if confidential:
            app.client_secret = CLIENT_SECRET
        self.x = xs.Standin(PKI["api"]["chain"], PKI["api"]["key"], PKI["p"]["root"], app, {})
        self.x.webhooks[WID] = {"id": WID, "url": "https://%s/webhooks/twitter" % it.HOST, "valid": True,
                                "created_at": "2026-12-02T00:00:00.000Z"}
        self.state = tempfile.mkdtemp(dir=it.WORK, prefix="state-")
        self.token_path = os.path.join(self.state, "oauth2.token")
        self.wrap = []  # a command the binary runs under (strace)
        self.env = {"PATH": os.environ["PATH"], "TWITTER_CLIENT_ID": app.client_id}
        if confidential:
            self.env["TWITTER_CLIENT_SECRET"] = CLIENT_SECRET

    def argv(self, *args):
        return [*self.wrap, it.BIN, "--api", self.x.base, "--cacert", PKI["p"]["root"], "--state-dir", self.state, *args]

    def secrets(self):
        """Everything that must never be shown: the app's secrets and
        every token the stand-in issued."""
        o = self.x.oauth2
        return ([CLIENT_SECRET, CRED["TWITTER_CONSUMER_SECRET"], CRED["TWITTER_ACCESS_TOKEN_SECRET"],
                 CRED["TWITTER_BEARER_TOKEN"]] + list(o.access) + list(o.refresh) + [r[0] for r in o.revoked]
                + [g[1].get("code_verifier", "") for g in o.grants if g[1].get("code_verifier")])

    def clean(self, *texts):
        for s in self.secrets():
            for t in texts:
                assert s not in t, "a secret was shown: %r in %r" % (s, t)

    def run(self, *args, env=None, oauth1=False):
        e = dict(self.env, **(CRED if oauth1 else {}), **(env or {}))
        p = subprocess.run(self.argv(*args), env=e, capture_output=True, timeout=60)
        out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
        it.check_sanitizers(err)
        self.clean(out, err)
        return p.returncode, out, err

    def login(self, args=(), browser=None, port=None):
        """Run xwebhook login; browser(url, port) plays the browser with
        the printed authorize URL. (rc, stderr, what browser returned)."""
        port = port or it.free_port()
        p = subprocess.Popen(self.argv("login", "--auth-url", self.x.base + "/i/oauth2/authorize", "--port",
                                       str(port), *args), env=self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        lines, seen = [], None
        try:
            for raw in p.stderr:
                line = raw.decode()
                lines.append(line)
                if line.startswith("https://"):
                    environ = open("/proc/%d/environ" % p.pid, "rb").read()
                    cmdline = open("/proc/%d/cmdline" % p.pid, "rb").read()
                    assert CLIENT_SECRET.encode() not in environ + cmdline, "the client secret is in environ"
                    seen = browser(line.strip(), port) if browser else None
                    break
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        err = "".join(lines) + err.decode()
        it.check_sanitizers(err)
        self.clean(out.decode(), err)
        assert out == b"", out
        return p.returncode, err, seen

    def token(self):
        return json.load(open(self.token_path))

    def close(self):
        self.x.close()


def fetch(url, root=None):
    """GET url as a browser would (no redirects followed): (status,
    Location, body)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        c = http.client.HTTPSConnection(u.hostname, u.port, timeout=10,
                                        context=ssl.create_default_context(cafile=root))
    else:
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.request("GET", u.path + ("?" + u.query if u.query else ""))
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, r.getheader("Location"), body


def browser(rewrite=None):
    """A browser that approves at X and follows X's redirect back, after
    rewrite(query dict) changes what it sends where (an attacker's hand)."""
    def go(url, port):
        u = urllib.parse.urlsplit(url)
        assert u.scheme == "https" and u.path == "/i/oauth2/authorize", url
        q = dict(urllib.parse.parse_qsl(u.query))
        assert q["redirect_uri"] == "http://127.0.0.1:%d/callback" % port, q
        if rewrite and rewrite.get("authorize"):
            rewrite["authorize"](q)
        status, location, _ = fetch("https://%s/i/oauth2/authorize?%s" % (u.netloc, urllib.parse.urlencode(q)),
                                    PKI["p"]["root"])
        assert status == 302, status
        if rewrite and rewrite.get("callback"):
            u = urllib.parse.urlsplit(location)
            cq = dict(urllib.parse.parse_qsl(u.query))
            rewrite["callback"](cq)
            location = "%s://%s%s?%s" % (u.scheme, u.netloc, u.path, urllib.parse.urlencode(cq))
        # A browser asks for the favicon too: the wait goes on.
        assert fetch("http://127.0.0.1:%d/favicon.ico" % port)[0] == 404
        return q, fetch(location)
    return go


def logged_in(w, args=()):
    rc, err, (q, page) = w.login(args, browser())
    assert rc == 0, err
    assert page[0] == 200 and b"Approved" in page[2], page
    return q, err


@test
def the_whole_flow_login_stores_the_token_and_user_calls_carry_it():
    w = World()
    try:
        q, err = logged_in(w)
        # What X's authorize page got: S256, the default scopes, a fresh state.
        assert q["code_challenge_method"] == "S256" and q["response_type"] == "code", q
        assert q["scope"] == "tweet.read users.read offline.access dm.read like.read mute.read block.read", q
        assert len(q["state"]) >= 16 and len(q["code_challenge"]) == 43, q
        assert ("http://127.0.0.1:" in err and "/callback" in err and "stored the token in %s" % w.token_path in err
                and err.count("\n") == 4), err
        grant, form, auth = w.x.oauth2.grants[-1]
        assert grant == "authorization_code" and auth is None and form["client_id"] == w.env["TWITTER_CLIENT_ID"]
        assert 43 <= len(form["code_verifier"]) <= 128 and form["redirect_uri"] == q["redirect_uri"], form
        # Stored 0600, whole, as one file renamed into place.
        st = os.stat(w.token_path)
        assert stat.S_IMODE(st.st_mode) == 0o600 and stat.S_IMODE(os.stat(w.state).st_mode) == 0o700
        t = w.token()
        assert t["access_token"] in w.x.oauth2.access and t["refresh_token"] in w.x.oauth2.refresh, t
        assert abs(t["expires_at"] - (time.time() + 7200)) < 60 and t["confidential"] is False, t
        assert sorted(os.listdir(w.state)) == ["oauth2.lock", "oauth2.token"], os.listdir(w.state)
        # A user-context call now carries it as a Bearer token, no OAuth 1.0a needed.
        rc, out, err = w.run("subscribe", WID)
        assert rc == 0 and json.loads(out) == {"data": {"subscribed": True}}, (rc, out, err)
        sent = [r for r in w.x.requests if r["path"].endswith("/subscriptions/all")][-1]
        assert sent["headers"]["Authorization"] == "Bearer " + t["access_token"], sent["headers"]
        assert w.x.oauth2.grants[-1][0] == "authorization_code"  # not refreshed: it lasts 2 h
        # subscribed and a private X Activity API event carry it too.
        rc, out, err = w.run("subscribed", WID)
        assert rc == 0 and json.loads(out) == {"data": {"subscribed": True}}, (rc, out, err)
        assert w.x.requests[-1]["headers"]["Authorization"] == "Bearer " + t["access_token"]
        rc, out, err = w.run("activity", "add", "like.create", "--user-id", USER_ID, "--direction", "inbound")
        assert rc == 0 and json.loads(out)["data"]["subscription"]["event_type"] == "like.create", (rc, out, err)
        assert w.x.requests[-1]["headers"]["Authorization"] == "Bearer " + t["access_token"]
        # The app's Bearer calls are untouched by it.
        rc, out, err = w.run("webhooks", oauth1=True)
        assert rc == 0 and w.x.requests[-1]["headers"]["Authorization"] == "Bearer " + CRED["TWITTER_BEARER_TOKEN"]
    finally:
        w.close()


@test
def the_written_file_is_atomic_and_synced():
    """strace shows the token reaching its name only by a rename of a new
    0600 file that was fsynced first."""
    w = World()
    try:
        log = os.path.join(it.WORK, "strace-%d.log" % os.getpid())
        w.env["ASAN_OPTIONS"] = "detect_leaks=0"  # LeakSanitizer does not run under ptrace
        w.wrap = ["strace", "-f", "-qq", "-e", "trace=openat,fsync,rename,renameat,renameat2", "-o", log]
        rc, err, _ = w.login((), browser())
        assert rc == 0, err
        calls = [line for line in open(log).read().splitlines() if "oauth2.token" in line or "fsync(" in line]
        tmp_open = next(i for i, c in enumerate(calls) if "oauth2.token.tmp" in c and "O_CREAT" in c)
        assert "O_EXCL" in calls[tmp_open] and "O_NOFOLLOW" in calls[tmp_open] and "0600" in calls[tmp_open]
        sync = next(i for i, c in enumerate(calls) if "fsync(" in c and i > tmp_open)
        ren = next(i for i, c in enumerate(calls) if "rename" in c and "oauth2.token.tmp" in c)
        assert tmp_open < sync < ren, calls
        assert not any("oauth2.token\"" in c and "O_CREAT" in c for c in calls), calls
    finally:
        w.close()


@test
def a_wrong_state_is_refused_and_nothing_stored():
    w = World()
    try:
        def wrong(cq):
            cq["state"] = cq["state"][:-1] + ("A" if cq["state"][-1] != "A" else "B")
        rc, err, (q, page) = w.login((), browser({"callback": wrong}))
        assert rc == 1 and "state is not the one sent" in err.strip().splitlines()[-1], err
        assert page[0] == 400, page
        assert w.x.oauth2.grants == [] and not os.path.exists(w.token_path)
        # No state at all: the same.
        rc, err, (q, page) = w.login((), browser({"callback": lambda cq: cq.pop("state")}))
        assert rc == 1 and "state is not the one sent" in err and w.x.oauth2.grants == [], err
    finally:
        w.close()


@test
def the_standin_checks_pkce_a_verifier_for_another_challenge_is_refused():
    w = World()
    try:
        other = xs.b64url(__import__("hashlib").sha256(b"not-the-verifier" * 3).digest())
        rc, err, _ = w.login((), browser({"authorize": lambda q: q.update(code_challenge=other)}))
        assert rc == 1 and "did not match the code challenge" in err and "nothing stored" in err, err
        assert w.x.oauth2.grants[-1][0] == "authorization_code" and not os.path.exists(w.token_path)
    finally:
        w.close()


@test
def access_denied_says_so_and_stores_nothing():
    w = World()
    try:
        w.x.oauth2.consent = False
        rc, err, (q, page) = w.login((), browser())
        lines = err.strip().splitlines()
        assert rc == 1 and "access_denied" in lines[-1] and "did not approve" in lines[-1], err
        assert page[0] == 200 and b"did not grant" in page[2]
        assert w.x.oauth2.grants == [] and not os.path.exists(w.token_path)
    finally:
        w.close()


@test
def login_gives_up_at_wait_and_bad_arguments_are_named_first():
    w = World()
    try:
        start = time.monotonic()
        rc, err, _ = w.login(("--wait", "1"))
        assert rc == 1 and "no redirect from the browser within 1 s" in err, err
        assert time.monotonic() - start < 10
        for args, words in ((("--scopes", "tweet.read dm.reed"), "'dm.reed' is not one of X's OAuth 2.0 scopes"),
                            (("--scopes", "  "), "bad --scopes"),
                            (("--port", "0"), "bad --port '0'"), (("--port", "65536"), "bad --port"),
                            (("--wait", "x"), "bad --wait"), (("--auth-url", "http://x.test/a"), "bad --auth-url")):
            rc, out, err = w.run("login", *args)
            assert rc == 1 and words in err and err.count("\n") == 1, (args, err)
        rc, out, err = w.run("login", env={"TWITTER_CLIENT_ID": ""})
        assert rc == 1 and "TWITTER_CLIENT_ID" in err and err.count("\n") == 1, err
        assert w.x.requests == [] and not os.path.exists(w.token_path)
        rc, out, err = w.run("login", "extra")
        assert rc == 1 and "usage: xwebhook login" in err, err
        p = subprocess.run([it.BIN, "--port", "1"], env={"TWITTER_CONSUMER_SECRET": "x"}, capture_output=True,
                           timeout=30)
        assert p.returncode == 1 and b"go with xwebhook login" in p.stderr, p.stderr
    finally:
        w.close()


@test
def a_token_that_runs_out_soon_is_refreshed_first():
    w = World()
    try:
        w.x.oauth2.expires_in = 120  # within the 300 s margin
        logged_in(w)
        old = w.token()
        w.x.oauth2.expires_in = 7200
        rc, out, err = w.run("subscribe", WID)
        assert rc == 0 and err == "", err
        grant, form, auth = w.x.oauth2.grants[-1]
        assert grant == "refresh_token" and form["refresh_token"] == old["refresh_token"], form
        new = w.token()
        assert new["access_token"] != old["access_token"] and new["refresh_token"] != old["refresh_token"]
        assert stat.S_IMODE(os.stat(w.token_path).st_mode) == 0o600 and new["expires_at"] > time.time() + 7000
        sent = [r for r in w.x.requests if r["path"].endswith("/subscriptions/all")][-1]
        assert sent["headers"]["Authorization"] == "Bearer " + new["access_token"]
        # The old one was rotated away at X.
        assert old["access_token"] in w.x.oauth2.access and old["refresh_token"] not in w.x.oauth2.refresh
        n = len(w.x.oauth2.grants)
        w.x.subscriptions.clear()
        rc, out, err = w.run("subscribe", WID)
        assert rc == 0 and len(w.x.oauth2.grants) == n, err  # fresh now: no refresh
    finally:
        w.close()


@test
def two_runs_at_once_refresh_once_the_second_uses_the_first_s_token():
    w = World()
    try:
        w.x.oauth2.expires_in = 120
        logged_in(w)
        w.x.oauth2.expires_in = 7200
        w.x.oauth2.token_delay = 1.0  # the first holds the lock while X answers
        w.x.subscriptions.clear()
        w.x.webhooks["1460000000000000002"] = dict(w.x.webhooks[WID], id="1460000000000000002")
        results = {}

        def one(wid):
            results[wid] = w.run("subscribe", wid)
        ts = [threading.Thread(target=one, args=(wid,)) for wid in (WID, "1460000000000000002")]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for wid, (rc, out, err) in results.items():
            assert rc == 0 and err == "", (wid, err)
        assert [g[0] for g in w.x.oauth2.grants] == ["authorization_code", "refresh_token"], w.x.oauth2.grants
        tok = w.token()["access_token"]
        sent = [r["headers"]["Authorization"] for r in w.x.requests if r["path"].endswith("/subscriptions/all")]
        assert sent == ["Bearer " + tok] * 2, sent
    finally:
        w.close()


@test
def a_refused_refresh_token_says_run_xwebhook_login():
    w = World()
    try:
        w.x.oauth2.expires_in = 120
        logged_in(w)
        w.x.oauth2.refresh.clear()  # X no longer knows it (revoked at x.com, say)
        rc, out, err = w.run("subscribe", WID)
        assert rc == 1 and err.count("\n") == 1 and err.strip().endswith("run xwebhook login"), err
        assert "Value passed for the token was invalid" in err and out == ""
        assert not any(r["path"].endswith("/subscriptions/all") for r in w.x.requests)
        # An access token X refuses on the call itself: the same advice.
        w2 = World()
        try:
            logged_in(w2)
            w2.x.oauth2.access.clear()
            rc, out, err = w2.run("subscribe", WID)
            assert rc == 1 and "answered 401" in err and err.strip().endswith("run xwebhook login"), err
        finally:
            w2.close()
    finally:
        w.close()


@test
def logout_revokes_both_tokens_and_removes_the_file():
    w = World()
    try:
        logged_in(w)
        t = w.token()
        rc, out, err = w.run("logout")
        assert rc == 0 and "revoked" in err and "removed %s" % w.token_path in err, err
        assert sorted(w.x.oauth2.revoked) == sorted([(t["refresh_token"], "refresh_token"),
                                                     (t["access_token"], "access_token")]), w.x.oauth2.revoked
        assert not os.path.exists(w.token_path)
        # Then: OAuth 1.0a again, as before login.
        rc, out, err = w.run("subscribe", WID, oauth1=True)
        assert rc == 0, err
        assert [r for r in w.x.requests if r["path"].endswith("/subscriptions/all")][-1]["headers"][
            "Authorization"].startswith("OAuth ")
        rc, out, err = w.run("logout")
        assert rc == 0 and "nothing to do" in err, err
        # X not answering: removed here anyway, and said so; exit 1.
        logged_in(w)
        w.x.override = (503, {"Content-Type": "application/json"}, b'{"error":"unavailable"}')
        rc, out, err = w.run("logout")
        assert rc == 1 and "did not revoke" in err and "removing it here anyway" in err, err
        assert "removed %s" % w.token_path in err and not os.path.exists(w.token_path)
    finally:
        w.close()


@test
def a_link_planted_at_the_token_path_is_never_followed():
    w = World()
    try:
        target = os.path.join(it.WORK, "victim-%d" % os.getpid())
        with open(target, "w") as f:
            f.write('{"access_token":"planted","client_id":"x","expires_at":9999999999}')
        os.symlink(target, w.token_path)
        # A call refuses to read through it.
        rc, out, err = w.run("subscribe", WID, oauth1=True)
        assert rc == 1 and "symbolic link" in err and err.count("\n") == 1, err
        assert not any(r["path"].endswith("/subscriptions/all") for r in w.x.requests)
        # login replaces the link itself; what it pointed at is untouched.
        logged_in(w)
        assert not os.path.islink(w.token_path) and stat.S_IMODE(os.stat(w.token_path).st_mode) == 0o600
        assert open(target).read().startswith('{"access_token":"planted"')
        # A link at the lock file is refused too.
        os.unlink(os.path.join(w.state, "oauth2.lock"))
        os.symlink(target, os.path.join(w.state, "oauth2.lock"))
        rc, out, err = w.run("logout")
        assert rc == 1 and "oauth2.lock" in err, err
        assert open(target).read().startswith('{"access_token":"planted"')
    finally:
        w.close()


@test
def a_confidential_client_uses_basic_and_keeps_its_secret_hidden():
    w = World(confidential=True)
    try:
        w.x.oauth2.expires_in = 120
        logged_in(w)
        grant, form, auth = w.x.oauth2.grants[-1]
        assert auth is not None and auth.startswith("Basic ") and "client_id" not in form, (auth, form)
        assert w.token()["confidential"] is True
        assert CLIENT_SECRET not in open(w.token_path).read()
        # Its refresh needs the secret: named when it is missing, Basic when not.
        rc, out, err = w.run("subscribe", WID, env={"TWITTER_CLIENT_SECRET": ""})
        assert rc == 1 and "TWITTER_CLIENT_SECRET" in err, err
        w.x.oauth2.expires_in = 7200
        rc, out, err = w.run("subscribe", WID)
        assert rc == 0, err
        assert w.x.oauth2.grants[-1][0] == "refresh_token" and w.x.oauth2.grants[-1][2].startswith("Basic ")
        # A wrong secret: X refuses the client.
        w2 = World(confidential=True)
        try:
            w2.env["TWITTER_CLIENT_SECRET"] = "wrong"
            rc, err, _ = w2.login((), browser())
            assert rc == 1 and "401" in err and "nothing stored" in err, err
        finally:
            w2.close()
    finally:
        w.close()


@test
def tokens_stay_out_of_ps_environ_stdout_and_stderr():
    w = World(confidential=True)
    try:
        logged_in(w)  # (login's own environ is checked while it waits)
        w.x.delay = 1.5
        p = subprocess.Popen(w.argv("subscribe", WID), env=w.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert it.wait_until(lambda: len(w.x.requests) > 0 and w.x.requests[-1]["path"].endswith("/all"), 10)
        cmdline = open("/proc/%d/cmdline" % p.pid, "rb").read()
        environ = open("/proc/%d/environ" % p.pid, "rb").read()
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        for s in w.secrets():
            for where, text in (("ps", cmdline), ("environ", environ), ("stdout", out), ("stderr", err)):
                assert s.encode() not in text, "%s shows a secret" % where
        assert w.x.requests[-1]["headers"]["Authorization"].startswith("Bearer ")
    finally:
        w.close()


@test
def the_plain_build_says_login_needs_tls():
    if PLAIN is None:
        return
    for args in (("login",), ("logout",)):
        p = subprocess.run([PLAIN, *args], env={"PATH": os.environ["PATH"]}, capture_output=True, timeout=30)
        err = p.stderr.decode()
        assert p.returncode == 1 and "make TLS=1" in err and err.count("\n") == 1, err


def main():
    os.makedirs(it.PKI, exist_ok=True)
    PKI["p"] = it.make_pki("p256", "p256")
    PKI["api"] = it.leaf(PKI["p"]["dir"], "api", "p256", host="localhost")
    it.finish("login", *it.run_suite())


if __name__ == "__main__":
    main()
