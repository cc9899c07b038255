/*
 * libFuzzer target: the JSON validator, indenter and compactor.
 * Invariants: checking, indenting and compacting agree on validity and on
 * where the first error is; feeding in two pieces changes nothing; the
 * indented output is valid JSON and compacts back to the compact form of
 * the input.
 */
#define main xwebhook_main
#include "../xwebhook.c"
#undef main

/* Run one style over p in two pieces split at cut; -1 if invalid. */
static int
run(const char *p, size_t n, size_t cut, enum json_style style, int stream, struct buf *out,
    unsigned long *line, unsigned long *col)
{
	struct json j;
	int r;

	if (out != NULL)
		out->len = 0;
	json_init(&j, style, out);
	j.stream = stream;
	r = json_feed(&j, p, cut);
	if (r == 0)
		r = json_feed(&j, p + cut, n - cut);
	if (r == 0)
		r = json_finish(&j);
	*line = j.err_line;
	*col = j.err_col;
	if (r < 0 && j.error == NULL)
		abort();
	return r;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data;
	size_t cut = size ? data[0] % (size + 1) : 0;
	struct buf ind = { 0 }, cmp = { 0 }, again = { 0 };
	unsigned long l1, c1, l2, c2, l3, c3, l4, c4;
	int stream;

	for (stream = 0; stream < 2; stream++) {
		int r1 = run(p, size, size, JSON_CHECK, stream, NULL, &l1, &c1);
		int r2 = run(p, size, cut, JSON_INDENT, stream, &ind, &l2, &c2);
		int r3 = run(p, size, cut, JSON_COMPACT, stream, &cmp, &l3, &c3);

		if (r1 != r2 || r1 != r3)
			abort();
		if (r1 < 0) {
			if (l1 != l2 || c1 != c2 || l1 != l3 || c1 != c3)
				abort();
			continue;
		}
		/* The indented text is valid and compacts to the same bytes. */
		if (run(ind.p, ind.len, ind.len / 2, JSON_COMPACT, 1, &again, &l4, &c4) != 0)
			abort();
		if (!stream && (again.len != cmp.len || memcmp(again.p, cmp.p, cmp.len) != 0))
			abort();
		/* Compact output has no whitespace outside strings, so it is
		 * never longer than the input. */
		if (!stream && cmp.len > size)
			abort();
	}
	buf_free(&ind);
	buf_free(&cmp);
	buf_free(&again);
	return 0;
}
