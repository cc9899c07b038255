/*
 * libFuzzer target: the query decoder and the crc_token rules.
 * Invariants: a decoded value is never longer than its encoding; the
 * bytes kept are the first ones decoded; a token that passes holds only
 * the base64 and base64url alphabet, 1 to 255 bytes.
 */
#define main xwebhook_main
#include "../xwebhook.c"
#undef main

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char small[8], big[MAX_CRC_TOKEN + 1];
	const char *q = (const char *)data;
	long a = query_param(q, size, "crc_token", big, sizeof(big));
	long b = query_param(q, size, "crc_token", small, sizeof(small));
	size_t i;

	if (a != b || a > (long)size)
		abort();
	if (a > 0 && memcmp(big, small, (size_t)(a < (long)sizeof(small) ? a : (long)sizeof(small))) != 0)
		abort();
	if (a >= 0 && a <= (long)sizeof(big) && crc_token_ok(big, (size_t)a)) {
		if (a < 1 || a > MAX_CRC_TOKEN)
			abort();
		for (i = 0; i < (size_t)a; i++)
			if (!isalnum((unsigned char)big[i]) && !strchr("+/=_-", big[i]))
				abort();
	}
	if (form_decode(q, size, big, sizeof(big)) > size)
		abort();
	return 0;
}
