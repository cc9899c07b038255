#!/usr/bin/env python3
"""For tests/bench.sh: time from start to a pebble-issued certificate being
served, xwebhook --acme against lego, against the same pebble with the same
challenge (tls-alpn-01), each from an empty state directory (a new account
and a new key every time). Usage:

    acme_bench.py TLS_BINARY FIXTURES_DIR RUNS

Prints 'acme.xw SECONDS' and 'acme.lego SECONDS' (medians of RUNS), the
lines bench.sh records.
"""
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import acme  # noqa: E402
import harness as it  # noqa: E402


def xwebhook_once(p, n):
    """From exec to the first HTTPS handshake that gets pebble's chain."""
    state = os.path.join(p.dir, "xw-%d" % n)
    root = p.root()
    t0 = time.monotonic()
    proc = subprocess.Popen([it.BIN, "--quiet", "--listen", "127.0.0.1:%d" % p.tls_port, "--acme", acme.DOMAIN,
                             "--acme-server", p.url(), "--acme-cacert", p.cacert, "--state-dir", state],
                            env={"PATH": os.environ["PATH"], "TWITTER_CONSUMER_SECRET": it.SECRET},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = ssl.create_default_context(cafile=root)
    try:
        while time.monotonic() - t0 < 60:
            try:
                s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", p.tls_port), timeout=5),
                                    server_hostname=acme.DOMAIN)
                s.close()
                return time.monotonic() - t0
            except (OSError, ssl.SSLError):
                time.sleep(0.005)
        raise SystemExit("xwebhook served no certificate within 60 s")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(state, ignore_errors=True)


def lego_once(p, n):
    """lego run: from exec until it has written the certificate (lego only
    obtains it; serving it would come after, so this favours lego)."""
    path = os.path.join(p.dir, "lego-%d" % n)
    t0 = time.monotonic()
    r = subprocess.run(["lego", "--server", p.url(), "--email", "bench@example.test", "--accept-tos", "--domains",
                        acme.DOMAIN, "--tls", "--tls.port", "127.0.0.1:%d" % p.tls_port, "--path", path, "run"],
                       env={"PATH": os.environ["PATH"], "LEGO_CA_CERTIFICATES": p.cacert},
                       capture_output=True, timeout=120)
    took = time.monotonic() - t0
    if r.returncode != 0 or not os.path.exists(os.path.join(path, "certificates", acme.DOMAIN + ".crt")):
        raise SystemExit("lego failed: " + r.stderr.decode()[-2000:])
    shutil.rmtree(path, ignore_errors=True)
    return took


def main():
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    p = acme.Pebble()
    try:
        xw = [xwebhook_once(p, n) for n in range(runs)]
        lego = [lego_once(p, n) for n in range(runs)]
    finally:
        p.close()
        shutil.rmtree(it.WORK, ignore_errors=True)  # harness's directory: no suite's finish() here
    print("acme.xw %.3f" % statistics.median(xw))
    print("acme.lego %.3f" % statistics.median(lego))


if __name__ == "__main__":
    main()
