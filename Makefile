# xwebhook is one C file built with one cc command; this only names it.
#   make                 build ./xwebhook (plain HTTP, no dependency beyond libc)
#   make TLS=1           build ./xwebhook with HTTPS through BearSSL (libbearssl-dev)
#   make static          a fully static ./xwebhook (musl-tools): copy it to any
#   make static TLS=1    x86-64 Linux, however old its libc, and run it there
#   make test            run every test (./test.sh)
#   make clean           remove what the build and the tests made
# OUT=PATH writes the binary there instead of ./xwebhook.

CC ?= cc
CFLAGS ?= -O2
WARNINGS = -Wall -Wextra -Wpedantic
OUT ?= xwebhook

ifeq ($(TLS),1)
TLS_CFLAGS = -DXWEBHOOK_TLS
TLS_LIBS = -lbearssl
endif

# Always rebuilt (it takes a second): `make` after `make TLS=1` must not
# keep the other build.
xwebhook:
	$(CC) $(CFLAGS) $(WARNINGS) $(TLS_CFLAGS) -o $(OUT) xwebhook.c $(LDFLAGS) $(TLS_LIBS)

# Static: musl, not glibc, whose static binaries still load NSS modules at
# run time for --user and name lookups. musl-gcc sees only musl's headers:
# BearSSL's own directory (it holds nothing else) is added, and Debian's
# libbearssl.a is named by its path. That archive was built with
# _FORTIFY_SOURCE, which xwebhook.c answers with XWEBHOOK_BEARSSL_FORTIFIED.
BEARSSL_INC ?= /usr/include/bearssl
BEARSSL_A ?= $(firstword $(wildcard /usr/lib/*/libbearssl.a /usr/lib/libbearssl.a))

static:
ifeq ($(TLS),1)
	@test -n "$(BEARSSL_A)" || { echo "make static TLS=1: no libbearssl.a (apt-get install libbearssl-dev)"; exit 1; }
	musl-gcc -static $(CFLAGS) $(WARNINGS) -DXWEBHOOK_TLS -DXWEBHOOK_BEARSSL_FORTIFIED -I$(BEARSSL_INC) \
	    -o $(OUT) xwebhook.c $(BEARSSL_A)
else
	musl-gcc -static $(CFLAGS) $(WARNINGS) -o $(OUT) xwebhook.c
endif

test:
	./test.sh

clean:
	rm -rf xwebhook tests/unit tests/unit-tls tests/xwebhook-asan tests/xwebhook-tls-asan tests/out

.PHONY: xwebhook static test clean
