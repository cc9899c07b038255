#!/usr/bin/env python3
"""The static binaries (make static, make static TLS=1) in an empty root:
only the binary, /etc/passwd and /etc/group for --user, and the
certificate files, as on a VPS whose libc is older than the builder's.
Each is started with chroot and answers a CRC over HTTP (and HTTPS).
Usage:

    static.py PLAIN_STATIC TLS_STATIC

The last line is 'static: N passed, N failed'.
"""
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as it  # noqa: E402  (what every suite shares)

PLAIN, TLS = it.arg(1), it.arg(2)

test = it.test


def is_static(path):
    out = subprocess.run(["readelf", "-l", "-d", path], capture_output=True, text=True).stdout
    return "INTERP" not in out and "NEEDED" not in out


def empty_root(binary):
    root = tempfile.mkdtemp(prefix="xwebhook-root-", dir=it.WORK)
    os.chmod(root, 0o755)
    os.makedirs(os.path.join(root, "etc"))
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    shutil.copy(binary, os.path.join(root, "xwebhook"))
    return root


class ChrootServer(it.Server):
    def __init__(self, root, *args):
        saved = it.BIN
        it.BIN = "/xwebhook"
        try:
            super().__init__(*args, wrap=["chroot", root])
        finally:
            it.BIN = saved


def crc_over(sock, token=b"static"):
    sock.sendall(b"GET /webhooks/twitter?crc_token=%s HTTP/1.1\r\nHost: x\r\n\r\n" % token)
    status, _, body, _ = it.read_response(sock)
    assert status == 200 and json.loads(body)["response_token"] == it.sign(token), (status, body)


@test
def plain_static_binary_serves_from_an_empty_root():
    assert is_static(PLAIN), "not statically linked: " + PLAIN
    root = empty_root(PLAIN)
    assert sorted(os.listdir(root)) == ["etc", "xwebhook"]
    srv = ChrootServer(root, "--user", "nobody")
    try:
        s = srv.sock()
        crc_over(s)
        s.close()
        r, _ = it.post(srv.conn(), b'{"from":"an empty root"}')
        assert r.status == 200
        # chroot(8) execs the server: the same process, now nobody.
        status = open("/proc/%d/status" % srv.proc.pid).read()
        uid = [ln for ln in status.splitlines() if ln.startswith("Uid:")][0].split()[1:]
        assert uid == ["65534"] * 4, uid
    finally:
        srv.stop()
    assert b'"from": "an empty root"' in srv.stdout()


@test
def tls_static_binary_serves_https_from_an_empty_root():
    assert is_static(TLS), "not statically linked: " + TLS
    root = empty_root(TLS)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", os.path.join(root, "key.pem"), "-out", os.path.join(root, "cert.pem"),
                    "-days", "2", "-subj", "/CN=static.test", "-addext", "subjectAltName=DNS:static.test"],
                   check=True, capture_output=True, timeout=60)
    srv = ChrootServer(root, "--cert", "/cert.pem", "--key", "/key.pem", "--user", "nobody")
    try:
        ctx = ssl.create_default_context(cafile=os.path.join(root, "cert.pem"))
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        s = ctx.wrap_socket(raw, server_hostname="static.test")
        assert s.version() == "TLSv1.2", s.version()
        crc_over(s)
        s.close()
    finally:
        srv.stop()


def main():
    it.finish("static", *it.run_suite())


if __name__ == "__main__":
    main()
