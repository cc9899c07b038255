/*
 * libFuzzer target: the chunked-body decoder. Invariant: decoding in
 * pieces (sizes seeded by the first four bytes) gives the same status,
 * the same bytes and the same count used as decoding all at once, and
 * never more than the limit.
 */
#define main xwebhook_main
#include "../xwebhook.c"
#undef main

enum { LIMIT = 8192 };

static enum status
decode(const char *p, size_t n, uint32_t seed, struct buf *out, size_t *used_total)
{
	struct chunked ch;
	enum status st = S_INCOMPLETE;
	size_t at = 0;
	const char *why = NULL;

	memset(&ch, 0, sizeof(ch));
	out->len = 0;
	while (at < n) {
		size_t step = n - at, used = 0;

		if (seed) {
			seed = seed * 1103515245u + 12345u;
			step = 1 + (seed >> 16) % 32;
			if (step > n - at)
				step = n - at;
		}
		st = chunked_decode(&ch, p + at, step, &used, out, LIMIT, &why);
		if (used > step || (st == S_INCOMPLETE && used != step))
			abort();
		at += used;
		if (st != S_INCOMPLETE)
			break;
	}
	if (st != S_OK && st != S_INCOMPLETE && why == NULL)
		abort();
	*used_total = at;
	return st;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct buf a = { 0 }, b = { 0 };
	uint32_t seed;
	size_t ua, ub;
	enum status sa, sb;

	if (size < 4)
		return 0;
	memcpy(&seed, data, 4);
	sa = decode((const char *)data + 4, size - 4, 0, &a, &ua);
	sb = decode((const char *)data + 4, size - 4, seed | 1, &b, &ub);
	if (sa != sb || a.len > LIMIT)
		abort();
	/* On success or need-more, the data and the bytes used agree. */
	if ((sa == S_OK || sa == S_INCOMPLETE) &&
	    (a.len != b.len || ua != ub || (a.len && memcmp(a.p, b.p, a.len) != 0)))
		abort();
	buf_free(&a);
	buf_free(&b);
	return 0;
}
