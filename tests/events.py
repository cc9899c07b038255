#!/usr/bin/env python3
"""The event path under pressure: nothing may stop a CRC. Sinks that stop
reading, bodies that never end, a peer holding every socket, memory that
runs out. Loopback only, each test bounded in time. Usage:

    events.py BINARY FIXTURES_DIR PLAIN_BINARY

BINARY is normally the ASan+UBSan build; PLAIN_BINARY an -O2 build without
sanitizers, for the tests that measure memory (ASan's own heap would hide
what is measured). The last line is 'events: N passed, N failed'.
"""
import json
import os
import pty
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as it  # noqa: E402  (what every suite shares)

PLAIN = it.arg(3)

test = it.test


def event(k, i, pad=3900):
    return b'{"poster":%d,"i":%d,"pad":"%s"}' % (k, i, b"e" * pad)


def posters(srv, n, seconds, results, pad=3900):
    """n keep-alive posters for seconds; results gets (k, i, status, took)."""
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run(k):
        i = 0
        c = srv.conn(timeout=15)
        while time.monotonic() < stop:
            t0 = time.monotonic()
            try:
                r, _ = it.post(c, event(k, i, pad))
                st = r.status
                retry = r.getheader("Retry-After")
                assert st != 503 or retry == "1", "503 without Retry-After"
            except (OSError, it.http.client.HTTPException) as e:
                st = repr(e)
                c.close()
                c = srv.conn(timeout=15)
            with lock:
                results.append((k, i, st, time.monotonic() - t0))
            i += 1
        c.close()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    return threads


def pipe_reader(fd, into):
    def run():
        while True:
            try:
                b = os.read(fd, 65536)
            except OSError:
                return
            if not b:
                return
            into.append(b)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def stalled_stdout(with_output):
    r_fd, w_fd = os.pipe()
    args = ["--output", os.path.join(it.WORK, "stalled-%d.jsonl" % with_output)] if with_output else []
    srv = it.Server(*args, stdout=os.fdopen(w_fd, "wb"))
    return srv, r_fd, (args[1] if with_output else None)


def check_stalled_stdout(with_output):
    srv, r_fd, path = stalled_stdout(with_output)
    results = []
    try:
        probe = it.CrcProbe(srv.port)
        probe.start()
        # 4 KB events: the pipe (64 KiB) fills after a dozen or so, and
        # nobody reads it. Each then waits SINK_TIMEOUT_S and gets 503.
        for t in posters(srv, 6, 7, results):
            t.join()
        worst = probe.finish()
        codes = [st for _, _, st, _ in results]
        assert 200 in codes, "no event was accepted before the pipe filled"
        assert 503 in codes, "the stalled stdout never gave 503: %r" % sorted(set(map(str, codes)))
        assert set(codes) <= {200, 503}, sorted(set(map(str, codes)))
        slow = [took for _, _, st, took in results if st == 503]
        assert max(slow) < 9, "a 503 came after %.1f s, past X's 10 s" % max(slow)
        assert "stdout has taken no event for 5 s" in srv.stderr()
        # The reader comes back: events flow again at once.
        got = []
        pipe_reader(r_fd, got)
        c = srv.conn()
        deadline = time.monotonic() + 10
        while True:
            r, _ = it.post(c, b'{"after":"the stall"}')
            if r.status == 200 or time.monotonic() > deadline:
                break
        assert r.status == 200, r.status
        assert it.wait_until(lambda: "stdout takes events again" in srv.stderr(), 3)
    finally:
        srv.stop()
    accepted = {(k, i) for k, i, st, _ in results if st == 200}
    refused = {(k, i) for k, i, st, _ in results if st == 503}
    text = b"".join(got)
    shown = [json.loads(chunk) for chunk in text.replace(b"}\n{", b"}\n\x00{").split(b"\n\x00")]
    shown_keys = [(o["poster"], o["i"]) for o in shown if "poster" in o]
    assert accepted <= set(shown_keys), "an accepted event is missing from stdout"
    if path:
        lines = open(path, "rb").read().split(b"\n")
        assert lines[-1] == b""
        filed = [(o["poster"], o["i"]) for o in map(json.loads, lines[:-1]) if "poster" in o]
        assert len(filed) == len(set(filed)), "an event is in --output twice"
        assert set(filed) == accepted, "--output holds %d events, %d were accepted; %d of them got 503" % (
            len(filed), len(accepted), len(set(filed) & refused))
    return len(accepted), len(refused), worst


@test
def unread_stdout_gives_503_and_crcs_go_on():
    a, r, worst = check_stalled_stdout(False)
    print("    (stdout unread: %d events 200, %d 503 after 5 s; worst CRC %.1f ms)" % (a, r, worst * 1000))


@test
def unread_stdout_with_output_keeps_503d_events_out_of_the_file():
    a, r, worst = check_stalled_stdout(True)
    print("    (with --output: %d events 200 and in the file, %d 503 and not in it; worst CRC %.1f ms)"
          % (a, r, worst * 1000))


@test
def a_terminal_under_ctrl_s_gives_503_and_crcs_go_on():
    """stdout a terminal whose output is stopped (Ctrl-S, IXON): events
    wait their 5 s and get 503, CRCs are answered, and Ctrl-Q lets it all
    flow again."""
    master, slave = pty.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[0] |= termios.IXON
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    srv = it.Server(stdout=os.fdopen(os.dup(slave), "wb"))
    os.close(slave)
    results, got = [], []
    try:
        os.write(master, b"\x13")  # Ctrl-S
        probe = it.CrcProbe(srv.port)
        probe.start()
        for t in posters(srv, 4, 7, results):
            t.join()
        worst = probe.finish()
        codes = {st for _, _, st, _ in results}
        assert 503 in codes and codes <= {200, 503}, codes
        os.write(master, b"\x11")  # Ctrl-Q
        pipe_reader(master, got)
        r, _ = it.post(srv.conn(), b'{"after":"ctrl-q"}')
        assert r.status == 200, r.status
        assert it.wait_until(lambda: "stdout takes events again" in srv.stderr(), 3)
        assert it.wait_until(lambda: b'"after": "ctrl-q"' in b"".join(got), 3)
    finally:
        srv.stop()
        os.close(master)
    print("    (terminal under Ctrl-S: %d events 503; worst CRC %.1f ms)"
          % (sum(1 for r in results if r[2] == 503), worst * 1000))


@test
def broken_stdout_with_output_lets_stdout_go():
    path = os.path.join(it.WORK, "broken-stdout.jsonl")
    r_fd, w_fd = os.pipe()
    os.close(r_fd)
    srv = it.Server("--output", path, stdout=os.fdopen(w_fd, "wb"))
    try:
        c = srv.conn()
        for i in range(3):
            r, body = it.post(c, b'{"n":%d}' % i)
            assert r.status == 200, (r.status, body)
    finally:
        srv.stop()
    assert open(path, "rb").read() == b'{"n":0}\n{"n":1}\n{"n":2}\n'
    assert srv.stderr().count("events go on to --output") == 1


@test
def unread_stderr_drops_log_lines_and_crcs_go_on():
    e = {k: v for k, v in os.environ.items() if "SECRET" not in k}
    e["TWITTER_CONSUMER_SECRET"] = it.SECRET
    proc = subprocess.Popen([it.BIN, "--listen", "127.0.0.1:0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=e)
    line = ""
    while "serving http" not in line:
        line = proc.stderr.readline().decode()
        assert line, "no startup line"
    port = int(line.split("serving ", 1)[1].split()[0].rsplit(":", 1)[1].split("/", 1)[0])
    got = []
    try:
        probe = it.CrcProbe(port)
        probe.start()
        # A scanner: 20,000 pipelined requests for /wp-login.php, some
        # 2 MB of log lines, into a pipe of 64 KiB that nobody reads.
        req = b"GET /wp-login.php HTTP/1.1\r\nHost: x\r\n\r\n"

        def scan():
            s = socket.create_connection(("127.0.0.1", port), timeout=20)
            reader = threading.Thread(target=lambda: it.recv_all(s, 1 << 30), daemon=True)
            reader.start()
            for _ in range(50):
                s.sendall(req * 100)
            s.shutdown(socket.SHUT_WR)
            reader.join(20)
            s.close()
        scanners = [threading.Thread(target=scan) for _ in range(4)]
        for t in scanners:
            t.start()
        for t in scanners:
            t.join()
        worst = probe.finish()
        reader = pipe_reader(proc.stderr.fileno(), got)
        # Stop only once the queue has drained and told its count, or the
        # shutdown's own lines could be dropped too and counted.
        assert it.wait_until(lambda: b"log line(s) dropped" in b"".join(got), 10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        reader.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = b"".join(got).decode("utf-8", "replace")
    it.check_sanitizers(text)
    dropped = [ln for ln in text.splitlines() if "log line(s) dropped" in ln]
    assert dropped, "no count of dropped lines:\n" + text[-2000:]
    n = sum(int(ln.split(": ")[1].split()[0]) for ln in dropped)
    logged = text.count('"GET /wp-login.php" 404')
    probes = text.count('"GET /webhooks/twitter" 200')
    assert n + logged + probes == 20000 + len(probe.times), \
        "%d + %d logged and %d dropped of 20000 + %d" % (logged, probes, n, len(probe.times))
    print("    (stderr unread: %d lines logged, %d dropped and counted; worst CRC %.1f ms)"
          % (logged, n, worst * 1000))


@test
def chunked_bodies_of_any_size_in_chunks_of_any_size():
    srv = it.Server("--quiet", "--max-body", "2M")
    try:
        it.check_chunked(srv)
    finally:
        srv.stop()


def rusage_peak(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class PlainServer(it.Server):
    """The sanitizer-free build, for memory measured as users see it."""

    def __init__(self, *args, limit_as=None, **kw):
        assert PLAIN, "events.py needs the plain build as its third argument"
        saved = it.BIN
        it.BIN = PLAIN
        try:
            if limit_as:
                kw["preexec"] = lambda: resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))
            super().__init__(*args, **kw)
        finally:
            it.BIN = saved


@test
def thousand_slow_unsigned_megabyte_bodies_stay_under_the_memory_bound():
    srv = PlainServer("--quiet")
    socks, lock = [], threading.Lock()
    body = b"u" * ((1 << 20) - 1)
    head = (b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n"
            b"x-twitter-webhooks-signature: sha256=" + b"A" * 43 + b"=\r\n\r\n")
    outcome = {"held": 0, "refused": 0}
    try:
        def opener(k):
            for _ in range(50):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
                try:
                    s.sendall(head + body)  # all but the last byte
                    key = "held"
                except OSError:
                    key = "refused"  # 503 and closed: the budget is spent
                with lock:
                    socks.append(s)
                    outcome[key] += 1
        threads = [threading.Thread(target=opener, args=(k,)) for k in range(20)]
        probe = it.CrcProbe(srv.port, interval=0.2)
        probe.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1)
        # Twice CRC_BOUND: here the test's own 20 threads push a gigabyte
        # through the same two cores as the server.
        worst = probe.finish(2 * it.CRC_BOUND)
        peak = rusage_peak(srv.proc.pid)
        refused = 0
        for s in socks:
            s.settimeout(0.01)
            try:
                if s.recv(4096).startswith(b"HTTP/1.1 503 "):
                    refused += 1
            except OSError:
                pass
        assert peak < 256 * 1024, "peak RSS %d KiB with 1,000 slow bodies" % peak
        assert refused > 0, "the body budget never refused a body"
        for s in socks:
            s.close()
        socks = []
        # Everything given back: a signed event of a megabyte goes through.
        big = b'{"big":"%s"}' % (b"b" * 1000000)
        assert it.wait_until(lambda: it.post(srv.conn(), big)[0].status == 200, 10)
        print("    (1,000 slow 1 MiB bodies: peak RSS %d KiB, %d refused with 503; worst CRC %.1f ms)"
              % (peak, refused, worst * 1000))
    finally:
        for s in socks:
            s.close()
        srv.stop()


@test
def declared_sizes_cost_nothing_and_a_failed_allocation_refuses_one_request():
    # 1 GiB of address space: four heads declaring 1 GiB each would need
    # 4 GiB if bodies were allocated at their declared size.
    srv = PlainServer("--max-body", "1G", limit_as=1 << 30)
    try:
        held = []
        for _ in range(4):
            s = srv.sock()
            s.sendall(b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n"
                      b"x-twitter-webhooks-signature: sha256=" + b"A" * 43 + b"=\r\n\r\n{\"a\":")
            held.append(s)
        time.sleep(0.5)
        assert srv.proc.poll() is None, "the server exited: " + srv.stderr()[-500:]
        it.timed_crc(srv.port)
        for s in held:
            s.settimeout(0.3)
            try:
                data = s.recv(200)
            except socket.timeout:
                data = None  # still waiting for its body, as it should
            assert data is None, "a body was refused for the size its head declared: %r" % data
            s.close()
        # One body of 1 GiB, sent at full speed: growing its buffer past
        # what the address space holds fails, and only this request fails.
        s = srv.sock(timeout=30)
        s.sendall(b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n"
                  b"x-twitter-webhooks-signature: sha256=" + b"A" * 43 + b"=\r\n\r\n")
        block = b"m" * (1 << 20)
        sent = 0
        try:
            while sent < 1 << 30:
                s.sendall(block)
                sent += len(block)
        except OSError:
            pass
        s.close()
        assert it.wait_until(lambda: "out of memory for the body" in srv.stderr(), 10), srv.stderr()[-500:]
        assert srv.proc.poll() is None, "the server exited: " + srv.stderr()[-500:]
        took = it.timed_crc(srv.port)
        r, _ = it.post(srv.conn(), b'{"after":"oom"}')
        assert r.status == 200
        print("    (4 heads declaring 1 GiB under a 1 GiB address space: served; a 1 GiB body "
              "refused after %d MiB; CRC %.1f ms)" % (sent >> 20, took * 1000))
    finally:
        srv.stop()


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))


@test
def one_peer_holding_every_socket_neither_stops_crcs_nor_busy_senders():
    srv = it.Server("--quiet")  # the default --max-conns 1024
    stop = threading.Event()
    attacker = {"opened": 0, "cut": 0}
    results = []
    try:
        # X: 200 keep-alive connections from 127.0.0.4, each posting.
        x_lock = threading.Lock()

        def x_sender(k):
            conns = []
            for _ in range(25):
                c = it.http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10,
                                                  source_address=("127.0.0.4", 0))
                conns.append(c)
            i = 0
            while not stop.is_set():
                for c in conns:
                    try:
                        r, _ = it.post(c, b'{"x":%d,"i":%d}' % (k, i))
                        st = r.status
                    except (OSError, it.http.client.HTTPException) as e:
                        st = repr(e)
                    with x_lock:
                        results.append(st)
                    i += 1
                time.sleep(0.05)
            for c in conns:
                c.close()
        xs = [threading.Thread(target=x_sender, args=(k,)) for k in range(8)]
        for t in xs:
            t.start()
        time.sleep(1)
        # The attacker: 1,030 sockets from 127.0.0.2, a byte now and then,
        # reconnecting whenever one is cut.
        socks = []

        def attack():
            while not stop.is_set():
                while len(socks) < 1030 and not stop.is_set():
                    try:
                        s = socket.create_connection(("127.0.0.1", srv.port), timeout=2,
                                                     source_address=("127.0.0.2", 0))
                        s.setblocking(False)
                        socks.append(s)
                        attacker["opened"] += 1
                    except OSError:
                        time.sleep(0.01)
                for s in list(socks):
                    try:
                        if s.recv(1) == b"":
                            raise ConnectionResetError
                    except BlockingIOError:
                        try:
                            s.send(b"G")
                        except OSError:
                            socks.remove(s)
                            attacker["cut"] += 1
                            s.close()
                    except OSError:
                        socks.remove(s)
                        attacker["cut"] += 1
                        s.close()
                time.sleep(0.3)
        a = threading.Thread(target=attack)
        a.start()
        time.sleep(3)
        probe = it.CrcProbe(srv.port, interval=0.25, src="127.0.0.3")
        probe.start()
        time.sleep(8)
        worst = probe.finish(1.0)
        answered = len(probe.times)
        stop.set()
        a.join()
        for t in xs:
            t.join()
        for s in socks:
            s.close()
        bad = [st for st in results if st != 200]
        assert not bad, "X's connections got %d failures of %d: %r" % (len(bad), len(results), bad[:5])
        assert attacker["opened"] >= 1030, attacker
        print("    (one peer opened %d sockets, %d cut; %d CRCs from another all 200, worst %.1f ms; "
              "200 busy connections from a third: %d events, all 200)"
              % (attacker["opened"], attacker["cut"], answered, worst * 1000, len(results)))
    finally:
        stop.set()
        srv.stop()


@test
def all_slots_waiting_on_the_writer_refuse_a_newcomer_with_503():
    r_fd, w_fd = os.pipe()
    srv = it.Server("--max-conns", "3", stdout=os.fdopen(w_fd, "wb"))
    try:
        # Fill the pipe, then hold three POSTs waiting on stdout.
        c = srv.conn()
        while True:
            t0 = time.monotonic()
            r, _ = it.post(c, event(0, 0, 30000))
            if r.status != 200 or time.monotonic() - t0 > 1:
                break
        c.close()
        time.sleep(0.5)  # its slot given back
        waiting = []
        for k in range(3):
            s = srv.sock()
            body = event(k, 1)
            s.sendall(b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                      b"x-twitter-webhooks-signature: %s\r\n\r\n%s" % (len(body), it.sign(body).encode(), body))
            waiting.append(s)
            time.sleep(0.3)  # verified, and with the writer
        time.sleep(1.0)  # (they wait 5 s for stdout: time enough on a busy machine)
        s = srv.sock()
        data = it.recv_all(s)
        assert data.startswith(b"HTTP/1.1 503 ") and b"too many connections" in data, data
        for s in waiting:
            assert it.read_response(s)[0] == 503
            s.close()
    finally:
        os.close(r_fd)
        srv.stop()


@test
def output_belongs_to_the_user_and_survives_rotation_and_sighup():
    if os.geteuid() != 0:
        print("    (skipped: needs root for --user)")
        return
    nobody = pwd.getpwnam("nobody")
    d = tempfile.mkdtemp(prefix="xwebhook-user-", dir=it.WORK)
    os.chmod(os.path.dirname(d), 0o755)
    os.chmod(d, 0o700)
    os.chown(d, nobody.pw_uid, nobody.pw_gid)
    path = os.path.join(d, "events.jsonl")
    srv = it.Server("--user", "nobody", "--output", path)
    try:
        st = os.stat(path)
        assert (st.st_uid, st.st_mode & 0o777) == (nobody.pw_uid, 0o600), (st.st_uid, oct(st.st_mode))
        assert it.post(srv.conn(), b'{"before":"rotation"}')[0].status == 200
        for n in range(2):
            os.rename(path, path + ".%d" % n)
            srv.proc.send_signal(signal.SIGHUP)
            assert it.wait_until(lambda: srv.stderr().count("reopened --output") == n + 1, 5), srv.stderr()
            assert it.post(srv.conn(), b'{"after":%d}' % n)[0].status == 200
            st = os.stat(path)
            assert (st.st_uid, st.st_mode & 0o777) == (nobody.pw_uid, 0o600), (st.st_uid, oct(st.st_mode))
        assert "cannot reopen" not in srv.stderr()
    finally:
        srv.stop()
    assert open(path + ".0", "rb").read() == b'{"before":"rotation"}\n'
    assert open(path + ".1", "rb").read() == b'{"after":0}\n'
    assert open(path, "rb").read() == b'{"after":1}\n'


def owned(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid, st.st_mode


@test
def output_through_a_link_or_of_a_third_user_is_refused_as_root():
    # The README keeps --output in /var/lib/xwebhook, a directory of
    # --user's: a link planted there must not make root append to, or give
    # away, a file of root's at the next start, nor at SIGHUP.
    if os.geteuid() != 0:
        raise AssertionError("needs root (--user, and files of root's): run the suite as root, as CI does")
    nobody = pwd.getpwnam("nobody")
    os.chmod(it.WORK, 0o755)
    base = tempfile.mkdtemp(prefix="xwebhook-outlinks-", dir=it.WORK)
    os.chmod(base, 0o755)
    victim = os.path.join(base, "roots-file")
    with open(victim, "w") as f:
        f.write("root's alone\n")
    os.chmod(victim, 0o640)
    was = owned(victim)
    env = {"PATH": os.environ["PATH"], "TWITTER_CONSUMER_SECRET": it.SECRET}

    def users_dir():
        d = tempfile.mkdtemp(prefix="var-lib-", dir=base)
        os.chmod(d, 0o755)
        os.chown(d, nobody.pw_uid, nobody.pw_gid)
        return d, os.path.join(d, "events.jsonl")

    def planted_link(path, target):
        os.symlink(target, path)
        os.lchown(path, nobody.pw_uid, nobody.pw_gid)

    def refused(path, reason, *user):
        try:
            p = subprocess.run([it.BIN, "--listen", "127.0.0.1:0", "--output", path, *user],
                               capture_output=True, timeout=15, env=env)
        except subprocess.TimeoutExpired as e:
            raise AssertionError("no refusal: still running after 15 s; %s now %r: %r"
                                 % (victim, owned(victim), e.stderr))
        err = p.stderr.decode(errors="replace")
        it.check_sanitizers(err)
        lines = err.splitlines()
        assert p.returncode == 1 and len(lines) == 1 and path in lines[0] and reason in lines[0], (path, err)
        assert owned(victim) == was and open(victim).read() == "root's alone\n", owned(victim)

    for user in (["--user", "nobody"], []):
        _, path = users_dir()
        planted_link(path, victim)
        refused(path, "symbolic link", *user)
    _, path = users_dir()
    planted_link(path, os.path.join(base, "made-by-root"))
    refused(path, "symbolic link", "--user", "nobody")
    assert not os.path.lexists(os.path.join(base, "made-by-root"))
    # A link on the path, one level up: lib/sub -> root's directory, which
    # holds a file of the name.
    d, _ = users_dir()
    roots_dir = tempfile.mkdtemp(prefix="roots-dir-", dir=base)
    with open(os.path.join(roots_dir, "events.jsonl"), "w") as f:
        f.write("root's log\n")
    os.chmod(os.path.join(roots_dir, "events.jsonl"), 0o600)
    before = owned(os.path.join(roots_dir, "events.jsonl"))
    planted_link(os.path.join(d, "sub"), roots_dir)
    refused(os.path.join(d, "sub", "events.jsonl"), "a directory on its path, is a symbolic link",
            "--user", "nobody")
    assert owned(os.path.join(roots_dir, "events.jsonl")) == before
    assert open(os.path.join(roots_dir, "events.jsonl")).read() == "root's log\n"
    # A FIFO nobody made: refused at once, not a start that hangs.
    _, path = users_dir()
    os.mkfifo(path, 0o600)
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    refused(path, "neither a regular file nor a device", "--user", "nobody")
    _, path = users_dir()
    os.link(victim, path)  # fs.protected_hardlinks=0 lets nobody do this
    refused(path, "hard links", "--user", "nobody")
    _, path = users_dir()
    with open(path, "w") as f:
        f.write("{}\n")
    os.chown(path, 54321, 54321)
    refused(path, "belongs to uid 54321", "--user", "nobody")
    assert owned(path)[0] == 54321
    # SIGHUP, as root without --user: the link planted after the move is
    # not opened, the old file takes the events.
    _, path = users_dir()
    srv = it.Server("--output", path)
    try:
        os.rename(path, path + ".1")
        planted_link(path, victim)
        srv.proc.send_signal(signal.SIGHUP)
        assert it.wait_until(lambda: "cannot reopen --output" in srv.stderr(), 5), srv.stderr()
        assert "symbolic link" in srv.stderr(), srv.stderr()
        assert it.post(srv.conn(), b'{"after":"sighup"}')[0].status == 200
    finally:
        srv.stop()
    assert open(path + ".1", "rb").read() == b'{"after":"sighup"}\n'
    assert owned(victim) == was and open(victim).read() == "root's alone\n"


@test
def a_deleted_output_file_is_warned_of_once():
    path = os.path.join(it.WORK, "deleted.jsonl")
    srv = it.Server("--output", path)
    try:
        c = srv.conn()
        assert it.post(c, b'{"n":1}')[0].status == 200
        os.unlink(path)
        for n in range(3):
            assert it.post(c, b'{"n":%d}' % (n + 2))[0].status == 200
        assert it.wait_until(lambda: "was deleted while open" in srv.stderr(), 3)
    finally:
        srv.stop()
    assert srv.stderr().count("was deleted while open") == 1


@test
def both_secret_variables_leave_the_environment():
    secret_file = os.path.join(it.WORK, "secret-file")
    with open(secret_file, "w") as f:
        f.write(it.SECRET + "\n")
    for env in ({"TWITTER_CONSUMER_SECRET": "tw-env-secret-1"}, {"CONSUMER_SECRET": "plain-env-secret-2"},
                {"TWITTER_CONSUMER_SECRET": "tw-env-secret-1", "CONSUMER_SECRET": "plain-env-secret-2"}):
        srv = it.Server("--secret-file", secret_file, secret=None, env=env)
        try:
            environ = open("/proc/%d/environ" % srv.proc.pid, "rb").read()
            for v in env.values():
                assert v.encode() not in environ, "%s stayed in /proc/PID/environ" % v
            r, body = it.crc_request(srv.port, "crc_token=abc")
            assert json.loads(body)["response_token"] == it.sign(b"abc")
        finally:
            srv.stop()


# ---- What strace sees: the calls an event costs, and their order ----


# epoll_wait, epoll_pwait and epoll_pwait2 on x86-64; epoll_pwait and
# epoll_pwait2 on arm64: for a kernel whose wchan says nothing.
EPOLL_WAITS = {"x86_64": ("232", "281", "441"), "aarch64": ("22", "441")}


def loops_waiting(pid):
    """Whether every event loop of process pid is blocked in epoll_wait,
    where it goes once it has done all it would do."""
    task = "/proc/%d/task" % pid
    waiting = []
    for tid in os.listdir(task):
        def read(name):
            with open("%s/%s/%s" % (task, tid, name)) as f:
                return f.read().strip()
        try:
            if read("comm") != "xwh-loop":
                continue
            state = read("stat").rsplit(")", 1)[1].split()[0]
            wchan = read("wchan")
            if wchan in ("", "0"):
                wchan = "epoll" if read("syscall").split()[0] in EPOLL_WAITS.get(os.uname().machine, ()) else ""
        except OSError:
            return False
        waiting.append(state == "S" and "epoll" in wchan)
    return bool(waiting) and all(waiting)


@test
def a_kept_alive_event_costs_its_loop_one_recv_and_one_send():
    """Events one after another on a kept-alive connection: each costs one
    recv of its request and one send of its answer on that socket. The
    loop learns of a next request from epoll (level-triggered), as it
    does of a first: a recv after each answer, just in case, finds
    nothing, as a client waits for its answer, and cost 12% of the POST
    rate (tests/bench.sh)."""
    if shutil.which("strace") is None:
        raise AssertionError("strace is not installed (.ci/run installs it)")
    n = 40
    srv = it.Straced(os.path.join(it.WORK, "kept-alive.strace"), ("-e", "trace=recvfrom,sendto,read,write"))
    try:
        c = srv.sock()
        port = c.getsockname()[1]
        pid = srv.traced_pid()
        for i in range(n):
            body = b'{"kept":%d}' % i
            # Head and body in one send (http.client sends them apart).
            c.sendall(b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\nx-twitter-webhooks-signature: %s\r\n\r\n%s"
                      % (len(body), it.sign(body).encode(), body))
            r = it.http.client.HTTPResponse(c)
            r.begin()
            r.read()
            assert r.status == 200, r.status
            # The next request only once the loop is done with this one,
            # so that a recv after the answer finds nothing, as it does
            # for a client that is slower than the loop.
            assert it.wait_until(lambda: loops_waiting(pid), 10), "the loops never went back to epoll_wait"
        c.close()
    finally:
        srv.stop()  # the trace is whole once strace has ended
    recvs = srv.calls("recvfrom", port)
    sends = srv.calls("sendto", port)
    others = srv.calls("read", port) + srv.calls("write", port)
    # n requests, and the close if the server read it before it stopped.
    assert n <= len(recvs) <= n + 1, "%d recvs for %d events:\n%s" % (len(recvs), n, "".join(recvs[:6]))
    assert len(sends) == n, "%d sends for %d events:\n%s" % (len(sends), n, "".join(sends[:6]))
    assert not others, others[:3]


# ---- The order of write, fdatasync and the 200 ----


@test
def group_commit_syncs_output_before_any_200_of_its_batches():
    """Events that come while --output is being synced queue, and go out
    as one batch with one fdatasync for all of it: no 200 of that batch
    may leave before the sync returns. Checked on the order of the calls,
    since kill -9 keeps the page cache."""
    if shutil.which("strace") is None:
        raise AssertionError("strace is not installed (.ci/run installs it)")
    path = os.path.join(it.WORK, "group-commit.jsonl")
    srv = it.Traced(path)
    posters = []
    try:
        posters.append(it.TracedPoster(srv, b'{"gc":0}'))
        # Its line is in the file: the writer now holds in fdatasync for
        # 300 ms, and the next three queue behind it, to go as one batch.
        assert it.wait_until(lambda: os.path.getsize(path) > 0, 10)
        posters += [it.TracedPoster(srv, b'{"gc":%d}' % n) for n in range(1, 4)]
        statuses = [p.result() for p in posters]
        assert statuses == [200] * 4, statuses
    finally:
        srv.stop()
    problems, batches = srv.order({p.port: n for n, p in enumerate(posters)})
    assert not problems, problems
    assert max(batches) >= 2, "no batch of several events to commit together: %r" % batches
    print("    (events per --output write: %r)" % batches)


def main():
    raise_nofile()
    it.finish("events", *it.run_suite())


if __name__ == "__main__":
    main()
