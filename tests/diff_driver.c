/*
 * Driver for tests/differential.py: reads commands on stdin, one a line,
 * and answers each on stdout, so that Python can compare xwebhook's own
 * SHA-256, HMAC and JSON indenter with hashlib, hmac and json.
 *   H KEYHEX MSGHEX  ->  SHA256(MSG)HEX HMAC(KEY,MSG)HEX
 *   J DOCHEX         ->  the indented document in hex, or ERR
 * ("-" stands for an empty hex string.)
 */
#define main xwebhook_main
#include "../xwebhook.c"
#undef main

static size_t
from_hex(const char *s, unsigned char *out)
{
	size_t n = 0;

	if (strcmp(s, "-") == 0)
		return 0;
	for (; s[0] && s[1]; s += 2)
		out[n++] = (unsigned char)(hex_value((unsigned char)s[0]) << 4 | hex_value((unsigned char)s[1]));
	return n;
}

static void
put_hex(const unsigned char *p, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < n; i++) {
		putchar(digits[p[i] >> 4]);
		putchar(digits[p[i] & 15]);
	}
}

int
main(void)
{
	struct buf line = { 0 };
	int c;

	sha256_select();  /* as the server does: the x86 SHA path where there is one */

	for (;;) {
		line.len = 0;
		while ((c = getchar()) != EOF && c != '\n')
			buf_addc(&line, (char)c);
		if (c == EOF && line.len == 0)
			break;
		buf_addc(&line, '\0');
		if (line.p[0] == 'H') {
			char *key = line.p + 2, *msg = strchr(key, ' ');
			unsigned char *k, *m, d[32];
			size_t kl, ml;
			struct digest s;
			struct hmac_key hk;

			*msg++ = '\0';
			k = xmalloc(strlen(key) / 2 + 1);
			m = xmalloc(strlen(msg) / 2 + 1);
			kl = from_hex(key, k);
			ml = from_hex(msg, m);
			sha256_init(&s);
			digest_update(&s, m, ml);
			digest_final(&s, d);
			put_hex(d, 32);
			putchar(' ');
			hmac_key_init(&hk, k, kl);
			hmac_digest(&hk, m, ml, d, NULL);
			put_hex(d, 32);
			/* Both again in one pass, as with --forward. */
			sha256_init(&s);
			hmac_digest(&hk, m, ml, d, &s);
			putchar(' ');
			put_hex(d, 32);
			digest_final(&s, d);
			putchar(' ');
			put_hex(d, 32);
			free(k);
			free(m);
		} else if (line.p[0] == 'J') {
			unsigned char *doc = xmalloc(strlen(line.p) / 2 + 1);
			size_t n = from_hex(line.p + 2, doc);
			struct buf out = { 0 };
			struct json j;

			json_init(&j, JSON_INDENT, &out);
			if (json_feed(&j, (char *)doc, n) == 0 && json_finish(&j) == 0)
				put_hex((unsigned char *)out.p, out.len);
			else
				fputs("ERR", stdout);
			buf_free(&out);
			free(doc);
		}
		putchar('\n');
		fflush(stdout);
	}
	buf_free(&line);
	return 0;
}
