#!/usr/bin/env bash
# The README's two commands for a fresh machine, exactly as written there,
# as root in a fresh Debian 12 (debootstrap --variant=minbase bookworm):
# the first must build and serve a right CRC, the second (./test.sh) must
# install what the tests need and pass every stage, none skipped. Usage:
#
#     tests/fresh_root.sh OUT_DIR BINARY
#
# BINARY (a build of this tree) computes the CRC answer to expect, and
# serves as the live install that ./test.sh must leave alone. Needs root,
# debootstrap, and unshare, nsenter and ip (util-linux, iproute2). The last line is 'fresh-root: N passed, N failed'.
set -u
cd "$(dirname "$0")/.."
out=$1
bin=$2
root="$out/fresh-root"
passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

cleanup() {
	for g in "${server_pgid:-}" "${live_pgid:-}" "${fmt_pgid:-}"; do
		[ -n "$g" ] && kill -- "-$g" 2>/dev/null
	done
	for m in proc sys dev; do
		umount -R "$root/$m" 2>/dev/null || umount -lR "$root/$m" 2>/dev/null
	done
	if findmnt -rn -o TARGET | grep -qx "$(realpath -m "$root")"; then
		umount "$root" 2>/dev/null || umount -l "$root" 2>/dev/null
	fi
	# Never remove a tree something is still mounted in.
	if ! findmnt -rn -o TARGET | grep -q "^$(realpath -m "$root")/"; then
		rm -rf "$root"
	fi
}
trap cleanup EXIT

# The two commands: the first two sh blocks of the README's section.
commands=$(python3 - <<'EOF'
import re
text = open("README.md").read().split("## Two commands on a fresh machine", 1)[1]
blocks = re.findall(r"```sh\n(.*?)\n```", text, re.S)
print(blocks[0])
print(blocks[1])
EOF
)
cmd1=$(echo "$commands" | sed -n 1p)
cmd2=$(echo "$commands" | sed -n 2p)
echo "README command 1: $cmd1"
echo "README command 2: $cmd2"

# The mirror this machine's apt uses.
mirror=$(sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
[ -z "$mirror" ] && mirror=$(sed -n 's/^deb \([^ ]*\/debian\) .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
[ -z "$mirror" ] && mirror=http://deb.debian.org/debian

cleanup
mkdir -p "$root"
if debootstrap --variant=minbase bookworm "$root" "$mirror" >"$out/debootstrap.log" 2>&1; then
	pass "debootstrap --variant=minbase bookworm"
else
	fail "debootstrap --variant=minbase bookworm"; tail -n 20 "$out/debootstrap.log"
	echo "fresh-root: $passed passed, $failed failed"
	exit 1
fi
# Its own root mount, as a machine has (a chroot's / is otherwise no mount
# point, and unshare -m in it cannot make its mounts private: readme.py's
# read-only system needs that), private, so nothing propagates either way.
mount --bind "$root" "$root"
mount --make-private "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# What every installed Debian has and a minbase root lacks: localhost by
# name (the tests' stand-ins for X and the CA answer as localhost).
[ -s "$root/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    >"$root/etc/hosts"
# This tree as a newcomer has it: the project's files, none of the build.
mkdir -p "$root/root/xwebhook"
tar -c --exclude=tests/out --exclude=tests/unit --exclude=tests/unit-tls --exclude='tests/xwebhook-*' \
    --exclude=tests/fuzz-out --exclude=./xwebhook \
    xwebhook.c Makefile README.md test.sh LICENSE .ci doc tests | tar -x -C "$root/root/xwebhook"

# Command 1 builds, then serves on 0.0.0.0:8080 in the foreground. Its
# build steps run as written with the machine's network (apt-get needs
# it); its last step, the server, runs as written in a network namespace
# of its own, so that its port 8080 is not the machine's: a server of the
# user's there, or another run of these tests, cannot clash with it. The
# CRC is asked for from inside that namespace.
build1=${cmd1% && *}
serve1=${cmd1##* && }
if [ "$build1 && $serve1" != "$cmd1" ] || [ "$build1" = "$cmd1" ]; then
	fail "README command 1 is not BUILD && SERVE: $cmd1"
elif ! chroot "$root" /bin/bash -c "cd /root/xwebhook && $build1" >"$out/fresh-cmd1.log" 2>&1; then
	fail "README command 1 in the fresh root: the build part failed"; tail -n 20 "$out/fresh-cmd1.log"
else
	setsid unshare --net /bin/bash -c 'ip link set lo up && exec chroot "$0" /bin/bash -c "$1"' \
	    "$root" "cd /root/xwebhook && $serve1" >>"$out/fresh-cmd1.log" 2>&1 &
	server_pgid=$!
	in_ns() { nsenter --net="/proc/$server_pgid/ns/net" "$@"; }
	up=0
	for _ in $(seq 600); do
		if in_ns bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080' 2>/dev/null; then up=1; break; fi
		kill -0 "$server_pgid" 2>/dev/null || break
		sleep 0.5
	done
	want=$(TWITTER_CONSUMER_SECRET='your-api-key-secret' "$bin" crc foo)
	got=$(in_ns python3 -c '
import http.client
c = http.client.HTTPConnection("127.0.0.1", 8080, timeout=10)
c.request("GET", "/webhooks/twitter?crc_token=foo&nonce=MTc2OTUxODI5MjkxNA")
r = c.getresponse()
print(r.status, r.read().decode())' 2>&1)
	if [ "$up" = 1 ] && [ "$got" = "200 $want" ]; then
		pass "README command 1 in the fresh root: built, served, and answered a CRC right"
	else
		fail "README command 1 in the fresh root: $got (want 200 $want)"; tail -n 20 "$out/fresh-cmd1.log"
	fi
	kill -- "-$server_pgid" 2>/dev/null
	wait "$server_pgid" 2>/dev/null
	server_pgid=
fi

# A live install, made as the README makes one, on the machine the tests
# run on: the secret, the certificate files, the state directory, the
# unit, a server of its own (on a free loopback port, with --pid-file)
# and a user's `sleep | xwebhook fmt` pipeline. ./test.sh must leave
# every file as it was and signal neither process.
live_files="etc/xwebhook etc/systemd/system/xwebhook.service var/lib/xwebhook usr/local/bin/xwebhook
	etc/logrotate.d/xwebhook etc/letsencrypt/renewal-hooks/deploy/xwebhook"
mkdir -p "$root/etc/xwebhook" "$root/var/lib/xwebhook" "$root/etc/systemd/system" "$root/usr/local/bin" \
    "$root/etc/logrotate.d" "$root/etc/letsencrypt/renewal-hooks/deploy"
printf '/var/lib/xwebhook/events.jsonl {\n}\n' >"$root/etc/logrotate.d/xwebhook"
printf '#!/bin/sh\nexit 0\n' >"$root/etc/letsencrypt/renewal-hooks/deploy/xwebhook"
chmod 755 "$root/etc/letsencrypt/renewal-hooks/deploy/xwebhook"
printf '%s\n' 'live-secret' >"$root/etc/xwebhook/secret"
printf 'the live chain\n' >"$root/etc/xwebhook/fullchain.pem"
printf 'the live key\n' >"$root/etc/xwebhook/privkey.pem"
chmod 600 "$root/etc/xwebhook/secret" "$root/etc/xwebhook/privkey.pem"
printf '[Service]\nExecStart=/usr/local/bin/xwebhook\n' >"$root/etc/systemd/system/xwebhook.service"
cp "$bin" "$root/usr/local/bin/xwebhook"
live_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
setsid chroot "$root" /usr/local/bin/xwebhook --listen "127.0.0.1:$live_port" \
    --secret-file /etc/xwebhook/secret --output /var/lib/xwebhook/events.jsonl \
    --pid-file /var/lib/xwebhook/xwebhook.pid >/dev/null 2>"$out/fresh-live.log" &
live_pgid=$!
setsid chroot "$root" /bin/sh -c 'sleep 100000 | /usr/local/bin/xwebhook fmt' >/dev/null 2>&1 &
fmt_pgid=$!
for _ in $(seq 200); do
	grep -q serving "$out/fresh-live.log" && [ -s "$root/var/lib/xwebhook/xwebhook.pid" ] && break
	sleep 0.1
done
live_state() {
	(cd "$root" && find $live_files -printf '%p %m %u %s %T@\n' | sort &&
	    find $live_files -type f -exec sha256sum {} + | sort)
}
live_before=$(live_state)

# Command 2, as root, with nothing installed but what command 1 did.
# The marker tells that run not to start this stage inside itself.
touch "$root/.xwebhook-fresh-root"
chroot "$root" /bin/bash -c "cd /root/xwebhook && $cmd2" >"$out/fresh-test.log" 2>&1
last=$(tail -n 1 "$out/fresh-test.log")
if echo "$last" | grep -qE '^[0-9]+ passed, 0 failed, 0 skipped$'; then
	pass "README command 2 in the fresh root: $last"
else
	fail "README command 2 in the fresh root: $last"
	grep -E '^(FAIL|skip)' "$out/fresh-test.log" | head -n 40
fi

# The live install, as it was.
if [ "$(live_state)" = "$live_before" ]; then
	pass "a live install on the machine was left as it was (files, modes, owners, contents)"
else
	fail "./test.sh changed a live install:"
	diff <(echo "$live_before") <(live_state) | head -n 20
fi
live_pid=$(cat "$root/var/lib/xwebhook/xwebhook.pid" 2>/dev/null)
live_crc=$(python3 -c '
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
c.request("GET", "/webhooks/twitter?crc_token=foo")
r = c.getresponse()
print(r.status, r.read().decode())' "$live_port" 2>&1)
want_live=$(TWITTER_CONSUMER_SECRET=live-secret "$bin" crc foo)
if kill -0 "$live_pgid" 2>/dev/null && [ "$live_pid" = "$live_pgid" ] && [ "$live_crc" = "200 $want_live" ] &&
    ! grep -q SIGHUP "$out/fresh-live.log" && [ "$(ps -o comm= --sid "$fmt_pgid" | grep -c xwebhook)" = 1 ]; then
	pass "the live install's server and a user's xwebhook fmt were not signalled"
else
	fail "the live install's processes were disturbed: crc '$live_crc', log:"; tail -n 5 "$out/fresh-live.log"
fi
kill -- "-$live_pgid" "-$fmt_pgid" 2>/dev/null
wait "$live_pgid" "$fmt_pgid" 2>/dev/null
live_pgid= fmt_pgid=
echo "fresh-root: $passed passed, $failed failed"
