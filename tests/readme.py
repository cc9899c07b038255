#!/usr/bin/env python3
"""README.md as a newcomer follows it: every ```sh block, top to bottom,
typed into one bash session (so what one block exports or starts, the next
has), exactly as written but for the substitutions in SUBSTITUTIONS, and
each block's outcome checked; the systemd unit through systemd-analyze
verify, the certbot deploy hook and the logrotate snippet run against a
server of the test's own. A fenced block the test does not know fails it,
so a command added to the README cannot go untested. Usage:

    readme.py TLS_BINARY FIXTURES_DIR

TLS_BINARY is the build under test (ASan+UBSan); it stands in for the
README's ./xwebhook once the README's own build command has been run. Needs
root (a server that drops to --user, files installed for a user), curl,
redis-server, nats-server, systemd-analyze and logrotate. The last line is
'readme: N passed, N failed'.
"""
import grp
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
import threading
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as it  # noqa: E402  (what every suite shares)
import x_standin as xs  # noqa: E402

BIN = it.BIN
TOP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
README = os.path.join(TOP, "README.md")
HOST = it.HOST
PKI = {}

# What the README's placeholders are here: the test's X stand-in knows
# exactly these credentials, and the test's servers use this secret, so the
# placeholders need no substitution.
SECRET = "your-api-key-secret"
CRED = {"TWITTER_BEARER_TOKEN": "your-bearer-token", "TWITTER_CONSUMER_KEY": "your-api-key",
        "TWITTER_ACCESS_TOKEN": "the-account-access-token",
        "TWITTER_ACCESS_TOKEN_SECRET": "the-account-access-token-secret"}
USER_ID = "2244994945"

# Every change the test makes to the README's text before running it, and
# why; nothing else is changed. {name}s are filled in per run. Each must
# apply to some block, or the table is stale.
SUBSTITUTIONS = [
    ("apt-get update && apt-get install -y gcc curl libbearssl-dev && ", "",
     "the packages are installed (test.sh does it as root; asserted below): no network here"),
    ("127.0.0.1:8080", "127.0.0.1:{port}", "a free loopback port for the local server"),
    ("--listen :443 ", "--listen 127.0.0.1:{tls_port} ", "a free loopback port stands in for 443"),
    ("your.domain", HOST, "the host name the test's certificates name"),
    ("/etc/letsencrypt", "{root}/letsencrypt", "certbot's files, as certbot would have left them"),
    ("/etc/xwebhook", "{root}/etc-xwebhook", "the machine's own install is never touched"),
    ("/var/lib/xwebhook", "{root}/var-lib-xwebhook", "the machine's own install is never touched"),
    ("/usr/local/bin", "{root}/usr-local-bin", "the machine's own install is never touched"),
    ("-o xwebhook -g xwebhook", "-o nobody -g {group}", "the test makes no system user: nobody stands in"),
    ("chown xwebhook ", "chown nobody ", "the test makes no system user: nobody stands in"),
    ("--user xwebhook ", "--user nobody ", "the test makes no system user: nobody stands in"),
    ("./xwebhook check ", "./xwebhook check --connect 127.0.0.1:{tls_port} --cacert {ca} ",
     "the host name is the test's, not in DNS, under the test's root"),
    ("./xwebhook login ", "./xwebhook --api {api} --cacert {ca} --auth-url {api}/i/oauth2/authorize --port {login_port} "
     "login ", "X's authorize page is the stand-in's, which a thread of the test follows as a browser"),
    (re.compile(r"\./xwebhook (webhooks|register|validate|subscribe|subscriptions|replay|activity)\b"),
     r"./xwebhook --api {api} --cacert {ca} --state-dir {root}/no-login \1",
     "X's API is the stand-in, tests/x_standin.py; no token of this machine's own login is read (a later "
     "--state-dir, as the README's after login, wins)"),
    ("6379", "{redis_port}", "the test's own redis-server"),
    ("4222", "{nats_port}", "the test's own nats-server"),
    (re.compile(r"(--pid-file \S+xwebhook\.pid)$", re.M), r"\1 &",
     "the server of step 3 goes on in the background (the user's next steps are another shell's)"),
]

# For the --acme command alone, after SUBSTITUTIONS: Let's Encrypt is pebble
# (tests/acme.py's), which dials the port it was told for tls-alpn-01, and
# --state-dir's default is the machine's own /var/lib/xwebhook.
ACME_ADDED = "--acme-server {directory} --acme-cacert {cacert} --state-dir {state} --listen 127.0.0.1:{tls_port}"

# Lines not run, each with why; a block must be one of BLOCKS below.
NOT_RUN = {
    "useradd --system --no-create-home --shell /usr/sbin/nologin xwebhook":
        "adds a system account; nobody stands in for it",
    "apt-get install -y certbot": "certbot is not the project's",
    "certbot certonly --standalone -d your.domain":
        "asks Let's Encrypt on port 80; the test puts its own certificate where certbot would",
    "systemctl daemon-reload && systemctl enable --now xwebhook":
        "would start the unit on this machine; the unit is checked by systemd-analyze verify",
}

# Every fenced block of the README, in order: (what its first line starts
# with, how the test takes it). "session": typed into the session, then
# checked by check(key) in the_path_top_to_bottom; "fresh": run by
# tests/fresh_root.sh (test.sh's stage 7); "acme", "unit", "hook",
# "logrotate": the tests below; "sample": an example of output, not a
# command.
BLOCKS = [
    ("apt-get update && apt-get install -y gcc && cc -O2 -o xwebhook", "fresh", None),
    ("./test.sh", "fresh", None),
    ("apt-get update && apt-get install -y gcc curl libbearssl-dev", "session", "build"),
    ("export TWITTER_CONSUMER_SECRET=secret", "session", "crc"),
    ("body='", "session", "event"),
    ("useradd ", "session", "user"),
    ("./xwebhook --acme ", "acme", None),
    ("apt-get install -y certbot", "session", "none"),
    ("install -o xwebhook -g xwebhook -m 0600 /etc/letsencrypt", "session", "serve"),
    ("#!/bin/sh", "hook", None),
    ("TWITTER_CONSUMER_SECRET='your-api-key-secret' ./xwebhook check", "session", "check"),
    ("export TWITTER_BEARER_TOKEN=", "session", "register"),
    ("{", "sample", None),
    ("./xwebhook webhooks", "session", "webhooks"),
    ("./xwebhook activity add profile.update.bio", "session", "activity"),
    ("export TWITTER_CLIENT_ID=", "session", "login"),
    ("export TWITTER_CONSUMER_KEY=", "session", "private"),
    ("./xwebhook subscribe ", "session", "subscribe"),
    ("./xwebhook replay ", "session", "replay"),
    ("./xwebhook fmt /var/lib/xwebhook/events.jsonl", "session", "fmt"),
    ("[Unit]", "unit", None),
    ("install -m 0755 xwebhook /usr/local/bin/xwebhook", "session", "install"),
    ("/var/lib/xwebhook/events.jsonl {", "logrotate", None),
    ("cfg='", "session", "stream"),
    ("./xwebhook --listen 127.0.0.1:8080 --forward", "session", "forward"),
    ("man doc/xwebhook.1", "session", "man"),
]


test = it.test


def readme():
    with open(README, encoding="utf-8") as f:
        return f.read()


def fenced(text):
    """[(language, the comment line before it or '', body)] of every fenced
    block, in order."""
    out = []
    for m in re.finditer(r"(?:(<!-- [a-z-]+ -->)\n)?```([a-z]*)\n(.*?)\n```", text, re.S):
        out.append((m.group(2), m.group(1) or "", m.group(3)))
    return out


def blocks():
    """The README's blocks, each with its BLOCKS entry: [(kind, key, body)];
    raises naming a block the test does not know, or one out of order."""
    got = fenced(readme())
    assert len(got) == len(BLOCKS), "the README has %d fenced blocks, the test knows %d: %s" % (
        len(got), len(BLOCKS), [b[:40] for _, _, b in got])
    out = []
    for (lang, mark, body), (start, kind, key) in zip(got, BLOCKS):
        assert body.startswith(start), "a README block the test does not know (or out of order; expected " \
            "one starting %r):\n%s" % (start, body)
        want_lang = {"unit": "ini", "logrotate": "", "sample": "json"}.get(kind, "sh")
        assert lang == want_lang, (body[:60], lang, want_lang)
        if kind in ("hook", "unit", "logrotate"):
            assert mark == "<!-- %s -->" % {"hook": "deploy-hook", "unit": "systemd-unit"}.get(kind, kind), mark
        out.append((kind, key, body))
    return out


def substitute(body, values):
    """body with NOT_RUN lines dropped and SUBSTITUTIONS applied; and the
    set of substitutions that applied."""
    used = set()
    lines = []
    for line in body.split("\n"):
        if line in NOT_RUN:
            continue
        lines.append(line)
    text = "\n".join(lines)
    for k, (old, new, _) in enumerate(SUBSTITUTIONS):
        for name, value in values.items():
            new = new.replace("{%s}" % name, str(value))
        if isinstance(old, re.Pattern):
            text, n = old.subn(new, text)
        else:
            n = text.count(old)
            text = text.replace(old, new)
        if n:
            used.add(k)
    return text, used


class Session:
    """One bash reading the README's blocks on its stdin, as a user types
    them into one shell; its stdout and stderr (and those of what it
    starts) go to files."""

    def __init__(self, cwd, env):
        self.out_path = os.path.join(cwd, ".session.out")
        self.err_path = os.path.join(cwd, ".session.err")
        self.out = open(self.out_path, "wb")
        self.err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(["bash"], stdin=subprocess.PIPE, stdout=self.out, stderr=self.err,
                                     cwd=cwd, env=env, start_new_session=True)
        self.n = 0

    def output(self):
        with open(self.out_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def run(self, text, timeout=120):
        """Type text; wait for it to finish. (its stdout, the last command's status)"""
        self.n += 1
        mark = "__readme_block_%d_status" % self.n
        start = len(self.output())
        self.proc.stdin.write(("%s\necho %s $?\n" % (text, mark)).encode())
        self.proc.stdin.flush()
        ok = it.wait_until(lambda: mark in self.output()[start:] or self.proc.poll() is not None, timeout)
        out = self.output()[start:]
        assert ok and mark in out, "the block did not finish within %ds:\n%s\nstdout: %s\nstderr: %s" % (
            timeout, text, out[-2000:], self.stderr()[-2000:])
        before, after = out.split(mark, 1)
        return before, int(after.split()[0])

    def close(self):
        # The session and everything it started (its servers) are one
        # process group, the test's own.
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.out.close()
        self.err.close()


# ---- The tests ----

@test
def every_block_is_known_and_every_substitution_used():
    bs = blocks()
    values = {"port": 1, "tls_port": 2, "root": "/R", "group": "g", "ca": "/ca", "api": "https://a",
              "redis_port": 3, "nats_port": 4}
    used = set()
    for kind, _, body in bs:
        if kind == "session":
            used |= substitute(body, values)[1]
    stale = [SUBSTITUTIONS[k][0] for k in range(len(SUBSTITUTIONS)) if k not in used]
    assert not stale, "substitutions that apply to no block (stale): %s" % stale
    every_line = "\n".join(b for _, _, b in bs).split("\n")
    assert all(line in every_line for line in NOT_RUN), [line for line in NOT_RUN if line not in every_line]
    # The blocks fresh_root.sh runs are the first two of their section.
    with open(os.path.join(TOP, "tests", "fresh_root.sh")) as f:
        assert '"## Two commands on a fresh machine"' in f.read()
    assert bs[0][0] == bs[1][0] == "fresh" and "\n## Two commands on a fresh machine\n" in readme()
    # And the check has teeth: a block it does not know fails it.
    saved = globals()["README"]
    path = os.path.join(it.WORK, "README-extra.md")
    with open(path, "w") as f:
        f.write(readme().replace("## The reference\n", "## The reference\n\n```sh\nrm -rf /tmp/x\n```\n", 1))
    globals()["README"] = path
    try:
        blocks()
        raise RuntimeError("a README with a block the test does not know passed")
    except AssertionError as e:
        assert "fenced blocks" in str(e), e
    finally:
        globals()["README"] = saved


def user_dirs(root):
    """What step 2 makes, for nobody: (etc, state), the secret in etc."""
    nobody = pwd.getpwnam("nobody")
    os.chmod(it.WORK, 0o755)
    etc, state = os.path.join(root, "etc-xwebhook"), os.path.join(root, "var-lib-xwebhook")
    for d in (etc, state):
        os.makedirs(d, mode=0o700)
        os.chown(d, nobody.pw_uid, nobody.pw_gid)
    with open(os.path.join(etc, "secret"), "w") as f:
        f.write(SECRET + "\n")
    os.chmod(os.path.join(etc, "secret"), 0o600)
    os.chown(os.path.join(etc, "secret"), nobody.pw_uid, nobody.pw_gid)
    return etc, state


@test
def the_acme_command_serves_with_a_certificate_from_pebble():
    """Step 3's --acme command as written, but for SUBSTITUTIONS and
    ACME_ADDED: it gets a certificate over tls-alpn-01, drops to the user,
    and answers a CRC over HTTPS with it."""
    if os.geteuid() != 0:
        raise AssertionError("needs root (--user): run as root, as CI does")
    import acme
    line = [b for kind, _, b in blocks() if kind == "acme"][0]
    assert "\n" not in line and line.startswith("./xwebhook --acme your.domain "), line
    root = tempfile.mkdtemp(prefix="readme-acme-", dir=it.WORK)
    os.chmod(root, 0o755)
    etc, state = user_dirs(root)
    shutil.copy(BIN, os.path.join(root, "xwebhook"))
    p = acme.Pebble()
    s = None
    try:
        values = {"root": root, "group": grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name,
                  "tls_port": p.tls_port, "directory": p.url(),
                  "cacert": p.cacert, "state": state}
        cmd, _ = substitute(line, values)
        added = ACME_ADDED
        for k, v in values.items():
            added = added.replace("{%s}" % k, str(v))
        cmd = cmd.replace("--acme %s " % HOST, "--acme %s %s " % (HOST, added), 1)
        assert added in cmd and cmd.endswith(" &"), cmd
        env = {"PATH": os.environ["PATH"], "HOME": root}
        env.update({k: os.environ[k] for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS") if k in os.environ})
        s = Session(root, env)
        out, rc = s.run(cmd)
        assert rc == 0, (rc, out, s.stderr())
        assert it.wait_until(lambda: "ACME: now serving certificate" in s.stderr(), 60), s.stderr()[-3000:]
        ctx = ssl.create_default_context(cafile=p.root())
        raw = socket.create_connection(("127.0.0.1", p.tls_port), timeout=10)
        conn = ctx.wrap_socket(raw, server_hostname=HOST)
        conn.sendall(b"GET /webhooks/twitter?crc_token=abc HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                     % HOST.encode())
        status, _, body, _ = it.read_response(conn)
        conn.close()
        assert status == 200 and json.loads(body)["response_token"] == it.sign(b"abc", SECRET), (status, body)
        assert os.stat(os.path.join(state, HOST, "privkey.pem")).st_uid == pwd.getpwnam("nobody").pw_uid
    finally:
        if s is not None:
            s.close()
        p.close()
    assert it.wait_until(lambda: not os.path.exists(os.path.join(state, "xwebhook.pid")), 15), \
        "the pid file outlived the server"
    it.check_sanitizers(s.stderr())


def start_brokers(root):
    """A redis-server and a JetStream nats-server of the test's own, on
    free ports, without passwords (as the README's URLs have none)."""
    rport, nport = it.free_port(), it.free_port()
    rdir, ndir = os.path.join(root, "redis"), os.path.join(root, "nats")
    os.makedirs(rdir)
    os.makedirs(ndir)
    procs = [subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                               "--dir", rdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL),
             subprocess.Popen(["nats-server", "-js", "-sd", os.path.join(ndir, "js"), "-a", "127.0.0.1",
                               "-p", str(nport)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL)]

    def up(port):
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return True
        except OSError:
            return False
    assert it.wait_until(lambda: up(rport) and up(nport), 10), "the brokers did not start"
    return procs, rport, nport


def browse(s, err_at):
    """The browser of the README's login: it follows the URL login prints
    to the stand-in's authorize page, and X's redirect back to login."""
    got = {}

    def url():
        m = re.search(r"^(https://\S+)$", s.stderr()[err_at:], re.M)
        got["url"] = m and m.group(1)
        return m is not None
    if not it.wait_until(url, 60):
        return
    ctx = ssl.create_default_context(cafile=PKI["p"]["root"])

    class Stop(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None
    try:
        urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), Stop).open(got["url"], timeout=10)
    except urllib.error.HTTPError as e:
        if e.code == 302:
            urllib.request.urlopen(e.headers["Location"], timeout=10).read()


@test
def the_path_top_to_bottom():
    """Every sh block in order, in one bash, as the README says to type
    them; each block's outcome is the one the README describes."""
    if os.geteuid() != 0:
        raise AssertionError("needs root (files installed for a user, --user): run as root, as CI does")
    missing = [p for p in ("gcc", "curl", "libbearssl-dev")
               if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                                 text=True).stdout != "install ok installed"]
    assert not missing, "the README's build installs %s, which are not installed" % missing
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    os.chmod(it.WORK, 0o755)  # nobody reaches its files under it
    root = tempfile.mkdtemp(prefix="readme-", dir=it.WORK)
    os.chmod(root, 0o755)
    # "This directory": the tree's files the README names.
    shutil.copy(os.path.join(TOP, "xwebhook.c"), root)
    shutil.copytree(os.path.join(TOP, "doc"), os.path.join(root, "doc"))
    os.makedirs(os.path.join(root, "usr-local-bin"))
    # What certbot would have written.
    live = os.path.join(root, "letsencrypt", "live", HOST)
    os.makedirs(live)
    shutil.copy(PKI["p"]["chain"], os.path.join(live, "fullchain.pem"))
    shutil.copy(PKI["p"]["key"], os.path.join(live, "privkey.pem"))
    tls_port = it.free_port()
    app = xs.App(CRED["TWITTER_CONSUMER_KEY"], SECRET, CRED["TWITTER_BEARER_TOKEN"],
                 {CRED["TWITTER_ACCESS_TOKEN"]: (CRED["TWITTER_ACCESS_TOKEN_SECRET"], USER_ID)})
    app.client_id = re.search(r"^export TWITTER_CLIENT_ID='(.*)'$", readme(), re.M).group(1)
    x = xs.Standin(PKI["api"]["chain"], PKI["api"]["key"], PKI["p"]["root"], app, {HOST: tls_port})
    procs, rport, nport = start_brokers(root)
    values = {"port": it.free_port(), "tls_port": tls_port, "root": root, "group": group,
              "ca": PKI["p"]["root"], "api": x.base, "redis_port": rport, "nats_port": nport,
              "login_port": it.free_port()}
    env = {"PATH": os.environ["PATH"], "HOME": root, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "80",
           "LC_ALL": "C.UTF-8"}
    for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        if k in os.environ:
            env[k] = os.environ[k]
    etc, state = os.path.join(root, "etc-xwebhook"), os.path.join(root, "var-lib-xwebhook")
    events = os.path.join(state, "events.jsonl")
    text = readme()
    body = json.loads(re.search(r"^body='(.*)'$", text, re.M).group(1))
    crc_answer = re.search(r"The answer is `(\{\"response_token\":[^`]*\})`", text).group(1)

    def check(key, out, rc):
        # err_at: where this block's stderr begins.
        if key == "build":
            v = subprocess.run([os.path.join(root, "xwebhook"), "--version"], capture_output=True, text=True)
            assert rc == 0 and "BearSSL" in v.stdout, (rc, v.stdout, s.stderr()[-2000:])
            # From here on ./xwebhook is the build under test.
            shutil.copy(BIN, os.path.join(root, "xwebhook"))
        elif key == "crc":
            assert rc == 0 and out.strip() == crc_answer, (rc, out)
        elif key == "event":
            assert rc == 0 and "HTTP/1.1 200" in out, (rc, out)
            assert it.pretty(body) in s.output(), "the event was not printed: " + s.output()[-2000:]
        elif key == "user":
            assert rc == 0
            for d in (etc, state):
                st = os.stat(d)
                assert (st.st_uid, st.st_mode & 0o777) == (nobody.pw_uid, 0o700), (d, st)
            st = os.stat(os.path.join(etc, "secret"))
            assert (st.st_uid, st.st_mode & 0o777) == (nobody.pw_uid, 0o600), st
            assert open(os.path.join(etc, "secret")).read() == SECRET + "\n"
        elif key == "serve":
            assert it.wait_until(lambda: "serving https://" in s.stderr(), 30), s.stderr()[-2000:]
            assert "running as root" not in s.stderr()[err_at:], s.stderr()[err_at:]
            assert os.stat(os.path.join(etc, "privkey.pem")).st_uid == nobody.pw_uid
        elif key == "check":
            assert rc == 0 and "[FAIL]" not in out and "[unknown]" not in out, (rc, out)
        elif key == "register":
            got = json.loads(out)
            assert rc == 0 and got["data"]["id"] == "1460000000000000001" and got["data"]["valid"], (rc, out)
            assert x.crcs == [("https://%s/webhooks/twitter" % HOST, None)], x.crcs
        elif key == "webhooks":
            assert rc == 0 and out.count('"valid": true') == 2, (rc, out)
        elif key == "activity":
            got = json.loads("[" + out.replace("}\n{", "},{") + "]")
            assert rc == 0 and [g["data"]["subscription"]["event_type"] for g in got[:2]] == \
                ["profile.update.bio", "post.create"], (rc, out)
            assert [d["event_type"] for d in got[2]["data"]] == ["profile.update.bio", "post.create"], out
            assert all(d["webhook_id"] == "1460000000000000001" for d in got[2]["data"]), out
            assert all(r["headers"]["Authorization"].startswith("Bearer ") for r in x.requests
                       if r["path"].startswith("/2/activity/")), "a public event went in user context"
        elif key == "private":
            got = json.loads(out)["data"]["subscription"]
            assert rc == 0 and got["event_type"] == "post.mention.create", (rc, out)
            assert got["filter"] == {"user_id": USER_ID}, got
            assert x.requests[-1]["headers"]["Authorization"].startswith("OAuth "), \
                "post.mention.create is private, and without a login token is signed with OAuth 1.0a"
        elif key == "subscribe":
            assert rc == 0 and '"subscribed": true' in out and '"user_id": "%s"' % USER_ID in out, (rc, out)
        elif key == "login":
            t = json.load(open(os.path.join(root, ".xwebhook", "oauth2.token")))
            assert rc == 0 and t["access_token"] in x.oauth2.access, (rc, s.stderr()[err_at:])
            got = json.loads(out[out.index("{"):])["data"]["subscription"]
            assert got["event_type"] == "like.create" and got["filter"] == {"user_id": USER_ID, "direction": "inbound"}
            assert x.requests[-1]["headers"]["Authorization"] == "Bearer " + t["access_token"], \
                "like.create did not carry login's user token"
        elif key == "replay":
            assert rc == 0 and '"job_id"' in out, (rc, out)
            assert it.wait_until(lambda: os.path.exists(events) and b"replay_job_status" in
                                    open(events, "rb").read(), 10), s.stderr()[-2000:]
        elif key == "fmt":
            assert rc == 0 and '"replay_job_status": {' in out, (rc, out)
        elif key == "install":
            assert rc == 0 and os.access(os.path.join(root, "usr-local-bin", "xwebhook"), os.X_OK)
        elif key == "stream":
            assert rc == 0 and '"did_create":true' in out, (rc, out)
        elif key == "forward":
            assert rc == 0 and "event\n" + json.dumps(body, separators=(",", ":")) in out, (rc, out)
            assert "sha256" in out
        elif key == "man":
            assert rc == 0 and "SYNOPSIS" in out and "--forward" in out, (rc, out[:400])
        elif key == "none":
            pass
        else:
            raise AssertionError("no check for " + key)

    s = Session(root, env)
    try:
        ran = 0
        for kind, key, b in blocks():
            if kind != "session":
                continue
            cmd, _ = substitute(b, values)
            err_at = len(s.stderr())
            if key == "login":
                threading.Thread(target=browse, args=(s, err_at), daemon=True).start()
            out, rc = s.run(cmd, timeout=600 if key == "build" else 120)
            check(key, out, rc)
            ran += 1
        assert ran == sum(1 for _, k, _ in BLOCKS if k == "session")
    finally:
        s.close()
        x.close()
        for p in procs:
            p.terminate()
            p.wait(10)
    # The session's servers end on its SIGTERM, and remove their pid file.
    assert it.wait_until(lambda: not os.path.exists(os.path.join(state, "xwebhook.pid")), 15), \
        "the pid file outlived the server"
    it.check_sanitizers(s.stderr())


@test
def systemd_unit_from_the_readme_verifies():
    """The README's unit as written, with the binary where it says
    (/usr/local/bin/xwebhook, here the test build): systemd-analyze
    verify finds nothing to say, and it runs the server as the issue asks
    (a user, the one capability to bind 443, restarts on failure, tells
    when it is ready, has a watchdog); systemd-analyze security --offline
    rates it as the README says."""
    if shutil.which("systemd-analyze") is None:
        raise AssertionError("systemd-analyze is not installed (./test.sh installs systemd as root)")
    unit = [b for kind, _, b in blocks() if kind == "unit"][0] + "\n"
    for line in ("User=xwebhook", "AmbientCapabilities=CAP_NET_BIND_SERVICE", "Restart=on-failure",
                 "ExecReload=/bin/kill -HUP $MAINPID", "Type=notify", "WatchdogSec=30", "UMask=0077",
                 "SystemCallFilter=@system-service", "ProtectSystem=strict", "ReadWritePaths=/var/lib/xwebhook"):
        assert "\n" + line + "\n" in unit, line
    d = os.path.join(it.WORK, "systemd")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "xwebhook.service")
    with open(path, "w") as f:
        f.write(unit.replace("/usr/local/bin/xwebhook", BIN))
    p = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout + p.stderr == "", p.stdout + p.stderr
    # The check has teeth: a bad value is reported.
    with open(path, "w") as f:
        f.write(unit.replace("/usr/local/bin/xwebhook", BIN).replace("Restart=on-failure", "Restart=sometimes"))
    p = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True, timeout=60)
    assert "restart specifier" in p.stdout + p.stderr, p.stdout + p.stderr
    # The exposure score the README gives is the one systemd-analyze gives.
    with open(path, "w") as f:
        f.write(unit.replace("/usr/local/bin/xwebhook", BIN))
    p = subprocess.run(["systemd-analyze", "security", "--offline=yes", path], capture_output=True, text=True,
                       timeout=60)
    score = re.search(r"Overall exposure level for xwebhook.service: (\d+\.\d+) (\w+)", p.stdout + p.stderr)
    assert score, p.stdout + p.stderr
    assert "rates the unit %s (%s)" % score.groups() in readme().replace("\n", " "), score.groups()
    # Its command line is one the binary takes (it refuses only for the
    # files missing here, naming the first). Run with the machine's own
    # paths swapped for the test's: a live install (a real
    # /etc/xwebhook/secret, /var/lib/xwebhook) is never read or written.
    etc, state = os.path.join(d, "etc-xwebhook"), os.path.join(d, "var-lib-xwebhook")
    cmd = unit.split("ExecStart=", 1)[1].split("\n", 1)[0]
    assert "/etc/xwebhook/secret" in cmd and "/var/lib/xwebhook/" in cmd, cmd
    cmd = cmd.replace("/etc/xwebhook", etc).replace("/var/lib/xwebhook", state).split()[1:]
    r = subprocess.run([BIN, *cmd], capture_output=True, text=True, timeout=30,
                       env={"PATH": os.environ["PATH"], "TWITTER_CONSUMER_SECRET": it.SECRET})
    assert r.returncode == 1 and etc + "/secret" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not os.path.exists(state), "the refused start made " + state


def syscall_set(name, seen=None):
    """Every system call in systemd's set @name, its nested sets expanded,
    as this systemd's systemd-analyze syscall-filter lists them."""
    seen = set() if seen is None else seen
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    calls = set()
    for word in (line.strip() for line in out.splitlines()[1:]):
        if word.startswith("@") and word not in seen:
            seen.add(word)
            calls |= syscall_set(word, seen)
        elif word and not word.startswith(("#", "@")):
            calls.add(word)
    return calls


def signed_post(c, body):
    """POST body as X does, signed, on the TLS socket c (the last request
    on it): the answer's status."""
    c.sendall(b"POST /webhooks/twitter HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
              b"x-twitter-webhooks-signature: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
              % (HOST.encode(), it.sign(body).encode(), len(body), body))
    return it.read_response(c)[0]


def unit_seccomp(allowed):
    """For preexec_fn: what the unit's SystemCallFilter= does, through
    libseccomp (which systemd uses for it), but harsher: a call outside the
    set kills the process (the unit's SystemCallErrorNumber=EPERM would let
    it fail and go on), so the server cannot survive one unnoticed."""
    import ctypes
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    numbers = [lib.seccomp_syscall_resolve_name(n.encode()) for n in sorted(allowed)]

    def load():
        ctx = lib.seccomp_init(0x80000000)  # SCMP_ACT_KILL_PROCESS
        for nr in numbers:
            if nr >= 0 and lib.seccomp_rule_add(ctx, 0x7fff0000, nr, 0) != 0:  # SCMP_ACT_ALLOW
                os._exit(121)
        if lib.seccomp_load(ctx) != 0:
            os._exit(122)
    return load


@test
def the_server_lives_under_the_units_system_call_filter():
    """PID 1 here is not systemd, so the unit cannot be started; its
    SystemCallFilter= lines (read from the README's unit) are applied with
    libseccomp instead, killing on anything else, and the server does what
    it does in a day: answers a CRC and a signed event over HTTPS, appends
    to --output, tells NOTIFY_SOCKET it is ready and pings the watchdog,
    reloads on SIGHUP and stops on SIGTERM with status 0."""
    unit = [b for kind, _, b in blocks() if kind == "unit"][0]
    filters = [line.split("=", 1)[1].split() for line in unit.splitlines() if line.startswith("SystemCallFilter=")]
    assert filters and not filters[0][0].startswith("~"), filters
    allowed = set().union(*(syscall_set(n) for n in filters[0]))
    for deny in filters[1:]:
        assert deny[0].startswith("~"), deny
        allowed -= set().union(*(syscall_set(n.lstrip("~")) for n in deny))
    assert {"sendto", "epoll_wait", "ppoll"} <= allowed and "setuid" not in allowed, len(allowed)
    d = tempfile.mkdtemp(prefix="seccomp-", dir=it.WORK)
    out = os.path.join(d, "events.jsonl")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(os.path.join(d, "notify"))
    notify.settimeout(20)
    p = PKI["p"]
    s = it.Server("--cert", p["chain"], "--key", p["key"], "--output", out, preexec=unit_seccomp(allowed),
                  env={"NOTIFY_SOCKET": os.path.join(d, "notify"), "WATCHDOG_USEC": "2000000",
                       # LeakSanitizer's check at exit ptraces every thread
                       # from a process of its own, which the filter kills
                       # (and the build installed has no sanitizer).
                       "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0"})
    try:
        assert notify.recv(4096).startswith(b"READY=1\n")
        c = it.tls_sock(s, p["root"])
        c.sendall(b"GET /webhooks/twitter?crc_token=abc HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST.encode())
        assert it.read_response(c)[0] == 200
        body = json.dumps({"for_user_id": USER_ID, "seccomp": True}).encode()
        assert signed_post(c, body) == 200
        c.close()
        assert [json.loads(line) for line in open(out, "rb")] == [json.loads(body)]
        assert notify.recv(4096) == b"WATCHDOG=1"
        s.proc.send_signal(signal.SIGHUP)
        assert it.wait_until(lambda: "SIGHUP: now serving" in s.stderr(), 10), s.stderr()
        assert s.stop() == 0, s.stderr()
        assert "stopped" in s.stderr(), s.stderr()
    finally:
        s.stop()
        notify.close()


# ProtectSystem=strict with ReadWritePaths=, as systemd makes it: every
# mount read-only in a mount namespace of the server's own, but the one
# directory given ($1), bound over itself writable; then the command.
READ_ONLY_BUT = """set -e
mount --make-rprivate /
for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
	case $m in /proc*|/sys*|/dev*) ;; *) mount -o remount,bind,ro "$m" ;; esac
done
mount --bind "$1" "$1"
mount -o remount,bind,rw "$1"
shift
exec "$@"
"""


@test
def the_server_lives_on_a_read_only_system_but_its_state_dir():
    """The unit's ProtectSystem=strict and ReadWritePaths=/var/lib/xwebhook
    (PID 1 here is not systemd: the same read-only bind mounts, made with
    unshare): --output, --pid-file and ACME's files are all in the state
    directory, and the server serves, appends, reloads and stops there."""
    unit = [b for kind, _, b in blocks() if kind == "unit"][0]
    assert "\nProtectSystem=strict\nReadWritePaths=/var/lib/xwebhook\n" in unit, unit
    written = re.findall(r"--(?:output|pid-file) (\S+)", unit)
    assert len(written) == 2 and all(w.startswith("/var/lib/xwebhook/") for w in written), written
    d = tempfile.mkdtemp(prefix="read-only-", dir=it.WORK)
    out, pid = os.path.join(d, "events.jsonl"), os.path.join(d, "xwebhook.pid")
    p = PKI["p"]
    s = it.Server("--cert", p["chain"], "--key", p["key"], "--output", out, "--pid-file", pid,
                  wrap=("unshare", "-m", "sh", "-c", READ_ONLY_BUT, "sh", d))
    try:
        c = it.tls_sock(s, p["root"])
        body = json.dumps({"for_user_id": USER_ID, "read_only": True}).encode()
        assert signed_post(c, body) == 200
        c.close()
        assert [json.loads(line) for line in open(out, "rb")] == [json.loads(body)]
        os.kill(int(open(pid).read()), signal.SIGHUP)
        assert it.wait_until(lambda: "SIGHUP: reopened --output" in s.stderr(), 10), s.stderr()
        # The namespace is read-only indeed: the same write, made in it,
        # fails outside the state directory.
        probe = subprocess.run(["unshare", "-m", "sh", "-c", READ_ONLY_BUT, "sh", d, "sh", "-c",
                                "touch %s/ok && ! touch %s/no 2>/dev/null" % (d, it.WORK)], timeout=30)
        assert probe.returncode == 0
        assert s.stop() == 0, s.stderr()
        assert not os.path.exists(pid), "the pid file outlived the server"
    finally:
        s.stop()


@test
def certbot_deploy_hook_from_the_readme_reloads_and_exits_0():
    """The README's hook exactly as written but for the machine's paths
    (/etc/xwebhook, /var/lib/xwebhook: the test's own directories stand in,
    so a live install is never touched) and the service user (nobody),
    saved under the name that once made it signal itself (deploy/xwebhook).
    It copies the renewed files, the server loads them, and it signals
    nothing else called xwebhook: a bystander server without the pid file
    and a `tail -f | xwebhook fmt` pipeline carry on."""
    if os.geteuid() != 0:
        raise AssertionError("the hook installs files for a user: run as root (./test.sh does, in CI)")
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    hook_text = [b for kind, _, b in blocks() if kind == "hook"][0] + "\n"
    os.chmod(it.WORK, 0o755)  # nobody reads the files below on SIGHUP
    root = tempfile.mkdtemp(prefix="hook-", dir=it.WORK)
    os.chmod(root, 0o755)
    etc, state = os.path.join(root, "etc-xwebhook"), os.path.join(root, "var-lib-xwebhook")
    for path in (etc, state):
        os.makedirs(path)
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    pid_file = os.path.join(state, "xwebhook.pid")
    assert "/etc/xwebhook" in hook_text and "/var/lib/xwebhook/xwebhook.pid" in hook_text, hook_text
    hook_text = (hook_text.replace("/etc/xwebhook", etc).replace("/var/lib/xwebhook", state)
                 .replace("-o xwebhook -g xwebhook", "-o nobody -g " + group))
    d = os.path.join(root, "letsencrypt", "renewal-hooks", "deploy")
    os.makedirs(d)
    hook = os.path.join(d, "xwebhook")
    with open(hook, "w") as f:
        f.write(hook_text)
    os.chmod(hook, 0o755)
    bindir = os.path.join(root, "bin-named-xwebhook")
    os.makedirs(bindir)
    named = os.path.join(bindir, "xwebhook")
    shutil.copy(BIN, named)
    p = PKI["p"]
    live = os.path.join(root, "hook-live")
    os.makedirs(live, exist_ok=True)
    chain, key = it.install_pair(p, etc)
    for f in (chain, key):
        os.chown(f, nobody.pw_uid, nobody.pw_gid)
    renewed = it.leaf(p["dir"], "hook-renewed", "p256", days=45)
    shutil.copy(renewed["chain"], os.path.join(live, "fullchain.pem"))
    shutil.copy(renewed["key"], os.path.join(live, "privkey.pem"))
    saved = it.BIN
    it.BIN = named
    try:
        srv = it.tls_server(chain, key, "--user", "nobody", "--pid-file", pid_file)
        bystander = it.tls_server(p["chain"], p["key"])
    finally:
        it.BIN = saved
    fmt = subprocess.Popen([named, "fmt"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        # The startup line is out: the pid file is there, locked.
        assert open(pid_file).read() == "%d\n" % srv.proc.pid
        r = subprocess.run([hook], capture_output=True, text=True, timeout=30,
                           env={"PATH": os.environ["PATH"], "RENEWED_LINEAGE": live})
        assert r.returncode == 0, "the hook exited %d: %s" % (r.returncode, r.stdout + r.stderr)
        for f, mode in ((chain, 0o644), (key, 0o600)):
            st = os.stat(f)
            assert (st.st_uid, st.st_mode & 0o777) == (nobody.pw_uid, mode), (f, st)
        assert it.wait_until(lambda: "SIGHUP: now serving" in srv.stderr()), srv.stderr()
        sock = it.tls_sock(srv, p["root"])
        pem = ssl.DER_cert_to_PEM_cert(sock.getpeercert(binary_form=True))
        sock.close()
        path = os.path.join(root, "hook-peer.pem")
        with open(path, "w") as f:
            f.write(pem)
        assert it.serial_of(path) == it.serial_of(renewed["leaf"])
        # Nothing else called xwebhook was signalled.
        assert bystander.proc.poll() is None and "SIGHUP" not in bystander.stderr(), bystander.stderr()
        assert fmt.poll() is None, "the hook ended a running `xwebhook fmt`"
        out, err = fmt.communicate(b'{"a":1}', timeout=10)
        assert fmt.returncode == 0 and out == b'{\n  "a": 1\n}\n', (fmt.returncode, out, err)
        # With the server stopped, the pid file is gone and the hook says
        # so, with a failure certbot reports.
        assert srv.stop() == 0
        assert not os.path.exists(pid_file)
        r = subprocess.run([hook], capture_output=True, text=True, timeout=30,
                           env={"PATH": os.environ["PATH"], "RENEWED_LINEAGE": live})
        assert r.returncode == 1 and "xwebhook is not running" in r.stderr, (r.returncode, r.stderr)
        assert bystander.proc.poll() is None and "SIGHUP" not in bystander.stderr(), bystander.stderr()
    finally:
        if fmt.poll() is None:
            fmt.kill()
            fmt.wait()
        srv.stop()
        bystander.stop()


@test
def logrotate_snippet_from_the_readme_works():
    if shutil.which("logrotate") is None or os.geteuid() != 0:
        raise AssertionError("logrotate is not installed (.ci/run installs it)")
    snippet = [b for kind, _, b in blocks() if kind == "logrotate"][0] + "\n"
    nobody = pwd.getpwnam("nobody")
    d = tempfile.mkdtemp(prefix="xwebhook-rotate-", dir=it.WORK)
    os.chmod(it.WORK, 0o755)  # logrotate's su: the user must reach the file
    os.chmod(d, 0o755)
    os.chown(d, nobody.pw_uid, nobody.pw_gid)
    path = os.path.join(d, "events.jsonl")
    # The binary under test is not called xwebhook: a copy that is, so
    # that the snippet's own way of finding it is what is tested.
    bindir = tempfile.mkdtemp(prefix="xwebhook-bin-", dir=it.WORK)
    shutil.copy(it.BIN, os.path.join(bindir, "xwebhook"))
    saved = it.BIN
    it.BIN = os.path.join(bindir, "xwebhook")
    pid_file = os.path.join(d, "xwebhook.pid")
    try:
        srv = it.Server("--user", "nobody", "--output", path, "--pid-file", pid_file)
    finally:
        it.BIN = saved
    # Another program called xwebhook, which the snippet must leave alone.
    bystander = subprocess.Popen([os.path.join(bindir, "xwebhook"), "fmt"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert it.post(srv.conn(), b'{"n":1}')[0].status == 200
        conf = os.path.join(it.WORK, "logrotate.conf")
        assert "/var/lib/xwebhook/xwebhook.pid" in snippet, snippet
        with open(conf, "w") as f:
            group = grp.getgrgid(nobody.pw_gid).gr_name
            f.write(snippet.replace("/var/lib/xwebhook/events.jsonl", path)
                    .replace("/var/lib/xwebhook/xwebhook.pid", pid_file)
                    .replace("xwebhook xwebhook", "nobody " + group))
        p = subprocess.run(["logrotate", "-f", "-s", os.path.join(it.WORK, "logrotate.state"), conf],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stdout + p.stderr
        assert it.wait_until(lambda: "reopened --output" in srv.stderr(), 5), srv.stderr()
        assert it.post(srv.conn(), b'{"n":2}')[0].status == 200
        assert bystander.poll() is None, "the snippet ended another program called xwebhook"
        out, _ = bystander.communicate(b"[]", timeout=10)
        assert bystander.returncode == 0 and out == b"[]\n", (bystander.returncode, out)
    finally:
        if bystander.poll() is None:
            bystander.kill()
            bystander.wait()
        srv.stop()
    assert not os.path.exists(pid_file), "the pid file outlived the server"
    assert open(path, "rb").read() == b'{"n":2}\n'
    rotated = [n for n in os.listdir(d) if n != "events.jsonl"]
    assert len(rotated) == 1, rotated
    assert b'{"n":1}' in open(os.path.join(d, rotated[0]), "rb").read() or rotated[0].endswith(".gz")
    st = os.stat(path)
    assert (st.st_uid, st.st_mode & 0o777) == (nobody.pw_uid, 0o600)
    assert "cannot reopen" not in srv.stderr()


def main():
    os.makedirs(it.PKI, exist_ok=True)
    PKI["p"] = it.make_pki("p256", "p256")
    PKI["api"] = it.leaf(PKI["p"]["dir"], "api", "p256", host="localhost")
    passed, failed = it.run_suite()
    shutil.rmtree(it.WORK, ignore_errors=True)
    it.finish("readme", passed, failed)


if __name__ == "__main__":
    main()
