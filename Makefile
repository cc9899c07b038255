# xwebhook is one C file built with one cc command; this only names it.
#   make          build ./xwebhook
#   make test     run every test (./test.sh)
#   make clean    remove what the build and the tests made

CC ?= cc
CFLAGS ?= -O2
WARNINGS = -Wall -Wextra -Wpedantic

ifeq ($(TLS),1)
$(error HTTPS through BearSSL (make TLS=1) is not built yet; `make` builds the plain-HTTP server)
endif

xwebhook: xwebhook.c
	$(CC) $(CFLAGS) $(WARNINGS) -o $@ xwebhook.c $(LDFLAGS)

test:
	./test.sh

clean:
	rm -rf xwebhook tests/unit tests/xwebhook-asan tests/out

.PHONY: test clean
