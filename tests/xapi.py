#!/usr/bin/env python3
"""xwebhook's X subcommands (webhooks, register, validate, unregister,
subscribe, subscribed, subscriptions, subscription-count, unsubscribe,
replay, stream link|unlink|links) against the X stand-in of
tests/x_standin.py, with the real TLS server answering the stand-in's
CRCs. Usage:

    xapi.py TLS_BINARY FIXTURES_DIR [PLAIN_BINARY]

The last line is 'xapi: N passed, N failed'.
"""
import http.client
import json
import os
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as it  # noqa: E402  (what every suite shares)
import x_standin as xs  # noqa: E402

PLAIN = it.arg(3)
HOOK = "https://%s/webhooks/twitter" % it.HOST
USER_ID = "2244994945"
CRED = {
    "TWITTER_BEARER_TOKEN": "AAAAAAAAAAAAAAAAAAAAAbearer-Zq8x",
    "TWITTER_CONSUMER_KEY": "ck-consumer-key-Zq8x",
    "TWITTER_CONSUMER_SECRET": it.SECRET,
    "TWITTER_ACCESS_TOKEN": "%s-access-token-Zq8x" % USER_ID,
    "TWITTER_ACCESS_TOKEN_SECRET": "ats-access-token-secret-Zq8x",
}
PKI = {}

test = it.test


def app():
    return xs.App(CRED["TWITTER_CONSUMER_KEY"], it.SECRET, CRED["TWITTER_BEARER_TOKEN"],
                  {CRED["TWITTER_ACCESS_TOKEN"]: (CRED["TWITTER_ACCESS_TOKEN_SECRET"], USER_ID)})


class World:
    """The stand-in, and an xwebhook serving HTTPS for HOOK's host."""

    def __init__(self, secret=it.SECRET, chain=None, serve=True, limits=None, api=None):
        self.srv = None
        port = 1
        if serve:
            self.srv = it.tls_server(chain or PKI["p"]["chain"], PKI["p"]["key"], secret=secret)
            port = self.srv.port
        api = api or PKI["api"]
        self.x = xs.Standin(api["chain"], api["key"], PKI["p"]["root"], app(), {it.HOST: port}, limits)

    def run(self, *args, env=None, creds=True, base=None, cacert=None):
        e = {"PATH": os.environ["PATH"]}
        if creds:
            e.update(CRED)
        e.update(env or {})
        # --state-dir: a path that is not there, so that user-context calls
        # never carry a token `xwebhook login` left in this machine's own
        # /var/lib/xwebhook (tests/login.py covers that token).
        p = subprocess.run([it.BIN, "--api", base or self.x.base, "--cacert", cacert or PKI["p"]["root"],
                            "--state-dir", os.path.join(it.WORK, "no-login-here"), *args],
                           env=e, capture_output=True, timeout=60)
        out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
        it.check_sanitizers(err)
        for v in CRED.values():
            assert v not in out and v not in err, "a credential was printed: %r %r" % (out, err)
        return p.returncode, out, err

    def ok(self, *args, **kw):
        rc, out, err = self.run(*args, **kw)
        assert rc == 0 and err == "", (args, rc, out, err)
        # The fmt layout: json.dumps(indent=2) and a newline.
        obj = json.loads(out)
        assert out == json.dumps(obj, indent=2) + "\n", out
        return obj

    def fails(self, *args, **kw):
        rc, out, err = self.run(*args, **kw)
        assert rc == 1 and err.count("\n") == 1 and err.startswith("xwebhook: "), (args, rc, out, err)
        assert "\x1b" not in err
        return err

    def close(self):
        self.x.close()
        if self.srv is not None:
            self.srv.stop()


@test
def the_whole_path_register_subscribe_replay_unregister():
    w = World()
    try:
        assert w.ok("webhooks") == {"meta": {"result_count": 0}}
        got = w.ok("register", HOOK)
        wid = got["data"]["id"]
        assert got["data"]["url"] == HOOK and got["data"]["valid"] is True
        # X ran a real CRC against the server, which answered it right.
        assert w.x.crcs == [(HOOK, None)]
        assert "GET /webhooks/twitter" in w.srv.stderr()
        assert [h["id"] for h in w.ok("webhooks")["data"]] == [wid]
        assert w.ok("validate", wid) == {"data": {"valid": True}}
        assert len(w.x.crcs) == 2 and w.x.crcs[1][1] is None
        assert w.ok("subscribe", wid) == {"data": {"subscribed": True}}
        # It went signed with OAuth 1.0a, not with the Bearer token.
        sub = [r for r in w.x.requests if r["path"].endswith("/subscriptions/all")][-1]
        assert sub["headers"]["Authorization"].startswith("OAuth ") and sub["body"] == b"{}"
        assert w.ok("subscriptions", wid)["data"]["subscriptions"] == [{"user_id": USER_ID}]
        now = time.gmtime(time.time() - 60)
        frm = time.strftime("%Y%m%d%H%M", time.gmtime(time.time() - 3600))
        to = time.strftime("%Y%m%d%H%M", now)
        job = w.ok("replay", wid, frm, to)["data"]["job_id"]
        body = json.loads([r for r in w.x.requests if r["path"] == "/2/webhooks/replay"][-1]["body"])
        assert body == {"webhook_id": wid, "from_date": frm, "to_date": to}
        # The job's end reaches the server as a signed event, printed.
        assert it.wait_until(lambda: ('"job_id": "%s"' % job).encode() in w.srv.stdout(), 10)
        assert w.ok("unsubscribe", wid, USER_ID) == {"data": {"subscribed": False}}
        assert w.ok("subscriptions", wid)["data"]["subscriptions"] == []
        # Signed again: a fresh nonce, or X refuses it as a replay.
        assert w.ok("subscribe", wid) == {"data": {"subscribed": True}}
        assert w.ok("unsubscribe", wid, USER_ID) == {"data": {"subscribed": False}}
        assert w.ok("unregister", wid) == {"data": {"deleted": True}}
        assert w.ok("webhooks") == {"meta": {"result_count": 0}}
        ua = {r["headers"].get("User-Agent") for r in w.x.requests}
        assert len(ua) == 1 and ua.pop().startswith("xwebhook/")
    finally:
        w.close()


@test
def a_crc_with_the_wrong_secret_names_the_likely_cause():
    w = World(secret="not-the-apps-consumer-secret")
    try:
        err = w.fails("register", HOOK)
        assert "400" in err and "Invalid Request" in err and "CrcValidationFailed" in err, err
        assert "API Key Secret" in err and "xwebhook crc" in err, err
        assert w.x.webhooks == {}
    finally:
        w.close()
    # validate, after the server's secret changed: the JSON, and exit 1.
    w = World()
    try:
        wid = w.ok("register", HOOK)["data"]["id"]
        w.srv.stop()
        w.srv = it.tls_server(PKI["p"]["chain"], PKI["p"]["key"], secret="rotated-by-mistake")
        w.x.host_map[it.HOST] = w.srv.port
        rc, out, err = w.run("validate", wid)
        assert rc == 1 and json.loads(out) == {"data": {"valid": False}}, (rc, out, err)
        assert err.count("\n") == 1 and "not valid" in err and "consumer secret" in err, err
        assert "X answered valid: false" in err, err
    finally:
        w.close()


@test
def unreachable_urls_and_incomplete_chains_name_their_causes():
    w = World(serve=False)
    try:
        err = w.fails("register", HOOK)
        assert "could not connect" in err and "port 443" in err, err
    finally:
        w.close()
    w = World(chain=PKI["p"]["leaf"])  # the leaf alone, no intermediate
    try:
        err = w.fails("register", HOOK)
        assert "SSL" in err and "whole chain" in err and "fullchain.pem" in err, err
    finally:
        w.close()
    w = World()
    try:
        err = w.fails("register", "https://%s/elsewhere" % it.HOST)
        assert "Non-200" in err and "--path" in err, err
        err = w.fails("register", "https://%s:8443/webhooks/twitter" % it.HOST)
        assert "names a port" in err, err
        err = w.fails("register", "http://%s/webhooks/twitter" % it.HOST)
        assert "https://" in err, err
        assert w.x.requests == [r for r in w.x.requests if r["path"] == "/2/webhooks"]
        assert len(w.x.requests) == 1  # the two refused here never left
    finally:
        w.close()


@test
def bad_user_tokens_and_a_bad_bearer_get_401_with_a_hint():
    w = World()
    try:
        wid = w.ok("register", HOOK)["data"]["id"]
        err = w.fails("subscribe", wid, env={"TWITTER_ACCESS_TOKEN_SECRET": "wrong-secret"})
        assert "401" in err and "signature mismatch" in err and "TWITTER_ACCESS_TOKEN_SECRET" in err, err
        err = w.fails("subscribe", wid, env={"TWITTER_ACCESS_TOKEN": "0-unknown"})
        assert "401" in err and "unknown consumer key or token" in err, err
        err = w.fails("subscribe", wid, env={"TWITTER_CONSUMER_SECRET": "wrong-consumer-secret"})
        assert "401" in err and "signature mismatch" in err, err
        err = w.fails("webhooks", env={"TWITTER_BEARER_TOKEN": "wrong-bearer"})
        assert "401" in err and "TWITTER_BEARER_TOKEN" in err, err
        assert "wrong-secret" not in err and "wrong-bearer" not in err
        # The consumer secret may come from --secret-file, as the server's.
        path = os.path.join(it.WORK, "consumer-secret")
        with open(path, "w") as f:
            f.write(it.SECRET + "\n")
        assert w.ok("--secret-file", path, "subscribe", wid, env={"TWITTER_CONSUMER_SECRET": ""}) == \
            {"data": {"subscribed": True}}
    finally:
        w.close()


@test
def the_standin_refuses_what_x_refuses():
    """The stand-in is only worth its passes if it fails what X fails: a
    request replayed with the same nonce, a stale timestamp, a Bearer
    token where user context is required, a signature over another path."""
    w = World()
    try:
        wid = w.ok("register", HOOK)["data"]["id"]
        assert w.ok("subscribe", wid) == {"data": {"subscribed": True}}
        sent = [r for r in w.x.requests if r["method"] == "POST" and "subscriptions" in r["path"]][-1]
        auth = sent["headers"]["Authorization"]
        w.x.subscriptions[wid] = []

        def again(headers, path=sent["path"], method="POST"):
            ctx = ssl.create_default_context(cafile=PKI["p"]["root"])
            c = http.client.HTTPSConnection("localhost", w.x.port, timeout=10, context=ctx)
            c.request(method, path, b"{}", {"Content-Type": "application/json", **headers})
            r = c.getresponse()
            body = json.loads(r.read())
            c.close()
            return r.status, body

        st, body = again({"Authorization": auth})
        assert st == 401 and "nonce used before" in body["errors"][0]["message"], body
        o = xs.parse_oauth_header(auth)
        for k, v in (("oauth_timestamp", str(int(time.time()) - 3600)), ("oauth_nonce", "fresh-nonce-1")):
            o2 = dict(o, **{k: v})
            if k == "oauth_timestamp":
                o2["oauth_nonce"] = "fresh-nonce-2"
            params = [(a, b) for a, b in o2.items() if a != "oauth_signature"]
            o2["oauth_signature"] = xs.oauth_signature("POST", "https://localhost:%d%s" % (w.x.port, sent["path"]),
                                                       params, it.SECRET, CRED["TWITTER_ACCESS_TOKEN_SECRET"])
            header = "OAuth " + ", ".join('%s="%s"' % (xs.pct(a), xs.pct(b)) for a, b in o2.items())
            st, body = again({"Authorization": header})
            if k == "oauth_timestamp":
                assert st == 401 and "Timestamp out of bounds" in body["errors"][0]["message"], body
            else:
                assert st == 200, body  # the same, freshly signed, passes
        o3 = dict(o, oauth_nonce="fresh-nonce-3")
        header = "OAuth " + ", ".join('%s="%s"' % (xs.pct(a), xs.pct(b)) for a, b in o3.items())
        st, body = again({"Authorization": header})
        assert st == 401 and "signature mismatch" in body["errors"][0]["message"], body
        st, body = again({"Authorization": "Bearer " + CRED["TWITTER_BEARER_TOKEN"]})
        assert st == 403 and body["title"] == "Unsupported Authentication", body
    finally:
        w.close()


@test
def a_429_says_when_the_limit_resets():
    w = World(limits={"webhooks": 2})
    try:
        w.ok("webhooks")
        w.ok("webhooks")
        err = w.fails("webhooks")
        reset = w.x.window_end
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reset))
        assert "429" in err and "Too Many Requests" in err and "resets at %s" % stamp in err, err
        secs = int(err.split("(in ")[1].split(" s)")[0])
        assert abs(secs - (reset - time.time())) <= 5, err
    finally:
        w.close()


@test
def unknown_ids_and_bad_arguments():
    w = World()
    try:
        for args in (("validate", "999"), ("unregister", "999"), ("subscribe", "999"), ("subscriptions", "999"),
                     ("unsubscribe", "999", USER_ID)):
            err = w.fails(*args)
            assert "400" in err and "WebhookIdInvalid" in err, (args, err)
        before = len(w.x.requests)
        for args, part in ((("validate", "12a"), "1 to 19 digits"),
                           (("validate", "1" * 20), "1 to 19 digits"),
                           (("unsubscribe", "1", "u2"), "user id"),
                           (("replay", "1", "202611281200"), "usage: xwebhook replay WEBHOOK_ID FROM TO"),
                           (("replay", "1", "202613011200", "202613011300"), "yyyymmddhhmm"),
                           (("replay", "1", "202602291200", "202602291300"), "yyyymmddhhmm"),
                           (("replay", "1", "202611281300", "202611281200"),
                            "TO 202611281200 must be after FROM 202611281300"),
                           (("replay", "1", "202611281200", "202611281200"),
                            "TO 202611281200 must be after FROM 202611281200"),
                           (("subscribed", "12a"), "1 to 19 digits"),
                           (("subscribed",), "usage: xwebhook subscribed WEBHOOK_ID"),
                           (("subscription-count", "1"), "usage: xwebhook subscription-count"),
                           (("webhooks", "extra"), "usage: xwebhook webhooks"),
                           (("register", "https://%s/x" % ("a" * 200)), "at most 200 bytes"),
                           (("--api", "http://localhost:1", "webhooks"), "bad --api")):
            err = w.fails(*args)
            assert part in err, (args, err)
        assert len(w.x.requests) == before, "a refused command reached X"
        wid = w.ok("register", HOOK)["data"]["id"]
        hour_ago = time.strftime("%Y%m%d%H%M", time.gmtime(time.time() - 3600))
        err = w.fails("replay", wid, "202001010000", hour_ago)
        assert "InvalidReplayWindow" in err, err
    finally:
        w.close()


@test
def missing_variables_are_named_before_any_request():
    w = World()
    try:
        for args, names in ((("webhooks",), ["TWITTER_BEARER_TOKEN"]),
                            (("register", HOOK), ["TWITTER_BEARER_TOKEN"]),
                            (("replay", "1", "202611281200", "202611281300"), ["TWITTER_BEARER_TOKEN"]),
                            (("subscribe", "1"), ["TWITTER_CONSUMER_KEY", "TWITTER_CONSUMER_SECRET",
                                                  "TWITTER_ACCESS_TOKEN", "TWITTER_ACCESS_TOKEN_SECRET"])):
            err = w.fails(*args, creds=False)
            assert all(n in err for n in names) and "not set" in err, (args, err)
        err = w.fails("subscribe", "1", env={k: v for k, v in CRED.items() if k != "TWITTER_ACCESS_TOKEN"},
                      creds=False)
        assert "TWITTER_ACCESS_TOKEN" in err and "TWITTER_ACCESS_TOKEN_SECRET" not in err, err
        assert w.x.requests == []
    finally:
        w.close()


@test
def credentials_stay_out_of_ps_environ_stdout_and_stderr():
    w = World()
    try:
        wid = w.ok("register", HOOK)["data"]["id"]
        w.x.delay = 1.5  # time to look at the process while it waits
        e = {"PATH": os.environ["PATH"], **CRED}
        for args in (("subscribe", wid), ("webhooks",)):
            p = subprocess.Popen([it.BIN, "--api", w.x.base, "--cacert", PKI["p"]["root"], *args], env=e,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(0.8)
            cmdline = open("/proc/%d/cmdline" % p.pid, "rb").read()
            environ = open("/proc/%d/environ" % p.pid, "rb").read()
            out, err = p.communicate(timeout=30)
            assert p.returncode == 0, err
            for v in CRED.values():
                for where, text in (("ps", cmdline), ("environ", environ), ("stdout", out), ("stderr", err)):
                    assert v.encode() not in text, "%s shows a credential for %s" % (where, args)
    finally:
        w.close()


@test
def hostile_answers_are_escaped_and_bounded():
    w = World()
    try:
        w.x.override = (400, {"Content-Type": "application/json"}, json.dumps(
            {"title": "Bad\x1b[31m", "detail": "line\nbreak", "errors": [{"message": "m\x07"}, {"detail": "d2"}]}
        ).encode())
        err = w.fails("webhooks")
        assert "Bad\\x1b[31m" in err and "line\\x0abreak" in err and "m\\x07" in err and "d2" in err, err
        # Valid JSON may hold DEL and C1 controls raw: they arrive escaped.
        w.x.override = (200, {}, b'{"data":[{"x":"a\x7fb\xc2\x9bc\xc3\xa9"}]}')
        rc, out, err = w.run("webhooks")
        assert rc == 0 and "\x7f" not in out and "\x9b" not in out and "\\u007f" in out and "\\u009b" in out, out
        assert json.loads(out) == {"data": [{"x": "a\x7fb\x9bc\xe9"}]}, out
        w.x.override = (200, {}, b"<html>\x1b]0;pwned\x07</html>")
        err = w.fails("webhooks")
        assert "not JSON" in err and "\\x1b]0;pwned\\x07" in err, err
        w.x.override = (200, {}, json.dumps({"errors": [{"message": "UnknownFailure: only errors"}]}).encode())
        err = w.fails("webhooks")
        assert "200" in err and "UnknownFailure" in err, err
        w.x.override = (200, {}, b'{"data":"' + b"x" * (2 << 20) + b'"}')
        err = w.fails("webhooks")
        assert "no answer" in err and "1 MiB" in err, err
        w.x.override = (502, {}, b"upstream \x00 gone")
        err = w.fails("webhooks")
        assert "502" in err and "upstream \\x00 gone" in err, err
    finally:
        w.close()
    # An API whose certificate the roots do not vouch for.
    w = World()
    try:
        e = {"PATH": os.environ["PATH"], **CRED}
        p = subprocess.run([it.BIN, "--api", w.x.base, "webhooks"], env=e, capture_output=True, timeout=60)
        err = p.stderr.decode()
        assert p.returncode == 1 and err.count("\n") == 1 and "TLS handshake failed" in err, err
    finally:
        w.close()


@test
def a_2xx_without_x_s_data_is_no_success():
    """X's API reference (xdevplatform/docs openapi.json) answers every
    one of these calls 200 with a JSON object holding data (an object; for
    GET /2/webhooks an array, which X leaves out when result_count is 0);
    none is a 204. An answer without it says nothing was done."""
    w = World()
    try:
        calls = (("webhooks",), ("register", HOOK), ("validate", "1"), ("unregister", "1"), ("subscribe", "1"),
                 ("subscriptions", "1"), ("unsubscribe", "1", USER_ID),
                 ("replay", "1", "202611281200", "202611281300"), ("subscribed", "1"), ("subscription-count",),
                 ("stream", "link", "1"), ("stream", "unlink", "1"), ("stream", "links"))
        for status, raw, part in ((200, b"", "answered 200 with an empty body"),
                                  (204, b"", "answered 204 with an empty body"),
                                  (201, b"{}", "answered 201 without a data member: {}"),
                                  (200, b'{"meta":{"result_count":3}}', "answered 200 without a data member"),
                                  (200, b'{"data":"yes"}', "with data that is not a")):
            w.x.override = (status, {"Content-Type": "application/json"}, raw)
            for args in calls:
                rc, out, err = w.run(*args)
                assert rc == 1 and out == "" and err.count("\n") == 1, (args, raw, rc, out, err)
                if args == ("stream", "links") and part == "with data that is not a":
                    part = "with data that is neither an array nor an object"
                assert part in err and "the outcome is unknown" in err and " ".join(args[:2 if args[0] == "stream"
                                                                                      else 1]) + ": " in err, \
                    (args, err)
        # The shape of the other kind is no data either.
        w.x.override = (200, {}, b'{"data":{"id":"1"}}')
        assert "with data that is not an array" in w.fails("webhooks")
        w.x.override = (200, {}, b'{"data":[{"id":"1"}]}')
        assert "with data that is not an object" in w.fails("register", HOOK)
        # What X sends for no webhooks passes, with data or without.
        w.x.override = (200, {}, b'{"meta":{"result_count":0}}')
        assert w.ok("webhooks") == {"meta": {"result_count": 0}}
        w.x.override = (200, {}, b'{"data":[],"meta":{"result_count":0}}')
        assert w.ok("webhooks") == {"data": [], "meta": {"result_count": 0}}
    finally:
        w.close()


@test
def a_slow_x_fails_at_the_deadline_it_names():
    """X's calls wait X_API_TIMEOUT_MS (30 s: X runs a CRC before it
    answers register), and say so: not the client's default 10 s. The one
    test that waits that long."""
    w = World()
    try:
        w.x.delay = 60
        t0 = time.monotonic()
        err = w.fails("webhooks")
        took = time.monotonic() - t0
        assert "no answer from %s: no complete answer within 30 s" % w.x.base in err, err
        assert 29.5 <= took <= 40, took
    finally:
        w.close()


@test
def tls_failures_with_x_s_api_are_named():
    """The shared client names what BearSSL's X.509 engine found, for
    every caller: not "protocol error"."""
    w = World(serve=False, api=PKI["other"])  # a certificate for elsewhere.test
    try:
        err = w.fails("webhooks")
        assert "TLS handshake failed: certificate does not name localhost" in err, err
    finally:
        w.close()
    w = World(serve=False)
    try:
        err = w.fails("webhooks", cacert=PKI["q"]["root"])  # roots of another CA
        assert "TLS handshake failed: certificate not trusted (unknown CA)" in err, err
        assert "a root in %s" % PKI["q"]["root"] in err, err
        # An IP address for a host: refused in words, before anything is
        # sent (BearSSL matches DNS names only).
        t0 = time.monotonic()
        err = w.fails("webhooks", base="https://127.0.0.1:%d" % w.x.port)
        assert "the host 127.0.0.1 is an IP address" in err and "DNS names only" in err, err
        err = w.fails("webhooks", base="https://[::1]:%d" % w.x.port)
        assert "the host ::1 is an IP address" in err, err
        assert time.monotonic() - t0 < 10
        assert w.x.requests == []
    finally:
        w.close()


@test
def the_plain_build_says_these_need_tls():
    if PLAIN is None:
        return
    for args in (("webhooks",), ("register", HOOK), ("subscribe", "1"), ("activity", "list"),
                 ("activity", "add", "post.create", "--user-id", "1"), ("stream", "link", "1")):
        p = subprocess.run([PLAIN, *args], env={"PATH": os.environ["PATH"], **CRED}, capture_output=True,
                           timeout=30)
        err = p.stderr.decode()
        assert p.returncode == 1 and "make TLS=1" in err and err.count("\n") == 1, err


# ---- the X Activity API: activity add|list|update|delete ----

def xaa_sent(w, method):
    """The JSON bodies of the activity requests of method, in order."""
    return [json.loads(r["body"]) for r in w.x.requests
            if r["method"] == method and r["path"].startswith("/2/activity/subscriptions")]


@test
def activity_add_list_update_delete_with_the_spec_s_wire_names():
    w = World()
    try:
        wid = w.ok("register", HOOK)["data"]["id"]
        # A public event: the Bearer token alone.
        got = w.ok("activity", "add", "profile.update.bio", "--user-id", USER_ID, "--tag", "bio \u00e9 \"q\"",
                   "--webhook", wid)
        sub = got["data"]["subscription"]
        assert sub["event_type"] == "profile.update.bio" and sub["webhook_id"] == wid, got
        assert xaa_sent(w, "POST")[-1] == {"event_type": "profile.update.bio", "filter": {"user_id": USER_ID},
                                           "tag": "bio \u00e9 \"q\"", "webhook_id": wid}
        assert w.x.requests[-1]["headers"]["Authorization"] == "Bearer " + CRED["TWITTER_BEARER_TOKEN"]
        # A private one, with its direction: user context (OAuth 1.0a today).
        like = w.ok("activity", "add", "like.create", "--user-id", USER_ID, "--direction", "inbound")
        assert xaa_sent(w, "POST")[-1] == {"event_type": "like.create",
                                           "filter": {"user_id": USER_ID, "direction": "inbound"}}
        assert w.x.requests[-1]["headers"]["Authorization"].startswith("OAuth ")
        news = w.ok("activity", "add", "news.new", "--keyword", "The President")
        assert xaa_sent(w, "POST")[-1] == {"event_type": "news.new", "filter": {"keyword": "The President"}}
        assert w.x.requests[-1]["headers"]["Authorization"].startswith("Bearer ")
        # The deprecated alias passes, with a note naming the new name.
        rc, out, err = w.run("activity", "add", "chat.conversation_join", "--user-id", USER_ID)
        assert rc == 0 and "chat.conversation.join" in err and err.count("\n") == 1, (rc, out, err)
        join = json.loads(out)["data"]["subscription"]
        assert join["event_type"] == "chat.conversation.join" and xaa_sent(w, "POST")[-1]["event_type"] == \
            "chat.conversation_join"
        listed = w.ok("activity", "list")
        assert [s["subscription_id"] for s in listed["data"]] == [sub["subscription_id"],
                                                                  like["data"]["subscription"]["subscription_id"],
                                                                  news["data"]["subscription"]["subscription_id"],
                                                                  join["subscription_id"]]
        assert listed["meta"] == {"result_count": 4}
        assert w.x.requests[-1]["path"] == "/2/activity/subscriptions?max_results=1000"
        upd = w.ok("activity", "update", sub["subscription_id"], "--tag", "renamed")
        assert upd["data"]["subscription"]["tag"] == "renamed" and xaa_sent(w, "PUT")[-1] == {"tag": "renamed"}
        assert w.x.requests[-1]["path"] == "/2/activity/subscriptions/" + sub["subscription_id"]
        assert w.ok("activity", "delete", sub["subscription_id"]) == {"data": {"deleted": True},
                                                                      "meta": {"total_subscriptions": 3}}
        assert w.x.requests[-1]["method"] == "DELETE" and \
            w.x.requests[-1]["path"] == "/2/activity/subscriptions/" + sub["subscription_id"]
        rest = [s["subscription_id"] for s in w.ok("activity", "list")["data"]]
        got = w.ok("activity", "delete", *rest)
        assert w.x.requests[-1]["path"] == "/2/activity/subscriptions?ids=" + ",".join(rest)
        assert [d["subscription_id"] for d in got["data"]] == rest and all(d["deleted"] for d in got["data"])
        assert w.ok("activity", "list") == {"data": [], "meta": {"result_count": 0}}
        assert w.x.xaa == {}
    finally:
        w.close()


def rotate_secret(w, secret):
    """The server, restarted with another consumer secret: X's CRCs fail."""
    w.srv.stop()
    w.srv = it.tls_server(PKI["p"]["chain"], PKI["p"]["key"], secret=secret)
    w.x.host_map[it.HOST] = w.srv.port


def lists_after_put(w):
    """How many GET /2/webhooks came after the last PUT."""
    last = max(i for i, r in enumerate(w.x.requests) if r["method"] == "PUT")
    return len([r for r in w.x.requests[last:] if r["method"] == "GET" and r["path"] == "/2/webhooks"])


@test
def validate_trusts_x_s_list_of_webhooks_not_the_put():
    """Spec 2.167: PUT's valid "indicates whether the CRC validation check
    was triggered". A PUT answering valid: true while the CRC failed must
    not pass: validate asks GET /2/webhooks, for at most 10 s."""
    w = World()
    try:
        wid = w.ok("register", HOOK)["data"]["id"]
        w.x.put_mode = "lie"
        assert w.ok("validate", wid) == {"data": {"valid": True}}
        assert lists_after_put(w) == 1  # listed valid at once: no more polls
        rotate_secret(w, "rotated-by-mistake")
        t0 = time.monotonic()
        rc, out, err = w.run("validate", wid)
        took = time.monotonic() - t0
        assert w.x.crcs[-1][1] is not None  # the CRC really failed
        assert rc == 1 and json.loads(out) == {"data": {"valid": True}}, (rc, out, err)
        assert err.count("\n") == 1 and "the CRC failed: X lists webhook %s as not valid" % wid in err, err
        assert "consumer secret" in err, err
        # It polled, every 2 s, and stopped at its limit.
        assert 8 <= took <= 14, took
        assert 4 <= lists_after_put(w) <= 6, lists_after_put(w)
    finally:
        w.close()


@test
def activity_argument_errors_are_named_before_any_request():
    w = World()
    try:
        wid = w.ok("register", HOOK)["data"]["id"]
        before = len(w.x.requests)
        for args, part in (
                (("activity",), "usage: xwebhook activity add|list|update|delete"),
                (("activity", "subscribe"), "usage: xwebhook activity add|list|update|delete"),
                (("activity", "add"), "usage: xwebhook activity add EVENT_TYPE"),
                (("activity", "add", "profile.update.bio", "post.create", "--user-id", "1"), "usage:"),
                (("activity", "add", "eventType", "--user-id", "1"), "'eventType' is no X Activity event type"),
                (("activity", "add", "like.created", "--user-id", "1"), "is no X Activity event type"),
                (("activity", "add", "post.create"), "post.create is filtered by --user-id ID"),
                (("activity", "add", "post.create", "--keyword", "x"), "post.create is filtered by --user-id ID"),
                (("activity", "add", "post.create", "--user-id", "1", "--keyword", "x"), "--user-id ID alone"),
                (("activity", "add", "news.new", "--user-id", "1"), "news.new is filtered by --keyword"),
                (("activity", "add", "news.new"), "news.new is filtered by --keyword"),
                (("activity", "add", "news.new", "--keyword", "k" * 151), "X takes 1 to 150"),
                (("activity", "add", "post.create", "--user-id", "12ab"), "--user-id '12ab' is no user id"),
                (("activity", "add", "post.create", "--user-id", "1" * 20), "is no user id"),
                (("activity", "add", "post.create", "--user-id", "1", "--direction", "inbound"),
                 "post.create takes no --direction"),
                (("activity", "add", "mute.mute", "--user-id", USER_ID, "--direction", "outbound"),
                 "mute.mute takes no --direction (like.create alone does; mute and block"),
                (("activity", "add", "block.unblock", "--user-id", USER_ID, "--direction", "inbound"),
                 "block.unblock takes no --direction"),
                (("activity", "add", "like.create", "--user-id", "1", "--direction", "both"),
                 "--direction 'both': X takes inbound or outbound"),
                (("activity", "add", "post.create", "--user-id", "1", "--tag", ""), "has 0 characters"),
                (("activity", "add", "post.create", "--user-id", "1", "--tag", "t" * 201), "has 201 characters"),
                (("activity", "add", "post.create", "--user-id", "1", "--tag", "\u00e9" * 201), "has 201 char"),
                (("activity", "add", "post.create", "--user-id", "1", "--webhook", "w1"),
                 "--webhook 'w1' is no webhook id"),
                (("activity", "update", "1"), "nothing to change"),
                (("activity", "update", "s1", "--tag", "x"), "'s1' is no subscription id"),
                (("activity", "update", "1", "--webhook", "x"), "--webhook 'x' is no webhook id"),
                (("activity", "update", "1", "--tag", "t" * 201), "X takes 1 to 200"),
                (("activity", "update", "1", "--user-id", "1"), "--user-id, --keyword and --direction go with"),
                (("activity", "delete"), "usage: xwebhook activity delete SUBSCRIPTION_ID..."),
                (("activity", "delete", "1", "2", "x3"), "'x3' is no subscription id"),
                (("activity", "delete", *[str(i) for i in range(1, 102)]), "at most 100 ids"),
                (("activity", "list", "1"), "usage: xwebhook activity list"),
                (("webhooks", "--tag", "x"), "--tag and --webhook go with activity add and activity update"),
                (("activity", "list", "--keyword", "x"), "go with activity add")):
            err = w.fails(*args)
            assert part in err, (args, err)
        # A tag of 200 characters (not bytes) is X's limit, and passes.
        w.ok("activity", "add", "post.create", "--user-id", "1", "--tag", "\u00e9" * 200, "--webhook", wid)
        assert len(w.x.requests) == before + 1, "a refused command reached X"
        # Each event of the spec's enum is taken (private ones in user context).
        for ev in xs.XAA_EVENTS:
            args = ("--keyword", "k") if ev == "news.new" else ("--user-id", USER_ID)
            rc, out, err = w.run("activity", "add", ev, *args)
            assert rc == 0, (ev, out, err)
            sent = w.x.requests[-1]
            assert json.loads(sent["body"])["event_type"] == ev
            assert sent["headers"]["Authorization"].startswith("OAuth " if xs.xaa_private(ev) else "Bearer "), ev
    finally:
        w.close()


@test
def activity_missing_credentials_are_named_by_the_event_s_auth():
    w = World()
    try:
        err = w.fails("activity", "add", "post.create", "--user-id", "1", creds=False)
        assert "TWITTER_BEARER_TOKEN" in err and "not set" in err, err
        err = w.fails("activity", "add", "dm.received", "--user-id", "1", creds=False,
                      env={"TWITTER_BEARER_TOKEN": CRED["TWITTER_BEARER_TOKEN"]})
        assert "TWITTER_CONSUMER_KEY" in err and "TWITTER_ACCESS_TOKEN" in err, err
        err = w.fails("activity", "list", creds=False)
        assert "TWITTER_BEARER_TOKEN" in err, err
        assert w.x.requests == []
    finally:
        w.close()


@test
def activity_accepts_every_documented_answer_shape():
    """openapi.json 2.167: {"data":{"subscription":S}}; 2.166: the same with
    total_subscriptions_for_instance_id and meta.total_subscriptions; the
    quickstart: {"data":S} and {"data":[S],"meta":...}. Each prints as the
    current spec's shape, so a script sees one."""
    w = World()
    try:
        for shape in xs.XAA_SHAPES:
            w.x.xaa_shape = shape
            got = w.ok("activity", "add", "post.create", "--user-id", USER_ID, "--tag", shape)
            sub = got["data"]["subscription"]
            assert list(got) == ["data"] and list(got["data"]) == ["subscription"], (shape, got)
            assert sub["tag"] == shape and sub["filter"] == {"user_id": USER_ID}, (shape, got)
            upd = w.ok("activity", "update", sub["subscription_id"], "--tag", shape + "!")
            assert upd == {"data": {"subscription": dict(sub, tag=shape + "!",
                                                         updated_at=upd["data"]["subscription"]["updated_at"])}}
            assert len(w.ok("activity", "list")["data"]) == len(w.x.xaa)
        # An answer with none of them is no success.
        for raw, part in ((b'{"data":{"deleted":true}}', "without a subscription in any of the shapes"),
                          (b'{"data":[]}', "without a subscription"),
                          (b'{"data":{"subscription":{"tag":"x"}}}', "without a subscription"),
                          (b'{"meta":{"total_subscriptions":1}}', "without a data member")):
            w.x.override = (200, {}, raw)
            for args in (("activity", "add", "post.create", "--user-id", "1"), ("activity", "update", "1", "--tag",
                                                                                   "t")):
                rc, out, err = w.run(*args)
                assert rc == 1 and out == "" and part in err and "outcome is unknown" in err, (raw, rc, out, err)
    finally:
        w.close()


@test
def activity_list_follows_next_token_across_pages():
    w = World()
    try:
        for i in range(7):
            w.ok("activity", "add", "post.create", "--user-id", str(1000 + i))
        w.x.xaa_page = 3  # X's pages hold max_results (1000); 3 here
        before = len(w.x.requests)
        got = w.ok("activity", "list")
        assert [s["filter"]["user_id"] for s in got["data"]] == [str(1000 + i) for i in range(7)], got
        assert got["meta"] == {"result_count": 7}
        pages = w.x.requests[before:]
        assert len(pages) == 3, [r["path"] for r in pages]
        assert pages[0]["path"] == "/2/activity/subscriptions?max_results=1000"
        toks = list(w.x.xaa_tokens)
        for r, tok in zip(pages[1:], toks):
            assert r["path"] == "/2/activity/subscriptions?max_results=1000&pagination_token=" + \
                tok.replace("=", "%3D"), (r["path"], tok)
        # A failing page fails the whole list, with nothing on stdout.
        w.x.limits["activity"] = w.x.used["activity"] + 2
        rc, out, err = w.run("activity", "list")
        assert rc == 1 and out == "" and "429" in err and err.count("\n") == 1, (rc, out, err)
        # A token X hands back again ends the walk instead of looping.
        w.x.override = (200, {}, json.dumps({"data": [{"subscription_id": "1"}],
                                             "meta": {"next_token": "A" * 16}}).encode())
        w.x.limits["activity"] = 10 ** 6
        before = len(w.x.requests)
        got = w.ok("activity", "list")
        assert got["meta"] == {"result_count": 2} and len(w.x.requests) == before + 2, got
    finally:
        w.close()


@test
def activity_private_events_403_names_the_scope():
    w = World()
    try:
        for ev, scope in (("like.create", "like.read"), ("dm.received", "dm.read"), ("chat.sent", "dm.read"),
                          ("mute.mute", "mute.read"), ("block.block", "block.read"),
                          ("post.mention.create", "tweet.read"), ("broadcast.chat", "broadcast.read")):
            w.x.xaa_forbidden = {ev}
            err = w.fails("activity", "add", ev, "--user-id", USER_ID)
            assert "403" in err and ("%s is a private event" % ev) in err and "scope " + scope in err, (ev, err)
        # A public event refused (news.new is Enterprise only) says the Bearer token should do.
        w.x.xaa_forbidden = {"news.new"}
        err = w.fails("activity", "add", "news.new", "--keyword", "k")
        assert "403" in err and "news.new is public" in err and "tweet.read" in err, err
        # The stand-in refuses what X refuses: a Bearer token for a private
        # event, eventType for event_type, another user's mutes.
        ctx = ssl.create_default_context(cafile=PKI["p"]["root"])

        def post(obj):
            c = http.client.HTTPSConnection("localhost", w.x.port, timeout=10, context=ctx)
            c.request("POST", "/2/activity/subscriptions", json.dumps(obj).encode(),
                      {"Authorization": "Bearer " + CRED["TWITTER_BEARER_TOKEN"], "Content-Type": "application/json"})
            r = c.getresponse()
            body = json.loads(r.read())
            c.close()
            return r.status, body

        st, body = post({"event_type": "like.create", "filter": {"user_id": USER_ID}})
        assert st == 403 and "private event" in body["detail"], body
        st, body = post({"eventType": "post.create", "filter": {"user_id": USER_ID}})
        assert st == 400 and "eventType" in body["errors"][0]["message"], body
        w.x.xaa_forbidden = set()
        err = w.fails("activity", "add", "mute.mute", "--user-id", "42")
        assert "400" in err and "actor-only" in err, err
        assert w.ok("activity", "add", "mute.mute", "--user-id", USER_ID)["data"]["subscription"]["event_type"] == \
            "mute.mute"
    finally:
        w.close()


@test
def activity_bulk_delete_names_what_x_did_not_delete():
    w = World()
    try:
        ids = [w.ok("activity", "add", "post.create", "--user-id", str(i))["data"]["subscription"]["subscription_id"]
               for i in (1, 2)]
        rc, out, err = w.run("activity", "delete", ids[0], "999", ids[1])
        assert rc == 1 and err.count("\n") == 1, (rc, out, err)
        assert "X did not delete 1 of the 3: 999: Subscription 999 does not exist." in err, err
        got = json.loads(out)
        assert [d["subscription_id"] for d in got["data"]] == ids and got["errors"][0]["subscription_id"] == "999"
        assert w.x.xaa == {}
        err = w.fails("activity", "delete", "999")
        assert "400" in err and "SubscriptionNotFound" in err, err
    finally:
        w.close()


@test
def activity_stops_at_the_subscription_limit_with_x_s_words():
    w = World()
    try:
        assert w.x.xaa_limit == 1500  # the introduction's self-serve figure
        w.x.xaa_limit = 2
        w.ok("activity", "add", "post.create", "--user-id", "1")
        w.ok("activity", "add", "post.delete", "--user-id", "1")
        err = w.fails("activity", "add", "follow.follow", "--user-id", "1")
        assert "400" in err and "SubscriptionLimitExceeded" in err, err
    finally:
        w.close()


@test
def validate_accepts_the_attempted_shape_and_the_400():
    w = World()
    try:
        wid = w.ok("register", HOOK)["data"]["id"]
        # Spec 2.137's answer: {"data":{"attempted":true}}.
        w.x.put_mode = "attempted"
        assert w.ok("validate", wid) == {"data": {"attempted": True}}
        rotate_secret(w, "rotated-by-mistake")
        w.x.put_mode = "400"  # the quickstart's CrcValidationFailed
        err = w.fails("validate", wid)
        assert "400" in err and "CrcValidationFailed" in err and "API Key Secret" in err, err
        assert lists_after_put(w) == 0  # nothing left to ask
        # attempted: false, valid: false, and neither: no success, at once.
        for raw, part in ((b'{"data":{"attempted":false}}', "X answered attempted: false"),
                          (b'{"data":{"valid":false}}', "X answered valid: false"),
                          (b'{"data":{"valid":"yes"}}', "X answered valid: (not a boolean)"),
                          (b'{"data":{"id":"1"}}', "without data.valid or data.attempted")):
            w.x.override = (200, {"Content-Type": "application/json"}, raw)
            n = len(w.x.requests)
            rc, out, err = w.run("validate", wid)
            assert rc == 1 and err.count("\n") == 1 and part in err, (raw, rc, out, err)
            assert len(w.x.requests) == n + 1, "it went on to GET /2/webhooks"
        # A 2xx list that is not X's is no answer either.
        w.x.override = None
        rotate_secret(w, it.SECRET)
        w.x.put_mode = None
        real = w.x.list_webhooks
        w.x.list_webhooks = lambda h: w.x.send(h, 200, {"meta": {"result_count": 2}})
        err = w.fails("validate", wid)
        assert "without a data member" in err and "GET /2/webhooks" in err, err
        w.x.list_webhooks = real
    finally:
        w.close()


@test
def validate_waits_for_a_crc_x_runs_after_answering():
    """X may run the CRC after the PUT answered: the list says invalid
    (from before) until it has, then valid. validate waits for that."""
    w = World()
    try:
        wid = w.ok("register", HOOK)["data"]["id"]
        rotate_secret(w, "rotated-by-mistake")
        w.fails("validate", wid)
        assert w.x.webhooks[wid]["valid"] is False
        rotate_secret(w, it.SECRET)
        w.x.put_mode, w.x.crc_lag = "lie", 3
        t0 = time.monotonic()
        assert w.ok("validate", wid) == {"data": {"valid": True}}
        took = time.monotonic() - t0
        assert 3 <= took <= 8 and 2 <= lists_after_put(w) <= 4, (took, lists_after_put(w))
        # Not listed at all: said at once, exit 1.
        w.x.crc_lag = 0
        w.x.unlisted.add(wid)
        err = w.fails("validate", wid)
        assert "X does not list webhook %s" % wid in err and lists_after_put(w) == 1, err
    finally:
        w.close()


@test
def subscribed_says_yes_or_no_with_user_context_and_count_with_bearer():
    w = World()
    try:
        wid = w.ok("register", HOOK)["data"]["id"]
        assert w.ok("subscribed", wid) == {"data": {"subscribed": False}}
        got = [r for r in w.x.requests if r["method"] == "GET" and r["path"].endswith("/subscriptions/all")][-1]
        assert got["path"] == "/2/account_activity/webhooks/%s/subscriptions/all" % wid, got
        assert got["headers"]["Authorization"].startswith("OAuth ") and got["body"] == b"", got
        assert w.ok("subscription-count")["data"]["subscriptions_count_all"] == "0"
        assert w.ok("subscribe", wid) == {"data": {"subscribed": True}}
        assert w.ok("subscribed", wid) == {"data": {"subscribed": True}}
        count = w.ok("subscription-count")
        assert count["data"]["subscriptions_count_all"] == "1" and count["data"]["provisioned_count"] == "15"
        got = [r for r in w.x.requests if r["path"] == "/2/account_activity/subscriptions/count"][-1]
        assert got["method"] == "GET" and got["headers"]["Authorization"] == "Bearer " + \
            CRED["TWITTER_BEARER_TOKEN"], got
        err = w.fails("subscribed", "999")
        assert "400" in err and "WebhookIdInvalid" in err, err
        # User context only: without the user's tokens, named, nothing sent.
        n = len(w.x.requests)
        err = w.fails("subscribed", wid, creds=False, env={"TWITTER_BEARER_TOKEN": CRED["TWITTER_BEARER_TOKEN"]})
        assert "not set" in err and "TWITTER_ACCESS_TOKEN" in err and "TWITTER_CONSUMER_KEY" in err, err
        err = w.fails("subscription-count", creds=False)
        assert "not set" in err and "TWITTER_BEARER_TOKEN" in err, err
        assert len(w.x.requests) == n
        err = w.fails("subscribed", wid, env={"TWITTER_ACCESS_TOKEN_SECRET": "wrong-secret"})
        assert "401" in err and "signature mismatch" in err, err
    finally:
        w.close()


@test
def stream_link_unlink_links_pass_the_fields_through():
    w = World()
    try:
        wid = w.ok("register", HOOK)["data"]["id"]
        assert w.ok("stream", "links") == {"data": []}
        got = w.ok("stream", "link", wid, "--user-fields", "username,name,id", "--expansions", "author_id",
                   "--tweet-fields=created_at,text", "--media-fields", "url", "--poll-fields", "options",
                   "--place-fields", "country_code")
        assert got == {"data": {"provisioned": True}}, got
        sent = [r for r in w.x.requests if r["method"] == "POST" and "/tweets/search/" in r["path"]][-1]
        assert sent["path"] == ("/2/tweets/search/webhooks/%s?tweet.fields=created_at,text&expansions=author_id"
                                "&media.fields=url&poll.fields=options&place.fields=country_code"
                                "&user.fields=username,name,id" % wid), sent["path"]
        assert sent["headers"]["Authorization"] == "Bearer " + CRED["TWITTER_BEARER_TOKEN"]
        links = w.ok("stream", "links")["data"]
        assert [(k["webhook_id"], k["fields"]) for k in links] == [(wid, [
            "tweet.fields=created_at,text", "expansions=author_id", "media.fields=url", "poll.fields=options",
            "place.fields=country_code", "user.fields=username,name,id"])], links
        w.x.links_shape = "quickstart"  # {"data":{"links":[...]}}
        assert w.ok("stream", "links")["data"]["links"][0]["webhook_id"] == wid
        assert w.ok("stream", "link", wid) == {"data": {"provisioned": True}}
        sent = [r for r in w.x.requests if r["method"] == "POST" and "/tweets/search/" in r["path"]][-1]
        assert sent["path"] == "/2/tweets/search/webhooks/%s" % wid, sent["path"]
        assert w.ok("stream", "unlink", wid) == {"data": {"deleted": True}}
        assert w.x.stream_links == {}
        deleted = [r for r in w.x.requests if r["method"] == "DELETE"][-1]
        assert deleted["path"] == "/2/tweets/search/webhooks/%s" % wid, deleted
        err = w.fails("stream", "link", "999")
        assert "400" in err and "WebhookIdInvalid" in err, err
        # Argument errors, each named, none sent.
        n = len(w.x.requests)
        for args, part in ((("stream", "link", wid, "--tweet-fields", "id,bogus"),
                            "--tweet-fields: 'bogus' is not one of X's tweet.fields: article"),
                           (("stream", "link", wid, "--tweet-fields", "id,text,id"), "--tweet-fields names id twice"),
                           (("stream", "link", wid, "--user-fields", ""), "--user-fields: '' is not one of"),
                           (("stream", "link", wid, "--place-fields", "id name"), "'id name' is not one of"),
                           (("stream", "link", wid, "--expansions", "author_id,"), "--expansions: '' is not one"),
                           (("stream", "link", wid, "--media-fields", "URL"), "'URL' is not one of X's media.fields"),
                           (("stream", "link", "12a"), "1 to 19 digits"),
                           (("stream", "link"), "usage: xwebhook stream link WEBHOOK_ID [--tweet-fields LIST]"),
                           (("stream", "links", "1"), "usage: xwebhook stream links"),
                           (("stream", "relink", "1"), "usage: xwebhook stream link|unlink WEBHOOK_ID"),
                           (("stream",), "usage: xwebhook stream link|unlink WEBHOOK_ID"),
                           (("stream link", wid), "unknown command 'stream link'"),
                           (("--tweet-fields", "id", "stream", "links"), "--tweet-fields goes with stream link"),
                           (("--poll-fields", "id", "webhooks"), "--poll-fields goes with stream link"),
                           (("--user-fields", "id"), "--user-fields goes with stream link")):
            err = w.fails(*args)
            assert part in err, (args, err)
        assert len(w.x.requests) == n, "a refused command reached X"
    finally:
        w.close()


def main():
    os.makedirs(it.PKI, exist_ok=True)
    PKI["p"] = it.make_pki("p256", "p256")
    PKI["api"] = it.leaf(PKI["p"]["dir"], "api", "p256", host="localhost")
    PKI["other"] = it.leaf(PKI["p"]["dir"], "other", "p256", host="elsewhere.test")
    PKI["q"] = it.make_pki("q", "p256")
    it.finish("xapi", *it.run_suite())


if __name__ == "__main__":
    main()
