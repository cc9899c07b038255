/*
 * libFuzzer target (TLS build): loading a certificate chain and key from
 * PEM text, and reading a certificate's serial and dates from DER.
 * The input is split at its first NUL: chain text, then key text.
 * Invariant: either an identity comes back, or a reason does.
 */
#define main xwebhook_main
#include "../xwebhook.c"
#undef main

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, 0, size);
	size_t cl = nul ? (size_t)(nul - data) : size;
	struct buf cert = { 0 }, key = { 0 };
	struct identity *id;
	struct cert_info ci;
	char err[1024];

	buf_add(&cert, data, cl);
	if (nul != NULL)
		buf_add(&key, nul + 1, size - cl - 1);
	err[0] = '\0';
	id = identity_parse("cert.pem", &cert, "key.pem", &key, err, sizeof(err));
	if (id == NULL && err[0] == '\0')
		abort();
	if (id != NULL)
		identity_release(id);
	(void)cert_info(data, size, &ci);
	buf_free(&cert);
	buf_free(&key);
	return 0;
}
