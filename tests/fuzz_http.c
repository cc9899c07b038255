/*
 * libFuzzer target: the request head scanner and parser, fed the way the
 * server feeds them (in pieces, as reads return), then the chunked body
 * and the query decoder on what they produce.
 *
 * Invariant: feeding the bytes in pieces gives exactly the verdict of
 * feeding them at once. The first four input bytes seed the piece sizes.
 */
#define main xwebhook_main
#include "../xwebhook.c"
#undef main

static uint32_t
next_rand(uint32_t *s)
{
	*s = *s * 1103515245u + 12345u;
	return *s >> 16;
}

/* Scan and parse as the server does, in pieces; returns the status. */
static enum status
feed_head(const char *p, size_t n, uint32_t seed, struct request *req, size_t *head_len)
{
	size_t scan = 0, line_end = 0, have = 0;
	const char *why = NULL;
	enum status st = S_INCOMPLETE;

	*head_len = 0;
	while (have < n) {
		size_t step = seed ? 1 + next_rand(&seed) % 64 : n;

		have = have + step < n ? have + step : n;
		st = http_scan_head(p, have, &scan, &line_end, head_len, &why);
		if (st != S_INCOMPLETE)
			break;
	}
	if (st == S_OK) {
		st = http_parse_head(p, *head_len, req, &why);
		if (why == NULL)
			abort();
	}
	return st;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint32_t seed;
	const char *p;
	size_t n, h1, h2;
	struct request r1, r2;
	enum status s1, s2;

	if (size < 4)
		return 0;
	memcpy(&seed, data, 4);
	p = (const char *)data + 4;
	n = size - 4;
	s1 = feed_head(p, n, 0, &r1, &h1);
	s2 = feed_head(p, n, seed | 1, &r2, &h2);
	if (s1 != s2 || h1 != h2)
		abort();  /* the verdict depends on how the bytes arrived */
	if (s1 == S_OK) {
		char token[MAX_CRC_TOKEN + 1];
		const char *q = memchr(r1.target, '?', r1.target_len);

		if (r1.head_len > n || r1.path_len > r1.target_len)
			abort();
		if (q != NULL) {
			long t = query_param(q + 1, r1.target_len - r1.path_len - 1, "crc_token", token, sizeof(token));

			if (t > (long)r1.target_len)
				abort();
			if (t >= 0)
				(void)crc_token_ok(token, (size_t)t);
		}
		if (r1.chunked) {
			struct chunked ch;
			struct buf out = { 0 };
			size_t used;
			const char *why;

			memset(&ch, 0, sizeof(ch));
			(void)chunked_decode(&ch, p + h1, n - h1, &used, &out, 4096, &why);
			if (used > n - h1 || out.len > 4096)
				abort();
			buf_free(&out);
		}
	}
	return 0;
}
