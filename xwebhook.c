/*
 * xwebhook: receive X (Twitter) webhooks on a server you own.
 *
 * It answers X's challenge-response check (CRC), verifies the signature of
 * every event X posts, and prints each accepted event as indented JSON on
 * stdout (and, with --output, appends it durably to a file).
 *
 * Build:             cc -O2 -o xwebhook xwebhook.c
 * With HTTPS:        cc -O2 -DXWEBHOOK_TLS -o xwebhook xwebhook.c -lbearssl
 *                    (BearSSL 0.6, Debian's libbearssl-dev)
 *
 * Copyright (c) 2026 the xwebhook authors.
 * ISC licence; the full text is in LICENSE.
 *
 * The map. The file reads in the order data flows through it; each
 * section opens with a banner that starts with its tag, so a search for
 * "[TAG]" finds it. Each banner says what the section owns and calls.
 *
 * The server half, in the order a request meets it:
 *   [LIMITS]     every bound, deadline and setting, in one block
 *   [UTIL]       errors, buffers, clocks, queues for slow descriptors
 *   [CRYPTO]     SHA-256, SHA-1, HMAC, base64, constant-time compare
 *   [DER]        a certificate's serial and validity
 *   [JSON]       validate, indent, compact; answers parsed once, looked up
 *   [HTTP]       statuses, request heads, chunked bodies, queries
 *   [TRANSPORT]  struct conn and its states; the plain socket
 *   [TLS]        BearSSL: identity, sessions, ACME's hooks, TLS transport
 *   [OUT]        connections out: URLs, host:port, dialling, trust roots
 *   [SERVER]     shared state, listening, signals, start-up
 *   [SLOTS]      connection slots, shared fairly between peers
 *   [LOOPS]      epoll loops, connection threads, serve()
 *   [WEBHOOK]    a request read and answered: CRC, events, access log
 *   [WRITER]     the event writer, the one owner of every sink
 *   [BROKERS]    Redis Streams and NATS JetStream, the writer's sinks
 *   [METRICS]    --metrics: per-thread counts, /metrics and /healthz
 * The client half:
 *   [CLIENT]     the one HTTP client: request builder, exchange, answer
 *   [CHECK]      check URL: what X checks, from outside
 *   [XAPI]       X's webhook API: register, subscribe, replay, ...
 *   [ACME]       certificates from an ACME CA, on a thread of its own
 * And last:
 *   [SUBCMDS]    crc, sign, fmt
 *   [CLI]        the command line, and main
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <grp.h>
#include <pwd.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifdef XWEBHOOK_TLS
#include <bearssl.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SHA256_X86 1
#include <cpuid.h>
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

#ifdef XWEBHOOK_BEARSSL_FORTIFIED
/* The static TLS build (make static TLS=1) links musl with Debian's
 * libbearssl.a, which was compiled with _FORTIFY_SOURCE and so calls
 * glibc's size-checked copies; musl has none. These check the size the
 * compiler knew, as glibc's do, and abort on an overflow. */
void *__memcpy_chk(void *d, const void *s, size_t n, size_t room);
void *__memmove_chk(void *d, const void *s, size_t n, size_t room);
void *__memset_chk(void *d, int c, size_t n, size_t room);

void *
__memcpy_chk(void *d, const void *s, size_t n, size_t room)
{
	if (n > room)
		abort();
	return memcpy(d, s, n);
}

void *
__memmove_chk(void *d, const void *s, size_t n, size_t room)
{
	if (n > room)
		abort();
	return memmove(d, s, n);
}

void *
__memset_chk(void *d, int c, size_t n, size_t room)
{
	if (n > room)
		abort();
	return memset(d, c, n);
}
#endif

#define XWEBHOOK_VERSION "0.1.0"

/* ------------------------------------------------------------------------
 * [LIMITS] Limits and settings.
 *
 * Owns every bound (a named constant with its reason beside it, and each
 * one tested), every deadline, and every setting's variable with its
 * default. The command line ([CLI]) is the only writer of a setting, before
 * any thread starts; everything else only reads them.
 * ------------------------------------------------------------------------ */

/* (Macros too, for the messages built from them.) */
#define STR_(x) #x
#define STR(x) STR_(x)
#define MAX_REQUEST_LINE_N 8192
#define MAX_HEADER_BLOCK_N 16384
#define MAX_HEADER_FIELDS_N 100
#define MAX_CHUNK_LINE_N 1024

enum {
	/* A request line longer than this gets 414. X's CRC line is ~150 bytes. */
	MAX_REQUEST_LINE = MAX_REQUEST_LINE_N,
	/* Header fields (everything after the request line) past this get 431. */
	MAX_HEADER_BLOCK = MAX_HEADER_BLOCK_N,
	/* More header fields than this get 431; X sends about a dozen. */
	MAX_HEADER_FIELDS = MAX_HEADER_FIELDS_N,
	/* A chunk-size line (size and extensions) longer than this gets 400. */
	MAX_CHUNK_LINE = MAX_CHUNK_LINE_N,
	/* crc_token length in bytes after decoding; X's are 48. */
	MAX_CRC_TOKEN = 255,
	/* An event's type (event_type), with its NUL; longer ones are "other".
	 * X's longest today is 38 ("direct_message_indicate_typing_events"). */
	EVENT_TYPE_MAX = 64,
	/* JSON nesting deeper than this is invalid; X's events nest ~6 deep. */
	JSON_MAX_DEPTH = 256,
	/* The connection's read buffer holds a whole head, and the few bytes
	 * of a pipelined request that may follow it. */
	CONN_BUF = MAX_REQUEST_LINE + MAX_HEADER_BLOCK + 4096,
	/* Connections the kernel holds for accept(); the accept loop takes
	 * them faster than any burst X or a flood could fill this. */
	LISTEN_BACKLOG = 1024,
	/* Bytes a lingering close reads and throws away before giving up. */
	LINGER_BYTES = 256 * 1024,
	/* An idle keep-alive connection keeps a rendered event's buffer up
	 * to this size for the next; a larger one goes back to the system. */
	KEEP_BUFFER = 64 * 1024,
	/* Body bytes a connection may hold before it draws on the shared
	 * budget: X's events (a few KiB) never wait on the budget, and
	 * max_conns of these bound what slow bodies can hold without it. */
	BODY_UNCHARGED = 32 * 1024,
	/* The shared budget for body bytes beyond each connection's first
	 * BODY_UNCHARGED, until the body is verified: at least this, or
	 * two bodies at --max-body. Past it, a body gets 503. */
	BODY_BUDGET_MIN = 64 << 20,
	/* stderr's queue (access log, warnings): lines past it are dropped,
	 * counted, and the count is logged once stderr takes lines again. */
	LOG_QUEUE_LIMIT = 1 << 20,
	/* stdout's queue: events given to stdout and not yet written. */
	STDOUT_QUEUE_LIMIT = 8 << 20,
	/* --metrics: clients served at once. Prometheus needs one; past
	 * this, a newcomer takes the place of the oldest. */
	METRICS_CLIENTS = 16,
	/* Event types each thread counts by name (X has about twenty);
	 * past this, an event counts under "other". */
	METRICS_TYPES = 32,
};

/* Every sink must have taken an event this long after it was verified,
 * or the POST gets 503 and X retries: well under X's 10 s delivery
 * timeout. (A macro: the messages that name it are built from it.) */
#define SINK_TIMEOUT_S 5


/* systemd's watchdog (WATCHDOG_USEC): every event loop and the event
 * writer wake at least every HEARTBEAT_MS, each stamping its heartbeat,
 * and WATCHDOG=1 goes out only while every stamp is younger than half the
 * watchdog's interval, or WATCHDOG_STALE_MIN_MS if that is longer: the
 * writer may rightly wait SINK_TIMEOUT_S for a stdout that does not read. */
enum {
	HEARTBEAT_MS = 1000,
	WATCHDOG_STALE_MIN_MS = (SINK_TIMEOUT_S + 2) * 1000,
};

/* Deadlines, in milliseconds. */
static const int64_t head_timeout = 10000;   /* the head, from its first byte */
static const int64_t body_timeout = 30000;   /* the body, from the end of the head */
static const int64_t idle_timeout = 15000;   /* between keep-alive requests */
static const int64_t write_timeout = 10000;  /* each response */
static const int64_t linger_timeout = 2000;  /* draining before a close */
static const int64_t sink_timeout = SINK_TIMEOUT_S * 1000;
static const int64_t drain_timeout = 8000;   /* requests in flight at shutdown: an event may wait sink_timeout */
static const int64_t metrics_timeout = 5000; /* a --metrics client: its request and our answer */

/* Settings, with their defaults: every one the command line changes is
 * here (parse_commandline sets them, nothing else does), but --forward's
 * brokers, which live with their connection state (see "Brokers"). */

/* The server. */
static const char *listen_spec = "0.0.0.0:8080";
static int listen_given;                   /* --listen was given (--acme's default is :443) */
static int acme_http_fd = -1;              /* --acme-http's listener */
static const char *webhook_path = "/webhooks/twitter";
static const char *output_path;          /* --output: NULL for none */
static const char *secret_file;          /* --secret-file */
static size_t max_body = 1024 * 1024;    /* --max-body: 1 MiB */
static unsigned max_conns = 1024;        /* --max-conns */
static int quiet;                        /* --quiet: no access log */
static const char *run_as;               /* --user: drop to this user */
static const char *pid_path;             /* --pid-file: NULL for none */
static const char *metrics_spec;         /* --metrics ADDR:PORT: NULL for none */

#ifdef XWEBHOOK_TLS
/* HTTPS: a certificate of our own, or one from ACME. */
static const char *cert_path, *key_path;   /* --cert, --key: TLS on */
/* --acme and its options (see "ACME"), which the server's TLS setup also
 * reads, as it answers tls-alpn-01 challenges. */
static const char *acme_domain;          /* --acme */
static const char *acme_server = "https://acme-v02.api.letsencrypt.org/directory";
static const char *acme_cacert;          /* --acme-cacert */
static const char *acme_email;           /* --acme-email */
static const char *acme_http_spec;       /* --acme-http ADDR:PORT */
#define STATE_DIR_DEFAULT "/var/lib/xwebhook"
static const char *state_dir = STATE_DIR_DEFAULT;
#endif

/* The subcommands: check, and X's API. */
static const char *check_connect;   /* --connect ADDR:PORT: dial this instead */
static const char *cacert_path;     /* --cacert FILE: trust these roots (check, X's API) */
static int check_post;              /* --post: also send a signed event */
static const char *api_base = "https://api.x.com";  /* --api */
/* activity add and activity update (the X Activity API): the filter, tag
 * and webhook of a subscription. */
static const char *xaa_user_id, *xaa_keyword, *xaa_direction;  /* --user-id, --keyword, --direction */
static const char *xaa_tag, *xaa_webhook;                      /* --tag, --webhook */

/* The X Activity API's bounds, from X's OpenAPI spec (2.167). */
#define XAA_PAGE_MAX_N 1000
enum {
	XAA_IDS_MAX = 100,       /* ids in one bulk DELETE /2/activity/subscriptions (maxItems) */
	XAA_TAG_MAX = 200,       /* a tag's characters (maxLength) */
	XAA_KEYWORD_MAX = 150,   /* a keyword's characters (Keyword's maxLength) */
	XAA_PAGE_MAX = XAA_PAGE_MAX_N,  /* subscriptions a page of activity list asks for (max_results' max) */
	/* Pages activity list follows: X's largest tier (Partner) holds
	 * 150,000 subscriptions, 150 pages of XAA_PAGE_MAX. */
	XAA_PAGES_MAX = 200,
	/* Words that are not options: activity delete and its ids, and one
	 * more, so that activity delete names its limit itself. */
	SUBCMD_ARGS_MAX = 2 + XAA_IDS_MAX + 1,
};

#ifdef XWEBHOOK_TLS
/* login and logout: OAuth 2.0 user context (see "OAuth 2.0" in [XAPI]). */
#define LOGIN_PORT_DEFAULT_N 8739
enum {
	/* The loopback port of login's redirect URL (--port), which the
	 * app's settings must list as its callback. */
	LOGIN_PORT_DEFAULT = LOGIN_PORT_DEFAULT_N,
	/* How long login waits for the browser's redirect (--wait, in s):
	 * time to sign in and approve; at most LOGIN_WAIT_MAX_S. */
	LOGIN_WAIT_DEFAULT_S = 300,
	LOGIN_WAIT_MAX_S = 3600,
	/* A user token that runs out within this is refreshed before a call
	 * (X's last 2 hours): a call never starts with a dying token. */
	OAUTH2_REFRESH_MARGIN_S = 300,
	/* The stored token file, and a redirect's code or state: X's are
	 * about 100 bytes. */
	OAUTH2_FILE_MAX = 16384,
	OAUTH2_PARAM_MAX = 1024,
	/* PKCE's verifier: 48 random bytes are 64 base64url characters
	 * (RFC 7636 4.1 wants 43 to 128); the state: 16 random bytes. */
	PKCE_VERIFIER_BYTES = 48,
	OAUTH2_STATE_BYTES = 16,
};
#define AUTH_URL_DEFAULT "https://x.com/i/oauth2/authorize"
/* --scopes: by default what X's private events need, and offline.access
 * for a refresh token. */
#define LOGIN_SCOPES_DEFAULT "tweet.read users.read offline.access dm.read like.read mute.read block.read"
static const char *auth_url = AUTH_URL_DEFAULT;         /* --auth-url */
static const char *login_scopes = LOGIN_SCOPES_DEFAULT; /* --scopes */
static const char *login_port;  /* --port: LOGIN_PORT_DEFAULT when NULL */
static const char *login_wait;  /* --wait: LOGIN_WAIT_DEFAULT_S when NULL */
#endif
/* stream link's --tweet-fields, --expansions, --media-fields,
 * --poll-fields, --place-fields, --user-fields, in x_stream_fields'
 * order: NULL where not given. */
enum { X_STREAM_FIELDS = 6 };
static const char *stream_fields[X_STREAM_FIELDS];
/* validate: how long X's list of webhooks is asked after the PUT for the
 * CRC's outcome (PUT's answer says only that X ran it), and how often.
 * X's own CRC gives the webhook 3 s, and one retry after 1.75 s more. */
static const int64_t x_validate_wait_ms = 10000;
static const int64_t x_validate_poll_ms = 2000;

/* Each connection thread's stack: the deepest path (a response, a log
 * line) needs a few KiB; sanitizer builds need much more. Only the pages
 * touched count against memory. */
static const size_t thread_stack = 256 * 1024;

/* ------------------------------------------------------------------------
 * [UTIL] Small utilities.
 *
 * Owns die() and warn() and the log queue behind them, the growable buffer
 * (struct buf, whose rules every growing buffer in the file follows), the
 * monotonic clock and deadlines, the output queues for descriptors whose
 * reader may stall (stdout, stderr), thread names, and the walk of a path
 * without following links that root's file opens use. Calls libc only.
 * ------------------------------------------------------------------------ */

static const char *progname = "xwebhook";

/* Print "xwebhook: message" on stderr and exit 1; a trailing ':' in the
 * format appends strerror(errno), as quark's die() does. */
static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
die(const char *fmt, ...)
{
	int saved = errno;
	va_list ap;
	size_t n = strlen(fmt);

	fprintf(stderr, "%s: ", progname);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (n > 0 && fmt[n - 1] == ':')
		fprintf(stderr, " %s", strerror(saved));
	fputc('\n', stderr);
	exit(1);
}

static int log_queue_line(const char *line, size_t n);

/* Like die() but carries on. */
static void
warn(const char *fmt, ...)
{
	int saved = errno;
	va_list ap;
	size_t n = strlen(fmt);
	char line[1024];
	int len;

	len = snprintf(line, sizeof(line), "%s: ", progname);
	va_start(ap, fmt);
	len += vsnprintf(line + len, sizeof(line) - (size_t)len, fmt, ap);
	va_end(ap);
	if (len > (int)sizeof(line) - 2)
		len = (int)sizeof(line) - 2;
	if (n > 0 && fmt[n - 1] == ':')
		len += snprintf(line + len, sizeof(line) - (size_t)len, " %s", strerror(saved));
	if (len > (int)sizeof(line) - 2)
		len = (int)sizeof(line) - 2;
	line[len++] = '\n';
	/* While the server runs, through the log queue, so that a stderr
	 * nobody reads never stops a thread; else in one write, so that
	 * lines from different threads never mix. */
	if (log_queue_line(line, (size_t)len) < 0 && write(STDERR_FILENO, line, (size_t)len) < 0)
		(void)0;
}

/* Name the calling thread, as top -H and /proc/PID/task/TID/comm show it
 * (at most 15 bytes). Only a help to whoever looks: a failure is ignored. */
static void
thread_name(const char *name)
{
	(void)pthread_setname_np(pthread_self(), name);
}

/* Open the directory named by the first len bytes of path. As root, no
 * symbolic link is followed anywhere on the way: each component is opened
 * from the one before with O_NOFOLLOW, so a link that a user planted on
 * the path (before or while we walk it) cannot lead root elsewhere; give
 * root real paths. Not root, a plain open. -1 with errno (ELOOP or
 * ENOTDIR: a link or a file on the path). */
static int
dir_open_nofollow(const char *path, size_t len)
{
	char comp[PATH_MAX];
	size_t i = 0, k;
	int fd, next, saved;

	if (len >= sizeof(comp)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	if (geteuid() != 0) {
		memcpy(comp, path, len);
		comp[len] = '\0';
		return open(len > 0 ? comp : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	}
	fd = open(len > 0 && path[0] == '/' ? "/" : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	while (fd >= 0) {
		while (i < len && path[i] == '/')
			i++;
		for (k = i; k < len && path[k] != '/'; k++)
			;
		if (k == i)
			break;
		memcpy(comp, path + i, k - i);
		comp[k - i] = '\0';
		next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		saved = errno;
		close(fd);
		errno = saved;
		fd = next;
		i = k;
	}
	return fd;
}

static void *
xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL)
		die("out of memory");
	return p;
}

/* A copy of s (of a credential, say, for one more call: x_call wipes
 * and frees what it is given). */
static char *
xstrdup(const char *s)
{
	char *c = xmalloc(strlen(s) + 1);

	memcpy(c, s, strlen(s) + 1);
	return c;
}

#ifdef XWEBHOOK_TLS
static void *
xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (p == NULL)
		die("out of memory");
	return p;
}
#endif

/* A growable byte buffer; lengths travel with the pointer.
 *
 * Most buffers die when memory runs out (a subcommand has nothing better
 * to do). A connection's buffers are "soft": a failed allocation sets the
 * sticky failed flag, later additions are dropped, and the request that
 * needed the memory is refused; the server carries on (BearSSL's way of
 * reporting, read once afterwards). */
struct buf {
	char *p;
	size_t len, cap;
	unsigned char soft, failed;
};

/* Make b's room exactly cap bytes (cap >= b->len; SIZE_MAX means too
 * much): 0, or -1 when a soft buffer could not grow. The one place a
 * buffer's memory changes size. */
static int
buf_resize(struct buf *b, size_t cap)
{
	char *p = cap == SIZE_MAX ? NULL : realloc(b->p, cap);

	if (p == NULL) {
		if (!b->soft)
			die("out of memory");
		b->failed = 1;
		return -1;
	}
	b->p = p;
	b->cap = cap;
	return 0;
}

/* Room for more bytes, doubling: 0, or -1 when a soft buffer could not
 * grow. */
static int
buf_reserve(struct buf *b, size_t more)
{
	size_t cap = b->cap ? b->cap : 256;

	if (b->failed)
		return -1;
	if (b->len + more <= b->cap)
		return 0;
	if (more > SIZE_MAX / 2 - b->len)
		cap = SIZE_MAX;
	else
		while (cap < b->len + more)
			cap *= 2;
	return buf_resize(b, cap);
}

static void
buf_add(struct buf *b, const void *p, size_t n)
{
	if (n == 0 || buf_reserve(b, n) < 0)
		return;  /* (for n == 0, p and b->p may both be NULL) */
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

static inline void
buf_addc(struct buf *b, char c)
{
	if (b->len == b->cap && buf_reserve(b, 1) < 0)
		return;
	b->p[b->len++] = c;
}

static void
buf_adds(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

/* Empty b for reuse, forgetting an earlier failure. */
static void
buf_clear(struct buf *b)
{
	b->len = 0;
	b->failed = 0;
}

static void
buf_free(struct buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
	b->failed = 0;
}

/* Milliseconds on the monotonic clock, for deadlines and durations. */
static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Write all of p to a descriptor, retrying short writes and EINTR. */
static int
write_all(int fd, const void *p, size_t n)
{
	const char *s = p;

	while (n > 0) {
		ssize_t w = write(fd, s, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		s += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Fill buf with entropy from the kernel; dies if there is none. */
static void
entropy(void *buf, size_t n)
{
	char *p = buf;

	while (n > 0) {
		ssize_t r = getrandom(p, n, 0);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die("getrandom:");
		p += r;
		n -= (size_t)r;
	}
}

/* Read a whole descriptor into b; -1 on a read error. */
static int
read_all(int fd, struct buf *b)
{
	for (;;) {
		ssize_t r;

		buf_reserve(b, 65536);
		r = read(fd, b->p + b->len, b->cap - b->len);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r == 0)
			return 0;
		b->len += (size_t)r;
	}
}

/* A monotonic deadline in ms as the timespec pthread_cond_timedwait
 * wants (its conditions are set to CLOCK_MONOTONIC). */
static struct timespec
deadline_ts(int64_t deadline_ms)
{
	struct timespec ts;

	ts.tv_sec = (time_t)(deadline_ms / 1000);
	ts.tv_nsec = (long)(deadline_ms % 1000) * 1000000;
	return ts;
}

static void
cond_init_monotonic(pthread_cond_t *cv)
{
	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(cv, &ca);
	pthread_condattr_destroy(&ca);
}

/* An output queue: bytes for a descriptor whose reader may stall (stdout
 * and stderr on a pipe nobody reads, a terminal under Ctrl-S). Writers
 * append to memory and never wait; one thread of the queue's own does
 * the blocking writes. Counts are of bytes since the start, so a writer
 * can wait for "its" bytes to be written, with a deadline. */
struct outq {
	int fd;
	size_t limit;             /* bytes held at most (a longer line is dropped) */
	pthread_mutex_t lock;
	pthread_cond_t more;      /* bytes were appended */
	pthread_cond_t progress;  /* the thread finished a write */
	struct buf q;             /* appended, not yet taken by the thread */
	uint64_t taken, done;     /* taken by the thread; its writes finished */
	uint64_t failed_to;       /* done at the end of the last failed write */
	int err;                  /* that write's errno */
	unsigned long dropped;    /* lines dropped while full, not yet told */
	int running;
};

static void *
outq_thread(void *arg)
{
	struct outq *o = arg;
	struct buf w = { 0 }, t;

	thread_name(o->fd == STDERR_FILENO ? "xwh-log" : "xwh-stdout");
	for (;;) {
		unsigned long dropped;
		int r, saved;

		pthread_mutex_lock(&o->lock);
		while (o->q.len == 0 && o->dropped == 0)
			pthread_cond_wait(&o->more, &o->lock);
		t = o->q;
		o->q = w;
		w = t;
		o->taken += w.len;
		dropped = o->dropped;
		o->dropped = 0;
		pthread_mutex_unlock(&o->lock);
		r = write_all(o->fd, w.p, w.len);
		saved = errno;
		if (r == 0 && dropped > 0) {
			char note[160];
			int n = snprintf(note, sizeof(note), "%s: %lu log line(s) dropped: stderr was not "
			    "taking them\n", progname, dropped);

			r = write_all(o->fd, note, (size_t)n);
		}
		pthread_mutex_lock(&o->lock);
		o->done = o->taken;
		if (r < 0) {
			o->err = saved;
			o->failed_to = o->done;
		}
		pthread_cond_broadcast(&o->progress);
		pthread_mutex_unlock(&o->lock);
		w.len = 0;
		if (w.cap > o->limit) {
			buf_free(&w);  /* one large event need not stay */
		}
	}
	return NULL;
}

static void
outq_start(struct outq *o, int fd, size_t limit)
{
	pthread_t t;
	pthread_attr_t a;

	o->fd = fd;
	o->limit = limit;
	pthread_mutex_init(&o->lock, NULL);
	cond_init_monotonic(&o->more);
	cond_init_monotonic(&o->progress);
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&t, &a, outq_thread, o) != 0)
		die("cannot start an output thread");
	pthread_attr_destroy(&a);
	o->running = 1;
}

/* Append one line, or drop it (counted, and told once the queue drains)
 * when the queue holds its limit already. Never waits on the reader. */
static void
outq_line(struct outq *o, const char *p, size_t n)
{
	pthread_mutex_lock(&o->lock);
	if (o->q.len + n > o->limit)
		o->dropped++;
	else
		buf_add(&o->q, p, n);
	pthread_cond_signal(&o->more);
	pthread_mutex_unlock(&o->lock);
}

/* Append n bytes and wait until deadline for them to be written: 0, -1
 * with errno when the write failed, or -2 when the deadline passed first,
 * and then the part the thread had not taken yet is withdrawn (what it
 * took goes out whenever the reader takes it). A full queue is waited on
 * too; an empty one takes any size. */
static int
outq_write(struct outq *o, const char *p, size_t n, int64_t deadline)
{
	struct timespec until = deadline_ts(deadline);
	uint64_t start, end;
	int r;

	pthread_mutex_lock(&o->lock);
	while (o->q.len > 0 && o->q.len + n > o->limit)
		if (pthread_cond_timedwait(&o->progress, &o->lock, &until) == ETIMEDOUT)
			break;
	if (o->q.len > 0 && o->q.len + n > o->limit) {
		pthread_mutex_unlock(&o->lock);
		return -2;
	}
	start = o->taken + o->q.len;
	end = start + n;
	buf_add(&o->q, p, n);
	pthread_cond_signal(&o->more);
	while (o->done < end)
		if (pthread_cond_timedwait(&o->progress, &o->lock, &until) == ETIMEDOUT)
			break;
	if (o->done >= end) {
		r = o->failed_to > start ? -1 : 0;
		errno = o->err;
	} else {
		if (o->taken <= start)
			o->q.len = (size_t)(start - o->taken);
		r = -2;
	}
	pthread_mutex_unlock(&o->lock);
	return r;
}

/* Wait until deadline for everything queued to be written. */
static void
outq_flush(struct outq *o, int64_t deadline)
{
	struct timespec until = deadline_ts(deadline);

	if (!o->running)
		return;
	pthread_mutex_lock(&o->lock);
	while (o->done < o->taken + o->q.len || o->dropped > 0)
		if (pthread_cond_timedwait(&o->progress, &o->lock, &until) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&o->lock);
}

/* stderr while the server runs: the access log, warnings. */
static struct outq log_queue;

static int
log_queue_line(const char *line, size_t n)
{
	if (!log_queue.running)
		return -1;
	outq_line(&log_queue, line, n);
	return 0;
}

/* ------------------------------------------------------------------------
 * [CRYPTO] SHA-256 and SHA-1 (FIPS 180-4), HMAC over each (RFC 2104),
 * base64 (RFC 4648) and a constant-time comparison. SHA-1 is here for
 * OAuth 1.0a's HMAC-SHA1 only (X's user-context calls), never for anything
 * we verify. Calls [UTIL].
 * ------------------------------------------------------------------------ */

/* A hash in progress: SHA-256 or SHA-1, which share their 64-byte
 * blocks, padding and big-endian length, and differ in the block
 * function and the state's size. */
struct digest {
	uint32_t h[8];
	uint64_t bytes;          /* message length so far */
	unsigned char block[64];
	size_t fill;             /* bytes waiting in block */
	void (*blocks)(uint32_t h[8], const unsigned char *p, size_t n);
	unsigned words;          /* of h in the result: 8, or 5 for SHA-1 */
};

static const uint32_t sha256_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
	0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
	0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
	0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
	0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
	0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
	0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
	0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
	0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline uint32_t
ror32(uint32_t x, unsigned n)
{
	return (x >> n) | (x << (32 - n));
}

/* Process one 64-byte block into the state, in portable C. */
static void
sha256_block(uint32_t h[8], const unsigned char *p)
{
	uint32_t w[64], a, b, c, d, e, f, g, k, t1, t2;
	int i;

	for (i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		    (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (i = 16; i < 64; i++) {
		uint32_t s0 = ror32(w[i - 15], 7) ^ ror32(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ror32(w[i - 2], 17) ^ ror32(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = h[0]; b = h[1]; c = h[2]; d = h[3];
	e = h[4]; f = h[5]; g = h[6]; k = h[7];
	for (i = 0; i < 64; i++) {
		t1 = k + (ror32(e, 6) ^ ror32(e, 11) ^ ror32(e, 25)) +
		    ((e & f) ^ (~e & g)) + sha256_k[i] + w[i];
		t2 = (ror32(a, 2) ^ ror32(a, 13) ^ ror32(a, 22)) +
		    ((a & b) ^ (a & c) ^ (b & c));
		k = g; g = f; f = e; e = d + t1;
		d = c; c = b; b = a; a = t1 + t2;
	}
	h[0] += a; h[1] += b; h[2] += c; h[3] += d;
	h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

static void
sha256_blocks_c(uint32_t h[8], const unsigned char *p, size_t n)
{
	for (; n > 0; n--, p += 64)
		sha256_block(h, p);
}

#ifdef SHA256_X86
/* The same with the x86 SHA extensions (sha256rnds2 does two rounds,
 * sha256msg1 and sha256msg2 the message schedule): about five times the
 * speed, which matters for signatures over whole event bodies. */
/* The instructions keep the state as ABEF and CDGH: from h[8] and back. */
__attribute__((target("sha,sse4.1,ssse3")))
static inline void
sha256_x86_load(const uint32_t h[8], __m128i *abef, __m128i *cdgh)
{
	__m128i t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(const void *)&h[0]), 0xb1);

	*cdgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(const void *)&h[4]), 0x1b);
	*abef = _mm_alignr_epi8(t, *cdgh, 8);
	*cdgh = _mm_blend_epi16(*cdgh, t, 0xf0);
}

__attribute__((target("sha,sse4.1,ssse3")))
static inline void
sha256_x86_store(uint32_t h[8], __m128i abef, __m128i cdgh)
{
	__m128i t = _mm_shuffle_epi32(abef, 0x1b);

	cdgh = _mm_shuffle_epi32(cdgh, 0xb1);
	_mm_storeu_si128((__m128i *)(void *)&h[0], _mm_blend_epi16(t, cdgh, 0xf0));
	_mm_storeu_si128((__m128i *)(void *)&h[4], _mm_alignr_epi8(cdgh, t, 8));
}

/* Words 4g..4g+3 of the message schedule for the block at p, given the
 * groups before g in w: the block's own (big-endian) for g < 4. */
__attribute__((target("sha,sse4.1,ssse3")))
static inline __m128i
sha256_x86_words(const __m128i *w, int g, const unsigned char *p)
{
	const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);

	if (g < 4)
		return _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(const void *)(p + 16 * g)), swap);
	return _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32(w[g - 4], w[g - 3]),
	    _mm_alignr_epi8(w[g - 1], w[g - 2], 4)), w[g - 1]);
}

__attribute__((target("sha,sse4.1,ssse3")))
static void
sha256_blocks_x86(uint32_t h[8], const unsigned char *p, size_t n)
{
	__m128i abef, cdgh;

	sha256_x86_load(h, &abef, &cdgh);
	for (; n > 0; n--, p += 64) {
		__m128i w[16], save_abef = abef, save_cdgh = cdgh, m;
		int g;

		/* Sixteen groups of four rounds; w[g] holds words 4g..4g+3. */
		for (g = 0; g < 16; g++) {
			w[g] = sha256_x86_words(w, g, p);
			m = _mm_add_epi32(w[g], _mm_loadu_si128((const __m128i *)(const void *)&sha256_k[4 * g]));
			cdgh = _mm_sha256rnds2_epu32(cdgh, abef, m);
			abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(m, 0x0e));
		}
		abef = _mm_add_epi32(abef, save_abef);
		cdgh = _mm_add_epi32(cdgh, save_cdgh);
	}
	sha256_x86_store(h, abef, cdgh);
}

/* Two states over the same blocks (the HMAC's inner hash and the body's
 * own, for --forward): one message schedule, and the two chains of
 * rounds interleaved, so that each hides the other's latency: on the
 * machine it was measured on, the pair over 2 KB took 2.9 us, one hash
 * alone 2.9 us and the two apart 5.8 us. */
__attribute__((target("sha,sse4.1,ssse3")))
static void
sha256_blocks2_x86(uint32_t h[8], uint32_t h2[8], const unsigned char *p, size_t n)
{
	__m128i abef, cdgh, abef2, cdgh2;

	sha256_x86_load(h, &abef, &cdgh);
	sha256_x86_load(h2, &abef2, &cdgh2);
	for (; n > 0; n--, p += 64) {
		__m128i w[16], save_abef = abef, save_cdgh = cdgh, save_abef2 = abef2, save_cdgh2 = cdgh2, m, m2;
		int g;

		for (g = 0; g < 16; g++) {
			w[g] = sha256_x86_words(w, g, p);
			m = _mm_add_epi32(w[g], _mm_loadu_si128((const __m128i *)(const void *)&sha256_k[4 * g]));
			m2 = _mm_shuffle_epi32(m, 0x0e);
			cdgh = _mm_sha256rnds2_epu32(cdgh, abef, m);
			cdgh2 = _mm_sha256rnds2_epu32(cdgh2, abef2, m);
			abef = _mm_sha256rnds2_epu32(abef, cdgh, m2);
			abef2 = _mm_sha256rnds2_epu32(abef2, cdgh2, m2);
		}
		abef = _mm_add_epi32(abef, save_abef);
		cdgh = _mm_add_epi32(cdgh, save_cdgh);
		abef2 = _mm_add_epi32(abef2, save_abef2);
		cdgh2 = _mm_add_epi32(cdgh2, save_cdgh2);
	}
	sha256_x86_store(h, abef, cdgh);
	sha256_x86_store(h2, abef2, cdgh2);
}

/* Does this CPU have the SHA extensions (and SSSE3 and SSE4.1)? */
static int
cpu_has_sha(void)
{
	unsigned a, b, c, d;

	if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 9)) || !(c & (1u << 19)))
		return 0;
	if (__get_cpuid_max(0, NULL) < 7)
		return 0;
	__cpuid_count(7, 0, a, b, c, d);
	return (b & (1u << 29)) != 0;
}
#endif

static void
sha256_blocks2_c(uint32_t h[8], uint32_t h2[8], const unsigned char *p, size_t n)
{
	sha256_blocks_c(h, p, n);
	sha256_blocks_c(h2, p, n);
}

/* The block functions in use: sha256_select() picks the fastest this CPU
 * runs. Set once at start, before any thread. */
static void (*sha256_blocks)(uint32_t h[8], const unsigned char *p, size_t n) = sha256_blocks_c;
static void (*sha256_blocks2)(uint32_t h[8], uint32_t h2[8], const unsigned char *p, size_t n) = sha256_blocks2_c;

static void
sha256_select(void)
{
#ifdef SHA256_X86
	if (cpu_has_sha()) {
		sha256_blocks = sha256_blocks_x86;
		sha256_blocks2 = sha256_blocks2_x86;
	}
#endif
}

static void
sha256_init(struct digest *s)
{
	static const uint32_t iv[8] = {
		0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
	};

	memcpy(s->h, iv, sizeof(iv));
	s->bytes = 0;
	s->fill = 0;
	s->blocks = sha256_blocks;
	s->words = 8;
}

#define ROL32(x, n) ((x) << (n) | (x) >> (32 - (n)))

/* SHA-1's compression, FIPS 180-4 section 6.1.2, on n blocks. */
static void
sha1_blocks(uint32_t h[8], const unsigned char *p, size_t n)
{
	for (; n > 0; n--, p += 64) {
		uint32_t w[80], a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
		int t;

		for (t = 0; t < 16; t++)
			w[t] = (uint32_t)p[4 * t] << 24 | (uint32_t)p[4 * t + 1] << 16 | (uint32_t)p[4 * t + 2] << 8 |
			    p[4 * t + 3];
		for (; t < 80; t++)
			w[t] = ROL32(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
		for (t = 0; t < 80; t++) {
			uint32_t f, k, tmp;

			if (t < 20) {
				f = (b & c) | (~b & d);
				k = 0x5a827999;
			} else if (t < 40) {
				f = b ^ c ^ d;
				k = 0x6ed9eba1;
			} else if (t < 60) {
				f = (b & c) | (b & d) | (c & d);
				k = 0x8f1bbcdc;
			} else {
				f = b ^ c ^ d;
				k = 0xca62c1d6;
			}
			tmp = ROL32(a, 5) + f + e + k + w[t];
			e = d;
			d = c;
			c = ROL32(b, 30);
			b = a;
			a = tmp;
		}
		h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
	}
}

static void
sha1_init(struct digest *s)
{
	static const uint32_t iv[5] = { 0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0 };

	memset(s->h, 0, sizeof(s->h));
	memcpy(s->h, iv, sizeof(iv));
	s->bytes = 0;
	s->fill = 0;
	s->blocks = sha1_blocks;
	s->words = 5;
}

static void
digest_update(struct digest *s, const void *data, size_t n)
{
	const unsigned char *p = data;

	s->bytes += n;
	if (s->fill > 0) {
		size_t take = 64 - s->fill < n ? 64 - s->fill : n;

		memcpy(s->block + s->fill, p, take);
		s->fill += take;
		p += take;
		n -= take;
		if (s->fill < 64)
			return;
		s->blocks(s->h, s->block, 1);
		s->fill = 0;
	}
	if (n >= 64) {
		s->blocks(s->h, p, n / 64);
		p += n / 64 * 64;
		n %= 64;
	}
	if (n > 0)  /* an empty message may come as a NULL pointer */
		memcpy(s->block, p, n);
	s->fill = n;
}

/* The same bytes into two SHA-256 digests at once, through
 * sha256_blocks2 where both stand at a block boundary. */
static void
digest_update2(struct digest *a, struct digest *b, const void *data, size_t n)
{
	const unsigned char *p = data;
	size_t whole = n / 64 * 64;

	if (a->fill != 0 || b->fill != 0 || a->blocks != sha256_blocks || b->blocks != sha256_blocks)
		whole = 0;
	if (whole > 0) {
		sha256_blocks2(a->h, b->h, p, n / 64);
		a->bytes += whole;
		b->bytes += whole;
	}
	digest_update(a, p + whole, n - whole);
	digest_update(b, p + whole, n - whole);
}

static void
digest_final(struct digest *s, unsigned char *out)
{
	uint64_t bits = s->bytes * 8;
	int i;

	s->block[s->fill++] = 0x80;
	if (s->fill > 56) {
		memset(s->block + s->fill, 0, 64 - s->fill);
		s->blocks(s->h, s->block, 1);
		s->fill = 0;
	}
	memset(s->block + s->fill, 0, 56 - s->fill);
	for (i = 0; i < 8; i++)
		s->block[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
	s->blocks(s->h, s->block, 1);
	for (i = 0; i < (int)s->words; i++) {
		out[4 * i] = (unsigned char)(s->h[i] >> 24);
		out[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
		out[4 * i + 2] = (unsigned char)(s->h[i] >> 8);
		out[4 * i + 3] = (unsigned char)s->h[i];
	}
}

/* An HMAC key, kept as the hash states after the inner and outer pads, so
 * that each HMAC costs two compressions fewer. */
struct hmac_key {
	struct digest inner, outer;
};

/* The key for HMAC over the hash that init starts (both have 64-byte
 * blocks). */
static void
hmac_key_init_hash(struct hmac_key *k, void (*init)(struct digest *), const void *key, size_t n)
{
	unsigned char block[64], pad[64];
	int i;

	memset(block, 0, sizeof(block));
	if (n > 64) {
		struct digest s;

		init(&s);
		digest_update(&s, key, n);
		digest_final(&s, block);
	} else if (n > 0) {
		memcpy(block, key, n);
	}
	for (i = 0; i < 64; i++)
		pad[i] = block[i] ^ 0x36;
	init(&k->inner);
	digest_update(&k->inner, pad, 64);
	for (i = 0; i < 64; i++)
		pad[i] = block[i] ^ 0x5c;
	init(&k->outer);
	digest_update(&k->outer, pad, 64);
	memset(block, 0, sizeof(block));
	memset(pad, 0, sizeof(pad));
}

static void
hmac_key_init(struct hmac_key *k, const void *key, size_t n)
{
	hmac_key_init_hash(k, sha256_init, key, n);
}

/* HMAC of msg under k: 32 bytes into out for SHA-256, 20 for SHA-1. */
/* HMAC of msg under k into out; with also (a SHA-256 digest), msg goes
 * into also in the same pass. */
static void
hmac_digest(const struct hmac_key *k, const void *msg, size_t n, unsigned char *out, struct digest *also)
{
	struct digest s = k->inner;
	unsigned char ih[32];

	if (also != NULL)
		digest_update2(&s, also, msg, n);
	else
		digest_update(&s, msg, n);
	digest_final(&s, ih);
	s = k->outer;
	digest_update(&s, ih, 4 * s.words);
	digest_final(&s, out);
}

/* HMAC-SHA1 in one call, for OAuth 1.0a's signatures. */
static void
hmac_sha1(const void *key, size_t kn, const void *msg, size_t n, unsigned char out[20])
{
	struct hmac_key k;

	hmac_key_init_hash(&k, sha1_init, key, kn);
	hmac_digest(&k, msg, n, out, NULL);
	explicit_bzero(&k, sizeof(k));
}

/* Encode n bytes as padded standard base64 into out, which holds at least
 * 4 * ((n + 2) / 3) bytes; returns the length written. */
static size_t
base64_encode(const unsigned char *in, size_t n, char *out)
{
	static const char alphabet[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t i, o = 0;

	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];

		out[o++] = alphabet[v >> 18];
		out[o++] = alphabet[(v >> 12) & 63];
		out[o++] = alphabet[(v >> 6) & 63];
		out[o++] = alphabet[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)in[i] << 16;

		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		out[o++] = alphabet[v >> 18];
		out[o++] = alphabet[(v >> 12) & 63];
		out[o++] = i + 1 < n ? alphabet[(v >> 6) & 63] : '=';
		out[o++] = '=';
	}
	return o;
}

/* Compare in time that depends only on n, so that a forger learns nothing
 * from how long a wrong signature takes to refuse. */
static int
ct_equal(const void *a, const void *b, size_t n)
{
	const volatile unsigned char *x = a, *y = b;
	unsigned char d = 0;
	size_t i;

	for (i = 0; i < n; i++)
		d |= x[i] ^ y[i];
	return d == 0;
}

/* SIGNATURE_LEN is the length of "sha256=" and 44 base64 characters. */
enum { SIGNATURE_LEN = 7 + 44 };

/* Write "sha256=<base64 HMAC>" for msg into out[SIGNATURE_LEN]. */
static void
signature_of(const struct hmac_key *k, const void *msg, size_t n, char out[SIGNATURE_LEN], struct digest *also)
{
	unsigned char mac[32];

	hmac_digest(k, msg, n, mac, also);
	memcpy(out, "sha256=", 7);
	base64_encode(mac, 32, out + 7);
}

#ifdef XWEBHOOK_TLS

/* ------------------------------------------------------------------------
 * [DER] Just enough DER to read a certificate's serial number and
 * validity, for the startup line, expiry warnings and `check`. Calls libc
 * only.
 * ------------------------------------------------------------------------ */

/* Read the TLV at *p (before end): its tag and value; advance *p past it. */
static int
der_next(const unsigned char **p, const unsigned char *end, unsigned *tag,
    const unsigned char **val, size_t *len)
{
	const unsigned char *q = *p;
	size_t n;

	if (end - q < 2 || (q[0] & 0x1f) == 0x1f)
		return -1;
	*tag = *q++;
	n = *q++;
	if (n & 0x80) {
		unsigned k = n & 0x7f;

		if (k == 0 || k > 4 || (size_t)(end - q) < k)
			return -1;
		for (n = 0; k > 0; k--)
			n = n << 8 | *q++;
	}
	if ((size_t)(end - q) < n)
		return -1;
	*val = q;
	*len = n;
	*p = q + n;
	return 0;
}

/* A UTCTime (tag 0x17) or GeneralizedTime (0x18), in UTC. */
static int
der_time(unsigned tag, const unsigned char *v, size_t n, time_t *out)
{
	struct tm tm;
	int f[7], i, k = 0, year;

	if (!((tag == 0x17 && n == 13) || (tag == 0x18 && n == 15)) || v[n - 1] != 'Z')
		return -1;
	for (i = 0; i < (int)n - 1; i++)
		if (!isdigit(v[i]))
			return -1;
	if (tag == 0x17) {
		year = (v[0] - '0') * 10 + (v[1] - '0');
		year += year < 50 ? 2000 : 1900;
		k = 2;
	} else {
		year = (v[0] - '0') * 1000 + (v[1] - '0') * 100 + (v[2] - '0') * 10 + (v[3] - '0');
		k = 4;
	}
	for (i = 0; i < 5; i++, k += 2)
		f[i] = (v[k] - '0') * 10 + (v[k + 1] - '0');
	memset(&tm, 0, sizeof(tm));
	tm.tm_year = year - 1900;
	tm.tm_mon = f[0] - 1;
	tm.tm_mday = f[1];
	tm.tm_hour = f[2];
	tm.tm_min = f[3];
	tm.tm_sec = f[4];
	*out = timegm(&tm);
	return 0;
}

/* Enter a DER certificate: *p and *end then span its TBSCertificate's
 * contents (version, serial, ...). 0, or -1. */
static int
der_tbs(const unsigned char *der, size_t n, const unsigned char **p, const unsigned char **end)
{
	const unsigned char *v;
	size_t len;
	unsigned tag;

	*p = der;
	*end = der + n;
	/* Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { ... */
	if (der_next(p, *end, &tag, &v, &len) < 0 || tag != 0x30)
		return -1;
	*p = v;
	*end = v + len;
	if (der_next(p, *end, &tag, &v, &len) < 0 || tag != 0x30)
		return -1;
	*p = v;
	*end = v + len;
	return 0;
}

/* What we show of a certificate. */
struct cert_info {
	char serial[2 * 32 + 1];   /* upper-case hex, as openssl prints it */
	time_t not_before, not_after;
};

/* Read the serial and validity from a DER certificate. */
static int
cert_info(const unsigned char *der, size_t n, struct cert_info *ci)
{
	const unsigned char *p, *end, *v;
	size_t len, i, o = 0;
	unsigned tag;

	if (der_tbs(der, n, &p, &end) < 0)
		return -1;
	/* [0] version, optional; serialNumber INTEGER. */
	if (der_next(&p, end, &tag, &v, &len) < 0)
		return -1;
	if (tag == 0xa0 && der_next(&p, end, &tag, &v, &len) < 0)
		return -1;
	if (tag != 0x02 || len == 0 || len > 33)
		return -1;
	if (len > 1 && v[0] == 0) {
		v++;
		len--;
	}
	for (i = 0; i < len && o + 2 < sizeof(ci->serial); i++, o += 2)
		snprintf(ci->serial + o, 3, "%02X", v[i]);
	ci->serial[o] = '\0';
	/* signature AlgorithmIdentifier, issuer Name, then Validity. */
	if (der_next(&p, end, &tag, &v, &len) < 0 || tag != 0x30 ||
	    der_next(&p, end, &tag, &v, &len) < 0 || tag != 0x30 ||
	    der_next(&p, end, &tag, &v, &len) < 0 || tag != 0x30)
		return -1;
	p = v;
	end = v + len;
	if (der_next(&p, end, &tag, &v, &len) < 0 || der_time(tag, v, len, &ci->not_before) < 0 ||
	    der_next(&p, end, &tag, &v, &len) < 0 || der_time(tag, v, len, &ci->not_after) < 0)
		return -1;
	return 0;
}

/* "2027-02-26 12:00 UTC" */
static void
format_date(time_t t, char *out, size_t n)
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(out, n, "%Y-%m-%d %H:%M UTC", &tm);
}
#endif /* XWEBHOOK_TLS */

/* ------------------------------------------------------------------------
 * [JSON] One streaming state machine validates (RFC 8259, UTF-8 checked
 * inside strings), and either indents the way Python's json.dumps(obj,
 * indent=2) does or compacts. Strings, numbers and literals are copied
 * byte for byte, so nothing is re-encoded or rounded. No recursion:
 * nesting is an explicit stack with a fixed bound.
 *
 * Then the reader of other servers' answers (X's, the CA's, NATS's API):
 * one validating pass indexes an object's members, which are then looked
 * up by name. Calls [UTIL].
 * ------------------------------------------------------------------------ */

enum json_style {
	JSON_CHECK,    /* validate only, write nothing */
	JSON_COMPACT,  /* no whitespace between tokens */
	JSON_INDENT,   /* json.dumps(indent=2), a newline after each value */
};

enum json_state {
	J_VALUE,          /* a value must come next */
	J_ARRAY_FIRST,    /* just after '[': a value or ']' */
	J_OBJECT_FIRST,   /* just after '{': a key or '}' */
	J_KEY,            /* after ',' in an object: a key */
	J_COLON,          /* after a key */
	J_AFTER,          /* after a value inside a container: ',' or closer */
	J_STRING,
	J_ESCAPE,         /* after a backslash */
	J_UNICODE,        /* inside \uXXXX */
	J_UTF8,           /* inside a multi-byte UTF-8 sequence */
	J_NUMBER,
	J_LITERAL,
	J_END,            /* one value read and more are not allowed */
	J_ERROR,
};

/* Where a number stands; the ones marked complete may end there. */
enum json_number {
	N_MINUS, N_ZERO /* complete */, N_INT /* complete */, N_DOT,
	N_FRAC /* complete */, N_EXP, N_EXP_SIGN, N_EXP_DIGITS /* complete */,
};

struct json {
	enum json_style style;
	int stream;            /* a sequence of values (fmt), not exactly one */
	int object_only;       /* each top-level value must be an object (events) */
	enum json_state state;
	int in_key;            /* the string being read is an object key */
	enum json_number number;
	const char *literal;   /* "true", "false" or "null" being matched */
	unsigned literal_at;
	unsigned hex_left;     /* hex digits still due in \uXXXX */
	unsigned utf8_left;    /* continuation bytes still due */
	unsigned char utf8_lo, utf8_hi;  /* the range of the next one */
	unsigned depth;
	unsigned char stack[JSON_MAX_DEPTH];  /* '{' or '[' per level */
	unsigned long values;  /* top-level values completed */
	size_t spaces;         /* whitespace bytes between tokens, dropped */
	size_t out_mark;       /* out's length at the end of the last of them */
	/* Position, for error messages: line number, and the absolute offset
	 * at which that line starts, so the column costs nothing per byte. */
	unsigned long line;
	uint64_t offset, line_start;
	const char *error;     /* what was expected, once state is J_ERROR */
	unsigned long err_line, err_col;
	struct buf *out;       /* NULL for JSON_CHECK */
};

static void
json_init(struct json *j, enum json_style style, struct buf *out)
{
	memset(j, 0, sizeof(*j));
	j->style = style;
	j->out = style == JSON_CHECK ? NULL : out;
	j->state = J_VALUE;
	j->line = 1;
}

/* Record the first error at absolute offset at. */
static int
json_fail(struct json *j, uint64_t at, const char *what)
{
	j->state = J_ERROR;
	j->error = what;
	j->err_line = j->line;
	j->err_col = (unsigned long)(at - j->line_start + 1);
	return -1;
}

static inline void
json_put(struct json *j, const char *p, size_t n)
{
	if (j->out)
		buf_add(j->out, p, n);
}

static inline void
json_putc(struct json *j, char c)
{
	if (j->out)
		buf_addc(j->out, c);
}

/* A newline and two spaces per level, when indenting. */
static void
json_newline(struct json *j, unsigned depth)
{
	static const char spaces[] = "                                                                ";
	size_t n = (size_t)depth * 2;

	if (j->style != JSON_INDENT)
		return;
	json_putc(j, '\n');
	while (n > 0) {
		size_t take = n < sizeof(spaces) - 1 ? n : sizeof(spaces) - 1;

		json_put(j, spaces, take);
		n -= take;
	}
}

/* A value has ended: decide what may follow it. */
static void
json_value_done(struct json *j)
{
	if (j->depth > 0) {
		j->state = J_AFTER;
		return;
	}
	j->values++;
	if (j->style == JSON_INDENT)
		json_putc(j, '\n');
	if (j->out != NULL)
		j->out_mark = j->out->len;
	j->state = j->stream ? J_VALUE : J_END;
}

/* Start the value whose first byte is c, at absolute offset at. */
static int
json_begin_value(struct json *j, unsigned char c, uint64_t at)
{
	if (at == 0 && c == 0xef)
		return json_fail(j, at, "the input starts with a UTF-8 byte-order mark (EF BB BF), which "
		    "JSON does not allow (RFC 8259, 8.1): remove its first 3 bytes");
	if (j->depth == 0 && j->object_only && c != '{')
		return json_fail(j, at, "expected '{' (an event is a JSON object)");
	switch (c) {
	case '{':
	case '[':
		if (j->depth == JSON_MAX_DEPTH)
			return json_fail(j, at, "nesting deeper than 256 levels");
		j->stack[j->depth++] = c;
		json_putc(j, (char)c);
		j->state = c == '{' ? J_OBJECT_FIRST : J_ARRAY_FIRST;
		return 0;
	case '"':
		json_putc(j, '"');
		j->in_key = 0;
		j->state = J_STRING;
		return 0;
	case 't':
		j->literal = "true";
		break;
	case 'f':
		j->literal = "false";
		break;
	case 'n':
		j->literal = "null";
		break;
	case '-':
		j->number = N_MINUS;
		json_putc(j, '-');
		j->state = J_NUMBER;
		return 0;
	default:
		if (c >= '0' && c <= '9') {
			j->number = c == '0' ? N_ZERO : N_INT;
			json_putc(j, (char)c);
			j->state = J_NUMBER;
			return 0;
		}
		return json_fail(j, at, "expected a value");
	}
	json_putc(j, (char)c);
	j->literal_at = 1;
	j->state = J_LITERAL;
	return 0;
}

/* Close the innermost container with c. */
static int
json_close(struct json *j, unsigned char c, uint64_t at, int empty)
{
	unsigned char open = j->stack[j->depth - 1];

	if ((open == '{' && c != '}') || (open == '[' && c != ']'))
		return json_fail(j, at, open == '{' ? "expected ',' or '}'" : "expected ',' or ']'");
	j->depth--;
	if (!empty)
		json_newline(j, j->depth);
	json_putc(j, (char)c);
	json_value_done(j);
	return 0;
}

/* Set the allowed range of the bytes after UTF-8 lead byte c; 0 if c
 * cannot start a sequence (overlongs, surrogates and past U+10FFFF are out). */
static int
json_utf8_lead(struct json *j, unsigned char c)
{
	j->utf8_lo = 0x80;
	j->utf8_hi = 0xbf;
	if (c >= 0xc2 && c <= 0xdf)
		j->utf8_left = 1;
	else if (c >= 0xe0 && c <= 0xef)
		j->utf8_left = 2;
	else if (c >= 0xf0 && c <= 0xf4)
		j->utf8_left = 3;
	else
		return 0;
	if (c == 0xe0)
		j->utf8_lo = 0xa0;
	else if (c == 0xed)
		j->utf8_hi = 0x9f;
	else if (c == 0xf0)
		j->utf8_lo = 0x90;
	else if (c == 0xf4)
		j->utf8_hi = 0x8f;
	return 1;
}

/* Bytes that a string copies without a second look. */
static inline int
json_plain(unsigned char c)
{
	return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

/* The length of the run of plain bytes at p (at most n). Event bodies are
 * mostly long strings, so this looks at 16 bytes at a time where SSE2 is
 * there (all x86-64): a signed compare with 0x20 finds control bytes and
 * bytes from 0x80 up at once. */
static size_t
json_plain_run(const char *p, size_t n)
{
	size_t i = 0;

#ifdef __SSE2__
	const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
	const __m128i space = _mm_set1_epi8(0x20);

	for (; i + 16 <= n; i += 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
		__m128i special = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote),
		    _mm_cmpeq_epi8(v, backslash)), _mm_cmplt_epi8(v, space));
		int mask = _mm_movemask_epi8(special);

		if (mask != 0)
			return i + (size_t)__builtin_ctz((unsigned)mask);
	}
#endif
	while (i < n && json_plain((unsigned char)p[i]))
		i++;
	return i;
}

/* Feed n more bytes of the document. Returns 0, or -1 once it is invalid
 * (j->error and the position say why; later calls keep failing).
 * Long on purpose: it is one state machine, a switch on j->state per byte,
 * and reads best whole (split up, each piece would need the whole state). */
static int
json_feed(struct json *j, const char *p, size_t n)
{
	size_t i = 0;

	if (j->state == J_ERROR)
		return -1;
	while (i < n) {
		unsigned char c = (unsigned char)p[i];
		uint64_t at = j->offset + i;

		switch (j->state) {
		case J_STRING: {
			size_t run = json_plain_run(p + i, n - i);

			if (run > 0) {
				json_put(j, p + i, run);
				i += run;
				continue;
			}
			if (c == '"') {
				json_putc(j, '"');
				if (j->in_key) {
					j->state = J_COLON;
				} else {
					json_value_done(j);
				}
			} else if (c == '\\') {
				json_putc(j, '\\');
				j->state = J_ESCAPE;
			} else if (c < 0x20) {
				return json_fail(j, at, "control character in string (expected \\u escape)");
			} else {
				if (!json_utf8_lead(j, c))
					return json_fail(j, at, "invalid UTF-8 in string");
				json_putc(j, (char)c);
				j->state = J_UTF8;
			}
			break;
		}
		case J_UTF8:
			if (c < j->utf8_lo || c > j->utf8_hi)
				return json_fail(j, at, "invalid UTF-8 in string");
			json_putc(j, (char)c);
			j->utf8_lo = 0x80;
			j->utf8_hi = 0xbf;
			if (--j->utf8_left == 0)
				j->state = J_STRING;
			break;
		case J_ESCAPE:
			if (c == 'u') {
				j->hex_left = 4;
				j->state = J_UNICODE;
			} else if (strchr("\"\\/bfnrt", c) != NULL && c != 0) {
				j->state = J_STRING;
			} else {
				return json_fail(j, at, "invalid escape in string");
			}
			json_putc(j, (char)c);
			break;
		case J_UNICODE:
			if (!isxdigit(c))
				return json_fail(j, at, "expected 4 hex digits after \\u");
			json_putc(j, (char)c);
			if (--j->hex_left == 0)
				j->state = J_STRING;
			break;
		case J_NUMBER: {
			enum json_number nx;
			int digit = c >= '0' && c <= '9';

			switch (j->number) {
			default:  /* every value is named below; this only tells the compiler */
			case N_MINUS:
				nx = c == '0' ? N_ZERO : digit ? N_INT : N_MINUS;
				break;
			case N_ZERO:
				nx = c == '.' ? N_DOT : (c == 'e' || c == 'E') ? N_EXP : N_ZERO;
				break;
			case N_INT:
				nx = digit ? N_INT : c == '.' ? N_DOT : (c == 'e' || c == 'E') ? N_EXP : N_INT;
				break;
			case N_DOT:
				nx = digit ? N_FRAC : N_DOT;
				break;
			case N_FRAC:
				nx = digit ? N_FRAC : (c == 'e' || c == 'E') ? N_EXP : N_FRAC;
				break;
			case N_EXP:
				nx = (c == '+' || c == '-') ? N_EXP_SIGN : digit ? N_EXP_DIGITS : N_EXP;
				break;
			case N_EXP_SIGN:
			case N_EXP_DIGITS:
				nx = digit ? N_EXP_DIGITS : j->number;
				break;
			}
			/* A byte that does not move the number on either ends it
			 * (where it may end) or is an error. */
			if (nx == j->number && !(digit && (nx == N_INT || nx == N_FRAC || nx == N_EXP_DIGITS))) {
				if (nx == N_ZERO || nx == N_INT || nx == N_FRAC || nx == N_EXP_DIGITS) {
					if (digit)  /* "01" */
						return json_fail(j, at, "leading zero in number");
					json_value_done(j);
					continue;  /* look at c again */
				}
				return json_fail(j, at, "expected a digit");
			}
			j->number = nx;
			json_putc(j, (char)c);
			break;
		}
		case J_LITERAL:
			if (c != (unsigned char)j->literal[j->literal_at])
				return json_fail(j, at, "invalid literal (expected true, false or null)");
			json_putc(j, (char)c);
			if (j->literal[++j->literal_at] == '\0')
				json_value_done(j);
			break;
		case J_ERROR:
			return -1;
		default:
			/* Between tokens. */
			if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
				j->spaces++;
				if (c == '\n') {
					j->line++;
					j->line_start = at + 1;
				}
				break;
			}
			switch (j->state) {
			case J_VALUE:
				if (json_begin_value(j, c, at) < 0)
					return -1;
				break;
			case J_ARRAY_FIRST:
				if (c == ']') {
					if (json_close(j, c, at, 1) < 0)
						return -1;
					break;
				}
				json_newline(j, j->depth);
				if (json_begin_value(j, c, at) < 0)
					return -1;
				break;
			case J_OBJECT_FIRST:
			case J_KEY:
				if (c == '}' && j->state == J_OBJECT_FIRST) {
					if (json_close(j, c, at, 1) < 0)
						return -1;
					break;
				}
				if (c != '"')
					return json_fail(j, at, j->state == J_KEY ?
					    "expected a string key" : "expected a string key or '}'");
				if (j->state == J_OBJECT_FIRST)
					json_newline(j, j->depth);
				json_putc(j, '"');
				j->in_key = 1;
				j->state = J_STRING;
				break;
			case J_COLON:
				if (c != ':')
					return json_fail(j, at, "expected ':'");
				if (j->style == JSON_INDENT)
					json_put(j, ": ", 2);
				else
					json_putc(j, ':');
				j->state = J_VALUE;
				break;
			case J_AFTER:
				if (c == ',') {
					json_putc(j, ',');
					json_newline(j, j->depth);
					j->state = j->stack[j->depth - 1] == '{' ? J_KEY : J_VALUE;
					break;
				}
				if (json_close(j, c, at, 0) < 0)
					return -1;
				break;
			case J_END:
				return json_fail(j, at, "expected end of input");
			default:
				return json_fail(j, at, "internal error");
			}
		}
		i++;
	}
	j->offset += n;
	return 0;
}

/* The input has ended: 0 if it held what was asked for, else -1. */
static int
json_finish(struct json *j)
{
	uint64_t at = j->offset;

	switch (j->state) {
	case J_ERROR:
		return -1;
	case J_NUMBER:
		if (j->number == N_ZERO || j->number == N_INT ||
		    j->number == N_FRAC || j->number == N_EXP_DIGITS) {
			json_value_done(j);
			return json_finish(j);
		}
		return json_fail(j, at, "expected a digit, found end of input");
	case J_END:
		return 0;
	case J_VALUE:
		if (j->depth == 0 && j->values > 0)
			return 0;
		return json_fail(j, at, j->depth == 0 && j->object_only ?
		    "expected '{' (an event is a JSON object), found end of input" :
		    "expected a value, found end of input");
	case J_STRING:
	case J_ESCAPE:
	case J_UNICODE:
	case J_UTF8:
		return json_fail(j, at, "expected '\"', found end of input");
	case J_AFTER:
		return json_fail(j, at, j->stack[j->depth - 1] == '{' ?
		    "expected ',' or '}', found end of input" :
		    "expected ',' or ']', found end of input");
	case J_ARRAY_FIRST:
		return json_fail(j, at, "expected a value or ']', found end of input");
	case J_OBJECT_FIRST:
		return json_fail(j, at, "expected a string key or '}', found end of input");
	case J_KEY:
		return json_fail(j, at, "expected a string key, found end of input");
	case J_COLON:
		return json_fail(j, at, "expected ':', found end of input");
	case J_LITERAL:
		return json_fail(j, at, "invalid literal (expected true, false or null), found end of input");
	}
	return -1;
}

/* Reformat the single JSON object in p (an event) into out: the number of
 * whitespace bytes between its tokens (with none, p is its own compact
 * form); or -1 and a message in err when it is not one. */
static long
json_event(const char *p, size_t n, enum json_style style, struct buf *out, char *err, size_t errlen)
{
	struct json j;

	json_init(&j, style, out);
	j.object_only = 1;
	if (json_feed(&j, p, n) == 0 && json_finish(&j) == 0)
		return (long)j.spaces;
	snprintf(err, errlen, "line %lu, column %lu: %s", j.err_line, j.err_col, j.error);
	return -1;
}

/* ---- Reading an answer: an object parsed once, its members looked up ---- */

/* Decode the JSON string whose opening quote is at p[i] (valid JSON, as
 * json_event left it) into out as UTF-8; the index after its closing
 * quote. */
static size_t
json_string_decode(const char *p, size_t i, struct buf *out)
{
	for (i++; p[i] != '"'; i++) {
		unsigned long cp;
		char u[4];

		if (p[i] != '\\') {
			if (out != NULL)
				buf_addc(out, p[i]);
			continue;
		}
		i++;
		switch (p[i]) {
		case 'b': cp = '\b'; break;
		case 'f': cp = '\f'; break;
		case 'n': cp = '\n'; break;
		case 'r': cp = '\r'; break;
		case 't': cp = '\t'; break;
		case 'u':
			cp = strtoul((char[]){ p[i + 1], p[i + 2], p[i + 3], p[i + 4], 0 }, NULL, 16);
			i += 4;
			if (cp >= 0xd800 && cp < 0xdc00 && p[i + 1] == '\\' && p[i + 2] == 'u') {
				unsigned long lo = strtoul((char[]){ p[i + 3], p[i + 4], p[i + 5], p[i + 6], 0 },
				    NULL, 16);

				if (lo >= 0xdc00 && lo < 0xe000) {
					cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
					i += 6;
				}
			}
			if (cp >= 0xd800 && cp < 0xe000)
				cp = 0xfffd;  /* a lone surrogate */
			break;
		default: cp = (unsigned char)p[i]; break;  /* " \ / */
		}
		if (out == NULL)
			continue;
		if (cp < 0x80) {
			buf_addc(out, (char)cp);
		} else if (cp < 0x800) {
			u[0] = (char)(0xc0 | cp >> 6);
			u[1] = (char)(0x80 | (cp & 0x3f));
			buf_add(out, u, 2);
		} else if (cp < 0x10000) {
			u[0] = (char)(0xe0 | cp >> 12);
			u[1] = (char)(0x80 | (cp >> 6 & 0x3f));
			u[2] = (char)(0x80 | (cp & 0x3f));
			buf_add(out, u, 3);
		} else {
			u[0] = (char)(0xf0 | cp >> 18);
			u[1] = (char)(0x80 | (cp >> 12 & 0x3f));
			u[2] = (char)(0x80 | (cp >> 6 & 0x3f));
			u[3] = (char)(0x80 | (cp & 0x3f));
			buf_add(out, u, 4);
		}
	}
	return i + 1;
}

/* In valid compact JSON c (NUL-ended), the index just past the value
 * that starts at c[i]. */
static size_t
json_skip(const char *c, size_t i)
{
	unsigned depth = 0;

	do {
		if (c[i] == '"')
			i = json_string_decode(c, i, NULL) - 1;
		else if (c[i] == '{' || c[i] == '[')
			depth++;
		else if (c[i] == '}' || c[i] == ']')
			depth--;
		i++;
	} while (depth > 0 || (c[i] != ',' && c[i] != '}' && c[i] != ']' && c[i] != '\0'));
	return i;
}

/* ---- Scanning valid JSON in place: whitespace allowed, nothing copied ---- */

/* In valid JSON p[0, n), the index past spaces from i. */
static size_t
jscan_space(const char *p, size_t n, size_t i)
{
	while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
		i++;
	return i;
}

/* In valid JSON p[0, n), the index past the string whose quote is at p[i]
 * (its plain runs taken 16 bytes at a time). */
static size_t
jscan_string(const char *p, size_t n, size_t i)
{
	for (i++; i < n; i++) {
		i += json_plain_run(p + i, n - i);
		if (i >= n || p[i] == '"')
			break;
		if (p[i] == '\\')
			i++;
	}
	return i + 1;
}

/* In valid JSON p[0, n), the index just past the value that starts at
 * p[i] (at the ',', '}' or ']' after it, or spaces before one). */
static size_t
jscan_value(const char *p, size_t n, size_t i)
{
	unsigned depth = 0;

	do {
		if (p[i] == '"') {
			i = jscan_string(p, n, i);
			continue;
		}
		if (p[i] == '{' || p[i] == '[')
			depth++;
		else if (p[i] == '}' || p[i] == ']')
			depth--;
		i++;
	} while (i < n && (depth > 0 || (p[i] != ',' && p[i] != '}' && p[i] != ']')));
	return i;
}

/* The members of an object in valid JSON p[0, n), one a call: at is its
 * '{', then the end of the last member's value (jscan_value's). 1 with the
 * next member's raw key (between its quotes, not decoded) and the index of
 * its value, which is not skipped: a caller that found what it wanted
 * reads no further. 0 after the last. */
static int
jscan_member(const char *p, size_t n, size_t at, const char **key, size_t *key_len, size_t *value)
{
	size_t i = jscan_space(p, n, at);

	if (i < n && (p[i] == '{' || p[i] == ','))
		i = jscan_space(p, n, i + 1);
	if (i >= n || p[i] != '"')
		return 0;
	*key = p + i + 1;
	i = jscan_string(p, n, i);
	*key_len = (size_t)(p + i - 1 - *key);
	*value = jscan_space(p, n, jscan_space(p, n, i) + 1);  /* past the ':' */
	return *value < n;
}

/* The elements of a JSON array in compact text (json_member's, NUL-ended),
 * one a call: *at starts at 0; 1 with the next element's compact text
 * appended to out, or 0 after the last. */
static int
json_array_next(const char *a, size_t *at, struct buf *out)
{
	size_t i = *at, end;

	if (i == 0) {
		if (a[0] != '[')
			return 0;
		i = 1;
	}
	if (a[i] == ',')
		i++;
	if (a[i] == ']' || a[i] == '\0')
		return 0;
	end = json_skip(a, i);
	buf_add(out, a + i, end - i);
	*at = end;
	return 1;
}

/* A JSON object's top-level members, indexed by one validating pass so
 * that each look-up after it is a walk of the index, not of the text. */
struct json_object {
	struct buf text;          /* the object as compact JSON, NUL-ended */
	struct buf keys;          /* each member's key, decoded, back to back */
	struct buf slots;         /* a struct json_slot for each member, in order */
	size_t n;
};

struct json_slot {
	size_t key, key_len;      /* in keys */
	size_t value, value_len;  /* in text: compact JSON, strings still escaped */
};

/* Free what json_object_parse made; o is then an object with no members. */
static void
json_object_free(struct json_object *o)
{
	buf_free(&o->text);
	buf_free(&o->keys);
	buf_free(&o->slots);
	memset(o, 0, sizeof(*o));
}

/* Index the top-level members of the JSON object in p[0, n), in their
 * order: 0, or -1 (o empty) when p is not a JSON object. */
static int
json_object_parse(const char *p, size_t n, struct json_object *o)
{
	char err[160];
	size_t i = 1;

	memset(o, 0, sizeof(*o));
	/* Validated and compacted first: what is walked below is valid
	 * JSON with no whitespace between tokens. */
	if (json_event(p != NULL ? p : "", n, JSON_COMPACT, &o->text, err, sizeof(err)) < 0 || o->text.p[0] != '{') {
		json_object_free(o);
		return -1;
	}
	buf_addc(&o->text, '\0');
	while (o->text.p[i] == '"') {
		struct json_slot sl;

		sl.key = o->keys.len;
		i = json_string_decode(o->text.p, i, &o->keys) + 1;  /* past the ':' too */
		sl.key_len = o->keys.len - sl.key;
		sl.value = i;
		i = json_skip(o->text.p, i);
		sl.value_len = i - sl.value;
		buf_add(&o->slots, &sl, sizeof(sl));
		o->n++;
		if (o->text.p[i] == '}')
			break;
		i++;
	}
	return 0;
}

/* The first member called key (compared decoded, so "a" finds "\u0061"),
 * or NULL: a later duplicate is never seen. */
static const struct json_slot *
json_object_find(const struct json_object *o, const char *key)
{
	/* (realloc's memory is aligned for any type) */
	const struct json_slot *slot = (const struct json_slot *)(const void *)o->slots.p;
	size_t i, kl = strlen(key);

	for (i = 0; i < o->n; i++)
		if (slot[i].key_len == kl && (kl == 0 || memcmp(o->keys.p + slot[i].key, key, kl) == 0))
			return &slot[i];
	return NULL;
}

/* The member key's value as compact JSON text, appended to out: 0, or
 * -1 when there is no such member. */
static int
json_object_get(const struct json_object *o, const char *key, struct buf *out)
{
	const struct json_slot *sl = json_object_find(o, key);

	if (sl == NULL)
		return -1;
	buf_add(out, o->text.p + sl->value, sl->value_len);
	return 0;
}

/* The member key's string value, decoded, appended to out: 0, or -1
 * when there is no such member or its value is not a string. */
static int
json_object_string(const struct json_object *o, const char *key, struct buf *out)
{
	const struct json_slot *sl = json_object_find(o, key);

	if (sl == NULL || o->text.p[sl->value] != '"')
		return -1;
	json_string_decode(o->text.p, sl->value, out);
	return 0;
}

/* A look-up in a parsed object: json_object_get or json_object_string. */
typedef int json_lookup(const struct json_object *o, const char *key, struct buf *out);

/* Parse the JSON object in p[0, n) and look key up in it with get, into
 * out: what get says, or -1 when p is not a JSON object. For one
 * look-up; more parse once with json_object_parse. */
static int
json_parse_lookup(const char *p, size_t n, const char *key, struct buf *out, json_lookup *get)
{
	struct json_object o;
	int found = json_object_parse(p, n, &o) == 0 ? get(&o, key, out) : -1;

	json_object_free(&o);
	return found;
}

/* The value of the top-level member key of the JSON object in p[0, n),
 * as compact JSON text (strings still escaped), into out: 0, or -1 when
 * p is not a JSON object or has no such member at its top level. The
 * first such member decides. */
static int
json_member(const char *p, size_t n, const char *key, struct buf *out)
{
	return json_parse_lookup(p, n, key, out, json_object_get);
}

/* Is the top-level member key of the JSON object in p[0, n) true? */
static int
json_true(const char *p, size_t n, const char *key)
{
	struct buf v = { 0 };
	int yes = json_member(p, n, key, &v) == 0 && v.len == 4 && memcmp(v.p, "true", 4) == 0;

	buf_free(&v);
	return yes;
}

/* The string value of the top-level member key of the JSON object in
 * p[0, n), decoded, into out: 0, or -1 when p is not a JSON object, has
 * no such member at its top level, or its value is not a string. */
static int
json_member_string(const char *p, size_t n, const char *key, struct buf *out)
{
	return json_parse_lookup(p, n, key, out, json_object_string);
}

/* ------------------------------------------------------------------------
 * [HTTP] Statuses, the request head parser, the chunked-body decoder, the
 * query and form decoders, and host:port splitting. Parsers return a
 * status and leave I/O and reporting to the caller, as picohttpparser
 * does; they never allocate. Owns the one table every answer's status
 * comes from. Calls [UTIL].
 * ------------------------------------------------------------------------ */

enum status {
	S_OK,
	S_INCOMPLETE,          /* not an answer: more bytes are needed */
	S_MOVED_PERMANENTLY,
	S_BAD_REQUEST,
	S_UNAUTHORIZED,
	S_NOT_FOUND,
	S_METHOD_NOT_ALLOWED,
	S_REQUEST_TIMEOUT,
	S_PAYLOAD_TOO_LARGE,
	S_URI_TOO_LONG,
	S_EXPECTATION_FAILED,
	S_HEADERS_TOO_LARGE,
	S_INTERNAL_ERROR,
	S_UNAVAILABLE,
	S_COUNT
};

static const struct {
	int code;
	const char *reason;
} statuses[S_COUNT] = {
	[S_OK]                 = { 200, "OK" },
	[S_INCOMPLETE]         = { 0, "" },
	[S_MOVED_PERMANENTLY]  = { 301, "Moved Permanently" },
	[S_BAD_REQUEST]        = { 400, "Bad Request" },
	[S_UNAUTHORIZED]       = { 401, "Unauthorized" },
	[S_NOT_FOUND]          = { 404, "Not Found" },
	[S_METHOD_NOT_ALLOWED] = { 405, "Method Not Allowed" },
	[S_REQUEST_TIMEOUT]    = { 408, "Request Timeout" },
	[S_PAYLOAD_TOO_LARGE]  = { 413, "Content Too Large" },
	[S_URI_TOO_LONG]       = { 414, "URI Too Long" },
	[S_EXPECTATION_FAILED] = { 417, "Expectation Failed" },
	[S_HEADERS_TOO_LARGE]  = { 431, "Request Header Fields Too Large" },
	[S_INTERNAL_ERROR]     = { 500, "Internal Server Error" },
	[S_UNAVAILABLE]        = { 503, "Service Unavailable" },
};

enum method { M_GET, M_HEAD, M_POST, M_OTHER };

/* A parsed request head. Pointers point into the caller's buffer. */
struct request {
	enum method method;
	const char *method_name;
	size_t method_len;
	const char *target;        /* path and query, as sent */
	size_t target_len;
	size_t path_len;           /* the part of target before '?' */
	int http11;
	int keep_alive;
	int chunked;
	int has_length;
	uint64_t content_length;
	int expect_continue;
	const char *signature;     /* x-twitter-webhooks-signature, or NULL */
	size_t signature_len;
	size_t head_len;           /* bytes up to and including the blank line */
};

/* Control bytes, which may appear nowhere in a head but for HTAB. */
static int
is_ctl(unsigned char c)
{
	return (c < 0x20 && c != '\t') || c == 0x7f;
}

/* RFC 9110 token characters, for methods and field names. */
static int
is_tchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9') || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Case-insensitive comparison of a counted string with a C string. */
static int
span_is(const char *p, size_t n, const char *s)
{
	return strlen(s) == n && strncasecmp(p, s, n) == 0;
}

/* Look at bytes [*scan, len) of a head being received, for the end of the
 * head. Stops at the first error: a bare CR or LF, or a control byte, is
 * 400 at once (a TLS hello or binary garbage never waits for a deadline);
 * a request line or header block past its limit is 414 or 431. Returns
 * S_OK with the head's length in *head_len once the blank line is in. */
static enum status
http_scan_head(const char *buf, size_t len, size_t *scan, size_t *line_end, size_t *head_len, const char **why)
{
	size_t k;

	for (k = *scan; k < len; k++) {
		unsigned char c = (unsigned char)buf[k];

		/* A line of 8192 bytes has its CRLF at 8192 and 8193. */
		if (*line_end == 0 && k >= MAX_REQUEST_LINE + 1 && c != '\n') {
			*why = "request line longer than " STR(MAX_REQUEST_LINE_N) " bytes";
			return S_URI_TOO_LONG;
		}
		if (*line_end != 0 && k + 1 - *line_end > MAX_HEADER_BLOCK) {
			*why = "header fields longer than " STR(MAX_HEADER_BLOCK_N) " bytes";
			return S_HEADERS_TOO_LARGE;
		}
		if (k > 0 && buf[k - 1] == '\r' && c != '\n') {
			*why = "bare CR in request head";
			return S_BAD_REQUEST;
		}
		if (c == '\n') {
			if (k == 0 || buf[k - 1] != '\r') {
				*why = "bare LF in request head (lines end with CRLF)";
				return S_BAD_REQUEST;
			}
			if (*line_end == 0) {
				*line_end = k + 1;
			} else if (buf[k - 2] == '\n') {
				/* CRLF CRLF: the blank line that ends the head. */
				*head_len = k + 1;
				*scan = k + 1;
				return S_OK;
			}
		} else if (is_ctl(c) && c != '\r') {
			*why = "control byte in request head";
			return S_BAD_REQUEST;
		}
	}
	*scan = len;
	return S_INCOMPLETE;
}

/* One header field: name ":" OWS value OWS CRLF. */
struct field {
	const char *name, *value;   /* the value without surrounding whitespace */
	size_t name_len, value_len;
};

/* The field at *p of a head checked by http_scan_head (so every line ends
 * in CRLF), and *p moved past it: 1, or 0 at the blank line that ends the
 * head, or -1 with *why. Shared by requests and check's responses. */
static int
http_next_field(const char **p, const char *end, unsigned *count, struct field *f, const char **why)
{
	const char *s = *p, *eol = memchr(s, '\r', (size_t)(end - s)), *v, *ve;

	if (eol == NULL || eol == s)
		return 0;  /* the blank line */
	*p = eol + 2;
	if (*s == ' ' || *s == '\t') {
		*why = "obsolete line folding in header";
		return -1;
	}
	if (++*count > MAX_HEADER_FIELDS) {
		*why = "more than " STR(MAX_HEADER_FIELDS_N) " header fields";
		return -1;
	}
	f->name = s;
	while (s < eol && is_tchar((unsigned char)*s))
		s++;
	f->name_len = (size_t)(s - f->name);
	if (s < eol && (*s == ' ' || *s == '\t') && f->name_len > 0) {
		*why = "whitespace before header colon";
		return -1;
	}
	if (f->name_len == 0 || s == eol || *s != ':') {
		*why = "malformed header field";
		return -1;
	}
	for (v = s + 1; v < eol && (*v == ' ' || *v == '\t'); v++)
		;
	for (ve = eol; ve > v && (ve[-1] == ' ' || ve[-1] == '\t'); ve--)
		;
	f->value = v;
	f->value_len = (size_t)(ve - v);
	return 1;
}

/* A Content-Length value: plain digits, no overflow. 0, or -1 with *why. */
static int
content_length(const struct field *f, uint64_t *out, const char **why)
{
	uint64_t v = 0;
	size_t i;

	if (f->value_len == 0) {
		*why = "empty Content-Length";
		return -1;
	}
	for (i = 0; i < f->value_len; i++) {
		char d = f->value[i];

		if (d < '0' || d > '9') {
			*why = "Content-Length is not plain digits";
			return -1;
		}
		if (v > (UINT64_MAX - 9) / 10) {
			*why = "Content-Length overflows";
			return -1;
		}
		v = v * 10 + (uint64_t)(d - '0');
	}
	*out = v;
	return 0;
}

/* A Host value as RFC 9112, 3.2 has it: a host and perhaps a port, so no
 * whitespace, comma, or any character that would end an authority. */
static int
host_ok(const char *h, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strchr(" \t,/\\?#@", h[i]) != NULL)
			return 0;
	return 1;
}

/* METHOD SP target SP HTTP/1.x CRLF, with exactly one space each, at the
 * start of buf: fills the request line's part of req, and returns where
 * the fields begin, or NULL with *why. An absolute-form target
 * (http://host/path, RFC 9112 3.2.2) is taken as its path. */
static const char *
http_request_line(const char *buf, const char *end, struct request *req, const char **why)
{
	const char *p = buf;

	*why = "malformed request line";
	req->method_name = p;
	while (p < end && is_tchar((unsigned char)*p))
		p++;
	req->method_len = (size_t)(p - req->method_name);
	if (req->method_len == 0 || p == end || *p != ' ')
		return NULL;
	p++;
	req->target = p;
	while (p < end && (unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f)
		p++;
	req->target_len = (size_t)(p - req->target);
	if (req->target_len == 0 || p == end || *p != ' ')
		return NULL;
	if (req->target_len > 7 && (strncasecmp(req->target, "http://", 7) == 0 ||
	    strncasecmp(req->target, "https://", 8) == 0)) {
		const char *auth = (const char *)memchr(req->target, ':', req->target_len) + 3;
		const char *path = auth;

		while (path < p && *path != '/' && *path != '?')
			path++;
		if (path == auth || !host_ok(auth, (size_t)(path - auth))) {
			*why = "absolute-form target without a valid host";
			return NULL;
		}
		if (path == p || *path != '/') {
			*why = "absolute-form target without a path";
			return NULL;
		}
		req->target_len -= (size_t)(path - req->target);
		req->target = path;
	}
	if (req->target[0] != '/') {
		*why = "request target must be a path starting with '/'";
		return NULL;
	}
	p++;
	if (end - p < 10 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') ||
	    p[8] != '\r' || p[9] != '\n')
		return NULL;
	req->http11 = p[7] == '1';
	p += 10;
	req->path_len = req->target_len;
	{
		const char *q = memchr(req->target, '?', req->target_len);

		if (q != NULL)
			req->path_len = (size_t)(q - req->target);
	}
	/* Methods are case-sensitive. */
	if (req->method_len == 3 && memcmp(req->method_name, "GET", 3) == 0)
		req->method = M_GET;
	else if (req->method_len == 4 && memcmp(req->method_name, "HEAD", 4) == 0)
		req->method = M_HEAD;
	else if (req->method_len == 4 && memcmp(req->method_name, "POST", 4) == 0)
		req->method = M_POST;
	else
		req->method = M_OTHER;
	return p;
}

/* What the fields of a request say, and how many of each there were. */
struct request_fields {
	unsigned hosts, lengths, encodings, signatures;
	int conn_close, conn_keep;
};

/* Take the meaning of one request field into req. */
static enum status
http_request_field(const struct field *f, struct request *req, struct request_fields *rf, const char **why)
{
	if (span_is(f->name, f->name_len, "content-length")) {
		if (++rf->lengths > 1) {
			*why = "more than one Content-Length";
			return S_BAD_REQUEST;
		}
		if (content_length(f, &req->content_length, why) < 0)
			return S_BAD_REQUEST;
		req->has_length = 1;
	} else if (span_is(f->name, f->name_len, "transfer-encoding")) {
		if (++rf->encodings > 1 || !span_is(f->value, f->value_len, "chunked")) {
			*why = "Transfer-Encoding other than exactly chunked";
			return S_BAD_REQUEST;
		}
		req->chunked = 1;
	} else if (span_is(f->name, f->name_len, "host")) {
		rf->hosts++;
		if (!host_ok(f->value, f->value_len)) {
			*why = "Host is not a host and port";
			return S_BAD_REQUEST;
		}
	} else if (span_is(f->name, f->name_len, "connection")) {
		/* A list of tokens: look for close and keep-alive. */
		const char *t = f->value, *vend = f->value + f->value_len;

		while (t < vend) {
			const char *te = memchr(t, ',', (size_t)(vend - t)), *a = t, *b;

			te = te != NULL ? te : vend;
			for (b = te; a < b && (*a == ' ' || *a == '\t'); a++)
				;
			while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
				b--;
			if (span_is(a, (size_t)(b - a), "close"))
				rf->conn_close = 1;
			else if (span_is(a, (size_t)(b - a), "keep-alive"))
				rf->conn_keep = 1;
			t = te < vend ? te + 1 : te;
		}
	} else if (span_is(f->name, f->name_len, "expect")) {
		if (!span_is(f->value, f->value_len, "100-continue")) {
			*why = "unsupported Expect (only 100-continue)";
			return S_EXPECTATION_FAILED;
		}
		req->expect_continue = req->http11;
	} else if (span_is(f->name, f->name_len, "x-twitter-webhooks-signature")) {
		if (++rf->signatures > 1) {
			*why = "more than one x-twitter-webhooks-signature";
			return S_BAD_REQUEST;
		}
		req->signature = f->value;
		req->signature_len = f->value_len;
	}
	return S_OK;
}

/* The rules on framing that only the whole head can tell (RFC 9112, 6). */
static enum status
http_request_framing(struct request *req, const struct request_fields *rf, const char **why)
{
	if (req->chunked && req->has_length) {
		*why = "both Content-Length and Transfer-Encoding";
		return S_BAD_REQUEST;
	}
	if (req->chunked && !req->http11) {
		*why = "Transfer-Encoding in an HTTP/1.0 request";
		return S_BAD_REQUEST;
	}
	if (req->http11 && rf->hosts == 0) {
		*why = "missing Host header";
		return S_BAD_REQUEST;
	}
	if (rf->hosts > 1) {
		*why = "more than one Host header";
		return S_BAD_REQUEST;
	}
	req->keep_alive = req->http11 ? !rf->conn_close : rf->conn_keep && !rf->conn_close;
	return S_OK;
}

/* Parse a complete head (as found by http_scan_head, so it holds only
 * CRLF line ends and no control bytes but HTAB) into req: the request
 * line, the meaning of each field, then the framing rules. */
static enum status
http_parse_head(const char *buf, size_t head_len, struct request *req, const char **why)
{
	const char *end = buf + head_len, *p;
	struct request_fields rf;
	struct field f;
	unsigned count = 0;
	int r;

	memset(req, 0, sizeof(*req));
	memset(&rf, 0, sizeof(rf));
	req->head_len = head_len;
	if ((p = http_request_line(buf, end, req, why)) == NULL)
		return S_BAD_REQUEST;
	while ((r = http_next_field(&p, end, &count, &f, why)) > 0) {
		enum status st = http_request_field(&f, req, &rf, why);

		if (st != S_OK)
			return st;
	}
	if (r < 0)
		return count > MAX_HEADER_FIELDS ? S_HEADERS_TOO_LARGE : S_BAD_REQUEST;
	return http_request_framing(req, &rf, why);
}

/* The chunked-body decoder (RFC 9112, 7.1), fed as bytes arrive. */
enum chunk_state {
	C_SIZE,         /* hex digits of the chunk size */
	C_SIZE_BWS,     /* whitespace after them, which only ';' may follow */
	C_EXT,          /* a chunk extension, up to CR */
	C_SIZE_LF,      /* the LF that ends the size line */
	C_DATA,
	C_DATA_CR,      /* the CRLF after the chunk data */
	C_DATA_LF,
	C_TRAILER,      /* at the start of a trailer line, or the final CRLF */
	C_TRAILER_LINE, /* inside a trailer field, up to CR */
	C_TRAILER_LF,
	C_END_LF,       /* the LF of the final CRLF */
	C_DONE,
};

struct chunked {
	enum chunk_state state;
	uint64_t size;         /* of the chunk being read */
	unsigned digits;       /* hex digits read of the size */
	size_t line;           /* bytes of the current size or trailer line */
	size_t trailer;        /* bytes of trailer fields */
	unsigned trailer_fields;
};

/* Decode from in[0, n): append chunk data to out (which must not pass
 * limit bytes), and always set *used to the bytes consumed. S_OK when the
 * body is complete, S_INCOMPLETE when more is needed, else an error.
 * Long on purpose: it is one state machine, a switch on ch->state per
 * byte, and reads best whole. */
/* In chunked_decode: a framing error, with why; the decoding stops. */
#define FAIL(s, w) do { *why = (w); st = (s); goto out; } while (0)
static enum status
chunked_decode(struct chunked *ch, const char *in, size_t n, size_t *used, struct buf *out, size_t limit, const char **why)
{
	size_t i = 0;
	enum status st = S_INCOMPLETE;

	while (i < n && ch->state != C_DONE) {
		unsigned char c = (unsigned char)in[i];

		switch (ch->state) {
		case C_SIZE:
			if (isxdigit(c)) {
				if (ch->digits == 16)
					FAIL(S_BAD_REQUEST, "chunk size overflows");
				ch->size = ch->size << 4 | (uint64_t)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
				ch->digits++;
			} else if (ch->digits > 0 && (c == ';' || c == '\r' || c == ' ' || c == '\t')) {
				if (ch->size > limit - out->len)
					FAIL(S_PAYLOAD_TOO_LARGE, "body larger than --max-body");
				ch->state = c == ';' ? C_EXT : c == '\r' ? C_SIZE_LF : C_SIZE_BWS;
			} else {
				FAIL(S_BAD_REQUEST, "bad chunk size");
			}
			break;
		case C_SIZE_BWS:
			/* RFC 9112, 7.1.1: BWS before the ';' of an extension. */
			if (c == ';') {
				ch->state = C_EXT;
			} else if (c != ' ' && c != '\t') {
				FAIL(S_BAD_REQUEST, "bad chunk size");
			}
			break;
		case C_EXT:
		case C_TRAILER_LINE:
			/* Extensions, like trailer fields, are read, checked and
			 * thrown away. */
			if (c == '\r')
				ch->state = ch->state == C_EXT ? C_SIZE_LF : C_TRAILER_LF;
			else if (is_ctl(c))
				FAIL(S_BAD_REQUEST, ch->state == C_EXT ? "control byte in chunk extension" :
				    "control byte in trailer");
			break;
		case C_SIZE_LF:
			if (c != '\n')
				FAIL(S_BAD_REQUEST, "bad chunk size line ending");
			ch->line = 0;
			ch->digits = 0;
			ch->state = ch->size == 0 ? C_TRAILER : C_DATA;
			i++;
			continue;
		case C_DATA: {
			size_t take = n - i < ch->size ? n - i : (size_t)ch->size;

			buf_add(out, in + i, take);
			ch->size -= take;
			i += take;
			if (ch->size == 0)
				ch->state = C_DATA_CR;
			continue;
		}
		case C_DATA_CR:
		case C_DATA_LF:
			if (c != (ch->state == C_DATA_CR ? '\r' : '\n'))
				FAIL(S_BAD_REQUEST, "bad chunk terminator (expected CRLF after chunk data)");
			ch->state = ch->state == C_DATA_CR ? C_DATA_LF : C_SIZE;
			break;
		case C_TRAILER:
			if (c == '\r') {
				ch->state = C_END_LF;
				break;
			}
			if (++ch->trailer_fields > MAX_HEADER_FIELDS)
				FAIL(S_HEADERS_TOO_LARGE, "more than " STR(MAX_HEADER_FIELDS_N) " trailer fields");
			ch->state = C_TRAILER_LINE;
			continue;  /* look at c as part of the line */
		case C_TRAILER_LF:
		case C_END_LF:
			if (c != '\n')
				FAIL(S_BAD_REQUEST, "bare CR in chunked body");
			ch->state = ch->state == C_END_LF ? C_DONE : C_TRAILER;
			break;
		case C_DONE:
			break;
		}
		/* One byte of a size or trailer line was taken. */
		if (ch->state <= C_SIZE_LF) {
			if (++ch->line > MAX_CHUNK_LINE)
				FAIL(S_BAD_REQUEST, "chunk size line longer than " STR(MAX_CHUNK_LINE_N) " bytes");
		} else if (ch->state >= C_TRAILER && ch->state <= C_END_LF) {
			if (++ch->trailer > MAX_HEADER_BLOCK)
				FAIL(S_HEADERS_TOO_LARGE, "trailer fields longer than " STR(MAX_HEADER_BLOCK_N) " bytes");
		}
		i++;
	}
	if (ch->state == C_DONE)
		st = S_OK;
out:
	*used = i;  /* on an error, the bytes before the bad one */
	return st;
}
#undef FAIL

/* n bytes as 2n lowercase hex digits and a NUL, into out. */
static void
hex_encode(const unsigned char *p, size_t n, char *out)
{
	size_t i;

	for (i = 0; i < n; i++) {
		out[2 * i] = "0123456789abcdef"[p[i] >> 4];
		out[2 * i + 1] = "0123456789abcdef"[p[i] & 15];
	}
	out[2 * n] = '\0';
}

static int
hex_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Form-decode (%XX, and '+' as space) s[0, n) into out, at most cap bytes
 * kept; returns the decoded length, which may exceed cap. A '%' not
 * followed by two hex digits stays as it is, as Python's decoders leave it. */
static size_t
form_decode(const char *s, size_t n, char *out, size_t cap)
{
	size_t i, o = 0;

	for (i = 0; i < n; i++, o++) {
		char c = s[i];

		if (c == '+') {
			c = ' ';
		} else if (c == '%' && i + 2 < n && hex_value((unsigned char)s[i + 1]) >= 0 &&
		    hex_value((unsigned char)s[i + 2]) >= 0) {
			c = (char)(hex_value((unsigned char)s[i + 1]) << 4 | hex_value((unsigned char)s[i + 2]));
			i += 2;
		}
		if (o < cap)
			out[o] = c;
	}
	return o;
}

/* Find the first parameter called name in a query string (both sides
 * form-decoded, pairs split on '&') and decode its value into out.
 * Returns the value's decoded length (which may exceed cap), or -1 if
 * there is no such parameter. */
static long
query_param(const char *q, size_t n, const char *name, char *out, size_t cap)
{
	const char *end = q + n;

	while (q < end) {
		const char *amp = memchr(q, '&', (size_t)(end - q));
		const char *pe = amp ? amp : end;
		const char *eq = memchr(q, '=', (size_t)(pe - q));
		const char *ke = eq ? eq : pe;
		char key[64];
		size_t klen = form_decode(q, (size_t)(ke - q), key, sizeof(key));

		if (klen == strlen(name) && klen <= sizeof(key) && memcmp(key, name, klen) == 0) {
			if (eq == NULL)
				return 0;
			return (long)form_decode(eq + 1, (size_t)(pe - eq - 1), out, cap);
		}
		q = amp ? amp + 1 : end;
	}
	return -1;
}

/* Split HOST[:PORT] or [V6ADDR][:PORT] (a URL's authority, an address to
 * listen on or to dial) into host and port, the port empty when there is
 * none: the file's one such parser. 0, or -1 with *why. */
static int
split_host_port(const char *s, size_t n, char *host, size_t hn, char *port, size_t pn, const char **why)
{
	const char *h = s, *end = s + n, *colon;
	size_t hl, pl;

	*why = "expected HOST:PORT, or [IPV6]:PORT";
	if (n > 0 && s[0] == '[') {
		const char *rb = memchr(s, ']', n);

		if (rb == NULL)
			return -1;
		h = s + 1;
		hl = (size_t)(rb - h);
		colon = rb + 1 < end ? rb + 1 : NULL;
		if ((colon != NULL && *colon != ':') || memchr(h, ':', hl) == NULL)
			return -1;
	} else {
		colon = memchr(s, ':', n);
		hl = colon != NULL ? (size_t)(colon - s) : n;
		if (colon != NULL && memchr(colon + 1, ':', (size_t)(end - colon - 1)) != NULL) {
			*why = "put an IPv6 address in brackets, as [::1]:8080";
			return -1;
		}
	}
	if (hl >= hn) {
		*why = "the host is too long";
		return -1;
	}
	memcpy(host, h, hl);
	host[hl] = '\0';
	port[0] = '\0';
	if (colon != NULL) {
		pl = (size_t)(end - colon - 1);
		*why = "the port must be a number from 0 to 65535";
		if (pl == 0 || pl > 5 || pl >= pn || strspn(colon + 1, "0123456789") < pl)
			return -1;
		memcpy(port, colon + 1, pl);
		port[pl] = '\0';
		if (atoi(port) > 65535)
			return -1;
	}
	return 0;
}

/* Is this decoded token one X could have sent? Base64 and base64url
 * characters only, 1 to 255 of them: never an event body, so the CRC can
 * never be made to sign one. */
static int
crc_token_ok(const char *t, size_t n)
{
	size_t i;

	if (n == 0 || n > MAX_CRC_TOKEN)
		return 0;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)t[i];

		if (!isalnum(c) && c != '+' && c != '/' && c != '=' && c != '_' && c != '-')
			return 0;
	}
	return 1;
}

/* ------------------------------------------------------------------------
 * [TRANSPORT] How a connection's bytes move, and what a connection is. The
 * HTTP code calls only three operations, each with a deadline, so that TLS
 * slots in beside the plain socket without the HTTP code changing.
 *
 * Owns struct conn: its one state field (enum conn_state, changed only by
 * conn_enter, which asserts the state it leaves), who owns each field, and
 * the plain socket's read, write and close. Calls [UTIL].
 * ------------------------------------------------------------------------ */

struct conn;

/* What read returns besides a byte count (0 is the peer's end of stream). */
enum { IO_ERROR = -1, IO_TIMEOUT = -2, IO_WOKEN = -3 };

struct transport {
	/* Read up to n bytes, waiting until deadline (monotonic ms). If
	 * wake_fd >= 0, the wait ends with IO_WOKEN when it becomes readable:
	 * that is how idle connections hear of a shutdown. */
	ssize_t (*read)(struct conn *c, void *p, size_t n, int64_t deadline, int wake_fd);
	/* Write all n bytes by deadline: 0, or -1. */
	int (*write)(struct conn *c, const void *p, size_t n, int64_t deadline);
	/* End the connection. With linger, stop sending and read what the
	 * peer still sends for a while first, so that the answer we just gave
	 * is not destroyed by a TCP reset over unread bytes. */
	void (*close)(struct conn *c, int linger);
};

/* Which part of the server a request asked for, for the metrics. */
enum route { R_OTHER, R_CRC, R_EVENT, R_HEALTHZ, R_ACME_HTTP, R_COUNT };

/* What the access log says of one request. */
struct outcome {
	int code;
	size_t in_bytes, out_bytes;   /* request and response body bytes */
	const char *sig;              /* for POSTs: "ok", "bad", "missing" */
	const char *why;              /* for errors */
	int64_t sinks_us;             /* for events: how long every sink took, or -1 */
	int route;                    /* enum route, for the metrics */
	int handed;                   /* the event went to the writer */
};

/* A verified event on its way to the sinks. It lives in its connection,
 * which waits for the writer's verdict (a connection has one at a time). */
struct event {
	struct event *next;           /* the event writer's queue */
	int64_t verified;             /* monotonic ms; sink deadlines count from it */
	int64_t verified_us, took_us; /* and how long the sinks took, for the log */
	enum status result;           /* S_INCOMPLETE until the writer decides */
	const char *why;              /* a static string, when not S_OK */
};

/*
 * One client connection, and where it is: one state, changed only by
 * conn_enter, which asserts the state it leaves (as darkhttpd checks on
 * entry to each of its states).
 *
 *   CS_NEW -> CS_LOOP <-> CS_PARKED -> CS_UNPOLLED -> CS_LOOP
 *   CS_NEW or CS_LOOP -> CS_THREAD <-> CS_WAITING
 *   CS_LOOP or CS_THREAD -> CS_FLUSHING -> closed
 *
 * A connection starts on a loop, which answers what arrived whole; an
 * event parks it while the event writer decides; at the first sign of
 * waiting it moves to a thread of its own (never back), where an event
 * makes it wait for the verdict. Any state but the parked and waiting ones
 * may end in a close (connection_end).
 */
enum conn_state {
	CS_NEW,       /* accepted, not yet given to a loop or a thread */
	CS_LOOP,      /* on a loop, in its epoll set: answers what arrived whole */
	CS_PARKED,    /* on a loop, its event with the writer; still in the epoll set */
	CS_UNPOLLED,  /* parked, and out of the epoll set since bytes came meanwhile */
	CS_THREAD,    /* on a thread of its own */
	CS_WAITING,   /* on its thread, waiting for the writer's verdict on its event */
	CS_FLUSHING,  /* on its thread (or handed to one) after its last answer:
	               * only sending what is left, then the close */
};

/*
 * Who owns what. state is written only by whoever serves the connection
 * (its loop, then perhaps its thread, never both), at each transition; the
 * accept thread reads it to spare a connection whose event is with the
 * writer (slot_evict), and the writer reads it to know how to hand the
 * verdict back. So it is atomic, and relaxed: every hand-off between
 * threads already goes through a lock or pthread_create.
 *
 * The fields from tls to pending belong to whoever serves the connection,
 * except while its event is with the writer (CS_PARKED, CS_UNPOLLED,
 * CS_WAITING): then the server side touches none of them, and the writer
 * reads pretty, compact, body_sha and type and writes ev (result, why, took_us,
 * next). finished and the loop's lists belong to the loop's lock. The slot
 * fields belong to conns_lock (the accept thread may evict a connection
 * from another thread: it only ever calls shutdown() on its descriptor,
 * which stays open until the owner has given the slot back). The rule the
 * chunked-body bug once broke: req points into in, so the bytes of a
 * request's head are never moved or overwritten until that request is
 * answered.
 */
/* A connection's place on one list of connections: its loop's, or its
 * peer address's (conn_list_remove takes it off either). */
struct conn_link {
	struct conn *prev, *next;
};

struct conn {
	/* Set at accept, then only read. */
	int fd;
	const struct transport *tr;
	int64_t accepted;           /* monotonic ms */
	char peer[INET6_ADDRSTRLEN + 8];
	int acme_http;              /* came in on --acme-http: http-01 answers only */

	atomic_int state;           /* enum conn_state: see conn_enter */

	/* Whoever serves it (and the writer, as said above). */
	void *tls;                  /* the TLS transport's state */
	char *in;                   /* CONN_BUF bytes received */
	size_t in_len;              /* bytes in it */
	size_t pos;                 /* bytes the current request has used */
	struct request req;         /* the request being answered */
	struct outcome o;           /* what its log line will say */
	int64_t start_us;           /* when its head was complete */
	int64_t first_us;           /* when its first byte came, for the metrics */
	struct buf out;             /* the response being sent */
	struct buf body;            /* the request body */
	size_t body_charged;        /* of body's capacity, drawn from the budget */
	struct buf pretty, compact; /* the event, for stdout and for --output */
	char body_sha[65];          /* hex SHA-256 of the body, for --forward */
	char type[EVENT_TYPE_MAX];  /* the event's type (event_type), once verified */
	struct event ev;            /* the writer's from event_submit to its verdict */
	/* What is left to send: bytes, not a state. A loop leaves them for
	 * the thread it hands the connection to, in CS_THREAD (it goes on
	 * serving after them) or CS_FLUSHING (it closes after them). */
	struct buf pending;         /* an answer a loop could not finish sending */
	int unsent;                 /* TLS records the loop could not send */
	int linger;                 /* the hand-off's close lingers (see transport) */

	/* The loop's, in CS_LOOP, CS_PARKED and CS_UNPOLLED. */
	struct loop *loop;          /* which loop serves it (NULL off the loops) */
	struct conn_link on_loop;   /* that loop's connections: under its lock */
	struct conn *finished;      /* the loop's verdicts: under its lock (the writer adds) */
	int64_t expires;            /* the loop closes it then, if still idle */

	/* conns_lock's. */
	struct peer *slot;          /* the address it counts against, or NULL */
	struct conn_link on_peer;   /* that address's connections, oldest first */
	int fresh;                  /* no request answered yet */
	_Atomic int64_t last_answer;   /* monotonic ms: accept, then each answer */
};

static enum conn_state
conn_state(const struct conn *c)
{
	return (enum conn_state)atomic_load_explicit(&((struct conn *)c)->state, memory_order_relaxed);
}

/* The one way a connection changes state: from the one it must be in. */
static void
conn_enter(struct conn *c, enum conn_state from, enum conn_state to)
{
	assert(conn_state(c) == from);
	(void)from;
	atomic_store_explicit(&c->state, (int)to, memory_order_relaxed);
}

/* On a loop (which never waits on one client), parked or not. */
static int
conn_on_loop(const struct conn *c)
{
	enum conn_state s = conn_state(c);

	return s == CS_LOOP || s == CS_PARKED || s == CS_UNPOLLED;
}

/* Parked on its loop: its event is with the writer. */
static int
conn_parked(const struct conn *c)
{
	enum conn_state s = conn_state(c);

	return s == CS_PARKED || s == CS_UNPOLLED;
}

/* Wait until fd is ready for events (or wake_fd is readable), by deadline. */
static int
wait_fd(int fd, short events, int64_t deadline, int wake_fd)
{
	struct pollfd pfd[2];

	pfd[0].fd = fd;
	pfd[0].events = events;
	pfd[1].fd = wake_fd;
	pfd[1].events = POLLIN;
	for (;;) {
		int64_t left = deadline - now_ms();
		int r;

		if (left <= 0)
			return IO_TIMEOUT;
		r = poll(pfd, wake_fd >= 0 ? 2 : 1, left > INT_MAX ? INT_MAX : (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return IO_ERROR;
		if (r == 0)
			continue;  /* the loop re-checks the clock */
		if (wake_fd >= 0 && pfd[1].revents != 0 && pfd[0].revents == 0)
			return IO_WOKEN;
		return 0;
	}
}

static ssize_t
plain_read(struct conn *c, void *p, size_t n, int64_t deadline, int wake_fd)
{
	/* Between requests the next one has rarely arrived yet, so wait
	 * first there, and try the read first everywhere else. */
	int waited = 0;

	if (wake_fd >= 0) {
		int w = wait_fd(c->fd, POLLIN, deadline, wake_fd);

		if (w < 0)
			return w;
		waited = 1;
	}
	for (;;) {
		ssize_t r = recv(c->fd, p, n, 0);

		if (r >= 0)
			return r;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return IO_ERROR;
		r = wait_fd(c->fd, POLLIN, deadline, waited ? wake_fd : -1);
		if (r < 0)
			return r;
	}
}

static int
plain_write(struct conn *c, const void *p, size_t n, int64_t deadline)
{
	const char *s = p;

	while (n > 0) {
		ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return -1;
			if (conn_on_loop(c)) {
				/* A loop never waits on one client: the rest
				 * goes out from the connection's own thread. */
				buf_add(&c->pending, s, n);
				return 0;
			}
			if (wait_fd(c->fd, POLLOUT, deadline, -1) < 0)
				return -1;
			continue;
		}
		s += w;
		n -= (size_t)w;
	}
	return 0;
}

static void
plain_close(struct conn *c, int linger)
{
	if (linger && shutdown(c->fd, SHUT_WR) == 0) {
		int64_t deadline = now_ms() + linger_timeout;
		size_t thrown = 0;
		char sink[4096];

		while (thrown < LINGER_BYTES) {
			ssize_t r = plain_read(c, sink, sizeof(sink), deadline, -1);

			if (r <= 0)
				break;
			thrown += (size_t)r;
		}
	}
	close(c->fd);
}

static const struct transport plain_transport = { plain_read, plain_write, plain_close };

#ifdef XWEBHOOK_TLS

/* ------------------------------------------------------------------------
 * [TLS] TLS through BearSSL: the identity (certificate chain and key), one
 * session cache shared by all connections, the hooks through which the
 * server answers ACME's challenges (set by [ACME]), and the TLS transport,
 * which offers the same three operations as the plain one. Calls [DER],
 * [TRANSPORT]'s waits, and BearSSL.
 * ------------------------------------------------------------------------ */

enum {
	/* Sessions remembered for resumption; each takes 100 bytes. */
	TLS_SESSIONS = 10000,
	/* Warn when the certificate has fewer days than this left. */
	EXPIRY_WARN_DAYS = 14,
};

/* A certificate chain and its key, as loaded from --cert and --key. The
 * connections that started under it hold a reference, so a reload (SIGHUP)
 * can swap in a new one while they finish with the old. */
struct identity {
	br_x509_certificate *chain;
	size_t chain_len;
	br_skey_decoder_context key;    /* the decoded private key lives here */
	int key_type;                   /* BR_KEYTYPE_RSA or BR_KEYTYPE_EC */
	unsigned issuer_key_type;       /* read from the leaf's signature */
	struct cert_info leaf;
	unsigned refs;
};

static pthread_mutex_t identity_lock = PTHREAD_MUTEX_INITIALIZER;
static struct identity *current_identity;

/* ECDHE key exchange and AEAD ciphers only: forward secrecy, no CBC, no
 * static RSA or ECDH, no 3DES. ChaCha20+Poly1305 is faster than AES/GCM
 * without AES instructions; tls_suites_init puts AES/GCM first when the
 * CPU has them. */
static uint16_t tls_suites[] = {
	BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	BR_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
};
static const char *tls_alpn[] = { "http/1.1" };

static void
tls_suites_init(void)
{
	if (br_aes_x86ni_ctrcbc_get_vtable() != NULL || br_aes_pwr8_ctrcbc_get_vtable() != NULL) {
		uint16_t aes_first[] = {
			BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, BR_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		};

		memcpy(tls_suites, aes_first, sizeof(tls_suites));
	}
}

/* The PEM objects of a file: name and DER bytes. */
struct pem_object {
	char name[128];   /* as long as BearSSL keeps them */
	struct buf der;
};

static void
pem_collect(void *ctx, const void *p, size_t n)
{
	buf_add(ctx, p, n);
}

/* Decode every PEM object in text; -1 if one is malformed or cut short. */
static int
pem_decode(const char *text, size_t len, struct pem_object **objs, size_t *count)
{
	br_pem_decoder_context pc;
	int inside = 0, pass;

	*objs = NULL;
	*count = 0;
	br_pem_decoder_init(&pc);
	/* The decoder wants a line end after the last END line; a file
	 * may lack it, so one more newline is pushed at the end. */
	for (pass = 0; pass < 2; pass++) {
		const char *p = pass == 0 ? text : "\n";
		size_t n = pass == 0 ? len : 1;

		while (n > 0) {
			size_t k = br_pem_decoder_push(&pc, p, n);

			p += k;
			n -= k;
			switch (br_pem_decoder_event(&pc)) {
			case BR_PEM_BEGIN_OBJ: {
				struct pem_object *o;

				*objs = xrealloc(*objs, (*count + 1) * sizeof(**objs));
				o = &(*objs)[(*count)++];
				memset(o, 0, sizeof(*o));
				snprintf(o->name, sizeof(o->name), "%s", br_pem_decoder_name(&pc));
				br_pem_decoder_setdest(&pc, pem_collect, &o->der);
				inside = 1;
				break;
			}
			case BR_PEM_END_OBJ:
				inside = 0;
				break;
			case BR_PEM_ERROR:
				return -1;
			}
		}
	}
	return inside ? -1 : 0;
}

static void
pem_free(struct pem_object *objs, size_t count)
{
	size_t i;

	for (i = 0; objs != NULL && i < count; i++)
		buf_free(&objs[i].der);
	free(objs);
}

/* Does the private key match the certificate's public key? BearSSL does
 * not check, and a mismatch only shows as every handshake failing. */
static int
key_matches(const br_skey_decoder_context *key, const br_x509_pkey *pk)
{
	if (br_skey_decoder_key_type(key) == BR_KEYTYPE_RSA && pk->key_type == BR_KEYTYPE_RSA) {
		/* Sign with the key and verify with the certificate: that
		 * checks the modulus and the exponent together. (BearSSL's
		 * br_rsa_compute_pubexp cannot recover e from every key.) */
		const br_rsa_private_key *sk = br_skey_decoder_get_rsa(key);
		unsigned char hash[32], out[32], sig[1024];
		size_t siglen = (sk->n_bitlen + 7) / 8;
		struct digest h;

		if (siglen > sizeof(sig) || pk->key.rsa.nlen > sizeof(sig) + 1)
			return 0;
		sha256_init(&h);
		digest_update(&h, "xwebhook key check", 18);
		digest_final(&h, hash);
		return br_rsa_pkcs1_sign_get_default()(BR_HASH_OID_SHA256, hash, 32, sk, sig) == 1 &&
		    br_rsa_pkcs1_vrfy_get_default()(sig, siglen, BR_HASH_OID_SHA256, 32, &pk->key.rsa, out) == 1 &&
		    memcmp(out, hash, 32) == 0;
	}
	if (br_skey_decoder_key_type(key) == BR_KEYTYPE_EC && pk->key_type == BR_KEYTYPE_EC) {
		const br_ec_private_key *sk = br_skey_decoder_get_ec(key);
		unsigned char kbuf[BR_EC_KBUF_PUB_MAX_SIZE];
		br_ec_public_key pub;

		if (br_ec_compute_pub(br_ec_get_default(), &pub, kbuf, sk) == 0)
			return 0;
		return pub.curve == pk->key.ec.curve && pub.qlen == pk->key.ec.qlen &&
		    memcmp(pub.q, pk->key.ec.q, pub.qlen) == 0;
	}
	return 0;
}

static void
identity_free(struct identity *id)
{
	size_t i;

	if (id == NULL)
		return;
	for (i = 0; i < id->chain_len; i++)
		free(id->chain[i].data);
	free(id->chain);
	/* The key's bytes are secret: do not leave them in freed memory. */
	memset(&id->key, 0, sizeof(id->key));
	free(id);
}

/* Read a file for identity_load, with a one-line reason on failure. */
static int
identity_read(const char *what, const char *path, struct buf *b, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || read_all(fd, b) < 0) {
		snprintf(err, errlen, "cannot read %s %s: %s", what, path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/* The --cert chain into id->chain, in file order: 0, or -1 with err. */
static int
identity_chain(struct identity *id, const char *certf, const struct buf *cert_text, char *err, size_t errlen)
{
	struct pem_object *objs = NULL;
	size_t count = 0, i;

	if (pem_decode(cert_text->p, cert_text->len, &objs, &count) < 0) {
		snprintf(err, errlen, "--cert %s is not valid PEM", certf);
		pem_free(objs, count);
		return -1;
	}
	for (i = 0; i < count; i++) {
		if (strcmp(objs[i].name, "CERTIFICATE") != 0 && strcmp(objs[i].name, "X509 CERTIFICATE") != 0)
			continue;
		id->chain = xrealloc(id->chain, (id->chain_len + 1) * sizeof(*id->chain));
		id->chain[id->chain_len].data = (unsigned char *)objs[i].der.p;
		id->chain[id->chain_len].data_len = objs[i].der.len;
		id->chain_len++;
		objs[i].der.p = NULL;   /* now the chain's */
		objs[i].der.len = objs[i].der.cap = 0;
	}
	pem_free(objs, count);
	if (id->chain_len == 0) {
		snprintf(err, errlen, "--cert %s holds no certificate", certf);
		return -1;
	}
	return 0;
}

/* The --key into id->key (RSA, or EC on the curves BearSSL signs with),
 * leaving no copy of it behind: 0, or -1 with err. */
static int
identity_key(struct identity *id, const char *keyf, const struct buf *key_text, char *err, size_t errlen)
{
	struct buf text = { 0 };
	struct pem_object *objs = NULL;
	size_t count = 0, i;
	int found = 0, bad = 0;

	/* A copy that ends with a NUL for strstr. */
	buf_add(&text, key_text->p, key_text->len);
	buf_addc(&text, '\0');
	if (strstr(text.p, "ENCRYPTED") != NULL) {
		snprintf(err, errlen, "--key %s is encrypted; write it decrypted "
		    "(openssl pkey -in %s -out key.pem) and keep that file private", keyf, keyf);
		bad = 1;
	} else if (pem_decode(text.p, text.len - 1, &objs, &count) < 0) {
		snprintf(err, errlen, "--key %s is not valid PEM", keyf);
		bad = 1;
	}
	for (i = 0; i < count && !found && !bad; i++) {
		if (strcmp(objs[i].name, "PRIVATE KEY") != 0 && strcmp(objs[i].name, "RSA PRIVATE KEY") != 0 &&
		    strcmp(objs[i].name, "EC PRIVATE KEY") != 0)
			continue;
		found = 1;
		br_skey_decoder_init(&id->key);
		br_skey_decoder_push(&id->key, objs[i].der.p, objs[i].der.len);
		if (objs[i].der.len > 0)  /* an empty object has no buffer */
			memset(objs[i].der.p, 0, objs[i].der.len);
		if (br_skey_decoder_last_error(&id->key) != 0) {
			snprintf(err, errlen, "--key %s: unsupported or malformed key "
			    "(RSA, or EC on P-256, P-384 or P-521)", keyf);
			bad = 1;
		}
	}
	pem_free(objs, count);
	memset(text.p, 0, text.cap);
	buf_free(&text);
	if (bad)
		return -1;
	if (!found) {
		snprintf(err, errlen, "--key %s holds no private key", keyf);
		return -1;
	}
	id->key_type = br_skey_decoder_key_type(&id->key);
	if (id->key_type == BR_KEYTYPE_EC) {
		int curve = br_skey_decoder_get_ec(&id->key)->curve;

		if (curve != BR_EC_secp256r1 && curve != BR_EC_secp384r1 && curve != BR_EC_secp521r1) {
			snprintf(err, errlen, "--key %s: unsupported curve (P-256, P-384 or P-521 only)", keyf);
			return -1;
		}
	}
	return 0;
}

/* The leaf: its key must be ours; its signer's key type matters to
 * BearSSL's EC profile, so it is read, never assumed. 0, or -1 with err. */
static int
identity_leaf(struct identity *id, const char *certf, const char *keyf, char *err, size_t errlen)
{
	br_x509_decoder_context dc;
	const br_x509_pkey *pk;

	br_x509_decoder_init(&dc, NULL, NULL);
	br_x509_decoder_push(&dc, id->chain[0].data, id->chain[0].data_len);
	pk = br_x509_decoder_get_pkey(&dc);
	if (pk == NULL || cert_info(id->chain[0].data, id->chain[0].data_len, &id->leaf) < 0) {
		snprintf(err, errlen, "--cert %s: the first certificate cannot be decoded", certf);
		return -1;
	}
	if (!key_matches(&id->key, pk)) {
		snprintf(err, errlen, "the key in %s does not match the certificate in %s "
		    "(the first one, which must be the server's own)", keyf, certf);
		return -1;
	}
	id->issuer_key_type = (unsigned)br_x509_decoder_get_signer_key_type(&dc);
	if (id->issuer_key_type == 0)
		id->issuer_key_type = BR_KEYTYPE_RSA | BR_KEYTYPE_EC;  /* unknown: no ECDH suites use it */
	return 0;
}

/* Make an identity of a chain (leaf first, as certbot's fullchain.pem)
 * and a key, from the texts of their files (named for messages). Returns
 * NULL with a one-line reason in err when they cannot serve. */
static struct identity *
identity_parse(const char *certf, const struct buf *cert_text, const char *keyf,
    const struct buf *key_text, char *err, size_t errlen)
{
	struct identity *id = xmalloc(sizeof(*id));

	memset(id, 0, sizeof(*id));
	if (identity_chain(id, certf, cert_text, err, errlen) < 0 ||
	    identity_key(id, keyf, key_text, err, errlen) < 0 ||
	    identity_leaf(id, certf, keyf, err, errlen) < 0) {
		identity_free(id);
		return NULL;
	}
	id->refs = 1;
	return id;
}

/* Load --cert and --key from their files; NULL and a reason on failure. */
static struct identity *
identity_load(const char *certf, const char *keyf, char *err, size_t errlen)
{
	struct buf cert = { 0 }, key = { 0 };
	struct identity *id = NULL;

	if (identity_read("--cert", certf, &cert, err, errlen) == 0 &&
	    identity_read("--key", keyf, &key, err, errlen) == 0)
		id = identity_parse(certf, &cert, keyf, &key, err, errlen);
	if (key.p != NULL)
		memset(key.p, 0, key.cap);
	buf_free(&cert);
	buf_free(&key);
	return id;
}

/* Say what is served, and warn of what X will refuse. */
static void
identity_describe(const struct identity *id, const char *when)
{
	char date[32];
	time_t now = time(NULL);
	long days = (long)((id->leaf.not_after - now) / 86400);

	format_date(id->leaf.not_after, date, sizeof(date));
	warn("%scertificate serial %s (%s key, chain of %zu), expires %s", when, id->leaf.serial,
	    id->key_type == BR_KEYTYPE_RSA ? "RSA" : "EC", id->chain_len, date);
	if (id->leaf.not_after <= now)
		warn("warning: the certificate expired on %s; X will refuse it", date);
	else if (days < EXPIRY_WARN_DAYS)
		warn("warning: the certificate expires in %ld day(s), on %s; renew it", days, date);
	if (id->chain_len == 1)
		warn("warning: --cert %s holds a single certificate; X will not fetch a missing "
		    "intermediate, so give the full chain (certbot's fullchain.pem)",
		    cert_path != NULL ? cert_path : "(the CA's)");
}

static struct identity *
identity_acquire(void)
{
	struct identity *id;

	pthread_mutex_lock(&identity_lock);
	id = current_identity;
	if (id != NULL)  /* none while ACME gets the first certificate */
		id->refs++;
	pthread_mutex_unlock(&identity_lock);
	return id;
}

static void
identity_release(struct identity *id)
{
	unsigned left;

	if (id == NULL)
		return;
	pthread_mutex_lock(&identity_lock);
	left = --id->refs;
	pthread_mutex_unlock(&identity_lock);
	if (left == 0)
		identity_free(id);
}

static void acme_start(void);
static void acme_stop(void);

/* BearSSL's LRU session cache is not thread-safe: one lock around it. */
static struct {
	const br_ssl_session_cache_class *vtable;   /* first: BearSSL passes &vtable */
	br_ssl_session_cache_lru lru;
	unsigned char *store;
	pthread_mutex_t lock;
} session_cache = { NULL, { NULL, NULL, 0, 0, { 0 }, NULL, 0, 0, 0, 0 }, NULL, PTHREAD_MUTEX_INITIALIZER };

static void
session_save(const br_ssl_session_cache_class **ctx, br_ssl_server_context *sc,
    const br_ssl_session_parameters *params)
{
	(void)ctx;
	pthread_mutex_lock(&session_cache.lock);
	session_cache.lru.vtable->save(&session_cache.lru.vtable, sc, params);
	pthread_mutex_unlock(&session_cache.lock);
}

static int
session_load(const br_ssl_session_cache_class **ctx, br_ssl_server_context *sc,
    br_ssl_session_parameters *params)
{
	int r;

	(void)ctx;
	pthread_mutex_lock(&session_cache.lock);
	r = session_cache.lru.vtable->load(&session_cache.lru.vtable, sc, params);
	pthread_mutex_unlock(&session_cache.lock);
	return r;
}

static const br_ssl_session_cache_class session_cache_class = {
	sizeof(session_cache), session_save, session_load
};

/* Empty the cache: at start, and after a reload, so that no session made
 * under the old key is resumed. */
static void
session_cache_reset(void)
{
	pthread_mutex_lock(&session_cache.lock);
	if (session_cache.store == NULL)
		session_cache.store = xmalloc((size_t)TLS_SESSIONS * 100);
	br_ssl_session_cache_lru_init(&session_cache.lru, session_cache.store, (size_t)TLS_SESSIONS * 100);
	session_cache.vtable = &session_cache_class;
	pthread_mutex_unlock(&session_cache.lock);
}

/* What BearSSL's socket callbacks need of the call in progress. */
/* What the socket callbacks and the blocking transport need, the same
 * for a served connection and for the client: each one's state begins
 * with it, so that c->tls reaches it either way. */
struct tls_io {
	int64_t deadline;
	int wake_fd;
	ssize_t status;         /* why a callback failed: 0 at EOF, or IO_* */
	br_ssl_engine_context *eng;
	br_sslio_context io;
	int handshaken;         /* the engine has once been ready for data */
	int acme_only;          /* a tls-alpn-01 handshake: no HTTP on it */
};

/* One served TLS connection's state. */
struct tls_conn {
	struct tls_io sock;     /* first */
	br_ssl_server_context sc;
	struct identity *id;    /* NULL while ACME gets the first certificate */
	int first_seen;         /* the client's first byte was looked at */
	/* With --acme: the tls-alpn-01 certificate pending at accept, and
	 * the policy that picks it or the served one per handshake. */
	struct identity *alpn;
	const br_ssl_server_policy_class *policy;
	const br_ssl_server_policy_class **chosen;
	br_ssl_server_policy_ec_context alpn_policy;
	unsigned char iobuf[BR_SSL_BUFSIZE_BIDI];
};

/* Has the handshake finished (and so any failure is no handshake's)? */
static void
tls_note_handshake(struct tls_io *t)
{
	if (br_ssl_engine_current_state(t->eng) & BR_SSL_SENDAPP)
		t->handshaken = 1;
}

/* BearSSL's socket callbacks: the plain transport's waits and deadlines. */
static int
tls_sock_read(void *ctx, unsigned char *p, size_t n)
{
	struct conn *c = ctx;
	struct tls_io *t = c->tls;
	ssize_t r = plain_read(c, p, n, t->deadline, t->wake_fd);

	if (r > 0)
		return (int)r;
	t->status = r;
	return -1;
}

static int
tls_sock_write(void *ctx, const unsigned char *p, size_t n)
{
	struct conn *c = ctx;
	struct tls_io *t = c->tls;

	for (;;) {
		ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);

		if (w >= 0)
			return (int)w;
		if (errno == EINTR)
			continue;
		if ((errno == EAGAIN || errno == EWOULDBLOCK) && !conn_on_loop(c)) {
			/* A loop never waits (only its close_notify comes here). */
			int r = wait_fd(c->fd, POLLOUT, t->deadline, -1);

			if (r == 0)
				continue;
			t->status = r;
		} else {
			t->status = IO_ERROR;
		}
		return -1;
	}
}

/* ---- ACME's challenges, answered by the server (the client is [ACME]) ---- */

/* The challenges being answered. */

static struct {
	pthread_mutex_t lock;
	struct identity *alpn;       /* the tls-alpn-01 certificate, while one is pending */
	char token[128];             /* http-01: the token, and its key authorization */
	char key_auth[256];
} challenge = { PTHREAD_MUTEX_INITIALIZER, NULL, "", "" };

/* The tls-alpn-01 identity for a handshake: a reference, or NULL. */
static struct identity *
challenge_acquire(void)
{
	struct identity *id;

	pthread_mutex_lock(&identity_lock);
	id = challenge.alpn;
	if (id != NULL)
		id->refs++;
	pthread_mutex_unlock(&identity_lock);
	return id;
}

static void
challenge_set_alpn(struct identity *id)
{
	struct identity *old;

	pthread_mutex_lock(&identity_lock);
	old = challenge.alpn;
	challenge.alpn = id;
	pthread_mutex_unlock(&identity_lock);
	if (old != NULL)
		identity_release(old);
}

/* http-01: the key authorization for token, into out: 1, or 0. */
static int
challenge_http(const char *token, size_t n, char *out, size_t on)
{
	int found;

	pthread_mutex_lock(&challenge.lock);
	found = challenge.token[0] != '\0' && strlen(challenge.token) == n && memcmp(challenge.token, token, n) == 0;
	if (found)
		snprintf(out, on, "%s", challenge.key_auth);
	pthread_mutex_unlock(&challenge.lock);
	return found;
}

/* --acme: the policy of each handshake. A ClientHello that offers only
 * ALPN acme-tls/1 with the domain as its SNI gets the tls-alpn-01
 * certificate (RFC 8737, 3), and nothing after the handshake; every other
 * handshake gets the served certificate, as without --acme. */
static struct tls_conn *
tls_of_policy(const br_ssl_server_policy_class **pctx)
{
	return (struct tls_conn *)(void *)((char *)pctx - offsetof(struct tls_conn, policy));
}

static int
acme_choose(const br_ssl_server_policy_class **pctx, const br_ssl_server_context *cc,
    br_ssl_server_choices *choices)
{
	struct tls_conn *t = tls_of_policy(pctx);
	const char *proto = br_ssl_engine_get_selected_protocol((br_ssl_engine_context *)&cc->eng);
	const char *sni = br_ssl_engine_get_server_name(&cc->eng);

	if (proto != NULL && strcmp(proto, "acme-tls/1") == 0) {
		if (t->alpn == NULL || strcasecmp(sni, acme_domain) != 0)
			return 0;
		t->sock.acme_only = 1;
		t->chosen = &t->alpn_policy.vtable;
	} else {
		if (t->id == NULL)
			return 0;  /* no certificate yet */
		t->chosen = &t->sc.chain_handler.vtable;
	}
	return (*t->chosen)->choose(t->chosen, cc, choices);
}

static uint32_t
acme_do_keyx(const br_ssl_server_policy_class **pctx, unsigned char *data, size_t *len)
{
	const br_ssl_server_policy_class **p = tls_of_policy(pctx)->chosen;

	return (*p)->do_keyx(p, data, len);
}

static size_t
acme_do_sign(const br_ssl_server_policy_class **pctx, unsigned algo_id, unsigned char *data, size_t hv_len,
    size_t len)
{
	const br_ssl_server_policy_class **p = tls_of_policy(pctx)->chosen;

	return (*p)->do_sign(p, algo_id, data, hv_len, len);
}

static const br_ssl_server_policy_class acme_policy_class = {
	sizeof(struct tls_conn), acme_choose, acme_do_keyx, acme_do_sign,
};

static const char *tls_alpn_acme[] = { "http/1.1", "acme-tls/1" };

/* Set up the server engine for a new connection, under the identity
 * current at that moment. */
static struct tls_conn *
tls_start(struct conn *c)
{
	struct tls_conn *t = malloc(sizeof(*t));
	struct identity *base;
	unsigned char seed[32];

	if (t == NULL)
		return NULL;  /* the connection is refused, not the server stopped */
	/* iobuf is not cleared: the engine writes before it reads. */
	memset(t, 0, offsetof(struct tls_conn, iobuf));
	t->id = identity_acquire();
	t->alpn = acme_domain != NULL ? challenge_acquire() : NULL;
	base = t->id != NULL ? t->id : t->alpn;
	if (base == NULL) {
		free(t);  /* ACME has no certificate yet, and no challenge is pending */
		return NULL;
	}
	if (base->key_type == BR_KEYTYPE_RSA)
		br_ssl_server_init_full_rsa(&t->sc, base->chain, base->chain_len, br_skey_decoder_get_rsa(&base->key));
	else
		br_ssl_server_init_full_ec(&t->sc, base->chain, base->chain_len, base->issuer_key_type,
		    br_skey_decoder_get_ec(&base->key));
	if (t->alpn != NULL) {
		/* BearSSL's single-EC policy for the challenge's certificate,
		 * set up in the context and moved out, the served one put back. */
		br_ssl_server_context keep = t->sc;

		br_ssl_server_set_single_ec(&t->sc, t->alpn->chain, t->alpn->chain_len,
		    br_skey_decoder_get_ec(&t->alpn->key), BR_KEYTYPE_SIGN, BR_KEYTYPE_EC, br_ec_get_default(),
		    br_ecdsa_sign_asn1_get_default());
		t->alpn_policy = t->sc.chain_handler.single_ec;
		t->sc.chain_handler = keep.chain_handler;
	}
	if (acme_domain != NULL) {
		t->policy = &acme_policy_class;
		br_ssl_server_set_policy(&t->sc, &t->policy);
	}
	br_ssl_engine_set_versions(&t->sc.eng, BR_TLS12, BR_TLS12);
	br_ssl_engine_set_suites(&t->sc.eng, tls_suites, sizeof(tls_suites) / sizeof(tls_suites[0]));
	/* A client that offers ALPN without http/1.1 gets the alert
	 * no_application_protocol (RFC 7301, 3.2); one that offers none is
	 * served. */
	br_ssl_engine_add_flags(&t->sc.eng, BR_OPT_ENFORCE_SERVER_PREFERENCES | BR_OPT_NO_RENEGOTIATION |
	    BR_OPT_FAIL_ON_ALPN_MISMATCH);
	if (acme_domain != NULL)
		br_ssl_engine_set_protocol_names(&t->sc.eng, tls_alpn_acme, 2);
	else
		br_ssl_engine_set_protocol_names(&t->sc.eng, tls_alpn, 1);
	br_ssl_engine_set_buffer(&t->sc.eng, t->iobuf, sizeof(t->iobuf), 1);
	br_ssl_server_set_cache(&t->sc, &session_cache.vtable);
	/* Seeded from getrandom() here, not from files BearSSL would open
	 * itself, so it works after a chroot or a privilege drop. */
	entropy(seed, sizeof(seed));
	br_ssl_engine_inject_entropy(&t->sc.eng, seed, sizeof(seed));
	memset(seed, 0, sizeof(seed));
	br_ssl_server_reset(&t->sc);
	t->sock.eng = &t->sc.eng;
	br_sslio_init(&t->sock.io, &t->sc.eng, tls_sock_read, c, tls_sock_write, c);
	t->sock.wake_fd = -1;
	c->tls = t;
	return t;
}

/* The blocking TLS transport, for served connections on their threads
 * and for the client alike. */
static ssize_t
tls_read(struct conn *c, void *p, size_t n, int64_t deadline, int wake_fd)
{
	struct tls_io *t = c->tls != NULL ? c->tls : (void *)tls_start(c);
	int r;

	if (t == NULL)
		return IO_ERROR;
	/* The handshake counts against the head deadline, from accept: a
	 * client that connects and says nothing ties up nothing for long. */
	if (!t->handshaken && deadline > c->accepted + head_timeout)
		deadline = c->accepted + head_timeout;
	t->deadline = deadline;
	t->wake_fd = wake_fd;
	t->status = IO_ERROR;
	r = br_sslio_read(&t->io, p, n > INT_MAX ? INT_MAX : n);
	tls_note_handshake(t);
	if (r > 0 && t->acme_only)
		return IO_ERROR;  /* tls-alpn-01: nothing is served after its handshake */
	if (r > 0)
		return r;
	if (t->status == IO_TIMEOUT || t->status == IO_WOKEN)
		return t->status;
	if (br_ssl_engine_last_error(t->eng) == BR_ERR_OK || t->status == 0)
		return 0;  /* close_notify, or the peer went away */
	return IO_ERROR;
}

static int tls_write_loop(struct conn *c, const void *p, size_t n);

static int
tls_write(struct conn *c, const void *p, size_t n, int64_t deadline)
{
	struct tls_io *t = c->tls != NULL ? c->tls : (void *)tls_start(c);

	if (t == NULL)
		return -1;
	if (conn_on_loop(c))
		return tls_write_loop(c, p, n);
	t->deadline = deadline;
	t->wake_fd = -1;
	if (br_sslio_write_all(&t->io, p, n) < 0 || br_sslio_flush(&t->io) < 0)
		return -1;
	tls_note_handshake(t);
	return 0;
}

/* TLS alerts (RFC 8446, 6), named for people. */
static const char *
tls_alert_name(int alert)
{
	switch (alert) {
	case 0: return "close_notify";
	case 10: return "unexpected_message";
	case 20: return "bad_record_mac";
	case 22: return "record_overflow";
	case 40: return "handshake_failure";
	case 42: return "bad_certificate";
	case 43: return "unsupported_certificate";
	case 44: return "certificate_revoked";
	case 45: return "certificate_expired";
	case 46: return "certificate_unknown";
	case 47: return "illegal_parameter";
	case 48: return "unknown_ca";
	case 49: return "access_denied";
	case 50: return "decode_error";
	case 51: return "decrypt_error";
	case 70: return "protocol_version";
	case 71: return "insufficient_security";
	case 80: return "internal_error";
	case 86: return "inappropriate_fallback";
	case 90: return "user_canceled";
	case 100: return "no_renegotiation";
	case 109: return "missing_extension";
	case 110: return "unsupported_extension";
	case 112: return "unrecognized_name";
	case 116: return "certificate_required";
	case 120: return "no_application_protocol";
	default: return "an alert";
	}
}

/* A BearSSL error, in words: its own codes for the few that happen, and
 * the alert by name when the peer sent one (BearSSL reports those as
 * BR_ERR_RECV_FATAL_ALERT + the alert's number). */
static void
tls_error_text(int err, char *out, size_t n)
{
	if (err >= BR_ERR_SEND_FATAL_ALERT) {
		snprintf(out, n, "sent the alert %s (%d)", tls_alert_name(err - BR_ERR_SEND_FATAL_ALERT),
		    err - BR_ERR_SEND_FATAL_ALERT);
	} else if (err >= BR_ERR_RECV_FATAL_ALERT) {
		int a = err - BR_ERR_RECV_FATAL_ALERT;

		snprintf(out, n, "the peer sent the alert %s (%d)%s", tls_alert_name(a), a,
		    a == 42 || a == 46 || a == 48 ? ": does it trust the certificate?" : "");
	} else {
		const char *s;

		switch (err) {
		case BR_ERR_BAD_VERSION: s = "no TLS 1.2 on offer"; break;
		case BR_ERR_BAD_CIPHER_SUITE: s = "no cipher suite in common"; break;
		case BR_ERR_BAD_HANDSHAKE: s = "bad handshake"; break;
		case BR_ERR_UNSUPPORTED_VERSION: s = "unsupported version (not TLS 1.2)"; break;
		case BR_ERR_BAD_ALERT: s = "bad alert"; break;
		default: s = "protocol error"; break;
		}
		snprintf(out, n, "%s", s);
	}
}

static void
tls_close(struct conn *c, int linger)
{
	struct tls_conn *t = c->tls;

	if (t != NULL) {
		br_ssl_engine_context *eng = &t->sc.eng;
		int err = br_ssl_engine_last_error(eng);

		if (!t->sock.handshaken && err != BR_ERR_OK && err != BR_ERR_IO && !quiet) {
			char text[128];

			tls_error_text(err, text, sizeof(text));
			warn("%s: TLS handshake failed: %s (BearSSL error %d)", c->peer, text, err);
		}
		/* Send close_notify, without waiting for the peer's; a client
		 * that never finished its handshake gets nothing. */
		if (t->sock.handshaken && br_ssl_engine_current_state(eng) != BR_SSL_CLOSED) {
			br_ssl_engine_close(eng);
			t->sock.deadline = now_ms() + 1000;
			while (br_ssl_engine_current_state(eng) & BR_SSL_SENDREC) {
				size_t len;
				unsigned char *rec = br_ssl_engine_sendrec_buf(eng, &len);
				int w = tls_sock_write(c, rec, len);

				if (w < 0)
					break;
				br_ssl_engine_sendrec_ack(eng, (size_t)w);
			}
		}
		identity_release(t->id);
		identity_release(t->alpn);
		free(t);
		c->tls = NULL;
	}
	plain_close(c, linger);
}

static const struct transport tls_transport = { tls_read, tls_write, tls_close };

/* On an event loop, the engine is driven by hand, never waiting. */

/* Send the records the engine has ready: 0 when all went, 1 when the
 * socket would take no more, -1 on an error. */
static int
tls_send_records(struct conn *c)
{
	br_ssl_engine_context *eng = &((struct tls_conn *)c->tls)->sc.eng;

	while (br_ssl_engine_current_state(eng) & BR_SSL_SENDREC) {
		size_t len;
		unsigned char *rec = br_ssl_engine_sendrec_buf(eng, &len);
		ssize_t w = send(c->fd, rec, len, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -1;
		br_ssl_engine_sendrec_ack(eng, (size_t)w);
	}
	return 0;
}

/* The loop's tls_write: into the engine, and out as far as the socket
 * takes it; the rest is left for the connection's thread (c->unsent). */
static int
tls_write_loop(struct conn *c, const void *p, size_t n)
{
	br_ssl_engine_context *eng = &((struct tls_conn *)c->tls)->sc.eng;
	const char *s = p;
	int r;

	while (n > 0) {
		size_t len;
		unsigned char *app;

		if (br_ssl_engine_current_state(eng) == BR_SSL_CLOSED)
			return -1;
		app = br_ssl_engine_sendapp_buf(eng, &len);
		if (len == 0) {
			r = tls_send_records(c);
			if (r < 0)
				return -1;
			if (r > 0) {
				buf_add(&c->pending, s, n);
				c->unsent = 1;
				return 0;
			}
			continue;
		}
		if (len > n)
			len = n;
		memcpy(app, s, len);
		br_ssl_engine_sendapp_ack(eng, len);
		s += len;
		n -= len;
	}
	br_ssl_engine_flush(eng, 0);
	r = tls_send_records(c);
	if (r > 0)
		c->unsent = 1;
	return r < 0 ? -1 : 0;
}

/* Feed the engine from the socket, send what it has to send (handshake
 * messages), and move decrypted bytes into c->in. Returns 0, 1 when the
 * connection needs its own thread, or -1 when it is finished. */
static int
tls_pump(struct conn *c, int read_socket)
{
	struct tls_conn *t = c->tls;
	br_ssl_engine_context *eng = &t->sc.eng;

	if (read_socket && !t->first_seen) {
		/* A TLS record starts with its type (22 for a handshake), never
		 * a capital letter: plain HTTP sent to the HTTPS port gets a
		 * short answer saying so, as nginx gives, not a reset. */
		static const char plain[] = "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
		    "Content-Length: 55\r\nConnection: close\r\n\r\n"
		    "{\"error\":\"this port speaks HTTPS: use an https:// URL\"}";
		unsigned char b;
		ssize_t r = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);

		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			return 0;
		if (r <= 0)
			return -1;
		t->first_seen = 1;
		if (b >= 'A' && b <= 'Z') {
			if (send(c->fd, plain, sizeof(plain) - 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
				(void)0;  /* it was a courtesy */
			return -1;
		}
	}
	if (read_socket && (br_ssl_engine_current_state(eng) & BR_SSL_RECVREC)) {
		size_t len;
		unsigned char *rec = br_ssl_engine_recvrec_buf(eng, &len);
		ssize_t r = recv(c->fd, rec, len, MSG_DONTWAIT);

		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			return 0;
		if (r <= 0)
			return -1;
		br_ssl_engine_recvrec_ack(eng, (size_t)r);
	}
	for (;;) {
		unsigned st = br_ssl_engine_current_state(eng);

		if (st == BR_SSL_CLOSED)
			return -1;
		if (st & BR_SSL_SENDREC) {
			int r = tls_send_records(c);

			if (r != 0) {
				c->unsent = r > 0;
				return r;
			}
			continue;
		}
		if ((st & BR_SSL_RECVAPP) && c->in_len < CONN_BUF) {
			size_t len;
			unsigned char *app = br_ssl_engine_recvapp_buf(eng, &len);

			if (len > CONN_BUF - c->in_len)
				len = CONN_BUF - c->in_len;
			memcpy(c->in + c->in_len, app, len);
			br_ssl_engine_recvapp_ack(eng, len);
			c->in_len += len;
			continue;
		}
		tls_note_handshake(&t->sock);
		if (t->sock.acme_only && t->sock.handshaken)
			return -1;  /* tls-alpn-01: the handshake was all of it */
		return 0;
	}
}

/* Does the engine hold decrypted bytes not yet taken? */
static int
tls_has_app_data(struct conn *c)
{
	return (br_ssl_engine_current_state(&((struct tls_conn *)c->tls)->sc.eng) & BR_SSL_RECVAPP) != 0;
}

/* SIGHUP: load --cert and --key again. New connections get the new pair,
 * connections in flight keep theirs; a bad pair leaves the old one serving. */
/* Serve id to new connections from now on (SIGHUP, ACME); connections in
 * flight keep theirs. */
static void
identity_install(struct identity *id, const char *said)
{
	struct identity *old;

	pthread_mutex_lock(&identity_lock);
	old = current_identity;
	current_identity = id;
	pthread_mutex_unlock(&identity_lock);
	identity_release(old);
	session_cache_reset();
	identity_describe(id, said);
}

static void
identity_reload(void)
{
	char err[1024];
	struct identity *id = identity_load(cert_path, key_path, err, sizeof(err));

	if (id == NULL) {
		warn("SIGHUP: %s; still serving certificate %s", err, current_identity->leaf.serial);
		return;
	}
	identity_install(id, "SIGHUP: now serving ");
}
#endif /* XWEBHOOK_TLS */

/* ------------------------------------------------------------------------
 * [OUT] Connections out, the ground every client stands on: a URL split
 * once (url_parse, through url_authority), host:port written once
 * (host_port_format), a dial with a deadline, the trusted roots loaded
 * once (trust_load), and the client side of the transport, plain or TLS
 * with the chain verified against those roots and a certificate's fault
 * named in words. Owns struct client. [BROKERS] use it directly; check,
 * X's API and ACME through [CLIENT]. Calls [TRANSPORT], [TLS]'s record
 * pumping, [DER].
 * ------------------------------------------------------------------------ */

enum {
	/* The largest answer taken, head and body: a CRC answer is under
	 * 100 bytes, an X API answer a few KiB. */
	CLIENT_MAX_ANSWER = 1 << 20,
	/* The whole exchange, from connecting to the answer's last byte,
	 * when the caller names no deadline of its own. */
	CLIENT_TIMEOUT_MS = 10000,
};
#define CLIENT_MAX_ANSWER_TEXT "1 MiB"

struct url {
	int https;
	char host[256];
	char port[8];       /* empty when the URL names none */
	char target[2048];  /* path and query */
};

/* A URL's authority split: what came before an '@' in it, and the host
 * and port as split_host_port gives them. */
struct authority {
	const char *userinfo;    /* NULL when there is no '@' */
	size_t userinfo_len;
	char host[256];
	char port[8];            /* empty when the authority names none */
	const char *end;         /* the first byte after the authority */
};

/* Split the authority that starts at s (just past "scheme://") and ends
 * at the first byte of stops or at the string's end, the file's one URL
 * splitter (url_parse's URLs, --forward's): 0, or -1 with *why. */
static int
url_authority(const char *s, const char *stops, struct authority *a, const char **why)
{
	const char *at;

	memset(a, 0, sizeof(*a));
	a->end = s + strcspn(s, stops);
	at = memchr(s, '@', (size_t)(a->end - s));
	if (at != NULL) {
		a->userinfo = s;
		a->userinfo_len = (size_t)(at - s);
		s = at + 1;
	}
	return split_host_port(s, (size_t)(a->end - s), a->host, sizeof(a->host), a->port, sizeof(a->port), why);
}

static int
url_parse(const char *s, struct url *u)
{
	struct authority au;
	const char *a, *p, *why;

	memset(u, 0, sizeof(*u));
	if (strncasecmp(s, "https://", 8) == 0) {
		u->https = 1;
		a = s + 8;
	} else if (strncasecmp(s, "http://", 7) == 0) {
		a = s + 7;
	} else {
		return -1;
	}
	if (url_authority(a, "/?#", &au, &why) < 0 || au.userinfo != NULL || au.host[0] == '\0')
		return -1;
	memcpy(u->host, au.host, sizeof(u->host));
	memcpy(u->port, au.port, sizeof(u->port));
	p = au.end;
	if (strlen(p) + 2 > sizeof(u->target))
		return -1;
	snprintf(u->target, sizeof(u->target), "%s%s", *p == '/' ? "" : "/", p);
	if (strchr(u->target, '#') != NULL)
		*strchr(u->target, '#') = '\0';
	for (p = u->target; *p; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
			return -1;
	return 0;
}

enum {
	/* host:port text: a host of up to 255 bytes, its brackets, ':'
	 * and five digits. */
	HOST_PORT_MAX = 255 + 2 + 1 + 5 + 1,
};

/* host and port as a URL's authority or a Host field writes them (RFC
 * 9110 7.2, RFC 3986 3.2.2): an IPv6 literal in brackets, and the port
 * left out when it is empty or omit (the scheme's default; NULL: never
 * left out). The file's one such formatter. 0, or -1 if it did not fit. */
static int
host_port_format(char *out, size_t on, const char *host, const char *port, const char *omit)
{
	int v6 = strchr(host, ':') != NULL;
	int show = port[0] != '\0' && (omit == NULL || strcmp(port, omit) != 0);
	int n = snprintf(out, on, "%s%s%s%s%s", v6 ? "[" : "", host, v6 ? "]" : "", show ? ":" : "",
	    show ? port : "");

	return n < 0 || (size_t)n >= on ? -1 : 0;
}

/* Connect to host:port by deadline; -1 with a reason in err. */
static int
dial(const char *host, const char *port, int64_t deadline, char *err, size_t errlen)
{
	struct addrinfo hints, *ai, *a;
	int fd = -1, r, one = 1;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	if ((r = getaddrinfo(host, port, &hints, &ai)) != 0) {
		snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(r));
		return -1;
	}
	snprintf(err, errlen, "cannot connect to %s port %s", host, port);
	for (a = ai; a != NULL; a = a->ai_next) {
		int soerr = 0;
		socklen_t sl = sizeof(soerr);

		fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
		if (fd < 0)
			continue;
		/* TLS sends its handshake in several small writes: without
		 * this, Nagle and delayed ACKs add 40 ms to each round trip. */
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 ||
		    (errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline, -1) == 0 &&
		    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0))
			break;
		snprintf(err, errlen, "cannot connect to %s port %s: %s", host, port,
		    strerror(soerr ? soerr : errno ? errno : ETIMEDOUT));
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

#ifdef XWEBHOOK_TLS
/* Where the system keeps its trusted roots (Debian's ca-certificates). */
#define TRUST_SYSTEM_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

/* Trust anchors from a PEM bundle (the system's, or --cacert). */
struct trust {
	br_x509_trust_anchor *ta;
	size_t n;
	const char *path;        /* the bundle, to name it */
};

/* The file's one loader of trusted roots: those in path, or with path
 * NULL the system's bundle (t->path names the one read either way).
 * 0, or -1 when it cannot be read or holds no root BearSSL can use. */
static int
trust_load(const char *path, struct trust *t)
{
	struct buf text = { 0 };
	struct pem_object *objs = NULL;
	size_t count = 0, i;
	int fd;

	if (path == NULL)
		path = TRUST_SYSTEM_BUNDLE;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	t->ta = NULL;
	t->n = 0;
	t->path = path;
	if (fd < 0 || read_all(fd, &text) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	if (pem_decode(text.p, text.len, &objs, &count) < 0) {
		buf_free(&text);
		return -1;
	}
	for (i = 0; i < count; i++) {
		br_x509_decoder_context dc;
		const br_x509_pkey *pk;
		br_x509_trust_anchor *ta;
		struct buf dn = { 0 };

		if (strcmp(objs[i].name, "CERTIFICATE") != 0 && strcmp(objs[i].name, "TRUSTED CERTIFICATE") != 0)
			continue;
		br_x509_decoder_init(&dc, pem_collect, &dn);
		br_x509_decoder_push(&dc, objs[i].der.p, objs[i].der.len);
		pk = br_x509_decoder_get_pkey(&dc);
		if (pk == NULL) {
			buf_free(&dn);
			continue;  /* a kind of key BearSSL cannot use */
		}
		t->ta = xrealloc(t->ta, (t->n + 1) * sizeof(*t->ta));
		ta = &t->ta[t->n++];
		ta->dn.data = (unsigned char *)dn.p;
		ta->dn.len = dn.len;
		ta->flags = br_x509_decoder_isCA(&dc) ? BR_X509_TA_CA : 0;
		ta->pkey = *pk;
		/* The key's bytes live in the decoder: copy them out. */
		if (pk->key_type == BR_KEYTYPE_RSA) {
			ta->pkey.key.rsa.n = xmalloc(pk->key.rsa.nlen);
			memcpy(ta->pkey.key.rsa.n, pk->key.rsa.n, pk->key.rsa.nlen);
			ta->pkey.key.rsa.e = xmalloc(pk->key.rsa.elen);
			memcpy(ta->pkey.key.rsa.e, pk->key.rsa.e, pk->key.rsa.elen);
		} else {
			ta->pkey.key.ec.q = xmalloc(pk->key.ec.qlen);
			memcpy(ta->pkey.key.ec.q, pk->key.ec.q, pk->key.ec.qlen);
		}
	}
	pem_free(objs, count);
	buf_free(&text);
	return t->n > 0 ? 0 : -1;
}

/* An X.509 engine that hands everything to BearSSL's minimal validator
 * and keeps a copy of the leaf, so its expiry can be shown even when the
 * chain fails to verify. */
struct x509_recorder {
	const br_x509_class *vtable;
	br_x509_minimal_context inner;
	int certs;
	struct buf leaf;
};

static void
rec_start_chain(const br_x509_class **ctx, const char *name)
{
	struct x509_recorder *r = (struct x509_recorder *)(void *)ctx;

	r->certs = 0;
	r->inner.vtable->start_chain(&r->inner.vtable, name);
}

static void
rec_start_cert(const br_x509_class **ctx, uint32_t length)
{
	struct x509_recorder *r = (struct x509_recorder *)(void *)ctx;

	r->certs++;
	r->inner.vtable->start_cert(&r->inner.vtable, length);
}

static void
rec_append(const br_x509_class **ctx, const unsigned char *p, size_t n)
{
	struct x509_recorder *r = (struct x509_recorder *)(void *)ctx;

	if (r->certs == 1)
		buf_add(&r->leaf, p, n);
	r->inner.vtable->append(&r->inner.vtable, p, n);
}

static void
rec_end_cert(const br_x509_class **ctx)
{
	struct x509_recorder *r = (struct x509_recorder *)(void *)ctx;

	r->inner.vtable->end_cert(&r->inner.vtable);
}

static unsigned
rec_end_chain(const br_x509_class **ctx)
{
	struct x509_recorder *r = (struct x509_recorder *)(void *)ctx;

	return r->inner.vtable->end_chain(&r->inner.vtable);
}

static const br_x509_pkey *
rec_get_pkey(const br_x509_class *const *ctx, unsigned *usages)
{
	const struct x509_recorder *r = (const struct x509_recorder *)(const void *)ctx;

	return r->inner.vtable->get_pkey(&r->inner.vtable, usages);
}

static const br_x509_class recorder_class = {
	sizeof(struct x509_recorder), rec_start_chain, rec_start_cert, rec_append,
	rec_end_cert, rec_end_chain, rec_get_pkey
};

static const char *
suite_name(uint16_t s)
{
	switch (s) {
	case BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: return "ECDHE-ECDSA-CHACHA20-POLY1305";
	case BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256: return "ECDHE-RSA-CHACHA20-POLY1305";
	case BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: return "ECDHE-ECDSA-AES128-GCM-SHA256";
	case BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256: return "ECDHE-RSA-AES128-GCM-SHA256";
	case BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384: return "ECDHE-ECDSA-AES256-GCM-SHA384";
	case BR_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384: return "ECDHE-RSA-AES256-GCM-SHA384";
	default: return "a suite without forward secrecy or AEAD";
	}
}

/* BearSSL's X.509 codes whose words need nothing of the connection. */
static const struct {
	int err;
	const char *text;
} x509_texts[] = {
	{ BR_ERR_X509_TIME_UNKNOWN, "the time is unknown, so no certificate's dates can be checked" },
	{ BR_ERR_X509_EMPTY_CHAIN, "the server sent no certificate" },
	{ BR_ERR_X509_DN_MISMATCH,
	    "certificate chain broken: an issuer is not the next certificate's "
	    "subject (out of order?)" },
	{ BR_ERR_X509_NOT_CA, "certificate chain invalid: a certificate that signs another is no CA" },
	{ BR_ERR_X509_BAD_SIGNATURE, "certificate chain invalid: a signature does not verify" },
	{ BR_ERR_X509_FORBIDDEN_KEY_USAGE, "certificate not for a TLS server: its key usage forbids it" },
	{ BR_ERR_X509_WEAK_PUBLIC_KEY, "certificate's key too small" },
	{ BR_ERR_X509_CRITICAL_EXTENSION, "certificate has a critical extension this client does not know" },
	{ BR_ERR_X509_WRONG_KEY_TYPE, "certificate's key type does not fit the cipher suite" },
	{ BR_ERR_X509_LIMIT_EXCEEDED, "certificate's key or signature larger than this client handles" },
	{ BR_ERR_X509_UNSUPPORTED, "certificate has features this client does not support" },
};

/* Why a server's chain failed to verify, in words, from BearSSL's X.509
 * code err (bearssl_x509.h): name is who the server was to be, bundle
 * the roots, leaf the server's certificate if it sent one. 0, or -1
 * when err is no X.509 code. */
static int
x509_error_text(int err, const struct buf *leaf, const char *name, const char *bundle, char *out, size_t n)
{
	struct cert_info ci;
	int dated = leaf->len > 0 && cert_info((const unsigned char *)leaf->p, leaf->len, &ci) == 0;
	time_t now = time(NULL);
	char date[32];
	size_t i;

	switch (err) {
	case BR_ERR_X509_NOT_TRUSTED:
		snprintf(out, n, "certificate not trusted (unknown CA): the chain the server sent does not lead to a "
		    "root in %s (is an intermediate missing?)", bundle != NULL ? bundle : "the trusted roots");
		break;
	case BR_ERR_X509_BAD_SERVER_NAME:
		snprintf(out, n, "certificate does not name %s", name);
		break;
	case BR_ERR_X509_EXPIRED:
		if (dated && ci.not_after < now) {
			format_date(ci.not_after, date, sizeof(date));
			snprintf(out, n, "certificate expired on %s", date);
		} else if (dated && ci.not_before > now) {
			format_date(ci.not_before, date, sizeof(date));
			snprintf(out, n, "certificate not yet valid: from %s", date);
		} else {
			snprintf(out, n, "certificate expired or not yet valid: one of the chain's CAs");
		}
		break;
	default:
		for (i = 0; i < sizeof(x509_texts) / sizeof(x509_texts[0]); i++)
			if (x509_texts[i].err == err) {
				snprintf(out, n, "%s", x509_texts[i].text);
				return 0;
			}
		if (err <= BR_ERR_X509_OK || err > BR_ERR_X509_NOT_TRUSTED)
			return -1;
		snprintf(out, n, "certificate cannot be decoded (BearSSL X.509 error %d)", err);
		break;
	}
	return 0;
}
#endif /* XWEBHOOK_TLS */

#ifdef XWEBHOOK_TLS
/* The client side of one TLS connection. */
struct tls_client {
	struct tls_io sock;     /* first, as in tls_conn */
	br_ssl_client_context cc;
	struct x509_recorder x509;
	unsigned char iobuf[BR_SSL_BUFSIZE_BIDI];
};

static void
tls_client_close(struct conn *c, int linger)
{
	struct tls_client *t = c->tls;

	if (t != NULL) {
		buf_free(&t->x509.leaf);
		free(t);
		c->tls = NULL;
	}
	plain_close(c, linger);
}

static const struct transport tls_client_transport = { tls_read, tls_write, tls_client_close };
#endif

/* One client connection. */
struct client {
	struct conn c;
	int64_t start, deadline;   /* monotonic ms */
	int tls_error;             /* BearSSL's, when the handshake failed */
	char why[512];             /* what went wrong, when something did */
};

/* One answer. */
struct answer {
	int status;
	struct buf head;           /* status line and fields, as received */
	struct buf body;           /* chunked coding removed */
	int64_t ms;                /* from connecting to the answer's last byte */
};

/* Is name an IPv4 or IPv6 address, not a host name? */
static int
ip_literal(const char *name)
{
	unsigned char a[16];

	return inet_pton(AF_INET, name, a) == 1 || inet_pton(AF_INET6, name, a) == 1;
}

/* The client's deadline, as the seconds its messages give (rounded up). */
static long long
client_limit_s(const struct client *cl)
{
	return (long long)((cl->deadline - cl->start + 999) / 1000);
}

/* Connect to host:port; with trust, speak TLS to it as name, verifying
 * the chain. The exchange must end by deadline (0: CLIENT_TIMEOUT_MS from
 * now). 0, or -1 with cl->why (the connection, if any, stays open for a
 * look at what the handshake saw; client_close ends it). */
static int
client_connect(struct client *cl, const char *host, const char *port, const char *name, const void *trust,
    int64_t deadline)
{
	memset(cl, 0, sizeof(*cl));
	cl->start = now_ms();
	cl->deadline = deadline != 0 ? deadline : cl->start + CLIENT_TIMEOUT_MS;
	cl->c.accepted = cl->start;
	cl->c.tr = &plain_transport;
	cl->c.fd = -1;
	/* BearSSL's X.509 engine matches a name against the certificate's
	 * DNS names only, never its IP addresses (RFC 6125's iPAddress):
	 * refused here, in words, rather than by a handshake that fails. */
	if (trust != NULL && ip_literal(name)) {
		snprintf(cl->why, sizeof(cl->why), "the host %.256s is an IP address, and this client verifies "
		    "certificates for DNS names only: use the server's DNS name", name);
		return -1;
	}
	cl->c.fd = dial(host, port, cl->deadline, cl->why, sizeof(cl->why));
	if (cl->c.fd < 0)
		return -1;
#ifdef XWEBHOOK_TLS
	if (trust != NULL) {
		const struct trust *tr = trust;
		struct tls_client *t = malloc(sizeof(*t));
		unsigned char seed[32];

		if (t == NULL) {
			snprintf(cl->why, sizeof(cl->why), "out of memory");
			return -1;
		}
		memset(t, 0, offsetof(struct tls_client, iobuf));
		br_ssl_client_init_full(&t->cc, &t->x509.inner, tr->ta, tr->n);
		t->x509.vtable = &recorder_class;
		br_ssl_engine_set_x509(&t->cc.eng, &t->x509.vtable);
		/* Older versions too, so that a server that has only those
		 * can be told so, rather than just fail. */
		br_ssl_engine_set_versions(&t->cc.eng, BR_TLS10, BR_TLS12);
		br_ssl_engine_set_protocol_names(&t->cc.eng, tls_alpn, 1);
		br_ssl_engine_set_buffer(&t->cc.eng, t->iobuf, sizeof(t->iobuf), 1);
		entropy(seed, sizeof(seed));
		br_ssl_engine_inject_entropy(&t->cc.eng, seed, sizeof(seed));
		br_ssl_client_reset(&t->cc, name, 0);
		t->sock.eng = &t->cc.eng;
		br_sslio_init(&t->sock.io, &t->cc.eng, tls_sock_read, &cl->c, tls_sock_write, &cl->c);
		t->sock.deadline = cl->deadline;
		t->sock.wake_fd = -1;
		cl->c.tls = t;
		cl->c.tr = &tls_client_transport;
		if (br_sslio_flush(&t->sock.io) < 0 || !(br_ssl_engine_current_state(&t->cc.eng) & BR_SSL_SENDAPP)) {
			char text[400];

			cl->tls_error = br_ssl_engine_last_error(&t->cc.eng);
			if (x509_error_text(cl->tls_error, &t->x509.leaf, name, tr->path, text, sizeof(text)) < 0)
				tls_error_text(cl->tls_error, text, sizeof(text));
			if (t->sock.status == IO_TIMEOUT)
				snprintf(cl->why, sizeof(cl->why), "TLS handshake not finished within %lld s",
				    client_limit_s(cl));
			else
				snprintf(cl->why, sizeof(cl->why), "TLS handshake failed: %s", text);
			return -1;
		}
		t->sock.handshaken = 1;
	}
#else
	(void)name;
	(void)trust;
#endif
	return 0;
}

static void
client_close(struct client *cl)
{
	if (cl->c.fd >= 0)
		cl->c.tr->close(&cl->c, 0);
	cl->c.fd = -1;
}

/* Read more of the answer into in, never past the size limit: the
 * transport's count, or IO_* (a full buffer reads as IO_ERROR). */
static ssize_t
client_read(struct client *cl, struct buf *in)
{
	size_t room;

	if (in->len > CLIENT_MAX_ANSWER)
		return IO_ERROR;
	buf_reserve(in, 16384);
	room = in->cap - in->len;
	if (room > CLIENT_MAX_ANSWER + 1 - in->len)
		room = CLIENT_MAX_ANSWER + 1 - in->len;
	return cl->c.tr->read(&cl->c, in->p + in->len, room, cl->deadline, -1);
}

/* ------------------------------------------------------------------------
 * [SERVER] The server: the state every part of it shares (the secret, the
 * sinks' descriptors, the stop flag, the count of open connections), what
 * handling a request tells its connection's owner (enum handled, enum
 * verdict), the listening sockets, signals and SIGHUP's reload, and
 * start-up: the secret read, --output opened, root dropped for --user, the
 * descriptor limit raised.
 *
 * How it fits together: every connection starts on an epoll loop ([LOOPS])
 * and moves to a thread of its own at the first sign of waiting on its
 * client, so a slow client holds only its own thread. Each request is read
 * and answered by [WEBHOOK]; a verified event goes to [WRITER], the one
 * thread that owns every sink (stdout, --output, the [BROKERS]), which
 * writes a batch everywhere, syncs once, and only then releases the 200s.
 * Nothing on a loop waits on anything but its own sockets.
 * ------------------------------------------------------------------------ */

static struct hmac_key secret_key;   /* the consumer secret, pre-padded */
static int output_fd = -1;           /* --output: the event writer's alone */
static atomic_int output_reopened = -1;  /* SIGHUP's new descriptor, for the writer */
static struct outq stdout_queue;     /* the events, on their way to stdout */
static int stdout_direct;            /* stdout is a file or /dev/null: no queue */
static size_t body_budget;           /* see BODY_BUDGET_MIN */
static unsigned nforwards;           /* --forward brokers (see "Brokers") */
static char sink_names[96] = "stdout"; /* for the log: stdout+output+redis... */
static atomic_size_t body_held;      /* of it, drawn by bodies being read */
static int stop_pipe[2] = { -1, -1 };  /* closed to wake idle connections */
static volatile sig_atomic_t stop_signal, reload_signal;
static pthread_mutex_t conns_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t conns_gone;
static unsigned nconns;               /* connections open, under conns_lock */
static atomic_int stopping;           /* set once, at SIGINT or SIGTERM */

/* Asked once per request: an atomic, not a lock every thread takes. */
static int
is_stopping(void)
{
	return atomic_load(&stopping);
}

/* What handle_request did with a request. */
enum handled {
	H_CLOSE,     /* answered; the connection ends */
	H_KEEP,      /* answered; the connection may carry another */
	H_PARKED,    /* on a loop: its event is with the writer */
};

/* What a loop does with a connection after serve_buffered. */
enum verdict {
	V_IDLE,      /* everything buffered is answered: wait for more */
	V_THREAD,    /* the rest needs waiting: give it a thread */
	V_CLOSE,     /* done with it */
	V_PARKED,    /* its event is with the writer: wait for the verdict */
};

/* Functions used before the section that defines them: the file reads in
 * the order data flows, so the loops come before the webhook they call,
 * and the webhook before the writer. */
static void connection_end(struct conn *c, int linger);
static void *connection_thread(void *arg);
static void access_log(const struct conn *c, const struct request *req, const struct outcome *o, int64_t start_us);
static void body_release(struct conn *c);
static enum handled event_answer(struct conn *c, enum status st, const char *why, int *linger);
static void next_request(struct conn *c);
static int serve_connection(struct conn *c);
static enum verdict loop_answered(struct conn *c, enum handled h, int linger);
static enum verdict serve_buffered(struct conn *c);
static void writer_queue(struct event *first, struct event **last);
static void event_submit(struct conn *c);
static void event_wait(struct conn *c);
static void writer_reopened(int fd);
static int stdout_never_waits(void);
static void writer_start(void);
#ifdef XWEBHOOK_TLS
/* [XAPI]'s login keeps its token in --state-dir, as [ACME] keeps its files. */
static void b64url(struct buf *b, const void *p, size_t n);
static int state_root_open(const struct passwd *owner, int create);
static int state_entry_open(int at, const char *name, int flags, const char *shown, int dir,
    const struct passwd *owner);
static void state_check(const struct stat *st, const char *shown, int dir, const struct passwd *owner);
static int state_write_at(int dir, const char *name, const void *p, size_t n);
#endif
struct x_command;
static int xaa_add(const struct x_command *xc, const char *const *args);
static int xaa_list(const struct x_command *xc, const char *const *args);
static int xaa_delete(const struct x_command *xc, const char *const *args);
static void metrics_start(void);
static void metrics_thread_take(void);
static void metrics_thread_give(void);
static void metrics_request(const struct conn *c);
static void metrics_handed(void);
static void metrics_decided(enum status st);
static void metrics_broker_ack(unsigned i, int64_t us);
static void log_escape(struct buf *b, const char *s, size_t n);

/* ---- systemd: readiness and the watchdog (Type=notify) ----
 *
 * Written by hand, as sd_notify(3) describes it, rather than linking
 * libsystemd: one datagram per message to the AF_UNIX socket named by
 * NOTIFY_SOCKET (a path, or an abstract name written with a leading '@'),
 * never waiting, and a failed send is one warning, never an end. */

static int notify_fd = -1;              /* NOTIFY_SOCKET's, or -1 */
static struct sockaddr_un notify_addr;
static socklen_t notify_len;
static atomic_int notify_failing;       /* the last send failed (warned) */
static atomic_int serving_up;           /* every listener and thread is up */
static atomic_int ready_told;           /* READY=1 went out */
static const char *serving_url;         /* for STATUS= */
static int64_t watchdog_ms;             /* WATCHDOG_USEC, in ms; 0: none */
/* The writer's heartbeat (now_ms): it goes round its loop at least every
 * HEARTBEAT_MS; the watchdog and /healthz call it stuck when this grows old. */
static _Atomic int64_t writer_beat;

/* Read NOTIFY_SOCKET and WATCHDOG_USEC once, before any thread starts,
 * and take them out of the environment, so that nothing we might start
 * speaks for us. A value we cannot use is one warning. */
static void
notify_open(void)
{
	const char *e = getenv("NOTIFY_SOCKET"), *w = getenv("WATCHDOG_USEC"), *wp = getenv("WATCHDOG_PID");
	size_t n = e != NULL ? strlen(e) : 0;
	struct buf shown = { 0 };

	if (e != NULL)
		log_escape(&shown, e, n < 120 ? n : 120);
	buf_addc(&shown, '\0');  /* a C string, for the lines below */
	if (e == NULL) {
		;
	} else if (n < 2 || (e[0] != '/' && e[0] != '@')) {
		warn("warning: NOTIFY_SOCKET '%s' is neither a path (/...) nor an abstract name (@...): "
		    "systemd is not told when we are ready", shown.p);
	} else if (n > sizeof(notify_addr.sun_path) - (e[0] == '/')) {
		warn("warning: NOTIFY_SOCKET '%s...' is %zu bytes, more than a socket's name holds (%zu): "
		    "systemd is not told when we are ready", shown.p, n, sizeof(notify_addr.sun_path) - (e[0] == '/'));
	} else if ((notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0) {
		warn("warning: NOTIFY_SOCKET: cannot make a socket; systemd is not told when we are ready:");
	} else {
		memset(&notify_addr, 0, sizeof(notify_addr));
		notify_addr.sun_family = AF_UNIX;
		memcpy(notify_addr.sun_path, e, n);
		if (e[0] == '@')
			notify_addr.sun_path[0] = '\0';  /* abstract: the name's bytes, no NUL after */
		notify_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (e[0] == '/'));
	}
	buf_free(&shown);
	if (notify_fd >= 0 && w != NULL && (wp == NULL || strtol(wp, NULL, 10) == (long)getpid())) {
		char *end;
		unsigned long long us;

		errno = 0;
		us = strtoull(w, &end, 10);
		if (errno != 0 || end == w || *end != '\0' || w[0] == '-' || us < 2000 || us / 1000 > INT32_MAX)
			warn("warning: WATCHDOG_USEC '%.20s' is no interval in microseconds: no watchdog pings", w);
		else
			watchdog_ms = (int64_t)(us / 1000);
	}
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
}

/* Send one message to systemd, if it listens: never waits; a failure is
 * a warning, once until a send works again. */
static void
notify_send(const char *msg)
{
	if (notify_fd < 0)
		return;
	if (sendto(notify_fd, msg, strlen(msg), MSG_DONTWAIT | MSG_NOSIGNAL, (const struct sockaddr *)&notify_addr,
	    notify_len) < 0) {
		if (!atomic_exchange(&notify_failing, 1))
			warn("warning: cannot tell systemd %.*s through NOTIFY_SOCKET (going on without):",
			    (int)strcspn(msg, "\n"), msg);
	} else if (atomic_exchange(&notify_failing, 0)) {
		warn("NOTIFY_SOCKET takes our messages again");
	}
}

/* Is a certificate served? Always, without HTTPS; with --acme, not until
 * the first is obtained (or a stored one loaded). */
static int
certificate_served(void)
{
#ifdef XWEBHOOK_TLS
	int served;

	if (cert_path == NULL && acme_domain == NULL)
		return 1;
	pthread_mutex_lock(&identity_lock);
	served = current_identity != NULL;
	pthread_mutex_unlock(&identity_lock);
	return served;
#else
	return 1;
#endif
}

/* READY=1, once: when every listener and thread is up (serve) and a
 * certificate is served (at once, or when ACME installs its first). Either
 * may come last, so both call this, and the second to come tells. */
static void
ready_tell(void)
{
	char msg[INET6_ADDRSTRLEN + 400];

	if (!atomic_load(&serving_up) || !certificate_served() || atomic_exchange(&ready_told, 1))
		return;
	snprintf(msg, sizeof(msg), "READY=1\nMAINPID=%ld\nSTATUS=serving %s", (long)getpid(), serving_url);
	notify_send(msg);
}

/* ---- listening, signals, reload ---- */

static void
on_signal(int sig)
{
	if (sig == SIGHUP)
		reload_signal = 1;
	else
		stop_signal = sig;
}

/* Open --output for appending. As root, not through a symbolic link (on
 * its path either), to nothing but a regular file, and not to a file with
 * other names (a hard link): the file's directory may be --user's (as
 * /var/lib/xwebhook is), and a link planted there would have root append
 * to, and give away, a file of root's. -1 with errno (ELOOP or ENOTDIR,
 * ENODEV and EMLINK for those). */
static int
output_open(void)
{
	const char *slash = strrchr(output_path, '/'), *name;
	int fd, dir, saved;
	struct stat st;

	if (geteuid() != 0)
		return open(output_path, O_WRONLY | O_APPEND | O_CREAT | O_NOCTTY | O_CLOEXEC, 0600);
	name = slash != NULL ? slash + 1 : output_path;
	dir = dir_open_nofollow(output_path, slash == NULL ? 0 : slash == output_path ? 1 :
	    (size_t)(slash - output_path));
	if (dir < 0)
		return -1;
	/* O_NONBLOCK: a FIFO planted there must not hang the start. */
	fd = openat(dir, name, O_WRONLY | O_APPEND | O_CREAT | O_NOCTTY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK,
	    0600);
	saved = errno;
	close(dir);
	errno = saved;
	if (fd < 0)
		return -1;
	/* A device (/dev/null, /dev/full) only root can have made; a FIFO or a
	 * socket anyone could have. */
	if (fstat(fd, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISCHR(st.st_mode)) ||
	    (S_ISREG(st.st_mode) && st.st_nlink > 1) || fcntl(fd, F_SETFL, O_APPEND) < 0) {
		saved = errno;
		if (fstat(fd, &st) == 0)
			saved = !(S_ISREG(st.st_mode) || S_ISCHR(st.st_mode)) ? ENODEV :
			    S_ISREG(st.st_mode) && st.st_nlink > 1 ? EMLINK : saved;
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

/* Why output_open failed, for the one line. */
static const char *
output_refusal(int err)
{
	if (err == ELOOP || err == ENOTDIR)
		return "it, or a directory on its path, is a symbolic link, which root does not follow "
		    "(give its real path)";
	if (err == EMLINK)
		return "it has other names (hard links), which root refuses";
	if (err == ENODEV || err == ENXIO)  /* ENXIO: a FIFO that nothing reads */
		return "it is neither a regular file nor a device, which root refuses";
	return strerror(err);
}

/* SIGHUP: reopen --output (after logrotate moved it), for the event
 * writer to take up before its next batch, and with TLS load the
 * certificate and key again (after certbot renewed them). */
static void
reload(void)
{
	int told = atomic_load(&ready_told);
	char msg[64];

	/* Type=notify-reload's handshake: the time is how systemd tells this
	 * reload's RELOADING=1 from an earlier one's. (Before READY=1, say
	 * nothing: READY=1 is still to come, when a certificate is.) */
	snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%lld", (long long)now_us());
	if (told)
		notify_send(msg);
	if (output_path != NULL) {
		int fd = output_open();

		if (fd < 0) {
			warn("SIGHUP: cannot reopen --output %s (still appending to the old file): %s", output_path,
			    output_refusal(errno));
		} else {
			writer_reopened(fd);
			warn("SIGHUP: reopened --output %s", output_path);
		}
	}
#ifdef XWEBHOOK_TLS
	if (cert_path != NULL)
		identity_reload();
#endif
	if (told)
		notify_send("READY=1");
}

/* Bind and listen on ADDR:PORT, [V6ADDR]:PORT, :PORT or PORT, and put the
 * URL it serves in url. Dies with one line on failure. */
static int
listen_on(const char *spec, char *url, size_t url_len)
{
	char host[256], port[16], shown[INET6_ADDRSTRLEN];
	struct addrinfo hints, *ai;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int fd, one = 1, zero = 0, r;
	const char *scheme = "http", *why;

#ifdef XWEBHOOK_TLS
	if (cert_path != NULL || (acme_domain != NULL && spec == listen_spec))
		scheme = "https";
#endif
	if (strspn(spec, "0123456789") == strlen(spec) && strlen(spec) <= 5 && atoi(spec) <= 65535) {
		strcpy(host, "0.0.0.0");  /* a bare PORT */
		snprintf(port, sizeof(port), "%s", spec);
	} else if (split_host_port(spec, strlen(spec), host, sizeof(host), port, sizeof(port), &why) < 0) {
		die("bad --listen '%s': %s", spec, why);
	} else if (port[0] == '\0') {
		die("bad --listen '%s': expected ADDR:PORT or PORT", spec);
	}
	if (host[0] == '\0')
		strcpy(host, "0.0.0.0");

	memset(&hints, 0, sizeof(hints));
	memset(&ss, 0, sizeof(ss));  /* getsockname fills it; the analyzer cannot tell */
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	if ((r = getaddrinfo(host, port, &hints, &ai)) != 0)
		die("cannot listen on %s: %s", spec, gai_strerror(r));
	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0)
		die("cannot listen on %s: socket:", spec);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		die("cannot listen on %s: SO_REUSEADDR:", spec);
	/* [::] takes IPv4 too, whatever the system's default. */
	if (ai->ai_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) < 0)
		die("cannot listen on %s: IPV6_V6ONLY:", spec);
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
		die("cannot listen on %s:", spec);
	freeaddrinfo(ai);
	if (listen(fd, LISTEN_BACKLOG) < 0)
		die("cannot listen on %s:", spec);
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
		die("getsockname:");
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		if (inet_ntop(AF_INET6, &s6->sin6_addr, shown, sizeof(shown)) == NULL)
			die("inet_ntop:");
		snprintf(url, url_len, "%s://[%s]:%u%s", scheme, shown, ntohs(s6->sin6_port), webhook_path);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		if (inet_ntop(AF_INET, &s4->sin_addr, shown, sizeof(shown)) == NULL)
			die("inet_ntop:");
		snprintf(url, url_len, "%s://%s:%u%s", scheme, shown, ntohs(s4->sin_port), webhook_path);
	}
	return fd;
}

/* "ADDR:PORT" of a peer, for the access log. */
static void
format_peer(const struct sockaddr_storage *ss, char *out, size_t n)
{
	char a[INET6_ADDRSTRLEN] = "?";

	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;

		if (inet_ntop(AF_INET6, &s6->sin6_addr, a, sizeof(a)) == NULL)
			strcpy(a, "?");  /* a peer we cannot name is still served */
		snprintf(out, n, "[%s]:%u", a, ntohs(s6->sin6_port));
	} else {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;

		if (inet_ntop(AF_INET, &s4->sin_addr, a, sizeof(a)) == NULL)
			strcpy(a, "?");
		snprintf(out, n, "%s:%u", a, ntohs(s4->sin_port));
	}
}

/* Turn a connection away at the limit: a 503, and close. The socket is
 * fresh, so the short answer fits its send buffer without waiting. */
static void
refuse(int fd, const char *peer)
{
#define BUSY_BODY "{\"error\":\"too many connections\"}"
	static const char busy[] =
	    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
	    "Retry-After: 1\r\nContent-Length: 32\r\nConnection: close\r\n\r\n" BUSY_BODY;
	struct outcome o = { 503, 0, sizeof(BUSY_BODY) - 1, NULL, "too many connections", 0, R_OTHER, 0 };
	struct conn c;
	char sink[4096];

	if (send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		o.out_bytes = 0;
	shutdown(fd, SHUT_WR);
	while (recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0)
		;
	close(fd);
	memset(&c, 0, sizeof(c));
	snprintf(c.peer, sizeof(c.peer), "%s", peer);
	access_log(&c, NULL, &o, now_us());
#undef BUSY_BODY
}

/* ---- start-up: the secret, --output, the user, the descriptor limit ---- */

/* Read the consumer secret from --secret-file or the environment, never
 * from argv, where ps would show it, into b: 1, or 0 when there is none.
 * Dies with status 1 when --secret-file cannot be read. */
static int
read_secret(struct buf *b)
{
	static const char *const names[] = { "TWITTER_CONSUMER_SECRET", "CONSUMER_SECRET" };
	size_t i;

	if (secret_file != NULL) {
		int fd = open(secret_file, O_RDONLY | O_CLOEXEC);

		if (fd < 0)
			die("cannot read --secret-file %s:", secret_file);
		if (read_all(fd, b) < 0)
			die("cannot read --secret-file %s:", secret_file);
		close(fd);
		/* Editors end files with a newline that is no part of it. */
		if (b->len > 0 && b->p[b->len - 1] == '\n')
			b->len--;
		if (b->len > 0 && b->p[b->len - 1] == '\r')
			b->len--;
		if (b->len == 0)
			die("--secret-file %s is empty", secret_file);
	}
	/* Both variables leave /proc/PID/environ whichever was used, and
	 * with --secret-file too. */
	for (i = 0; i < 2; i++) {
		char *v = getenv(names[i]);

		if (v != NULL && *v != '\0') {
			if (b->len == 0 && secret_file == NULL)
				buf_adds(b, v);
			memset(v, 0, strlen(v));
		}
	}
	return b->len > 0;
}

/* Load the consumer secret as the HMAC key of CRCs and signatures. If
 * there is none: dies with status 1 when it is required, else returns 0. */
static int
load_secret(int required)
{
	struct buf b = { 0 };

	if (!read_secret(&b) && !required)
		return 0;
	if (b.len == 0)
		die("no consumer secret: set TWITTER_CONSUMER_SECRET (or CONSUMER_SECRET) "
		    "in the environment, or use --secret-file FILE");
	hmac_key_init(&secret_key, b.p, b.len);
	memset(b.p, 0, b.cap);
	buf_free(&b);
	return 1;
}

/* Open --output for appending. A last line torn by a crash (kill -9 in
 * the middle of a write) was never acknowledged, so X will send that
 * event again: cut it off, so every line in the file is whole. */
static void
open_output(const struct passwd *owner)
{
	struct stat st;
	off_t end, keep = 0;
	char tail[4096];

	output_fd = output_open();
	if (output_fd < 0)
		die("cannot open --output %s: %s", output_path, output_refusal(errno));
	if (fstat(output_fd, &st) < 0)
		die("cannot stat --output %s:", output_path);
	/* The file is --user's from the start, so that it can reopen it
	 * after SIGHUP (and logrotate's "create" can keep it so); never a
	 * third user's file given to it. */
	if (owner != NULL && S_ISREG(st.st_mode) && st.st_uid != 0 && st.st_uid != owner->pw_uid)
		die("cannot open --output %s: it belongs to uid %lu, neither root nor --user %s", output_path,
		    (unsigned long)st.st_uid, owner->pw_name);
	if (owner != NULL && S_ISREG(st.st_mode) && fchown(output_fd, owner->pw_uid, owner->pw_gid) < 0)
		die("cannot give --output %s to --user %s:", output_path, owner->pw_name);
	if (!S_ISREG(st.st_mode) || st.st_size == 0)
		return;
	{
		int rfd = open(output_path, O_RDONLY | O_NOCTTY | O_CLOEXEC | (geteuid() == 0 ? O_NOFOLLOW : 0));
		struct stat rst;

		if (rfd < 0 || fstat(rfd, &rst) < 0)
			die("cannot read --output %s:", output_path);
		if (rst.st_dev != st.st_dev || rst.st_ino != st.st_ino)
			die("cannot read --output %s: it was replaced while being opened", output_path);
		for (end = st.st_size; end > 0 && keep == 0;) {
			size_t n = end < (off_t)sizeof(tail) ? (size_t)end : sizeof(tail);
			ssize_t r = pread(rfd, tail, n, end - (off_t)n);
			ssize_t k;

			if (r != (ssize_t)n)
				die("cannot read --output %s:", output_path);
			for (k = r - 1; k >= 0; k--)
				if (tail[k] == '\n')
					break;
			if (k >= 0)
				keep = end - (off_t)n + k + 1;
			end -= (off_t)n;
			if (end == 0 && keep == 0)
				break;
		}
		close(rfd);
	}
	if (keep < st.st_size) {
		warn("--output %s ends in a torn line: cutting %lld byte(s) a crash left behind",
		    output_path, (long long)(st.st_size - keep));
		if (ftruncate(output_fd, keep) < 0)
			die("cannot cut back --output %s:", output_path);
	}
}

/* --user's entry, looked up once (before a chroot or a drop could hide
 * /etc/passwd), or NULL without --user. */
static const struct passwd *
run_as_user(void)
{
	static struct passwd pw;
	static int looked;
	struct passwd *p;

	if (run_as == NULL)
		return NULL;
	if (!looked) {
		errno = 0;
		if ((p = getpwnam(run_as)) == NULL)
			die("--user %s: no such user", run_as);
		pw = *p;
		pw.pw_name = strdup(p->pw_name);
		if (pw.pw_name == NULL)
			die("out of memory");
		looked = 1;
	}
	return &pw;
}

/* Become user (its uid, gid and supplementary groups), for good. */
static void
drop_privileges(const char *user)
{
	const struct passwd *pw = run_as_user();

	if (initgroups(pw->pw_name, pw->pw_gid) < 0)
		die("--user %s: initgroups:", user);
	if (setgid(pw->pw_gid) < 0)
		die("--user %s: setgid:", user);
	if (setuid(pw->pw_uid) < 0)
		die("--user %s: setuid:", user);
	if (pw->pw_uid != 0 && setuid(0) == 0)
		die("--user %s: root could be regained; refusing to run", user);
}

/* Make room for max_conns descriptors, as far as the hard limit allows. */
static void
raise_fd_limit(void)
{
	struct rlimit rl;
	rlim_t want = (rlim_t)max_conns + 64;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur < want)
		warn("open-file limit %llu is below --max-conns %u plus 64; raise it (ulimit -n)",
		    (unsigned long long)rl.rlim_cur, max_conns);
}

/* ------------------------------------------------------------------------
 * [SLOTS] Connection slots, shared fairly.
 *
 * There are --max-conns slots, and one peer must not be able to take them
 * all: X itself sends from few addresses, perhaps over hundreds of
 * connections at once, while an attacker can open a thousand sockets and
 * trickle a byte now and then. So each connection counts against its
 * address (an IPv6 /64 counting as one, since one host often has a whole
 * /64), and when every slot is taken a newcomer gets the slot of:
 *   1. the oldest connection that has had no request answered yet, of the
 *      address holding the most of those; or else
 *   2. the connection idle longest, of the address holding the most.
 * A connection whose event is with the event writer is never taken, and
 * the one taken is shut down (its owner sees the end and closes it).
 * Only when nothing can be taken is the newcomer refused with 503. So a
 * sender whose connections complete requests keeps them: it can lose an
 * idle one only while it holds more connections than anybody else and
 * every connection has been answered at least once.
 *
 * Everything here is under conns_lock. Calls nothing outside.
 * ------------------------------------------------------------------------ */

struct peer {
	unsigned char addr[17];      /* family, then the address or /64 */
	struct peer *hnext;          /* its hash chain */
	struct peer *prev, *next;    /* every peer, for the search when full */
	struct conn *first, *last;   /* its connections, oldest first */
	unsigned conns, fresh;       /* how many; of those, none answered yet */
};

static struct peer **peer_table;   /* under conns_lock, as all of this */
static size_t peer_buckets;        /* a power of two */
static struct peer *peers;
static uint32_t peer_seed;         /* so that no peer can choose collisions */
static unsigned nslots;            /* connections holding a slot */

static void
peer_key(const struct sockaddr_storage *ss, unsigned char key[17])
{
	memset(key, 0, 17);
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;

		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
			key[0] = 4;
			memcpy(key + 1, s6->sin6_addr.s6_addr + 12, 4);
		} else {
			key[0] = 6;
			memcpy(key + 1, s6->sin6_addr.s6_addr, 8);
		}
	} else if (ss->ss_family == AF_INET) {
		key[0] = 4;
		memcpy(key + 1, &((const struct sockaddr_in *)ss)->sin_addr, 4);
	}
}

static size_t
peer_hash(const unsigned char key[17])
{
	uint32_t h = 2166136261u ^ peer_seed;
	int i;

	for (i = 0; i < 17; i++)
		h = (h ^ key[i]) * 16777619u;
	return h & (peer_buckets - 1);
}

/* The slot table, sized for max_conns. */
static void
slots_init(void)
{
	peer_buckets = 64;
	while (peer_buckets < max_conns)
		peer_buckets *= 2;
	peer_table = xmalloc(peer_buckets * sizeof(*peer_table));
	memset(peer_table, 0, peer_buckets * sizeof(*peer_table));
	entropy(&peer_seed, sizeof(peer_seed));
}

/* Take c off the list that link picks out of every connection (its
 * on_loop or its on_peer): *first, and *last where the list keeps one
 * (last not NULL), move past it. The caller holds the list's lock. */
static void
conn_list_remove(struct conn *c, struct conn_link *(*link)(struct conn *), struct conn **first, struct conn **last)
{
	struct conn_link *at = link(c);

	if (at->prev != NULL)
		link(at->prev)->next = at->next;
	else
		*first = at->next;
	if (at->next != NULL)
		link(at->next)->prev = at->prev;
	else if (last != NULL)
		*last = at->prev;
	at->prev = at->next = NULL;
}

/* c's place among its peer address's connections, for conn_list_remove. */
static struct conn_link *
link_on_peer(struct conn *c)
{
	return &c->on_peer;
}

static void
slot_release_locked(struct conn *c)
{
	struct peer *p = c->slot;

	if (p == NULL)
		return;
	conn_list_remove(c, link_on_peer, &p->first, &p->last);
	c->slot = NULL;
	p->conns--;
	if (c->fresh)
		p->fresh--;
	nslots--;
	if (p->conns == 0) {
		struct peer **h = &peer_table[peer_hash(p->addr)];

		while (*h != p)
			h = &(*h)->hnext;
		*h = p->hnext;
		if (p->prev != NULL)
			p->prev->next = p->next;
		else
			peers = p->next;
		if (p->next != NULL)
			p->next->prev = p->prev;
		free(p);
	}
}

/* Give c's slot back; before its descriptor closes, always. */
static void
slot_release(struct conn *c)
{
	pthread_mutex_lock(&conns_lock);
	slot_release_locked(c);
	pthread_mutex_unlock(&conns_lock);
}

/* c has had a request answered. */
static void
slot_answered(struct conn *c)
{
	atomic_store_explicit(&c->last_answer, now_ms(), memory_order_relaxed);
	if (c->fresh) {
		pthread_mutex_lock(&conns_lock);
		if (c->slot != NULL)
			c->slot->fresh--;
		c->fresh = 0;
		pthread_mutex_unlock(&conns_lock);
	}
}

/* Its event is with the writer: never evicted (read from the accept
 * thread, so only as a hint: the state may change just after). */
static int
conn_busy(const struct conn *c)
{
	return conn_parked(c) || conn_state(c) == CS_WAITING;
}

/* Free a slot for a newcomer from peer, by the rules above: 0, or -1 when
 * no connection can be taken. */
static int
slot_evict(const char *newcomer)
{
	struct peer *p, *most = NULL;
	struct conn *k, *victim = NULL;
	int64_t oldest = INT64_MAX;

	for (p = peers; p != NULL; p = p->next)
		if (p->fresh > 0 && (most == NULL || p->fresh > most->fresh))
			most = p;
	if (most != NULL)
		for (k = most->first; k != NULL && victim == NULL; k = k->on_peer.next)
			if (k->fresh && !conn_busy(k))
				victim = k;
	if (victim == NULL) {
		most = NULL;
		for (p = peers; p != NULL; p = p->next)
			if (most == NULL || p->conns > most->conns)
				most = p;
		for (k = most != NULL ? most->first : NULL; k != NULL; k = k->on_peer.next) {
			int64_t t = atomic_load_explicit(&k->last_answer, memory_order_relaxed);

			if (!conn_busy(k) && t < oldest) {
				oldest = t;
				victim = k;
			}
		}
	}
	if (victim == NULL)
		return -1;
	if (!quiet)
		warn("%s: closed to make room for %s (all %u connections taken; its address held %u)",
		    victim->peer, newcomer, max_conns, most->conns);
	slot_release_locked(victim);
	shutdown(victim->fd, SHUT_RDWR);
	return 0;
}

/* Take a slot for c, from ss, evicting if all are taken: 0, or -1. */
static int
slot_take(struct conn *c, const struct sockaddr_storage *ss)
{
	unsigned char key[17];
	struct peer *p;
	size_t h;

	if (nslots >= max_conns && slot_evict(c->peer) < 0)
		return -1;
	peer_key(ss, key);
	h = peer_hash(key);
	for (p = peer_table[h]; p != NULL && memcmp(p->addr, key, sizeof(key)) != 0; p = p->hnext)
		;
	if (p == NULL) {
		if ((p = calloc(1, sizeof(*p))) == NULL)
			return -1;
		memcpy(p->addr, key, sizeof(key));
		p->hnext = peer_table[h];
		peer_table[h] = p;
		p->next = peers;
		if (peers != NULL)
			peers->prev = p;
		peers = p;
	}
	c->slot = p;
	c->on_peer.prev = p->last;
	if (p->last != NULL)
		p->last->on_peer.next = c;
	else
		p->first = c;
	p->last = c;
	p->conns++;
	p->fresh++;
	c->fresh = 1;
	atomic_store(&c->last_answer, c->accepted);
	nslots++;
	return 0;
}

/* ------------------------------------------------------------------------
 * [LOOPS] The event loops in front, a thread per connection behind, and
 * serve(): the threads started, accept, the drain at the end. Owns struct
 * loop. Calls [SLOTS], [WEBHOOK] (serve_buffered on a loop,
 * serve_connection on a thread), [WRITER] (a parked connection's verdict
 * comes back through loops_give_decided) and [TLS] (tls_pump).
 *
 * Why both. The slow paths (a head or body trickling in, an fdatasync, a
 * lingering close, a client that does not read) are plain blocking
 * conversations: each runs on its own thread, every wait a poll() with a
 * deadline, so a slow or silent client holds only its own thread and never
 * delays anyone else, and the code reads top to bottom with no callbacks.
 * But a thread per connection costs a thread wake-up per request, and on a
 * small machine those wake-ups, not the work, bound the rate (measured: a
 * third of all CPU time in the scheduler). So every connection starts on an
 * epoll loop (one per CPU) that answers each request that has arrived
 * whole, right away, and hands the connection to a thread at the first sign
 * of waiting (serve_buffered). TLS engines are driven by hand there
 * (tls_pump), so a handshake never needs a thread either, and an idle or
 * silent connection costs none at all.
 * ------------------------------------------------------------------------ */

/* An event loop: an epoll set, and the connections it holds. */
struct loop {
	int epfd;
	int wake_fd;                /* an eventfd: the writer decided events here */
	pthread_mutex_t lock;       /* conns (with the accept thread) and finished
	                             * (with the writer) */
	struct conn *conns;
	struct conn *finished;      /* parked connections with their verdict */
	struct event *events, **events_tail;  /* this turn's, for the writer */
	_Atomic int64_t beat;       /* when it last woke (now_ms), for the watchdog */
};

enum { MAX_LOOPS = 8 };
static struct loop loops[MAX_LOOPS];
static unsigned nloops, next_loop;

static pthread_attr_t thread_attr;

/* c's place among its loop's connections, for conn_list_remove. */
static struct conn_link *
link_on_loop(struct conn *c)
{
	return &c->on_loop;
}

/* Take c off its loop's list; the caller holds l->lock. */
static void
loop_unlink_locked(struct loop *l, struct conn *c)
{
	conn_list_remove(c, link_on_loop, &l->conns, NULL);
}

static void
loop_unlink(struct loop *l, struct conn *c)
{
	pthread_mutex_lock(&l->lock);
	loop_unlink_locked(l, c);
	pthread_mutex_unlock(&l->lock);
}

/* Move c from its loop to a thread of its own. */
static void
loop_to_thread(struct conn *c)
{
	struct loop *l = c->loop;
	pthread_t t;

	if (conn_state(c) != CS_FLUSHING)
		conn_enter(c, CS_LOOP, CS_THREAD);
	(void)epoll_ctl(l->epfd, EPOLL_CTL_DEL, c->fd, NULL);  /* ENOENT when it was unpolled */
	loop_unlink(l, c);
	c->loop = NULL;
	if (pthread_create(&t, &thread_attr, connection_thread, c) != 0) {
		warn("%s: no thread for a slow client; closing it", c->peer);
		connection_end(c, 0);
	}
}

static void
loop_close(struct conn *c)
{
	struct loop *l = c->loop;

	(void)epoll_ctl(l->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	loop_unlink(l, c);
	connection_end(c, 0);
}

/* Bring what arrived into c->in: 0 (perhaps nothing came, or only TLS
 * handshake), 1 when the connection needs its own thread, -1 at its end. */
static int
loop_fill(struct conn *c, int read_socket)
{
	ssize_t r;

#ifdef XWEBHOOK_TLS
	if (c->tr == &tls_transport)
		return tls_pump(c, read_socket);
#endif
	if (!read_socket)
		return 0;
	r = recv(c->fd, c->in + c->in_len, CONN_BUF - c->in_len, MSG_DONTWAIT);
	if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return 0;
	if (r <= 0)
		return -1;
	c->in_len += (size_t)r;
	return 0;
}

/* Level-triggered epoll says nothing of bytes a TLS engine already holds. */
static int
loop_more(struct conn *c)
{
#ifdef XWEBHOOK_TLS
	if (c->tr == &tls_transport)
		return tls_has_app_data(c);
#endif
	(void)c;
	return 0;
}

/* Take c off its loop when the verdict says so (V_THREAD, V_CLOSE): 1
 * when it did, and c is no longer the loop's. */
static int
loop_leave(struct conn *c, enum verdict v)
{
	if (v == V_THREAD)
		loop_to_thread(c);
	else if (v == V_CLOSE)
		loop_close(c);
	else
		return 0;
	return 1;
}

/* Serve c's bytes: those that arrived on its socket (read_socket, when
 * epoll said so) and those it holds already. */
static void
loop_readable(struct conn *c, int read_socket)
{
	if (conn_parked(c)) {
		/* Nothing is read until the verdict is answered; out of the
		 * set meanwhile, or level-triggered epoll would spin on it. */
		(void)epoll_ctl(c->loop->epfd, EPOLL_CTL_DEL, c->fd, NULL);
		conn_enter(c, CS_PARKED, CS_UNPOLLED);
		return;
	}
	do {
		int r = loop_fill(c, read_socket);
		enum verdict v;

		read_socket = 0;
		if (r != 0 || c->in_len == 0) {
			if (r < 0)
				loop_close(c);
			else if (r > 0)
				loop_to_thread(c);
			return;
		}
		v = serve_buffered(c);
		if (v == V_PARKED || loop_leave(c, v))
			return;
		c->expires = now_ms() + idle_timeout;
	} while (loop_more(c));
}

/* An event parked on its loop, to go to the writer at the end of the turn. */
static void
loop_queue_event(struct conn *c)
{
	struct loop *l = c->loop;

	*l->events_tail = &c->ev;
	l->events_tail = &c->ev.next;
}

/* The event writer has decided the events of parked connections: give
 * each loop its own (linked by finished, first..*last), with one lock
 * and at most one wake-up per loop and batch. It runs on the writer; a
 * connection handed back is the loop's, and the writer touches it no
 * more. */
static void
loops_give_decided(struct conn *first[MAX_LOOPS], struct conn **last[MAX_LOOPS])
{
	unsigned i;

	for (i = 0; i < nloops; i++) {
		struct loop *l = &loops[i];
		uint64_t one = 1;
		int empty;

		if (first[i] == NULL)
			continue;
		pthread_mutex_lock(&l->lock);
		empty = l->finished == NULL;
		*last[i] = l->finished;
		l->finished = first[i];
		pthread_mutex_unlock(&l->lock);
		/* The loop reads the eventfd before it takes the list, so
		 * one wake-up per empty list is enough. */
		if (empty && write(l->wake_fd, &one, sizeof(one)) < 0)
			(void)0;  /* EAGAIN: the counter is full, so the loop is woken */
	}
}

/* Answer a parked connection's event, then serve it on. */
static void
loop_unpark(struct conn *c)
{
	int unpolled = conn_state(c) == CS_UNPOLLED;
	int linger = 0;
	enum handled h;

	conn_enter(c, unpolled ? CS_UNPOLLED : CS_PARKED, CS_LOOP);
	h = event_answer(c, c->ev.result, c->ev.why, &linger);
	if (loop_leave(c, loop_answered(c, h, linger)))
		return;
	if (unpolled) {
		struct epoll_event ev;

		memset(&ev, 0, sizeof(ev));
		ev.events = EPOLLIN | EPOLLRDHUP;
		ev.data.ptr = c;
		if (epoll_ctl(c->loop->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
			loop_close(c);
			return;
		}
	}
	c->expires = now_ms() + idle_timeout;
	/* A pipelined request may be held already. Bytes still in the
	 * socket are epoll's to report (level-triggered): a recv here
	 * would cost a syscall per event to learn that the client is
	 * waiting for this answer, as clients do. */
	loop_readable(c, 0);
}

static void
loop_take_finished(struct loop *l)
{
	struct conn *c, *next;
	uint64_t n;

	if (read(l->wake_fd, &n, sizeof(n)) < 0)
		(void)0;
	pthread_mutex_lock(&l->lock);
	c = l->finished;
	l->finished = NULL;
	pthread_mutex_unlock(&l->lock);
	for (; c != NULL; c = next) {
		next = c->finished;
		loop_unpark(c);
	}
}

static void *
loop_thread(void *arg)
{
	struct loop *l = arg;
	struct epoll_event ev[64];
	int64_t sweep = now_ms() + 1000;
	int stop_seen = 0;

	thread_name("xwh-loop");
	metrics_thread_take();
	for (;;) {
		int n = epoll_wait(l->epfd, ev, 64, HEARTBEAT_MS), i, woken = 0;
		int64_t now;

		for (i = 0; i < n; i++) {
			if (ev[i].data.ptr == l)
				woken = 1;
			else if (ev[i].data.ptr != NULL)
				loop_readable(ev[i].data.ptr, 1);
		}
		/* Verdicts after the batch: answering one may free a
		 * connection that a later entry of ev[] names. */
		if (woken)
			loop_take_finished(l);
		if (l->events != NULL) {
			writer_queue(l->events, l->events_tail);
			l->events = NULL;
			l->events_tail = &l->events;
		}
		now = now_ms();
		atomic_store(&l->beat, now);
		if (now >= sweep || is_stopping()) {
			/* Close what stayed idle too long, and everything
			 * once the server is stopping (all of it is idle but
			 * the parked, whose verdicts still come). */
			struct conn *c, *next, *doomed = NULL;
			int stop = is_stopping(), empty;

			pthread_mutex_lock(&l->lock);
			for (c = l->conns; c != NULL; c = next) {
				next = c->on_loop.next;
				if (conn_parked(c) || (!stop && now < c->expires))
					continue;
				loop_unlink_locked(l, c);
				c->on_loop.next = doomed;
				doomed = c;
			}
			empty = l->conns == NULL;
			pthread_mutex_unlock(&l->lock);
			for (c = doomed; c != NULL; c = next) {
				next = c->on_loop.next;
				(void)epoll_ctl(l->epfd, EPOLL_CTL_DEL, c->fd, NULL);
				connection_end(c, 0);
			}
			if (stop && empty)
				return NULL;  /* nothing is left, and nothing comes */
			if (stop && !stop_seen) {
				/* The closed stop pipe would wake every wait. */
				(void)epoll_ctl(l->epfd, EPOLL_CTL_DEL, stop_pipe[0], NULL);
				stop_seen = 1;
			}
			sweep = now + 1000;
		}
	}
}

/* Start one loop per CPU (at most MAX_LOOPS). */
static void
loops_start(void)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned i;

	nloops = cpus < 1 ? 1 : cpus > MAX_LOOPS ? MAX_LOOPS : (unsigned)cpus;
	for (i = 0; i < nloops; i++) {
		struct epoll_event ev;
		pthread_t t;

		loops[i].epfd = epoll_create1(EPOLL_CLOEXEC);
		loops[i].wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (loops[i].epfd < 0 || loops[i].wake_fd < 0)
			die("cannot start an event loop:");
		pthread_mutex_init(&loops[i].lock, NULL);
		loops[i].events_tail = &loops[i].events;
		atomic_store(&loops[i].beat, now_ms());
		/* The stop pipe wakes the loop when it is closed. */
		memset(&ev, 0, sizeof(ev));
		ev.events = EPOLLIN;
		ev.data.ptr = NULL;
		if (epoll_ctl(loops[i].epfd, EPOLL_CTL_ADD, stop_pipe[0], &ev) < 0)
			die("epoll_ctl:");
		ev.data.ptr = &loops[i];
		if (epoll_ctl(loops[i].epfd, EPOLL_CTL_ADD, loops[i].wake_fd, &ev) < 0)
			die("epoll_ctl:");
		if (pthread_create(&t, &thread_attr, loop_thread, &loops[i]) != 0)
			die("cannot start an event loop thread");
	}
}

/* Give a new connection to the next loop. */
static int
loop_adopt(struct conn *c)
{
	struct loop *l = &loops[next_loop++ % nloops];
	struct epoll_event ev;

	conn_enter(c, CS_NEW, CS_LOOP);
	c->loop = l;
	/* A silent client is closed after the idle time; a TLS one that
	 * has not finished its handshake, after the head's. */
	c->expires = c->accepted + idle_timeout;
#ifdef XWEBHOOK_TLS
	if (c->tr == &tls_transport) {
		if (tls_start(c) == NULL) {
			c->loop = NULL;
			conn_enter(c, CS_LOOP, CS_NEW);
			return -1;
		}
		c->expires = c->accepted + head_timeout;
	}
#endif
	pthread_mutex_lock(&l->lock);
	c->on_loop.next = l->conns;
	if (l->conns != NULL)
		l->conns->on_loop.prev = c;
	l->conns = c;
	pthread_mutex_unlock(&l->lock);
	memset(&ev, 0, sizeof(ev));
	ev.events = EPOLLIN | EPOLLRDHUP;
	ev.data.ptr = c;
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
		loop_unlink(l, c);
		c->loop = NULL;
		conn_enter(c, CS_LOOP, CS_NEW);
		return -1;
	}
	return 0;
}

/* Free a connection whose descriptor is closed, and count it gone. */
static void
connection_free(struct conn *c)
{
	body_release(c);
	free(c->in);
	buf_free(&c->out);
	buf_free(&c->body);
	buf_free(&c->pretty);
	buf_free(&c->compact);
	buf_free(&c->pending);
	free(c);
	pthread_mutex_lock(&conns_lock);
	if (--nconns == 0)
		pthread_cond_broadcast(&conns_gone);
	pthread_mutex_unlock(&conns_lock);
}

/* The end of a connection: its slot first (see slot_evict), then its
 * descriptor, then its memory. */
static void
connection_end(struct conn *c, int linger)
{
	slot_release(c);
	c->tr->close(c, linger);
	connection_free(c);
}

/* A connection's own thread: from accept (TLS), or from a loop that met
 * something to wait for, perhaps with an answer still to finish sending. */
static void *
connection_thread(void *arg)
{
	struct conn *c = arg;
	int linger = c->linger;

	thread_name("xwh-conn");
	metrics_thread_take();
	if (c->pending.len > 0 || c->unsent) {
		/* Writing (perhaps nothing) flushes what a loop left in a TLS
		 * engine too. */
		if (c->tr->write(c, c->pending.p ? c->pending.p : "", c->pending.len,
		    now_ms() + write_timeout) < 0 && conn_state(c) == CS_THREAD)
			conn_enter(c, CS_THREAD, CS_FLUSHING);
		buf_free(&c->pending);
		c->unsent = 0;
	}
	if (conn_state(c) == CS_THREAD) {
		/* Anything a loop left in c->in after the last answer is the
		 * start of the next request. */
		if (c->pos > 0)
			next_request(c);
		linger = serve_connection(c);
	}
	connection_end(c, linger);
	metrics_thread_give();
	return NULL;
}

/* Give an accepted socket to a loop (or a thread), or refuse it when no
 * slot can be had or memory runs out. */
static void
start_connection(int fd, const struct sockaddr_storage *ss, const pthread_attr_t *attr, int acme_http)
{
	struct conn *c = calloc(1, sizeof(*c));
	char peer[sizeof(c->peer)];
	pthread_t t;
	int one = 1;

	format_peer(ss, peer, sizeof(peer));
	if (c == NULL || (c->in = malloc(CONN_BUF)) == NULL) {
		free(c);
		refuse(fd, peer);
		return;
	}
	c->fd = fd;
	c->accepted = now_ms();
	c->tr = &plain_transport;
	c->acme_http = acme_http;
#ifdef XWEBHOOK_TLS
	if ((cert_path != NULL || acme_domain != NULL) && !acme_http)
		c->tr = &tls_transport;
#endif
	memcpy(c->peer, peer, sizeof(peer));
	c->out.soft = c->body.soft = c->pretty.soft = c->compact.soft = c->pending.soft = 1;
	pthread_mutex_lock(&conns_lock);
	if (slot_take(c, ss) < 0) {
		pthread_mutex_unlock(&conns_lock);
		free(c->in);
		free(c);
		refuse(fd, peer);
		return;
	}
	nconns++;
	pthread_mutex_unlock(&conns_lock);

	/* Each response leaves in one write; Nagle would only delay it. */
	if (ss->ss_family != AF_UNIX)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (nloops > 0 && loop_adopt(c) == 0)
		return;
	conn_enter(c, CS_NEW, CS_THREAD);
	if (pthread_create(&t, attr, connection_thread, c) != 0) {
		slot_release(c);
		c->fd = -1;
		connection_free(c);
		refuse(fd, peer);
	}
}

static int pid_fd = -1;  /* --pid-file, locked for as long as we serve */

/* --pid-file: our pid, for the scripts that send SIGHUP (logrotate,
 * certbot's hook) with pkill -F FILE -L -x xwebhook. It is written as the
 * user we run as, once the signals are ours to handle, and held under an
 * flock while we serve: pkill -L trusts only a locked file, so one that a
 * crash left behind signals nothing, and a second server given the same
 * file is refused. A symlink there is never followed, and anything but a
 * regular file is refused. */
static void
pid_file_write(void)
{
	char line[24];
	struct stat st, there;
	int n, tries;

	if (pid_path == NULL)
		return;
	/* A server stopping as we start may remove the file between our open
	 * and our lock: then the lock is on a name no longer there; again. */
	for (tries = 0;; tries++) {
		pid_fd = open(pid_path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);
		if (pid_fd < 0 && errno == ELOOP)
			die("--pid-file %s is a symbolic link: refused, as it is never followed", pid_path);
		if (pid_fd < 0 && errno == EACCES && run_as != NULL)
			die("cannot open --pid-file %s as --user %s (it is written once root is dropped: "
			    "put it in a directory of that user's):", pid_path, run_as);
		if (pid_fd < 0)
			die("cannot open --pid-file %s:", pid_path);
		if (fstat(pid_fd, &st) < 0 || !S_ISREG(st.st_mode))
			die("--pid-file %s is not a regular file", pid_path);
		if (st.st_nlink > 1)  /* where hard links are not protected: another file's name */
			die("--pid-file %s has %lu links: refused, as another file would be written", pid_path,
			    (unsigned long)st.st_nlink);
		if (flock(pid_fd, LOCK_EX | LOCK_NB) < 0) {
			if (errno == EWOULDBLOCK)
				die("--pid-file %s is held by another xwebhook that is running", pid_path);
			die("cannot lock --pid-file %s:", pid_path);
		}
		if (lstat(pid_path, &there) == 0 && there.st_dev == st.st_dev && there.st_ino == st.st_ino)
			break;
		close(pid_fd);
		if (tries == 3)
			die("--pid-file %s keeps being replaced while we lock it", pid_path);
	}
	n = snprintf(line, sizeof(line), "%ld\n", (long)getpid());
	if (ftruncate(pid_fd, 0) < 0 || pwrite(pid_fd, line, (size_t)n, 0) != n)
		die("cannot write --pid-file %s:", pid_path);
}

/* At the stop: remove --pid-file, if the path still names our file (an
 * admin may have put another there), then let go of the lock. */
static void
pid_file_remove(void)
{
	struct stat ours, there;

	if (pid_fd < 0)
		return;
	if (fstat(pid_fd, &ours) == 0 && lstat(pid_path, &there) == 0 && ours.st_dev == there.st_dev &&
	    ours.st_ino == there.st_ino && unlink(pid_path) < 0)
		warn("cannot remove --pid-file %s:", pid_path);
	close(pid_fd);
	pid_fd = -1;
}

/* Take SIGINT, SIGTERM and SIGHUP: blocked everywhere but in the accept
 * loop's ppoll(), so no connection thread is ever interrupted by one. The
 * mask that lets them in goes to *open_mask. */
static void
signals_take(sigset_t *open_mask)
{
	sigset_t block;
	struct sigaction sa;

	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGHUP);
	if ((errno = pthread_sigmask(SIG_BLOCK, &block, open_mask)) != 0)
		die("pthread_sigmask:");
	sigdelset(open_mask, SIGINT);
	sigdelset(open_mask, SIGTERM);
	sigdelset(open_mask, SIGHUP);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0 ||
	    sigaction(SIGHUP, &sa, NULL) < 0)
		die("sigaction:");
}

/* Start every thread the server runs besides the connections' own: each
 * starts with the signals blocked. */
static void
threads_start(void)
{
	pthread_attr_init(&thread_attr);
	pthread_attr_setdetachstate(&thread_attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&thread_attr, thread_stack);
	outq_start(&log_queue, STDERR_FILENO, LOG_QUEUE_LIMIT);
	if (stdout_never_waits())
		stdout_direct = 1;
	else
		outq_start(&stdout_queue, STDOUT_FILENO, STDOUT_QUEUE_LIMIT);
	writer_start();
	slots_init();
	body_budget = max_body > BODY_BUDGET_MIN / 2 ? 2 * max_body : BODY_BUDGET_MIN;
	loops_start();
	metrics_start();
#ifdef XWEBHOOK_TLS
	if (acme_domain != NULL)
		acme_start();
#endif
}

/* Has every event loop and the event writer woken lately (see
 * HEARTBEAT_MS)? If not, say which, once while it lasts. */
static int
threads_alive(int64_t now)
{
	static int told;
	int64_t stale = watchdog_ms / 2 > WATCHDOG_STALE_MIN_MS ? watchdog_ms / 2 : WATCHDOG_STALE_MIN_MS;
	int64_t age = now - atomic_load(&writer_beat);
	const char *who = "the event writer";
	unsigned i;

	for (i = 0; i < nloops && age <= stale; i++) {
		age = now - atomic_load(&loops[i].beat);
		who = "an event loop";
	}
	if (age <= stale) {
		if (told)
			warn("watchdog: every event loop and the event writer are awake again; pinging systemd");
		told = 0;
		return 1;
	}
	if (!told)
		warn("watchdog: %s has not woken for %lld ms: no more WATCHDOG=1 until it does, so that "
		    "systemd restarts a server that is stuck", who, (long long)age);
	told = 1;
	return 0;
}

/* WATCHDOG=1 at half the watchdog's interval, while every thread that
 * must keep going does: how long the accept loop may wait until the next
 * (NULL: for ever, without a watchdog). */
static struct timespec *
watchdog_ping(struct timespec *wait)
{
	static int64_t next;
	int64_t now = now_ms();

	if (watchdog_ms == 0)
		return NULL;
	if (now >= next) {
		if (threads_alive(now))
			notify_send("WATCHDOG=1");
		next = now + watchdog_ms / 2;
	}
	wait->tv_sec = (time_t)((next - now) / 1000);
	wait->tv_nsec = (long)((next - now) % 1000) * 1000000;
	return wait;
}

/* Accept on lfd (and --acme-http) until SIGINT or SIGTERM, taking SIGHUP
 * in between, and ping systemd's watchdog; signals come in only while
 * ppoll() waits. */
static void
accept_loop(int lfd, const sigset_t *open_mask)
{
	int paused = 0;

	while (!stop_signal) {
		struct pollfd pfd[2];
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		struct timespec tick, *wait = watchdog_ping(&tick);
		int fd, from, r;

		if (reload_signal) {
			reload_signal = 0;
			reload();
			continue;
		}
		if (paused) {
			/* Out of descriptors: wait for some to free up,
			 * rather than spin on a listening socket we cannot
			 * drain. */
			struct timespec pause = { 0, 100 * 1000 * 1000 };

			ppoll(NULL, 0, &pause, open_mask);
			paused = 0;
			continue;
		}
		pfd[0].fd = lfd;
		pfd[1].fd = acme_http_fd;  /* --acme-http, or -1 */
		pfd[0].events = pfd[1].events = POLLIN;
		pfd[0].revents = pfd[1].revents = 0;
		if ((r = ppoll(pfd, 2, wait, open_mask)) < 0) {
			if (errno == EINTR)
				continue;
			die("poll:");
		}
		if (r == 0)
			continue;  /* the watchdog's time */
		from = (pfd[0].revents & POLLIN) ? 0 : 1;
		memset(&ss, 0, sizeof(ss));  /* accept4 fills it: this is for the analyzer */
		fd = accept4(pfd[from].fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				warn("accept:");
				paused = 1;
			}
			continue;  /* EAGAIN, ECONNABORTED, EINTR and the like */
		}
		start_connection(fd, &ss, &thread_attr, from == 1);
	}
}

/* Stop taking connections and wait up to drain_timeout for those open to
 * finish: how many did not. */
static unsigned
connections_drain(int lfd)
{
	struct timespec until;
	unsigned left;

	notify_send("STOPPING=1");
	close(lfd);
	if (acme_http_fd >= 0)
		close(acme_http_fd);
#ifdef XWEBHOOK_TLS
	if (acme_domain != NULL)
		acme_stop();
#endif
	pthread_mutex_lock(&conns_lock);
	atomic_store(&stopping, 1);
	left = nconns;
	pthread_mutex_unlock(&conns_lock);
	close(stop_pipe[1]);
	warn("%s: stopping; %u connection(s) open", stop_signal == SIGINT ? "SIGINT" : "SIGTERM", left);
	until = deadline_ts(now_ms() + drain_timeout);
	pthread_mutex_lock(&conns_lock);
	while (nconns > 0 && pthread_cond_timedwait(&conns_gone, &conns_lock, &until) != ETIMEDOUT)
		;
	left = nconns;
	pthread_mutex_unlock(&conns_lock);
	return left;
}

/* Accept until SIGINT or SIGTERM, then let requests in flight finish. The
 * startup line, naming url, says that every thread is up: from then on
 * the server takes connections and signals as it will until it stops. */
static int
serve(int lfd, const char *url)
{
	sigset_t open_mask;
	unsigned left;

	cond_init_monotonic(&conns_gone);
	if (pipe2(stop_pipe, O_CLOEXEC) < 0)
		die("pipe:");
	notify_open();
	signals_take(&open_mask);
	pid_file_write();
	threads_start();
	warn("serving %s (events to stdout%s%s%s)", url, output_path ? " and " : "",
	    output_path ? output_path : "", nforwards > 0 ? " and --forward" : "");
	serving_url = url;
	atomic_store(&serving_up, 1);
	ready_tell();
	if (!atomic_load(&ready_told))
		notify_send("STATUS=waiting for the first certificate from the ACME CA");
	accept_loop(lfd, &open_mask);
	left = connections_drain(lfd);
	if (left > 0) {
		warn("stopped with %u connection(s) unfinished after %d s", left, (int)(drain_timeout / 1000));
		pid_file_remove();
		outq_flush(&log_queue, now_ms() + 1000);
		_exit(0);  /* their threads still run: do not tear down under them */
	}
	pid_file_remove();
	warn("stopped");
	/* The last lines, unless stderr takes nothing. */
	outq_flush(&log_queue, now_ms() + 1000);
	pthread_attr_destroy(&thread_attr);
	return 0;
}

/* ------------------------------------------------------------------------
 * [WEBHOOK] The webhook: read a request, answer the CRC, verify and emit
 * events, and write one access-log line per request. Owns a request's
 * handling from its head to its answer (read_head, read_body,
 * handle_request, send_response). Calls [HTTP]'s parsers, [CRYPTO]'s HMAC,
 * [JSON]'s renderer, [WRITER] (event_submit, event_wait) and [SLOTS].
 * ------------------------------------------------------------------------ */

/* Append s to b escaped, for JSON (quote and backslash after a
 * backslash, control bytes as \u00NN) or for the log (those and non-ASCII
 * as \xNN). Inline: each caller gets its own copy, with the test on json
 * folded away. */
static inline void
escape_add(struct buf *b, const char *s, size_t n, int json)
{
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		int special = c == '"' || c == '\\';

		if (json && special) {
			buf_addc(b, '\\');
			buf_addc(b, (char)c);
		} else if (c < 0x20 || c == 0x7f || (!json && (c > 0x7f || special))) {
			char e[8];

			if (json)
				snprintf(e, sizeof(e), "\\u%04x", c);
			else
				snprintf(e, sizeof(e), "\\x%02x", c);
			buf_adds(b, e);
		} else {
			buf_addc(b, (char)c);
		}
	}
}

/* Append s to b as the inside of a JSON string. */
static void
json_escape(struct buf *b, const char *s, size_t n)
{
	escape_add(b, s, n, 1);
}

/* Append s to b for the access log: quotes, backslashes, control bytes
 * and non-ASCII become \xNN, so nothing a client sends reaches a terminal
 * raw. */
static void
log_escape(struct buf *b, const char *s, size_t n)
{
	escape_add(b, s, n, 0);
}

static void
access_log(const struct conn *c, const struct request *req, const struct outcome *o, int64_t start_us)
{
	struct buf b = { 0 };
	char stamp[32], num[160];
	time_t t;
	struct tm tm;
	int64_t us;

	if (quiet)
		return;  /* before the clocks are read: --quiet has no use for them */
	t = time(NULL);
	us = now_us() - start_us;
	b.soft = 1;  /* no memory for a log line is no reason to stop */
	gmtime_r(&t, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	buf_adds(&b, stamp);
	buf_addc(&b, ' ');
	buf_adds(&b, c->peer);
	buf_adds(&b, " \"");
	if (req != NULL && req->method_len > 0 && req->target_len > 0) {
		log_escape(&b, req->method_name, req->method_len);
		buf_addc(&b, ' ');
		log_escape(&b, req->target, req->path_len);
	} else {
		buf_addc(&b, '-');
	}
	snprintf(num, sizeof(num), "\" %d in=%zu out=%zu %lld.%03lldms", o->code, o->in_bytes,
	    o->out_bytes, (long long)(us / 1000), (long long)(us % 1000));
	buf_adds(&b, num);
	if (o->sig != NULL) {
		buf_adds(&b, " sig=");
		buf_adds(&b, o->sig);
	}
	if (o->code == 200 && o->sig != NULL) {
		snprintf(num, sizeof(num), " taken=%s %lld.%03lldms", sink_names, (long long)(o->sinks_us / 1000),
		    (long long)(o->sinks_us % 1000));
		buf_adds(&b, num);
	}
	if (o->why != NULL) {
		buf_adds(&b, " (");
		log_escape(&b, o->why, strlen(o->why));
		buf_addc(&b, ')');
	}
	buf_addc(&b, '\n');
	/* One write per line: lines from different threads never mix. */
	if (!b.failed && log_queue_line(b.p, b.len) < 0 && write_all(STDERR_FILENO, b.p, b.len) < 0)
		(void)0;
	buf_free(&b);
}

/* The Date header's value, cached per thread for the current second. */
static const char *
http_date(void)
{
	static _Thread_local time_t cached = -1;
	static _Thread_local char text[40];
	time_t t = time(NULL);

	if (t != cached) {
		struct tm tm;

		gmtime_r(&t, &tm);
		strftime(text, sizeof(text), "%a, %d %b %Y %H:%M:%S GMT", &tm);
		cached = t;
	}
	return text;
}


/* Build one response whole in o, so that it leaves in one write (the
 * webhook's answers and the --metrics listener's). */
static void
response_build(struct buf *o, const struct request *req, enum status st, const char *type,
    const char *body, size_t body_len, const char *extra, int keep)
{
	/* By hand, not snprintf: it was a percent of a CRC's time. */
	char digits[24], *d = digits + sizeof(digits);
	int code = statuses[st].code;
	size_t n = body_len;

	buf_clear(o);
	buf_adds(o, "HTTP/1.1 ");
	buf_addc(o, (char)('0' + code / 100));
	buf_addc(o, (char)('0' + code / 10 % 10));
	buf_addc(o, (char)('0' + code % 10));
	buf_addc(o, ' ');
	buf_adds(o, statuses[st].reason);
	buf_adds(o, "\r\nDate: ");
	buf_adds(o, http_date());
	if (type != NULL) {
		buf_adds(o, "\r\nContent-Type: ");
		buf_adds(o, type);
	}
	buf_adds(o, "\r\nContent-Length: ");
	do
		*--d = (char)('0' + n % 10);
	while ((n /= 10) != 0);
	buf_add(o, d, (size_t)(digits + sizeof(digits) - d));
	buf_adds(o, "\r\n");
	if (extra != NULL)
		buf_adds(o, extra);
	if (!keep)
		buf_adds(o, "Connection: close\r\n");
	else if (req != NULL && !req->http11)
		buf_adds(o, "Connection: keep-alive\r\n");
	buf_adds(o, "\r\n");
	if (req == NULL || req->method != M_HEAD)
		buf_add(o, body, body_len);
}

/* Send one response, built whole so that it leaves in one write. */
static int
send_response(struct conn *c, const struct request *req, enum status st, const char *type,
    const char *body, size_t body_len, const char *extra, int keep)
{
	struct buf *o = &c->out;

	response_build(o, req, st, type, body, body_len, extra, keep);
	if (o->failed)
		return -1;  /* out of memory: the connection ends unanswered */
	/* The credit before the bytes: a client that has read its answer
	 * must find its connection already counted as answered (slot_evict). */
	slot_answered(c);
	return c->tr->write(c, o->p, o->len, now_ms() + write_timeout);
}

/* An error's body, {"error":"why"}. */
static void
error_json(struct buf *b, const char *why)
{
	buf_adds(b, "{\"error\":\"");
	json_escape(b, why, strlen(why));
	buf_adds(b, "\"}");
}

/* Send {"error":"why"} with st. */
static void
send_error(struct conn *c, const struct request *req, enum status st, const char *why,
    const char *extra, int keep, struct outcome *o)
{
	struct buf b = { 0 };

	b.soft = 1;
	error_json(&b, why);
	send_response(c, req, st, "application/json", b.p, b.len, extra, keep);
	o->code = statuses[st].code;
	o->out_bytes = req != NULL && req->method == M_HEAD ? 0 : b.len;
	o->why = why;
	buf_free(&b);
}

/* RFC 9112, 2.2: empty lines before a request line are ignored. Returns
 * how many bytes went. */
static size_t
skip_empty_lines(struct conn *c)
{
	size_t k = 0;

	while (k + 1 < c->in_len && c->in[k] == '\r' && c->in[k + 1] == '\n')
		k += 2;
	if (k > 0) {
		memmove(c->in, c->in + k, c->in_len - k);
		c->in_len -= k;
	}
	return k;
}

/* Read a request head into c->in. S_OK with req filled in; S_INCOMPLETE
 * when the connection ended quietly between requests (the peer closed, it
 * stayed idle, or the server is stopping); otherwise the error to answer. */
static enum status
read_head(struct conn *c, struct request *req, const char **why)
{
	size_t scan = 0, line_end = 0, head_len = 0;
	int64_t deadline = 0;

	memset(req, 0, sizeof(*req));
	for (;;) {
		ssize_t r;

		if (line_end == 0 && skip_empty_lines(c) > 0)
			scan = 0;
		if (c->in_len > 0) {
			enum status st;

			if (deadline == 0) {
				c->first_us = now_us();
				deadline = c->first_us / 1000 + head_timeout;
			}
			st = http_scan_head(c->in, c->in_len, &scan, &line_end, &head_len, why);
			if (st == S_OK)
				return http_parse_head(c->in, head_len, req, why);
			if (st != S_INCOMPLETE)
				return st;
			if (c->in_len == CONN_BUF) {  /* unreachable: the limits are smaller */
				*why = "request head too large";
				return S_HEADERS_TOO_LARGE;
			}
			r = c->tr->read(c, c->in + c->in_len, CONN_BUF - c->in_len, deadline, -1);
		} else {
			r = c->tr->read(c, c->in, CONN_BUF, now_ms() + idle_timeout, stop_pipe[0]);
		}
		if (r == IO_TIMEOUT && deadline != 0) {
			*why = "request head not received within 10 s";
			return S_REQUEST_TIMEOUT;
		}
		if (r <= 0)
			return S_INCOMPLETE;
		c->in_len += (size_t)r;
	}
}

/* Grow c->body to want bytes of room, by the buffer's own resize (a soft
 * buffer: a failure refuses the request). What passes BODY_UNCHARGED is
 * drawn from the shared budget first; S_UNAVAILABLE when the budget or
 * the memory runs out, which refuses this request and never the server. */
static enum status
body_room(struct conn *c, size_t want, const char **why)
{
	size_t charge = want > BODY_UNCHARGED ? want - BODY_UNCHARGED : 0;

	if (want <= c->body.cap)
		return S_OK;
	if (charge > c->body_charged) {
		size_t more = charge - c->body_charged;

		if (atomic_fetch_add(&body_held, more) + more > body_budget) {
			atomic_fetch_sub(&body_held, more);
			*why = "the server holds too many unverified bodies; try again";
			return S_UNAVAILABLE;
		}
		c->body_charged = charge;
	}
	if (buf_resize(&c->body, want) < 0) {
		*why = "out of memory for the body; try again";
		return S_UNAVAILABLE;
	}
	return S_OK;
}

/* The next size for a body buffer: double, from 16 KiB, as bytes come,
 * and never past the limit (the declared length, or --max-body), so that
 * the budget is charged for no byte that cannot arrive. */
static size_t
body_next(size_t cap, size_t limit)
{
	size_t n = cap < 16384 ? 16384 : cap * 2;

	return n < limit ? n : limit;
}

/* The body is verified, or refused: its bytes go back to the budget, and
 * a large buffer back to the system. */
static void
body_release(struct conn *c)
{
	if (c->body_charged > 0) {
		atomic_fetch_sub(&body_held, c->body_charged);
		c->body_charged = 0;
	}
	if (c->body.cap > BODY_UNCHARGED)
		buf_free(&c->body);
	buf_clear(&c->body);
}

/* Read the request body into c->body by its deadline, growing the buffer
 * as bytes arrive (never to the size a head merely declares). The bytes
 * after the head in c->in come first. */
static enum status
read_body(struct conn *c, const struct request *req, const char **why)
{
	int64_t deadline = now_ms() + body_timeout;
	struct chunked ch;
	enum status st;

	buf_clear(&c->body);
	c->pos = req->head_len;
	if (!req->chunked) {
		size_t need = (size_t)req->content_length, have = c->in_len - c->pos;
		size_t take = have < need ? have : need;

		if ((st = body_room(c, take, why)) != S_OK)
			return st;
		buf_add(&c->body, c->in + c->pos, take);
		c->pos += take;
		while (c->body.len < need) {
			ssize_t r;

			if (c->body.len == c->body.cap &&
			    (st = body_room(c, body_next(c->body.cap, need), why)) != S_OK)
				return st;
			r = c->tr->read(c, c->body.p + c->body.len, c->body.cap - c->body.len, deadline, -1);
			if (r == IO_TIMEOUT) {
				*why = "request body not received within 30 s";
				return S_REQUEST_TIMEOUT;
			}
			if (r <= 0) {
				*why = "connection ended inside the body";
				return S_BAD_REQUEST;
			}
			c->body.len += (size_t)r;
		}
		return S_OK;
	}
	memset(&ch, 0, sizeof(ch));
	for (;;) {
		size_t used = 0, avail = c->in_len - c->pos;
		ssize_t r;

		/* Decoded data is never longer than its encoding: with this
		 * room, the decoder's appends cannot allocate. */
		if (c->body.len + avail > c->body.cap) {
			size_t want = body_next(c->body.cap, max_body);

			if (want < c->body.len + avail)
				want = c->body.len + avail;
			if ((st = body_room(c, want, why)) != S_OK)
				return st;
		}
		st = chunked_decode(&ch, c->in + c->pos, avail, &used, &c->body, max_body, why);
		c->pos += used;
		if (st != S_INCOMPLETE)
			return st;
		/* All that was buffered is used: read more in its place, but
		 * after the head, which req still points into. */
		c->in_len = c->pos = req->head_len;
		r = c->tr->read(c, c->in + c->in_len, CONN_BUF - c->in_len, deadline, -1);
		if (r == IO_TIMEOUT) {
			*why = "request body not received within 30 s";
			return S_REQUEST_TIMEOUT;
		}
		if (r <= 0) {
			*why = "connection ended inside the body";
			return S_BAD_REQUEST;
		}
		c->in_len += (size_t)r;
	}
}

/* ---- An event's type: what the metrics count it by, and --forward's {type} ---- */

/* Put text reduced to [a-z0-9_.] in out (capitals lowered, any other byte
 * '_'), or "other" when that is no name: empty, EVENT_TYPE_MAX or longer,
 * escaped, or with an empty dot-separated part (NATS refuses those). */
static void
event_type_reduce(const char *t, size_t n, char out[EVENT_TYPE_MAX])
{
	size_t i;

	if (t == NULL || n == 0 || n >= EVENT_TYPE_MAX || memchr(t, '\\', n) != NULL ||
	    t[0] == '.' || t[n - 1] == '.')
		goto other;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)t[i];

		if (c == '.' && i > 0 && t[i - 1] == '.')
			goto other;
		if (c >= 'A' && c <= 'Z')
			c = (unsigned char)(c - 'A' + 'a');
		else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.'))
			c = '_';
		out[i] = (char)c;
	}
	out[n] = '\0';
	return;
other:
	memcpy(out, "other", sizeof("other"));
}

/* The type of the valid JSON event p[0, n), into out: an X Activity API
 * delivery's data.event_type ("post.create"); an Account Activity event's
 * top-level key ("tweet_create_events", "user_event"); "filtered_stream"
 * for a filtered-stream delivery (matching_rules); else "other". Reads
 * only as far as it must: the type comes first in X's events. */
static void
event_type(const char *p, size_t n, char out[EVENT_TYPE_MAX])
{
	const char *key, *dkey, *t = NULL;
	size_t kl, dkl, v, dv, at = jscan_space(p, n, 0), dat, tl = 0;

	while (t == NULL && jscan_member(p, n, at, &key, &kl, &v)) {
		if (kl == 4 && memcmp(key, "data", 4) == 0 && p[v] == '{') {
			for (dat = v; jscan_member(p, n, dat, &dkey, &dkl, &dv); dat = jscan_value(p, n, dv))
				if (dkl == 10 && memcmp(dkey, "event_type", 10) == 0 && p[dv] == '"') {
					t = p + dv + 1;
					tl = jscan_string(p, n, dv) - dv - 2;
					break;
				}
		} else if ((kl > 7 && memcmp(key + kl - 7, "_events", 7) == 0) ||
		    (kl == 10 && memcmp(key, "user_event", 10) == 0)) {
			t = key;
			tl = kl;
		} else if (kl == 14 && memcmp(key, "matching_rules", 14) == 0) {
			t = "filtered_stream";
			tl = strlen(t);
		}
		if (t == NULL)
			at = jscan_value(p, n, v);
	}
	event_type_reduce(t, tl, out);
}

/* Verify the event in c->body and render it for the sinks. */
static enum status
event_check(struct conn *c, const struct request *req, const char **why)
{
	static _Thread_local char err[192];   /* outlives the call, for *why */
	char expected[SIGNATURE_LEN], detail[160];
	struct digest body_hash;
	long spaces;

	/* With --forward, the body's own SHA-256 (consumers tell X's resends
	 * of an event by it) is taken in the signature's pass. */
	sha256_init(&body_hash);
	signature_of(&secret_key, c->body.p, c->body.len, expected, nforwards > 0 ? &body_hash : NULL);
	if (req->signature_len != SIGNATURE_LEN ||
	    !ct_equal(expected, req->signature, SIGNATURE_LEN)) {
		c->o.sig = "bad";
		*why = "x-twitter-webhooks-signature does not match the body";
		return S_UNAUTHORIZED;
	}
	c->o.sig = "ok";
	buf_clear(&c->pretty);
	spaces = json_event(c->body.p, c->body.len, JSON_INDENT, &c->pretty, detail, sizeof(detail));
	if (spaces < 0 && !c->pretty.failed) {
		snprintf(err, sizeof(err), "body is not a JSON object: %s", detail);
		*why = err;
		return S_BAD_REQUEST;
	}
	buf_clear(&c->compact);
	if (output_path != NULL || nforwards > 0) {
		/* X sends compact JSON, which is its own compact form. */
		if (spaces == 0)
			buf_add(&c->compact, c->body.p, c->body.len);
		else
			json_event(c->body.p, c->body.len, JSON_COMPACT, &c->compact, detail, sizeof(detail));
		buf_addc(&c->compact, '\n');
	}
	if (nforwards > 0) {
		unsigned char d[32];

		digest_final(&body_hash, d);
		hex_encode(d, sizeof(d), c->body_sha);
	}
	event_type(c->body.p, c->body.len, c->type);
	if (c->pretty.failed || c->compact.failed) {
		*why = "out of memory for the event; try again";
		return S_UNAVAILABLE;
	}
	return S_OK;
}

/* The body of a CRC answer for token, {"response_token":"sha256=..."}:
 * the one builder, for the server and for `xwebhook crc`. */
enum { CRC_BODY_LEN = 19 + SIGNATURE_LEN + 2 };

static void
crc_body(const char *token, size_t n, char out[CRC_BODY_LEN])
{
	memcpy(out, "{\"response_token\":\"", 19);
	signature_of(&secret_key, token, n, out + 19, NULL);
	memcpy(out + 19 + SIGNATURE_LEN, "\"}", 2);
}

/* Answer a CRC: the HMAC of the crc_token under the consumer secret. */
static void
handle_crc(struct conn *c, const struct request *req, int keep, struct outcome *o)
{
	const char *q = memchr(req->target, '?', req->target_len);
	char token[MAX_CRC_TOKEN + 1], body[CRC_BODY_LEN];
	long n = -1;

	if (q != NULL)
		n = query_param(q + 1, req->target_len - req->path_len - 1, "crc_token", token, sizeof(token));
	if (n < 0) {
		send_error(c, req, S_BAD_REQUEST, "No crc_token", NULL, keep, o);
		return;
	}
	if (!crc_token_ok(token, (size_t)n)) {
		send_error(c, req, S_BAD_REQUEST,
		    "crc_token must be 1 to 255 characters of base64 or base64url", NULL, keep, o);
		return;
	}
	crc_body(token, (size_t)n, body);
	send_response(c, req, S_OK, "application/json", body, sizeof(body), NULL, keep);
	o->code = 200;
	o->out_bytes = req->method == M_HEAD ? 0 : sizeof(body);
}

/* One request answered (send_response gave its connection the credit):
 * its log line. */
static void
request_done(struct conn *c)
{
	metrics_request(c);
	access_log(c, &c->req, &c->o, c->start_us);
}

/* Answer an event POST with its verdict, and log it. */
static enum handled
event_answer(struct conn *c, enum status st, const char *why, int *linger)
{
	const struct request *req = &c->req;
	int keep = req->keep_alive && !is_stopping();

	c->o.sinks_us = c->ev.took_us;
	if (st == S_OK) {
		send_response(c, req, S_OK, NULL, "", 0, NULL, keep);
		c->o.code = 200;
	} else {
		/* After a framing error the rest of the stream means nothing,
		 * and a body refused part-way is still arriving: answer, then
		 * close. */
		int unread = c->o.sig == NULL;

		if (unread || st == S_REQUEST_TIMEOUT || st == S_HEADERS_TOO_LARGE) {
			keep = 0;
			*linger = 1;
		}
		send_error(c, req, st, why, st == S_UNAVAILABLE ? "Retry-After: 1\r\n" : NULL, keep, &c->o);
	}
	request_done(c);
	return keep ? H_KEEP : H_CLOSE;
}

#ifdef XWEBHOOK_TLS
/* --acme-http: /.well-known/acme-challenge/TOKEN answers the key
 * authorization while that challenge is pending (RFC 8555, 8.3), and
 * every other request gets a redirect to https://DOMAIN. */
static enum handled
handle_acme_http(struct conn *c, int *linger)
{
	static const char prefix[] = "/.well-known/acme-challenge/";
	const struct request *req = &c->req;
	struct outcome *o = &c->o;
	size_t pn = sizeof(prefix) - 1;
	int keep = req->keep_alive && !is_stopping();
	int challenge_path = req->path_len > pn && memcmp(req->target, prefix, pn) == 0;
	char ka[256];

	if (req->chunked || (req->has_length && req->content_length > 0)) {
		keep = 0;
		*linger = 1;
	}
	if (challenge_path && (req->method == M_GET || req->method == M_HEAD) &&
	    challenge_http(req->target + pn, req->path_len - pn, ka, sizeof(ka))) {
		send_response(c, req, S_OK, "application/octet-stream", ka, strlen(ka), NULL, keep);
		o->code = 200;
		o->out_bytes = req->method == M_HEAD ? 0 : strlen(ka);
	} else if (challenge_path) {
		send_error(c, req, S_NOT_FOUND, "no such challenge", NULL, keep, o);
	} else {
		struct buf loc = { 0 };

		buf_adds(&loc, "Location: https://");
		buf_adds(&loc, acme_domain);
		buf_add(&loc, req->target, req->target_len);  /* checked by the parser: no CR, LF or spaces */
		buf_adds(&loc, "\r\n");
		buf_addc(&loc, '\0');
		send_error(c, req, S_MOVED_PERMANENTLY, "this port answers ACME challenges: use https", loc.p, keep, o);
		buf_free(&loc);
	}
	request_done(c);
	return keep ? H_KEEP : H_CLOSE;
}
#endif

/* Answer the request in c->req, whose head is parsed. *linger is set when
 * the connection must close with unread bytes possibly in flight. */
static enum handled
handle_request(struct conn *c, int *linger)
{
	const struct request *req = &c->req;
	struct outcome *o = &c->o;
	size_t plen = strlen(webhook_path);
	int on_path = req->path_len == plen && memcmp(req->target, webhook_path, plen) == 0;
	int health = req->path_len == 8 && memcmp(req->target, "/healthz", 8) == 0;
	int has_body = req->chunked || (req->has_length && req->content_length > 0);
	int keep = req->keep_alive && !is_stopping();
	const char *why = NULL;

	memset(o, 0, sizeof(*o));
	c->pos = req->head_len;
	o->route = on_path && req->method == M_POST ? R_EVENT : on_path && (req->method == M_GET ||
	    req->method == M_HEAD) ? R_CRC : health ? R_HEALTHZ : R_OTHER;
#ifdef XWEBHOOK_TLS
	if (c->acme_http) {
		o->route = R_ACME_HTTP;
		return handle_acme_http(c, linger);
	}
#endif
	if (on_path && req->method == M_POST && req->signature != NULL &&
	    !(req->has_length && req->content_length > max_body)) {
		enum status st;

		if (req->expect_continue && has_body && c->in_len == req->head_len) {
			static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";

			if (c->tr->write(c, cont, sizeof(cont) - 1, now_ms() + write_timeout) < 0)
				return H_CLOSE;
		}
		st = read_body(c, req, &why);
		o->in_bytes = c->body.len;
		if (st == S_OK)
			st = event_check(c, req, &why);
		body_release(c);
		if (st == S_OK) {
			int on_loop = conn_state(c) == CS_LOOP;

			o->handed = 1;
			event_submit(c);
			if (on_loop) {
				c->expires = INT64_MAX;
				return H_PARKED;
			}
			event_wait(c);
			st = c->ev.result;
			why = c->ev.why;
		}
		return event_answer(c, st, why, linger);
	}

	/* Every other answer comes from the head alone. A body we do not
	 * need is not read: the answer goes out and the connection closes. */
	if (has_body) {
		keep = 0;
		*linger = 1;
	}
	if (on_path && req->method == M_POST) {
		if (req->signature == NULL) {
			o->sig = "missing";
			send_error(c, req, S_UNAUTHORIZED, "missing x-twitter-webhooks-signature header",
			    NULL, keep, o);
		} else {
			send_error(c, req, S_PAYLOAD_TOO_LARGE, "body larger than --max-body", NULL, 0, o);
			keep = 0;
		}
	} else if (on_path && (req->method == M_GET || req->method == M_HEAD)) {
		handle_crc(c, req, keep, o);
	} else if (on_path) {
		send_error(c, req, S_METHOD_NOT_ALLOWED, "method not allowed",
		    "Allow: GET, HEAD, POST\r\n", keep, o);
	} else if (health && (req->method == M_GET || req->method == M_HEAD)) {
		send_response(c, req, S_OK, "text/plain", "ok\n", 3, NULL, keep);
		o->code = 200;
		o->out_bytes = req->method == M_HEAD ? 0 : 3;
	} else if (health) {
		send_error(c, req, S_METHOD_NOT_ALLOWED, "method not allowed", "Allow: GET, HEAD\r\n",
		    keep, o);
	} else {
		send_error(c, req, S_NOT_FOUND, "not found", NULL, keep, o);
	}
	request_done(c);
	return keep ? H_KEEP : H_CLOSE;
}

/* The request is answered: keep what arrived after it (the next one), and
 * no large buffer for the idle time. */
static void
next_request(struct conn *c)
{
	memmove(c->in, c->in + c->pos, c->in_len - c->pos);
	c->in_len -= c->pos;
	c->pos = 0;
	if (c->pretty.cap > KEEP_BUFFER)
		buf_free(&c->pretty);
	if (c->compact.cap > KEEP_BUFFER)
		buf_free(&c->compact);
}

/* Serve requests on one connection until it ends. Returns whether the
 * close should linger. */
static int
serve_connection(struct conn *c)
{
	for (;;) {
		const char *why = NULL;
		enum status st = read_head(c, &c->req, &why);
		int linger = 0;

		c->start_us = now_us();
		if (st == S_INCOMPLETE)
			return 0;
		if (st != S_OK) {
			memset(&c->o, 0, sizeof(c->o));
			send_error(c, c->req.method_len > 0 ? &c->req : NULL, st, why, NULL, 0, &c->o);
			request_done(c);
			return 1;
		}
		if (handle_request(c, &linger) != H_KEEP)
			return linger;
		next_request(c);
	}
}

/* A loop answered a request: go on (V_IDLE), or what else. */
static enum verdict
loop_answered(struct conn *c, enum handled h, int linger)
{
	if (c->pending.len > 0 || c->unsent || linger) {
		if (h != H_KEEP)
			conn_enter(c, CS_LOOP, CS_FLUSHING);
		c->linger = linger;
		return V_THREAD;
	}
	if (h != H_KEEP)
		return V_CLOSE;
	next_request(c);
	return V_IDLE;
}

/* Answer every request already complete in c->in, without waiting for
 * anything: the event loop's fast path. Whatever would wait (a head or
 * body still arriving, a chunked body, Expect, a lingering close, an
 * answer the socket would not take) is left to a thread; an event goes
 * to the writer, and the connection is parked until its verdict. */
static enum verdict
serve_buffered(struct conn *c)
{
	while (skip_empty_lines(c), c->in_len > 0) {
		size_t scan = 0, line_end = 0, head_len = 0;
		struct request *req = &c->req;
		const char *why = NULL;
		enum status st = http_scan_head(c->in, c->in_len, &scan, &line_end, &head_len, &why);
		enum handled h;
		enum verdict v;
		int linger = 0;

		if (st == S_INCOMPLETE)
			return V_THREAD;
		if (st == S_OK)
			st = http_parse_head(c->in, head_len, req, &why);
		if (st != S_OK || req->chunked || req->expect_continue ||
		    (req->has_length && req->content_length > c->in_len - head_len))
			return V_THREAD;  /* the thread parses it again, and answers */
		c->first_us = c->start_us = now_us();
		h = handle_request(c, &linger);
		if (h == H_PARKED)
			return V_PARKED;
		if ((v = loop_answered(c, h, linger)) != V_IDLE)
			return v;
	}
	return V_IDLE;
}

/* ------------------------------------------------------------------------
 * [WRITER] The event writer: the one owner of every event sink (stdout,
 * --output).
 *
 * A connection verifies its event, renders it (indented for stdout, one
 * compact line for --output), queues it here and waits off the loops for
 * the verdict: a thread waits on a condition, a loop parks the connection
 * and goes on serving others until the writer hands the verdict back.
 * The writer takes every event waiting as one batch, in order:
 *   1. appends the batch to --output (not yet synced);
 *   2. gives it to stdout's queue and waits for stdout to take it, until
 *      SINK_TIMEOUT_S after the oldest event was verified;
 *   3. sends it to each --forward broker, and goes on to the next batch
 *      while their acknowledgements come (up to WRITER_INFLIGHT batches
 *      out at once, so a broker's round trip is not a pause);
 *   4. once every broker has acknowledged a batch, and every batch before
 *      it, fdatasyncs --output once for all of them (group commit);
 *   5. releases the verdicts: 200 for all, or the failure for all.
 * A failure at any step cuts --output back to where the failed batch
 * began (a broker's failure fails every batch out to it, so back to where
 * the oldest of those began): an event answered 5xx is not in that file
 * and X's resend is no duplicate there (a broker cannot be rolled back:
 * see "Brokers"). (stdout is no record: an event it took before a later
 * step failed, or that it took late, may show there twice.)
 *
 * stdout failing for good (EPIPE, EBADF, a full device): without --output,
 * every event gets 500 until it works again, since stdout is the only
 * sink; with --output, the file is the record, so stdout is let go with
 * one warning and events go on to the file alone. stdout merely not
 * reading (a paused pager, Ctrl-S) is no failure for good: events get 503
 * while it lasts, and X retries them.
 *
 * Calls [BROKERS] (forward_send, forward_wait, forward_replies) and hands
 * each verdict back to [LOOPS] or to the waiting thread.
 * ------------------------------------------------------------------------ */

static struct {
	pthread_mutex_t lock;
	pthread_cond_t work;      /* events were queued, or SIGHUP reopened --output */
	pthread_cond_t decided;   /* a batch has its verdict (for threads) */
	struct event *head, **tail;
	/* With --forward the writer waits in poll() on the brokers' sockets
	 * and this eventfd, which is written when polling is set. */
	int wake_fd;
	int polling;
} writer = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
	NULL, &writer.head, -1, 0 };

enum {
	MAX_FORWARDS = 4,         /* --forward brokers */
	WRITER_INFLIGHT = 4,      /* batches sent to the brokers, not yet acknowledged */
};

/* A batch written to --output (not yet synced) and stdout and sent to
 * every broker, waiting for their acknowledgements. The writer keeps
 * them in a ring, oldest first, and decides them in that order. */
struct batch {
	struct event *events;
	unsigned n;                     /* events in it */
	int64_t deadline;               /* its oldest event's, for every sink */
	off_t start;                    /* where it begins in --output, or -1 */
	unsigned acked[MAX_FORWARDS];   /* acknowledgements in, per broker */
	uint64_t first[MAX_FORWARDS];   /* NATS: its first event's reply number */
	int64_t sent_us;                /* monotonic: when it went to the brokers */
};

static struct {
	struct batch b[WRITER_INFLIGHT];
	unsigned head, n;
} inflight;

static struct batch *
inflight_at(unsigned i)
{
	return &inflight.b[(inflight.head + i) % WRITER_INFLIGHT];
}

static int forward_send(struct batch *b, const char **why);
static void forward_wait(int events_too);
static void forward_replies(void);
static void forward_forget(void);
static void forward_redial(void);

static struct conn *
event_conn(struct event *e)
{
	return (struct conn *)(void *)((char *)e - offsetof(struct conn, ev));
}

/* Under writer.lock: wake the writer, whichever way it waits. */
static void
writer_wake(void)
{
	uint64_t one = 1;

	pthread_cond_signal(&writer.work);
	if (writer.polling) {
		writer.polling = 0;
		if (write(writer.wake_fd, &one, sizeof(one)) < 0)
			(void)0;  /* EAGAIN: the counter is full, so it is woken */
	}
}

/* Hand the events first..*last (linked by next) to the writer. */
static void
writer_queue(struct event *first, struct event **last)
{
	pthread_mutex_lock(&writer.lock);
	*writer.tail = first;
	writer.tail = last;
	writer_wake();
	pthread_mutex_unlock(&writer.lock);
}


/* Queue c's rendered event for the writer. A loop gathers its events and
 * hands them over once per turn (loop_thread): a lock and a wake-up per
 * turn rather than per event. */
static void
event_submit(struct conn *c)
{
	c->ev.next = NULL;
	c->ev.verified_us = now_us();
	c->ev.verified = c->ev.verified_us / 1000;
	c->ev.result = S_INCOMPLETE;
	c->ev.why = NULL;
	metrics_handed();
	if (conn_state(c) == CS_LOOP) {
		conn_enter(c, CS_LOOP, CS_PARKED);
		loop_queue_event(c);
	} else {
		conn_enter(c, CS_THREAD, CS_WAITING);
		writer_queue(&c->ev, &c->ev.next);
	}
}

/* A connection's own thread waits for its event's verdict here. */
static void
event_wait(struct conn *c)
{
	pthread_mutex_lock(&writer.lock);
	while (c->ev.result == S_INCOMPLETE)
		pthread_cond_wait(&writer.decided, &writer.lock);
	pthread_mutex_unlock(&writer.lock);
	conn_enter(c, CS_WAITING, CS_THREAD);
}

/* Cut --output back to size after a batch failed, so that none of it
 * stays behind. */
static void
output_cut(off_t size)
{
	if (size >= 0 && ftruncate(output_fd, size) < 0)
		warn("cannot cut back --output %s after a failed write:", output_path);
}

/* Write one batch to --output (not yet synced) and stdout, noting in
 * *start where it begins in --output (-1 if it is no regular file): S_OK,
 * or the verdict for all of its events. */
static enum status
writer_write(struct event *batch, int64_t deadline, off_t *start, const char **why)
{
	static struct buf text = { NULL, 0, 0, 1, 0 }, lines = { NULL, 0, 0, 1, 0 };
	static int stdout_gone, stdout_stalled, unlinked_told;
	struct event *e;
	struct stat sb;
	int r;

	/* One huge batch need not keep its memory for all the small ones. */
	if (text.cap > STDOUT_QUEUE_LIMIT)
		buf_free(&text);
	if (lines.cap > STDOUT_QUEUE_LIMIT)
		buf_free(&lines);
	buf_clear(&text);
	buf_clear(&lines);
	for (e = batch; e != NULL; e = e->next) {
		struct conn *c = event_conn(e);

		if (!stdout_gone)
			buf_add(&text, c->pretty.p, c->pretty.len);
		if (output_fd >= 0)
			buf_add(&lines, c->compact.p, c->compact.len);
	}
	if (text.failed || lines.failed) {
		*why = "out of memory for the event; try again";
		return S_UNAVAILABLE;
	}
	if (output_fd >= 0) {
		if (fstat(output_fd, &sb) < 0) {
			warn("cannot append events to %s:", output_path);
			*why = "could not write the event to the --output file";
			return S_INTERNAL_ERROR;
		}
		if (S_ISREG(sb.st_mode))
			*start = sb.st_size;
		if (sb.st_nlink == 0 && S_ISREG(sb.st_mode) && !unlinked_told) {
			warn("warning: --output %s was deleted while open; events go on to the deleted "
			    "file until SIGHUP reopens the path", output_path);
			unlinked_told = 1;
		} else if (sb.st_nlink > 0) {
			unlinked_told = 0;
		}
		if (write_all(output_fd, lines.p, lines.len) < 0) {
			warn("cannot append events to %s:", output_path);
			output_cut(*start);
			*why = "could not write the event to the --output file";
			return S_INTERNAL_ERROR;
		}
	}
	if (!stdout_gone) {
		if (stdout_direct)
			r = write_all(STDOUT_FILENO, text.p, text.len);
		else
			r = outq_write(&stdout_queue, text.p, text.len, deadline);
		if (r == -2) {
			if (!stdout_stalled)
				warn("stdout has taken no event for %d s (is its reader paused?): "
				    "events get 503 until it does", SINK_TIMEOUT_S);
			stdout_stalled = 1;
			output_cut(*start);
			*why = "stdout did not take the event within " STR(SINK_TIMEOUT_S) " s";
			return S_UNAVAILABLE;
		}
		if (r == 0 && stdout_stalled) {
			warn("stdout takes events again");
			stdout_stalled = 0;
		}
		if (r < 0 && output_fd >= 0) {
			warn("stdout failed (%s): events go on to --output %s alone", strerror(errno),
			    output_path);
			stdout_gone = 1;
		} else if (r < 0) {
			warn("cannot write events to stdout:");
			*why = "could not write the event to stdout";
			return S_INTERNAL_ERROR;
		}
	}
	return S_OK;
}

/* Give every event of batch its verdict. A loop's connection goes back to
 * its loop; a thread's result is set under the lock it waits with. */
static void
writer_decide(struct event *batch, enum status st, const char *why)
{
	int64_t now = now_us();
	struct event *e, *next;
	struct conn *first[MAX_LOOPS] = { NULL }, **last[MAX_LOOPS];
	unsigned i;

	for (i = 0; i < MAX_LOOPS; i++)
		last[i] = &first[i];
	pthread_mutex_lock(&writer.lock);
	for (e = batch; e != NULL; e = next) {
		struct conn *c = event_conn(e);

		next = e->next;
		e->why = why;
		e->took_us = now - e->verified_us;
		e->result = st;
		metrics_decided(st);
		if (conn_parked(c)) {  /* else CS_WAITING, on its thread */
			i = (unsigned)(c->loop - loops);
			c->finished = NULL;
			*last[i] = c;
			last[i] = &c->finished;
		}
	}
	loops_give_decided(first, last);
	pthread_cond_broadcast(&writer.decided);
	pthread_mutex_unlock(&writer.lock);
}

/* Fail every batch in flight, oldest first, and cut --output back to
 * where the oldest began. */
static void
inflight_fail(enum status st, const char *why)
{
	if (inflight.n == 0)
		return;
	forward_forget();
	output_cut(inflight_at(0)->start);
	for (; inflight.n > 0; inflight.n--) {
		writer_decide(inflight_at(0)->events, st, why);
		inflight.head = (inflight.head + 1) % WRITER_INFLIGHT;
	}
}

/* Decide the oldest batches that every broker has acknowledged, after one
 * fdatasync of --output for all of them. */
static void
inflight_release(void)
{
	unsigned k, i;

	for (k = 0; k < inflight.n; k++) {
		struct batch *b = inflight_at(k);

		for (i = 0; i < nforwards && b->acked[i] == b->n; i++)
			;
		if (i < nforwards)
			break;
	}
	if (k == 0)
		return;
	if (output_fd >= 0 && fdatasync(output_fd) < 0) {
		warn("cannot sync %s:", output_path);
		inflight_fail(S_INTERNAL_ERROR, "could not write the event to the --output file");
		return;
	}
	for (; k > 0; k--, inflight.n--) {
		writer_decide(inflight_at(0)->events, S_OK, NULL);
		inflight.head = (inflight.head + 1) % WRITER_INFLIGHT;
	}
}

/* Write batch to the sinks and send it to the brokers: it is in flight,
 * or decided already if a sink failed. */
static void
writer_send(struct event *batch)
{
	struct batch *b = inflight_at(inflight.n);
	const char *why = NULL;
	struct event *e;
	enum status st;

	memset(b, 0, sizeof(*b));
	b->events = batch;
	b->deadline = batch->verified + sink_timeout;
	b->start = -1;
	for (e = batch; e != NULL; e = e->next)
		b->n++;
	st = writer_write(batch, b->deadline, &b->start, &why);
	if (st != S_OK) {
		writer_decide(batch, st, why);
		return;
	}
	inflight.n++;
	b->sent_us = now_us();
	if (nforwards > 0 && forward_send(b, &why) < 0)
		inflight_fail(S_UNAVAILABLE, why);
}

static void *
writer_thread(void *arg)
{
	(void)arg;
	thread_name("xwh-writer");
	metrics_thread_take();
	for (;;) {
		struct event *batch = NULL;
		int reopen, take, fd;

		atomic_store(&writer_beat, now_ms());
		pthread_mutex_lock(&writer.lock);
		reopen = atomic_load(&output_reopened) >= 0;
		while (nforwards == 0 && writer.head == NULL && !reopen) {
			/* Awake every HEARTBEAT_MS, idle or not: the watchdog. */
			struct timespec until = deadline_ts(now_ms() + HEARTBEAT_MS);

			(void)pthread_cond_timedwait(&writer.work, &writer.lock, &until);
			atomic_store(&writer_beat, now_ms());
			reopen = atomic_load(&output_reopened) >= 0;
		}
		/* A reopened --output is taken up with nothing in flight:
		 * their offsets are the old file's. */
		take = inflight.n < WRITER_INFLIGHT && !(reopen && inflight.n > 0);
		if (take) {
			batch = writer.head;
			writer.head = NULL;
			writer.tail = &writer.head;
			writer.polling = batch == NULL && nforwards > 0;
		}
		pthread_mutex_unlock(&writer.lock);
		if (inflight.n == 0 && (fd = atomic_exchange(&output_reopened, -1)) >= 0) {
			close(output_fd);
			output_fd = fd;
		}
		if (nforwards > 0) {
			if (batch == NULL)
				forward_wait(take);
			forward_replies();
			if (batch == NULL)
				forward_redial();
		}
		if (batch != NULL)
			writer_send(batch);
		inflight_release();
	}
	return NULL;
}

/* SIGHUP reopened --output as fd: the writer takes it up between batches
 * (and closes an earlier SIGHUP's it had not yet taken up). */
static void
writer_reopened(int fd)
{
	int old;

	if ((old = atomic_exchange(&output_reopened, fd)) >= 0)
		close(old);
	pthread_mutex_lock(&writer.lock);
	writer_wake();
	pthread_mutex_unlock(&writer.lock);
}

/* Is stdout a regular file or /dev/null? Then nothing reads it to fall
 * behind, and the writer writes it itself (a thread hop less per batch):
 * a disk that hangs is --output's case. A pipe, terminal or socket has a
 * reader that may stall, and goes through stdout_queue. */
static int
stdout_never_waits(void)
{
	struct stat st, null;

	if (fstat(STDOUT_FILENO, &st) < 0)
		return 0;
	if (S_ISREG(st.st_mode))
		return 1;
	return S_ISCHR(st.st_mode) && stat("/dev/null", &null) == 0 && S_ISCHR(null.st_mode) &&
	    st.st_rdev == null.st_rdev;
}

static void
writer_start(void)
{
	pthread_t t;
	pthread_attr_t a;

	writer.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (writer.wake_fd < 0)
		die("cannot make the event writer's eventfd:");
	cond_init_monotonic(&writer.work);  /* its waits have deadlines now */
	atomic_store(&writer_beat, now_ms());
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&t, &a, writer_thread, NULL) != 0)
		die("cannot start the event writer");
	pthread_attr_destroy(&a);
}

/* ------------------------------------------------------------------------
 * [BROKERS] Brokers (--forward): Redis Streams and NATS JetStream, more
 * sinks of the event writer. A batch goes out on one connection per broker
 * (the client's plain transport): pipelined XADDs to Redis, back-to-back
 * JetStream publishes to NATS, and is taken when every event has its own
 * acknowledgement: an entry id (MS-SEQ) for each XADD, a PubAck that names
 * the stream and a seq on each publish's own reply subject. A null reply,
 * an error or another stream's PubAck fails the batch; a second PubAck for
 * one publish counts for nothing. The writer does not wait for them before
 * it sends the next batch: up to WRITER_INFLIGHT batches are out at once,
 * and the replies are matched to them in order (Redis answers in order; a
 * PubAck names its event by the reply subject's number). A broker that
 * fails fails every batch out to it; one that is down makes POSTs 503 (X
 * retries) and is dialled again with a backoff; CRCs never wait on it. No
 * client library: RESP and the NATS protocol are a few lines of text
 * framing each.
 *
 * The writer waits in poll() on the brokers' sockets, so it answers
 * NATS's PINGs when they come (an unanswered server drops us as stale)
 * and notices at once a connection the broker closed, so that the next
 * event is not the one that finds out.
 *
 * Calls [OUT] (dial, struct client) and [JSON]'s reader.
 * ------------------------------------------------------------------------ */

enum {
	FORWARD_CONNECT_MS = 2000,    /* dialling, AUTH and JetStream's answer at start */
	FORWARD_BACKOFF_MIN_MS = 100,
	FORWARD_BACKOFF_MAX_MS = 5000,
	/* A reply line from Redis (an entry id, an error) longer than
	 * this is no reply of the kind we ask for. */
	RESP_MAX_LINE = 1024,
	/* An entry id, MS-SEQ: two 64-bit numbers of up to 20 digits. */
	RESP_MAX_ENTRY_ID = 20 + 1 + 20,
	/* NATS: the longest protocol line (INFO can list a cluster's
	 * URLs) and the largest reply we take (a PubAck, an API answer). */
	NATS_MAX_LINE = 64 * 1024,
	NATS_MAX_REPLY = 64 * 1024,
	/* What a publish's headers take of the server's max_payload. */
	NATS_HEADERS = sizeof("NATS/1.0\r\nNats-Msg-Id: \r\n\r\n") - 1 + 64,
	/* Redis's dedupe window (?dedupe=SECONDS): X retries a delivery
	 * for a few minutes; ten cover that with room. A day is the most
	 * we take (each key lives that long in Redis's memory). */
	REDIS_DEDUPE_DEFAULT_S = 600,
	REDIS_DEDUPE_MAX_S = 86400,
	/* The most streams JetStream may name for a {type} subject that we
	 * ask about in turn, looking for one that captures every type. */
	NATS_MAX_CANDIDATES = 16,
	/* A stream's or subject's name with {type} replaced. */
	FORWARD_KEY_MAX = 256 + EVENT_TYPE_MAX,
	/* redis_replies: Redis has lost the dedupe script. */
	REDIS_NOSCRIPT = -4,
};

/* Redis with ?dedupe: one event's XADD and its dedupe key, as one atomic
 * step across every instance sharing the Redis. KEYS[1] the stream,
 * KEYS[2] the dedupe key; ARGV the event, its SHA-256, the window in
 * seconds, and MAXLEN's N or "". The key is set after the XADD, not
 * before: an XADD that fails (the key holds no stream) raises and leaves
 * no key behind that would make X's retry of it a duplicate. Replies: the
 * entry id, or the status "duplicate". */
static const char redis_script[] =
    "if redis.call('EXISTS', KEYS[2]) == 1 then return redis.status_reply('duplicate') end\n"
    "local id\n"
    "if ARGV[4] == '' then\n"
    "  id = redis.call('XADD', KEYS[1], '*', 'event', ARGV[1], 'sha256', ARGV[2])\n"
    "else\n"
    "  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'event', ARGV[1], 'sha256', ARGV[2])\n"
    "end\n"
    "redis.call('SET', KEYS[2], id, 'NX', 'EX', ARGV[3])\n"
    "return id\n";

enum forward_kind { FORWARD_REDIS, FORWARD_NATS };

struct forward {
	enum forward_kind kind;
	char shown[600];          /* the URL without its password or token */
	char host[256], port[8];
	char user[128], password[256];  /* a NATS token is a password with no user */
	char key[256];            /* the Redis stream, or the NATS subject; {type} in it once at most */
	char maxlen[24];          /* Redis: ?maxlen=N, the entries the stream keeps, or "" */
	char dedupe[12];          /* Redis: ?dedupe=SECONDS, the window; "" with dedupe=0 */
	char script_sha[41];      /* Redis: redis_script's SHA-1, hex, for EVALSHA */
	int reloaded;             /* Redis: the script was loaded again, and no reply has come since */
	struct client cl;
	int up;
	atomic_int connected;     /* up, for --metrics (which reads it from its own thread) */
	int64_t retry_at, backoff;
	struct buf out, in;       /* commands, and replies not yet parsed */
	unsigned skip;            /* Redis: replies still owed to failed batches */
	/* NATS only. */
	size_t used;              /* bytes of in the last nats_read returned */
	char inbox[48];           /* _INBOX.<random>: where PubAcks come */
	uint64_t seq;             /* the last reply subject's number */
	struct buf got;           /* a byte per publish from got_from on: 1 once its PubAck is taken */
	uint64_t got_from;
	size_t max_payload;       /* from the server's INFO */
	char stream[128];         /* the JetStream stream that captures key */
};

static struct forward forwards[MAX_FORWARDS];

/* A NATS subject we publish to: dot-separated tokens of visible ASCII,
 * none empty, no wildcard. */
static int
nats_subject_ok(const char *s)
{
	size_t i, token = 0;

	for (i = 0; s[i] != '\0'; i++) {
		if (s[i] == '.') {
			if (token == 0)
				return 0;
			token = 0;
			continue;
		}
		if (s[i] <= ' ' || s[i] > '~' || s[i] == '*' || s[i] == '>')
			return 0;
		token++;
	}
	return token > 0;
}

/* A redis:// URL's parameters after its '?', p to its end, into f:
 * maxlen=N, how many entries each XADD trims the stream to (MAXLEN ~ N),
 * a positive number; dedupe=SECONDS, the window in which an event's
 * resend is not added again (0: off). 0, or -1 with *why. */
static int
redis_params(const char *p, struct forward *f, const char **why)
{
	while (*p != '\0') {
		size_t pn = strcspn(p, "&"), vn;
		const char *v = memchr(p, '=', pn);

		vn = v != NULL ? (size_t)(p + pn - v - 1) : 0;
		if (v != NULL && v - p == 6 && memcmp(p, "maxlen", 6) == 0) {
			if (vn == 0 || vn > 12 || strspn(v + 1, "0123456789") < vn || strspn(v + 1, "0") >= vn) {
				*why = "?maxlen= takes a number of entries, 1 to 999999999999";
				return -1;
			}
			memcpy(f->maxlen, v + 1, vn);
			f->maxlen[vn] = '\0';
		} else if (v != NULL && v - p == 6 && memcmp(p, "dedupe", 6) == 0) {
			long secs = 0;
			size_t k;

			for (k = 0; k < vn && secs <= REDIS_DEDUPE_MAX_S; k++)
				secs = isdigit((unsigned char)v[1 + k]) ? secs * 10 + (v[1 + k] - '0') :
				    REDIS_DEDUPE_MAX_S + 1;
			if (vn == 0 || secs > REDIS_DEDUPE_MAX_S) {
				*why = "?dedupe= takes the window in seconds, 0 (off) to 86400";
				return -1;
			}
			if (secs == 0)
				f->dedupe[0] = '\0';
			else
				snprintf(f->dedupe, sizeof(f->dedupe), "%u", (unsigned)secs);
		} else {
			*why = "unknown parameter (a redis:// URL takes ?maxlen=N and ?dedupe=SECONDS, joined by &)";
			return -1;
		}
		p += pn;
		if (*p == '&' && *++p == '\0') {
			*why = "a redis:// URL's parameters end with an empty one";
			return -1;
		}
	}
	return 0;
}

/* Check f->key, a stream's or subject's name in which "{type}" may stand
 * once for each event's type (event_type: [a-z0-9_.], or "other"). A
 * NATS subject is dot-separated names without wildcards, and {type}, as
 * a type can hold dots (post.create), can only be its last name: then one
 * wildcard, '>', stands for every type. 0, or -1 with *why. */
static int
forward_key_check(const struct forward *f, const char **why)
{
	const char *t = strstr(f->key, "{type}");
	char sample[sizeof(f->key)];
	size_t at;

	if (t != NULL && strstr(t + 1, "{type}") != NULL) {
		*why = "{type} can stand once in the stream's or subject's name";
		return -1;
	}
	if (f->kind != FORWARD_NATS)
		return 0;
	at = t != NULL ? (size_t)(t - f->key) : strlen(f->key);
	if (t != NULL && (t[6] != '\0' || (at > 0 && t[-1] != '.'))) {
		*why = "{type} can only be a NATS subject's last name (x.events.{type}): a type can hold dots";
		return -1;
	}
	snprintf(sample, sizeof(sample), "%.*s%s", (int)at, f->key, t != NULL ? "other" : "");
	if (!nats_subject_ok(sample)) {
		*why = "a NATS subject to publish on is dot-separated names, without wildcards";
		return -1;
	}
	return 0;
}

/* The stream (Redis) or subject (NATS) for the event of type, into out:
 * f->key with {type} replaced. */
static void
forward_key(const struct forward *f, const char *type, char *out, size_t on)
{
	const char *t = strstr(f->key, "{type}");

	if (t == NULL)
		snprintf(out, on, "%s", f->key);
	else
		snprintf(out, on, "%.*s%s%s", (int)(t - f->key), f->key, type, t + 6);
}

/* Parse redis://[[USER]:PASSWORD@]HOST:PORT/STREAM[?maxlen=N&dedupe=S] or
 * nats://[TOKEN@|USER:PASSWORD@]HOST:PORT/SUBJECT into f: 0, or -1 with
 * *why. */
static int
forward_parse(const char *url, struct forward *f, const char **why)
{
	const char *a, *slash, *colon, *name;
	struct authority au;
	size_t n;

	memset(f, 0, sizeof(*f));
	*why = "expected redis://[:PASSWORD@]HOST:PORT/STREAM or nats://[TOKEN@]HOST:PORT/SUBJECT";
	if (strncmp(url, "redis://", 8) == 0) {
		f->kind = FORWARD_REDIS;
	} else if (strncmp(url, "nats://", 7) == 0) {
		f->kind = FORWARD_NATS;
	} else {
		if (strstr(url, "://") != NULL)
			*why = "unknown scheme (redis:// and nats:// are what xwebhook speaks)";
		return -1;
	}
	name = f->kind == FORWARD_REDIS ? "redis" : "nats";
	a = strstr(url, "://") + 3;
	slash = strchr(a, '/');
	if (slash == NULL || slash[1] == '\0')
		return -1;
	if (url_authority(a, "/", &au, why) < 0)
		return -1;
	if (au.userinfo != NULL) {
		const char *at = au.userinfo + au.userinfo_len;

		*why = "expected redis://[:PASSWORD@]HOST:PORT/STREAM or nats://[TOKEN@]HOST:PORT/SUBJECT";
		colon = memchr(a, ':', au.userinfo_len);
		if (colon == NULL && f->kind == FORWARD_NATS)
			colon = a - 1;  /* TOKEN@: a password with no user */
		if (colon == NULL || colon - a + 1 > (ptrdiff_t)sizeof(f->user) ||
		    (size_t)(at - colon - 1) >= sizeof(f->password) || at == colon + 1)
			return -1;
		if (colon >= a)
			memcpy(f->user, a, (size_t)(colon - a));
		memcpy(f->password, colon + 1, (size_t)(at - colon - 1));
	}
	memcpy(f->host, au.host, sizeof(f->host));
	memcpy(f->port, au.port, sizeof(f->port));
	if (f->host[0] == '\0' || f->port[0] == '\0') {
		*why = f->kind == FORWARD_REDIS ? "expected redis://[:PASSWORD@]HOST:PORT/STREAM, with the port" :
		    "expected nats://[TOKEN@]HOST:PORT/SUBJECT, with the port";
		return -1;
	}
	n = strlen(slash + 1);
	if (f->kind == FORWARD_REDIS)
		snprintf(f->dedupe, sizeof(f->dedupe), "%d", (int)REDIS_DEDUPE_DEFAULT_S);
	if (f->kind == FORWARD_REDIS && memchr(slash + 1, '?', n) != NULL) {
		const char *q = memchr(slash + 1, '?', n);

		if (redis_params(q + 1, f, why) < 0)
			return -1;
		n = (size_t)(q - slash - 1);
		if (n == 0) {
			*why = "the stream's name is missing before the ?";
			return -1;
		}
	}
	if (n >= sizeof(f->key) || strcspn(slash + 1, " \t\r\n") < n) {
		*why = "the stream's or subject's name is too long or holds whitespace";
		return -1;
	}
	memcpy(f->key, slash + 1, n);
	if (forward_key_check(f, why) < 0)
		return -1;
	{
		char host[HOST_PORT_MAX], shown[sizeof(f->shown)];

		/* (Through shown: gcc's -Wrestrict takes f->key for f->shown
		 * once this is inlined into main.) */
		(void)host_port_format(host, sizeof(host), f->host, f->port, NULL);
		snprintf(shown, sizeof(shown), "%s://%s/%s%s%s", name, host, f->key, f->maxlen[0] ? "?maxlen=" : "",
		    f->maxlen);
		memcpy(f->shown, shown, sizeof(shown));
	}
	if (f->dedupe[0] != '\0') {
		struct digest d;
		unsigned char h[20];

		sha1_init(&d);
		digest_update(&d, redis_script, sizeof(redis_script) - 1);
		digest_final(&d, h);
		hex_encode(h, sizeof(h), f->script_sha);
	}
	f->backoff = FORWARD_BACKOFF_MIN_MS;
	return 0;
}

/* A broker's words, for a log line: at most 160 bytes, escaped. */
static void
forward_quote(char *to, size_t tn, const char *p, size_t n)
{
	struct buf e = { 0 };

	log_escape(&e, p, n < 160 ? n : 160);
	buf_addc(&e, '\0');
	snprintf(to, tn, "%s%s", e.p, n > 160 ? "..." : "");
	buf_free(&e);
}

/* Read more of f's replies into f->in, by deadline: 0, or -1 with why. */
static int
forward_fill(struct forward *f, int64_t deadline, char *why, size_t wn)
{
	ssize_t r;

	buf_reserve(&f->in, 4096);
	if (f->in.failed) {
		snprintf(why, wn, "out of memory");
		return -1;
	}
	r = f->cl.c.tr->read(&f->cl.c, f->in.p + f->in.len, f->in.cap - f->in.len, deadline, -1);
	if (r <= 0) {
		snprintf(why, wn, r == IO_TIMEOUT ? "no reply in time" : "the connection ended");
		return r == IO_TIMEOUT ? IO_TIMEOUT : -1;
	}
	f->in.len += (size_t)r;
	return 0;
}

/* Close f's connection and wait a little longer before the next try. */
static void
forward_down(struct forward *f)
{
	client_close(&f->cl);
	f->up = 0;
	atomic_store_explicit(&f->connected, 0, memory_order_relaxed);
	f->in.len = 0;
	f->used = 0;
	f->skip = 0;
	f->retry_at = now_ms() + f->backoff;
	f->backoff = f->backoff * 2 > FORWARD_BACKOFF_MAX_MS ? FORWARD_BACKOFF_MAX_MS : f->backoff * 2;
}

/* ---- Redis ---- */

/* Append one RESP bulk string. */
static void
resp_bulk(struct buf *b, const char *p, size_t n)
{
	char head[32], *h = head + sizeof(head);
	size_t k = n;

	/* By hand, not snprintf: this runs seven times an event. */
	*--h = '\n';
	*--h = '\r';
	do
		*--h = (char)('0' + k % 10);
	while ((k /= 10) > 0);
	*--h = '$';
	buf_add(b, h, (size_t)(head + sizeof(head) - h));
	buf_add(b, p, n);
	buf_add(b, "\r\n", 2);
}

/* Read one reply by deadline: its first byte ('+', '-', ':' or '$'),
 * with its line (or bulk string; a null one is empty) in text and its
 * length in *len; IO_TIMEOUT; or -1 on an I/O or framing error, with a
 * reason in text. */
static int
resp_reply(struct forward *f, int64_t deadline, char *text, size_t tn, size_t *len)
{
	int r;

	for (;;) {
		char *eol = f->in.len > 0 ? memchr(f->in.p, '\n', f->in.len) : NULL;

		if (eol != NULL) {
			size_t line = (size_t)(eol - f->in.p) + 1, used = line;
			char type = f->in.p[0];
			const char *v = f->in.p + 1;
			size_t vn = line - 3;

			if (line < 3 || eol[-1] != '\r' || strchr("+-:$", type) == NULL) {
				snprintf(text, tn, "not a RESP reply");
				return -1;
			}
			if (type == '$') {
				long len = 0;
				size_t k;

				/* The length, read within the line (not NUL-ended). */
				if (vn == 2 && v[0] == '-' && v[1] == '1')
					len = -1;
				for (k = 0; len >= 0 && k < vn && len <= RESP_MAX_LINE; k++)
					len = isdigit((unsigned char)v[k]) ? len * 10 + (v[k] - '0') : RESP_MAX_LINE + 1;
				if (vn == 0 || len > RESP_MAX_LINE) {
					snprintf(text, tn, "a reply of an unexpected size");
					return -1;
				}
				if (len < 0) {
					vn = 0;
				} else if (f->in.len < line + (size_t)len + 2) {
					goto more;  /* the string is still coming */
				} else if (f->in.p[line + (size_t)len] != '\r' || f->in.p[line + (size_t)len + 1] != '\n') {
					snprintf(text, tn, "a bulk string longer than its length says");
					return -1;
				} else {
					v = f->in.p + line;
					vn = (size_t)len;
					used = line + (size_t)len + 2;
				}
			}
			*len = vn < tn ? vn : tn - 1;
			memcpy(text, v, *len);  /* as it came, a NUL in it too */
			text[*len] = '\0';
			memmove(f->in.p, f->in.p + used, f->in.len - used);
			f->in.len -= used;
			return type;
		}
		if (f->in.len > RESP_MAX_LINE) {
			snprintf(text, tn, "a reply line longer than %d bytes", RESP_MAX_LINE);
			return -1;
		}
more:
		if ((r = forward_fill(f, deadline, text, tn)) < 0)
			return r;  /* IO_TIMEOUT, or -1 */
	}
}

/* Send what is in f->out and read one reply to each of n commands, in
 * order; every one must be of the type want. 0, or -1 with why. */
static int
redis_exchange(struct forward *f, unsigned n, char want, int64_t deadline, char *why, size_t wn)
{
	char text[RESP_MAX_LINE + 1];
	size_t tl;
	unsigned i;

	if (f->cl.c.tr->write(&f->cl.c, f->out.p, f->out.len, deadline) < 0) {
		snprintf(why, wn, "cannot send to it");
		return -1;
	}
	for (i = 0; i < n; i++) {
		int t = resp_reply(f, deadline, text, sizeof(text), &tl);

		if (t < 0) {
			snprintf(why, wn, "%.200s", text);
			return -1;
		}
		if (t != want) {
			char shown[200];

			forward_quote(shown, sizeof(shown), text, tl);
			snprintf(why, wn, "Redis answered: %s", shown);
			return -1;
		}
	}
	return 0;
}

/* SCRIPT LOAD the dedupe script, which Redis must name by the SHA-1 we
 * send EVALSHA with: 0, or -1 with why. */
static int
redis_load_script(struct forward *f, int64_t deadline, char *why, size_t wn)
{
	char text[RESP_MAX_LINE + 1], shown[200];
	size_t tl;
	int t;

	buf_adds(&f->out, "*3\r\n");
	resp_bulk(&f->out, "SCRIPT", 6);
	resp_bulk(&f->out, "LOAD", 4);
	resp_bulk(&f->out, redis_script, sizeof(redis_script) - 1);
	if (f->cl.c.tr->write(&f->cl.c, f->out.p, f->out.len, deadline) < 0) {
		snprintf(why, wn, "cannot send to it");
		return -1;
	}
	buf_clear(&f->out);
	if ((t = resp_reply(f, deadline, text, sizeof(text), &tl)) < 0) {
		snprintf(why, wn, "%.200s", text);
		return -1;
	}
	if (t != '$' || tl != 40 || memcmp(text, f->script_sha, 40) != 0) {
		forward_quote(shown, sizeof(shown), text, tl);
		snprintf(why, wn, "Redis did not load the dedupe script (?dedupe=0 goes without): %c%s", t, shown);
		return -1;
	}
	return 0;
}

/* Authenticate and PING a fresh connection. */
static int
redis_open(struct forward *f, int64_t deadline, char *why, size_t wn)
{
	unsigned n = 1;

	if (f->password[0] != '\0') {
		buf_adds(&f->out, f->user[0] ? "*3\r\n" : "*2\r\n");
		resp_bulk(&f->out, "AUTH", 4);
		if (f->user[0])
			resp_bulk(&f->out, f->user, strlen(f->user));
		resp_bulk(&f->out, f->password, strlen(f->password));
		n++;
	}
	buf_adds(&f->out, "*1\r\n");
	resp_bulk(&f->out, "PING", 4);
	if (redis_exchange(f, n, '+', deadline, why, wn) < 0)
		return -1;
	explicit_bzero(f->out.p, f->out.len);  /* it held the password */
	buf_clear(&f->out);
	return f->dedupe[0] != '\0' ? redis_load_script(f, deadline, why, wn) : 0;
}

/* The batch's XADDs, pipelined, into f->out: with ?dedupe each through
 * the script, EVALSHA, its dedupe key the stream's name, ":sha256:" and
 * the body's hash (the stream's own: two streams' keys never meet). */
static void
redis_batch(struct forward *f, const struct batch *b)
{
	struct event *e;

	for (e = b->events; e != NULL; e = e->next) {
		struct conn *c = event_conn(e);
		char key[FORWARD_KEY_MAX], dkey[FORWARD_KEY_MAX + 80];

		forward_key(f, c->type, key, sizeof(key));
		if (f->dedupe[0] != '\0') {
			snprintf(dkey, sizeof(dkey), "%s:sha256:%s", key, c->body_sha);
			buf_adds(&f->out, "*9\r\n");
			resp_bulk(&f->out, "EVALSHA", 7);
			resp_bulk(&f->out, f->script_sha, 40);
			resp_bulk(&f->out, "2", 1);
			resp_bulk(&f->out, key, strlen(key));
			resp_bulk(&f->out, dkey, strlen(dkey));
			resp_bulk(&f->out, c->compact.p, c->compact.len - 1);  /* without its newline */
			resp_bulk(&f->out, c->body_sha, 64);
			resp_bulk(&f->out, f->dedupe, strlen(f->dedupe));
			resp_bulk(&f->out, f->maxlen, strlen(f->maxlen));
			continue;
		}
		buf_adds(&f->out, f->maxlen[0] ? "*10\r\n" : "*7\r\n");
		resp_bulk(&f->out, "XADD", 4);
		resp_bulk(&f->out, key, strlen(key));
		if (f->maxlen[0]) {
			resp_bulk(&f->out, "MAXLEN", 6);
			resp_bulk(&f->out, "~", 1);
			resp_bulk(&f->out, f->maxlen, strlen(f->maxlen));
		}
		resp_bulk(&f->out, "*", 1);
		resp_bulk(&f->out, "event", 5);
		resp_bulk(&f->out, c->compact.p, c->compact.len - 1);  /* without its newline */
		resp_bulk(&f->out, "sha256", 6);
		resp_bulk(&f->out, c->body_sha, 64);
	}
}

/* Broker i acknowledged one more event of b; the whole batch, and how
 * long that took is the broker's acknowledgement latency. */
static void
forward_acked(struct batch *b, unsigned i)
{
	if (++b->acked[i] == b->n)
		metrics_broker_ack(i, now_us() - b->sent_us);
}

/* The batch in flight that is owed broker i's next reply in order, or NULL. */
static struct batch *
forward_owed(unsigned i)
{
	unsigned k;

	for (k = 0; k < inflight.n; k++)
		if (inflight_at(k)->acked[i] < inflight_at(k)->n)
			return inflight_at(k);
	return NULL;
}

/* Is s[0, n) a stream entry id, MS-SEQ (digits, a dash, digits)? Only
 * that reply says XADD stored the entry: a null reply ($-1, which a
 * stand-in or a proxy may give), any other string, an integer or an
 * error does not. */
static int
resp_entry_id(const char *s, size_t n)
{
	size_t k, dash = 0;

	for (k = 0; k < n; k++) {
		if (s[k] == '-' && dash == 0 && k > 0)
			dash = k;
		else if (!isdigit((unsigned char)s[k]))
			return 0;
	}
	/* 0-0 is the one id no stream can hold (XADD refuses it). */
	if (n == 3 && s[0] == '0' && s[2] == '0')
		return 0;
	return dash > 0 && dash + 1 < n && n <= RESP_MAX_ENTRY_ID;
}

/* Take every reply Redis has sent, without waiting: each must be an entry
 * id (or, with ?dedupe, the script's "duplicate": stored before), for the
 * oldest event that has none yet. 0; REDIS_NOSCRIPT when Redis has lost
 * the script (restarted, SCRIPT FLUSH) and ran none of it; or -1 with
 * why. */
static int
redis_replies(struct forward *f, unsigned i, char *why, size_t wn)
{
	char text[RESP_MAX_LINE + 1], shown[200];
	size_t tl;

	for (;;) {
		int t = resp_reply(f, now_ms(), text, sizeof(text), &tl);
		struct batch *b;

		if (t == IO_TIMEOUT)
			return 0;
		if (t < 0) {
			snprintf(why, wn, "%.200s", text);
			return -1;
		}
		if (f->skip > 0) {
			f->skip--;  /* a failed batch's */
			continue;
		}
		if (t == '-' && f->dedupe[0] != '\0' && strncmp(text, "NOSCRIPT", 8) == 0 &&
		    forward_owed(i) != NULL) {
			snprintf(why, wn, "Redis lost the dedupe script again as soon as it was loaded");
			return f->reloaded ? -1 : REDIS_NOSCRIPT;
		}
		b = forward_owed(i);
		if (b != NULL && t == '+' && f->dedupe[0] != '\0' && tl == 9 && memcmp(text, "duplicate", 9) == 0) {
			forward_acked(b, i);  /* stored before, by us or by another instance */
			f->reloaded = 0;
			continue;
		}
		if (b == NULL || t != '$' || !resp_entry_id(text, tl)) {
			forward_quote(shown, sizeof(shown), text, tl);
			snprintf(why, wn, "Redis %s: %c%s", b == NULL ? "said what was not asked" :
			    t == '$' ? "answered no entry id" : "answered", t, tl == 0 && t == '$' ? "(null or empty)" :
			    shown);
			return -1;
		}
		forward_acked(b, i);
		f->reloaded = 0;
	}
}

/* ---- NATS ---- */

enum nats_op { NATS_INFO, NATS_MSG, NATS_PING, NATS_PONG, NATS_OK, NATS_ERR };

/* One message or line from a NATS server. Pointers are into f->in and
 * good until the next nats_read. */
struct nats_msg {
	const char *args;         /* the rest of the control line (INFO's JSON, -ERR's text) */
	size_t args_len;
	const char *subject;      /* MSG/HMSG */
	size_t subject_len;
	int status;               /* HMSG: the status in its header line (503: no responders); else 0 */
	const char *payload;
	size_t payload_len;
};

/* A decimal field of a control line, at most max. -1 if not. */
static long
nats_number(const char *p, size_t n, long max)
{
	long v = 0;
	size_t i;

	if (n == 0 || n > 10)
		return -1;
	for (i = 0; i < n; i++) {
		if (!isdigit((unsigned char)p[i]))
			return -1;
		v = v * 10 + (p[i] - '0');
	}
	return v <= max ? v : -1;
}

/* Split a control line, p to end, into its op and up to five arguments
 * at spaces and tabs: how many words. */
static size_t
nats_words(const char *p, const char *end, const char *w[6], size_t wl[6])
{
	size_t nw = 0;

	while (p < end && nw < 6) {
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
		if (p == end)
			break;
		w[nw] = p;
		while (p < end && *p != ' ' && *p != '\t')
			p++;
		wl[nw] = (size_t)(p - w[nw]);
		nw++;
	}
	return nw;
}

/* A MSG or HMSG whose control line (line bytes, its words w) starts
 * f->in: 1 with m filled and f->used set, 0 when its payload has not all
 * arrived, or -1 with why. */
static int
nats_msg_take(struct forward *f, size_t line, const char **w, const size_t *wl, size_t nw,
    struct nats_msg *m, char *why, size_t wn)
{
	int hmsg = wl[0] == 4;  /* the caller saw MSG or HMSG */
	long size = nats_number(w[nw - 1], wl[nw - 1], NATS_MAX_REPLY);
	long hdr = hmsg ? nats_number(w[nw - 2], wl[nw - 2], NATS_MAX_REPLY) : 0;
	size_t k;

	if (size < 0 || hdr < 0 || hdr > size) {
		snprintf(why, wn, "a message of a size we do not take (at most %d bytes)", NATS_MAX_REPLY);
		return -1;
	}
	if (f->in.len < line + (size_t)size + 2)
		return 0;
	m->subject = w[1];
	m->subject_len = wl[1];
	m->payload = f->in.p + line + hdr;
	m->payload_len = (size_t)(size - hdr);
	if (hdr > 0) {
		/* "NATS/1.0 503\r\n...": the status, if any. */
		const char *h = f->in.p + line;

		if (hdr >= 12 && memcmp(h, "NATS/1.0 ", 9) == 0)
			m->status = (int)nats_number(h + 9, 3, 999);
	}
	for (k = 0; k < 2; k++) {
		if (f->in.p[line + (size_t)size + k] != "\r\n"[k]) {
			snprintf(why, wn, "a message not ended by CRLF");
			return -1;
		}
	}
	f->used = line + (size_t)size + 2;
	return 1;
}

/* Read the next thing the server says, by deadline: its op, with m
 * filled; IO_TIMEOUT; or -1 with why. */
static int
nats_read(struct forward *f, int64_t deadline, struct nats_msg *m, char *why, size_t wn)
{
	if (f->used > 0) {
		memmove(f->in.p, f->in.p + f->used, f->in.len - f->used);
		f->in.len -= f->used;
		f->used = 0;
	}
	memset(m, 0, sizeof(*m));
	for (;;) {
		char *eol = f->in.len > 0 ? memchr(f->in.p, '\n', f->in.len) : NULL;
		const char *w[6];
		size_t wl[6], line, nw;
		const char *end;
		int r;

		if (eol == NULL) {
			if (f->in.len > NATS_MAX_LINE) {
				snprintf(why, wn, "a line longer than %d bytes", NATS_MAX_LINE);
				return -1;
			}
			if ((r = forward_fill(f, deadline, why, wn)) < 0)
				return r;
			continue;
		}
		line = (size_t)(eol - f->in.p) + 1;
		end = eol > f->in.p && eol[-1] == '\r' ? eol - 1 : eol;
		if ((nw = nats_words(f->in.p, end, w, wl)) == 0) {
			memmove(f->in.p, f->in.p + line, f->in.len - line);  /* an empty line: nothing */
			f->in.len -= line;
			continue;
		}
		m->args = nw > 1 ? w[1] : end;
		m->args_len = (size_t)(end - m->args);
#define OP(s) (wl[0] == sizeof(s) - 1 && strncasecmp(w[0], s, wl[0]) == 0)
		if (OP("PING") || OP("PONG") || OP("+OK") || OP("-ERR") || OP("INFO")) {
			f->used = line;
			return OP("PING") ? NATS_PING : OP("PONG") ? NATS_PONG : OP("+OK") ? NATS_OK :
			    OP("-ERR") ? NATS_ERR : NATS_INFO;
		}
		if (!(OP("MSG") && (nw == 4 || nw == 5)) && !(OP("HMSG") && (nw == 5 || nw == 6))) {
			char shown[200];

			forward_quote(shown, sizeof(shown), f->in.p, (size_t)(end - f->in.p));
			snprintf(why, wn, "not the NATS protocol: %s", shown);
			return -1;
		}
#undef OP
		if ((r = nats_msg_take(f, line, w, wl, nw, m, why, wn)) != 0)
			return r < 0 ? -1 : NATS_MSG;
		if ((r = forward_fill(f, deadline, why, wn)) < 0)
			return r;
	}
}

/* Send f->out, then read until the message for reply subject inbox.seq:
 * NATS_MSG with m filled, or -1 with why. PINGs on the way are
 * answered; a -ERR ends it. */
static int
nats_request(struct forward *f, uint64_t seq, int64_t deadline, struct nats_msg *m, char *why, size_t wn)
{
	char want[80];

	snprintf(want, sizeof(want), "%s.%llu", f->inbox, (unsigned long long)seq);
	if (f->out.len > 0 && f->cl.c.tr->write(&f->cl.c, f->out.p, f->out.len, deadline) < 0) {
		snprintf(why, wn, "cannot send to it");
		return -1;
	}
	buf_clear(&f->out);
	for (;;) {
		int op = nats_read(f, deadline, m, why, wn);

		if (op < 0)
			return -1;
		if (op == NATS_PING && f->cl.c.tr->write(&f->cl.c, "PONG\r\n", 6, deadline) < 0) {
			snprintf(why, wn, "cannot send to it");
			return -1;
		}
		if (op == NATS_ERR) {
			char shown[200];

			forward_quote(shown, sizeof(shown), m->args, m->args_len);
			snprintf(why, wn, "NATS answered -ERR %s", shown);
			return -1;
		}
		if (op == NATS_MSG && m->subject_len == strlen(want) && memcmp(m->subject, want, m->subject_len) == 0)
			return NATS_MSG;
	}
}

/* A JetStream API answer's error, if it holds one: 1 with its
 * description in why, else 0. */
static int
jetstream_error(const struct nats_msg *m, const char *what, char *why, size_t wn)
{
	struct buf e = { 0 }, d = { 0 };
	int bad = 0;

	if (json_member(m->payload, m->payload_len, "error", &e) == 0) {
		char shown[200];

		if (json_member_string(e.p, e.len, "description", &d) < 0)
			buf_add(&d, e.p, e.len);
		forward_quote(shown, sizeof(shown), d.p, d.len);
		snprintf(why, wn, "%s: %s", what, shown);
		bad = 1;
	}
	buf_free(&e);
	buf_free(&d);
	return bad;
}

/* Send CONNECT with the credentials, and wait for the PONG that says
 * they were taken: 0, or -1 with why. */
static int
nats_connect(struct forward *f, int64_t deadline, char *why, size_t wn)
{
	struct nats_msg m;
	int op;

	buf_adds(&f->out, "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,"
	    "\"lang\":\"C\",\"version\":\"xwebhook\",\"protocol\":1");
	if (f->password[0] != '\0') {
		buf_adds(&f->out, f->user[0] ? ",\"user\":\"" : ",\"auth_token\":\"");
		if (f->user[0]) {
			json_escape(&f->out, f->user, strlen(f->user));
			buf_adds(&f->out, "\",\"pass\":\"");
		}
		json_escape(&f->out, f->password, strlen(f->password));
		buf_addc(&f->out, '"');
	}
	buf_adds(&f->out, "}\r\nPING\r\n");
	if (f->cl.c.tr->write(&f->cl.c, f->out.p, f->out.len, deadline) < 0) {
		snprintf(why, wn, "cannot send to it");
		return -1;
	}
	explicit_bzero(f->out.p, f->out.len);  /* it held the password */
	buf_clear(&f->out);
	while ((op = nats_read(f, deadline, &m, why, wn)) != NATS_PONG) {
		char shown[200];

		if (op < 0)
			return -1;
		if (op == NATS_ERR) {
			forward_quote(shown, sizeof(shown), m.args, m.args_len);
			snprintf(why, wn, "NATS refused us: %s", shown);
			return -1;
		}
	}
	return 0;
}

/* Does the stream subject pattern pat[0, pn) capture every subject that
 * s[0, sn) stands for (s may end in the wildcard '>')? Token by token: a
 * '>' in pat takes the rest, a '*' one token but not s's '>', any other
 * token only itself. */
static int
nats_subject_covers(const char *pat, size_t pn, const char *s, size_t sn)
{
	size_t i = 0, j = 0;

	for (;;) {
		size_t pe = i, se = j;

		while (pe < pn && pat[pe] != '.')
			pe++;
		while (se < sn && s[se] != '.')
			se++;
		if (pe - i == 1 && pat[i] == '>')
			return 1;
		if (se - j == 1 && s[j] == '>')
			return 0;
		if (!(pe - i == 1 && pat[i] == '*') && (pe - i != se - j || memcmp(pat + i, s + j, pe - i) != 0))
			return 0;
		if (pe == pn || se == sn)
			return pe == pn && se == sn;
		i = pe + 1;
		j = se + 1;
	}
}

/* Ask JetStream's API subject api with the JSON body (or "") and wait
 * for the answer: NATS_MSG with m filled, or -1 with why. */
static int
nats_api(struct forward *f, const char *api, const char *body, int64_t deadline, struct nats_msg *m, char *why,
    size_t wn)
{
	char head[400];

	snprintf(head, sizeof(head), "PUB %s %s.%llu %zu\r\n", api, f->inbox, (unsigned long long)++f->seq,
	    strlen(body));
	buf_adds(&f->out, head);
	buf_adds(&f->out, body);
	buf_adds(&f->out, "\r\n");
	if (nats_request(f, f->seq, deadline, m, why, wn) < 0)
		return -1;
	if (m->status == 503) {
		snprintf(why, wn, "the server answers no JetStream requests (is it started with -js?)");
		return -1;
	}
	return NATS_MSG;
}

/* Does the JetStream stream name capture every subject that want stands
 * for (its configured subjects, one covering it)? 1, 0, or -1 with why. */
static int
nats_stream_covers(struct forward *f, const char *name, const char *want, int64_t deadline, char *why,
    size_t wn)
{
	char api[200];
	struct nats_msg m;
	struct buf cfg = { 0 }, subs = { 0 }, one = { 0 }, subj = { 0 };
	size_t at = 0;
	int covers = 0;

	snprintf(api, sizeof(api), "$JS.API.STREAM.INFO.%s", name);
	if (nats_api(f, api, "", deadline, &m, why, wn) < 0)
		return -1;
	if (jetstream_error(&m, "JetStream refused the stream's description", why, wn))
		return -1;
	if (json_member(m.payload, m.payload_len, "config", &cfg) == 0 &&
	    json_member(cfg.p, cfg.len, "subjects", &subs) == 0) {
		buf_addc(&subs, '\0');
		while (!covers && json_array_next(subs.p, &at, &one)) {
			buf_addc(&one, '\0');
			if (one.p[0] == '"') {
				json_string_decode(one.p, 0, &subj);
				covers = nats_subject_covers(subj.p, subj.len, want, strlen(want));
			}
			buf_clear(&one);
			buf_clear(&subj);
		}
	}
	buf_free(&cfg);
	buf_free(&subs);
	buf_free(&one);
	buf_free(&subj);
	return covers;
}

/* Subscribe to a fresh inbox, and ask JetStream which stream captures
 * the subject, into f->stream: 0, or -1 with why. With {type}, the
 * subject stands for every type, x.events.>: JetStream names the streams
 * that capture any of them, and the one taken must capture them all. */
static int
nats_find_stream(struct forward *f, int64_t deadline, char *why, size_t wn)
{
	unsigned char r[12];
	struct nats_msg m;
	struct buf v = { 0 }, body = { 0 }, name = { 0 };
	char want[FORWARD_KEY_MAX];
	const char *typed = strstr(f->key, "{type}");
	size_t at = 0;
	unsigned asked = 0;

	entropy(r, sizeof(r));
	memcpy(f->inbox, "_INBOX.", 7);
	hex_encode(r, sizeof(r), f->inbox + 7);
	buf_adds(&f->out, "SUB ");
	buf_adds(&f->out, f->inbox);
	buf_adds(&f->out, ".* 1\r\n");
	forward_key(f, ">", want, sizeof(want));
	buf_adds(&body, "{\"subject\":\"");
	json_escape(&body, want, strlen(want));
	buf_adds(&body, "\"}");
	buf_addc(&body, '\0');
	if (body.failed || nats_api(f, "$JS.API.STREAM.NAMES", body.p, deadline, &m, why, wn) < 0) {
		if (body.failed)
			snprintf(why, wn, "out of memory");
		buf_free(&body);
		return -1;
	}
	buf_free(&body);
	if (jetstream_error(&m, "JetStream refused the stream lookup", why, wn))
		return -1;
	f->stream[0] = '\0';
	if (json_member(m.payload, m.payload_len, "streams", &v) == 0)
		buf_addc(&v, '\0');
	while (f->stream[0] == '\0' && v.len > 0 && asked < NATS_MAX_CANDIDATES &&
	    json_array_next(v.p, &at, &name)) {
		struct buf s = { 0 };
		int covers = 1;

		buf_addc(&name, '\0');
		if (name.p[0] == '"')
			json_string_decode(name.p, 0, &s);
		buf_addc(&s, '\0');
		if (typed != NULL && s.len > 1) {
			asked++;
			covers = nats_stream_covers(f, s.p, want, deadline, why, wn);
		}
		if (covers > 0 && s.len > 1)
			snprintf(f->stream, sizeof(f->stream), "%s", s.p);
		buf_free(&s);
		buf_clear(&name);
		if (covers < 0) {
			buf_free(&v);
			buf_free(&name);
			return -1;
		}
	}
	buf_free(&v);
	buf_free(&name);
	if (f->stream[0] == '\0') {
		if (typed != NULL)
			snprintf(why, wn, "no JetStream stream captures every subject %s stands for (create one whose "
			    "subjects include %s)", f->key, want);
		else
			snprintf(why, wn, "no JetStream stream captures the subject %s (create one whose subjects "
			    "include it)", f->key);
		return -1;
	}
	return 0;
}

/* Say hello on a fresh connection: read INFO, send CONNECT with the
 * credentials, wait for the PONG that says they were taken, subscribe to
 * our inbox, and ask JetStream which stream captures the subject. */
static int
nats_open(struct forward *f, int64_t deadline, char *why, size_t wn)
{
	struct nats_msg m;
	struct buf v = { 0 };
	int op = nats_read(f, deadline, &m, why, wn);

	if (op != NATS_INFO) {
		if (op >= 0)
			snprintf(why, wn, "the server did not begin with INFO: is this NATS?");
		return -1;
	}
	if (json_true(m.args, m.args_len, "tls_required")) {
		snprintf(why, wn, "the server requires TLS, which --forward nats:// does not speak");
		return -1;
	}
	if (!json_true(m.args, m.args_len, "headers")) {
		snprintf(why, wn, "the server does not take message headers (NATS 2.2 or later does)");
		return -1;
	}
	f->max_payload = 1024 * 1024;  /* NATS's default */
	if (json_member(m.args, m.args_len, "max_payload", &v) == 0) {
		buf_addc(&v, '\0');
		f->max_payload = (size_t)strtoull(v.p, NULL, 10);
	}
	buf_free(&v);
	if (nats_connect(f, deadline, why, wn) < 0)
		return -1;
	return nats_find_stream(f, deadline, why, wn);
}

/* The batch's JetStream publishes, back to back, into f->out: each with
 * its body's hash as Nats-Msg-Id (the stream stores X's resends of it
 * once) and a reply subject numbered from b->first[i]; and f->got made to
 * cover every publish still owed, from the oldest batch out to this one's
 * last. 0, or -1 with why. */
static int
nats_batch(struct forward *f, unsigned i, struct batch *b, char *why, size_t wn)
{
	uint64_t from;
	struct event *e;

	b->first[i] = f->seq + 1;
	for (e = b->events; e != NULL; e = e->next) {
		struct conn *c = event_conn(e);
		size_t len = c->compact.len - 1;  /* without its newline */
		char head[FORWARD_KEY_MAX + 300], subject[FORWARD_KEY_MAX];

		if (len + NATS_HEADERS > f->max_payload) {
			snprintf(why, wn, "an event of %zu bytes is over the server's max_payload of %zu", len,
			    f->max_payload);
			return -1;
		}
		forward_key(f, c->type, subject, sizeof(subject));
		snprintf(head, sizeof(head), "HPUB %s %s.%llu %d %zu\r\nNATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n", subject,
		    f->inbox, (unsigned long long)++f->seq, (int)NATS_HEADERS, NATS_HEADERS + len, c->body_sha);
		buf_adds(&f->out, head);
		buf_add(&f->out, c->compact.p, len);
		buf_adds(&f->out, "\r\n");
	}
	/* The publishes of batches decided since the last are let go. */
	from = inflight_at(0)->first[i] > f->got_from ? inflight_at(0)->first[i] : f->got_from;
	if (from - f->got_from >= f->got.len) {
		f->got.len = 0;
	} else {
		memmove(f->got.p, f->got.p + (from - f->got_from), f->got.len - (from - f->got_from));
		f->got.len -= from - f->got_from;
	}
	f->got_from = from;
	if (buf_reserve(&f->got, f->seq + 1 - from - f->got.len) < 0 || f->got.failed) {
		snprintf(why, wn, "out of memory");
		return -1;
	}
	memset(f->got.p + f->got.len, 0, f->seq + 1 - from - f->got.len);
	f->got.len = f->seq + 1 - from;
	return 0;
}

/* Does the PubAck m say JetStream stored the publish? Only one that names
 * the stream found at start and carries the message's seq (or says it is
 * a duplicate, stored before) does; one with an error, for another
 * stream, or of any other shape is no acknowledgement. 0, or -1 with why.
 * On the writer alone: its buffers are kept, so a PubAck costs no
 * allocation. */
static int
nats_puback(const struct forward *f, const struct nats_msg *m, char *why, size_t wn)
{
	static struct buf c = { NULL, 0, 0, 1, 0 }, k = { NULL, 0, 0, 1, 0 }, name = { NULL, 0, 0, 1, 0 };
	size_t i = 1, error = 0, stream = 0, seq = 0;
	char detail[160], shown[200];
	int duplicate = 0;
	long r;

	buf_clear(&c);
	r = json_event(m->payload, m->payload_len, JSON_COMPACT, &c, detail, sizeof(detail));
	buf_addc(&c, '\0');
	if (r < 0 || c.failed) {
		forward_quote(shown, sizeof(shown), m->payload, m->payload_len);
		snprintf(why, wn, "NATS answered a publish with no PubAck: \"%s\"", shown);
		return -1;
	}
	/* Its top-level members, the first of a name deciding: compact
	 * JSON, no whitespace between tokens. */
	while (c.p[i] == '"') {
		size_t at;

		buf_clear(&k);
		i = json_string_decode(c.p, i, &k) + 1;  /* past the ':' too */
		at = i;
		i = json_skip(c.p, i);
#define KEY(s) (k.len == sizeof(s) - 1 && memcmp(k.p, s, k.len) == 0)
#define VALUE(s) (i - at == sizeof(s) - 1 && memcmp(c.p + at, s, i - at) == 0)
		if (KEY("error") && error == 0 && !VALUE("null"))
			error = at;
		else if (KEY("stream") && stream == 0 && c.p[at] == '"')
			stream = at;
		else if (KEY("seq") && seq == 0 && c.p[at] >= '1' && c.p[at] <= '9' &&
		    strspn(c.p + at, "0123456789") == i - at)
			seq = at;
		else if (KEY("duplicate") && VALUE("true"))
			duplicate = 1;
#undef KEY
#undef VALUE
		if (c.p[i] == '}')
			break;
		i++;
	}
	if (error > 0) {
		jetstream_error(m, "JetStream did not store it", why, wn);
		return -1;
	}
	buf_clear(&name);
	if (stream > 0)
		json_string_decode(c.p, stream, &name);
	if (stream == 0 || name.failed) {
		snprintf(why, wn, "a PubAck that names no stream (%s takes the events)", f->stream);
		return -1;
	}
	if (name.len != strlen(f->stream) || memcmp(name.p, f->stream, name.len) != 0) {
		forward_quote(shown, sizeof(shown), name.p, name.len);
		snprintf(why, wn, "a PubAck from stream \"%s\", not %s", shown, f->stream);
		return -1;
	}
	if (seq == 0 && !duplicate) {
		forward_quote(shown, sizeof(shown), m->payload, m->payload_len);
		snprintf(why, wn, "a PubAck without the message's seq: %s", shown);
		return -1;
	}
	return 0;
}

/* Take everything NATS has sent, without waiting: PINGs get their PONG,
 * and a PubAck counts for the batch in flight whose event it names.
 * 0, or -1 with why. */
static int
nats_replies(struct forward *f, unsigned i, char *why, size_t wn)
{
	size_t inbox = strlen(f->inbox);
	struct nats_msg m;
	unsigned k;

	for (;;) {
		int op = nats_read(f, now_ms(), &m, why, wn);
		const char *dot;
		uint64_t seq;
		struct batch *b = NULL;

		if (op == IO_TIMEOUT)
			return 0;
		if (op < 0)
			return -1;
		if (op == NATS_PING && f->cl.c.tr->write(&f->cl.c, "PONG\r\n", 6, now_ms() + 1000) < 0) {
			snprintf(why, wn, "cannot send to it");
			return -1;
		}
		if (op == NATS_ERR) {
			char shown[200];

			forward_quote(shown, sizeof(shown), m.args, m.args_len);
			snprintf(why, wn, "NATS answered -ERR %s", shown);
			return -1;
		}
		if (op != NATS_MSG)
			continue;
		dot = memrchr(m.subject, '.', m.subject_len);
		if (dot == NULL || (size_t)(dot - m.subject) != inbox || memcmp(m.subject, f->inbox, inbox) != 0)
			continue;
		seq = strtoull(dot + 1, NULL, 10);
		for (k = 0; k < inflight.n && b == NULL; k++) {
			struct batch *x = inflight_at(k);

			if (seq >= x->first[i] && seq - x->first[i] < x->n)
				b = x;
		}
		if (b == NULL || seq < f->got_from || seq - f->got_from >= f->got.len)
			continue;  /* a failed batch's, or an old request's */
		if (f->got.p[seq - f->got_from] != 0)
			continue;  /* its PubAck was taken: each publish counts once */
		if (m.status == 503) {
			snprintf(why, wn, "no JetStream stream captures %s any more", f->key);
			return -1;
		}
		if (m.status != 0) {
			snprintf(why, wn, "JetStream answered status %d", m.status);
			return -1;
		}
		if (nats_puback(f, &m, why, wn) < 0)
			return -1;
		f->got.p[seq - f->got_from] = 1;
		forward_acked(b, i);
	}
}

/* ---- Both ---- */

/* Dial f and say hello, by deadline: 0, or -1 with why. */
static int
forward_open(struct forward *f, int64_t deadline, char *why, size_t wn)
{
	int r;

	if (client_connect(&f->cl, f->host, f->port, f->host, NULL, deadline) < 0) {
		snprintf(why, wn, "%.300s", f->cl.why);
		client_close(&f->cl);
		return -1;
	}
	buf_clear(&f->out);
	f->in.len = 0;
	f->used = 0;
	f->skip = 0;
	f->got.len = 0;
	f->got_from = f->seq + 1;
	r = f->kind == FORWARD_REDIS ? redis_open(f, deadline, why, wn) : nats_open(f, deadline, why, wn);
	if (r < 0) {
		client_close(&f->cl);
		return -1;
	}
	f->up = 1;
	atomic_store_explicit(&f->connected, 1, memory_order_relaxed);
	f->backoff = FORWARD_BACKOFF_MIN_MS;
	return 0;
}

/* Dial f, which is down, by deadline: 0, or -1 with f down again. Each
 * is one line in the log; a failure once an outage (the first dial since
 * it was up, whose backoff is the least), whether a batch or the idle
 * writer dials. */
static int
forward_dial(struct forward *f, int64_t deadline)
{
	char why[400];

	if (forward_open(f, deadline, why, sizeof(why)) < 0) {
		if (f->backoff == FORWARD_BACKOFF_MIN_MS)
			warn("--forward %s: %s; POSTs get 503 until it answers", f->shown, why);
		forward_down(f);
		return -1;
	}
	warn("--forward %s: connected", f->shown);
	return 0;
}

/* Send batch b to every broker, dialling one that is down: 0, or -1
 * with why (a static string) and the reason logged, every batch in
 * flight then failing with it. */
static int
forward_send(struct batch *b, const char **why)
{
	unsigned i;

	for (i = 0; i < nforwards; i++) {
		struct forward *f = &forwards[i];
		char detail[400];
		int r = 0;

		if (!f->up) {
			if (now_ms() < f->retry_at) {
				*why = "the broker is unreachable; try again";
				return -1;
			}
			if (forward_dial(f, b->deadline) < 0) {
				*why = "the broker is unreachable; try again";
				return -1;
			}
		}
		buf_clear(&f->out);
		if (f->kind == FORWARD_REDIS)
			redis_batch(f, b);
		else
			r = nats_batch(f, i, b, detail, sizeof(detail));
		if (r == 0 && f->out.failed) {
			snprintf(detail, sizeof(detail), "out of memory");
			r = -1;
		}
		if (r == 0 && f->cl.c.tr->write(&f->cl.c, f->out.p, f->out.len, b->deadline) < 0) {
			snprintf(detail, sizeof(detail), "cannot send to it");
			r = -1;
		}
		if (f->out.cap > STDOUT_QUEUE_LIMIT)
			buf_free(&f->out);
		buf_clear(&f->out);
		if (r < 0) {
			warn("--forward %s did not take the events: %s", f->shown, detail);
			forward_down(f);
			*why = "the broker did not take the event; try again";
			return -1;
		}
	}
	return 0;
}

/* Wait until a broker says something, the oldest batch in flight is
 * due, or (with events_too) events are queued. */
static void
forward_wait(int events_too)
{
	struct pollfd pfd[MAX_FORWARDS + 1];
	nfds_t n = 0;
	/* At the latest in HEARTBEAT_MS (the watchdog and /healthz), sooner
	 * when the oldest batch in flight is due or a broker down is to be
	 * dialled again. */
	int timeout = HEARTBEAT_MS;
	int64_t left;
	uint64_t v;
	unsigned i;

	for (i = 0; i < nforwards; i++) {
		if (forwards[i].up) {
			pfd[n].fd = forwards[i].cl.c.fd;
			pfd[n].events = POLLIN;
			n++;
		}
	}
	if (events_too) {
		pfd[n].fd = writer.wake_fd;
		pfd[n].events = POLLIN;
		n++;
	}
	if (inflight.n > 0 && (left = inflight_at(0)->deadline - now_ms()) < timeout)
		timeout = left < 0 ? 0 : (int)left;
	for (i = 0; i < nforwards && inflight.n == 0; i++)
		if (!forwards[i].up && (left = forwards[i].retry_at - now_ms()) < timeout)
			timeout = left < 0 ? 0 : (int)left;
	if (poll(pfd, n, timeout) < 0 && errno != EINTR)
		warn("the event writer cannot wait on the brokers:");
	if (events_too) {
		pthread_mutex_lock(&writer.lock);
		writer.polling = 0;
		pthread_mutex_unlock(&writer.lock);
		if (read(writer.wake_fd, &v, sizeof(v)) < 0)
			(void)0;  /* EAGAIN: not written */
	}
}

/* Redis answered NOSCRIPT: load the script again on a fresh connection
 * and send every batch in flight that it has not acknowledged all of
 * again, whole. Events of them it did store come back "duplicate", so
 * none is added twice. 0, or -1 with why. */
static int
redis_resend(struct forward *f, unsigned i, char *why, size_t wn)
{
	unsigned k, n = 0;

	client_close(&f->cl);
	if (forward_open(f, inflight_at(0)->deadline, why, wn) < 0)
		return -1;
	buf_clear(&f->out);
	for (k = 0; k < inflight.n; k++) {
		struct batch *b = inflight_at(k);

		if (b->acked[i] < b->n) {
			b->acked[i] = 0;
			n += b->n;
			redis_batch(f, b);
		}
	}
	if (f->out.failed || f->cl.c.tr->write(&f->cl.c, f->out.p, f->out.len, inflight_at(0)->deadline) < 0) {
		snprintf(why, wn, f->out.failed ? "out of memory" : "cannot send to it");
		return -1;
	}
	buf_clear(&f->out);
	f->reloaded = 1;
	warn("--forward %s: Redis had lost the dedupe script (restarted or flushed): loaded it again "
	    "and sent %u events again", f->shown, n);
	return 0;
}

/* Take every broker's replies so far, without waiting, and fail the
 * batches in flight if a broker failed or the oldest is due. A
 * connection with nothing owed on it that ends, or says what was not
 * asked, is closed and dialled again for the next batch: no failure. */
static void
forward_replies(void)
{
	unsigned i;

	for (i = 0; i < nforwards; i++) {
		struct forward *f = &forwards[i];
		char why[300];
		int r;

		if (!f->up)
			continue;
		r = f->kind == FORWARD_REDIS ? redis_replies(f, i, why, sizeof(why)) :
		    nats_replies(f, i, why, sizeof(why));
		if (r == REDIS_NOSCRIPT && redis_resend(f, i, why, sizeof(why)) == 0)
			continue;
		if (r == 0)
			continue;
		if (forward_owed(i) == NULL) {
			forward_down(f);
			f->retry_at = 0;
			f->backoff = FORWARD_BACKOFF_MIN_MS;
			continue;
		}
		warn("--forward %s did not take the events: %s", f->shown, why);
		forward_down(f);
		inflight_fail(S_UNAVAILABLE, "the broker did not take the event; try again");
	}
	if (inflight.n > 0 && now_ms() >= inflight_at(0)->deadline) {
		for (i = 0; i < nforwards; i++) {
			if (forwards[i].up && inflight_at(0)->acked[i] < inflight_at(0)->n) {
				warn("--forward %s did not take the events: no reply in time", forwards[i].shown);
				forward_down(&forwards[i]);
			}
		}
		inflight_fail(S_UNAVAILABLE, "the broker did not take the event; try again");
	}
}

/* With nothing in flight, dial again each broker that is down and whose
 * backoff has ended: so /healthz and --metrics see it back as soon as it
 * is, rather than when the next event finds out. */
static void
forward_redial(void)
{
	unsigned i;

	for (i = 0; i < nforwards && inflight.n == 0; i++) {
		struct forward *f = &forwards[i];

		if (!f->up && now_ms() >= f->retry_at)
			(void)forward_dial(f, now_ms() + FORWARD_CONNECT_MS);
	}
}

/* The batches in flight are failing: a broker still up skips the
 * replies it owes them. (A PubAck names its event, and is skipped as
 * no batch's; Redis's replies only come in order.) */
static void
forward_forget(void)
{
	unsigned i, k;

	for (i = 0; i < nforwards; i++) {
		if (forwards[i].up && forwards[i].kind == FORWARD_REDIS)
			for (k = 0; k < inflight.n; k++)
				forwards[i].skip += inflight_at(k)->n - inflight_at(k)->acked[i];
	}
}

/* ------------------------------------------------------------------------
 * [METRICS] --metrics ADDR:PORT: GET /metrics in Prometheus's text format
 * (0.0.4) and GET /healthz for load balancers, on a listener and a thread
 * of their own, never the public port.
 *
 * Counting costs the hot path nothing shared. Every thread that answers
 * requests (each loop, each connection thread) or decides events (the
 * writer) counts into a block of its own, found through a thread-local
 * pointer, with plain loads and stores (atomic and relaxed, so that a
 * scrape may read them: one writer per block, so no read-modify-write and
 * no lock). A scrape adds every block up. A connection thread takes a
 * block when it starts and gives it back when it ends, for the next
 * thread to count on in: no count is lost, and there are never more
 * blocks than threads that ran at once. Latencies go in histograms with
 * fixed buckets.
 *
 * The listener's loop (poll, non-blocking sockets, a deadline for each
 * client, at most METRICS_CLIENTS of them) reads each request with the
 * server's own parser and limits, answers it, and closes: a slow, silent
 * or huge client holds one place there for metrics_timeout at most, and
 * the webhook's loops never wait on this thread.
 *
 * Calls [HTTP] (http_scan_head, http_parse_head, response_build), the
 * counts of [SERVER] and [SLOTS] under conns_lock, [WRITER] (writer_beat),
 * [BROKERS] (each forward's connected) and [TLS] (the served certificate).
 * ------------------------------------------------------------------------ */

/* The histograms' upper bounds, in microseconds and as Prometheus's le
 * label says them: from a CRC on loopback (~100 us) to a broker's worst
 * (the sink deadline is 5 s). */
enum { METRICS_BUCKETS = 16 };
static const struct {
	int64_t us;
	const char *le;
} metrics_bounds[METRICS_BUCKETS] = {
	{ 100, "0.0001" }, { 250, "0.00025" }, { 500, "0.0005" }, { 1000, "0.001" },
	{ 2500, "0.0025" }, { 5000, "0.005" }, { 10000, "0.01" }, { 25000, "0.025" },
	{ 50000, "0.05" }, { 100000, "0.1" }, { 250000, "0.25" }, { 500000, "0.5" },
	{ 1000000, "1" }, { 2500000, "2.5" }, { 5000000, "5" }, { 10000000, "10" },
};

static const char *const route_names[R_COUNT] = {
	[R_OTHER] = "other", [R_CRC] = "crc", [R_EVENT] = "event", [R_HEALTHZ] = "healthz",
	[R_ACME_HTTP] = "acme_http",
};

struct histogram {
	_Atomic uint64_t bucket[METRICS_BUCKETS + 1];  /* the last: past every bound */
	_Atomic uint64_t sum_us;
};

/* One thread's counts (see above). */
struct metrics {
	struct metrics *next;     /* every block: under metrics_lock, never freed */
	struct metrics *spare;    /* the blocks no thread holds: under metrics_lock */
	_Atomic uint64_t requests[R_COUNT][4];   /* by route, by status class 2xx to 5xx */
	_Atomic uint64_t crcs, sig_bad, sig_missing, refused;
	_Atomic uint64_t handed, decided;        /* events to the writer, and its verdicts */
	_Atomic uint64_t acme_valid, acme_failed;
	struct histogram crc, event, sinks, broker[MAX_FORWARDS];
	/* Accepted events by type: a name is written before ntypes counts
	 * it (a release store), and never changes after. */
	atomic_uint ntypes;
	struct {
		char name[EVENT_TYPE_MAX];
		_Atomic uint64_t n;
	} types[METRICS_TYPES];
};

static pthread_mutex_t metrics_lock = PTHREAD_MUTEX_INITIALIZER;
static struct metrics *metrics_all, *metrics_spare;
static _Thread_local struct metrics *metrics_mine;
static int metrics_fd = -1;            /* the --metrics listener */
static struct timespec metrics_started; /* the server's start, for the scrape */

/* Add n to a count only this thread writes: a load and a store, no
 * read-modify-write, and still a value a scrape may read at any time. */
static void
count_add(_Atomic uint64_t *x, uint64_t n)
{
	atomic_store_explicit(x, atomic_load_explicit(x, memory_order_relaxed) + n, memory_order_relaxed);
}

static void
histogram_observe(struct histogram *h, int64_t us)
{
	unsigned k = 0;

	if (us < 0)
		us = 0;
	while (k < METRICS_BUCKETS && us > metrics_bounds[k].us)
		k++;
	count_add(&h->bucket[k], 1);
	count_add(&h->sum_us, (uint64_t)us);
}

/* This thread counts from here on (with --metrics): a spare block, or a
 * new one. Without memory it counts nothing, and serves on. */
static void
metrics_thread_take(void)
{
	struct metrics *m;

	if (metrics_spec == NULL || metrics_mine != NULL)
		return;
	pthread_mutex_lock(&metrics_lock);
	if ((m = metrics_spare) != NULL) {
		metrics_spare = m->spare;
	} else if ((m = calloc(1, sizeof(*m))) != NULL) {
		m->next = metrics_all;
		metrics_all = m;
	}
	pthread_mutex_unlock(&metrics_lock);
	metrics_mine = m;
}

/* A connection thread ends: its block, counts and all, goes to the next. */
static void
metrics_thread_give(void)
{
	struct metrics *m = metrics_mine;

	if (m == NULL)
		return;
	pthread_mutex_lock(&metrics_lock);
	m->spare = metrics_spare;
	metrics_spare = m;
	pthread_mutex_unlock(&metrics_lock);
	metrics_mine = NULL;
}

/* Count an accepted event under its type (X has a score of them; past
 * METRICS_TYPES in one block, it counts as "other"). */
static void
metrics_type(struct metrics *m, const char *type)
{
	for (;;) {
		unsigned n = atomic_load_explicit(&m->ntypes, memory_order_relaxed), k;

		for (k = 0; k < n; k++) {
			if (strcmp(m->types[k].name, type) == 0) {
				count_add(&m->types[k].n, 1);
				return;
			}
		}
		/* The last place is kept for "other". */
		if (n < METRICS_TYPES - 1 || (n < METRICS_TYPES && strcmp(type, "other") == 0)) {
			snprintf(m->types[n].name, sizeof(m->types[n].name), "%s", type);
			atomic_store_explicit(&m->types[n].n, 1, memory_order_relaxed);
			atomic_store_explicit(&m->ntypes, n + 1, memory_order_release);
			return;
		}
		type = "other";
	}
}

/* Count one request answered (request_done): its route and status
 * class, and for CRCs and events their latency from the first byte. */
static void
metrics_request(const struct conn *c)
{
	struct metrics *m = metrics_mine;
	const struct outcome *o = &c->o;
	int cls = o->code / 100 - 2;

	if (m == NULL)
		return;
	if (cls >= 0 && cls < 4)
		count_add(&m->requests[o->route][cls], 1);
	if (o->route == R_CRC && o->code == 200) {
		count_add(&m->crcs, 1);
		histogram_observe(&m->crc, now_us() - c->first_us);
	} else if (o->route == R_EVENT && o->sig != NULL && strcmp(o->sig, "bad") == 0) {
		count_add(&m->sig_bad, 1);
	} else if (o->route == R_EVENT && o->sig != NULL && strcmp(o->sig, "missing") == 0) {
		count_add(&m->sig_missing, 1);
	}
	if (o->handed) {
		histogram_observe(&m->event, now_us() - c->first_us);
		histogram_observe(&m->sinks, c->ev.took_us);
		if (o->code == 200)
			metrics_type(m, c->type);
		else
			count_add(&m->refused, 1);
	}
}

/* An event goes to the writer (event_submit). */
static void
metrics_handed(void)
{
	if (metrics_mine != NULL)
		count_add(&metrics_mine->handed, 1);
}

/* The writer decided an event. */
static void
metrics_decided(enum status st)
{
	(void)st;
	if (metrics_mine != NULL)
		count_add(&metrics_mine->decided, 1);
}

/* Broker i acknowledged a whole batch, us after it was sent. */
static void
metrics_broker_ack(unsigned i, int64_t us)
{
	if (metrics_mine != NULL)
		histogram_observe(&metrics_mine->broker[i], us);
}

#ifdef XWEBHOOK_TLS
/* An ACME order ended: a certificate, or not. */
static void
metrics_acme_order(int ok)
{
	if (metrics_mine != NULL)
		count_add(ok ? &metrics_mine->acme_valid : &metrics_mine->acme_failed, 1);
}
#endif

/* ---- the scrape ---- */

struct histogram_sum {
	uint64_t bucket[METRICS_BUCKETS + 1], sum_us;
};

/* Every block added up, at one scrape. */
struct metrics_sum {
	uint64_t requests[R_COUNT][4];
	uint64_t crcs, sig_bad, sig_missing, refused, handed, decided, acme_valid, acme_failed;
	struct histogram_sum crc, event, sinks, broker[MAX_FORWARDS];
	unsigned ntypes;
	struct {
		const char *name;     /* into a block, which is never freed */
		uint64_t n;
	} types[4 * METRICS_TYPES];
};

static uint64_t
count_read(const _Atomic uint64_t *x)
{
	return atomic_load_explicit((_Atomic uint64_t *)x, memory_order_relaxed);
}

static void
histogram_add(struct histogram_sum *s, const struct histogram *h)
{
	unsigned k;

	for (k = 0; k <= METRICS_BUCKETS; k++)
		s->bucket[k] += count_read(&h->bucket[k]);
	s->sum_us += count_read(&h->sum_us);
}

/* Add a block's accepted events by type to the sum's, by name. */
static void
metrics_sum_types(struct metrics_sum *s, struct metrics *m)
{
	unsigned n = atomic_load_explicit(&m->ntypes, memory_order_acquire), k, j;

	for (k = 0; k < n; k++) {
		const char *name = m->types[k].name;

		for (j = 0; j < s->ntypes && strcmp(s->types[j].name, name) != 0; j++)
			;
		if (j == s->ntypes && j == sizeof(s->types) / sizeof(s->types[0]))
			for (j = 0; j < s->ntypes && strcmp(s->types[j].name, "other") != 0; j++)
				;
		if (j == s->ntypes) {
			if (j == sizeof(s->types) / sizeof(s->types[0]))
				continue;  /* unreachable: each block's "other" comes first at worst */
			s->types[j].name = name;
			s->types[j].n = 0;
			s->ntypes++;
		}
		s->types[j].n += count_read(&m->types[k].n);
	}
}

static void
metrics_sum(struct metrics_sum *s)
{
	struct metrics *m;
	unsigned r, k;

	memset(s, 0, sizeof(*s));
	pthread_mutex_lock(&metrics_lock);
	m = metrics_all;
	pthread_mutex_unlock(&metrics_lock);
	/* Blocks are only ever added at the head: this walk is safe. */
	for (; m != NULL; m = m->next) {
		for (r = 0; r < R_COUNT; r++)
			for (k = 0; k < 4; k++)
				s->requests[r][k] += count_read(&m->requests[r][k]);
		s->crcs += count_read(&m->crcs);
		s->sig_bad += count_read(&m->sig_bad);
		s->sig_missing += count_read(&m->sig_missing);
		s->refused += count_read(&m->refused);
		s->decided += count_read(&m->decided);
		s->handed += count_read(&m->handed);
		s->acme_valid += count_read(&m->acme_valid);
		s->acme_failed += count_read(&m->acme_failed);
		histogram_add(&s->crc, &m->crc);
		histogram_add(&s->event, &m->event);
		histogram_add(&s->sinks, &m->sinks);
		for (k = 0; k < MAX_FORWARDS; k++)
			histogram_add(&s->broker[k], &m->broker[k]);
		metrics_sum_types(s, m);
	}
}

/* A metric's HELP and TYPE lines. */
static void
metric_head(struct buf *b, const char *name, const char *type, const char *help)
{
	buf_adds(b, "# HELP ");
	buf_adds(b, name);
	buf_addc(b, ' ');
	buf_adds(b, help);
	buf_adds(b, "\n# TYPE ");
	buf_adds(b, name);
	buf_addc(b, ' ');
	buf_adds(b, type);
	buf_addc(b, '\n');
}

/* A label value, escaped as the format asks (backslash, quote, newline). */
static void
metric_label(struct buf *b, const char *name, const char *value, int first)
{
	buf_adds(b, first ? "{" : ",");
	buf_adds(b, name);
	buf_adds(b, "=\"");
	for (; *value != '\0'; value++) {
		if (*value == '\\' || *value == '"')
			buf_addc(b, '\\');
		if (*value == '\n')
			buf_adds(b, "\\n");
		else
			buf_addc(b, *value);
	}
	buf_addc(b, '"');
}

/* One sample: name, the labels already written to labels, a value. */
static void
metric_sample(struct buf *b, const char *name, const char *suffix, const struct buf *labels, const char *close,
    uint64_t v)
{
	char num[32];

	buf_adds(b, name);
	buf_adds(b, suffix);
	buf_add(b, labels->p, labels->len);
	buf_adds(b, close);
	snprintf(num, sizeof(num), " %llu\n", (unsigned long long)v);
	buf_adds(b, num);
}

/* A histogram's buckets, sum and count, under labels (which may be
 * empty: "", or "{a=\"b\"" without its closing brace). */
static void
metric_histogram(struct buf *b, const char *name, const char *labels, const struct histogram_sum *h)
{
	struct buf l = { 0 };
	uint64_t n = 0;
	char num[64];
	unsigned k;

	l.soft = 1;
	for (k = 0; k <= METRICS_BUCKETS; k++) {
		n += h->bucket[k];
		buf_clear(&l);
		buf_adds(&l, labels[0] ? labels : "{");
		buf_adds(&l, labels[0] ? ",le=\"" : "le=\"");
		buf_adds(&l, k < METRICS_BUCKETS ? metrics_bounds[k].le : "+Inf");
		metric_sample(b, name, "_bucket", &l, "\"}", n);
	}
	buf_clear(&l);
	buf_adds(&l, labels);
	snprintf(num, sizeof(num), " %llu.%06llu\n", (unsigned long long)(h->sum_us / 1000000),
	    (unsigned long long)(h->sum_us % 1000000));
	buf_adds(b, name);
	buf_adds(b, "_sum");
	buf_adds(b, labels);
	buf_adds(b, labels[0] ? "}" : "");
	buf_adds(b, num);
	metric_sample(b, name, "_count", &l, labels[0] ? "}" : "", n);
	buf_free(&l);
}

/* A gauge or counter with no labels. */
static void
metric_plain(struct buf *b, const char *name, const char *type, const char *help, uint64_t v)
{
	struct buf none = { 0 };

	metric_head(b, name, type, help);
	metric_sample(b, name, "", &none, "", v);
}

/* A counter split two ways by one label: label=a, then label=z. */
static void
metric_split(struct buf *b, const char *name, const char *help, const char *label, const char *a, uint64_t va,
    const char *z, uint64_t vz)
{
	struct buf l = { 0 };

	l.soft = 1;
	metric_head(b, name, "counter", help);
	metric_label(&l, label, a, 1);
	metric_sample(b, name, "", &l, "}", va);
	buf_clear(&l);
	metric_label(&l, label, z, 1);
	metric_sample(b, name, "", &l, "}", vz);
	if (l.failed)
		b->failed = 1;
	buf_free(&l);
}

/* The whole exposition, into b. */
static void
metrics_render(struct buf *b)
{
	static const char *const classes[4] = { "2xx", "3xx", "4xx", "5xx" };
	struct metrics_sum *s = calloc(1, sizeof(*s));
	struct buf l = { 0 };
	unsigned r, k, conns, slots;
	char num[160];

	if (s == NULL) {
		b->failed = 1;
		return;
	}
	metrics_sum(s);
	l.soft = 1;
	metric_head(b, "xwebhook_build_info", "gauge", "The build: its version, and whether it serves HTTPS.");
	snprintf(num, sizeof(num), "xwebhook_build_info{version=\"%s\",tls=\"%d\"} 1\n", XWEBHOOK_VERSION,
#ifdef XWEBHOOK_TLS
	    1
#else
	    0
#endif
	    );
	buf_adds(b, num);
	metric_head(b, "xwebhook_start_time_seconds", "gauge", "When the server started, in Unix time.");
	snprintf(num, sizeof(num), "xwebhook_start_time_seconds %lld.%03ld\n", (long long)metrics_started.tv_sec,
	    metrics_started.tv_nsec / 1000000);
	buf_adds(b, num);

	metric_head(b, "xwebhook_requests_total", "counter", "Requests answered on the webhook's port, by route "
	    "and status class.");
	for (r = 0; r < R_COUNT; r++) {
		for (k = 0; k < 4; k++) {
			buf_clear(&l);
			metric_label(&l, "route", route_names[r], 1);
			metric_label(&l, "code", classes[k], 0);
			metric_sample(b, "xwebhook_requests_total", "", &l, "}", s->requests[r][k]);
		}
	}
	metric_plain(b, "xwebhook_crc_answered_total", "counter", "CRCs answered with their response_token.",
	    s->crcs);
	metric_head(b, "xwebhook_events_total", "counter", "Events verified and taken by every sink, by type.");
	for (k = 0; k < s->ntypes; k++) {
		buf_clear(&l);
		metric_label(&l, "type", s->types[k].name, 1);
		metric_sample(b, "xwebhook_events_total", "", &l, "}", s->types[k].n);
	}
	metric_split(b, "xwebhook_signature_failures_total", "Event POSTs refused for their signature: bad (no "
	    "match) or missing.", "reason", "bad", s->sig_bad, "missing", s->sig_missing);
	metric_plain(b, "xwebhook_events_refused_total", "counter", "Verified events the sinks did not take (a "
	    "5xx, which X retries).", s->refused);

	metric_head(b, "xwebhook_crc_duration_seconds", "histogram", "CRCs, from the request's first byte to the "
	    "answer.");
	metric_histogram(b, "xwebhook_crc_duration_seconds", "", &s->crc);
	metric_head(b, "xwebhook_event_duration_seconds", "histogram", "Verified events, from the request's first "
	    "byte to the answer.");
	metric_histogram(b, "xwebhook_event_duration_seconds", "", &s->event);
	metric_head(b, "xwebhook_sink_duration_seconds", "histogram", "Verified events, from their hand-off to "
	    "the writer to every sink's verdict.");
	metric_histogram(b, "xwebhook_sink_duration_seconds", "", &s->sinks);

	pthread_mutex_lock(&conns_lock);
	conns = nconns;
	slots = nslots;
	pthread_mutex_unlock(&conns_lock);
	metric_plain(b, "xwebhook_connections", "gauge", "Connections open on the webhook's port.", conns);
	metric_plain(b, "xwebhook_slots_used", "gauge", "Connection slots taken (of --max-conns).", slots);
	metric_plain(b, "xwebhook_slots_max", "gauge", "Connection slots (--max-conns).", max_conns);
	metric_plain(b, "xwebhook_writer_queue_events", "gauge", "Events with the writer: queued, or out to the "
	    "sinks.", s->handed > s->decided ? s->handed - s->decided : 0);

	if (nforwards > 0) {
		metric_head(b, "xwebhook_broker_up", "gauge", "Whether each --forward broker is connected (1) or "
		    "not (0).");
		for (k = 0; k < nforwards; k++) {
			buf_clear(&l);
			metric_label(&l, "broker", forwards[k].shown, 1);
			metric_sample(b, "xwebhook_broker_up", "", &l, "}",
			    (uint64_t)atomic_load_explicit(&forwards[k].connected, memory_order_relaxed));
		}
		metric_head(b, "xwebhook_broker_ack_duration_seconds", "histogram", "Batches of events, from "
		    "their sending to each --forward broker's last acknowledgement.");
		for (k = 0; k < nforwards; k++) {
			buf_clear(&l);
			metric_label(&l, "broker", forwards[k].shown, 1);
			buf_addc(&l, '\0');
			metric_histogram(b, "xwebhook_broker_ack_duration_seconds", l.failed ? "" : l.p,
			    &s->broker[k]);
		}
	}
#ifdef XWEBHOOK_TLS
	{
		struct identity *id = identity_acquire();

		if (id != NULL) {
			metric_plain(b, "xwebhook_certificate_not_after_seconds", "gauge", "The served "
			    "certificate's notAfter, in Unix time.", (uint64_t)id->leaf.not_after);
			identity_release(id);
		}
	}
	if (acme_domain != NULL)
		metric_split(b, "xwebhook_acme_orders_total", "ACME orders, by outcome.", "outcome", "valid",
		    s->acme_valid, "failed", s->acme_failed);
#endif
	if (l.failed)
		b->failed = 1;
	buf_free(&l);
	free(s);
}

/* 0 when a load balancer may send X's calls here; else -1 with why. */
static int
health_check(char *why, size_t wn)
{
	int64_t beat = now_ms() - atomic_load_explicit(&writer_beat, memory_order_relaxed);
	unsigned i;

	if (is_stopping()) {
		snprintf(why, wn, "stopping");
		return -1;
	}
	/* The writer goes round its loop every second, and no sink makes it
	 * wait much longer than sink_timeout. */
	if (beat > 2 * sink_timeout) {
		snprintf(why, wn, "the event writer is stuck (%lld s without a turn)", (long long)(beat / 1000));
		return -1;
	}
	for (i = 0; i < nforwards; i++) {
		if (!atomic_load_explicit(&forwards[i].connected, memory_order_relaxed)) {
			snprintf(why, wn, "--forward %s is not connected", forwards[i].shown);
			return -1;
		}
	}
	return 0;
}

/* ---- the listener ---- */

struct metrics_client {
	int fd;
	int64_t deadline;          /* monotonic ms: the request and the answer by then */
	char *in;                  /* CONN_BUF bytes, as the webhook's connections */
	size_t in_len, scan, line_end;   /* http_scan_head's place */
	struct buf out;            /* the answer */
	size_t sent;
};

/* Is req's path exactly p? */
static int
path_is(const struct request *req, const char *p)
{
	return req->path_len == strlen(p) && memcmp(req->target, p, req->path_len) == 0;
}

/* Answer the request in mc->in, whose head has scanned as st. */
static void
metrics_answer(struct metrics_client *mc, enum status st, size_t head_len, const char *why)
{
	struct request req;
	struct buf body = { 0 };
	const struct request *rq = NULL;
	const char *type = "application/json", *extra = NULL;
	char reason[800];

	body.soft = 1;
	memset(&req, 0, sizeof(req));
	if (st == S_OK)
		st = http_parse_head(mc->in, head_len, &req, &why);
	if (st == S_OK) {
		int get = req.method == M_GET || req.method == M_HEAD;

		rq = &req;
		if (path_is(&req, "/metrics") && get) {
			type = "text/plain; version=0.0.4; charset=utf-8";
			metrics_render(&body);
		} else if (path_is(&req, "/healthz") && get) {
			if (health_check(reason, sizeof(reason)) == 0) {
				buf_adds(&body, "{\"status\":\"ok\"}\n");
			} else {
				st = S_UNAVAILABLE;
				buf_adds(&body, "{\"status\":\"unavailable\",\"reason\":\"");
				json_escape(&body, reason, strlen(reason));
				buf_adds(&body, "\"}\n");
			}
		} else if (path_is(&req, "/metrics") || path_is(&req, "/healthz")) {
			st = S_METHOD_NOT_ALLOWED;
			why = "method not allowed";
			extra = "Allow: GET, HEAD\r\n";
		} else {
			st = S_NOT_FOUND;
			why = "not found: this port serves /metrics and /healthz";
		}
	}
	if (body.len == 0 && st != S_OK)
		error_json(&body, why);
	response_build(&mc->out, rq, st, type, body.p, body.len, extra, 0);
	if (body.failed)
		mc->out.failed = 1;
	buf_free(&body);
}

/* Read, answer, write: -1 once the client is done with (answered, gone,
 * or out of memory), else 0 to wait for it again. */
static int
metrics_client_io(struct metrics_client *mc)
{
	if (mc->out.len == 0) {
		size_t head_len = 0;
		const char *why = NULL;
		ssize_t r = read(mc->fd, mc->in + mc->in_len, CONN_BUF - mc->in_len);
		enum status st;

		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			return 0;
		if (r <= 0)
			return -1;
		mc->in_len += (size_t)r;
		st = http_scan_head(mc->in, mc->in_len, &mc->scan, &mc->line_end, &head_len, &why);
		if (st == S_INCOMPLETE && mc->in_len < CONN_BUF)
			return 0;
		if (st == S_INCOMPLETE) {  /* unreachable: the limits are smaller */
			st = S_HEADERS_TOO_LARGE;
			why = "request head too large";
		}
		metrics_answer(mc, st, head_len, why);
		if (mc->out.failed)
			return -1;
	}
	while (mc->sent < mc->out.len) {
		ssize_t w = send(mc->fd, mc->out.p + mc->sent, mc->out.len - mc->sent, MSG_NOSIGNAL);

		if (w < 0 && (errno == EAGAIN || errno == EINTR))
			return 0;
		if (w <= 0)
			return -1;
		mc->sent += (size_t)w;
	}
	return -1;
}

static void
metrics_client_close(struct metrics_client *mc)
{
	close(mc->fd);
	free(mc->in);
	buf_free(&mc->out);
}

/* Take a client, in the place of the oldest when every place is taken. */
static void
metrics_accept(struct metrics_client *cl, unsigned *n, int64_t *paused)
{
	struct metrics_client *mc;
	int fd = accept4(metrics_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	unsigned k, at = *n;
	char *in;

	if (fd < 0) {
		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
			*paused = now_ms() + 100;  /* rather than spin on what we cannot take */
		return;
	}
	if ((in = malloc(CONN_BUF)) == NULL) {
		close(fd);
		return;
	}
	if (at == METRICS_CLIENTS) {
		for (at = 0, k = 1; k < *n; k++)
			if (cl[k].deadline < cl[at].deadline)
				at = k;
		metrics_client_close(&cl[at]);
	} else {
		++*n;
	}
	mc = &cl[at];
	*mc = (struct metrics_client){ .fd = fd, .in = in, .deadline = now_ms() + metrics_timeout };
	mc->out.soft = 1;
}

/* The --metrics listener's thread: one poll loop over the listener and
 * its clients. */
static void *
metrics_thread(void *arg)
{
	struct metrics_client cl[METRICS_CLIENTS];
	struct pollfd pfd[METRICS_CLIENTS + 1];
	unsigned n = 0, k;
	int64_t paused = 0;

	(void)arg;
	thread_name("xwh-metrics");
	for (;;) {
		int64_t now = now_ms(), wait = 1000;

		pfd[0].fd = now < paused ? -1 : metrics_fd;
		pfd[0].events = POLLIN;
		for (k = 0; k < n; k++) {
			pfd[k + 1].fd = cl[k].fd;
			pfd[k + 1].events = cl[k].out.len > 0 ? POLLOUT : POLLIN;
			if (cl[k].deadline - now < wait)
				wait = cl[k].deadline - now < 0 ? 0 : cl[k].deadline - now;
		}
		if (poll(pfd, n + 1, (int)wait) < 0) {
			if (errno != EINTR)
				warn("--metrics: poll:");
			continue;
		}
		now = now_ms();
		/* From the last, so that moving the last into a place freed
		 * moves one already seen to. */
		for (k = n; k-- > 0;) {
			if ((pfd[k + 1].revents != 0 && metrics_client_io(&cl[k]) < 0) || now >= cl[k].deadline) {
				metrics_client_close(&cl[k]);
				cl[k] = cl[--n];
			}
		}
		if (pfd[0].fd >= 0 && (pfd[0].revents & POLLIN))
			metrics_accept(cl, &n, &paused);
	}
	return NULL;
}

/* The port of an ADDR:PORT or PORT, or -1. */
static long
spec_port(const char *spec)
{
	char host[256], port[16];
	const char *why;

	if (spec == NULL)
		return -1;
	if (strspn(spec, "0123456789") == strlen(spec))
		return atol(spec);
	if (split_host_port(spec, strlen(spec), host, sizeof(host), port, sizeof(port), &why) < 0 ||
	    port[0] == '\0')
		return -1;
	return atol(port);
}

/* --metrics: bind its listener (as root, before the drop), never on the
 * webhook's own port. */
static void
metrics_listen(void)
{
	char host[256], port[16], url[INET6_ADDRSTRLEN + 300];
	const char *why, *spec = metrics_spec;
	long p;

	clock_gettime(CLOCK_REALTIME, &metrics_started);
	if (spec == NULL)
		return;
	if (split_host_port(spec, strlen(spec), host, sizeof(host), port, sizeof(port), &why) < 0)
		die("bad --metrics '%s': %s", spec, why);
	if (host[0] == '\0' || port[0] == '\0')
		die("bad --metrics '%s': expected ADDR:PORT (e.g. 127.0.0.1:9100)", spec);
	p = spec_port(spec);
	if (p != 0 && (p == spec_port(listen_spec)
#ifdef XWEBHOOK_TLS
	    || p == spec_port(acme_http_spec)
#endif
	    ))
		die("--metrics %s: that port serves X; metrics and health go on a port of their own, never the "
		    "public one (e.g. 127.0.0.1:9100)", spec);
	metrics_fd = listen_on(spec, url, sizeof(url));
}

/* Start the --metrics thread, if asked for. */
static void
metrics_start(void)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char shown[INET6_ADDRSTRLEN + 8];
	pthread_t t;

	if (metrics_fd < 0)
		return;
	memset(&ss, 0, sizeof(ss));
	if (getsockname(metrics_fd, (struct sockaddr *)&ss, &sl) < 0)
		die("getsockname:");
	format_peer(&ss, shown, sizeof(shown));
	if (pthread_create(&t, &thread_attr, metrics_thread, NULL) != 0)
		die("cannot start the --metrics thread");
	warn("metrics on http://%s/metrics and health on http://%s/healthz", shown, shown);
}

/* ------------------------------------------------------------------------
 * [CLIENT] The HTTP client: the file's one way to ask another server
 * something. One request builder (http_request_head), one request on a
 * fresh connection from [OUT], and its answer read with the server's own
 * pieces: http_scan_head for the head, http_next_field for the fields,
 * content_length and the chunked decoder for the body. One deadline covers
 * the whole exchange, and CLIENT_MAX_ANSWER the answer's size. Every
 * caller (check, X's API, ACME) gets its failures in the same words: a
 * certificate's fault named, a deadline as it was. Calls [OUT], [HTTP],
 * [JSON]'s reader.
 * ------------------------------------------------------------------------ */

/* The head of a request to u, the file's one request builder: the
 * request line (target, or the URL's own when NULL), Host as RFC 9112
 * 3.2 wants it (the scheme's default port left out), then fields (whole
 * lines, each CRLF-ended, in the caller's order) and, when body_len is
 * not negative, Content-Length; the blank line ends it. */
static void
http_request_head(struct buf *b, const char *method, const struct url *u, const char *target, const char *fields,
    long long body_len)
{
	char host[HOST_PORT_MAX], num[48];

	(void)host_port_format(host, sizeof(host), u->host, u->port, u->https ? "443" : "80");
	buf_adds(b, method);
	buf_addc(b, ' ');
	buf_adds(b, target != NULL ? target : u->target);
	buf_adds(b, " HTTP/1.1\r\nHost: ");
	buf_adds(b, host);
	buf_adds(b, "\r\n");
	buf_adds(b, fields);
	if (body_len >= 0) {
		snprintf(num, sizeof(num), "Content-Length: %lld\r\n", body_len);
		buf_adds(b, num);
	}
	buf_adds(b, "\r\n");
}

/* The status of a response head: HTTP/1.x SP 3DIGIT, then SP and a
 * reason (perhaps empty) or, leniently, the line's end. -1 if not. */
static int
http_status_line(const char *p, size_t n)
{
	if (n < 14 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != ' ' ||
	    !isdigit((unsigned char)p[9]) || !isdigit((unsigned char)p[10]) ||
	    !isdigit((unsigned char)p[11]) || (p[12] != ' ' && p[12] != '\r'))
		return -1;
	return (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
}

static void
answer_free(struct answer *a)
{
	buf_free(&a->head);
	buf_free(&a->body);
}

/* What an answer's head says of its body. */
struct answer_framing {
	size_t head_len;
	uint64_t length;
	int has_length, chunked;
};

/* Read the head of the final (non-1xx) answer into in: a->status and
 * fr, 0, or -1 with cl->why. Interim (1xx) answers are passed over. */
static int
client_read_head(struct client *cl, struct buf *in, struct answer *a, struct answer_framing *fr)
{
	size_t scan = 0, line_end = 0, head_len = 0;
	const char *why, *p;
	unsigned count = 0;
	struct field f;
	ssize_t r;

	memset(fr, 0, sizeof(*fr));
	for (;;) {
		enum status st = in->len > 0 ?
		    http_scan_head(in->p, in->len, &scan, &line_end, &head_len, &why) : S_INCOMPLETE;

		if (st == S_OK) {
			a->status = http_status_line(in->p, head_len);
			if (a->status < 0) {
				snprintf(cl->why, sizeof(cl->why), "the answer is not HTTP/1.x");
				return -1;
			}
			if (a->status >= 200)
				break;
			memmove(in->p, in->p + head_len, in->len - head_len);  /* 1xx: the next */
			in->len -= head_len;
			scan = line_end = head_len = 0;
			continue;
		}
		if (st != S_INCOMPLETE) {
			snprintf(cl->why, sizeof(cl->why), "the answer's head is malformed: %s", why);
			return -1;
		}
		if ((r = client_read(cl, in)) <= 0) {
			if (r == IO_TIMEOUT)
				snprintf(cl->why, sizeof(cl->why), "no complete answer within %lld s", client_limit_s(cl));
			else
				snprintf(cl->why, sizeof(cl->why), "the connection ended inside the answer's head");
			return -1;
		}
		in->len += (size_t)r;
	}
	fr->head_len = head_len;
	p = (const char *)memchr(in->p, '\n', head_len) + 1;
	while ((r = http_next_field(&p, in->p + head_len, &count, &f, &why)) > 0) {
		if (span_is(f.name, f.name_len, "content-length")) {
			if (fr->has_length++ || content_length(&f, &fr->length, &why) < 0) {
				snprintf(cl->why, sizeof(cl->why), "the answer's Content-Length is bad");
				return -1;
			}
		} else if (span_is(f.name, f.name_len, "transfer-encoding")) {
			fr->chunked = span_is(f.value, f.value_len, "chunked");
		}
	}
	if (r < 0) {
		snprintf(cl->why, sizeof(cl->why), "the answer's head is malformed: %s", why);
		return -1;
	}
	buf_add(&a->head, in->p, head_len);
	return 0;
}

/* Read the body that fr frames into a->body (in holds the head and what
 * came after it): 0, or -1 with cl->why. */
static int
client_read_body(struct client *cl, struct buf *in, struct answer *a, const struct answer_framing *fr)
{
	size_t head_len = fr->head_len, at = head_len;
	const char *why;
	ssize_t r = 0;

	if (a->status == 204 || a->status == 304) {
		return 0;  /* no body */
	} else if (fr->chunked) {
		struct chunked ch;
		size_t used;

		memset(&ch, 0, sizeof(ch));
		for (;;) {
			enum status st = chunked_decode(&ch, in->p + at, in->len - at, &used, &a->body,
			    CLIENT_MAX_ANSWER - head_len, &why);

			if (st == S_OK)
				break;
			if (st == S_PAYLOAD_TOO_LARGE)
				goto too_large;
			if (st != S_INCOMPLETE) {
				snprintf(cl->why, sizeof(cl->why), "the answer's chunked body is malformed: %s", why);
				return -1;
			}
			in->len = at = head_len;  /* all used: read more in its place */
			if ((r = client_read(cl, in)) <= 0)
				goto ended;
			in->len += (size_t)r;
		}
	} else {
		if (fr->has_length && fr->length > CLIENT_MAX_ANSWER - head_len)
			goto too_large;
		while (!fr->has_length || in->len - head_len < fr->length) {
			if ((r = client_read(cl, in)) == 0 && !fr->has_length)
				break;  /* the end of the connection is the end of the body */
			if (r <= 0) {
				if (r == IO_ERROR && in->len > CLIENT_MAX_ANSWER)
					goto too_large;
				goto ended;
			}
			in->len += (size_t)r;
		}
		buf_add(&a->body, in->p + head_len, fr->has_length ? (size_t)fr->length : in->len - head_len);
	}
	return 0;
too_large:
	snprintf(cl->why, sizeof(cl->why), "the answer is larger than " CLIENT_MAX_ANSWER_TEXT
	    " (the most the client reads)");
	return -1;
ended:
	if (r == IO_TIMEOUT)
		snprintf(cl->why, sizeof(cl->why), "no complete answer within %lld s", client_limit_s(cl));
	else
		snprintf(cl->why, sizeof(cl->why), "the connection ended inside the answer's body");
	return -1;
}

/* Send request, then read one whole answer into a by cl's deadline:
 * 0, or -1 with cl->why. */
static int
client_exchange(struct client *cl, const char *request, size_t n, struct answer *a)
{
	struct buf in = { 0 };
	struct answer_framing fr;
	int ok = -1;

	memset(a, 0, sizeof(*a));
	if (cl->c.tr->write(&cl->c, request, n, cl->deadline) < 0) {
		snprintf(cl->why, sizeof(cl->why), "cannot send the request");
		return -1;
	}
	if (client_read_head(cl, &in, a, &fr) == 0 && client_read_body(cl, &in, a, &fr) == 0) {
		a->ms = now_ms() - cl->start;
		ok = 0;
	}
	buf_free(&in);
	if (ok < 0)
		answer_free(a);
	return ok;
}

/* The value of the answer's field name (the first of them), or NULL. */
static const char *
answer_field(const struct answer *a, const char *name, size_t *len)
{
	const char *p, *why;
	unsigned count = 0;
	struct field f;

	if (a->head.len == 0)
		return NULL;
	p = (const char *)memchr(a->head.p, '\n', a->head.len) + 1;
	while (http_next_field(&p, a->head.p + a->head.len, &count, &f, &why) > 0)
		if (span_is(f.name, f.name_len, name)) {
			*len = f.value_len;
			return f.value;
		}
	return NULL;
}

/* ------------------------------------------------------------------------
 * [CHECK] check URL: do what X does before it accepts a webhook URL,
 * report each requirement on its own line, and exit 0 only if X would
 * accept it: 1 if X would not, CHECK_CANNOT_TELL if something X requires
 * could not be checked here (and nothing failed). Two jobs: the CRC as X
 * sends it, and with --post a signed event. Calls [CLIENT], [CRYPTO].
 * ------------------------------------------------------------------------ */

static int check_failed;
static int check_unsure;            /* something check itself cannot do */

enum {
	CHECK_TIME_LIMIT_MS = 3000,   /* X's limit for a CRC answer */
	CHECK_CANNOT_TELL = 2,        /* the exit status when check_unsure decides */
};

static void report(const char *mark, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
report(const char *mark, const char *fmt, ...)
{
	va_list ap;

	if (strcmp(mark, "FAIL") == 0)
		check_failed = 1;
	if (strcmp(mark, "unknown") == 0)
		check_unsure = 1;
	printf("[%s] ", mark);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

/* Where check dials, and with what it verifies. */
struct check_target {
	const struct url *u;
	char host[256], port[8];
	const void *trust;       /* struct trust, for https */
	const char *bundle;
};

#ifdef XWEBHOOK_TLS
/* Say why a handshake failed, in X's terms: a certificate's fault in
 * the client's words, the rest as X sees it. */
static void
report_handshake(const struct check_target *t, const struct client *cl)
{
	const struct tls_client *tc = cl->c.tls;
	int e = cl->tls_error;
	struct cert_info ci;
	char text[400];

	if (tc != NULL && x509_error_text(e, &tc->x509.leaf, t->u->host, t->bundle, text, sizeof(text)) == 0)
		report("FAIL", "%s%s", text, e == BR_ERR_X509_NOT_TRUSTED ? "; X will not fetch a missing one" : "");
	else if (e == BR_ERR_RECV_FATAL_ALERT + 70)
		report("unknown", "cannot check: the server wants a TLS version this build lacks, most likely "
		    "TLS 1.3 alone. X accepts TLS 1.3, but check speaks TLS 1.2 at most (BearSSL has no "
		    "1.3): try curl -v --tlsv1.3 %s, or enable TLS 1.2 as well", t->u->host);
	else if (e == BR_ERR_BAD_VERSION || e == BR_ERR_UNSUPPORTED_VERSION)
		report("FAIL", "no TLS 1.2: X needs TLS 1.2 or later");
	else
		report("FAIL", "%s", cl->why);
	if (tc != NULL && tc->x509.leaf.len > 0 &&
	    cert_info((unsigned char *)tc->x509.leaf.p, tc->x509.leaf.len, &ci) == 0) {
		char date[32];

		format_date(ci.not_after, date, sizeof(date));
		report("info", "the server's certificate expires %s", date);
	}
}

/* What the handshake settled, when it succeeded. */
static void
report_tls(const struct check_target *t, const struct client *cl)
{
	const struct tls_client *tc = cl->c.tls;
	br_ssl_session_parameters sp;
	unsigned v = br_ssl_engine_get_version(&tc->cc.eng);
	struct cert_info ci;
	char date[32];

	br_ssl_engine_get_session_parameters(&tc->cc.eng, &sp);
	report(v >= BR_TLS12 ? "ok" : "FAIL", "TLS 1.%u, %s", v - BR_TLS10, suite_name(sp.cipher_suite));
	report("ok", "certificate chain verified against %s, with the %d certificate(s) the server sent",
	    t->bundle, tc->x509.certs);
	report("ok", "certificate is for %s", t->u->host);
	if (cert_info((unsigned char *)tc->x509.leaf.p, tc->x509.leaf.len, &ci) == 0) {
		long days = (long)((ci.not_after - time(NULL)) / 86400);

		format_date(ci.not_after, date, sizeof(date));
		report(days < EXPIRY_WARN_DAYS ? "warn" : "ok", "certificate expires %s (%ld days)", date, days);
	}
}
#endif

/* One exchange with the target, reporting a failure to connect or to
 * get an answer (what is reported is what must be said). 0, or -1. */
static int
check_exchange(const struct check_target *t, const struct buf *request, struct answer *a, int report_handshakes,
    const char *what)
{
	struct client cl;
	int r = -1;

	(void)report_handshakes;  /* (the plain build has none) */
	if (client_connect(&cl, t->host, t->port, t->u->host, t->trust, 0) < 0) {
#ifdef XWEBHOOK_TLS
		if (cl.tls_error != 0 && report_handshakes)
			report_handshake(t, &cl);
		else if (cl.tls_error == BR_ERR_RECV_FATAL_ALERT + 70)
			report("unknown", "%s: %s (a TLS version this build lacks)", what, cl.why);
		else
#endif
			report("FAIL", "%s: %s", what, cl.why);
		client_close(&cl);
		return -1;
	}
#ifdef XWEBHOOK_TLS
	if (t->trust != NULL && report_handshakes)
		report_tls(t, &cl);
#endif
	if (client_exchange(&cl, request->p, request->len, a) < 0)
		report("FAIL", "%s: %s", what, cl.why);
	else
		r = 0;
	client_close(&cl);
	return r;
}

/* Percent-encode s[0, n) onto b, the file's one encoder: every byte but
 * RFC 3986's unreserved (ALPHA, DIGIT, '-', '.', '_', '~') as %XX in
 * uppercase hex, as OAuth (RFC 5849 3.6) and a query both take it. */
static void
pct_encode(struct buf *b, const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
		    c == '.' || c == '_' || c == '~') {
			buf_addc(b, (char)c);
		} else {
			char e[3] = { '%', "0123456789ABCDEF"[c >> 4], "0123456789ABCDEF"[c & 15] };

			buf_add(b, e, 3);
		}
	}
}

/* The CRC as X sends it: GET the URL with a fresh crc_token and nonce,
 * and judge the answer's status, time, coding and response_token. */
static void
check_crc(const struct check_target *t, const char *token, const char *nonce, int have_secret)
{
	struct buf target = { 0 }, req = { 0 }, got = { 0 };
	struct answer a;
	char want[SIGNATURE_LEN + 1];
	const char *v;
	size_t vl;

	buf_adds(&target, t->u->target);
	buf_adds(&target, strchr(t->u->target, '?') ? "&crc_token=" : "?crc_token=");
	pct_encode(&target, token, strlen(token));
	buf_adds(&target, "&nonce=");
	buf_adds(&target, nonce);
	buf_addc(&target, '\0');
	http_request_head(&req, "GET", t->u, target.p, "User-Agent: xwebhook-check\r\nAccept-Encoding: gzip\r\n"
	    "Connection: close\r\n", -1);
	buf_free(&target);
	if (check_exchange(t, &req, &a, 1, "the CRC") < 0) {
		buf_free(&req);
		return;
	}
	buf_free(&req);
	if (a.status >= 300 && a.status < 400) {
		v = answer_field(&a, "location", &vl);
		report("FAIL", "the CRC was answered %d, a redirect%s%.*s: X treats any 3XX as invalid",
		    a.status, v ? " to " : "", v ? (int)(vl > 200 ? 200 : vl) : 0, v ? v : "");
	} else {
		report(a.status == 200 ? "ok" : "FAIL", "the CRC was answered %d", a.status);
	}
	report(a.ms <= CHECK_TIME_LIMIT_MS ? "ok" : "FAIL", "the CRC was answered in %lld ms, all of "
	    "it (X allows %d ms)", (long long)a.ms, CHECK_TIME_LIMIT_MS);
	if ((v = answer_field(&a, "content-encoding", &vl)) != NULL)
		report("FAIL", "the answer has Content-Encoding: %.*s; X wants the JSON as it is",
		    (int)(vl > 64 ? 64 : vl), v);
	if (a.status != 200) {
		/* nothing more to judge */
	} else if (json_member_string(a.body.p, a.body.len, "response_token", &got) < 0) {
		report("FAIL", "the answer is not a JSON object with a response_token string at its top level");
	} else if (have_secret) {
		signature_of(&secret_key, token, strlen(token), want, NULL);
		want[SIGNATURE_LEN] = '\0';
		if (got.len == SIGNATURE_LEN && memcmp(got.p, want, SIGNATURE_LEN) == 0)
			report("ok", "response_token is the HMAC of the token under the consumer secret");
		else
			report("FAIL", "response_token does not match the HMAC under this consumer "
			    "secret (a different app's secret, or the wrong construction)");
	} else if (got.len == SIGNATURE_LEN && memcmp(got.p, "sha256=", 7) == 0) {
		/* X refuses any value but the HMAC: without the secret, the
		 * shape is no verdict. */
		report("unknown", "response_token has the right shape, but its value was not checked: no "
		    "consumer secret here (TWITTER_CONSUMER_SECRET or --secret-file), and X accepts only "
		    "the HMAC of the token under the app's secret");
	} else {
		report("FAIL", "response_token is not sha256=<base64 of 32 bytes>");
	}
	answer_free(&a);
	buf_free(&got);
}

/* --post: a signed test event, as X would deliver one, must get 200. */
static void
check_signed_post(const struct check_target *t, const char *stamp, const char *nonce)
{
	struct buf req = { 0 }, fields = { 0 };
	struct answer a;
	char body[160], sig[SIGNATURE_LEN + 1];

	snprintf(body, sizeof(body), "{\"xwebhook_check\":{\"sent_at\":\"%s\",\"nonce\":\"%s\"}}", stamp, nonce);
	signature_of(&secret_key, body, strlen(body), sig, NULL);
	sig[SIGNATURE_LEN] = '\0';
	buf_adds(&fields, "User-Agent: xwebhook-check\r\nContent-Type: application/json\r\nConnection: close\r\n"
	    "x-twitter-webhooks-signature: ");
	buf_adds(&fields, sig);
	buf_adds(&fields, "\r\n");
	buf_addc(&fields, '\0');
	http_request_head(&req, "POST", t->u, NULL, fields.p, (long long)strlen(body));
	buf_adds(&req, body);
	if (check_exchange(t, &req, &a, 0, "the signed test event") == 0) {
		report(a.status == 200 ? "ok" : "FAIL", "a signed test event was answered %d in %lld ms", a.status,
		    (long long)a.ms);
		answer_free(&a);
	}
	buf_free(&fields);
	buf_free(&req);
}

/* Where check dials (the URL's host and port, or --connect), and for
 * https the roots it verifies with: 0, or -1 when it cannot check
 * (reported). */
static int
check_target_init(struct check_target *t, const struct url *u)
{
	const char *why;

	memset(t, 0, sizeof(*t));
	t->u = u;
	snprintf(t->host, sizeof(t->host), "%s", u->host);
	snprintf(t->port, sizeof(t->port), "%s", u->port[0] ? u->port : u->https ? "443" : "80");
	if (check_connect != NULL &&
	    (split_host_port(check_connect, strlen(check_connect), t->host, sizeof(t->host), t->port,
	    sizeof(t->port), &why) < 0 || t->host[0] == '\0' || t->port[0] == '\0'))
		die("bad --connect '%s': expected ADDR:PORT or [IPV6]:PORT", check_connect);
#ifdef XWEBHOOK_TLS
	if (u->https) {
		static struct trust trust;

		if (trust_load(cacert_path, &trust) < 0) {
			report("FAIL", "cannot load trusted certificates from %s", trust.path);
			return -1;
		}
		t->bundle = trust.path;
		t->trust = &trust;
	}
#else
	if (u->https) {
		report("FAIL", "https needs the TLS build of xwebhook (make TLS=1)");
		return -1;
	}
#endif
	return 0;
}

static int
cmd_check(const char *arg)
{
	struct url u;
	struct check_target t;
	unsigned char raw[24];
	char token[40], nonce[32], stamp[24];
	int have_secret = load_secret(0);
	size_t n;

	if (url_parse(arg, &u) < 0)
		die("check: '%s' is not an http:// or https:// URL", arg);
	report(u.https ? "ok" : "FAIL", u.https ? "https URL" : "http URL: X only calls https URLs "
	    "(checked anyway)");
	if (u.port[0] && strcmp(u.port, "443") != 0)
		report("FAIL", "the URL names port %s: X refuses URLs with a port other than 443", u.port);
	else
		report("ok", "no port in the URL (443)");
	if (check_target_init(&t, &u) < 0) {
#ifdef XWEBHOOK_TLS
		printf("X would not accept this URL.\n");
#endif
		return 1;
	}
	/* A fresh token, as X makes them: base64, here of 24 random bytes,
	 * so that '+' and '/' are likely to need their %-escapes. */
	entropy(raw, sizeof(raw));
	n = base64_encode(raw, sizeof(raw), token);
	token[n] = '\0';
	snprintf(stamp, sizeof(stamp), "%lld", (long long)time(NULL) * 1000);
	n = base64_encode((unsigned char *)stamp, strlen(stamp), nonce);
	while (n > 0 && nonce[n - 1] == '=')
		n--;
	nonce[n] = '\0';
	check_crc(&t, token, nonce, have_secret);
	if (check_post && !have_secret)
		report("FAIL", "--post needs the consumer secret, to sign the event");
	else if (check_post)
		check_signed_post(&t, stamp, nonce);
	if (check_failed) {
		printf("X would not accept this URL.\n");
		return 1;
	}
	if (check_unsure) {
		printf("check cannot tell whether X would accept this URL: what it checked passed, "
		    "but not what [unknown] names.\n");
		return CHECK_CANNOT_TELL;
	}
	printf("X would accept this URL.\n");
	return 0;
}

/* ------------------------------------------------------------------------
 * [XAPI] The X side of a webhook: webhooks, register, validate,
 * unregister, subscribe, subscriptions, unsubscribe, replay, and the X
 * Activity API's activity add|list|update|delete, each a row of the
 * x_command table (with a handler where one row cannot say it all). Each
 * is an HTTPS request to X's API through the file's client (activity list
 * one a page), with credentials from the environment only: the app's
 * Bearer token, or for user context OAuth 1.0a signed here (RFC 5849,
 * HMAC-SHA1), or the OAuth 2.0 user token that login stored (login and
 * logout are here too, and keep it in --state-dir as [ACME] keeps its
 * files). On 2xx X's JSON goes to stdout in the fmt layout; anything
 * else is one line on stderr with what X said, escaped, and exit status 1.
 * Calls [CLIENT], [CRYPTO], [JSON], [HTTP] (login's redirect), and
 * [ACME]'s state-dir files.
 * ------------------------------------------------------------------------ */

enum { X_API_TIMEOUT_MS = 30000 };  /* X runs a CRC before it answers register */

/* One parameter of a signature base string, both halves encoded. */
struct oauth_param {
	char *k, *v;
};

static int
oauth_param_cmp(const void *a, const void *b)
{
	const struct oauth_param *x = a, *y = b;
	int c = strcmp(x->k, y->k);

	return c != 0 ? c : strcmp(x->v, y->v);
}

/* s[0, n) decoded as a form component ('+' a space, %XX a byte) and
 * encoded again the OAuth way, NUL-ended, in memory of its own. */
static char *
oauth_reencoded(const char *s, size_t n)
{
	struct buf out = { 0 };
	char *raw = xmalloc(n + 1);  /* decoding never lengthens */

	pct_encode(&out, raw, form_decode(s, n, raw, n));
	buf_addc(&out, '\0');
	free(raw);
	return out.p;
}

/* The normalized parameters (RFC 5849 3.4.1.3.2) into list: the six
 * oauth_* names with their values, and those of the query q (NULL: none),
 * each half encoded again the OAuth way, sorted, joined with '&'. */
static void
oauth_param_list(struct buf *list, const char *const names[6], const char *const values[6], const char *q)
{
	struct oauth_param *ps = xmalloc((6 + (q != NULL ? strlen(q) : 0)) * sizeof(*ps));  /* at most one a byte */
	const char *c;
	size_t np = 0, i;

	for (i = 0; i < 6; i++) {
		ps[np].k = oauth_reencoded(names[i], strlen(names[i]));
		ps[np++].v = oauth_reencoded(values[i], strlen(values[i]));
	}
	for (c = q; c != NULL && *c != '\0';) {
		size_t len = strcspn(c, "&");
		const char *eq = memchr(c, '=', len);

		if (len > 0) {
			ps[np].k = oauth_reencoded(c, eq != NULL ? (size_t)(eq - c) : len);
			ps[np++].v = eq != NULL ? oauth_reencoded(eq + 1, len - (size_t)(eq - c) - 1) :
			    oauth_reencoded("", 0);
		}
		c += len + (c[len] == '&');
	}
	qsort(ps, np, sizeof(*ps), oauth_param_cmp);
	for (i = 0; i < np; i++) {
		if (i > 0)
			buf_addc(list, '&');
		buf_adds(list, ps[i].k);
		buf_addc(list, '=');
		buf_adds(list, ps[i].v);
		free(ps[i].k);
		free(ps[i].v);
	}
	free(ps);
}

/* The Authorization header's value for an OAuth 1.0a request (RFC 5849
 * section 3.4, HMAC-SHA1): method on url, whose query parameters are
 * signed too; a JSON body is not. cred holds the consumer key, consumer
 * secret, access token and access token secret. */
static void
oauth_authorization(struct buf *out, const char *method, const char *url, const char *const cred[4],
    const char *nonce, const char *timestamp)
{
	static const char *const names[6] = { "oauth_consumer_key", "oauth_nonce", "oauth_signature_method",
		"oauth_timestamp", "oauth_token", "oauth_version" };
	const char *values[6] = { cred[0], nonce, "HMAC-SHA1", timestamp, cred[2], "1.0" };
	struct buf base = { 0 }, uri = { 0 }, list = { 0 }, key = { 0 };
	const char *q, *c, *path_end;
	size_t i;
	unsigned char mac[20];
	char sig[32], host[HOST_PORT_MAX];
	struct url u;

	if (url_parse(url, &u) < 0)
		die("cannot sign a request for '%s'", url);
	/* The base string URI: scheme and host in lowercase, the port only
	 * if it is not the scheme's own, the path without the query. */
	buf_adds(&uri, u.https ? "https://" : "http://");
	(void)host_port_format(host, sizeof(host), u.host, u.port, u.https ? "443" : "80");
	for (c = host; *c; c++)
		buf_addc(&uri, (char)tolower((unsigned char)*c));
	q = strchr(u.target, '?');
	path_end = q != NULL ? q : u.target + strlen(u.target);
	buf_add(&uri, u.target, (size_t)(path_end - u.target));

	oauth_param_list(&list, names, values, q != NULL ? q + 1 : NULL);
	buf_adds(&base, method);
	buf_addc(&base, '&');
	pct_encode(&base, uri.p, uri.len);
	buf_addc(&base, '&');
	pct_encode(&base, list.p, list.len);
	pct_encode(&key, cred[1], strlen(cred[1]));
	buf_addc(&key, '&');
	pct_encode(&key, cred[3], strlen(cred[3]));
	hmac_sha1(key.p, key.len, base.p, base.len, mac);
	sig[base64_encode(mac, sizeof(mac), sig)] = '\0';

	/* The header: the oauth_* parameters and the signature, sorted. */
	buf_adds(out, "OAuth ");
	for (i = 0; i < 6; i++) {
		if (i == 2) {
			buf_adds(out, "oauth_signature=\"");
			pct_encode(out, sig, strlen(sig));
			buf_adds(out, "\", ");
		}
		buf_adds(out, names[i]);
		buf_adds(out, "=\"");
		pct_encode(out, values[i], strlen(values[i]));
		buf_adds(out, i < 5 ? "\", " : "\"");
	}
	explicit_bzero(key.p, key.cap);
	buf_free(&key);
	buf_free(&base);
	buf_free(&uri);
	buf_free(&list);
}

enum x_auth { X_BEARER, X_USER };

/* A user-context call carried xwebhook login's OAuth 2.0 token (for
 * x_failure's hint). */
static int x_user_oauth2;

/* X's ids: 1 to 19 digits. */
static int
x_id_ok(const char *s)
{
	size_t n = strspn(s, "0123456789");

	return n >= 1 && n <= 19 && s[n] == '\0';
}

/* yyyymmddhhmm, a real minute (UTC). */
static int
x_date_ok(const char *s)
{
	int y, mo, d, h, mi;

	if (strspn(s, "0123456789") != 12 || s[12] != '\0' ||
	    sscanf(s, "%4d%2d%2d%2d%2d", &y, &mo, &d, &h, &mi) != 5)
		return 0;
	return y >= 2006 && mo >= 1 && mo <= 12 && d >= 1 &&
	    d <= (mo == 2 ? (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) ? 29 : 28) :
	    mo == 4 || mo == 6 || mo == 9 || mo == 11 ? 30 : 31) && h <= 23 && mi <= 59;
}

/* register URL: what X takes, before anything is sent. */
static void
x_register_args(const char *const *args)
{
	struct url w;

	if (url_parse(args[1], &w) < 0 || !w.https || strlen(args[1]) > 200)
		die("register: '%s': X takes https:// URLs of at most 200 bytes", args[1]);
	if (w.port[0] != '\0')
		die("register: '%s' names a port: X calls port 443 only, and refuses URLs with a port", args[1]);
}

/* register's JSON: the URL X is to call. */
static void
x_register_body(struct buf *body, const char *const *args)
{
	buf_adds(body, "{\"url\":\"");
	json_escape(body, args[1], strlen(args[1]));
	buf_adds(body, "\"}");
}

/* subscribe's JSON: X wants a body, and the user is the token's. */
static void
x_subscribe_body(struct buf *body, const char *const *args)
{
	(void)args;
	buf_adds(body, "{}");
}

/* replay WEBHOOK_ID FROM TO: two real minutes, in order. */
static void
x_replay_args(const char *const *args)
{
	int i;

	for (i = 2; i <= 3; i++)
		if (!x_date_ok(args[i]))
			die("replay: '%s' is not a UTC time as yyyymmddhhmm (e.g. %s)", args[i],
			    i == 2 ? "202611281200" : "202611281300");
	/* X's from_date is inclusive and to_date exclusive (the Account
	 * Activity quickstart): FROM..FROM is no minute at all. */
	if (strcmp(args[2], args[3]) >= 0)
		die("replay: TO %s must be after FROM %s (X replays from FROM's minute up to, not including, "
		    "TO's)", args[3], args[2]);
}

/* replay's JSON: the webhook and the window, as X's reference names them. */
static void
x_replay_body(struct buf *body, const char *const *args)
{
	buf_adds(body, "{\"webhook_id\":\"");
	buf_adds(body, args[1]);
	buf_adds(body, "\",\"from_date\":\"");
	buf_adds(body, args[2]);
	buf_adds(body, "\",\"to_date\":\"");
	buf_adds(body, args[3]);
	buf_adds(body, "\"}");
}

/* The X Activity API's event types (the enum of X's OpenAPI spec 2.167)
 * and what each takes. user: a private event, which needs user context
 * (the introduction's "Private events" list); the others are public, and
 * the app's Bearer token subscribes to them. scope: what an OAuth 2.0
 * user token must hold for it (the spec's POST description). filter:
 * 'u' user_id, 'k' keyword (news.new), 'd' user_id and direction (the
 * introduction's like.create row), 'a' user_id, the actor only (mute and
 * block: "direction is not supported"). */
static const struct xaa_event {
	const char *name;
	const char *scope;
	unsigned user : 1;
	char filter;
} xaa_events[] = {
	{ "profile.update.bio", "tweet.read", 0, 'u' },
	{ "profile.update.profile_picture", "tweet.read", 0, 'u' },
	{ "profile.update.banner_picture", "tweet.read", 0, 'u' },
	{ "profile.update.screenname", "tweet.read", 0, 'u' },
	{ "profile.update.geo", "tweet.read", 0, 'u' },
	{ "profile.update.url", "tweet.read", 0, 'u' },
	{ "profile.update.verified_badge", "tweet.read", 0, 'u' },
	{ "profile.update.affiliate_badge", "tweet.read", 0, 'u' },
	{ "profile.update.handle", "tweet.read", 0, 'u' },
	{ "news.new", "tweet.read", 0, 'k' },
	{ "follow.follow", "tweet.read", 0, 'u' },
	{ "follow.unfollow", "tweet.read", 0, 'u' },
	{ "spaces.start", "tweet.read", 0, 'u' },
	{ "spaces.end", "tweet.read", 0, 'u' },
	{ "broadcast.start", "tweet.read", 0, 'u' },
	{ "broadcast.end", "tweet.read", 0, 'u' },
	/* The spec: tweet.read ("all other event types"); the introduction:
	 * "requires ... the broadcast.read scope". */
	{ "broadcast.chat", "broadcast.read (or tweet.read, as X's API reference says)", 1, 'u' },
	{ "chat.received", "dm.read", 1, 'u' },
	{ "chat.sent", "dm.read", 1, 'u' },
	{ "chat.conversation.join", "dm.read", 1, 'u' },
	{ "chat.conversation_join", "dm.read", 1, 'u' },  /* deprecated: chat.conversation.join */
	{ "chat.conversation.member_added", "dm.read", 1, 'u' },
	{ "chat.conversation.member_removed", "dm.read", 1, 'u' },
	{ "chat.conversation.admin_added", "dm.read", 1, 'u' },
	{ "chat.conversation.admin_removed", "dm.read", 1, 'u' },
	{ "chat.update.group_name", "dm.read", 1, 'u' },
	{ "chat.update.restrictions", "dm.read", 1, 'u' },
	{ "dm.sent", "dm.read", 1, 'u' },
	{ "dm.received", "dm.read", 1, 'u' },
	{ "dm.indicate_typing", "dm.read", 1, 'u' },
	{ "dm.read", "dm.read", 1, 'u' },
	{ "post.create", "tweet.read", 0, 'u' },
	{ "post.delete", "tweet.read", 0, 'u' },
	{ "post.mention.create", "tweet.read", 1, 'u' },
	{ "post.reply.create", "tweet.read", 1, 'u' },
	{ "post.quote.create", "tweet.read", 1, 'u' },
	{ "post.repost.create", "tweet.read", 1, 'u' },
	{ "like.create", "like.read", 1, 'd' },
	{ "mute.mute", "mute.read", 1, 'a' },
	{ "mute.unmute", "mute.read", 1, 'a' },
	{ "block.block", "block.read", 1, 'a' },
	{ "block.unblock", "block.read", 1, 'a' },
};

/* The event type called name, or NULL. */
static const struct xaa_event *
xaa_event(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(xaa_events) / sizeof(xaa_events[0]); i++)
		if (strcmp(xaa_events[i].name, name) == 0)
			return &xaa_events[i];
	return NULL;
}

/* The characters (UTF-8 code points) of s, as X's minLength and
 * maxLength count them. */
static size_t
utf8_chars(const char *s)
{
	size_t n = 0;

	for (; *s; s++)
		n += ((unsigned char)*s & 0xc0) != 0x80;
	return n;
}

/* --tag and --webhook, which add and update share. */
static void
xaa_tag_webhook_args(const char *cmd)
{
	if (xaa_tag != NULL && (utf8_chars(xaa_tag) < 1 || utf8_chars(xaa_tag) > XAA_TAG_MAX))
		die("%s: --tag '%.40s%s' has %zu characters: X takes 1 to %d", cmd, xaa_tag,
		    strlen(xaa_tag) > 40 ? "..." : "", utf8_chars(xaa_tag), XAA_TAG_MAX);
	if (xaa_webhook != NULL && !x_id_ok(xaa_webhook))
		die("%s: --webhook '%s' is no webhook id: X's ids are 1 to 19 digits (xwebhook webhooks lists "
		    "them)", cmd, xaa_webhook);
}

/* activity add EVENT_TYPE: an event of the spec's enum, with the filter
 * that event takes, before anything is sent. */
static void
xaa_add_args(const char *const *args)
{
	const struct xaa_event *ev = xaa_event(args[1]);

	if (ev == NULL)
		die("activity add: '%s' is no X Activity event type (e.g. profile.update.bio, post.create, "
		    "follow.follow, like.create, dm.received, news.new; xwebhook(1) lists all %zu)", args[1],
		    sizeof(xaa_events) / sizeof(xaa_events[0]));
	if (ev->filter == 'k' && (xaa_keyword == NULL || xaa_user_id != NULL))
		die("activity add: %s is filtered by --keyword WORDS alone, not --user-id", ev->name);
	if (ev->filter != 'k' && (xaa_user_id == NULL || xaa_keyword != NULL))
		die("activity add: %s is filtered by --user-id ID alone (--keyword is for news.new)", ev->name);
	if (xaa_user_id != NULL && !x_id_ok(xaa_user_id))
		die("activity add: --user-id '%s' is no user id: X's ids are 1 to 19 digits", xaa_user_id);
	if (xaa_keyword != NULL && (utf8_chars(xaa_keyword) < 1 || utf8_chars(xaa_keyword) > XAA_KEYWORD_MAX))
		die("activity add: --keyword has %zu characters: X takes 1 to %d", utf8_chars(xaa_keyword),
		    XAA_KEYWORD_MAX);
	if (xaa_direction != NULL && ev->filter != 'd')
		die("activity add: %s takes no --direction (like.create alone does%s)", ev->name,
		    ev->filter == 'a' ? "; mute and block events are the actor's own" : "");
	if (xaa_direction != NULL && strcmp(xaa_direction, "inbound") != 0 && strcmp(xaa_direction, "outbound") != 0)
		die("activity add: --direction '%s': X takes inbound or outbound", xaa_direction);
	xaa_tag_webhook_args("activity add");
	if (strcmp(ev->name, "chat.conversation_join") == 0)
		fprintf(stderr, "%s: note: chat.conversation_join is the deprecated name of "
		    "chat.conversation.join, which X's answers use\n", progname);
}

/* A JSON member "name":"value", after a comma unless first. */
static void
json_add_string(struct buf *body, const char *name, const char *value, int first)
{
	buf_adds(body, first ? "\"" : ",\"");
	buf_adds(body, name);
	buf_adds(body, "\":\"");
	json_escape(body, value, strlen(value));
	buf_addc(body, '"');
}

/* activity add's JSON, under the spec's names (event_type, filter, tag,
 * webhook_id; additionalProperties is false, so nothing else). */
static void
xaa_add_body(struct buf *body, const char *const *args)
{
	buf_addc(body, '{');
	json_add_string(body, "event_type", args[1], 1);
	buf_adds(body, ",\"filter\":{");
	if (xaa_keyword != NULL)
		json_add_string(body, "keyword", xaa_keyword, 1);
	else
		json_add_string(body, "user_id", xaa_user_id, 1);
	if (xaa_direction != NULL)
		json_add_string(body, "direction", xaa_direction, 0);
	buf_addc(body, '}');
	if (xaa_tag != NULL)
		json_add_string(body, "tag", xaa_tag, 0);
	if (xaa_webhook != NULL)
		json_add_string(body, "webhook_id", xaa_webhook, 0);
	buf_addc(body, '}');
}

/* activity update SUBSCRIPTION_ID: something to change (X changes only
 * the tag and the webhook; a new filter is a new subscription). */
static void
xaa_update_args(const char *const *args)
{
	(void)args;
	if (xaa_tag == NULL && xaa_webhook == NULL)
		die("activity update: nothing to change: give --tag TEXT, --webhook ID or both (a new event "
		    "type or filter is a new subscription: activity delete, then activity add)");
	xaa_tag_webhook_args("activity update");
}

/* activity update's JSON: tag and webhook_id. */
static void
xaa_update_body(struct buf *body, const char *const *args)
{
	(void)args;
	buf_addc(body, '{');
	if (xaa_tag != NULL)
		json_add_string(body, "tag", xaa_tag, 1);
	if (xaa_webhook != NULL)
		json_add_string(body, "webhook_id", xaa_webhook, xaa_tag == NULL);
	buf_addc(body, '}');
}

/* stream link's options: the query parameters of the filtered stream
 * (GET /2/tweets/search/stream), which X's stream-webhooks quickstart says
 * a link takes ("query parameters identical to those used in the
 * streaming endpoint"), each with the values spec 2.167 lists there.
 * stream_fields[] holds what was given, in this order. */
static const struct {
	const char *option, *param;
	const char *values;  /* each between spaces */
} x_stream_fields[X_STREAM_FIELDS] = {
	{ "--tweet-fields", "tweet.fields", " article attachments author_id card_uri community_id context_annotations "
	  "conversation_id created_at display_text_range edit_controls edit_history_tweet_ids entities geo id "
	  "in_reply_to_user_id lang matched_media_notes media_metadata non_public_metrics note_request_suggestions "
	  "note_tweet organic_metrics paid_partnership possibly_sensitive promoted_metrics public_metrics "
	  "referenced_tweets reply_settings scopes source suggested_source_links suggested_source_links_with_counts "
	  "text withheld " },
	{ "--expansions", "expansions", " article.cover_media article.media_entities attachments.media_keys "
	  "attachments.media_source_tweet attachments.poll_ids author_id edit_history_tweet_ids "
	  "entities.mentions.username geo.place_id in_reply_to_user_id entities.note.mentions.username "
	  "referenced_tweets.id referenced_tweets.id.attachments.media_keys referenced_tweets.id.author_id " },
	{ "--media-fields", "media.fields", " alt_text duration_ms height media_key non_public_metrics organic_metrics "
	  "preview_image_url promoted_metrics public_metrics type url variants width " },
	{ "--poll-fields", "poll.fields", " duration_minutes end_datetime id options voting_status " },
	{ "--place-fields", "place.fields", " contained_within country country_code full_name geo id name place_type " },
	{ "--user-fields", "user.fields", " affiliation confirmed_email connection_status created_at description "
	  "entities id is_identity_verified location most_recent_tweet_id name parody pinned_tweet_id "
	  "profile_banner_url profile_image_url protected public_metrics receives_your_dm subscription "
	  "subscription_type url username verified verified_followers_count verified_type withheld " },
};

/* Which of x_stream_fields the option name is, or -1. */
static int
x_stream_field_option(const char *name)
{
	int k;

	for (k = 0; k < X_STREAM_FIELDS; k++)
		if (strcmp(name, x_stream_fields[k].option) == 0)
			return k;
	return -1;
}

/* stream link WEBHOOK_ID: each field list given is one or more of the
 * spec's values, comma-separated, none twice (the spec's uniqueItems). */
static void
x_stream_link_args(const char *const *args)
{
	size_t k;

	(void)args;
	for (k = 0; k < X_STREAM_FIELDS; k++) {
		const char *list = stream_fields[k], *w;

		for (w = list; w != NULL;) {
			size_t n = strcspn(w, ","), v = 0;
			char word[64];
			const char *seen;

			snprintf(word, sizeof(word), " %.*s ", (int)(n < 40 ? n : 40), w);
			if (n == 0 || n > 40 || strspn(w, "abcdefghijklmnopqrstuvwxyz._") < n ||
			    strstr(x_stream_fields[k].values, word) == NULL)
				die("stream link: %s: '%.*s' is not one of X's %s:%.*s", x_stream_fields[k].option,
				    (int)(n < 60 ? n : 60), w, x_stream_fields[k].param,
				    (int)strlen(x_stream_fields[k].values) - 1, x_stream_fields[k].values);
			for (seen = list; seen < w; seen += v + 1) {
				v = strcspn(seen, ",");
				if (v == n && memcmp(seen, w, n) == 0)
					die("stream link: %s names %.*s twice", x_stream_fields[k].option, (int)n, w);
			}
			w = w[n] == ',' ? w + n + 1 : NULL;
		}
	}
}

/* The stream link's query, "?tweet.fields=a,b&expansions=c", into path:
 * the lists as given (checked: only [a-z._,]), commas as X's example has
 * them. Nothing when none was given. */
static void
x_stream_query(struct buf *path)
{
	size_t k;
	char sep = '?';

	for (k = 0; k < X_STREAM_FIELDS; k++)
		if (stream_fields[k] != NULL) {
			buf_addc(path, sep);
			buf_adds(path, x_stream_fields[k].param);
			buf_addc(path, '=');
			buf_adds(path, stream_fields[k]);
			sep = '&';
		}
}

/* The subcommands: what each sends where, in X API v2's reference, and
 * what is particular to each. */
struct x_command {
	const char *name, *usage;
	int nargs;
	int ids;                 /* the first ids arguments are X's ids */
	const char *method;
	const char *path;        /* "%1" and "%2" are the first two arguments */
	enum x_auth auth;
	void (*check)(const char *const *args);              /* dies on bad arguments; or NULL */
	void (*body)(struct buf *body, const char *const *args);  /* the JSON sent; or NULL */
	char data;               /* what a 2xx's data is: '[' an array, '{' an object */
	unsigned crc : 1;        /* X runs a CRC for it: a failure may be the CRC's */
	unsigned invalid_fails : 1;  /* a 2xx whose data says valid: false fails */
	/* What a row cannot say (several requests, auth by argument): runs
	 * the command instead of cmd_x; or NULL. */
	int (*run)(const struct x_command *xc, const char *const *args);
	const char *forbidden;   /* added to a 403's line; or NULL */
};

static const struct x_command x_commands[] = {
	{ "webhooks", "", 0, 0, "GET", "/2/webhooks", X_BEARER, NULL, NULL, '[', 0, 0, NULL, NULL },
	{ "register", " URL", 1, 0, "POST", "/2/webhooks", X_BEARER, x_register_args, x_register_body, '{', 1, 0,
	    NULL, NULL },
	{ "validate", " WEBHOOK_ID", 1, 1, "PUT", "/2/webhooks/%1", X_BEARER, NULL, NULL, '{', 1, 1, NULL, NULL },
	{ "unregister", " WEBHOOK_ID", 1, 1, "DELETE", "/2/webhooks/%1", X_BEARER, NULL, NULL, '{', 0, 0, NULL, NULL },
	{ "subscribe", " WEBHOOK_ID", 1, 1, "POST", "/2/account_activity/webhooks/%1/subscriptions/all", X_USER,
	    NULL, x_subscribe_body, '{', 0, 0, NULL, NULL },
	{ "subscriptions", " WEBHOOK_ID", 1, 1, "GET", "/2/account_activity/webhooks/%1/subscriptions/all/list",
	    X_BEARER, NULL, NULL, '{', 0, 0, NULL, NULL },
	{ "unsubscribe", " WEBHOOK_ID USER_ID", 2, 2, "DELETE",
	    "/2/account_activity/webhooks/%1/subscriptions/%2/all", X_BEARER, NULL, NULL, '{', 0, 0, NULL, NULL },
	/* (FROM is checked as an id too before it is checked as a date) */
	{ "replay", " WEBHOOK_ID FROM TO", 3, 2, "POST", "/2/webhooks/replay", X_BEARER, x_replay_args,
	    x_replay_body, '{', 0, 0, NULL, NULL },
	{ "subscribed", " WEBHOOK_ID", 1, 1, "GET", "/2/account_activity/webhooks/%1/subscriptions/all", X_USER,
	    NULL, NULL, '{', 0, 0, NULL, NULL },
	{ "subscription-count", "", 0, 0, "GET", "/2/account_activity/subscriptions/count", X_BEARER, NULL, NULL,
	    '{', 0, 0, NULL, NULL },
	/* The X Activity API: subscriptions per event type and filter. data
	 * 's' is a subscription in any of the shapes X documents. nargs -1:
	 * one or more. */
	{ .name = "activity add", .nargs = 1, .method = "POST", .path = "/2/activity/subscriptions",
	    .usage = " EVENT_TYPE (--user-id ID | --keyword WORDS) [--direction inbound|outbound] [--tag TEXT] "
	    "[--webhook ID]", .auth = X_BEARER, .check = xaa_add_args, .body = xaa_add_body, .data = 's',
	    .run = xaa_add },
	/* %1: the page's query, after max_results */
	{ .name = "activity list", .usage = "", .nargs = 0, .method = "GET",
	    .path = "/2/activity/subscriptions?max_results=" STR(XAA_PAGE_MAX_N) "%1", .auth = X_BEARER,
	    .data = '[', .run = xaa_list },
	{ .name = "activity update", .usage = " SUBSCRIPTION_ID [--tag TEXT] [--webhook ID]", .nargs = 1, .ids = 1,
	    .method = "PUT", .path = "/2/activity/subscriptions/%1", .auth = X_BEARER, .check = xaa_update_args,
	    .body = xaa_update_body, .data = 's' },
	/* One id: DELETE .../%1; several: the bulk DELETE ?ids=%1, a,b,... */
	{ .name = "activity delete", .usage = " SUBSCRIPTION_ID...", .nargs = -1, .method = "DELETE",
	    .path = "/2/activity/subscriptions/%1", .auth = X_BEARER, .data = '{', .run = xaa_delete },
	/* Filtered-stream webhooks (Enterprise); links: spec 2.167's data is
	 * an array, the quickstart's an object holding links[] ('*': either). */
	{ "stream link", " WEBHOOK_ID [--tweet-fields LIST] [--expansions LIST] [--media-fields LIST] "
	  "[--poll-fields LIST] [--place-fields LIST] [--user-fields LIST]", 1, 1, "POST",
	    "/2/tweets/search/webhooks/%1", X_BEARER, x_stream_link_args, NULL, '{', 0, 0, NULL, NULL },
	{ "stream unlink", " WEBHOOK_ID", 1, 1, "DELETE", "/2/tweets/search/webhooks/%1", X_BEARER, NULL, NULL,
	    '{', 0, 0, NULL, NULL },
	{ "stream links", "", 0, 0, "GET", "/2/tweets/search/webhooks", X_BEARER, NULL, NULL, '*', 0, 0, NULL, NULL },
};

/* The row called name, or name and then sub (NULL: none) for the two-word
 * ones ("activity add"); NULL if none is. */
static const struct x_command *
x_command(const char *name, const char *sub)
{
	size_t i, nl = strlen(name);

	for (i = 0; i < sizeof(x_commands) / sizeof(x_commands[0]); i++) {
		const char *n = x_commands[i].name;

		if (strcmp(n, name) == 0 ||
		    (sub != NULL && strncmp(n, name, nl) == 0 && n[nl] == ' ' && strcmp(n + nl + 1, sub) == 0))
			return &x_commands[i];
	}
	return NULL;
}

/* A stream field option (--tweet-fields, ...) dies unless xc is stream
 * link. */
static void
x_stream_options_check(const struct x_command *xc)
{
	size_t k;

	for (k = 0; k < X_STREAM_FIELDS; k++)
		if (stream_fields[k] != NULL && (xc == NULL || xc->check != x_stream_link_args))
			die("%s goes with stream link WEBHOOK_ID only", x_stream_fields[k].option);
}

/* An environment variable's value, wiped from the environment (so that
 * /proc/PID/environ no longer has it), or NULL with its name added to
 * missing. */
static char *
x_credential(const char *name, struct buf *missing)
{
	char *v = getenv(name), *copy;

	if (v == NULL || *v == '\0') {
		if (missing->len > 0)
			buf_adds(missing, ", ");
		buf_adds(missing, name);
		return NULL;
	}
	copy = xstrdup(v);
	memset(v, 0, strlen(v));
	return copy;
}

/* Append the JSON member's text (a string's, decoded), escaped for a
 * terminal and at most 300 bytes of it, after sep. 1 if there was one. */
static int
x_say(struct buf *line, const char *sep, const struct json_object *o, const char *member)
{
	struct buf v = { 0 };
	int found = json_object_string(o, member, &v) == 0 && v.len > 0;

	if (found) {
		buf_adds(line, sep);
		log_escape(line, v.p, v.len < 300 ? v.len : 300);
		if (v.len > 300)
			buf_adds(line, "...");
	}
	buf_free(&v);
	return found;
}

/* What a failed CRC most likely means, from the words X used. */
static void
x_crc_hints(struct buf *line, const char *said)
{
	static const struct {
		const char *words, *hint;
	} hints[] = {
		{ "token|mismatch|response_token|json|sha256",
		  "the CRC answer did not match: the server's TWITTER_CONSUMER_SECRET must be this app's API Key "
		  "Secret (compare `xwebhook crc TOKEN` run with each)" },
		{ "latency|timeout|timed out|seconds|reach|connect|resolve|dns|refused",
		  "X could not reach the URL within 3 s: it must be public, on port 443 (try `xwebhook check URL` "
		  "from another network)" },
		{ "ssl|tls|certificate|handshake|chain",
		  "X refused the HTTPS setup: a publicly trusted certificate with its whole chain is needed "
		  "(fullchain.pem, not cert.pem; `xwebhook check URL` shows the chain)" },
		{ "non-200|response code|status|404|500",
		  "the URL answered, but not 200: is its path the server's --path (default /webhooks/twitter)?" },
	};
	size_t i, found = 0;

	for (i = 0; i < sizeof(hints) / sizeof(hints[0]); i++) {
		const char *w = hints[i].words;

		while (*w != '\0') {
			size_t wl = strcspn(w, "|");
			char word[32];

			snprintf(word, sizeof(word), "%.*s", (int)wl, w);
			if (strcasestr(said, word) != NULL) {
				buf_adds(line, found++ ? "; or " : "; likely: ");
				buf_adds(line, hints[i].hint);
				break;
			}
			w += wl + (w[wl] == '|');
		}
	}
	if (found == 0)
		buf_adds(line, "; likely: a wrong consumer secret on the server (compare `xwebhook crc TOKEN`), "
		    "the URL not reachable on port 443, or an incomplete certificate chain (`xwebhook check URL`)");
}

/* The one line for a call that did not succeed. */
static void
x_failure(const struct x_command *xc, const struct answer *a, const char *api)
{
	struct buf line = { 0 }, errs = { 0 }, said = { 0 }, el = { 0 };
	const char *b = a->body.p != NULL ? a->body.p : "";
	size_t n = a->body.len, at = 0, len;
	struct json_object o, eo;
	const char *reset;
	char num[96];

	snprintf(num, sizeof(num), "%s: %s answered %d", xc->name, api, a->status);
	buf_adds(&line, num);
	(void)json_object_parse(b, n, &o);
	x_say(&line, ": ", &o, "title");
	x_say(&line, ": ", &o, "detail");
	/* The reasons, each errors[] element's message (or its detail). */
	if (json_object_get(&o, "errors", &errs) == 0 && errs.len > 0 && errs.p[0] == '[') {
		buf_addc(&errs, '\0');
		while (json_array_next(errs.p, &at, &el)) {
			(void)json_object_parse(el.p, el.len, &eo);
			if (!x_say(&line, "; ", &eo, "message"))
				x_say(&line, "; ", &eo, "detail");
			json_object_free(&eo);
			el.len = 0;
		}
	}
	json_object_free(&o);
	if (line.len == strlen(num) && n > 0) {
		/* Not X's JSON: the start of what came, escaped. */
		buf_adds(&line, ": ");
		log_escape(&line, b, n < 200 ? n : 200);
	}
	if (a->status == 429 && (reset = answer_field(a, "x-rate-limit-reset", &len)) != NULL) {
		char stamp[32];
		time_t at_s = (time_t)strtoll(reset, NULL, 10);
		struct tm tm;

		if (at_s > 0 && gmtime_r(&at_s, &tm) != NULL) {
			strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
			snprintf(num, sizeof(num), "; the rate limit resets at %s (in %lld s)", stamp,
			    (long long)(at_s - time(NULL)));
			buf_adds(&line, num);
		}
	}
	if (a->status == 401 && xc->auth == X_USER && x_user_oauth2)
		buf_adds(&line, "; X refused the OAuth 2.0 user token: run xwebhook login");
	else if (a->status == 401 && xc->auth == X_USER)
		buf_adds(&line, "; check that TWITTER_ACCESS_TOKEN and TWITTER_ACCESS_TOKEN_SECRET belong to this "
		    "app (TWITTER_CONSUMER_KEY), and the clock: OAuth refuses timestamps far off");
	else if (a->status == 401)
		buf_adds(&line, "; check TWITTER_BEARER_TOKEN: the app's Bearer token");
	if (a->status == 403 && xc->forbidden != NULL)
		buf_adds(&line, xc->forbidden);
	buf_addc(&said, ' ');
	buf_add(&said, line.p, line.len);
	buf_addc(&said, '\0');
	if (xc->crc && strcasestr(said.p, "crc"))
		x_crc_hints(&line, said.p);
	buf_addc(&line, '\0');
	fprintf(stderr, "%s: %s\n", progname, line.p);
	buf_free(&line);
	buf_free(&errs);
	buf_free(&said);
	buf_free(&el);
}

/* The subscription in an X Activity API answer p[0, n), in whichever
 * of the shapes X documents: {"data":{"subscription":S}} (spec 2.167;
 * 2.166 with totals beside it), {"data":S} (the quickstart's create and
 * update), {"data":[S],"meta":...} (the quickstart's first create). S is
 * an object with a subscription_id. Into out (unless NULL) in the
 * current spec's shape, {"data":{"subscription":S}}: 0, or -1. */
static int
xaa_subscription(const char *p, size_t n, struct buf *out)
{
	struct buf data = { 0 }, sub = { 0 }, id = { 0 };
	size_t at = 0;
	int rc = -1;

	if (json_member(p, n, "data", &data) == 0 && data.len > 0) {
		buf_addc(&data, '\0');
		if (data.p[0] == '[')
			(void)json_array_next(data.p, &at, &sub);
		else if (json_member(data.p, data.len - 1, "subscription", &sub) < 0)
			buf_add(&sub, data.p, data.len - 1);
	}
	if (sub.len > 0 && sub.p[0] == '{' && json_member_string(sub.p, sub.len, "subscription_id", &id) == 0 &&
	    id.len > 0) {
		rc = 0;
		if (out != NULL) {
			buf_adds(out, "{\"data\":{\"subscription\":");
			buf_add(out, sub.p, sub.len);
			buf_adds(out, "}}");
		}
	}
	buf_free(&data);
	buf_free(&sub);
	buf_free(&id);
	return rc;
}

/* What a 2xx answer lacks, when it lacks what X's API reference has
 * in every 2xx of these calls (a JSON object with data: an object, or
 * for webhooks an array, left out only when meta.result_count is 0), in
 * words after "answered 200 "; NULL when it has it. body is valid JSON
 * or empty. */
static const char *
x_answer_lacks(const struct x_command *xc, const struct answer *a)
{
	struct buf data = { 0 }, meta = { 0 }, count = { 0 };
	int list = xc->data == '[', either = xc->data == '*';
	const char *lacks = NULL;
	struct json_object o;

	(void)json_object_parse(a->body.p, a->body.len, &o);
	if (a->body.len == 0)
		lacks = "with an empty body";
	else if (json_object_get(&o, "data", &data) < 0)
		lacks = list && json_object_get(&o, "meta", &meta) == 0 &&
		    json_member(meta.p, meta.len, "result_count", &count) == 0 && count.len == 1 && count.p[0] == '0' ?
		    NULL : "without a data member";
	else if (xc->data == 's')
		lacks = xaa_subscription(a->body.p, a->body.len, NULL) < 0 ?
		    "without a subscription in any of the shapes X documents" : NULL;
	else if (either && (data.len == 0 || (data.p[0] != '[' && data.p[0] != '{')))
		lacks = "with data that is neither an array nor an object";
	else if (!either && (data.len == 0 || data.p[0] != (list ? '[' : '{')))
		lacks = list ? "with data that is not an array" : "with data that is not an object";
	json_object_free(&o);
	buf_free(&data);
	buf_free(&meta);
	buf_free(&count);
	return lacks;
}

#ifdef XWEBHOOK_TLS
/* ---- OAuth 2.0 user context: login, logout, and the token's use ----
 *
 * login runs Authorization Code with PKCE (RFC 7636, S256) against X:
 * the browser approves at --auth-url and comes back to a loopback port
 * served here, the code is exchanged at --api's /2/oauth2/token, and the
 * token pair is kept in --state-dir/oauth2.token (0600, written
 * atomically, never through a link). A user-context call then carries it
 * as a Bearer token, refreshed under a lock on --state-dir/oauth2.lock
 * when it runs out, so that two runs refresh once. No token reaches
 * argv, stdout, stderr or the environment. */

#define OAUTH2_TOKEN_FILE "oauth2.token"
#define OAUTH2_TOKEN_TMP "oauth2.token.tmp"  /* state_write_at's temporary name */
#define OAUTH2_LOCK_FILE "oauth2.lock"

/* The scopes X's OAuth 2.0 knows (openapi.json's OAuth2UserToken, and
 * users.email from the authorization-code page). */
static const char *const oauth2_scopes[] = {
	"block.read", "block.write", "bookmark.read", "bookmark.write", "broadcast.read", "broadcast.write",
	"dm.read", "dm.write", "follows.read", "follows.write", "like.read", "like.write", "list.read",
	"list.write", "media.write", "mute.read", "mute.write", "offline.access", "space.read", "timeline.read",
	"tweet.moderate.write", "tweet.read", "tweet.write", "users.email", "users.read",
};

/* A user token: what X gave, and what refreshing it needs. */
struct oauth2_token {
	struct buf access, refresh, scope, client_id;  /* each NUL-ended */
	long long expires_at;                           /* Unix time */
	int confidential;                               /* refreshed with TWITTER_CLIENT_SECRET */
};

static void
oauth2_token_free(struct oauth2_token *t)
{
	if (t->access.p != NULL)
		explicit_bzero(t->access.p, t->access.cap);
	if (t->refresh.p != NULL)
		explicit_bzero(t->refresh.p, t->refresh.cap);
	buf_free(&t->access);
	buf_free(&t->refresh);
	buf_free(&t->scope);
	buf_free(&t->client_id);
}

/* The whole number that is member key's value in o, or -1. */
static long long
oauth2_number(const struct json_object *o, const char *key)
{
	struct buf v = { 0 };
	long long n = -1;

	if (json_object_get(o, key, &v) == 0 && v.len > 0 && v.len < 19) {
		buf_addc(&v, '\0');
		if (strspn(v.p, "0123456789") == v.len - 1)
			n = strtoll(v.p, NULL, 10);
	}
	buf_free(&v);
	return n;
}

/* Read the strings and times of a token from the JSON p[0, n) into t:
 * X's token answer (expires_in) or our file (expires_at, client_id,
 * confidential). 0, or -1 when it has no access_token. */
static int
oauth2_token_parse(const char *p, size_t n, struct oauth2_token *t)
{
	struct json_object o;
	long long in;
	int r = -1;

	if (json_object_parse(p, n, &o) == 0 && json_object_string(&o, "access_token", &t->access) == 0 &&
	    t->access.len > 0 && memchr(t->access.p, '\0', t->access.len) == NULL) {
		(void)json_object_string(&o, "refresh_token", &t->refresh);
		(void)json_object_string(&o, "scope", &t->scope);
		(void)json_object_string(&o, "client_id", &t->client_id);
		t->confidential = json_true(p, n, "confidential");
		in = oauth2_number(&o, "expires_in");
		t->expires_at = in >= 0 ? (long long)time(NULL) + in : oauth2_number(&o, "expires_at");
		r = 0;
	}
	buf_addc(&t->access, '\0');
	buf_addc(&t->refresh, '\0');
	buf_addc(&t->scope, '\0');
	buf_addc(&t->client_id, '\0');
	json_object_free(&o);
	return r;
}

/* Read --state-dir/oauth2.token (in dir) into t, never through a link:
 * 0, or -1 when there is none. Dies on anything else. */
static int
oauth2_token_load(int dir, struct oauth2_token *t)
{
	char shown[PATH_MAX + sizeof(OAUTH2_TOKEN_FILE) + 1];
	struct buf b = { 0 };
	int fd, r;

	memset(t, 0, sizeof(*t));
	snprintf(shown, sizeof(shown), "%s/" OAUTH2_TOKEN_FILE, state_dir);
	fd = state_entry_open(dir, OAUTH2_TOKEN_FILE, O_RDONLY | O_NONBLOCK | O_NOCTTY, shown, 0, NULL);
	if (fd < 0)
		return -1;
	r = read_all(fd, &b);
	close(fd);
	if (r < 0)
		die("cannot read %s:", shown);
	if (b.len > OAUTH2_FILE_MAX || oauth2_token_parse(b.p, b.len, t) < 0 || t->client_id.len <= 1)
		die("%s is not a token that xwebhook login stored: remove it and run xwebhook login", shown);
	explicit_bzero(b.p, b.cap);
	buf_free(&b);
	return 0;
}

/* Write t to --state-dir/oauth2.token (in dir): 0600, atomically. */
static void
oauth2_token_store(int dir, const struct oauth2_token *t)
{
	struct buf b = { 0 };
	char num[64];

	buf_adds(&b, "{\"access_token\":\"");
	json_escape(&b, t->access.p, strlen(t->access.p));
	buf_adds(&b, "\",\"refresh_token\":\"");
	json_escape(&b, t->refresh.p, strlen(t->refresh.p));
	snprintf(num, sizeof(num), "\",\"expires_at\":%lld,\"scope\":\"", t->expires_at);
	buf_adds(&b, num);
	json_escape(&b, t->scope.p, strlen(t->scope.p));
	buf_adds(&b, "\",\"client_id\":\"");
	json_escape(&b, t->client_id.p, strlen(t->client_id.p));
	buf_adds(&b, t->confidential ? "\",\"confidential\":true}\n" : "\",\"confidential\":false}\n");
	/* What a write cut off left (we hold the lock: no one else writes). */
	if (unlinkat(dir, OAUTH2_TOKEN_TMP, 0) < 0 && errno != ENOENT)
		die("cannot remove %s/" OAUTH2_TOKEN_TMP ":", state_dir);
	if (state_write_at(dir, OAUTH2_TOKEN_FILE, b.p, b.len) < 0)
		die("cannot write %s/" OAUTH2_TOKEN_FILE ":", state_dir);
	explicit_bzero(b.p, b.cap);
	buf_free(&b);
}

/* Take the lock on the token (--state-dir/oauth2.lock, in dir), waiting
 * for a run that holds it: whoever refreshes, logs in or out holds it.
 * The descriptor, whose close lets go. */
static int
oauth2_lock(int dir)
{
	char shown[PATH_MAX + sizeof(OAUTH2_LOCK_FILE) + 1];
	struct stat st;
	int fd;

	snprintf(shown, sizeof(shown), "%s/" OAUTH2_LOCK_FILE, state_dir);
	fd = openat(dir, OAUTH2_LOCK_FILE, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0600);
	if (fd < 0)
		die("cannot open %s:", shown);
	if (fstat(fd, &st) < 0)
		die("cannot stat %s:", shown);
	state_check(&st, shown, 0, NULL);
	while (flock(fd, LOCK_EX) < 0)
		if (errno != EINTR)
			die("cannot lock %s:", shown);
	return fd;
}

/* POST form to X's OAuth 2.0 endpoint path (/2/oauth2/token or
 * /2/oauth2/revoke) under --api: the client authenticates with HTTP
 * Basic when it has a secret (a confidential client), else it names
 * itself in the form. 0 with the answer in a, or -1 with why. */
static int
oauth2_post(const char *path, struct buf *form, const char *client_id, const char *secret, struct answer *a,
    char *why, size_t wn)
{
	static struct trust trust;
	static int trust_loaded;
	struct buf target = { 0 }, fields = { 0 }, pair = { 0 }, req = { 0 };
	struct client cl;
	struct url u;
	char *basic;
	int r;

	if (url_parse(api_base, &u) < 0 || !u.https || strchr(u.target, '?') != NULL)
		die("bad --api '%s': expected an https:// base URL without a query", api_base);
	if (!trust_loaded && trust_load(cacert_path, &trust) < 0)
		die("cannot load trusted certificates from %s", trust.path);
	trust_loaded = 1;
	buf_add(&target, u.target, strlen(u.target) - (u.target[strlen(u.target) - 1] == '/'));
	buf_adds(&target, path);
	buf_addc(&target, '\0');
	buf_adds(&fields, "User-Agent: xwebhook/" XWEBHOOK_VERSION "\r\nAccept: application/json\r\n"
	    "Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n");
	if (secret != NULL) {
		/* RFC 6749 2.3.1: each half form-encoded, then base64. */
		pct_encode(&pair, client_id, strlen(client_id));
		buf_addc(&pair, ':');
		pct_encode(&pair, secret, strlen(secret));
		basic = xmalloc(4 * ((pair.len + 2) / 3) + 1);
		basic[base64_encode((const unsigned char *)pair.p, pair.len, basic)] = '\0';
		buf_adds(&fields, "Authorization: Basic ");
		buf_adds(&fields, basic);
		buf_adds(&fields, "\r\n");
		explicit_bzero(basic, strlen(basic));
		free(basic);
		explicit_bzero(pair.p, pair.cap);
		buf_free(&pair);
	} else {
		buf_adds(form, "&client_id=");
		pct_encode(form, client_id, strlen(client_id));
	}
	buf_addc(&fields, '\0');
	http_request_head(&req, "POST", &u, target.p, fields.p, (long long)form->len);
	buf_add(&req, form->p, form->len);
	r = client_connect(&cl, u.host, u.port[0] ? u.port : "443", u.host, &trust, now_ms() + X_API_TIMEOUT_MS);
	if (r == 0)
		r = client_exchange(&cl, req.p, req.len, a);
	if (r < 0)
		snprintf(why, wn, "no answer from %s: %s", api_base, cl.why);
	client_close(&cl);
	explicit_bzero(fields.p, fields.cap);
	explicit_bzero(req.p, req.cap);
	explicit_bzero(form->p, form->cap);
	buf_free(&fields);
	buf_free(&req);
	buf_free(&target);
	return r;
}

/* What X said in a refusal from its OAuth 2.0 endpoints, escaped, after
 * "answered N": error and error_description, or the start of the body. */
static void
oauth2_refusal(struct buf *line, const struct answer *a)
{
	struct json_object o;
	char num[32];
	int said;

	snprintf(num, sizeof(num), " answered %d", a->status);
	buf_adds(line, num);
	(void)json_object_parse(a->body.p, a->body.len, &o);
	said = x_say(line, ": ", &o, "error");
	said |= x_say(line, ": ", &o, "error_description");
	if (!said && a->body.len > 0) {
		buf_adds(line, ": ");
		log_escape(line, a->body.p, a->body.len < 200 ? a->body.len : 200);
	}
	json_object_free(&o);
	buf_addc(line, '\0');
}

/* An environment variable's value taken out of the environment (as
 * x_credential does), or NULL when it is not set. */
static char *
oauth2_env(const char *name)
{
	struct buf unused = { 0 };
	char *v = x_credential(name, &unused);

	buf_free(&unused);
	return v;
}

/* Exchange form (a grant) at the token endpoint for a token into t,
 * keeping t's client and, when X sends no new one, its refresh token.
 * 0, or -1 with the line in why (what X said, escaped). */
static int
oauth2_grant(struct buf *form, struct oauth2_token *t, const char *secret, char *why, size_t wn)
{
	struct oauth2_token got;
	struct buf line = { 0 };
	struct answer a;

	if (oauth2_post("/2/oauth2/token", form, t->client_id.p, secret, &a, why, wn) < 0)
		return -1;
	memset(&got, 0, sizeof(got));
	if (a.status != 200 || oauth2_token_parse(a.body.p, a.body.len, &got) < 0) {
		buf_adds(&line, api_base);
		oauth2_refusal(&line, &a);
		snprintf(why, wn, "%s%s", line.p, a.status == 200 ? " (no access_token in it)" : "");
		buf_free(&line);
		oauth2_token_free(&got);
		if (a.body.p != NULL)
			explicit_bzero(a.body.p, a.body.cap);
		answer_free(&a);
		return -1;
	}
	if (a.body.p != NULL)
		explicit_bzero(a.body.p, a.body.cap);
	answer_free(&a);
	if (got.expires_at < 0)
		got.expires_at = (long long)time(NULL) + 7200;  /* X's lifetime, when it names none */
	if (got.refresh.len <= 1) {
		buf_free(&got.refresh);
		buf_add(&got.refresh, t->refresh.p, t->refresh.len);
	}
	buf_free(&got.client_id);
	buf_add(&got.client_id, t->client_id.p, t->client_id.len);
	got.confidential = t->confidential;
	oauth2_token_free(t);
	*t = got;
	return 0;
}

/* The client secret a confidential client's token needs to be refreshed
 * or revoked, from TWITTER_CLIENT_SECRET; NULL for a public client. Dies
 * naming the variable when it is missing. */
static char *
oauth2_secret_for(const struct oauth2_token *t, const char *cmd)
{
	char *secret = oauth2_env("TWITTER_CLIENT_SECRET");

	if (t->confidential && secret == NULL)
		die("%s: not set in the environment: TWITTER_CLIENT_SECRET (the login was a confidential "
		    "client's, whose token X refreshes and revokes only with the client secret)", cmd);
	if (!t->confidential && secret != NULL) {
		explicit_bzero(secret, strlen(secret));
		free(secret);
		secret = NULL;
	}
	return secret;
}

/* Refresh t (in dir, whose lock we hold) with its refresh token and
 * store the new pair; dies with "run xwebhook login" when X refuses. */
static void
oauth2_refresh(const char *cmd, int dir, struct oauth2_token *t)
{
	char why[600], *secret;
	struct buf form = { 0 };

	if (t->refresh.len <= 1)
		die("%s: the OAuth 2.0 token has run out, and there is no refresh token (a login without "
		    "offline.access): run xwebhook login", cmd);
	secret = oauth2_secret_for(t, cmd);
	buf_adds(&form, "grant_type=refresh_token&refresh_token=");
	pct_encode(&form, t->refresh.p, strlen(t->refresh.p));
	if (oauth2_grant(&form, t, secret, why, sizeof(why)) < 0)
		die("%s: X refused to refresh the OAuth 2.0 token (%s): run xwebhook login", cmd, why);
	if (secret != NULL) {
		explicit_bzero(secret, strlen(secret));
		free(secret);
	}
	buf_free(&form);
	oauth2_token_store(dir, t);
}

/* The OAuth 2.0 user token for a user-context call, into *bearer (to be
 * wiped and freed): refreshed first, under the lock, when it runs out
 * within OAUTH2_REFRESH_MARGIN_S. 1, or 0 when login stored none (OAuth
 * 1.0a then). A run that waited on the lock finds the token the other
 * refreshed, and uses it. */
static int
oauth2_user_bearer(const char *cmd, char **bearer)
{
	struct oauth2_token t;
	int dir = state_root_open(NULL, 0), lock;

	if (dir < 0)
		return 0;
	if (oauth2_token_load(dir, &t) < 0) {
		close(dir);
		return 0;
	}
	if (t.expires_at - (long long)time(NULL) <= OAUTH2_REFRESH_MARGIN_S) {
		lock = oauth2_lock(dir);
		oauth2_token_free(&t);
		if (oauth2_token_load(dir, &t) < 0)
			die("%s: %s/" OAUTH2_TOKEN_FILE " went away (xwebhook logout?): run xwebhook login", cmd,
			    state_dir);
		if (t.expires_at - (long long)time(NULL) <= OAUTH2_REFRESH_MARGIN_S)
			oauth2_refresh(cmd, dir, &t);
		close(lock);
	}
	*bearer = xmalloc(t.access.len);
	memcpy(*bearer, t.access.p, t.access.len);
	oauth2_token_free(&t);
	close(dir);
	return 1;
}

/* --scopes: known scope names, separated by spaces. */
static void
oauth2_scopes_check(void)
{
	const char *s = login_scopes;
	size_t n, k;

	if (strspn(s, " ") == strlen(s))
		die("bad --scopes '%s': expected scope names separated by spaces, such as '%s'", s,
		    "tweet.read users.read offline.access");
	while (*(s += strspn(s, " ")) != '\0') {
		n = strcspn(s, " ");
		for (k = 0; k < sizeof(oauth2_scopes) / sizeof(oauth2_scopes[0]); k++)
			if (strlen(oauth2_scopes[k]) == n && memcmp(oauth2_scopes[k], s, n) == 0)
				break;
		if (k == sizeof(oauth2_scopes) / sizeof(oauth2_scopes[0]))
			die("bad --scopes: '%.*s' is not one of X's OAuth 2.0 scopes (tweet.read, users.read, "
			    "offline.access, dm.read, like.read, mute.read, block.read, ...; see xwebhook(1))",
			    (int)(n < 100 ? n : 100), s);
		s += n;
	}
}

/* A number option of login: 1 to max, or def when not given. */
static unsigned
login_number(const char *v, const char *opt, unsigned def, unsigned max)
{
	char *end;
	long n;

	if (v == NULL)
		return def;
	errno = 0;
	n = strtol(v, &end, 10);
	if (errno != 0 || end == v || *end != '\0' || n < 1 || n > (long)max)
		die("bad %s '%s': expected 1 to %u", opt, v, max);
	return (unsigned)n;
}

/* PKCE's S256 challenge for verifier v[0, n) (RFC 7636 4.2): base64url,
 * unpadded, of its SHA-256, appended to out. */
static void
pkce_challenge(const char *v, size_t n, struct buf *out)
{
	unsigned char hash[32];
	struct digest d;

	sha256_init(&d);
	digest_update(&d, v, n);
	digest_final(&d, hash);
	b64url(out, hash, sizeof(hash));
}

/* Answer the browser on fd with a small page (st: its status), and close. */
static void
login_page(int fd, enum status st, const char *text)
{
	struct buf b = { 0 }, page = { 0 };
	char head[200];

	buf_adds(&page, "<!doctype html><title>xwebhook login</title><p>");
	buf_adds(&page, text);
	buf_adds(&page, "</p><p>You can close this tab.\n");
	snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\nContent-Type: text/html; charset=utf-8\r\n"
	    "Cache-Control: no-store\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n", statuses[st].code,
	    statuses[st].reason, page.len);
	buf_adds(&b, head);
	buf_add(&b, page.p, page.len);
	(void)write_all(fd, b.p, b.len);  /* the browser's loss, if it went away */
	buf_free(&page);
	buf_free(&b);
	close(fd);
}

/* Read one request head from the browser on fd by deadline, and answer
 * it: 1 with the code in code when it is the redirect, 0 for anything
 * else (a favicon, a bad request: the wait goes on). Dies when the
 * redirect's state is not ours or X says the login failed. */
static int
login_request(int fd, const char *state, struct buf *code, int64_t deadline)
{
	char got[OAUTH2_PARAM_MAX], err[OAUTH2_PARAM_MAX], desc[OAUTH2_PARAM_MAX];
	size_t scan = 0, line_end = 0, head_len = 0;
	struct buf in = { 0 }, line = { 0 };
	const char *why, *q;
	struct request req;
	enum status st = S_INCOMPLETE;
	long gn, en, dn, cn;
	ssize_t r;
	int64_t end = now_ms() + head_timeout < deadline ? now_ms() + head_timeout : deadline;

	while (st == S_INCOMPLETE) {
		buf_reserve(&in, 4096);
		if (in.len >= MAX_REQUEST_LINE + MAX_HEADER_BLOCK || wait_fd(fd, POLLIN, end, -1) != 0 ||
		    (r = read(fd, in.p + in.len, in.cap - in.len)) <= 0)
			break;
		in.len += (size_t)r;
		st = http_scan_head(in.p, in.len, &scan, &line_end, &head_len, &why);
	}
	if (st == S_OK)
		st = http_parse_head(in.p, head_len, &req, &why);
	if (st != S_OK || req.method != M_GET || req.path_len != 9 || memcmp(req.target, "/callback", 9) != 0) {
		login_page(fd, st == S_OK ? S_NOT_FOUND : S_BAD_REQUEST, "This is xwebhook login's redirect "
		    "URL, waiting for X's redirect to /callback.");
		buf_free(&in);
		return 0;
	}
	q = req.target + req.path_len + (req.target_len > req.path_len);
	gn = query_param(q, req.target_len - (size_t)(q - req.target), "state", got, sizeof(got));
	en = query_param(q, req.target_len - (size_t)(q - req.target), "error", err, sizeof(err));
	dn = query_param(q, req.target_len - (size_t)(q - req.target), "error_description", desc, sizeof(desc));
	buf_reserve(code, OAUTH2_PARAM_MAX);
	cn = query_param(q, req.target_len - (size_t)(q - req.target), "code", code->p, OAUTH2_PARAM_MAX);
	buf_free(&in);
	err[en >= 0 && (size_t)en < sizeof(err) ? (size_t)en : sizeof(err) - 1] = '\0';
	if (gn != (long)strlen(state) || !ct_equal(got, state, strlen(state))) {
		login_page(fd, S_BAD_REQUEST, "Refused: this redirect's state is not the one xwebhook sent.");
		die("login: the redirect's state is not the one sent (a stale or forged redirect): nothing stored");
	}
	if (en >= 0 || cn <= 0 || cn >= OAUTH2_PARAM_MAX) {
		login_page(fd, S_OK, "X did not grant the access: see the terminal.");
		buf_adds(&line, "login: X did not grant the access");
		if (en >= 0) {
			buf_adds(&line, ": ");
			log_escape(&line, err, strlen(err));
		}
		if (dn > 0) {
			buf_adds(&line, ": ");
			log_escape(&line, desc, (size_t)dn < sizeof(desc) ? (size_t)dn : sizeof(desc));
		}
		buf_addc(&line, '\0');
		die("%s%s: nothing stored", line.p, en >= 0 && strcmp(err, "access_denied") == 0 ?
		    " (the account did not approve the app)" : en < 0 ? ": the redirect has no code" : "");
	}
	code->len = (size_t)cn;
	buf_addc(code, '\0');
	login_page(fd, S_OK, "Approved: xwebhook has the code, and finishes in the terminal.");
	return 1;
}

/* Wait for the browser's redirect on lfd until deadline; the code into
 * code. Dies at the deadline. */
static void
login_callback(int lfd, const char *state, struct buf *code, int64_t deadline, unsigned wait_s)
{
	for (;;) {
		int fd, r = wait_fd(lfd, POLLIN, deadline, -1);

		if (r == IO_TIMEOUT)
			die("login: no redirect from the browser within %u s (--wait): nothing stored", wait_s);
		if (r < 0)
			die("login: poll:");
		fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0 && (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN))
			continue;
		if (fd < 0)
			die("login: accept:");
		if (login_request(fd, state, code, deadline))
			return;
	}
}

/* xwebhook login: Authorization Code with PKCE, the token stored. */
static int
cmd_login(void)
{
	unsigned port = login_number(login_port, "--port", LOGIN_PORT_DEFAULT, 65535);
	unsigned wait_s = login_number(login_wait, "--wait", LOGIN_WAIT_DEFAULT_S, LOGIN_WAIT_MAX_S);
	unsigned char raw[PKCE_VERIFIER_BYTES];
	struct buf verifier = { 0 }, challenge = { 0 }, state = { 0 }, url = { 0 }, redirect = { 0 };
	struct buf code = { 0 }, form = { 0 }, missing = { 0 };
	struct oauth2_token t;
	char spec[32], scratch[INET6_ADDRSTRLEN + 300], why[600], *secret;
	struct url au;
	int dir, lfd, lock;

	/* The arguments, before anything is read or sent. */
	oauth2_scopes_check();
	if (url_parse(auth_url, &au) < 0 || !au.https || strchr(au.target, '#') != NULL)
		die("bad --auth-url '%s': expected an https:// URL", auth_url);
	if (url_parse(api_base, &au) < 0 || !au.https || strchr(au.target, '?') != NULL)
		die("bad --api '%s': expected an https:// base URL without a query", api_base);
	memset(&t, 0, sizeof(t));
	if ((secret = x_credential("TWITTER_CLIENT_ID", &missing)) == NULL)
		die("login: not set in the environment: TWITTER_CLIENT_ID (the app's OAuth 2.0 Client ID, from "
		    "the developer portal's Keys and tokens)");
	buf_adds(&t.client_id, secret);
	buf_addc(&t.client_id, '\0');
	free(secret);
	secret = oauth2_env("TWITTER_CLIENT_SECRET");
	t.confidential = secret != NULL;
	dir = state_root_open(NULL, 1);
	snprintf(spec, sizeof(spec), "127.0.0.1:%u", port);
	lfd = listen_on(spec, scratch, sizeof(scratch));
	snprintf(scratch, sizeof(scratch), "http://127.0.0.1:%u/callback", port);
	buf_adds(&redirect, scratch);
	buf_addc(&redirect, '\0');

	/* PKCE (RFC 7636 4.1): the verifier, from the kernel's randomness. */
	entropy(raw, sizeof(raw));
	b64url(&verifier, raw, sizeof(raw));
	pkce_challenge(verifier.p, verifier.len, &challenge);
	entropy(raw, OAUTH2_STATE_BYTES);
	b64url(&state, raw, OAUTH2_STATE_BYTES);
	buf_addc(&state, '\0');
	explicit_bzero(raw, sizeof(raw));

	buf_adds(&url, auth_url);
	buf_adds(&url, strchr(auth_url, '?') != NULL ? "&" : "?");
	buf_adds(&url, "response_type=code&client_id=");
	pct_encode(&url, t.client_id.p, strlen(t.client_id.p));
	buf_adds(&url, "&redirect_uri=");
	pct_encode(&url, redirect.p, strlen(redirect.p));
	buf_adds(&url, "&scope=");
	pct_encode(&url, login_scopes, strlen(login_scopes));
	buf_adds(&url, "&state=");
	buf_adds(&url, state.p);
	buf_adds(&url, "&code_challenge=");
	buf_add(&url, challenge.p, challenge.len);
	buf_adds(&url, "&code_challenge_method=S256");
	buf_addc(&url, '\0');
	fprintf(stderr, "%s: login: the app's settings (User authentication, Callback URI) must list %s\n"
	    "%s: login: open this URL in a browser, sign in and approve (waiting %u s):\n%s\n", progname,
	    redirect.p, progname, wait_s, url.p);
	login_callback(lfd, state.p, &code, now_ms() + (int64_t)wait_s * 1000, wait_s);
	close(lfd);

	buf_adds(&form, "grant_type=authorization_code&code=");
	pct_encode(&form, code.p, strlen(code.p));
	buf_adds(&form, "&redirect_uri=");
	pct_encode(&form, redirect.p, strlen(redirect.p));
	buf_adds(&form, "&code_verifier=");
	buf_add(&form, verifier.p, verifier.len);
	if (oauth2_grant(&form, &t, secret, why, sizeof(why)) < 0)
		die("login: X did not give a token for the code (%s): nothing stored", why);
	lock = oauth2_lock(dir);
	oauth2_token_store(dir, &t);
	close(lock);
	fprintf(stderr, "%s: login: stored the token in %s/" OAUTH2_TOKEN_FILE " (scopes: %s); it lasts %lld "
	    "min%s\n", progname, state_dir, t.scope.p, (t.expires_at - (long long)time(NULL) + 30) / 60,
	    t.refresh.len > 1 ? " and is refreshed when it runs out" : "; no refresh token (offline.access "
	    "was not granted): run login again then");
	if (secret != NULL) {
		explicit_bzero(secret, strlen(secret));
		free(secret);
	}
	explicit_bzero(verifier.p, verifier.cap);
	explicit_bzero(code.p, code.cap);
	oauth2_token_free(&t);
	close(dir);
	buf_free(&verifier);
	buf_free(&challenge);
	buf_free(&state);
	buf_free(&url);
	buf_free(&redirect);
	buf_free(&code);
	buf_free(&form);
	buf_free(&missing);
	return 0;
}

/* Revoke one of t's tokens at X: 0, or -1 with the line in why. */
static int
oauth2_revoke(const struct oauth2_token *t, const struct buf *token, const char *hint, const char *secret,
    char *why, size_t wn)
{
	struct buf form = { 0 }, line = { 0 };
	struct answer a;

	buf_adds(&form, "token=");
	pct_encode(&form, token->p, strlen(token->p));
	buf_adds(&form, "&token_type_hint=");
	buf_adds(&form, hint);
	if (oauth2_post("/2/oauth2/revoke", &form, t->client_id.p, secret, &a, why, wn) < 0) {
		buf_free(&form);
		return -1;
	}
	buf_free(&form);
	if (a.status == 200) {
		answer_free(&a);
		return 0;
	}
	buf_adds(&line, api_base);
	oauth2_refusal(&line, &a);
	snprintf(why, wn, "%s", line.p);
	buf_free(&line);
	answer_free(&a);
	return -1;
}

/* xwebhook logout: revoke the stored tokens at X, and remove them here
 * (even when X could not be told: saying so). */
static int
cmd_logout(void)
{
	struct oauth2_token t;
	char why[600], *secret;
	int dir = state_root_open(NULL, 0), lock, rc = 0;

	if (dir < 0 || oauth2_token_load(dir, &t) < 0) {
		fprintf(stderr, "%s: logout: no token in %s/" OAUTH2_TOKEN_FILE ": nothing to do\n", progname,
		    state_dir);
		return 0;
	}
	secret = oauth2_secret_for(&t, "logout");
	lock = oauth2_lock(dir);
	oauth2_token_free(&t);
	if (oauth2_token_load(dir, &t) < 0) {
		fprintf(stderr, "%s: logout: no token in %s/" OAUTH2_TOKEN_FILE ": nothing to do\n", progname,
		    state_dir);
		close(lock);
		close(dir);
		return 0;
	}
	/* The refresh token first: revoking it ends the grant. */
	if ((t.refresh.len > 1 && oauth2_revoke(&t, &t.refresh, "refresh_token", secret, why, sizeof(why)) < 0) ||
	    oauth2_revoke(&t, &t.access, "access_token", secret, why, sizeof(why)) < 0) {
		fprintf(stderr, "%s: logout: X did not revoke the token (%s); removing it here anyway (X ends the "
		    "app's access at https://x.com/settings/connected_apps)\n", progname, why);
		rc = 1;
	}
	if (unlinkat(dir, OAUTH2_TOKEN_FILE, 0) < 0)
		die("logout: cannot remove %s/" OAUTH2_TOKEN_FILE ":", state_dir);
	fprintf(stderr, "%s: logout: %sremoved %s/" OAUTH2_TOKEN_FILE "\n", progname,
	    rc == 0 ? "X revoked the access and refresh tokens; " : "", state_dir);
	close(lock);
	if (secret != NULL) {
		explicit_bzero(secret, strlen(secret));
		free(secret);
	}
	oauth2_token_free(&t);
	close(dir);
	return rc;
}
#endif

/* The credentials xc needs, from the environment only: the consumer key
 * and secret and the access token and its secret into cred for X_USER,
 * the Bearer token into *bearer for X_BEARER. Each leaves the
 * environment, the ones xc does not use too; dies naming what is
 * missing. */
static void
x_credentials(const struct x_command *xc, char *cred[4], char **bearer)
{
	/* The ones this call does not use leave the environment too. */
	static const char *const all[] = { "TWITTER_BEARER_TOKEN", "TWITTER_CONSUMER_KEY", "TWITTER_ACCESS_TOKEN",
		"TWITTER_ACCESS_TOKEN_SECRET", "TWITTER_CLIENT_ID", "TWITTER_CLIENT_SECRET" };
	struct buf missing = { 0 }, secret = { 0 };
	size_t k;

	if (xc->auth == X_BEARER) {
		*bearer = x_credential("TWITTER_BEARER_TOKEN", &missing);
#ifdef XWEBHOOK_TLS
	} else if (oauth2_user_bearer(xc->name, bearer)) {
		x_user_oauth2 = 1;  /* xwebhook login's token, not OAuth 1.0a */
#endif
	} else {
		cred[0] = x_credential("TWITTER_CONSUMER_KEY", &missing);
		if (read_secret(&secret)) {
			buf_addc(&secret, '\0');
			cred[1] = secret.p;
			secret = (struct buf){ 0 };
		} else {
			if (missing.len > 0)
				buf_adds(&missing, ", ");
			buf_adds(&missing, "TWITTER_CONSUMER_SECRET");
		}
		cred[2] = x_credential("TWITTER_ACCESS_TOKEN", &missing);
		cred[3] = x_credential("TWITTER_ACCESS_TOKEN_SECRET", &missing);
	}
	for (k = 0; k < sizeof(all) / sizeof(all[0]); k++) {
		char *v = getenv(all[k]);

		if (v != NULL)
			memset(v, 0, strlen(v));
	}
	if (*bearer != NULL && read_secret(&secret)) {
		explicit_bzero(secret.p, secret.cap);
		buf_free(&secret);
	}
	if (missing.len > 0) {
		buf_addc(&missing, '\0');
		die("%s: not set in the environment: %s (%s)", xc->name, missing.p, xc->auth == X_BEARER ?
		    "the app's Bearer token, from the developer portal's Keys and tokens" :
		    "the app's API Key and Secret, and the subscribing account's Access Token and Secret; "
		    "or run xwebhook login");
	}
	buf_free(&missing);
}

/* xc's request with args to the API at u, whole, into req: its path,
 * its JSON body, and its Authorization (a Bearer token, or OAuth 1.0a
 * signed here). The credentials are wiped and freed once used. */
static void
x_request(const struct x_command *xc, const char *const *args, const struct url *u, char *cred[4], char *bearer,
    struct buf *req)
{
	struct buf path = { 0 }, body = { 0 }, fields = { 0 };
	char host[HOST_PORT_MAX];
	const char *p;
	int has_body;
	size_t k;

	p = u->target[1] != '\0' ? u->target : "";
	buf_add(&path, p, strlen(p) - (strlen(p) > 0 && p[strlen(p) - 1] == '/'));
	for (p = xc->path; *p; p++) {
		if (p[0] == '%' && (p[1] == '1' || p[1] == '2')) {
			buf_adds(&path, args[p[1] - '0']);
			p++;
		} else {
			buf_addc(&path, *p);
		}
	}
	x_stream_query(&path);
	buf_addc(&path, '\0');
	if (xc->body != NULL)
		xc->body(&body, args);
	buf_adds(&fields, "User-Agent: xwebhook/" XWEBHOOK_VERSION "\r\nAccept: application/json\r\nAuthorization: ");
	if (xc->auth == X_USER && bearer == NULL) {
		unsigned char raw[16];
		char nonce[2 * sizeof(raw) + 1], stamp[24];
		struct buf url = { 0 };

		/* A fresh nonce and the time, every request. */
		entropy(raw, sizeof(raw));
		hex_encode(raw, sizeof(raw), nonce);
		snprintf(stamp, sizeof(stamp), "%lld", (long long)time(NULL));
		(void)host_port_format(host, sizeof(host), u->host, u->port, "443");
		buf_adds(&url, "https://");
		buf_adds(&url, host);
		buf_adds(&url, path.p);
		buf_addc(&url, '\0');
		oauth_authorization(&fields, xc->method, url.p, (const char *const *)cred, nonce, stamp);
		buf_free(&url);
		for (k = 0; k < 4; k++) {
			explicit_bzero(cred[k], strlen(cred[k]));
			free(cred[k]);
		}
	} else {
		buf_adds(&fields, "Bearer ");
		buf_adds(&fields, bearer);
		explicit_bzero(bearer, strlen(bearer));
		free(bearer);
	}
	buf_adds(&fields, "\r\nConnection: close\r\n");
	has_body = body.len > 0 || strcmp(xc->method, "PUT") == 0 || strcmp(xc->method, "POST") == 0;
	if (has_body)
		buf_adds(&fields, "Content-Type: application/json\r\n");
	buf_addc(&fields, '\0');
	http_request_head(req, xc->method, u, path.p, fields.p, has_body ? (long long)body.len : -1);
	buf_add(req, body.p, body.len);
	explicit_bzero(fields.p, fields.cap);
	buf_free(&fields);
	buf_free(&path);
	buf_free(&body);
}

/* JSON in out with DEL and the C1 controls (U+0080 to U+009F), which
 * valid JSON can carry raw and terminals act on, as \u escapes: inside
 * strings, where alone they can be, the JSON means the same. */
static void
x_terminal_safe(const struct buf *in, struct buf *out)
{
	char esc[8];
	size_t k;

	for (k = 0; k < in->len; k++) {
		unsigned char ch = (unsigned char)in->p[k];

		if (ch == 0x7f || (ch == 0xc2 && k + 1 < in->len && (unsigned char)in->p[k + 1] >= 0x80 &&
		    (unsigned char)in->p[k + 1] <= 0x9f)) {
			snprintf(esc, sizeof(esc), "\\u%04x", ch == 0x7f ? 0x7f : (unsigned char)in->p[++k]);
			buf_adds(out, esc);
		} else {
			buf_addc(out, (char)ch);
		}
	}
}

/* Say on stderr that a 2xx's body is start, the first of it escaped. */
static void
x_unexpected(const struct x_command *xc, const struct answer *a, const char *start, const char *end)
{
	struct buf e = { 0 };

	log_escape(&e, a->body.p, a->body.len < 200 ? a->body.len : 200);
	buf_addc(&e, '\0');
	fprintf(stderr, "%s: %s: %s answered %d %s%s%s%s\n", progname, xc->name, api_base, a->status, start,
	    a->body.len > 0 ? ": " : "", e.p, end);
	buf_free(&e);
}

/* A 2xx answer: X's JSON on stdout in the fmt layout, or one line on
 * stderr when it is not what X's API sends (or says the webhook is not
 * valid). The exit status. */
static int
x_success(const struct x_command *xc, const struct answer *a)
{
	struct buf out = { 0 }, data = { 0 }, valid = { 0 }, safe = { 0 }, shaped = { 0 };
	struct json_object o;
	const char *why, *said, *p = a->body.p;
	char err[160], text[240];
	size_t n = a->body.len;
	int has_data, rc = 1;

	(void)json_object_parse(a->body.p, a->body.len, &o);
	has_data = json_object_get(&o, "data", &data) == 0;
	if (xc->data == 's' && xaa_subscription(p, n, &shaped) == 0) {
		p = shaped.p;  /* one shape on stdout, whichever X sent */
		n = shaped.len;
	}
	if (a->body.len > 0 && json_event(p, n, JSON_INDENT, &out, err, sizeof(err)) < 0) {
		snprintf(text, sizeof(text), "with something that is not JSON (%s)", err);
		x_unexpected(xc, a, text, "");
	} else if (!has_data && json_object_get(&o, "errors", &valid) == 0) {
		x_failure(xc, a, api_base);  /* a 2xx that only carries errors */
	} else if ((why = x_answer_lacks(xc, a)) != NULL) {
		x_unexpected(xc, a, why, ", where X's API sends a JSON object with data: the outcome is unknown");
	} else {
		x_terminal_safe(&out, &safe);
		rc = 0;
		if (write_all(STDOUT_FILENO, safe.p, safe.len) < 0)
			die("cannot write to stdout:");
		/* validate: spec 2.167 answers valid, older ones attempted;
		 * true says only that X ran the CRC (cmd_x asks how it went). */
		said = !has_data || !xc->invalid_fails ? "" :
		    json_member(data.p, data.len, "valid", &valid) == 0 ? "valid" :
		    json_member(data.p, data.len, "attempted", &valid) == 0 ? "attempted" : NULL;
		if (said == NULL) {
			x_unexpected(xc, a, "without data.valid or data.attempted", ": the outcome is unknown");
			rc = 1;
		} else if (has_data && xc->invalid_fails && !(valid.len == 4 && memcmp(valid.p, "true", 4) == 0)) {
			struct buf line = { 0 };

			snprintf(text, sizeof(text), "validate: X answered %s: %s: its CRC against the webhook's URL "
			    "failed or did not run, and the webhook is not valid: it gets no events", said,
			    valid.len == 5 && memcmp(valid.p, "false", 5) == 0 ? "false" : "(not a boolean)");
			buf_adds(&line, text);
			x_crc_hints(&line, "crc");
			buf_addc(&line, '\0');
			fprintf(stderr, "%s: %s\n", progname, line.p);
			buf_free(&line);
			rc = 1;
		}
	}
	json_object_free(&o);
	buf_free(&out);
	buf_free(&data);
	buf_free(&valid);
	buf_free(&safe);
	buf_free(&shaped);
	return rc;
}

/* The checks of a subcommand before anything is read or sent (its
 * arguments, --api), dying on the first with one line; the API's URL
 * into u. */
static void
x_prepare(const struct x_command *xc, const char *const *args, struct url *u)
{
	int i;

#ifndef XWEBHOOK_TLS
	die("%s: X's API is HTTPS only, and this build has no TLS: build with make TLS=1", xc->name);
#endif
	for (i = 1; i <= xc->ids; i++)
		if (!x_id_ok(args[i]))
			die("%s: '%s' is no %s: X's ids are 1 to 19 digits (xwebhook %s lists them)", xc->name,
			    args[i], i == 2 && xc->nargs == 2 ? "user id" : xc->check == xaa_update_args ?
			    "subscription id" : "webhook id", xc->check == xaa_update_args ? "activity list" : "webhooks");
	if (xc->check != NULL)
		xc->check(args);
	if (url_parse(api_base, u) < 0 || !u->https || strchr(u->target, '?') != NULL)
		die("bad --api '%s': expected an https:// base URL without a query", api_base);
}

/* One request of xc with args to the API at u, its answer into a; dies
 * with one line when none came. cred and bearer are wiped and freed. */
static void
x_call(const struct x_command *xc, const char *const *args, const struct url *u, char *cred[4], char *bearer,
    struct answer *a)
{
#ifdef XWEBHOOK_TLS
	static struct trust trust;
	static int loaded;
	const void *roots = &trust;
#else
	const void *roots = NULL;
#endif
	struct buf req = { 0 };
	struct client cl;

	x_request(xc, args, u, cred, bearer, &req);
#ifdef XWEBHOOK_TLS
	if (!loaded && trust_load(cacert_path, &trust) < 0)
		die("%s: cannot load trusted certificates from %s", xc->name, trust.path);
	loaded = 1;
#endif
	if (client_connect(&cl, u->host, u->port[0] ? u->port : "443", u->host, roots,
	    now_ms() + X_API_TIMEOUT_MS) < 0 || client_exchange(&cl, req.p, req.len, a) < 0) {
		explicit_bzero(req.p, req.cap);
		die("%s: no answer from %s: %s", xc->name, api_base, cl.why);
	}
	client_close(&cl);
	explicit_bzero(req.p, req.cap);
	buf_free(&req);
}

/* What X's list of webhooks (a 2xx of GET /2/webhooks) says of one. */
enum x_listed { X_LISTED_VALID, X_LISTED_INVALID, X_NOT_LISTED };

static enum x_listed
x_webhook_listed(const struct answer *a, const char *id)
{
	struct buf data = { 0 }, el = { 0 }, v = { 0 };
	enum x_listed r = X_NOT_LISTED;
	struct json_object o;
	size_t at = 0;

	(void)json_object_parse(a->body.p, a->body.len, &o);
	if (json_object_get(&o, "data", &data) == 0) {
		buf_addc(&data, '\0');
		while (r == X_NOT_LISTED && json_array_next(data.p, &at, &el)) {
			if (json_member_string(el.p, el.len, "id", &v) == 0 && v.len > 0 && v.len == strlen(id) &&
			    memcmp(v.p, id, v.len) == 0)
				r = json_true(el.p, el.len, "valid") ? X_LISTED_VALID : X_LISTED_INVALID;
			el.len = v.len = 0;
		}
	}
	json_object_free(&o);
	buf_free(&data);
	buf_free(&el);
	buf_free(&v);
	return r;
}

/* validate's outcome, which the PUT's answer does not give (spec 2.167:
 * valid "indicates whether the CRC validation check was triggered"):
 * what X's list of webhooks (GET /2/webhooks, with the Bearer token
 * bearer, wiped and freed here) says of id, asked every
 * x_validate_poll_ms until it lists it valid, or no longer lists it, or
 * x_validate_wait_ms have passed. The exit status. */
static int
x_validate_confirm(const struct x_command *xc, const char *id, const struct url *u, char *bearer)
{
	int64_t deadline = now_ms() + x_validate_wait_ms;
	struct x_command row = *x_command("webhooks", NULL);
	enum x_listed seen = X_NOT_LISTED;
	const char *const none[3] = { "webhooks", "", "" };  /* (words for %1 and %2, which it has not) */
	char *cred[4] = { NULL, NULL, NULL, NULL };
	const char *lacks;
	struct answer a;
	char line[320];
	int rc = 1;

	row.name = xc->name;  /* its lines are validate's */
	for (;;) {
		struct timespec pause = { x_validate_poll_ms / 1000, (long)(x_validate_poll_ms % 1000) * 1000000 };

		x_call(&row, none, u, cred, xstrdup(bearer), &a);
		if (a.status < 200 || a.status > 299 || (lacks = x_answer_lacks(x_command("webhooks", NULL), &a)) != NULL) {
			if (a.status < 200 || a.status > 299)
				x_failure(xc, &a, api_base);
			else
				x_unexpected(xc, &a, lacks, " to GET /2/webhooks, which was to say whether the CRC passed: "
				    "the outcome is unknown");
			answer_free(&a);
			goto out;
		}
		seen = x_webhook_listed(&a, id);
		answer_free(&a);
		if (seen != X_LISTED_INVALID || now_ms() + x_validate_poll_ms > deadline)
			break;
		while (nanosleep(&pause, &pause) < 0)
			if (errno != EINTR)
				die("validate: nanosleep:");
	}
	if (seen == X_LISTED_VALID) {
		rc = 0;
	} else if (seen == X_NOT_LISTED) {
		fprintf(stderr, "%s: validate: X does not list webhook %s among the app's webhooks (GET /2/webhooks): "
		    "it was deleted, or the outcome is unknown\n", progname, id);
	} else {
		struct buf l = { 0 };

		snprintf(line, sizeof(line), "validate: the CRC failed: X lists webhook %s as not valid, asked for "
		    "%lld s after the PUT that ran it (GET /2/webhooks), so it gets no events", id,
		    (long long)(x_validate_wait_ms / 1000));
		buf_adds(&l, line);
		x_crc_hints(&l, "crc");
		buf_addc(&l, '\0');
		fprintf(stderr, "%s: %s\n", progname, l.p);
		buf_free(&l);
	}
out:
	explicit_bzero(bearer, strlen(bearer));
	free(bearer);
	return rc;
}

/* Run one subcommand: args[0] is its name. The exit status. */
static int
cmd_x(const struct x_command *xc, const char *const *args)
{
	char *cred[4] = { NULL, NULL, NULL, NULL }, *bearer = NULL, *again = NULL;
	struct answer a;
	struct url u;
	int rc;

	x_prepare(xc, args, &u);
	x_credentials(xc, cred, &bearer);
	if (xc->invalid_fails)
		again = xstrdup(bearer);  /* validate asks X's list of webhooks afterwards */
	x_call(xc, args, &u, cred, bearer, &a);
	if (a.status >= 200 && a.status <= 299) {
		rc = x_success(xc, &a);
	} else {
		x_failure(xc, &a, api_base);
		rc = 1;
	}
	answer_free(&a);
	if (again != NULL) {
		if (rc == 0)
			return x_validate_confirm(xc, args[1], &u, again);
		explicit_bzero(again, strlen(again));
		free(again);
	}
	return rc;
}

/* activity add: public events with the app's Bearer token, private ones
 * (the introduction's list) in user context; a 403 names the scope. */
static int
xaa_add(const struct x_command *xc, const char *const *args)
{
	const struct xaa_event *ev = xaa_event(args[1]);
	struct x_command row = *xc;
	char hint[400];

	if (ev != NULL) {
		row.auth = ev->user ? X_USER : X_BEARER;
		snprintf(hint, sizeof(hint), ev->user ? "; %s is a private event: it needs user context, a token "
		    "of the user who authorized this app, holding the scope %s" : "; %s is public: the app's Bearer "
		    "token should do (a user token would need the scope %s)", ev->name, ev->scope);
		row.forbidden = hint;
	}
	return cmd_x(&row, args);
}

/* activity list: every page, following meta.next_token, printed as one
 * answer, {"data":[...],"meta":{"result_count":N}}, in the fmt layout. */
static int
xaa_list(const struct x_command *xc, const char *const *args)
{
	char *cred[4] = { NULL, NULL, NULL, NULL }, *bearer = NULL;
	struct buf all = { 0 }, token = { 0 }, query = { 0 }, out = { 0 }, safe = { 0 };
	const char *page[3] = { args[0], "", "" };  /* (a word for %2 too, which x_request could read) */
	size_t count = 0;
	int pages, rc = 1;
	struct url u;
	char err[160], num[64];

	x_prepare(xc, args, &u);
	x_credentials(xc, cred, &bearer);
	buf_adds(&all, "{\"data\":[");
	for (pages = 0; pages < XAA_PAGES_MAX; pages++) {
		struct buf data = { 0 }, meta = { 0 }, next = { 0 }, el = { 0 };
		size_t at = 0;
		struct answer a;

		x_call(xc, page, &u, cred, xstrdup(bearer), &a);
		if (a.status < 200 || a.status > 299 || x_answer_lacks(xc, &a) != NULL) {
			/* x_success says what is wrong with a 2xx, and prints nothing */
			if (a.status < 200 || a.status > 299)
				x_failure(xc, &a, api_base);
			else
				(void)x_success(xc, &a);
			answer_free(&a);
			goto out;
		}
		if (json_member(a.body.p, a.body.len, "data", &data) == 0) {
			buf_addc(&data, '\0');
			while (json_array_next(data.p, &at, &el)) {
				if (count++ > 0)
					buf_addc(&all, ',');
				buf_add(&all, el.p, el.len);
				el.len = 0;
			}
		}
		(void)json_member(a.body.p, a.body.len, "meta", &meta);
		if (meta.len > 0 && json_member_string(meta.p, meta.len, "next_token", &next) == 0 &&
		    next.len > 0 && (next.len != token.len || memcmp(next.p, token.p, next.len) != 0)) {
			token.len = 0;
			buf_add(&token, next.p, next.len);
			query.len = 0;
			buf_adds(&query, "&pagination_token=");
			pct_encode(&query, token.p, token.len);
			buf_addc(&query, '\0');
			page[1] = query.p;
		} else {
			page[1] = NULL;
		}
		answer_free(&a);
		buf_free(&data);
		buf_free(&meta);
		buf_free(&next);
		buf_free(&el);
		if (page[1] == NULL)
			break;
	}
	if (pages == XAA_PAGES_MAX) {
		fprintf(stderr, "%s: %s: X gave a next_token after %d pages: stopped (at most %d)\n", progname,
		    xc->name, XAA_PAGES_MAX, XAA_PAGES_MAX);
		goto out;
	}
	snprintf(num, sizeof(num), "],\"meta\":{\"result_count\":%zu}}", count);
	buf_adds(&all, num);
	if (json_event(all.p, all.len, JSON_INDENT, &out, err, sizeof(err)) < 0)
		die("%s: X's pages do not join into JSON (%s)", xc->name, err);
	x_terminal_safe(&out, &safe);
	if (write_all(STDOUT_FILENO, safe.p, safe.len) < 0)
		die("cannot write to stdout:");
	rc = 0;
out:
	explicit_bzero(bearer, strlen(bearer));
	free(bearer);
	buf_free(&all);
	buf_free(&token);
	buf_free(&query);
	buf_free(&out);
	buf_free(&safe);
	return rc;
}

/* activity delete ID...: one id, DELETE .../ID; several, X's bulk DELETE
 * ?ids=a,b, which deletes what it can and names each failure in errors[]:
 * then exit status 1, with the failures in one line. */
static int
xaa_delete(const struct x_command *xc, const char *const *args)
{
	struct x_command row = *xc;
	struct buf ids = { 0 }, errs = { 0 }, el = { 0 }, line = { 0 };
	const char *bulk[3] = { args[0], NULL, "" };  /* the path has no %2 */
	char *cred[4] = { NULL, NULL, NULL, NULL }, *bearer = NULL;
	size_t at = 0, failed = 0;
	struct answer a;
	struct url u;
	int i, rc;

	for (i = 1; args[i] != NULL; i++) {
		if (!x_id_ok(args[i]))
			die("%s: '%s' is no subscription id: X's ids are 1 to 19 digits (xwebhook activity list "
			    "lists them)", xc->name, args[i]);
		if (i > XAA_IDS_MAX)
			die("%s: at most %d ids at once (X's bulk delete takes no more)", xc->name, XAA_IDS_MAX);
		if (i > 1)
			buf_addc(&ids, ',');
		buf_adds(&ids, args[i]);
	}
	buf_addc(&ids, '\0');
	if (i == 2) {
		buf_free(&ids);
		return cmd_x(xc, args);
	}
	row.path = "/2/activity/subscriptions?ids=%1";
	row.data = '[';
	bulk[1] = ids.p;
	x_prepare(&row, bulk, &u);
	x_credentials(&row, cred, &bearer);
	x_call(&row, bulk, &u, cred, bearer, &a);
	if (a.status < 200 || a.status > 299) {
		x_failure(&row, &a, api_base);
		rc = 1;
	} else if ((rc = x_success(&row, &a)) == 0 && json_member(a.body.p, a.body.len, "errors", &errs) == 0 &&
	    errs.len > 0 && errs.p[0] == '[') {
		/* Deleted what it could: the rest, named. */
		buf_addc(&errs, '\0');
		while (json_array_next(errs.p, &at, &el)) {
			struct json_object eo;

			(void)json_object_parse(el.p, el.len, &eo);
			buf_adds(&line, failed++ ? "; " : "");
			if (!x_say(&line, "", &eo, "subscription_id"))
				buf_adds(&line, "?");
			if (!x_say(&line, ": ", &eo, "message"))
				x_say(&line, ": ", &eo, "reason");
			json_object_free(&eo);
			el.len = 0;
		}
		buf_addc(&line, '\0');
		fprintf(stderr, "%s: %s: X did not delete %zu of the %d: %s\n", progname, xc->name, failed, i - 1,
		    line.p);
		rc = 1;
	}
	answer_free(&a);
	buf_free(&ids);
	buf_free(&errs);
	buf_free(&el);
	buf_free(&line);
	return rc;
}

#ifdef XWEBHOOK_TLS

/* ------------------------------------------------------------------------
 * [ACME] ACME (RFC 8555): --acme DOMAIN gets a certificate for DOMAIN from
 * an ACME CA and keeps it renewed, from a thread of its own: the loops
 * never wait on the CA. Validation is tls-alpn-01 (RFC 8737) on the
 * serving port, or http-01 on --acme-http. The account key, the
 * certificate and its key live in --state-dir, under certbot's names.
 * Requests go through the file's HTTP client; JWS signatures are ES256
 * over P-256 keys made from getrandom(); the DER of a CSR and of the
 * tls-alpn-01 certificate is written here, as BearSSL writes neither.
 * Calls [CLIENT], [DER], and [TLS]'s hooks (challenge_set_alpn,
 * identity_install).
 * ------------------------------------------------------------------------ */

enum {
	ACME_BACKOFF_MIN_S = 30,     /* after a failed attempt; doubling */
	ACME_BACKOFF_MAX_S = 3600,
	ACME_POLL_LIMIT_S = 180,     /* an authorization or order pending longer fails the attempt */
	ACME_NONCE_RETRIES = 10,     /* badNonce: try again with the nonce that came with it */
	ACME_URL_MAX = 1024,
	ACME_RETRY_AFTER_MAX_S = 86400, /* the longest Retry-After taken from the CA */
	ACME_CLOCK_SKEW_S = 300,     /* how far the CA's clock may be ahead of ours */
	ACME_FLOOR_FRACTION = 3,     /* a new certificate serves at least this fraction of its lifetime... */
	ACME_FLOOR_MAX_S = 86400,    /* ...or this long, whichever is shorter, before it is renewed */
	ACME_ORDERS_PER_WEEK = 5,    /* certificates issued per domain per week: Let's Encrypt's duplicate-certificate limit */
	ACME_WEEK_S = 7 * 86400,
	ACME_ORDERS_FILE_MAX = 4096, /* the orders file holds 5 short lines: anything larger is not ours */
	ACME_FLOOR_MARGIN_S = 60,    /* the renewal floor is at least this long before notAfter (< ACME_CLOCK_SKEW_S) */
	DER_HEAD_MAX = 5,            /* a tag and a length of up to 24 bits: what the DER written here needs */
	DER_DEPTH_MAX = 10,          /* values open at once: a CSR's SAN is 9 deep */
	ALPN_SERIAL_LEN = 16,        /* the tls-alpn-01 certificate's serial: 126 random bits */
};

/* ---- DER, written ---- */

/* The tag and length that open a DER value of n bytes, written to h;
 * how many bytes they take. */
static size_t
der_head(unsigned char h[DER_HEAD_MAX], unsigned char tag, size_t n)
{
	size_t k = 0;

	h[k++] = tag;
	if (n < 0x80) {
		h[k++] = (unsigned char)n;
	} else if (n < 0x100) {
		h[k++] = 0x81;
		h[k++] = (unsigned char)n;
	} else if (n < 0x10000) {
		h[k++] = 0x82;
		h[k++] = (unsigned char)(n >> 8);
		h[k++] = (unsigned char)n;
	} else {
		h[k++] = 0x83;
		h[k++] = (unsigned char)(n >> 16);
		h[k++] = (unsigned char)(n >> 8);
		h[k++] = (unsigned char)n;
	}
	return k;
}

/* DER being written to b: the constructed values still open, innermost
 * last, each with its tag and where its contents start. A builder opens
 * a value, writes what it holds, and closes it; the tag and the length
 * go in front then, so each piece is written once, in order. */
struct der {
	struct buf *b;
	size_t at[DER_DEPTH_MAX];
	unsigned char tag[DER_DEPTH_MAX];
	size_t depth;
};

/* Write the value p[0, n) under tag. */
static void
der_put(struct der *w, unsigned char tag, const void *p, size_t n)
{
	unsigned char h[DER_HEAD_MAX];
	size_t k = der_head(h, tag, n);

	buf_add(w->b, h, k);
	buf_add(w->b, p, n);
}

/* Open a constructed value under tag: what is written next is its
 * contents, until der_close. */
static void
der_open(struct der *w, unsigned char tag)
{
	assert(w->depth < DER_DEPTH_MAX);
	w->at[w->depth] = w->b->len;
	w->tag[w->depth++] = tag;
}

/* Close the n innermost open values, each with its tag and the length of
 * what was written since it opened in front. */
static void
der_close(struct der *w, size_t n)
{
	struct buf *b = w->b;

	assert(n <= w->depth);
	while (n-- > 0) {
		unsigned char h[DER_HEAD_MAX];
		size_t at = w->at[--w->depth], k = der_head(h, w->tag[w->depth], b->len - at);

		if (buf_reserve(b, k) < 0)
			return;
		memmove(b->p + at + k, b->p + at, b->len - at);
		memcpy(b->p + at, h, k);
		b->len += k;
	}
}

/* The OIDs and fixed pieces, DER-encoded. */
static const unsigned char alg_ecdsa_sha256[] = {  /* AlgorithmIdentifier { ecdsa-with-SHA256 } */
	0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02 };
static const unsigned char spki_p256_head[] = {  /* SEQUENCE { ecPublicKey, prime256v1 }, BIT STRING head */
	0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
	0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00 };
static const unsigned char oid_common_name[] = { 0x06, 0x03, 0x55, 0x04, 0x03 };
static const unsigned char oid_san[] = { 0x06, 0x03, 0x55, 0x1d, 0x11 };
static const unsigned char oid_extension_request[] = {
	0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e };
static const unsigned char oid_acme_identifier[] = {  /* 1.3.6.1.5.5.7.1.31, RFC 8737 */
	0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f };

/* A P-256 key pair. */
struct ec_key {
	br_ec_private_key sk;
	br_ec_public_key pk;
	unsigned char x[BR_EC_KBUF_PRIV_MAX_SIZE], q[BR_EC_KBUF_PUB_MAX_SIZE];
};

static int
ec_key_generate(struct ec_key *k)
{
	br_hmac_drbg_context rng;
	unsigned char seed[48];

	entropy(seed, sizeof(seed));
	br_hmac_drbg_init(&rng, &br_sha256_vtable, seed, sizeof(seed));
	explicit_bzero(seed, sizeof(seed));
	if (br_ec_keygen(&rng.vtable, br_ec_get_default(), &k->sk, k->x, BR_EC_secp256r1) == 0 ||
	    br_ec_compute_pub(br_ec_get_default(), &k->pk, k->q, &k->sk) != 65)
		return -1;
	explicit_bzero(&rng, sizeof(rng));
	return 0;
}

/* Read a P-256 private key from PEM text: 0, or -1. */
static int
ec_key_parse(const char *text, size_t n, struct ec_key *k)
{
	struct pem_object *objs = NULL;
	size_t count = 0, i;
	int ok = -1;

	if (pem_decode(text, n, &objs, &count) < 0)
		return -1;
	for (i = 0; i < count && ok < 0; i++) {
		br_skey_decoder_context dc;
		const br_ec_private_key *sk;

		br_skey_decoder_init(&dc);
		br_skey_decoder_push(&dc, objs[i].der.p, objs[i].der.len);
		if (br_skey_decoder_last_error(&dc) != 0 || br_skey_decoder_key_type(&dc) != BR_KEYTYPE_EC)
			continue;
		sk = br_skey_decoder_get_ec(&dc);
		if (sk->curve != BR_EC_secp256r1 || sk->xlen > sizeof(k->x))
			continue;
		memcpy(k->x, sk->x, sk->xlen);
		k->sk.curve = sk->curve;
		k->sk.x = k->x;
		k->sk.xlen = sk->xlen;
		ok = br_ec_compute_pub(br_ec_get_default(), &k->pk, k->q, &k->sk) == 65 ? 0 : -1;
		explicit_bzero(&dc, sizeof(dc));
	}
	for (i = 0; i < count; i++)
		if (objs[i].der.len > 0)
			explicit_bzero(objs[i].der.p, objs[i].der.len);
	pem_free(objs, count);
	return ok;
}

/* The key as PEM ("EC PRIVATE KEY", RFC 5915), appended to out. */
static void
ec_key_pem(const struct ec_key *k, struct buf *out)
{
	unsigned char der[256];
	size_t dn = br_encode_ec_raw_der(der, &k->sk, &k->pk), pn;

	pn = br_pem_encode(NULL, der, dn, "EC PRIVATE KEY", BR_PEM_LINE64);
	buf_reserve(out, pn + 1);
	if (!out->failed) {
		br_pem_encode(out->p + out->len, der, dn, "EC PRIVATE KEY", BR_PEM_LINE64);
		out->len += pn;
	}
	explicit_bzero(der, sizeof(der));
}

/* An ECDSA signature with SHA-256 over p[0, n): raw r||s (64 bytes, for
 * JWS), or DER (for X.509). Its length, or 0. */
static size_t
ec_sign(const struct ec_key *k, const void *p, size_t n, int der, unsigned char *sig)
{
	struct digest d;
	unsigned char h[32];

	sha256_init(&d);
	digest_update(&d, p, n);
	digest_final(&d, h);
	return der ? br_ecdsa_sign_asn1_get_default()(br_ec_get_default(), &br_sha256_vtable, h, &k->sk, sig) :
	    br_ecdsa_sign_raw_get_default()(br_ec_get_default(), &br_sha256_vtable, h, &k->sk, sig);
}

/* The SubjectPublicKeyInfo of k. */
static void
der_spki(struct der *w, const struct ec_key *k)
{
	der_open(w, 0x30);
	buf_add(w->b, spki_p256_head, sizeof(spki_p256_head));
	buf_add(w->b, k->pk.q, k->pk.qlen);
	der_close(w, 1);
}

/* Name ::= SEQUENCE { SET { SEQUENCE { CN, UTF8String name } } }. */
static void
der_name(struct der *w, const char *name)
{
	der_open(w, 0x30);
	der_open(w, 0x31);
	der_open(w, 0x30);
	buf_add(w->b, oid_common_name, sizeof(oid_common_name));
	der_put(w, 0x0c, name, strlen(name));
	der_close(w, 3);
}

/* Extension subjectAltName = dNSName name:
 * SEQUENCE { OID, OCTET STRING { SEQUENCE { [2] name } } }. */
static void
der_san(struct der *w, const char *name)
{
	der_open(w, 0x30);
	buf_add(w->b, oid_san, sizeof(oid_san));
	der_open(w, 0x04);
	der_open(w, 0x30);
	der_put(w, 0x82, name, strlen(name));
	der_close(w, 3);
}

/* Sign the innermost open value's contents (a TBSCertificate or a
 * CertificationRequestInfo, closed) with k and close it as a Certificate
 * or CertificationRequest: SEQUENCE { tbs, ecdsa-with-SHA256, BIT STRING
 * signature }. On failure what it held is taken back. */
static int
der_signed(struct der *w, const struct ec_key *k)
{
	struct buf *b = w->b;
	unsigned char sig[80 + 1];
	size_t at, sn;

	assert(w->depth > 0);
	at = w->at[w->depth - 1];
	if (b->failed || b->len == at || (sn = ec_sign(k, b->p + at, b->len - at, 1, sig + 1)) == 0) {
		b->len = at;
		w->depth--;
		return -1;
	}
	sig[0] = 0;  /* no unused bits */
	buf_add(b, alg_ecdsa_sha256, sizeof(alg_ecdsa_sha256));
	der_put(w, 0x03, sig, sn + 1);
	der_close(w, 1);
	return 0;
}

/* A CSR for name (RFC 2986), its key k, asking for a subjectAltName;
 * appended to out. */
static int
csr_der(struct buf *out, const char *name, const struct ec_key *k)
{
	struct der w = { .b = out };

	der_open(&w, 0x30);                           /* CertificationRequest */
	der_open(&w, 0x30);                           /* CertificationRequestInfo */
	der_put(&w, 0x02, "\0", 1);                   /* version 0 */
	der_name(&w, name);
	der_spki(&w, k);
	der_open(&w, 0xa0);                           /* [0] attributes */
	der_open(&w, 0x30);                           /* Attribute */
	buf_add(out, oid_extension_request, sizeof(oid_extension_request));
	der_open(&w, 0x31);                           /* SET { Extensions } */
	der_open(&w, 0x30);                           /* Extensions */
	der_san(&w, name);
	der_close(&w, 5);                             /* ...through the CertificationRequestInfo */
	return der_signed(&w, k);
}

/* UTCTime of t. */
static void
der_utc_time(struct der *w, time_t t)
{
	struct tm tm;
	char s[16];

	gmtime_r(&t, &tm);
	strftime(s, sizeof(s), "%y%m%d%H%M%SZ", &tm);
	der_put(w, 0x17, s, 13);
}

/* The tls-alpn-01 certificate (RFC 8737, 3): self-signed by k, for name,
 * with the critical acmeIdentifier extension holding SHA-256 of the key
 * authorization; serial and now as given, so a test can know the bytes.
 * Appended to out. */
static int
alpn_cert_make(struct buf *out, const char *name, const char *key_auth, const struct ec_key *k,
    const unsigned char serial[ALPN_SERIAL_LEN], time_t now)
{
	struct der w = { .b = out };
	unsigned char h[32];
	struct digest d;

	der_open(&w, 0x30);                           /* Certificate */
	der_open(&w, 0x30);                           /* TBSCertificate */
	der_open(&w, 0xa0);                           /* [0] version 3 */
	der_put(&w, 0x02, "\2", 1);
	der_close(&w, 1);
	der_put(&w, 0x02, serial, ALPN_SERIAL_LEN);
	buf_add(out, alg_ecdsa_sha256, sizeof(alg_ecdsa_sha256));
	der_name(&w, name);                           /* issuer */
	der_open(&w, 0x30);                           /* validity */
	der_utc_time(&w, now - 86400);
	der_utc_time(&w, now + 7 * 86400);
	der_close(&w, 1);
	der_name(&w, name);                           /* subject */
	der_spki(&w, k);
	der_open(&w, 0xa3);                           /* [3] extensions */
	der_open(&w, 0x30);
	der_san(&w, name);
	der_open(&w, 0x30);                           /* acmeIdentifier, critical */
	buf_add(out, oid_acme_identifier, sizeof(oid_acme_identifier));
	der_put(&w, 0x01, "\xff", 1);
	sha256_init(&d);
	digest_update(&d, key_auth, strlen(key_auth));
	digest_final(&d, h);
	der_open(&w, 0x04);
	der_put(&w, 0x04, h, sizeof(h));              /* Authorization ::= OCTET STRING */
	der_close(&w, 5);                             /* ...through the TBSCertificate */
	return der_signed(&w, k);
}

/* The tls-alpn-01 certificate for name, with a fresh random serial, valid
 * from a day ago for a week. */
static int
alpn_cert_der(struct buf *out, const char *name, const char *key_auth, const struct ec_key *k)
{
	unsigned char serial[ALPN_SERIAL_LEN];

	entropy(serial, sizeof(serial));
	serial[0] &= 0x7f;                            /* positive */
	serial[0] |= 0x40;                            /* and minimal */
	return alpn_cert_make(out, name, key_auth, k, serial, time(NULL));
}

/* Step into the value at *p (before *end), which must be tagged tag:
 * *p and *end then bound its contents. 0, or -1. */
static int
der_enter(const unsigned char **p, const unsigned char **end, unsigned tag)
{
	const unsigned char *v;
	size_t len;
	unsigned t;

	if (der_next(p, *end, &t, &v, &len) < 0 || t != tag)
		return -1;
	*p = v;
	*end = v + len;
	return 0;
}

/* The contents, from *val to *vend, of the SEQUENCE that is the value
 * (the extnValue's contents) of the certificate's extension whose OID is
 * the three bytes oid (2.5.29.x; both read here are SEQUENCEs), and its
 * serial number's DER value. 0, or -1 when either is missing. */
static int
der_extension(const unsigned char *der, size_t n, const char *oid, const unsigned char **val,
    const unsigned char **vend, const unsigned char **serial, size_t *slen)
{
	const unsigned char *p, *end, *v;
	size_t len;
	unsigned tag;

	*serial = NULL;
	if (der_tbs(der, n, &p, &end) < 0)
		return -1;
	/* version, serial, signature, issuer, validity, subject, key: then
	 * the optional unique ids and [3] extensions. */
	while (p < end && der_next(&p, end, &tag, &v, &len) == 0) {
		if (tag == 0x02 && *serial == NULL) {
			*serial = v;
			*slen = len;
		}
		if (tag != 0xa3)
			continue;
		p = v;
		end = v + len;
		if (der_enter(&p, &end, 0x30) < 0)
			return -1;
		/* Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT
		 * FALSE, extnValue OCTET STRING } */
		while (p < end && der_next(&p, end, &tag, &v, &len) == 0) {
			const unsigned char *q = v, *qe = v + len, *ov;
			size_t ol;
			unsigned t;

			if (der_next(&q, qe, &t, &ov, &ol) < 0 || t != 0x06 || ol != 3 || memcmp(ov, oid, 3) != 0)
				continue;
			if (der_next(&q, qe, &t, &ov, &ol) == 0 && t == 0x01 && der_next(&q, qe, &t, &ov, &ol) < 0)
				return -1;
			if (t != 0x04 || *serial == NULL)
				return -1;
			*val = ov;
			*vend = ov + ol;
			return der_enter(val, vend, 0x30);
		}
		return -1;
	}
	return -1;
}

/* Does the DER certificate name dns (a dNSName in its subjectAltName)? */
static int
cert_names(const unsigned char *der, size_t n, const char *dns)
{
	const unsigned char *v, *q, *qe, *serial;
	size_t len, slen;
	unsigned tag;

	if (der_extension(der, n, "\x55\x1d\x11", &q, &qe, &serial, &slen) < 0)
		return 0;
	while (q < qe && der_next(&q, qe, &tag, &v, &len) == 0)
		if (tag == 0x82 && len == strlen(dns) && strncasecmp((const char *)v, dns, len) == 0)
			return 1;
	return 0;
}

/* ---- JWS (RFC 7515) with ES256, and the JWK thumbprint (RFC 7638) ---- */

/* base64url without padding, appended to b. */
static void
b64url(struct buf *b, const void *p, size_t n)
{
	char *t = xmalloc(4 * ((n + 2) / 3) + 1);
	size_t k, m = base64_encode(p, n, t);

	for (k = 0; k < m && t[k] != '='; k++)
		buf_addc(b, t[k] == '+' ? '-' : t[k] == '/' ? '_' : t[k]);
	free(t);
}

/* {"crv":"P-256","kty":"EC","x":"...","y":"..."}: the members in the
 * order RFC 7638 hashes them. */
static void
jwk(struct buf *b, const struct ec_key *k)
{
	buf_adds(b, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"");
	b64url(b, k->pk.q + 1, 32);
	buf_adds(b, "\",\"y\":\"");
	b64url(b, k->pk.q + 33, 32);
	buf_adds(b, "\"}");
}

/* The state of our side of the CA. */
struct acme {
	struct trust trust;
	char new_nonce[ACME_URL_MAX], new_account[ACME_URL_MAX], new_order[ACME_URL_MAX];
	char renewal_info[ACME_URL_MAX];
	char kid[ACME_URL_MAX];      /* the account's URL */
	char nonce[256];
	struct ec_key account;
	char thumbprint[48];
	long retry_after;            /* the last answer's Retry-After, in seconds (or -1) */
	char location[ACME_URL_MAX]; /* the last answer's Location */
	char replaces[200];          /* ARI's id of the certificate being renewed */
};

/* ---- files in --state-dir ----
 *
 * What is trusted: the path up to the state directory's parent, as the
 * admin typed it, is followed. The state directory itself and everything
 * in it may be --user's doing (it owns them, and can plant links there),
 * so nothing there is followed: at start, state_open opens the two
 * directories once, with O_NOFOLLOW, checks each file and removes the
 * *.tmp that a cut-off write left, and from then on every file is reached
 * relative to those descriptors, never by its path. */

#define STATE_TMP ".tmp"  /* the suffix of a file being written */

static int state_fd = -1;   /* --state-dir, open */
static int domain_fd = -1;  /* --state-dir/DOMAIN, open */

/* The files kept in --state-dir and in its DOMAIN directory: each is
 * checked, and given to --user, at start (a new file goes here too). */
static const char *const state_files[] = { "account.key", NULL };
static const char *const domain_files[] = { "fullchain.pem", "privkey.pem", "orders", NULL };

/* The directory descriptor of a path in --state-dir or in its DOMAIN
 * directory (as state_path makes them), and the file's name there; -1
 * with EINVAL for any other path, EBADF before acme_prepare. */
static int
state_at(const char *path, const char **name)
{
	size_t sl = strlen(state_dir), dl = acme_domain != NULL ? strlen(acme_domain) : 0;
	const char *rest;

	if (state_fd < 0 || domain_fd < 0) {
		errno = EBADF;
		return -1;
	}
	errno = EINVAL;
	if (strncmp(path, state_dir, sl) != 0 || path[sl] != '/')
		return -1;
	rest = path + sl + 1;
	if (dl > 0 && strncmp(rest, acme_domain, dl) == 0 && rest[dl] == '/') {
		*name = rest + dl + 1;
		return **name != '\0' && strchr(*name, '/') == NULL ? domain_fd : -1;
	}
	*name = rest;
	return *rest != '\0' && strchr(rest, '/') == NULL ? state_fd : -1;
}

/* Write name in the directory dir atomically (a temporary file, fsynced,
 * renamed), mode 0600. The temporary file is always a new one (O_EXCL,
 * O_NOFOLLOW); one that a signal or a crash cut off is removed at the
 * next start (state_sweep). A link planted at name is replaced, never
 * followed. */
static int
state_write_at(int dir, const char *name, const void *p, size_t n)
{
	char tmp[NAME_MAX + 1];
	int fd, len, saved;

	len = snprintf(tmp, sizeof(tmp), "%s" STATE_TMP, name);
	if (len < 0 || (size_t)len >= sizeof(tmp)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	fd = openat(dir, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	if (write_all(fd, p, n) < 0 || fsync(fd) < 0) {
		saved = errno;
		close(fd);
		unlinkat(dir, tmp, 0);
		errno = saved;
		return -1;
	}
	close(fd);
	if (renameat(dir, tmp, dir, name) < 0) {
		saved = errno;
		unlinkat(dir, tmp, 0);
		errno = saved;
		return -1;
	}
	return 0;
}

/* Write path, in --state-dir or its DOMAIN directory, as state_write_at
 * does. */
static int
state_write(const char *path, const void *p, size_t n)
{
	const char *name = NULL;
	int dir = state_at(path, &name);

	return dir < 0 ? -1 : state_write_at(dir, name, p, n);
}

/* Read a regular file in --state-dir, never through a link, of at most
 * max bytes (0: any size): 0, or -1 with errno (ENOENT when there is
 * none, EFBIG when it is larger than max). */
static int
state_read_max(const char *path, struct buf *b, size_t max)
{
	const char *name = NULL;
	int dir = state_at(path, &name), fd, r;
	struct stat st;

	if (dir < 0)
		return -1;
	fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) < 0) {
		r = errno;
		close(fd);
		errno = r;
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		errno = EINVAL;
		return -1;
	}
	if (max > 0 && (uintmax_t)st.st_size > max) {
		close(fd);
		errno = EFBIG;
		return -1;
	}
	r = read_all(fd, b);
	close(fd);
	if (r == 0 && max > 0 && b->len > max) {  /* it grew after fstat */
		errno = EFBIG;
		return -1;
	}
	return r;
}

/* Read a regular file in --state-dir, of any size (see state_read_max). */
static int
state_read(const char *path, struct buf *b)
{
	return state_read_max(path, b, 0);
}

/* Whether uid may own what is in --state-dir: root, or who we run as now
 * or after --user. */
static int
state_owner_ok(uid_t uid, const struct passwd *owner)
{
	return uid == 0 || uid == geteuid() || (owner != NULL && uid == owner->pw_uid);
}

/* Die, in one line naming shown, unless st is a directory (dir) or a
 * regular file with no other name, owned by root or --user. */
static void
state_check(const struct stat *st, const char *shown, int dir, const struct passwd *owner)
{
	if (S_ISLNK(st->st_mode))
		die("--state-dir: %s is a symbolic link; refusing to follow it", shown);
	if (dir && !S_ISDIR(st->st_mode))
		die("--state-dir: %s is not a directory", shown);
	if (!dir && !S_ISREG(st->st_mode))
		die("--state-dir: %s is not a regular file", shown);
	if (!state_owner_ok(st->st_uid, owner))
		die("--state-dir: %s belongs to uid %lu, neither root nor %s%s", shown, (unsigned long)st->st_uid,
		    owner != NULL ? "--user " : "us", owner != NULL ? owner->pw_name : "");
	if (!dir && st->st_nlink != 1)
		die("--state-dir: %s has %lu hard links; refusing a file with other names", shown,
		    (unsigned long)st->st_nlink);
}

/* Open name in at (shown) with flags, not through a link, and check it
 * as state_check does (dir: a directory, with "--state-dir" in what is
 * said); no return when it is not ours. Its descriptor, or -1 when a
 * file is missing. */
static int
state_entry_open(int at, const char *name, int flags, const char *shown, int dir, const struct passwd *owner)
{
	const char *what = dir ? "--state-dir " : "";
	struct stat st;
	int fd = openat(at, name, flags | O_NOFOLLOW | O_CLOEXEC), saved;

	if (fd < 0) {
		saved = errno;
		if (saved == ENOENT && !dir)
			return -1;
		if (fstatat(at, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
			state_check(&st, shown, dir, owner);
		errno = saved;
		die("cannot open %s%s:", what, shown);
	}
	if (fstat(fd, &st) < 0)
		die("cannot stat %s%s:", what, shown);
	state_check(&st, shown, dir, owner);
	return fd;
}

/* Make (0700) and open the directory name in at, not through a link;
 * check it and give it to --user. Its descriptor. */
static int
state_dir_open(int at, const char *name, const char *shown, const struct passwd *owner)
{
	int fd;

	if (mkdirat(at, name, 0700) < 0 && errno != EEXIST)
		die("cannot make --state-dir %s:", shown);
	fd = state_entry_open(at, name, O_RDONLY | O_DIRECTORY, shown, 1, owner);
	if (fchmod(fd, 0700) < 0)
		die("cannot make %s private (chmod 0700):", shown);
	if (owner != NULL && fchown(fd, owner->pw_uid, owner->pw_gid) < 0)
		die("cannot give %s to --user %s:", shown, owner->pw_name);
	return fd;
}

/* Check the file name in dir (shown) as state_check does, not through a
 * link, and give it to --user (what a run as root left is the user's
 * too); nothing when there is none. */
static void
state_file_own(int dir, const char *name, const char *shown, const struct passwd *owner)
{
	int fd = state_entry_open(dir, name, O_RDONLY | O_NONBLOCK | O_NOCTTY, shown, 0, owner);

	if (fd < 0)
		return;
	if (owner != NULL && fchown(fd, owner->pw_uid, owner->pw_gid) < 0)
		die("cannot give %s to --user %s:", shown, owner->pw_name);
	close(fd);
}

/* Remove the temporary files (NAME.tmp) in dir (shown) that a write cut
 * off by a signal or a crash left: a link among them goes, not what it
 * points at. */
static void
state_sweep(int dir, const char *shown)
{
	int fd = fcntl(dir, F_DUPFD_CLOEXEC, 0);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	const size_t sn = strlen(STATE_TMP);
	struct dirent *e;

	if (d == NULL)
		die("cannot list --state-dir %s:", shown);
	for (errno = 0; (e = readdir(d)) != NULL; errno = 0) {
		size_t n = strlen(e->d_name);

		if (n <= sn || strcmp(e->d_name + n - sn, STATE_TMP) != 0)
			continue;
		if (unlinkat(dir, e->d_name, 0) < 0)
			die("cannot remove %s/%s:", shown, e->d_name);
		warn("--state-dir: removed %s/%s, which a write cut off left behind", shown, e->d_name);
	}
	if (errno != 0)
		die("cannot list --state-dir %s:", shown);
	closedir(d);
}

/* Open --state-dir itself, its path as root walked without following a
 * link: made (0700, --user's) when create, else -1 when there is none,
 * or when it is the default directory and not ours to read (the
 * server's, say: it holds no login of ours). Checked as state_check
 * does. Its descriptor. */
static int
state_root_open(const struct passwd *owner, int create)
{
	static char dir[PATH_MAX];
	const char *base;
	size_t n = strlen(state_dir);
	int at = AT_FDCWD, fd, r;
	struct stat st;

	while (n > 1 && state_dir[n - 1] == '/')
		n--;
	if (n + (acme_domain != NULL ? strlen(acme_domain) : 0) + NAME_MAX + 3 > PATH_MAX)
		die("--state-dir %s: the path is too long", state_dir);
	memmove(dir, state_dir, n);
	dir[n] = '\0';
	state_dir = dir;  /* without trailing slashes: state_at compares paths with it */
	if (strcmp(dir, "/") == 0)
		die("--state-dir /: give the server a directory of its own");
	base = strrchr(dir, '/');
	base = base != NULL ? base + 1 : dir;
	if (strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
		die("--state-dir %s: name the directory itself, not . or ..", dir);
	if (base != dir) {
		/* As root, its path too is walked without following a link. */
		at = dir_open_nofollow(dir, base - 1 == dir ? 1 : (size_t)(base - 1 - dir));
		if (at < 0 && !create && errno == ENOENT)
			return -1;
		if (at < 0 && (errno == ELOOP || errno == ENOTDIR))
			die("--state-dir %s: a directory on its path is a symbolic link, which root does not "
			    "follow (give its real path)", dir);
		if (at < 0)
			die("cannot make --state-dir %s:", dir);
	}
	r = create ? 0 : fstatat(at, base, &st, AT_SYMLINK_NOFOLLOW);
	if (!create && (r < 0 ? errno == ENOENT : strcmp(dir, STATE_DIR_DEFAULT) == 0 &&
	    (!S_ISDIR(st.st_mode) || !state_owner_ok(st.st_uid, owner) ||
	    faccessat(at, base, R_OK | W_OK | X_OK, AT_EACCESS) < 0)))
		fd = -1;
	else
		fd = create ? state_dir_open(at, base, dir, owner) :
		    state_entry_open(at, base, O_RDONLY | O_DIRECTORY, dir, 1, owner);
	if (at != AT_FDCWD)
		close(at);
	return fd;
}

/* Open --state-dir and its DOMAIN directory (made 0700, --user's) into
 * state_fd and domain_fd, and check what is in them (see above). */
static void
state_open(const struct passwd *owner)
{
	char shown[2 * PATH_MAX];  /* the paths fit in PATH_MAX (checked) */
	const char *dir;
	int i;

	state_fd = state_root_open(owner, 1);
	dir = state_dir;
	snprintf(shown, sizeof(shown), "%s/%s", dir, acme_domain);
	domain_fd = state_dir_open(state_fd, acme_domain, shown, owner);
	state_sweep(state_fd, dir);
	state_sweep(domain_fd, shown);
	for (i = 0; state_files[i] != NULL; i++) {
		snprintf(shown, sizeof(shown), "%s/%s", dir, state_files[i]);
		state_file_own(state_fd, state_files[i], shown, owner);
	}
	for (i = 0; domain_files[i] != NULL; i++) {
		snprintf(shown, sizeof(shown), "%s/%s/%s", dir, acme_domain, domain_files[i]);
		state_file_own(domain_fd, domain_files[i], shown, owner);
	}
}

/* ---- requests to the CA ---- */

/* A field of the answer, copied into out (empty when absent). */
static void
answer_copy(const struct answer *a, const char *name, char *out, size_t on)
{
	size_t len = 0;
	const char *v = answer_field(a, name, &len);

	snprintf(out, on, "%.*s", v != NULL && len < on ? (int)len : 0, v != NULL ? v : "");
}

/* One HTTPS exchange with the CA: GET (body NULL) or a JOSE POST. 0 with
 * the answer in ans, or -1 with why. */
static int
acme_exchange(struct acme *a, const char *url, const struct buf *body, const char *accept, struct answer *ans,
    char *why, size_t wn)
{
	struct url u;
	struct client cl;
	struct buf req = { 0 }, fields = { 0 };
	char ra[64];
	int r;

	if (url_parse(url, &u) < 0 || !u.https) {
		snprintf(why, wn, "the CA gave a URL that is not https: %.200s", url);
		return -1;
	}
	buf_adds(&fields, "User-Agent: xwebhook/" XWEBHOOK_VERSION "\r\nAccept: ");
	buf_adds(&fields, accept);
	buf_adds(&fields, "\r\nConnection: close\r\n");
	if (body != NULL)
		buf_adds(&fields, "Content-Type: application/jose+json\r\n");
	buf_addc(&fields, '\0');
	http_request_head(&req, body != NULL ? "POST" : "GET", &u, NULL, fields.p, body != NULL ? (long long)body->len : -1);
	buf_free(&fields);
	if (body != NULL)
		buf_add(&req, body->p, body->len);
	r = client_connect(&cl, u.host, u.port[0] ? u.port : "443", u.host, &a->trust, 0);
	if (r == 0)
		r = client_exchange(&cl, req.p, req.len, ans);
	if (r < 0)
		snprintf(why, wn, "%s: %.300s", u.host, cl.why);
	client_close(&cl);
	buf_free(&req);
	if (r < 0)
		return -1;
	/* Every answer's Replay-Nonce is good for the next request. */
	answer_copy(ans, "replay-nonce", a->nonce, sizeof(a->nonce));
	if (strspn(a->nonce, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != strlen(a->nonce))
		a->nonce[0] = '\0';
	answer_copy(ans, "location", a->location, sizeof(a->location));
	answer_copy(ans, "retry-after", ra, sizeof(ra));
	a->retry_after = -1;
	if (ra[0] != '\0' && strspn(ra, "0123456789") == strlen(ra)) {
		a->retry_after = strtol(ra, NULL, 10);
	} else if (ra[0] != '\0') {
		struct tm tm;

		memset(&tm, 0, sizeof(tm));
		if (strptime(ra, "%a, %d %b %Y %H:%M:%S GMT", &tm) != NULL)
			a->retry_after = (long)(timegm(&tm) - time(NULL));
	}
	if (a->retry_after > ACME_RETRY_AFTER_MAX_S)
		a->retry_after = ACME_RETRY_AFTER_MAX_S;
	return 0;
}

/* An ACME problem document (RFC 8555, 6.7) in one line, escaped: its
 * type, detail and subproblems. */
static void
acme_problem(const struct answer *ans, char *why, size_t wn)
{
	struct buf line = { 0 }, v = { 0 }, subs = { 0 }, el = { 0 };
	struct json_object o;
	size_t at = 0;
	char num[32];

	snprintf(num, sizeof(num), "%d", ans->status);
	buf_adds(&line, num);
	(void)json_object_parse(ans->body.p, ans->body.len, &o);
	if (json_object_string(&o, "type", &v) == 0) {
		buf_addc(&line, ' ');
		log_escape(&line, v.p, v.len < 100 ? v.len : 100);
	}
	v.len = 0;
	if (json_object_string(&o, "detail", &v) == 0) {
		buf_adds(&line, ": ");
		log_escape(&line, v.p, v.len < 300 ? v.len : 300);
	}
	if (json_object_get(&o, "subproblems", &subs) == 0) {
		buf_addc(&subs, '\0');
		while (json_array_next(subs.p, &at, &el)) {
			v.len = 0;
			if (json_member_string(el.p, el.len, "detail", &v) == 0) {
				buf_adds(&line, "; ");
				log_escape(&line, v.p, v.len < 200 ? v.len : 200);
			}
			el.len = 0;
		}
	}
	json_object_free(&o);
	buf_addc(&line, '\0');
	snprintf(why, wn, "%s", line.p);
	buf_free(&line);
	buf_free(&v);
	buf_free(&subs);
	buf_free(&el);
}

/* Is the answer the problem of this type (urn:ietf:params:acme:error:...)? */
static int
acme_is_problem(const struct answer *ans, const char *type)
{
	struct buf v = { 0 };
	char want[96];
	int is;

	snprintf(want, sizeof(want), "urn:ietf:params:acme:error:%s", type);
	is = ans->status >= 400 && json_member_string(ans->body.p, ans->body.len, "type", &v) == 0 &&
	    v.len == strlen(want) && memcmp(v.p, want, v.len) == 0;
	buf_free(&v);
	return is;
}

/* A JWS POST to url (payload NULL: POST-as-GET), signed with the account
 * key, as jwk until the account has its URL and as kid after. A badNonce
 * is tried again with the fresh nonce that came with it. 0 with a 2xx
 * answer, or -1 with why (and the answer, when there was one). */
static int
acme_post(struct acme *a, const char *url, const char *payload, const char *accept, struct answer *ans,
    char *why, size_t wn)
{
	int tries;

	memset(ans, 0, sizeof(*ans));
	for (tries = 0; tries < ACME_NONCE_RETRIES; tries++) {
		struct buf prot = { 0 }, body = { 0 }, input = { 0 };
		unsigned char sig[64];
		size_t dot;

		if (a->nonce[0] == '\0') {
			answer_free(ans);
			if (acme_exchange(a, a->new_nonce, NULL, "*/*", ans, why, wn) < 0)
				return -1;
			if (a->nonce[0] == '\0') {
				snprintf(why, wn, "the CA's newNonce gave no Replay-Nonce (%d)", ans->status);
				return -1;
			}
		}
		buf_adds(&prot, "{\"alg\":\"ES256\",");
		if (a->kid[0] != '\0') {
			buf_adds(&prot, "\"kid\":\"");
			json_escape(&prot, a->kid, strlen(a->kid));
			buf_adds(&prot, "\",");
		} else {
			buf_adds(&prot, "\"jwk\":");
			jwk(&prot, &a->account);
			buf_addc(&prot, ',');
		}
		buf_adds(&prot, "\"nonce\":\"");
		buf_adds(&prot, a->nonce);
		buf_adds(&prot, "\",\"url\":\"");
		json_escape(&prot, url, strlen(url));
		buf_adds(&prot, "\"}");
		a->nonce[0] = '\0';  /* used */
		/* The signing input: protected "." payload, both base64url. */
		b64url(&input, prot.p, prot.len);
		dot = input.len;
		buf_addc(&input, '.');
		if (payload != NULL)
			b64url(&input, payload, strlen(payload));
		buf_adds(&body, "{\"protected\":\"");
		buf_add(&body, input.p, dot);
		buf_adds(&body, "\",\"payload\":\"");
		buf_add(&body, input.p + dot + 1, input.len - dot - 1);
		buf_adds(&body, "\",\"signature\":\"");
		if (ec_sign(&a->account, input.p, input.len, 0, sig) != 64) {
			snprintf(why, wn, "cannot sign with the account key");
			buf_free(&prot);
			buf_free(&body);
			buf_free(&input);
			return -1;
		}
		b64url(&body, sig, sizeof(sig));
		buf_adds(&body, "\"}");
		answer_free(ans);
		memset(ans, 0, sizeof(*ans));
		if (acme_exchange(a, url, &body, accept, ans, why, wn) < 0) {
			buf_free(&prot);
			buf_free(&body);
			buf_free(&input);
			return -1;
		}
		buf_free(&prot);
		buf_free(&body);
		buf_free(&input);
		if (ans->status >= 200 && ans->status <= 299)
			return 0;
		if (!acme_is_problem(ans, "badNonce"))
			break;
	}
	acme_problem(ans, why, wn);
	return -1;
}

/* A string member of a JSON answer, into out. 0, or -1. */
static int
acme_member(const struct answer *ans, const char *name, char *out, size_t on)
{
	struct buf v = { 0 };
	int r = json_member_string(ans->body.p, ans->body.len, name, &v);

	if (r == 0 && v.len > 0 && v.len < on && memchr(v.p, '\0', v.len) == NULL)
		snprintf(out, on, "%.*s", (int)v.len, v.p);
	else
		r = -1;
	buf_free(&v);
	return r;
}

/* The CA's directory. */
static int
acme_directory(struct acme *a, char *why, size_t wn)
{
	struct answer ans;

	memset(&ans, 0, sizeof(ans));
	if (acme_exchange(a, acme_server, NULL, "application/json", &ans, why, wn) < 0)
		return -1;
	if (ans.status != 200 || acme_member(&ans, "newNonce", a->new_nonce, sizeof(a->new_nonce)) < 0 ||
	    acme_member(&ans, "newAccount", a->new_account, sizeof(a->new_account)) < 0 ||
	    acme_member(&ans, "newOrder", a->new_order, sizeof(a->new_order)) < 0) {
		snprintf(why, wn, "%s answered %d without an ACME directory", acme_server, ans.status);
		answer_free(&ans);
		return -1;
	}
	if (acme_member(&ans, "renewalInfo", a->renewal_info, sizeof(a->renewal_info)) < 0)
		a->renewal_info[0] = '\0';
	answer_free(&ans);
	return 0;
}

/* The directory, and the account (made or found by its key). */
static int
acme_account(struct acme *a, char *why, size_t wn)
{
	struct answer ans;
	struct buf payload = { 0 };
	int r;

	memset(&ans, 0, sizeof(ans));
	if (acme_directory(a, why, wn) < 0)
		return -1;
	if (a->kid[0] != '\0')
		return 0;
	buf_adds(&payload, "{\"termsOfServiceAgreed\":true");
	if (acme_email != NULL) {
		buf_adds(&payload, ",\"contact\":[\"mailto:");
		json_escape(&payload, acme_email, strlen(acme_email));
		buf_adds(&payload, "\"]");
	}
	buf_adds(&payload, "}");
	buf_addc(&payload, '\0');
	r = acme_post(a, a->new_account, payload.p, "application/json", &ans, why, wn);
	buf_free(&payload);
	if (r == 0) {
		snprintf(a->kid, sizeof(a->kid), "%s", a->location);
		if (a->kid[0] == '\0') {
			snprintf(why, wn, "the CA made the account but gave no Location for it");
			r = -1;
		}
	} else {
		char detail[600];

		snprintf(detail, sizeof(detail), "%.599s", why);
		snprintf(why, wn, "the CA refused the account: %s", detail);
	}
	answer_free(&ans);
	return r;
}

/* Wait, as the CA asks, before polling again; stop early on shutdown. */
static int acme_sleep(long seconds);

/* POST-as-GET url until its status is no longer pending or processing:
 * 0 with the final answer, or -1 with why. The CA's Retry-After is
 * honoured up to the ACME_POLL_LIMIT_S the poll has, never past it. */
static int
acme_poll(struct acme *a, const char *url, const char *what, struct answer *ans, char *status, size_t sn,
    char *why, size_t wn)
{
	time_t give_up = time(NULL) + ACME_POLL_LIMIT_S;

	for (;;) {
		long wait, left;

		if (acme_post(a, url, NULL, "application/json", ans, why, wn) < 0)
			return -1;
		if (acme_member(ans, "status", status, sn) < 0) {
			snprintf(why, wn, "the %s has no status", what);
			return -1;
		}
		if (strcmp(status, "pending") != 0 && strcmp(status, "processing") != 0)
			return 0;
		left = (long)(give_up - time(NULL));
		if (left <= 0) {
			snprintf(why, wn, "the %s was still %s after %d s", what, status, ACME_POLL_LIMIT_S);
			a->retry_after = -1;  /* it was for this poll, not for the next attempt */
			return -1;
		}
		wait = a->retry_after > 0 ? a->retry_after : 1;
		if (wait > left) {
			warn("ACME: the CA asks to poll the %s again in %ld s, past the %d s it is given; "
			    "polling it once more in %ld s", what, wait, ACME_POLL_LIMIT_S, left);
			wait = left;
		}
		if (acme_sleep(wait) < 0) {
			snprintf(why, wn, "stopping");
			return -1;
		}
		answer_free(ans);
	}
}

/* The challenge of type want that the authorization in ans offers: its
 * url and token (a base64url token) into url and token. 1; 0 if it
 * offers none such; -1 if it lists no challenges at all. */
static int
acme_challenge_find(const struct answer *ans, const char *want, char *url, size_t un, char *token, size_t tn)
{
	struct buf list = { 0 }, el = { 0 };
	size_t at = 0;
	int found = 0;

	if (json_member(ans->body.p, ans->body.len, "challenges", &list) < 0)
		return -1;
	buf_addc(&list, '\0');
	while (!found && json_array_next(list.p, &at, &el)) {
		struct buf v = { 0 };

		if (json_member_string(el.p, el.len, "type", &v) == 0 && v.len == strlen(want) &&
		    memcmp(v.p, want, v.len) == 0) {
			struct answer fake;

			memset(&fake, 0, sizeof(fake));
			fake.body = el;
			found = acme_member(&fake, "url", url, un) == 0 && acme_member(&fake, "token", token, tn) == 0 &&
			    strspn(token, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") ==
			    strlen(token) && token[0] != '\0';
		}
		buf_free(&v);
		el.len = 0;
	}
	buf_free(&list);
	buf_free(&el);
	return found;
}

/* Forget a private key: the key and its PEM text wiped, the text freed. */
static void
key_forget(struct ec_key *k, struct buf *pem)
{
	explicit_bzero(k, sizeof(*k));
	if (pem->p != NULL)
		explicit_bzero(pem->p, pem->cap);
	buf_free(pem);
}

/* The tls-alpn-01 certificate (RFC 8737) for the key authorization ka,
 * self-signed with a fresh key, as an identity to serve; NULL if it
 * could not be made. */
static struct identity *
acme_alpn_identity(const char *ka)
{
	struct ec_key k;
	struct buf der = { 0 }, cert_pem = { 0 }, key_pem = { 0 };
	struct identity *id = NULL;
	char err[300];
	size_t pn;

	if (ec_key_generate(&k) == 0 && alpn_cert_der(&der, acme_domain, ka, &k) == 0) {
		pn = br_pem_encode(NULL, der.p, der.len, "CERTIFICATE", BR_PEM_LINE64);
		buf_reserve(&cert_pem, pn + 1);
		br_pem_encode(cert_pem.p, der.p, der.len, "CERTIFICATE", BR_PEM_LINE64);
		cert_pem.len = pn;
		ec_key_pem(&k, &key_pem);
		id = identity_parse("the tls-alpn-01 certificate", &cert_pem, "its key", &key_pem, err, sizeof(err));
	}
	key_forget(&k, &key_pem);
	buf_free(&der);
	buf_free(&cert_pem);
	return id;
}

/* Why the CA found a challenge of the authorization in ans invalid: the
 * last challenge's error, as a problem line, into detail ("" if none). */
static void
acme_challenge_error(const struct answer *ans, char *detail, size_t dn)
{
	struct buf list = { 0 }, el = { 0 };
	size_t at = 0;

	detail[0] = '\0';
	if (json_member(ans->body.p, ans->body.len, "challenges", &list) == 0) {
		buf_addc(&list, '\0');
		while (json_array_next(list.p, &at, &el)) {
			struct buf e = { 0 };

			if (json_member(el.p, el.len, "error", &e) == 0) {
				struct answer fake;

				memset(&fake, 0, sizeof(fake));
				fake.status = 400;
				fake.body = e;
				acme_problem(&fake, detail, dn);
			}
			buf_free(&e);
			el.len = 0;
		}
	}
	buf_free(&list);
	buf_free(&el);
}

/* Answer one authorization's challenge, and wait for its verdict. */
static int
acme_authorize(struct acme *a, const char *authz_url, char *why, size_t wn)
{
	const char *want = acme_http_spec != NULL ? "http-01" : "tls-alpn-01";
	struct answer ans;
	struct buf ka = { 0 };
	char status[32], url[ACME_URL_MAX], token[128];
	int found, r = -1;

	if (acme_post(a, authz_url, NULL, "application/json", &ans, why, wn) < 0)
		goto out;
	if (acme_member(&ans, "status", status, sizeof(status)) == 0 && strcmp(status, "valid") == 0) {
		r = 0;  /* validated before, and still good */
		goto out;
	}
	found = acme_challenge_find(&ans, want, url, sizeof(url), token, sizeof(token));
	if (found <= 0) {
		if (found < 0)
			snprintf(why, wn, "the authorization lists no challenges");
		else
			snprintf(why, wn, "the CA offers no %s challenge for %s", want, acme_domain);
		goto out;
	}
	buf_adds(&ka, token);
	buf_addc(&ka, '.');
	buf_adds(&ka, a->thumbprint);
	buf_addc(&ka, '\0');
	if (acme_http_spec != NULL) {
		pthread_mutex_lock(&challenge.lock);
		snprintf(challenge.token, sizeof(challenge.token), "%s", token);
		snprintf(challenge.key_auth, sizeof(challenge.key_auth), "%s", ka.p);
		pthread_mutex_unlock(&challenge.lock);
	} else {
		struct identity *id = acme_alpn_identity(ka.p);

		if (id == NULL) {
			snprintf(why, wn, "cannot make the tls-alpn-01 certificate");
			goto out;
		}
		challenge_set_alpn(id);
	}
	/* Ready: tell the CA, then wait for its verdict. */
	answer_free(&ans);
	if (acme_post(a, url, "{}", "application/json", &ans, why, wn) < 0)
		goto out;
	answer_free(&ans);
	if (acme_poll(a, authz_url, "authorization", &ans, status, sizeof(status), why, wn) < 0)
		goto out;
	if (strcmp(status, "valid") != 0) {
		/* The failed challenge's error says why. */
		char detail[600];

		acme_challenge_error(&ans, detail, sizeof(detail));
		snprintf(why, wn, "the CA found the %s challenge %s%s%s", want, status, detail[0] ? ": " : "",
		    detail);
		goto out;
	}
	r = 0;
out:
	pthread_mutex_lock(&challenge.lock);
	challenge.token[0] = '\0';
	pthread_mutex_unlock(&challenge.lock);
	challenge_set_alpn(NULL);
	answer_free(&ans);
	buf_free(&ka);
	return r;
}

/* The path of a file of the domain's in --state-dir. */
static void
state_path(char *out, size_t n, const char *file)
{
	snprintf(out, n, "%s/%s/%s", state_dir, acme_domain, file);
}

/* The orders finalized for the domain in the last week (the CA issues at
 * finalize), as Unix times, one a line, in --state-dir/DOMAIN/orders: a
 * file, so that a crash-restart loop cannot reset the count that keeps
 * the CA's duplicate-certificate limit (and a ban) away. A time ahead of
 * the clock counts as now and is written back as now, so the cap never
 * holds for more than a week. With record, now is added and the file
 * written back. 0; 1 at ACME_ORDERS_PER_WEEK, with when ordering resumes
 * in *resume; -1 with why when the file cannot be read or written. */
static int
acme_orders(int record, time_t *resume, char *why, size_t wn)
{
	char path[PATH_MAX], line[32];
	struct buf text = { 0 }, out = { 0 };
	time_t now = time(NULL), t[ACME_ORDERS_PER_WEEK + 1];
	size_t n = 0, i, at = 0;
	int r = -1, clamped = 0;

	state_path(path, sizeof(path), "orders");
	if (state_read_max(path, &text, ACME_ORDERS_FILE_MAX) < 0 && errno != ENOENT) {
		if (errno == EFBIG)
			snprintf(why, wn, "%.600s is larger than %d bytes, not a list of times; remove it to order again",
			    path, ACME_ORDERS_FILE_MAX);
		else
			snprintf(why, wn, "cannot read %.600s: %s", path, strerror(errno));
		goto out;
	}
	/* The newest ACME_ORDERS_PER_WEEK of the week, oldest first. */
	while (at < text.len) {
		const char *p = text.p + at, *nl = memchr(p, '\n', text.len - at);
		long long v = 0;

		if (nl != NULL && nl > p && nl - p <= 18)
			for (; p < nl && isdigit((unsigned char)*p); p++)
				v = v * 10 + (*p - '0');
		if (nl == NULL || p != nl || v == 0) {
			snprintf(why, wn, "%.600s is not a list of times, one a line; remove it to order again", path);
			goto out;
		}
		at = (size_t)(nl - text.p) + 1;
		if (v > (long long)now) {
			v = now;  /* a clock set back must not stop orders for longer than a week */
			clamped = 1;
		}
		if (v <= (long long)now - ACME_WEEK_S)
			continue;
		for (i = n; i > 0 && t[i - 1] > (time_t)v; i--)
			t[i] = t[i - 1];
		t[i] = (time_t)v;
		if (++n > ACME_ORDERS_PER_WEEK) {
			memmove(t, t + 1, ACME_ORDERS_PER_WEEK * sizeof(*t));
			n--;
		}
	}
	if (n >= ACME_ORDERS_PER_WEEK) {
		*resume = t[0] + ACME_WEEK_S;
		r = 1;
		record = 0;
	}
	if (record || clamped) {
		if (record)
			t[n++] = now;
		for (i = 0; i < n; i++) {
			snprintf(line, sizeof(line), "%lld\n", (long long)t[i]);
			buf_adds(&out, line);
		}
		if (out.failed || state_write(path, out.p, out.len) < 0) {
			snprintf(why, wn, "cannot count the order in %.600s: %s", path, strerror(errno));
			r = -1;
			goto out;
		}
	}
	if (r < 0)
		r = 0;
out:
	buf_free(&text);
	buf_free(&out);
	return r;
}

/* Is the chain the CA issued fit to store and serve? What is proven: the
 * leaf names the domain exactly, is valid now (the CA's clock may be
 * ACME_CLOCK_SKEW_S ahead), has our key (identity_parse compared it with
 * the key made for it), and is signed by the next certificate given
 * (BearSSL's minimal engine, with that one as the anchor and the leaf
 * alone pushed). What is not: that the chain leads to a root a client
 * trusts; this client has no trust store for that, and the links above
 * the leaf (name constraints, RSA-PSS) are the clients' to check. 0, or
 * -1 with why. */
static int
acme_chain_check(const struct identity *id, char *why, size_t wn)
{
	time_t now = time(NULL), at;
	const br_x509_certificate *last;
	br_x509_decoder_context dc;
	br_x509_minimal_context xc;
	br_x509_trust_anchor ta;
	const br_x509_pkey *pk;
	struct buf dn = { 0 };
	char date[32];
	unsigned err;

	if (!cert_names(id->chain[0].data, id->chain[0].data_len, acme_domain)) {
		snprintf(why, wn, "the CA issued a certificate that is not for %s", acme_domain);
		return -1;
	}
	if (id->leaf.not_after <= now + ACME_CLOCK_SKEW_S) {
		format_date(id->leaf.not_after, date, sizeof(date));
		snprintf(why, wn, "the CA issued a certificate that expired %s", date);
		return -1;
	}
	if (id->leaf.not_before > now + ACME_CLOCK_SKEW_S) {
		format_date(id->leaf.not_before, date, sizeof(date));
		snprintf(why, wn, "the CA issued a certificate that is not valid before %s", date);
		return -1;
	}
	if (id->chain_len < 2) {
		snprintf(why, wn, "the CA issued a certificate without the intermediate that signed it");
		return -1;
	}
	last = &id->chain[1];
	br_x509_decoder_init(&dc, pem_collect, &dn);
	br_x509_decoder_push(&dc, last->data, last->data_len);
	pk = br_x509_decoder_get_pkey(&dc);
	if (pk == NULL || dn.failed) {
		snprintf(why, wn, "the CA's intermediate (the chain's second certificate) cannot be decoded");
		buf_free(&dn);
		return -1;
	}
	ta.dn.data = (unsigned char *)dn.p;
	ta.dn.len = dn.len;
	ta.flags = BR_X509_TA_CA;
	ta.pkey = *pk;  /* its bytes stay in dc, which outlives xc */
	br_x509_minimal_init_full(&xc, &ta, 1);
	/* The leaf was checked against the skew above; the chain is checked
	 * at a moment the leaf is valid. Days are counted from 0 AD. */
	at = now > id->leaf.not_before ? now : id->leaf.not_before;
	br_x509_minimal_set_time(&xc, (uint32_t)(at / 86400 + 719528), (uint32_t)(at % 86400));
	xc.vtable->start_chain(&xc.vtable, NULL);
	xc.vtable->start_cert(&xc.vtable, (uint32_t)id->chain[0].data_len);
	xc.vtable->append(&xc.vtable, id->chain[0].data, id->chain[0].data_len);
	xc.vtable->end_cert(&xc.vtable);
	err = xc.vtable->end_chain(&xc.vtable);
	buf_free(&dn);
	if (err != 0) {
		char text[300];
		struct buf leaf = { (char *)id->chain[0].data, id->chain[0].data_len, id->chain[0].data_len, 0, 0 };

		if (err == BR_ERR_X509_BAD_SIGNATURE || err == BR_ERR_X509_NOT_TRUSTED || err == BR_ERR_X509_DN_MISMATCH)
			snprintf(text, sizeof(text), "the certificate is not signed by the next one given");
		else if (x509_error_text((int)err, &leaf, acme_domain, NULL, text, sizeof(text)) < 0)
			snprintf(text, sizeof(text), "an error BearSSL does not name");
		snprintf(why, wn, "the CA's certificate does not check against its intermediate (BearSSL X.509 "
		    "error %u: %s)", err, text);
		return -1;
	}
	return 0;
}

/* Answer each authorization of an order in turn (list: its
 * authorizations array, compact JSON, NUL-ended): 0, or -1 with why. */
static int
acme_authorize_all(struct acme *a, const char *list, char *why, size_t wn)
{
	struct buf el = { 0 };
	size_t at = 0;
	int r = 0;

	while (r == 0 && json_array_next(list, &at, &el)) {
		char authz[ACME_URL_MAX];
		struct buf s = { 0 };

		buf_addc(&el, '\0');
		if (el.p[0] != '"' || el.len > sizeof(authz)) {
			snprintf(why, wn, "the order's authorizations are not URLs");
			r = -1;
			break;
		}
		json_string_decode(el.p, 0, &s);
		snprintf(authz, sizeof(authz), "%.*s", (int)s.len, s.p);
		buf_free(&s);
		r = acme_authorize(a, authz, why, wn);
		el.len = 0;
	}
	buf_free(&el);
	return r;
}

/* The CA's chain and its new key: checked, written to --state-dir
 * under certbot's names, then served. 0, or -1 with why. */
static int
acme_install(struct buf *chain, struct buf *key_pem, char *why, size_t wn)
{
	struct identity *id;
	char err[600], path[PATH_MAX];

	id = identity_parse("the CA's certificate", chain, "its new key", key_pem, err, sizeof(err));
	if (id == NULL) {
		snprintf(why, wn, "the CA's certificate cannot be served: %s", err);
		return -1;
	}
	if (acme_chain_check(id, why, wn) < 0) {
		identity_release(id);
		return -1;
	}
	state_path(path, sizeof(path), "privkey.pem");
	if (state_write(path, key_pem->p, key_pem->len) < 0) {
		snprintf(why, wn, "cannot write %.600s: %s", path, strerror(errno));
		identity_release(id);
		return -1;
	}
	state_path(path, sizeof(path), "fullchain.pem");
	if (state_write(path, chain->p, chain->len) < 0) {
		snprintf(why, wn, "cannot write %.600s: %s", path, strerror(errno));
		identity_release(id);
		return -1;
	}
	identity_install(id, "ACME: now serving ");
	return 0;
}

/* Order a certificate for the domain and install it: 0, or -1 with why. */
static int
acme_order(struct acme *a, char *why, size_t wn)
{
	struct answer ans;
	struct buf payload = { 0 }, list = { 0 }, csr = { 0 }, key_pem = { 0 };
	char order_url[ACME_URL_MAX], finalize[ACME_URL_MAX], cert_url[ACME_URL_MAX], status[32];
	struct ec_key k;
	int r = -1;

	memset(&ans, 0, sizeof(ans));
	memset(&k, 0, sizeof(k));
	if (acme_account(a, why, wn) < 0)
		goto out;
	buf_adds(&payload, "{\"identifiers\":[{\"type\":\"dns\",\"value\":\"");
	json_escape(&payload, acme_domain, strlen(acme_domain));
	buf_adds(&payload, "\"}]");
	if (a->renewal_info[0] != '\0' && a->replaces[0] != '\0') {
		/* RFC 9773, 5: the order replaces the certificate ARI spoke of. */
		buf_adds(&payload, ",\"replaces\":\"");
		buf_adds(&payload, a->replaces);
		buf_addc(&payload, '"');
	}
	buf_adds(&payload, "}");
	buf_addc(&payload, '\0');
	if (acme_post(a, a->new_order, payload.p, "application/json", &ans, why, wn) < 0)
		goto out;
	snprintf(order_url, sizeof(order_url), "%s", a->location);
	if (order_url[0] == '\0' || acme_member(&ans, "finalize", finalize, sizeof(finalize)) < 0 ||
	    json_member(ans.body.p, ans.body.len, "authorizations", &list) < 0) {
		snprintf(why, wn, "the CA's order has no URL, finalize or authorizations");
		goto out;
	}
	warn("ACME: ordering a certificate for %s from %s", acme_domain, acme_server);
	buf_addc(&list, '\0');
	if (acme_authorize_all(a, list.p, why, wn) < 0)
		goto out;
	/* A fresh key for each certificate, and its CSR. */
	if (ec_key_generate(&k) < 0 || csr_der(&csr, acme_domain, &k) < 0) {
		snprintf(why, wn, "cannot make the certificate's key");
		goto out;
	}
	payload.len = 0;
	buf_adds(&payload, "{\"csr\":\"");
	b64url(&payload, csr.p, csr.len);
	buf_adds(&payload, "\"}");
	buf_addc(&payload, '\0');
	answer_free(&ans);
	{
		/* Counted here, where the CA issues: an order that fails before
		 * (validation, an outage) is paced by the backoff, not the cap. */
		time_t resume;
		int capped = acme_orders(1, &resume, why, wn);

		if (capped == 1)
			snprintf(why, wn, "the week's %d certificates are issued", ACME_ORDERS_PER_WEEK);
		if (capped != 0)
			goto out;
	}
	if (acme_post(a, finalize, payload.p, "application/json", &ans, why, wn) < 0)
		goto out;
	answer_free(&ans);
	if (acme_poll(a, order_url, "order", &ans, status, sizeof(status), why, wn) < 0)
		goto out;
	if (strcmp(status, "valid") != 0 || acme_member(&ans, "certificate", cert_url, sizeof(cert_url)) < 0) {
		snprintf(why, wn, "the order ended %s, without a certificate", status);
		goto out;
	}
	answer_free(&ans);
	if (acme_post(a, cert_url, NULL, "application/pem-certificate-chain", &ans, why, wn) < 0)
		goto out;
	ec_key_pem(&k, &key_pem);
	r = acme_install(&ans.body, &key_pem, why, wn);
out:
	key_forget(&k, &key_pem);
	answer_free(&ans);
	buf_free(&payload);
	buf_free(&list);
	buf_free(&csr);
	return r;
}

/* ---- ACME Renewal Information (RFC 9773) ---- */

/* The certificate's ARI id: base64url of its Authority Key Identifier's
 * keyIdentifier, a dot, and base64url of its serial number's DER value.
 * 0, or -1 when it has no such identifier. */
static int
ari_cert_id(const unsigned char *der, size_t n, struct buf *out)
{
	const unsigned char *v, *q, *qe, *serial;
	size_t len, slen;
	unsigned tag;

	/* authorityKeyIdentifier (2.5.29.35) ::= SEQUENCE { [0] keyIdentifier ... } */
	if (der_extension(der, n, "\x55\x1d\x23", &q, &qe, &serial, &slen) < 0 ||
	    der_next(&q, qe, &tag, &v, &len) < 0 || tag != 0x80 || len == 0)
		return -1;
	b64url(out, v, len);
	buf_addc(out, '.');
	b64url(out, serial, slen);
	return 0;
}

/* An RFC 3339 time (2025-01-02T04:00:00Z, with optional fractions and
 * offset): 0 with *t, or -1. */
static int
rfc3339(const char *s, time_t *t)
{
	struct tm tm;
	const char *p;
	long off = 0;

	memset(&tm, 0, sizeof(tm));
	p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (p == NULL)
		return -1;
	if (*p == '.')
		for (p++; isdigit((unsigned char)*p); p++)
			;
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if ((*p == '+' || *p == '-') && isdigit((unsigned char)p[1]) && isdigit((unsigned char)p[2]) &&
	    p[3] == ':' && isdigit((unsigned char)p[4]) && isdigit((unsigned char)p[5])) {
		off = ((p[1] - '0') * 10 + (p[2] - '0')) * 3600 + ((p[4] - '0') * 10 + (p[5] - '0')) * 60;
		if (*p == '-')
			off = -off;
		p += 6;
	} else {
		return -1;
	}
	if (*p != '\0')
		return -1;
	*t = timegm(&tm) - off;
	return 0;
}

enum { ARI_POLL_S = 6 * 3600, ARI_POLL_MIN_S = 60, ARI_POLL_MAX_S = 86400 };

/* Ask the CA when to renew the certificate in id (RFC 9773, 4.2): 0
 * with a moment chosen at random in its suggested window in *when, and
 * when to ask again in *poll; -1 when the CA offers no renewal
 * information or did not give it. */
static int
acme_ari(struct acme *a, const struct identity *id, time_t *when, long *poll, char *why, size_t wn)
{
	struct buf cid = { 0 }, url = { 0 }, win = { 0 }, v = { 0 };
	struct answer ans;
	time_t start, end;
	int r = -1;

	memset(&ans, 0, sizeof(ans));
	if (acme_directory(a, why, wn) < 0)
		return -1;
	if (a->renewal_info[0] == '\0') {
		snprintf(why, wn, "the CA offers no renewal information");
		return -1;
	}
	if (ari_cert_id(id->chain[0].data, id->chain[0].data_len, &cid) < 0) {
		snprintf(why, wn, "the certificate has no authority key identifier for ARI");
		goto out;
	}
	buf_addc(&cid, '\0');
	buf_adds(&url, a->renewal_info);
	if (url.len > 0 && url.p[url.len - 1] != '/')
		buf_addc(&url, '/');
	buf_adds(&url, cid.p);
	buf_addc(&url, '\0');
	if (acme_exchange(a, url.p, NULL, "application/json", &ans, why, wn) < 0)
		goto out;
	if (ans.status != 200 || json_member(ans.body.p, ans.body.len, "suggestedWindow", &win) < 0 ||
	    json_member_string(win.p, win.len, "start", &v) < 0) {
		snprintf(why, wn, "the CA's renewal information for it is %d without a window", ans.status);
		goto out;
	}
	buf_addc(&v, '\0');
	if (rfc3339(v.p, &start) < 0)
		goto bad;
	v.len = 0;
	if (json_member_string(win.p, win.len, "end", &v) < 0)
		goto bad;
	buf_addc(&v, '\0');
	if (rfc3339(v.p, &end) < 0 || end < start)
		goto bad;
	{
		uint64_t rnd;

		entropy(&rnd, sizeof(rnd));
		*when = start + (time_t)(rnd % (uint64_t)(end - start + 1));
	}
	*poll = a->retry_after > 0 ? a->retry_after : ARI_POLL_S;
	if (*poll < ARI_POLL_MIN_S)
		*poll = ARI_POLL_MIN_S;
	if (*poll > ARI_POLL_MAX_S)
		*poll = ARI_POLL_MAX_S;
	snprintf(a->replaces, sizeof(a->replaces), "%s", cid.p);
	r = 0;
	goto out;
bad:
	snprintf(why, wn, "the CA's renewal window is not two RFC 3339 times in order");
out:
	answer_free(&ans);
	buf_free(&cid);
	buf_free(&url);
	buf_free(&win);
	buf_free(&v);
	return r;
}

/* ---- the thread ---- */

static pthread_mutex_t acme_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t acme_wake;
/* A stored certificate, valid but due for renewal at start: served only
 * if ordering its successor fails. */
static struct identity *acme_fallback;

static int
acme_sleep(long seconds)
{
	struct timespec until = deadline_ts(now_ms() + (int64_t)seconds * 1000);

	pthread_mutex_lock(&acme_lock);
	while (!is_stopping() && pthread_cond_timedwait(&acme_wake, &acme_lock, &until) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&acme_lock);
	return is_stopping() ? -1 : 0;
}

/* When the certificate in id should be renewed: when a third of its
 * lifetime is left, or half for one under 10 days (Let's Encrypt's
 * short-lived certificates). */
static time_t
renew_at(const struct identity *id)
{
	time_t life = id->leaf.not_after - id->leaf.not_before;

	return id->leaf.not_after - (life < 10 * 86400 ? life / 2 : life / 3);
}

/* When this run last installed a certificate it ordered (0: never). */
static time_t acme_issued;

/* The soonest the certificate in id is renewed, whatever a renewal window
 * says: a third of its lifetime, at most ACME_FLOOR_MAX_S, after its issue
 * (its notBefore, or when this run got it, if later: CAs backdate; never
 * later than now), and ACME_FLOOR_MARGIN_S before its notAfter at the
 * latest. So a CA that issues certificates already due (a renewal window
 * in the past, an hour's lifetime) gets one order, not one a second, and
 * no certificate expires waiting for the floor. */
static time_t
renew_floor(const struct identity *id)
{
	time_t life = id->leaf.not_after - id->leaf.not_before, keep = life / ACME_FLOOR_FRACTION;
	time_t from = acme_issued > id->leaf.not_before ? acme_issued : id->leaf.not_before, now = time(NULL);
	time_t last = id->leaf.not_after - ACME_FLOOR_MARGIN_S;

	if (from > now)
		from = now;
	if (keep > ACME_FLOOR_MAX_S)
		keep = ACME_FLOOR_MAX_S;
	from += keep > 0 ? keep : 0;
	return from < last ? from : last;
}

/* The stored certificate, if it is for the domain and valid now (its
 * notBefore no further ahead than a CA's clock may be, and before its
 * notAfter). */
static struct identity *
acme_stored(void)
{
	char cert[PATH_MAX], key[PATH_MAX], err[600];
	struct buf cert_text = { 0 }, key_text = { 0 };
	struct identity *id = NULL;

	state_path(cert, sizeof(cert), "fullchain.pem");
	state_path(key, sizeof(key), "privkey.pem");
	if (state_read(cert, &cert_text) < 0) {
		if (errno == ENOENT) {
			buf_free(&cert_text);
			return NULL;
		}
		snprintf(err, sizeof(err), "cannot read %.400s: %s", cert, strerror(errno));
	} else if (state_read(key, &key_text) < 0) {
		snprintf(err, sizeof(err), "cannot read %.400s: %s", key, strerror(errno));
	} else {
		id = identity_parse(cert, &cert_text, key, &key_text, err, sizeof(err));
	}
	if (key_text.p != NULL)
		explicit_bzero(key_text.p, key_text.cap);
	buf_free(&cert_text);
	buf_free(&key_text);
	if (id == NULL) {
		warn("ACME: the stored certificate cannot serve (%s); ordering another", err);
		return NULL;
	}
	if (!cert_names(id->chain[0].data, id->chain[0].data_len, acme_domain)) {
		warn("ACME: the stored certificate %s is not for %s; ordering another", cert, acme_domain);
		identity_release(id);
		return NULL;
	}
	if (id->leaf.not_after <= time(NULL)) {
		warn("ACME: the stored certificate expired; ordering another");
		identity_release(id);
		return NULL;
	}
	if (id->leaf.not_before > time(NULL) + ACME_CLOCK_SKEW_S || id->leaf.not_before >= id->leaf.not_after) {
		char date[32];

		format_date(id->leaf.not_before, date, sizeof(date));
		warn("ACME: the stored certificate is not valid before %s; ordering another", date);
		identity_release(id);
		return NULL;
	}
	return id;
}

/* With nothing served, the stored certificate (valid, but due for
 * renewal) serves until an order succeeds. */
static void
acme_serve_fallback(void)
{
	struct identity *id;

	pthread_mutex_lock(&identity_lock);
	id = current_identity;
	pthread_mutex_unlock(&identity_lock);
	if (id == NULL && acme_fallback != NULL) {
		identity_install(acme_fallback, "ACME: meanwhile serving the stored ");
		acme_fallback = NULL;
		ready_tell();
	}
}

/* Wait until t, in steps, so that a clock that jumps is noticed. */
static int
acme_sleep_until(time_t t)
{
	while (time(NULL) < t)
		if (acme_sleep(t - time(NULL) > 3600 ? 3600 : t - time(NULL)) < 0)
			return -1;
	return 0;
}

/* When the certificate served is due for renewal (now, when there is
 * none): by its lifetime, or the CA's renewal window when it offers one
 * (which may ask for an early renewal), never before renew_floor. Sets
 * *check, when to look again before then (0: at that time), *ari when
 * the CA's window decided, and *held when the floor did. */
static time_t
acme_due(struct acme *a, time_t now, time_t *check, int *ari, int *held)
{
	struct identity *id;
	time_t when;
	char why[1200];

	*check = 0;
	*ari = *held = 0;
	pthread_mutex_lock(&identity_lock);
	id = current_identity;
	if (id != NULL)
		id->refs++;
	pthread_mutex_unlock(&identity_lock);
	when = id != NULL ? renew_at(id) : now;
	if (id != NULL) {
		time_t w;
		long poll;

		if (acme_ari(a, id, &w, &poll, why, sizeof(why)) == 0) {
			when = w;
			*check = now + poll;
			*ari = 1;
		} else if (a->renewal_info[0] != '\0') {
			warn("ACME: renewal information: %s; renewing by the lifetime meanwhile", why);
			*check = now + 3600;
		}
		if (when < renew_floor(id)) {
			when = renew_floor(id);
			*held = 1;
		}
	}
	identity_release(id);
	return when;
}

static void *
acme_thread(void *arg)
{
	struct acme *a = arg;
	long backoff = ACME_BACKOFF_MIN_S;

	thread_name("xwh-acme");
	metrics_thread_take();
	for (;;) {
		char why[1200];
		time_t now = time(NULL), when, check, resume = 0;
		int ari, held, capped;

		a->replaces[0] = '\0';
		when = acme_due(a, now, &check, &ari, &held);
		if (when > now) {
			char date[32];

			format_date(when, date, sizeof(date));
			warn("ACME: next renewal %s%s", date, held ? ", the soonest for a certificate this new (a third "
			    "of its lifetime, at most a day)" : ari ? ", in the CA's renewal window" : "");
			if (check == 0 || check > when)
				check = when;
			if (acme_sleep_until(check) < 0)
				return NULL;
			continue;
		}
		if (ari)
			warn("ACME: the CA's renewal window has come; renewing");
		a->retry_after = -1;  /* renewal information's, if any, is spent */
		capped = acme_orders(0, &resume, why, sizeof(why));
		if (capped == 1) {
			char date[32];

			acme_serve_fallback();
			format_date(resume, date, sizeof(date));
			warn("ACME: %d orders for %s in the last 7 days, the most it places in a week; ordering "
			    "resumes %s by itself (to order sooner, remove %s/%s/orders and restart); %s", ACME_ORDERS_PER_WEEK,
			    acme_domain, date, state_dir, acme_domain, current_identity != NULL ?
			    "still serving the current certificate" : "no certificate to serve HTTPS with meanwhile");
			if (acme_sleep_until(resume) < 0)
				return NULL;
			continue;
		}
		if (capped == 0 && acme_order(a, why, sizeof(why)) == 0) {
			metrics_acme_order(1);
			backoff = ACME_BACKOFF_MIN_S;
			acme_issued = time(NULL);
			identity_release(acme_fallback);  /* its successor serves */
			acme_fallback = NULL;
			ready_tell();  /* the first certificate: READY=1 now */
			continue;
		}
		if (is_stopping())
			return NULL;
		if (capped == 0)
			metrics_acme_order(0);
		{
			long wait = a->retry_after > backoff ? a->retry_after : backoff;

			acme_serve_fallback();
			warn("ACME: %s; %s, trying again in %ld s", why,
			    current_identity != NULL ? "still serving the current certificate" :
			    "no certificate to serve HTTPS with yet", wait);
			if (acme_sleep(wait) < 0)
				return NULL;
			backoff = backoff * 2 > ACME_BACKOFF_MAX_S ? ACME_BACKOFF_MAX_S : backoff * 2;
		}
	}
}

/* A name a CA can issue for: letters, digits and hyphens in dot-separated
 * labels, at least two of them; no wildcard, no address. */
static int
acme_domain_ok(const char *d)
{
	size_t i, label = 0, labels = 1;

	if (strlen(d) > 253 || d[0] == '\0')
		return 0;
	for (i = 0; d[i] != '\0'; i++) {
		if (d[i] == '.') {
			if (label == 0 || d[i - 1] == '-')
				return 0;
			label = 0;
			labels++;
		} else if (isalnum((unsigned char)d[i]) || (d[i] == '-' && label > 0)) {
			if (++label > 63)
				return 0;
		} else {
			return 0;
		}
	}
	return label > 0 && labels >= 2 && !isdigit((unsigned char)d[i - 1]) && d[i - 1] != '-';
}

/* At start, as root: the state directory (0700, the --user's), and what
 * is served first. A stored certificate for the domain outside its
 * renewal window serves at once; one inside it only if ordering another
 * fails; with none, HTTPS waits for the first order (the tls-alpn-01
 * answer works meanwhile). */
static struct acme acme;

static void
acme_prepare(const struct passwd *owner)
{
	struct identity *id;

	if (!acme_domain_ok(acme_domain))
		die("bad --acme '%s': expected a DNS name such as hooks.example.com (no wildcard, no address)",
		    acme_domain);
	if (trust_load(acme_cacert, &acme.trust) < 0)
		die("--acme: cannot load trusted certificates from %s%s", acme.trust.path,
		    acme_cacert != NULL ? "" : " (install ca-certificates, or give --acme-cacert)");
	state_open(owner);
	id = acme_stored();
	if (id != NULL && renew_at(id) > time(NULL)) {
		current_identity = id;
		identity_describe(id, "ACME: stored ");
	} else if (id != NULL) {
		acme_fallback = id;
		warn("ACME: the stored certificate is due for renewal; ordering its successor first");
	} else {
		warn("ACME: no certificate for %s yet: HTTPS waits for the first order", acme_domain);
	}
}

/* After the privilege drop: the account key (made once, kept in
 * --state-dir, so the user's), and the thread. */
static void
acme_start(void)
{
	struct acme *a = &acme;
	char path[PATH_MAX];
	struct buf text = { 0 }, j = { 0 };
	struct digest d;
	unsigned char h[32];
	pthread_t t;

	snprintf(path, sizeof(path), "%s/account.key", state_dir);
	if (state_read(path, &text) == 0) {
		if (ec_key_parse(text.p, text.len, &a->account) < 0)
			die("--acme: %s is not a P-256 key; move it away to make a new account", path);
	} else if (errno != ENOENT) {
		die("--acme: cannot read %s:", path);
	} else {
		if (ec_key_generate(&a->account) < 0)
			die("--acme: cannot make an account key");
		ec_key_pem(&a->account, &text);
		if (state_write(path, text.p, text.len) < 0)
			die("--acme: cannot write %s:", path);
	}
	explicit_bzero(text.p, text.cap);
	buf_free(&text);
	jwk(&j, &a->account);
	sha256_init(&d);
	digest_update(&d, j.p, j.len);
	digest_final(&d, h);
	j.len = 0;
	b64url(&j, h, sizeof(h));
	snprintf(a->thumbprint, sizeof(a->thumbprint), "%.*s", (int)j.len, j.p);
	buf_free(&j);
	cond_init_monotonic(&acme_wake);
	if (pthread_create(&t, &thread_attr, acme_thread, a) != 0)
		die("cannot start the ACME thread:");
}

/* Shutdown: the thread stops waiting. */
static void
acme_stop(void)
{
	pthread_mutex_lock(&acme_lock);
	pthread_cond_broadcast(&acme_wake);
	pthread_mutex_unlock(&acme_lock);
}
#endif /* XWEBHOOK_TLS */

/* ------------------------------------------------------------------------
 * [SUBCMDS] The small subcommands: crc, sign, fmt. The server's own pieces
 * on stdin and stdout, for trying things by hand and for reading --output.
 * Calls [CRYPTO], [JSON].
 * ------------------------------------------------------------------------ */

/* Read FILE ("-" or NULL for stdin) whole; dies on failure. */
static void
slurp(const char *path, struct buf *b)
{
	int fd = STDIN_FILENO;

	if (path != NULL && strcmp(path, "-") != 0 && (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		die("cannot open %s:", path);
	if (read_all(fd, b) < 0)
		die("cannot read %s:", path ? path : "stdin");
	if (fd != STDIN_FILENO)
		close(fd);
}

static int
cmd_crc(const char *token)
{
	char out[CRC_BODY_LEN + 1];

	load_secret(1);
	crc_body(token, strlen(token), out);
	out[CRC_BODY_LEN] = '\n';
	if (write_all(STDOUT_FILENO, out, sizeof(out)) < 0)
		die("stdout:");
	return 0;
}

static int
cmd_sign(const char *path)
{
	struct buf b = { 0 };
	char sig[SIGNATURE_LEN + 1];

	load_secret(1);
	slurp(path, &b);
	signature_of(&secret_key, b.p, b.len, sig, NULL);
	sig[SIGNATURE_LEN] = '\n';
	if (write_all(STDOUT_FILENO, sig, sizeof(sig)) < 0)
		die("stdout:");
	buf_free(&b);
	return 0;
}

/* Pretty-print a stream of JSON values as the server prints events,
 * reading in blocks. Only whole values are written: each as soon as it
 * is complete, and nothing of an invalid one, so that a pipeline never
 * sees half a document (memory holds the largest single value). */
static int
cmd_fmt(const char *path)
{
	static char in[1 << 16];
	struct buf out = { 0 };
	struct json j;
	int fd = STDIN_FILENO, ok = 0;

	if (path != NULL && strcmp(path, "-") != 0 && (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		die("cannot open %s:", path);
	json_init(&j, JSON_INDENT, &out);
	j.stream = 1;
	for (;;) {
		ssize_t r = read(fd, in, sizeof(in));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die("cannot read %s:", path ? path : "stdin");
		ok = (r == 0 ? json_finish(&j) : json_feed(&j, in, (size_t)r)) == 0;
		if (j.out_mark >= sizeof(in) || r == 0 || !ok) {
			/* The values complete so far go out; the rest waits. */
			if (write_all(STDOUT_FILENO, out.p, j.out_mark) < 0)
				die("stdout:");
			if (out.len > j.out_mark)
				memmove(out.p, out.p + j.out_mark, out.len - j.out_mark);
			out.len -= j.out_mark;
			j.out_mark = 0;
		}
		if (r == 0 || !ok)
			break;
	}
	buf_free(&out);
	if (fd != STDIN_FILENO)
		close(fd);
	if (!ok) {
		fprintf(stderr, "%s: line %lu, column %lu: %s (the values before it were written; nothing "
		    "of this one)\n", progname, j.err_line, j.err_col, j.error);
		return 1;
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * [CLI] The command line and main: usage, the options table, and
 * run_server. Writes the settings of [LIMITS], then hands over to serve()
 * or to a subcommand.
 * ------------------------------------------------------------------------ */

static void
usage(FILE *f)
{
	fputs(
"usage: xwebhook [options]          run the webhook server\n"
"       xwebhook crc TOKEN          print the JSON body X expects for crc_token TOKEN\n"
"       xwebhook sign [FILE]        print the x-twitter-webhooks-signature for FILE (or stdin)\n"
"       xwebhook fmt [FILE]         pretty-print JSON as the server prints events\n"
"       xwebhook check URL          check URL the way X does before accepting it; exit status\n"
"                                   0: X would accept it, 1: X would not, 2: check cannot tell\n"
"                                   (no consumer secret to check the CRC answer's value, say)\n"
"       xwebhook --help | --version\n"
"\n"
"X's side (TLS build), one call to X's API each; X's JSON answer on stdout, or one\n"
"line on stderr and exit status 1 (also for a 2xx without the data X's API sends):\n"
"       xwebhook webhooks                        list the app's webhooks\n"
"       xwebhook register URL                    register URL (X runs a CRC against it first)\n"
"       xwebhook validate WEBHOOK_ID             have X run a CRC now; exit 0 only once X lists\n"
"                                                the webhook valid (asked for up to 10 s)\n"
"       xwebhook unregister WEBHOOK_ID           delete the webhook\n"
"       xwebhook subscribe WEBHOOK_ID            send the account's events to it (user context)\n"
"       xwebhook subscribed WEBHOOK_ID           is the account subscribed (user context)\n"
"       xwebhook subscriptions WEBHOOK_ID        list the subscribed user ids\n"
"       xwebhook subscription-count              the app's subscriptions, and how many it may have\n"
"       xwebhook unsubscribe WEBHOOK_ID USER_ID  stop a user's events\n"
"       xwebhook replay WEBHOOK_ID FROM TO       resend events of FROM..TO (yyyymmddhhmm, UTC,\n"
"                                                within the past 24 hours; TO after FROM)\n"
"       xwebhook login                           sign an account in with OAuth 2.0 (PKCE): its\n"
"                                                token, kept in --state-dir, then carries the\n"
"                                                user-context calls, refreshed as it runs out\n"
"       xwebhook logout                          revoke that token at X and remove it\n"
"       xwebhook activity add EVENT_TYPE (--user-id ID | --keyword WORDS)\n"
"                [--direction inbound|outbound] [--tag TEXT] [--webhook ID]\n"
"                                                subscribe to an X Activity API event\n"
"       xwebhook activity list                   list those subscriptions (every page)\n"
"       xwebhook activity update SUBSCRIPTION_ID [--tag TEXT] [--webhook ID]\n"
"       xwebhook activity delete SUBSCRIPTION_ID...  delete them (several in one call)\n"
"       xwebhook stream link WEBHOOK_ID [--tweet-fields LIST] [--expansions LIST]\n"
"                           [--media-fields LIST] [--poll-fields LIST] [--place-fields LIST]\n"
"                           [--user-fields LIST]\n"
"                                                deliver the filtered stream (Enterprise) to it,\n"
"                                                with these comma-separated fields\n"
"       xwebhook stream unlink WEBHOOK_ID        stop delivering the stream to it\n"
"       xwebhook stream links                    list the webhooks the stream goes to\n"
"\n"
"The consumer secret (the app's API Key Secret) comes from TWITTER_CONSUMER_SECRET,\n"
"else CONSUMER_SECRET, in the environment, or from --secret-file; never from argv.\n"
"X's calls take TWITTER_BEARER_TOKEN; subscribe, subscribed, and activity add for\n"
"private events (likes, DMs, chat, mentions, replies, quotes, reposts, mutes,\n"
"blocks, broadcast chat), take the token login stored, else TWITTER_CONSUMER_KEY,\n"
"the consumer secret, TWITTER_ACCESS_TOKEN and TWITTER_ACCESS_TOKEN_SECRET; login\n"
"takes TWITTER_CLIENT_ID (and TWITTER_CLIENT_SECRET for a confidential client).\n"
"\n", f);
	/* Several strings: ISO C promises literals of 4095 bytes, no more. */
	fputs(
"options:\n"
"  -l, --listen ADDR:PORT   address to serve (default 0.0.0.0:8080; [::]:8080 for IPv6,\n"
"                           a bare PORT for all IPv4 addresses, port 0 for any free port)\n"
"  -p, --path PATH          the webhook's path (default /webhooks/twitter)\n"
"  -o, --output FILE        also append each event to FILE as one compact JSON line,\n"
"                           synced to disk before X is told it arrived\n"
"      --secret-file FILE   read the consumer secret from FILE (one trailing newline dropped)\n"
"      --max-body BYTES     largest event body (default 1M; K, M and G suffixes; at most 1G)\n"
"      --max-conns N        connection slots (default 1024); when all are taken, a newcomer\n"
"                           gets the slot of the idlest connection of the busiest address\n"
"      --forward URL        also hand each event to a broker, before its 200 (up to 4):\n"
"                           redis://[[USER]:PASSWORD@]HOST:PORT/STREAM  (a Redis stream;\n"
"                             ?maxlen=N after it trims the stream to about N entries;\n"
"                             ?dedupe=SECONDS, default 600, stores a resend once; 0: off)\n"
"                           nats://[TOKEN@|USER:PASSWORD@]HOST:PORT/SUBJECT  (JetStream)\n"
"                           {type} in STREAM or SUBJECT: each event's type (x.events.{type})\n"
"  -q, --quiet              no access log on stderr\n"
"  -u, --user NAME          once the port is bound (and keys read), run as NAME\n"
"      --pid-file FILE      write the pid to FILE, locked while serving, and remove it at\n"
"                           the stop (for pkill -HUP -L -F FILE -x xwebhook)\n"
"      --metrics ADDR:PORT  serve GET /metrics (Prometheus) and GET /healthz (200, or 503\n"
"                           with the reason) there; never the webhook's port\n"
#ifdef XWEBHOOK_TLS
"      --cert FILE          serve HTTPS with this PEM chain, leaf first (fullchain.pem)\n"
"      --key FILE           and this PEM private key (RSA or EC); SIGHUP reloads both\n"
"      --acme DOMAIN        or get a certificate for DOMAIN from an ACME CA and keep it\n"
"                           renewed (tls-alpn-01 on the serving port); without --listen,\n"
"                           listen on 0.0.0.0:443\n"
"      --acme-server URL    the CA's directory (default Let's Encrypt's)\n"
"      --acme-cacert FILE   roots for the CA's own HTTPS (private CAs, tests)\n"
"      --acme-email ADDR    the account's contact\n"
"      --acme-http ADDR:PORT  answer http-01 there (e.g. :80) instead of tls-alpn-01\n"
"      --state-dir DIR      account key, DIR/DOMAIN/fullchain.pem and privkey.pem, and\n"
"                           DIR/DOMAIN/orders (the week's certificates: 5 at most)\n"
"                           (default /var/lib/xwebhook; 0700, the --user's)\n"
#endif
"\n", f);
	fputs(
"check options:\n"
"      --connect ADDR:PORT  dial ADDR:PORT, keeping the URL's host for SNI and Host\n"
"      --post               also send a signed test event (it reaches your pipeline)\n"
#ifdef XWEBHOOK_TLS
"check and X's calls:\n"
"      --cacert FILE        trust these roots (default /etc/ssl/certs/ca-certificates.crt)\n"
"X's calls:\n"
"      --api BASE_URL       X's API (default https://api.x.com)\n"
"      --state-dir DIR      where login keeps oauth2.token (0600)\n"
"login options:\n"
"      --scopes \"A B ...\"   the scopes asked for (default tweet.read users.read\n"
"                           offline.access dm.read like.read mute.read block.read)\n"
"      --port N             the redirect's loopback port (default " STR(LOGIN_PORT_DEFAULT_N) "):\n"
"                           http://127.0.0.1:N/callback, listed in the app's settings\n"
"      --wait SECONDS       how long to wait for the browser (default 300)\n"
"      --auth-url URL       X's authorize page (default " AUTH_URL_DEFAULT ")\n"
"activity add and activity update:\n"
"      --user-id ID         the user whose events (every event type but news.new)\n"
"      --keyword WORDS      the words news.new follows (news.new only)\n"
"      --direction DIR      inbound or outbound likes (like.create only)\n"
"      --tag TEXT           1 to 200 characters X puts in each event\n"
"      --webhook ID         the webhook that gets the events\n"
#endif
"  -h, --help               this text\n"
"  -V, --version            the version\n"
"\n"
"stdout carries the events and nothing else; the startup line, the access log and\n"
"errors go to stderr.\n", f);
}

/* Parse a byte count with an optional K, M or G suffix (powers of 1024). */
static size_t
parse_size(const char *s, const char *opt)
{
	char *end;
	unsigned long long v;

	errno = 0;
	if (!isdigit((unsigned char)s[0]))
		die("bad %s '%s': expected a number of bytes", opt, s);
	v = strtoull(s, &end, 10);
	if (errno == 0 && *end != '\0' && end[1] == '\0') {
		switch (*end | 0x20) {
		case 'k': v = v > (1ULL << 40) ? 1ULL << 62 : v << 10; end++; break;
		case 'm': v = v > (1ULL << 40) ? 1ULL << 62 : v << 20; end++; break;
		case 'g': v = v > (1ULL << 40) ? 1ULL << 62 : v << 30; end++; break;
		}
	}
	if (errno != 0 || *end != '\0' || v == 0 || v > (1ULL << 30))
		die("bad %s '%s': expected 1 to 1G bytes", opt, s);
	return (size_t)v;
}

/* --path: a path starting with '/', without a query, fragment or spaces. */
static void
path_option(const char *p)
{
	const char *k;

	for (k = p; *k; k++)
		if ((unsigned char)*k <= 0x20 || (unsigned char)*k >= 0x7f || *k == '?' || *k == '#')
			break;
	if (p[0] != '/' || *k != '\0')
		die("bad --path '%s': expected a path starting with '/', without '?' or spaces", p);
	webhook_path = p;
}

/* --max-conns: 1 to 100000. */
static void
max_conns_option(const char *v)
{
	char *end;
	long n;

	errno = 0;
	n = strtol(v, &end, 10);
	if (errno != 0 || end == v || *end != '\0' || n < 1 || n > 100000)
		die("bad --max-conns '%s': expected 1 to 100000", v);
	max_conns = (unsigned)n;
}

/* One more --forward; its password, if any, is starred out of argv (v). */
static void
forward_option(const char *v)
{
	const char *why, *at = strchr(v, '@');
	struct forward *f = &forwards[nforwards];

	if (nforwards == MAX_FORWARDS)
		die("at most %d --forward", MAX_FORWARDS);
	if (forward_parse(v, f, &why) < 0)
		die("bad --forward '%.*s%s': %s", at ? (int)(strstr(v, "://") ? strstr(v, "://") + 3 - v : 0) :
		    (int)strlen(v), v, at ? "...@..." : "", why);
	if (f->password[0] != '\0') {
		/* Out of ps and /proc/PID/cmdline from here on. */
		size_t pn = strlen(f->password);

		memset((char *)at - pn, '*', pn);  /* it ends at the '@' */
	}
	nforwards++;
}

/* --version: which build this is. */
static void
version_print(void)
{
#ifdef XWEBHOOK_TLS
	printf("xwebhook %s (HTTP and HTTPS; TLS 1.2 through BearSSL)\n", XWEBHOOK_VERSION);
#else
	printf("xwebhook %s (plain HTTP; built without TLS: make TLS=1 for HTTPS)\n", XWEBHOOK_VERSION);
#endif
}

/* The options that only set a path or a name, by short and long name. */
static const struct {
	const char *s, *l;
	const char **set;
} name_options[] = {
	{ "-o", "--output", &output_path },
	{ "--secret-file", "--secret-file", &secret_file },
	{ "-u", "--user", &run_as },
	{ "--pid-file", "--pid-file", &pid_path },
	{ "--metrics", "--metrics", &metrics_spec },
	{ "--connect", "--connect", &check_connect },
	{ "--api", "--api", &api_base },
	{ "--cacert", "--cacert", &cacert_path },
	{ "--user-id", "--user-id", &xaa_user_id },
	{ "--keyword", "--keyword", &xaa_keyword },
	{ "--direction", "--direction", &xaa_direction },
	{ "--tag", "--tag", &xaa_tag },
	{ "--webhook", "--webhook", &xaa_webhook },
};

#ifdef XWEBHOOK_TLS
/* The TLS build's options that only set a path or a name. */
static const struct {
	const char *name;
	const char **set;
} tls_options[] = {
	{ "--cert", &cert_path },
	{ "--key", &key_path },
	{ "--acme", &acme_domain },
	{ "--acme-server", &acme_server },
	{ "--acme-cacert", &acme_cacert },
	{ "--acme-email", &acme_email },
	{ "--acme-http", &acme_http_spec },
	{ "--state-dir", &state_dir },
	{ "--auth-url", &auth_url },
	{ "--scopes", &login_scopes },
	{ "--port", &login_port },
	{ "--wait", &login_wait },
};
#endif

/* activity's options go with the activity commands that take them, not
 * with another, where they would silently do nothing. */
static void
xaa_options_check(const struct x_command *xc)
{
	const char *name = xc != NULL ? xc->name : "";

	if ((xaa_user_id != NULL || xaa_keyword != NULL || xaa_direction != NULL) &&
	    strcmp(name, "activity add") != 0)
		die("--user-id, --keyword and --direction go with activity add (see xwebhook --help)");
	if ((xaa_tag != NULL || xaa_webhook != NULL) && strcmp(name, "activity add") != 0 &&
	    strcmp(name, "activity update") != 0)
		die("--tag and --webhook go with activity add and activity update (see xwebhook --help)");
}

/* Take the option called name (argv[*i] is a, val its "=value" or NULL)
 * into the settings above; one that needs a value and has none takes the
 * next word, moving *i on. Dies with one line on anything it does not
 * know; exits 0 after --help or --version. */
static void
option_take(const char *name, const char *a, const char *val, int argc, char **argv, int *i)
{
#define OPT(s, l) (strcmp(name, s) == 0 || strcmp(name, l) == 0)
#define VALUE() (val != NULL ? val : *i + 1 < argc ? (val = argv[++*i]) : \
	(die("option %s needs a value (see xwebhook --help)", name), ""))
	size_t k;

	for (k = 0; k < sizeof(name_options) / sizeof(name_options[0]); k++)
		if (OPT(name_options[k].s, name_options[k].l)) {
			*name_options[k].set = VALUE();
			return;
		}
	if (OPT("-h", "--help")) {
		usage(stdout);
		exit(0);
	} else if (OPT("-V", "--version")) {
		version_print();
		exit(0);
	} else if (OPT("-q", "--quiet")) {
		quiet = 1;
	} else if (OPT("-l", "--listen")) {
		listen_spec = VALUE();
		listen_given = 1;
	} else if (OPT("-p", "--path")) {
		path_option(VALUE());
	} else if (OPT("--max-body", "--max-body")) {
		max_body = parse_size(VALUE(), "--max-body");
	} else if (OPT("--max-conns", "--max-conns")) {
		max_conns_option(VALUE());
	} else if (OPT("--forward", "--forward")) {
		forward_option(VALUE());
	} else if (OPT("--cert", "--key") || OPT("--acme", "--acme-server") ||
	    OPT("--acme-cacert", "--acme-email") || OPT("--acme-http", "--state-dir") ||
	    OPT("--auth-url", "--scopes") || OPT("--port", "--wait")) {
#ifdef XWEBHOOK_TLS
		const char *v = VALUE();

		for (k = 0; k < sizeof(tls_options) / sizeof(tls_options[0]); k++)
			if (strcmp(name, tls_options[k].name) == 0)
				*tls_options[k].set = v;
#else
		die("%s needs the TLS build of xwebhook (make TLS=1)", name);
#endif
	} else if (OPT("--post", "--post")) {
		check_post = 1;
	} else if (x_stream_field_option(name) >= 0) {
		stream_fields[x_stream_field_option(name)] = VALUE();
	} else if (OPT("--secret", "-s")) {
		die("the secret is never taken from the command line, where ps shows it: "
		    "set TWITTER_CONSUMER_SECRET or use --secret-file FILE");
	} else {
		die("unknown option '%s' (see xwebhook --help)", a);
	}
#undef OPT
#undef VALUE
}

/* Take the options into the settings above, and the words that are not
 * options (a subcommand and its arguments) into args. Dies with one line
 * on anything it does not know; exits 0 after --help or --version. */
static int
parse_commandline(int argc, char **argv, const char *args[SUBCMD_ARGS_MAX + 1])
{
	int nargs = 0, i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i], *eq = NULL, *val = NULL;
		char name[32];
		size_t nl;

		if (a[0] != '-' || strcmp(a, "-") == 0) {
			if (nargs == SUBCMD_ARGS_MAX)
				die("too many arguments (see xwebhook --help)");
			args[nargs++] = a;
			continue;
		}
		if (strcmp(a, "--") == 0) {
			while (++i < argc && nargs < SUBCMD_ARGS_MAX)
				args[nargs++] = argv[i];
			if (i < argc)
				die("too many arguments (see xwebhook --help)");
			break;
		}
		/* --name=value, or --name value, or -x value. */
		if (a[1] == '-' && (eq = strchr(a, '=')) != NULL)
			val = eq + 1;
		nl = eq ? (size_t)(eq - a) : strlen(a);
		if (nl >= sizeof(name))
			die("unknown option '%s' (see xwebhook --help)", a);
		memcpy(name, a, nl);
		name[nl] = '\0';
		option_take(name, a, val, argc, argv, &i);
	}

	return nargs;
}

/* The server: the secret, the sinks, the identity and the port, as root;
 * then the drop to --user, and serving until SIGINT or SIGTERM. */
static int
run_server(void)
{
	char url[INET6_ADDRSTRLEN + 300];
	unsigned i;
	int lfd;

	load_secret(1);
	if (output_path != NULL)
		open_output(run_as_user());
	if (output_path != NULL)
		strcat(sink_names, "+output");
	for (i = 0; i < nforwards; i++) {
		struct forward *f = &forwards[i];
		char why[400];

		if (forward_open(f, now_ms() + FORWARD_CONNECT_MS, why, sizeof(why)) < 0)
			die("--forward %s: %s", f->shown, why);
		if (f->kind == FORWARD_NATS && max_body + NATS_HEADERS > f->max_payload) {
			if (f->max_payload <= NATS_HEADERS)
				die("--forward %s: the server's max_payload of %zu bytes holds no event", f->shown,
				    f->max_payload);
			max_body = f->max_payload - NATS_HEADERS;
			warn("--forward %s: --max-body lowered to %zu bytes, what the server's max_payload "
			    "of %zu takes with our headers", f->shown, max_body, f->max_payload);
		}
		if (f->kind == FORWARD_NATS)
			warn("--forward %s: JetStream stream %s takes the events", f->shown, f->stream);
		else
			warn("--forward %s: Redis takes the events%s%s%s", f->shown,
			    f->maxlen[0] ? ", the stream trimmed to about " : " (the stream is never trimmed: "
			    "?maxlen=N keeps about N entries)", f->maxlen, f->maxlen[0] ? " entries" : "");
		/* At most 4 of 6 bytes each: the buffer holds them. */
		strcat(sink_names, f->kind == FORWARD_REDIS ? "+redis" : "+nats");
	}
	raise_fd_limit();
#ifdef XWEBHOOK_TLS
	if (acme_domain != NULL && (cert_path != NULL || key_path != NULL))
		die("--acme gets and renews its own certificate: give it without --cert and --key");
	if (acme_domain == NULL && (acme_http_spec != NULL || acme_email != NULL || acme_cacert != NULL ||
	    strcmp(state_dir, "/var/lib/xwebhook") != 0 || strstr(acme_server, "letsencrypt") == NULL))
		die("--acme-server, --acme-cacert, --acme-email, --acme-http and --state-dir go with --acme DOMAIN");
	if (strcmp(auth_url, AUTH_URL_DEFAULT) != 0 || strcmp(login_scopes, LOGIN_SCOPES_DEFAULT) != 0 ||
	    login_port != NULL || login_wait != NULL)
		die("--auth-url, --scopes, --port and --wait go with xwebhook login");
	if (acme_domain != NULL) {
		tls_suites_init();
		session_cache_reset();
		if (!listen_given)
			listen_spec = "0.0.0.0:443";
		acme_prepare(run_as != NULL ? run_as_user() : NULL);
	}
	if ((cert_path == NULL) != (key_path == NULL))
		die("HTTPS needs both --cert FILE and --key FILE");
	if (cert_path != NULL) {
		char err[1024];

		tls_suites_init();
		session_cache_reset();
		current_identity = identity_load(cert_path, key_path, err, sizeof(err));
		if (current_identity == NULL)
			die("%s", err);
		identity_describe(current_identity, "");
	}
#endif
	lfd = listen_on(listen_spec, url, sizeof(url));
	metrics_listen();
#ifdef XWEBHOOK_TLS
	if (acme_http_spec != NULL) {
		char http[INET6_ADDRSTRLEN + 300];

		acme_http_fd = listen_on(acme_http_spec, http, sizeof(http));
		warn("ACME: answering http-01 on %s (everything else there redirects to https)", http);
	}
#endif
	/* Bound and keys loaded: root is no longer needed. */
	if (run_as != NULL)
		drop_privileges(run_as);
	else if (geteuid() == 0)
		warn("warning: running as root; --user NAME drops to NAME once the port is bound");
	return serve(lfd, url);
}

int
main(int argc, char **argv)
{
	const char *args[SUBCMD_ARGS_MAX + 1] = { NULL };  /* NULL after the last */
	int nargs = parse_commandline(argc, argv, args);
	/* ("activity add" or "stream link" as one word is no command) */
	const struct x_command *xc = args[0] != NULL && strchr(args[0], ' ') == NULL ? x_command(args[0], args[1]) :
	    NULL;

	signal(SIGPIPE, SIG_IGN);
	sha256_select();
	/* A SIGHUP meant for the server (a hangup, or a pkill by name) does
	 * not end a subcommand: `tail -f | xwebhook fmt` and a cron check go on. */
	if (args[0] != NULL)
		signal(SIGHUP, SIG_IGN);
	xaa_options_check(xc);
	x_stream_options_check(xc);
	if (xc != NULL) {
		if (strchr(xc->name, ' ') != NULL) {  /* "activity add": args[0] is "add" */
			args[0] = xc->name;
			memmove(&args[1], &args[2], (size_t)(nargs - 1) * sizeof(args[0]));
			args[--nargs] = NULL;
		}
		if (xc->nargs >= 0 ? nargs != xc->nargs + 1 : nargs < 2)
			die("usage: xwebhook %s%s", xc->name, xc->usage);
		return xc->run != NULL ? xc->run(xc, args) : cmd_x(xc, args);
	}
	if (args[0] != NULL && strcmp(args[0], "activity") == 0)
		die("usage: xwebhook activity add|list|update|delete ... (see xwebhook --help)");
	if (args[0] != NULL && strcmp(args[0], "stream") == 0)
		die("usage: xwebhook stream link|unlink WEBHOOK_ID, or xwebhook stream links");
	if (args[0] != NULL) {
		if (strcmp(args[0], "crc") == 0 && nargs == 2)
			return cmd_crc(args[1]);
		if (strcmp(args[0], "sign") == 0 && nargs <= 2)
			return cmd_sign(args[1]);
		if (strcmp(args[0], "fmt") == 0 && nargs <= 2)
			return cmd_fmt(args[1]);
		if (strcmp(args[0], "check") == 0 && nargs == 2)
			return cmd_check(args[1]);
		if ((strcmp(args[0], "login") == 0 || strcmp(args[0], "logout") == 0) && nargs == 1)
#ifdef XWEBHOOK_TLS
			return args[0][3] == 'i' ? cmd_login() : cmd_logout();
#else
			die("%s: X's API is HTTPS only, and this build has no TLS: build with make TLS=1", args[0]);
#endif
		if (strcmp(args[0], "login") == 0 || strcmp(args[0], "logout") == 0)
			die("usage: xwebhook %s [options]", args[0]);
		if (strcmp(args[0], "check") == 0)
			die("usage: xwebhook check URL");
		if (strcmp(args[0], "crc") == 0)
			die("usage: xwebhook crc TOKEN");
		if (strcmp(args[0], "sign") == 0 || strcmp(args[0], "fmt") == 0)
			die("usage: xwebhook %s [FILE]", args[0]);
		die("unknown command '%s' (see xwebhook --help)", args[0]);
	}

	return run_server();
}
