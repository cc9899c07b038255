#!/usr/bin/env python3
"""systemd's Type=notify protocol, spoken by the real server to a datagram
socket the test binds (as systemd binds /run/systemd/notify): READY=1 once
the port answers (and, with HTTPS, a certificate is served), RELOADING=1
with MONOTONIC_USEC then READY=1 around SIGHUP, STOPPING=1 at SIGTERM, and
WATCHDOG=1 at half of WATCHDOG_USEC while every event loop and the event
writer keep waking; a thread really stuck (the writer in a write to a
terminal nobody reads; a loop thread stopped alone through ptrace) stops
the pings. PID 1 here need not be systemd: the socket is the protocol.
Usage:

    systemd.py BINARY FIXTURES_DIR TLS_BINARY

The last line is 'systemd: N passed, N failed'.
"""
import ctypes
import json
import os
import re
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as it  # noqa: E402  (what every suite shares)

TLS = it.arg(3)
test = it.test


class Notify:
    """The socket systemd would listen on: a path under the suite's
    directory, or an abstract name ('@...' in NOTIFY_SOCKET)."""

    def __init__(self, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = "xwebhook-test-%d-%d" % (os.getpid(), it.free_port())
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            path = os.path.join(it.WORK, "notify-%d.sock" % it.free_port())
            self.sock.bind(path)
            self.env = path

    def recv(self, timeout):
        """The next message as a dict (and when it came), or None."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None, None
        at = time.monotonic()
        return dict(line.split("=", 1) for line in data.decode().split("\n")), at

    def next(self, timeout=20, skip_pings=True):
        """The next message that is not a WATCHDOG=1 (unless asked)."""
        deadline = time.monotonic() + timeout
        while True:
            m, at = self.recv(deadline - time.monotonic())
            if m is None or not (skip_pings and m == {"WATCHDOG": "1"}):
                return m, at

    def pings(self, seconds):
        """The times WATCHDOG=1 came in the next seconds; anything else fails."""
        times, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            m, at = self.recv(end - time.monotonic())
            if m is None:
                break
            assert m == {"WATCHDOG": "1"}, m
            times.append(at)
        return times

    def close(self):
        self.sock.close()


def server(n, *args, binary=None, watchdog=None, env=None, **kw):
    e = {"NOTIFY_SOCKET": n.env}
    if watchdog is not None:
        e["WATCHDOG_USEC"] = str(watchdog)
    e.update(env or {})
    old = it.BIN
    it.BIN = binary or old
    try:
        return it.Server(*args, env=e, **kw)
    finally:
        it.BIN = old


def crc_ok(port):
    r, body = it.crc_request(port, "crc_token=abc")
    return r.status == 200 and json.loads(body)["response_token"] == it.sign(b"abc")


def ready(n, srv):
    """READY=1 with MAINPID (the server's) and STATUS naming the URL served,
    and at that moment the port answers a CRC: the port from the message."""
    m, _ = n.next()
    assert m is not None and m.get("READY") == "1", m
    port = int(re.search(r"serving https?://127\.0\.0\.1:(\d+)/", m["STATUS"]).group(1))
    assert m["MAINPID"] == str(srv.proc.pid) and port == srv.port, (m, srv.port)
    return port


@test
def ready_reloading_stopping_over_a_path_socket():
    n = Notify()
    srv = server(n)
    try:
        assert crc_ok(ready(n, srv))
        # SIGHUP: RELOADING=1 with the time of the reload on our clock
        # (CLOCK_MONOTONIC, in microseconds), then READY=1 again.
        before = time.monotonic_ns() // 1000
        srv.proc.send_signal(signal.SIGHUP)
        m, _ = n.next()
        after = time.monotonic_ns() // 1000
        assert m is not None and m.get("RELOADING") == "1", m
        assert before <= int(m["MONOTONIC_USEC"]) <= after, (before, m, after)
        m, _ = n.next()
        assert m == {"READY": "1"}, m
        assert crc_ok(srv.port)
        # No watchdog asked for: nothing more until the stop.
        assert n.recv(1.5)[0] is None
        srv.proc.send_signal(signal.SIGTERM)
        m, _ = n.next()
        assert m == {"STOPPING": "1"}, m
        assert srv.stop() == 0
    finally:
        srv.stop()
        n.close()


@test
def ready_and_stopping_over_an_abstract_socket():
    n = Notify(abstract=True)
    srv = server(n)
    try:
        assert crc_ok(ready(n, srv))
        srv.proc.send_signal(signal.SIGTERM)
        assert n.next()[0] == {"STOPPING": "1"}
        assert srv.stop() == 0
        assert "NOTIFY_SOCKET" not in srv.stderr(), srv.stderr()
    finally:
        srv.stop()
        n.close()


@test
def watchdog_pings_at_half_the_interval_for_its_own_pid_only():
    """WATCHDOG_USEC=2 s: a ping a second, for longer than a quiet writer
    or loop takes to look stuck (WATCHDOG_STALE_MIN_MS, 7 s): both keep
    waking when there is nothing to do. WATCHDOG_PID naming another
    process: the watchdog is not ours, no pings."""
    n = Notify()
    srv = server(n, watchdog=2000000)
    try:
        ready(n, srv)
        times = n.pings(9.5)
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert len(times) >= 8 and all(0.7 < g < 1.4 for g in gaps), gaps
        assert "watchdog" not in srv.stderr(), srv.stderr()
    finally:
        srv.stop()
        n.close()
    n = Notify()
    srv = server(n, watchdog=1000000, env={"WATCHDOG_PID": "1"})
    try:
        ready(n, srv)
        assert n.pings(2) == []
    finally:
        srv.stop()
        n.close()


@test
def a_stdout_that_does_not_read_is_no_wedge():
    """The writer rightly waits up to 5 s (SINK_TIMEOUT_S) for a stdout
    whose reader paused, and answers 503: not a stuck thread, so the pings
    go on through it (the watchdog's floor, WATCHDOG_STALE_MIN_MS)."""
    r, w = os.pipe()
    n = Notify()
    srv = server(n, stdout=w, watchdog=2000000)
    os.close(w)
    answers = []

    def post_until_refused():
        body = json.dumps({"for_user_id": "1", "pad": "x" * (900 * 1024)}).encode()
        while len([a for a in answers if a == 503]) < 2 and len(answers) < 40:
            c = srv.conn(timeout=30)
            answers.append(it.post(c, body)[0].status)
            c.close()
    try:
        ready(n, srv)
        t = threading.Thread(target=post_until_refused)
        t.start()
        times = []
        while t.is_alive():
            times += n.pings(1)
        t.join()
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert answers.count(503) == 2, answers
        assert it.wait_until(lambda: "stdout has taken no event for 5 s" in srv.stderr(), 10), srv.stderr()  # (the log is written apart)
        assert len(times) >= 8 and max(gaps) < 1.4, gaps
        assert "watchdog" not in srv.stderr(), srv.stderr()
    finally:
        srv.stop()
        os.close(r)
        n.close()


def pty_output():
    """A terminal nobody reads, as --output: the writer's write blocks once
    the terminal's buffer is full, as on a disk that hangs."""
    master, slave = os.openpty()
    return master, slave, os.ttyname(slave)


def post_big(port, size):
    """POST a signed event of about size bytes, in the background (its
    answer waits on the writer)."""
    body = json.dumps({"for_user_id": "1", "pad": "x" * size}).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(b"POST /webhooks/twitter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"x-twitter-webhooks-signature: %s\r\nContent-Length: %d\r\n\r\n" % (it.sign(body).encode(), len(body))
              + body)
    return s


def drain(fd, stop):
    while not stop.is_set():
        try:
            if not os.read(fd, 65536):
                break
        except OSError:
            break


def pings_stop_then_resume(n, srv, wedge, unwedge, what):
    """Pings come; wedge(); they stop within the stale time plus an interval
    (and the log says which thread); unwedge(); they come again."""
    assert len(n.pings(2.5)) >= 2
    wedge()
    t0 = time.monotonic()
    last = t0
    while time.monotonic() - t0 < 15:
        m, at = n.recv(3)
        if m is None:
            break
        assert m == {"WATCHDOG": "1"}, m
        last = at
    else:
        raise AssertionError("pings went on for 15 s with %s stuck" % what)
    assert last - t0 < 9, "pings went on for %.1f s" % (last - t0)
    assert it.wait_until(lambda: "watchdog: %s has not woken" % what in srv.stderr(), 5), srv.stderr()
    unwedge()
    m, _ = n.recv(5)
    assert m == {"WATCHDOG": "1"}, m
    assert it.wait_until(lambda: "are awake again" in srv.stderr(), 5), srv.stderr()


@test
def a_writer_stuck_in_a_write_stops_the_watchdog_pings():
    master, slave, tty = pty_output()
    n = Notify()
    srv = server(n, "--output", tty, watchdog=2000000)
    stop = threading.Event()
    s = None
    try:
        ready(n, srv)

        def wedge():
            nonlocal s
            s = post_big(srv.port, 256 * 1024)
            assert it.wait_until(lambda: it.threads_of(srv.proc.pid, "xwh-writer") == 1, 5)

        def unwedge():
            threading.Thread(target=drain, args=(master, stop), daemon=True).start()
        pings_stop_then_resume(n, srv, wedge, unwedge, "the event writer")
    finally:
        stop.set()
        if s is not None:
            s.close()
        srv.stop()
        os.close(master)
        os.close(slave)
        n.close()


libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_DETACH = 0x4206, 0x4207, 17


def thread_ids(pid, name):
    out = []
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
            if f.read().strip() == name:
                out.append(int(tid))
    return out


@test
def one_event_loop_stopped_stops_the_watchdog_pings():
    """One loop thread alone stopped (ptrace's PTRACE_INTERRUPT stops just
    the thread it is given: the accept loop, the writer and every other
    thread run on), as a loop stuck in a bug would be."""
    n = Notify()
    srv = server(n, watchdog=2000000)
    tid = None
    try:
        ready(n, srv)
        assert it.wait_until(lambda: thread_ids(srv.proc.pid, "xwh-loop"), 5)

        def wedge():
            nonlocal tid
            tid = thread_ids(srv.proc.pid, "xwh-loop")[-1]
            assert libc.ptrace(PTRACE_SEIZE, tid, None, None) == 0, os.strerror(ctypes.get_errno())
            assert libc.ptrace(PTRACE_INTERRUPT, tid, None, None) == 0, os.strerror(ctypes.get_errno())
            os.waitpid(tid, 0x40000000)  # __WALL: the thread is in its stop

        def unwedge():
            nonlocal tid
            assert libc.ptrace(PTRACE_DETACH, tid, None, None) == 0, os.strerror(ctypes.get_errno())
            tid = None
        pings_stop_then_resume(n, srv, wedge, unwedge, "an event loop")
        assert crc_ok(srv.port)
    finally:
        if tid is not None:
            libc.ptrace(PTRACE_DETACH, tid, None, None)
        srv.stop()
        n.close()


@test
def a_notify_socket_that_cannot_be_used_is_one_warning_and_the_server_serves():
    cases = [
        ("relative/path", "is neither a path"),
        ("@", "is neither a path"),
        ("/" + "a" * 200, "more than a socket's name holds (107)"),
        ("@" + "b" * 108, "more than a socket's name holds (108)"),
        (os.path.join(it.WORK, "nothing-here", "notify.sock"), "cannot tell systemd READY=1"),
        ("@xwebhook-test-nobody-%d" % os.getpid(), "cannot tell systemd READY=1"),
        ("\x1b[31mred", "is neither a path (/...) nor an abstract name (@...)"),
    ]
    for value, said in cases:
        srv = it.Server(env={"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "1000000"})
        try:
            assert crc_ok(srv.port)
            err = srv.stderr()
            assert said in err and "\x1b" not in err, (value, err)
            assert err.count("NOTIFY_SOCKET") == 1, err
            # The watchdog's pings (one a half second) fail too, without
            # a line each.
            assert not it.wait_until(lambda: srv.stderr().count("NOTIFY_SOCKET") > 1, 1.5), srv.stderr()
            assert srv.stop() == 0
        finally:
            srv.stop()
    n = Notify()
    srv = server(n, watchdog="soon")
    try:
        ready(n, srv)
        assert it.wait_until(lambda: "WATCHDOG_USEC 'soon' is no interval" in srv.stderr(), 10), srv.stderr()  # (the log is written apart)
        assert n.pings(1.2) == []
    finally:
        srv.stop()
        n.close()


@test
def tls_ready_with_the_certificate_given():
    pki = it.make_pki("notify", "p256")
    n = Notify()
    srv = server(n, "--cert", pki["chain"], "--key", pki["key"], binary=TLS)
    try:
        ready(n, srv)
        s = it.tls_sock(srv, pki["root"])
        s.close()
    finally:
        srv.stop()
        n.close()


@test
def acme_ready_only_once_the_first_certificate_is_served():
    import acme
    p = acme.Pebble()
    n = Notify()
    old = it.BIN
    it.BIN = TLS
    srv = None
    try:
        srv = acme.acme_server(p, os.path.join(p.dir, "state"), env={"NOTIFY_SOCKET": n.env})
        m, _ = n.next()
        assert m == {"STATUS": "waiting for the first certificate from the ACME CA"}, m
        m, _ = n.next(60)
        assert m is not None and m.get("READY") == "1", m
        assert it.wait_until(lambda: "ACME: now serving certificate" in srv.stderr(), 10), srv.stderr()  # (the log is written apart)
        status, _, serial = acme.https_crc(srv.port, p.root())
        assert status == 200 and serial == p.issued()[0].lstrip("0")
    finally:
        it.BIN = old
        if srv is not None:
            srv.stop()
        p.close()
        n.close()


def main():
    it.require("systemd", ["openssl", "pebble", "pebble-challtestsrv"],
               "{tool} is not installed (./test.sh installs what the tests need as root)")
    it.finish("systemd", *it.run_suite())


if __name__ == "__main__":
    main()
