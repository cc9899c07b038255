#!/usr/bin/env bash
# Every test of xwebhook, in one run:
#   1. the README's build command, and warning-free builds under gcc and clang;
#   2. unit tests (tests/unit.c includes xwebhook.c), under ASan and UBSan;
#   3. integration tests (tests/integration.py) against an ASan+UBSan build
#      of the server, on loopback, with curl, http.client and raw sockets.
# Any sanitizer report fails the run. The last line is "N passed, N failed".
set -u
cd "$(dirname "$0")"

passed=0
failed=0
out=tests/out
mkdir -p "$out"

pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

# Add "name: N passed, M failed" from a runner's last line to the totals.
count() {
	local line p f
	line=$(grep -E '^[a-z]+: [0-9]+ passed, [0-9]+ failed$' "$1" | tail -n 1)
	if [ -z "$line" ]; then
		fail "$2: no summary line (crashed?); see $1"
		tail -n 30 "$1"
		return
	fi
	p=$(echo "$line" | sed -E 's/^[a-z]+: ([0-9]+) passed.*/\1/')
	f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
	passed=$((passed + p))
	failed=$((failed + f))
	echo "$line"
}

# 1. Builds. The README's command first, exactly as written there.
if cc -O2 -o xwebhook xwebhook.c 2>"$out/build.log"; then
	pass "cc -O2 -o xwebhook xwebhook.c"
else
	fail "cc -O2 -o xwebhook xwebhook.c"; cat "$out/build.log"
fi
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

SAN="-g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# 2. Unit tests.
if cc $SAN -Wall -Wextra -Wpedantic -Werror -o tests/unit tests/unit.c 2>"$out/unit-build.log"; then
	tests/unit >"$out/unit.log" 2>&1
	grep FAIL "$out/unit.log" | head -n 40
	if grep -qE 'Sanitizer|runtime error:' "$out/unit.log"; then
		fail "unit tests: sanitizer report"; grep -A 20 -E 'Sanitizer|runtime error:' "$out/unit.log" | head -n 40
	fi
	count "$out/unit.log" "unit tests"
else
	fail "unit tests do not build"; cat "$out/unit-build.log"
fi

# 3. Integration tests against the sanitized server.
if cc $SAN -Wall -Wextra -Wpedantic -Werror -o tests/xwebhook-asan xwebhook.c 2>"$out/asan-build.log"; then
	fixtures=${XWEBHOOK_FIXTURES:-tests/fixtures}
	python3 tests/integration.py tests/xwebhook-asan "$fixtures" 2>&1 | tee "$out/integration.log" |
	    grep -vE '^(ok |integration: )'
	count "$out/integration.log" "integration tests"
else
	fail "the ASan+UBSan server does not build"; cat "$out/asan-build.log"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
