#!/usr/bin/env bash
# Every test of xwebhook, in one run:
#   1. the README's build commands, warning-free builds under gcc and clang,
#      and cppcheck and clang --analyze with zero findings;
#   2. unit tests (tests/unit.c includes xwebhook.c), under ASan and UBSan:
#      SHA-256 against FIPS 180-4 (and a million 'a'), HMAC against every
#      RFC 4231 case, base64 against RFC 4648, SHA-1 and HMAC-SHA1 against
#      FIPS 180-4 and RFC 2202, the OAuth signer against X's worked example,
#      through both SHA-256 implementations; and differential checks against
#      Python's hashlib, hmac (every length 0 to 300) and json (2,000
#      random documents);
#   3. integration tests (tests/integration.py) against an ASan+UBSan build
#      of the server, on loopback, with curl, http.client and raw sockets:
#      CRCs against Python's HMAC, every framing error and limit, keep-alive,
#      pipelining, 100-continue, chunked bodies, deadlines, signals; fault
#      tests (tests/fault.py): 500 slowloris clients, floods past
#      --max-conns, 10,000 random and mutated requests, kill -9 while events
#      are written, a full disk; event-path tests (tests/events.py): sinks
#      that stop reading, bodies that never end, one address holding every
#      socket, memory running out; and --forward against a real
#      redis-server and nats-server with JetStream (tests/brokers.py),
#      killed -9 and restarted under load, two instances behind haproxy
#      with one killed -9, and hostile stand-ins for Redis and NATS;
#   4. with BearSSL installed (libbearssl-dev), the same for the TLS build,
#      and HTTPS tests (tests/tls.py) with curl, openssl and Python's ssl
#      (RSA-2048, P-256, P-384; suites and versions refused; resumption;
#      SIGHUP; check against good and bad servers), and X's side
#      (tests/xapi.py): every subcommand against a stand-in for X's API
#      (tests/x_standin.py) that checks OAuth itself, rate-limits, runs real
#      CRCs and misbehaves on demand; login and logout (tests/login.py):
#      OAuth 2.0 with PKCE, a Python client in the browser's place, the
#      token's refresh under a lock, links and secrets; --acme against pebble and a
#      stand-in CA (tests/acme.py); systemd's Type=notify protocol and
#      watchdog against a datagram socket the test binds, with a writer
#      and a loop really stuck (tests/systemd.py); the man page,
#      doc/xwebhook.1, against --help of both builds, through mandoc's lint, and the README's
#      options against --help (tests/doc.py); and every command of the
#      README, as written, in one shell (tests/readme.py);
#   5. the static binaries (make static, with musl) in an empty root;
#   6. each libFuzzer target (tests/fuzz_*.c: request parser, chunked
#      decoder, query decoder, JSON, PEM) for FUZZ_SECONDS (default 20);
#   7. the README's two commands, exactly as written, in a fresh Debian 12
#      root made with debootstrap (tests/fresh_root.sh): the server answers
#      a CRC, and ./test.sh there installs what it needs and passes whole.
# On demand, not here: tests/mutants.sh plants one bug at a time in a copy
# of xwebhook.c and runs the tests that claim to catch it (every mutant must
# be killed); tests/bench.sh measures against nginx and Flask + waitress.
# Any sanitizer report fails the run. The last line is
# "N passed, N failed, N skipped".
#
# The stages are the table in stages() below: each one's name, what it
# needs (a build, a tool, root) and the command that runs it. STAGES=a,b
# runs only those (say STAGES=unit,integration); the install step and the
# final check of ./xwebhook always run. A stage whose needs are missing is
# skipped with one "skip" line, or fails with one "FAIL" line if a build
# it needs does not build.
set -u
cd "$(dirname "$0")"

# The Python suites import tests/harness.py; leave no __pycache__ in the tree.
export PYTHONDONTWRITEBYTECODE=1

passed=0
failed=0
skipped=0
# Each run builds and logs into a directory of its own, so that two runs
# in one tree (say, one started while another goes on) never share a file;
# it is removed when the run passes, and kept, and named, when it fails.
mkdir -p tests/out
out=$(mktemp -d "$PWD/tests/out/run.XXXXXX") && chmod 755 "$out" ||
	{ echo "cannot make a directory in tests/out"; exit 1; }
# The user's own ./xwebhook (perhaps a TLS build) must be the same after
# the run: checked at the end.
user_binary=$(sha256sum xwebhook 2>/dev/null)

pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

# 0. What the tests need, from Debian's packages: installed here when run as
# root on Debian or Ubuntu (a fresh VPS's root shell has no sudo), named
# otherwise. XWEBHOOK_NO_INSTALL=1 skips this.
#   gcc and clang: warning-free builds under both, and the sanitizer
#   runtimes; curl and python3: the real clients the tests drive;
#   libbearssl-dev: the TLS build; openssl: test certificates and s_client;
#   libclang-rt-14-dev: libFuzzer; logrotate: the README's rotation snippet,
#   run as written; strace: the order of write, fdatasync and the 200
#   (and of login's fsync and rename);
#   cppcheck: the analyzer stage; musl-tools: the static binaries;
#   redis-server, redis-tools and nats-server: --forward against real
#   brokers; pebble: --acme against a real ACME server; systemd:
#   systemd-analyze verify, security and syscall-filter on the README's
#   unit (and libseccomp2, its dependency, applies that filter to the
#   server); debootstrap: the README's
#   two commands in a fresh Debian root; iproute2: there, the server of the
#   first in a network namespace of its own (its fixed port 8080 is then
#   not the machine's); mandoc and man-db: the man page's lint, and its
#   rendering by mandoc and by man -l (groff); pyflakes3: every Python
#   suite read for undefined names before any runs; haproxy: the balancer
#   in front of two instances sharing one Redis and NATS (tests/brokers.py),
#   failing over when one is killed; prometheus: its promtool checks every
#   --metrics exposition, and a real prometheus scrapes the listener and is
#   queried back.
needs="ca-certificates gcc clang libc6-dev make curl python3 libbearssl-dev openssl libclang-rt-14-dev
	logrotate strace cppcheck musl-tools procps redis-server redis-tools nats-server pebble systemd
	debootstrap iproute2 mandoc man-db pyflakes3 haproxy prometheus"
missing=""
if command -v dpkg-query >/dev/null; then
	for p in $needs; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
	done
fi
if [ -n "$missing" ] && [ "${XWEBHOOK_NO_INSTALL:-0}" != 1 ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "installing what the tests need:$missing"
		export DEBIAN_FRONTEND=noninteractive
		if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; } \
		    >"$out/apt.log" 2>&1; then
			fail "apt-get install$missing"; tail -n 20 "$out/apt.log"
		fi
	else
		echo "not root, so not installing what the tests need; as root: apt-get install -y$missing"
	fi
fi

# Add "name: N passed, M failed" from a runner's last line to the totals.
count() {
	local line p f
	line=$(grep -E '^[a-z-]+: [0-9]+ passed, [0-9]+ failed$' "$1" | tail -n 1)
	if [ -z "$line" ]; then
		fail "$2: no summary line (crashed?); see $1"
		tail -n 30 "$1"
		return
	fi
	p=$(echo "$line" | sed -E 's/^[a-z-]+: ([0-9]+) passed.*/\1/')
	f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
	passed=$((passed + p))
	failed=$((failed + f))
	echo "$line"
}

# 1. Builds. The README's command first, exactly as written there, in a
# directory of its own: the user's ./xwebhook (perhaps a TLS build) stays.
stage_build() {
	local readme_dir compiler
	readme_dir=$(mktemp -d "${TMPDIR:-/tmp}/xwebhook-readme.XXXXXX")
	cp xwebhook.c "$readme_dir/"
	if (cd "$readme_dir" && cc -O2 -o xwebhook xwebhook.c) 2>"$out/build.log"; then
		pass "cc -O2 -o xwebhook xwebhook.c"
	else
		fail "cc -O2 -o xwebhook xwebhook.c"; cat "$out/build.log"
	fi
	rm -rf "$readme_dir"
	for compiler in gcc clang; do
		if ! command -v "$compiler" >/dev/null; then
			fail "$compiler is not installed (.ci/run installs it)"
			continue
		fi
		if "$compiler" -O2 -Wall -Wextra -Wpedantic -Werror -o "$out/xwebhook-$compiler" xwebhook.c \
		    2>"$out/build-$compiler.log"; then
			pass "$compiler -Wall -Wextra -Wpedantic -Werror"
		else
			fail "$compiler -Wall -Wextra -Wpedantic -Werror"; cat "$out/build-$compiler.log"
		fi
	done
}

# Static analysis, plain and TLS build: zero findings. A suppression is
# inline (cppcheck-suppress) and says why.
stage_analyze() {
	local flags name
	for flags in "" "-DXWEBHOOK_TLS"; do
		name="plain build"; [ -n "$flags" ] && name="TLS build"
		if command -v cppcheck >/dev/null; then
			cppcheck -q --std=c11 --enable=warning,portability --inline-suppr $flags xwebhook.c \
			    >"$out/cppcheck.log" 2>&1
			if grep -qE ': (warning|error|portability)' "$out/cppcheck.log"; then
				fail "cppcheck ($name)"; cat "$out/cppcheck.log"
			else
				pass "cppcheck --enable=warning,portability ($name): no findings"
			fi
		else
			fail "cppcheck is not installed (.ci/run installs it)"
		fi
		if command -v clang >/dev/null; then
			clang --analyze $flags -o /dev/null xwebhook.c >"$out/analyze.log" 2>&1
			if grep -q 'warning:' "$out/analyze.log"; then
				fail "clang --analyze ($name)"; cat "$out/analyze.log"
			else
				pass "clang --analyze ($name): no findings"
			fi
		fi
	done
	# The suites share tests/harness.py: a name one of them lost (an
	# import, a helper moved) fails only when that test runs, so
	# pyflakes reads them all first.
	if /usr/bin/python3 -m pyflakes --version >/dev/null 2>&1; then
		if /usr/bin/python3 -m pyflakes tests/*.py >"$out/pyflakes.log" 2>&1; then
			pass "pyflakes tests/*.py: no findings"
		else
			fail "pyflakes tests/*.py"; cat "$out/pyflakes.log"
		fi
	else
		fail "pyflakes is not installed (.ci/run installs pyflakes3)"
	fi
}

SAN="-g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
TLS="-DXWEBHOOK_TLS"
fixtures=${XWEBHOOK_FIXTURES:-tests/fixtures}

# 2. Unit tests (stage_unit NAME LABEL [-DXWEBHOOK_TLS -lbearssl]).
stage_unit() {
	local name=$1 label=$2; shift 2
	if cc $SAN -Wall -Wextra -Wpedantic -Werror ${1:-} -o "$out/$name" tests/unit.c ${2:-} \
	    2>"$out/$name-build.log"; then
		"$out/$name" >"$out/$name.log" 2>&1
		grep FAIL "$out/$name.log" | head -n 40
		if grep -qE 'Sanitizer|runtime error:' "$out/$name.log"; then
			fail "$label: sanitizer report"; grep -A 20 -E 'Sanitizer|runtime error:' "$out/$name.log" | head -n 40
		fi
		count "$out/$name.log" "$label"
	else
		fail "$label do not build"; cat "$out/$name-build.log"
	fi
}

# Differential: SHA-256, HMAC and the indenter against Python's own.
stage_differential() {
	if cc $SAN -Wall -Wextra -Wpedantic -Werror -o "$out/diff_driver" tests/diff_driver.c 2>"$out/diff-build.log"; then
		python3 tests/differential.py "$out/diff_driver" >"$out/differential.log" 2>&1
		grep -E 'FAIL|Sanitizer|runtime error' "$out/differential.log" | head -n 20
		count "$out/differential.log" "differential tests"
	else
		fail "the differential driver does not build"; cat "$out/diff-build.log"
	fi
}

# 3. and 4. A Python suite (suite NAME LABEL SCRIPT ARGS...): every line
# but its "ok" lines and summary is shown; the summary is counted, named
# NAME (so integration.py on the TLS build counts as
# integration-tls-build).
suite() {
	local name=$1 label=$2 script=$3 base
	shift 3
	base=$(basename "$script" .py)
	python3 "$script" "$@" 2>&1 | sed -u "s/^$base: /$name: /" | tee "$out/$name.log" |
	    grep -vE "^(ok |$name: )"
	count "$out/$name.log" "$label"
}

# The TLS builds: plain, and warning-free under gcc and clang.
stage_tls_build() {
	local compiler
	if cc -O2 $TLS -o "$out/xwebhook-tls" xwebhook.c -lbearssl 2>"$out/build-tls.log"; then
		pass "cc -O2 -DXWEBHOOK_TLS -o xwebhook xwebhook.c -lbearssl"
	else
		fail "cc -O2 -DXWEBHOOK_TLS -o xwebhook xwebhook.c -lbearssl"; cat "$out/build-tls.log"
	fi
	for compiler in gcc clang; do
		command -v "$compiler" >/dev/null || continue
		if "$compiler" -O2 -Wall -Wextra -Wpedantic -Werror $TLS -o "$out/xwebhook-tls-$compiler" \
		    xwebhook.c -lbearssl 2>"$out/build-tls-$compiler.log"; then
			pass "$compiler -Wall -Wextra -Wpedantic -Werror -DXWEBHOOK_TLS"
		else
			fail "$compiler -Wall -Wextra -Wpedantic -Werror -DXWEBHOOK_TLS"
			cat "$out/build-tls-$compiler.log"
		fi
	done
}

# 5. Static binaries (musl-tools), served from an empty root with chroot.
stage_static() {
	if make -s static OUT="$out/xwebhook-static" >"$out/static-build.log" 2>&1 &&
	    make -s static TLS=1 OUT="$out/xwebhook-static-tls" >>"$out/static-build.log" 2>&1; then
		pass "make static; make static TLS=1"
		suite static "static binaries" tests/static.py "$out/xwebhook-static" "$out/xwebhook-static-tls"
	else
		fail "make static"; cat "$out/static-build.log"
	fi
}

# 6. Fuzzing, for FUZZ_SECONDS each (libFuzzer, with ASan and UBSan).
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
have_libfuzzer() {
	printf 'int LLVMFuzzerTestOneInput(const char *d, long n) { (void)d; (void)n; return 0; }\n' \
	    >"$out/probe.c"
	clang -fsanitize=fuzzer -o "$out/probe" "$out/probe.c" >/dev/null 2>&1
}
stage_fuzz() {
	local targets t flags libs
	targets="http chunked query json"
	[ -e /usr/include/bearssl.h ] && targets="$targets pem"
	for t in $targets; do
		flags=""; libs=""
		[ "$t" = pem ] && { flags="-DXWEBHOOK_TLS"; libs="-lbearssl"; }
		if ! clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all $flags \
		    -o "$out/fuzz_$t" "tests/fuzz_$t.c" $libs 2>"$out/fuzz_$t-build.log"; then
			fail "fuzz_$t does not build (libFuzzer comes with libclang-rt-14-dev)"
			cat "$out/fuzz_$t-build.log"
			continue
		fi
		# A scratch copy of the seeds, so the committed corpus stays as it is.
		rm -rf "$out/corpus-$t"
		mkdir -p "$out/corpus-$t" "$out/fuzz-crashes"
		cp tests/corpus/"$t"/* "$out/corpus-$t/"
		if "$out/fuzz_$t" "$out/corpus-$t" -max_total_time="$FUZZ_SECONDS" -timeout=10 \
		    -rss_limit_mb=2048 -artifact_prefix="$out/fuzz-crashes/$t-" >"$out/fuzz_$t.log" 2>&1; then
			pass "fuzz_$t: $(grep -oE 'Done [0-9]+ runs' "$out/fuzz_$t.log" | tail -n 1) in ${FUZZ_SECONDS}s"
		else
			fail "fuzz_$t: reproducer kept in $out/fuzz-crashes/"
			grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$out/fuzz_$t.log" | head -n 10
		fi
	done
}

# 7. The README's two commands, exactly as written, as root in a fresh
# Debian 12 root made with debootstrap (the second is this script, run
# there in full). Not inside that root itself.
stage_fresh_root() {
	tests/fresh_root.sh "$out" "$out/xwebhook-gcc" 2>&1 | tee "$out/fresh-root.log" |
	    grep -vE '^(ok |fresh-root: )'
	count "$out/fresh-root.log" "the README's commands in a fresh root"
}

# What a stage needs (need WHAT): true if it is there. A build is made
# once, the first time a stage needs it; one that does not build fails
# once, and the stages that need it do not run. A missing tool or root
# skips the stage, with one "skip" line for all the stages it skips.
built=" "
said=" "
skip_once() {
	case $said in *" $1 "*) return 1 ;; esac
	said="$said$1 "
	skipped=$((skipped + 1))
	echo "skip $2"
	return 1
}
build_once() {
	local what=$1 label=$2; shift 2
	case $built in *" $what=ok "*) return 0 ;; *" $what=no "*) return 1 ;; esac
	if [ -x "$out/xwebhook-$what" ] || "$@" -o "$out/xwebhook-$what" xwebhook.c $LIBS 2>"$out/$what-build.log"; then
		built="$built$what=ok "
	else
		built="$built$what=no "
		[ -n "$label" ] && { fail "$label"; cat "$out/$what-build.log"; }
		return 1
	fi
}
need() {
	case $1 in
	-) ;;
	asan) LIBS= build_once asan "the ASan+UBSan server does not build" cc $SAN -Wall -Wextra -Wpedantic -Werror ;;
	tls-asan) LIBS=-lbearssl build_once tls-asan "the ASan+UBSan TLS server does not build" \
	    cc $SAN -Wall -Wextra -Wpedantic -Werror $TLS ;;
	# Made by the build and tls-build stages, which say if they fail.
	gcc) LIBS= build_once gcc "" gcc -O2 ;;
	tls) LIBS=-lbearssl build_once tls "" cc -O2 $TLS ;;
	bearssl) { [ -e /usr/include/bearssl.h ] && command -v openssl >/dev/null; } ||
	    skip_once bearssl "TLS build and HTTPS tests: install libbearssl-dev and openssl (apt-get install -y libbearssl-dev openssl)" ;;
	mandoc) command -v mandoc >/dev/null ||
	    { fail "mandoc is not installed (.ci/run installs it): the man page is not checked"; return 1; } ;;
	musl) { command -v musl-gcc >/dev/null && [ -e /usr/include/bearssl.h ] && [ "$(id -u)" = 0 ]; } ||
	    skip_once musl "static binaries: needs musl-tools, libbearssl-dev and root (for chroot)" ;;
	libfuzzer) { command -v clang >/dev/null && [ "$FUZZ_SECONDS" -gt 0 ] && have_libfuzzer; } ||
	    skip_once libfuzzer "fuzzing: needs clang and libclang-rt-14-dev (FUZZ_SECONDS=$FUZZ_SECONDS)" ;;
	not-fresh-root) [ ! -e /.xwebhook-fresh-root ] ||
	    { echo "(this is the fresh root of stage 7: it does not start another)"; return 1; } ;;
	debootstrap) { command -v debootstrap >/dev/null && [ "$(id -u)" = 0 ]; } ||
	    skip_once debootstrap "the README's commands in a fresh root: needs debootstrap and root" ;;
	# A stage for a file another branch adds: not run, and not counted, until it is there.
	file:*) [ -e "${1#file:}" ] ;;
	*) fail "test.sh: stage needs unknown '$1'"; return 1 ;;
	esac
}

# Every stage, in order: its name (for STAGES=), what it needs (in the
# order checked), and its command. The Python suites' arguments: the
# server under test, the fixtures, and the build the suite also drives.
stages() {
	cat <<'EOF'
build                  -                           stage_build
analyze                -                           stage_analyze
unit                   -                           stage_unit unit "unit tests"
differential           -                           stage_differential
integration            asan                        suite integration "integration tests" tests/integration.py "$out/xwebhook-asan" "$fixtures"
fault                  asan                        suite fault "fault tests" tests/fault.py "$out/xwebhook-asan" "$fixtures"
events                 asan,gcc                    suite events "event-path tests" tests/events.py "$out/xwebhook-asan" "$fixtures" "$out/xwebhook-gcc"
brokers                asan                        suite brokers "broker tests" tests/brokers.py "$out/xwebhook-asan" "$fixtures"
tls-build              bearssl                     stage_tls_build
doc                    bearssl,mandoc,gcc,tls      suite doc "man page" tests/doc.py "$out/xwebhook-gcc" "$out/xwebhook-tls"
unit-tls               bearssl                     stage_unit unit-tls "TLS unit tests" "$TLS" -lbearssl
integration-tls-build  bearssl,tls-asan            suite integration-tls-build "integration tests (TLS build)" tests/integration.py "$out/xwebhook-tls-asan" "$fixtures"
tls                    bearssl,tls-asan            suite tls "TLS tests" tests/tls.py "$out/xwebhook-tls-asan" "$fixtures"
metrics                asan,bearssl,tls-asan       suite metrics "metrics tests" tests/metrics.py "$out/xwebhook-asan" "$fixtures" "$out/xwebhook-tls-asan"
xapi                   bearssl,tls-asan,asan       suite xapi "X API tests" tests/xapi.py "$out/xwebhook-tls-asan" "$fixtures" "$out/xwebhook-asan"
login                  bearssl,tls-asan,asan       suite login "login tests" tests/login.py "$out/xwebhook-tls-asan" "$fixtures" "$out/xwebhook-asan"
acme                   bearssl,tls-asan,asan       suite acme "ACME tests" tests/acme.py "$out/xwebhook-tls-asan" "$fixtures" "$out/xwebhook-asan"
systemd                bearssl,tls-asan,asan       suite systemd "systemd notify tests" tests/systemd.py "$out/xwebhook-asan" "$fixtures" "$out/xwebhook-tls-asan"
readme                 bearssl,tls-asan            suite readme "the README's commands" tests/readme.py "$out/xwebhook-tls-asan" "$fixtures"
static                 musl                        stage_static
fuzz                   libfuzzer                   stage_fuzz
fresh-root             not-fresh-root,debootstrap,gcc stage_fresh_root
EOF
}

# STAGES=a,b: run only those.
selected() {
	[ -z "${STAGES:-}" ] && return 0
	case ",$STAGES," in *",$1,"*) return 0 ;; esac
	return 1
}

while read -r -u 3 name needs command; do
	selected "$name" || continue
	ok=1
	for n in ${needs//,/ }; do
		need "$n" || { ok=0; break; }
	done
	[ "$ok" = 1 ] && eval "$command"
done 3< <(stages)

if [ "$(sha256sum xwebhook 2>/dev/null)" = "$user_binary" ]; then
	pass "./xwebhook is as it was before the tests"
else
	fail "the tests changed ./xwebhook"
fi

if [ "$failed" -eq 0 ]; then
	rm -rf "$out"
else
	echo "the builds and logs of this run are in $out"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
