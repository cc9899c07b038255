# xwebhook is one C file built with one cc command; this only names it.
#   make          build ./xwebhook (plain HTTP, no dependency beyond libc)
#   make TLS=1    build ./xwebhook with HTTPS through BearSSL (libbearssl-dev)
#   make test     run every test (./test.sh)
#   make clean    remove what the build and the tests made

CC ?= cc
CFLAGS ?= -O2
WARNINGS = -Wall -Wextra -Wpedantic

ifeq ($(TLS),1)
TLS_CFLAGS = -DXWEBHOOK_TLS
TLS_LIBS = -lbearssl
endif

# Always rebuilt (it takes a second): `make` after `make TLS=1` must not
# keep the other build.
xwebhook:
	$(CC) $(CFLAGS) $(WARNINGS) $(TLS_CFLAGS) -o $@ xwebhook.c $(LDFLAGS) $(TLS_LIBS)

test:
	./test.sh

clean:
	rm -rf xwebhook tests/unit tests/unit-tls tests/xwebhook-asan tests/xwebhook-tls-asan tests/out

.PHONY: xwebhook test clean
