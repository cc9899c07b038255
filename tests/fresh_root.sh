#!/usr/bin/env bash
# The README's two commands for a fresh machine, exactly as written there,
# as root in a fresh Debian 12 (debootstrap --variant=minbase bookworm):
# the first must build and serve a right CRC, the second (./test.sh) must
# install what the tests need and pass every stage, none skipped. Usage:
#
#     tests/fresh_root.sh OUT_DIR BINARY
#
# BINARY (a build of this tree) computes the CRC answer to expect. Needs
# root and debootstrap. The last line is 'fresh-root: N passed, N failed'.
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
	[ -n "${server_pgid:-}" ] && kill -- "-$server_pgid" 2>/dev/null
	for m in proc sys dev; do
		umount -R "$root/$m" 2>/dev/null || umount -lR "$root/$m" 2>/dev/null
	done
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
    xwebhook.c Makefile README.md test.sh LICENSE .ci tests | tar -x -C "$root/root/xwebhook"

# Command 1 serves on 0.0.0.0:8080 in the foreground: start it in a
# process group of its own, ask for a CRC from outside, then stop it.
if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then
	fail "README command 1: port 8080 is already taken on this machine"
else
	setsid chroot "$root" /bin/bash -c "cd /root/xwebhook && $cmd1" >"$out/fresh-cmd1.log" 2>&1 &
	server_pgid=$!
	up=0
	for _ in $(seq 600); do
		if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then up=1; break; fi
		kill -0 "$server_pgid" 2>/dev/null || break
		sleep 0.5
	done
	want=$(TWITTER_CONSUMER_SECRET='your-api-key-secret' "$bin" crc foo)
	got=$(python3 -c '
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
echo "fresh-root: $passed passed, $failed failed"
