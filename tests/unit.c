/*
 * Unit tests for xwebhook. The server file is included whole, darkhttpd's
 * way, so these reach its static functions with no header in between.
 * Known answers come from the standards: FIPS 180-4 examples for SHA-256,
 * RFC 4231 for HMAC-SHA256, RFC 4648 for base64.
 */
#define main xwebhook_main
#include "../xwebhook.c"
#undef main

static int passed, failed;

#define CHECK(cond, ...) do { \
	if (cond) { \
		passed++; \
	} else { \
		failed++; \
		fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
		fprintf(stderr, __VA_ARGS__); \
		fputc('\n', stderr); \
	} \
} while (0)

static void
hex(const unsigned char *p, size_t n, char *out)
{
	hex_encode(p, n, out);
}

static size_t
unhex(const char *s, unsigned char *out)
{
	size_t n = 0;

	for (; s[0] && s[1]; s += 2)
		out[n++] = (unsigned char)(hex_value((unsigned char)s[0]) << 4 | hex_value((unsigned char)s[1]));
	return n;
}

/* ---- SHA-256 ---- */

static void
sha256_hex(const void *p, size_t n, size_t split, char out[65])
{
	struct digest s;
	unsigned char d[32];

	sha256_init(&s);
	if (split > n)
		split = n;
	digest_update(&s, p, split);
	digest_update(&s, (const char *)p + split, n - split);
	digest_final(&s, d);
	hex(d, 32, out);
}

static void
test_sha256_impl(void)
{
	static const struct { const char *msg, *digest; } v[] = {
		{ "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
		{ "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
		{ "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
		  "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1" },
		{ "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
		  "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1" },
	};
	char out[65];
	size_t i, split;
	struct digest s;
	unsigned char d[32], block[1000];

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		/* Every split point: the block buffering must not matter. */
		for (split = 0; split <= strlen(v[i].msg); split++) {
			sha256_hex(v[i].msg, strlen(v[i].msg), split, out);
			if (strcmp(out, v[i].digest) != 0)
				break;
		}
		CHECK(split > strlen(v[i].msg), "sha256(\"%s\") split %zu = %s", v[i].msg, split, out);
	}
	/* A million 'a', fed in 1000-byte pieces. */
	memset(block, 'a', sizeof(block));
	sha256_init(&s);
	for (i = 0; i < 1000; i++)
		digest_update(&s, block, sizeof(block));
	digest_final(&s, d);
	hex(d, 32, out);
	CHECK(strcmp(out, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0,
	    "sha256(million a) = %s", out);
	/* Lengths around the padding boundary (55, 56, 63, 64 bytes) against
	 * one-shot hashing of the same bytes fed one at a time. */
	for (i = 50; i < 70; i++) {
		char a[65], b[65];
		size_t k;

		sha256_hex(block, i, 0, a);
		sha256_init(&s);
		for (k = 0; k < i; k++)
			digest_update(&s, block, 1);
		digest_final(&s, d);
		hex(d, 32, b);
		CHECK(strcmp(a, b) == 0, "sha256 of %zu bytes differs when fed bytewise", i);
	}
}

static void test_hmac(void);
static void test_hmac_key_lengths(void);
static void test_hmac_and_hash(void);

/* Both block functions, where the CPU has the second: every vector runs
 * through each. */
static void
test_sha256(void)
{
	test_sha256_impl();
	test_hmac_and_hash();
#ifdef SHA256_X86
	if (cpu_has_sha()) {
		sha256_blocks = sha256_blocks_x86;
		sha256_blocks2 = sha256_blocks2_x86;
		test_sha256_impl();
		test_hmac();
		test_hmac_and_hash();
		sha256_blocks = sha256_blocks_c;
		sha256_blocks2 = sha256_blocks2_c;
	} else {
		printf("unit: no x86 SHA extensions here; only the portable SHA-256 was tested\n");
	}
#endif
}

/* ---- HMAC-SHA256, RFC 4231 section 4 ---- */

static void
test_hmac(void)
{
	static const struct { const char *key, *data, *mac; } v[] = {
		{ "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", "4869205468657265",
		  "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7" },
		{ "4a656665", "7768617420646f2079612077616e7420666f72206e6f7468696e673f",
		  "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" },
		{ "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
		  "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd",
		  "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe" },
		{ "0102030405060708090a0b0c0d0e0f10111213141516171819",
		  "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
		  "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b" },
		/* Case 5 is truncated to 128 bits. */
		{ "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c", "546573742057697468205472756e636174696f6e",
		  "a3b6167473100ee06e0c796c2955552b" },
		{ NULL,  /* 131 bytes of 0xaa */
		  "54657374205573696e67204c6172676572205468616e20426c6f636b2d53697a65204b6579202d2048617368204b6579204669727374",
		  "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54" },
		{ NULL,  /* 131 bytes of 0xaa */
		  "5468697320697320612074657374207573696e672061206c6172676572207468616e20626c6f636b2d73697a65206b657920616e642061206c6172676572207468616e20626c6f636b2d73697a6520646174612e20546865206b6579206e6565647320746f20626520686173686564206265666f7265206265696e6720757365642062792074686520484d414320616c676f726974686d2e",
		  "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2" },
	};
	size_t i;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		unsigned char key[200], data[300], mac[32];
		char out[65];
		size_t kl, dl = unhex(v[i].data, data);
		struct hmac_key k;

		if (v[i].key != NULL) {
			kl = unhex(v[i].key, key);
		} else {
			kl = 131;
			memset(key, 0xaa, kl);
		}
		hmac_key_init(&k, key, kl);
		hmac_digest(&k, data, dl, mac, NULL);
		hex(mac, 32, out);
		CHECK(strncmp(out, v[i].mac, strlen(v[i].mac)) == 0, "RFC 4231 case %zu: %s", i + 1, out);
	}
}

/* The signature and the body's own SHA-256 in one pass (--forward), for
 * every length over four blocks, against the two taken apart; and a
 * digest that does not stand at a block boundary, which must be fed
 * apart. */
static void
test_hmac_and_hash(void)
{
	unsigned char msg[300], mac[32], mac2[32], d[32], d2[32];
	struct hmac_key k;
	struct digest s, s2;
	size_t n;

	for (n = 0; n < sizeof(msg); n++)
		msg[n] = (unsigned char)(n * 31 + 7);
	hmac_key_init(&k, "xwebhook", 8);
	for (n = 0; n <= sizeof(msg); n++) {
		hmac_digest(&k, msg, n, mac, NULL);
		sha256_init(&s);
		digest_update(&s, msg, n);
		digest_final(&s, d);
		sha256_init(&s2);
		hmac_digest(&k, msg, n, mac2, &s2);
		digest_final(&s2, d2);
		if (memcmp(mac, mac2, 32) != 0 || memcmp(d, d2, 32) != 0)
			break;
		sha256_init(&s2);
		digest_update(&s2, "x", 1);  /* mid-block */
		sha256_init(&s);
		digest_update(&s, "x", 1);
		digest_update(&s, msg, n);
		digest_final(&s, d);
		hmac_digest(&k, msg, n, mac2, &s2);
		digest_final(&s2, d2);
		if (memcmp(mac, mac2, 32) != 0 || memcmp(d, d2, 32) != 0)
			break;
	}
	CHECK(n > sizeof(msg), "HMAC and SHA-256 in one pass differ from apart at %zu bytes", n);
}

/* Keys around the block size (64 bytes): shorter ones are zero-padded,
 * longer ones hashed first. RFC 4231's long keys are all 131 bytes, so a
 * key of 65 to 128 bytes copied instead of hashed, or a 64-byte key
 * hashed, would pass those. Answers from Python's hmac module. */
static void
test_hmac_key_lengths(void)
{
	static const struct {
		size_t n;
		const char *mac;
	} v[] = {
		{ 1, "54bc3c89af16561bf9e100c354ecf476f7bd53ab9c6e74a65e06a97e9081296b" },
		{ 32, "ad34e9e2911363eb533e826af38cbdd1db5fa4d2b2092731a901d66ef4379064" },
		{ 63, "17f158040a3010b16d5525b3498b53b96470d6ced1c0a88cbae6b8f065f913ed" },
		{ 64, "ed2888758243b0a4b4aed964fd01d1852b22f783f72a27dfa8b227e01ec23274" },
		{ 65, "5ace67dfe1645d3fb9a991500223355102a916651b1c9b91989c5d4b71eadfd7" },
		{ 100, "f436b4a7ffd8c3f8381b6ce7fe1d922f2a34265f05af423104b09280d3b46c13" },
		{ 128, "6b5a36b0d8a819e83bde17a577fb4f63a76b534b2c72b89a46e128a431d78eaf" },
		{ 129, "303ef7e61dd7d559c35f89f35277d135c658bfbf551b7fc7546974900e88b783" },
		{ 200, "bfd03fe17b1bb7d4500d1d9c98196b2425cf6f63f2dbbcf338e090e04c432685" },
	};
	static const char msg[] = "xwebhook key length";
	size_t i, j;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		unsigned char key[200], mac[32];
		char out[65];
		struct hmac_key k;

		for (j = 0; j < v[i].n; j++)
			key[j] = (unsigned char)((j * 7 + 3) & 255);
		hmac_key_init(&k, key, v[i].n);
		hmac_digest(&k, msg, sizeof(msg) - 1, mac, NULL);
		hex(mac, 32, out);
		CHECK(strcmp(out, v[i].mac) == 0, "HMAC with a %zu-byte key: %s", v[i].n, out);
	}
}

/* ---- Reading a member of a JSON answer (check's response_token) ---- */

static void
expect_member(const char *json, const char *key, int want_rc, const char *want)
{
	struct buf out = { 0 };
	int rc = json_member_string(json, strlen(json), key, &out);

	CHECK(rc == want_rc && (want == NULL || (out.len == strlen(want) && memcmp(out.p, want, out.len) == 0)),
	    "member %s of %s: %d [%.*s]", key, json, rc, (int)out.len, out.p ? out.p : "");
	buf_free(&out);
}

static void
test_json_member(void)
{
	expect_member("{\"response_token\":\"sha256=abc\"}", "response_token", 0, "sha256=abc");
	expect_member("{ \"a\" : 1 , \"response_token\" : \"x\\/y\\u003d\" }", "response_token", 0, "x/y=");
	expect_member("{\"data\":{\"response_token\":\"z\"}}", "response_token", -1, NULL);
	expect_member("{\"k\":[{\"response_token\":\"no\"},\"}\"],\"response_token\":\"yes\"}",
	    "response_token", 0, "yes");
	expect_member("{\"response_token\":5}", "response_token", -1, NULL);
	expect_member("{\"response_token\":5,\"response_token\":\"later\"}", "response_token", -1, NULL);
	expect_member("[\"response_token\"]", "response_token", -1, NULL);
	expect_member("{\"response_token\":\"a\"", "response_token", -1, NULL);
	expect_member("{\"resp\\u006fnse_token\":\"escaped key\"}", "response_token", 0, "escaped key");
	expect_member("{\"t\":\"\\ud83d\\ude00 \\u00e9\\n\"}", "t", 0, "\xf0\x9f\x98\x80 \xc3\xa9\n");
	expect_member("{\"t\":\"\\ud800x\"}", "t", 0, "\xef\xbf\xbdx");
	expect_member("{}", "t", -1, NULL);
	expect_member("\"t\"", "t", -1, NULL);
}

/* The raw value of a member (a PubAck's error, INFO's max_payload). */
static void
expect_raw(const char *json, const char *key, int want_rc, const char *want)
{
	struct buf out = { 0 };
	int rc = json_member(json, strlen(json), key, &out);

	CHECK(rc == want_rc && (want == NULL || (out.len == strlen(want) && memcmp(out.p, want, out.len) == 0)),
	    "raw member %s of %s: %d [%.*s]", key, json, rc, (int)out.len, out.p ? out.p : "");
	buf_free(&out);
}

static void
test_json_member_raw(void)
{
	expect_raw("{\"stream\":\"E\",\"seq\":12}", "seq", 0, "12");
	expect_raw("{ \"error\" : { \"code\" : 503 , \"description\" : \"x}\" } }", "error", 0,
	    "{\"code\":503,\"description\":\"x}\"}");
	expect_raw("{\"streams\":null}", "streams", 0, "null");
	expect_raw("{\"streams\":[\"A\",\"B\"],\"x\":1}", "streams", 0, "[\"A\",\"B\"]");
	expect_raw("{\"a\":{\"seq\":1}}", "seq", -1, NULL);
	expect_raw("{\"headers\":true}", "headers", 0, "true");
	expect_raw("{\"s\":\"a\\\"b\"}", "s", 0, "\"a\\\"b\"");
	expect_raw("[1]", "seq", -1, NULL);
	expect_raw("{\"seq\":1,}", "seq", -1, NULL);
}

/* ---- SHA-1 (FIPS 180-4 examples), HMAC-SHA1 (RFC 2202), OAuth 1.0a ---- */

static void
test_sha1(void)
{
	static const struct { const char *msg, *digest; } v[] = {
		{ "abc", "a9993e364706816aba3e25717850c26c9cd0d89d" },
		{ "", "da39a3ee5e6b4b0d3255bfef95601890afd80709" },
		{ "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
		  "84983e441c3bd26ebaae4aa1f95129e5e54670f1" },
	};
	static const struct { const char *key, *data, *mac; } h[] = {
		{ "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", "4869205468657265",
		  "b617318655057264e28bc0b6fb378c8ef146be00" },
		{ "4a656665", "7768617420646f2079612077616e7420666f72206e6f7468696e673f",
		  "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79" },
		{ "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
		  "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd",
		  "125d7342b9ac11cd91a39af48aa17b4f63f175d3" },
		{ "0102030405060708090a0b0c0d0e0f10111213141516171819",
		  "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
		  "4c9007f4026250c6bc8414f9bf50c86c2d7235da" },
		{ "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c", "546573742057697468205472756e636174696f6e",
		  "4c1a03424b55e07fe7f27be1d58bb9324a9a5a04" },
	};
	char out[41];
	size_t i, split;
	struct digest s;
	unsigned char d[20], block[1000], key[80], data[200];

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		for (split = 0; split <= strlen(v[i].msg); split++) {
			sha1_init(&s);
			digest_update(&s, v[i].msg, split);
			digest_update(&s, v[i].msg + split, strlen(v[i].msg) - split);
			digest_final(&s, d);
			hex(d, 20, out);
			if (strcmp(out, v[i].digest) != 0)
				break;
		}
		CHECK(split > strlen(v[i].msg), "sha1(\"%s\") split %zu = %s", v[i].msg, split, out);
	}
	memset(block, 'a', sizeof(block));
	sha1_init(&s);
	for (i = 0; i < 1000; i++)
		digest_update(&s, block, sizeof(block));
	digest_final(&s, d);
	hex(d, 20, out);
	CHECK(strcmp(out, "34aa973cd4c4daa4f61eeb2bdbad27316534016f") == 0, "sha1 of a million 'a' = %s", out);

	for (i = 0; i < sizeof(h) / sizeof(h[0]); i++) {
		size_t kn = unhex(h[i].key, key), dn = unhex(h[i].data, data);

		hmac_sha1(key, kn, data, dn, d);
		hex(d, 20, out);
		CHECK(strcmp(out, h[i].mac) == 0, "RFC 2202 HMAC-SHA1 case %zu = %s", i + 1, out);
	}
	/* Cases 6 and 7: a key longer than a block is hashed first. */
	memset(key, 0xaa, 80);
	hmac_sha1(key, 80, "Test Using Larger Than Block-Size Key - Hash Key First", 54, d);
	hex(d, 20, out);
	CHECK(strcmp(out, "aa4ae5e15272d00e95705637ce8a3b55ed402112") == 0, "RFC 2202 case 6 = %s", out);
	hmac_sha1(key, 80, "Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data", 73, d);
	hex(d, 20, out);
	CHECK(strcmp(out, "e8e99d0f45237d786d6bbaa7965c7808bbff1a91") == 0, "RFC 2202 case 7 = %s", out);
}

/* The oauth_signature="..." of an Authorization header, still encoded. */
static void
expect_oauth(const char *method, const char *url, const char *want_sig, const char *want_header)
{
	static const char *const cred[4] = { "xvz1evFS4wEEPTGEFPHBog", "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw",
		"370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb", "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE" };
	struct buf h = { 0 };
	const char *sig;

	oauth_authorization(&h, method, url, cred, "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg", "1318622958");
	buf_addc(&h, '\0');
	sig = strstr(h.p, "oauth_signature=\"");
	CHECK(sig != NULL && strncmp(sig + 17, want_sig, strlen(want_sig)) == 0 && sig[17 + strlen(want_sig)] == '"',
	    "OAuth signature for %s %s: %s", method, url, h.p);
	CHECK(want_header == NULL || strcmp(h.p, want_header) == 0, "OAuth header: %s", h.p);
	buf_free(&h);
}

static void
test_oauth(void)
{
	struct buf b = { 0 };

	/* X's worked example ("Creating a signature"): the status is a form
	 * parameter there, a query parameter here; the base string is the
	 * same. Its pages give the signature for both API versions' URLs. */
	expect_oauth("POST", "https://api.twitter.com/1.1/statuses/update.json?include_entities=true&"
	    "status=Hello%20Ladies%20%2b%20Gentlemen%2c%20a%20signed%20OAuth%20request%21",
	    "hCtSmYh%2BiHYCEqBWrE7C7hYmtUk%3D",
	    "OAuth oauth_consumer_key=\"xvz1evFS4wEEPTGEFPHBog\", "
	    "oauth_nonce=\"kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg\", "
	    "oauth_signature=\"hCtSmYh%2BiHYCEqBWrE7C7hYmtUk%3D\", oauth_signature_method=\"HMAC-SHA1\", "
	    "oauth_timestamp=\"1318622958\", oauth_token=\"370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb\", "
	    "oauth_version=\"1.0\"");
	expect_oauth("POST", "https://api.twitter.com/1/statuses/update.json?include_entities=true&"
	    "status=Hello+Ladies+%2B+Gentlemen%2C+a+signed+OAuth+request!", "tnnArxj06cWHq44gCs1OSKk%2FjLY%3D", NULL);
	/* Order of the query does not matter; the host's case, the default
	 * port and a fragment do not either. */
	expect_oauth("POST", "HTTPS://API.Twitter.com:443/1.1/statuses/update.json?"
	    "status=Hello%20Ladies%20%2B%20Gentlemen%2C%20a%20signed%20OAuth%20request%21&include_entities=true#x",
	    "hCtSmYh%2BiHYCEqBWrE7C7hYmtUk%3D", NULL);
	/* RFC 5849 section 3.6: unreserved bytes stay, the rest is %XX. */
	pct_encode(&b, "Az09-._~ +%/\xc3\xa9*", 15);
	CHECK(b.len == strlen("Az09-._~%20%2B%25%2F%C3%A9%2A") &&
	    memcmp(b.p, "Az09-._~%20%2B%25%2F%C3%A9%2A", b.len) == 0, "oauth_pct: %.*s", (int)b.len, b.p);
	buf_free(&b);
}

/* ---- --forward URLs ---- */

static void
expect_forward(const char *url, int ok, const char *user, const char *pw, const char *host, const char *port,
    const char *key, const char *shown)
{
	struct forward f;
	const char *why = "";
	int rc = forward_parse(url, &f, &why);

	if (!ok) {
		CHECK(rc < 0 && why[0] != '\0', "--forward %s taken", url);
		return;
	}
	CHECK(rc == 0 && strcmp(f.user, user) == 0 && strcmp(f.password, pw) == 0 && strcmp(f.host, host) == 0 &&
	    strcmp(f.port, port) == 0 && strcmp(f.key, key) == 0 && strcmp(f.shown, shown) == 0,
	    "--forward %s: rc %d [%s] [%s] [%s] [%s] [%s] [%s] (%s)", url, rc, f.user, f.password, f.host, f.port, f.key,
	    f.shown, rc < 0 ? why : "");
}

static void
test_forward_parse(void)
{
	expect_forward("redis://:pw@127.0.0.1:6379/s", 1, "", "pw", "127.0.0.1", "6379", "s", "redis://127.0.0.1:6379/s");
	expect_forward("redis://u:p:w@h:1/x:y", 1, "u", "p:w", "h", "1", "x:y", "redis://h:1/x:y");
	expect_forward("redis://[::1]:6379/s", 1, "", "", "::1", "6379", "s", "redis://[::1]:6379/s");
	expect_forward("redis://pw@h:1/s", 0, 0, 0, 0, 0, 0, 0);       /* redis wants :PASSWORD */
	expect_forward("redis://:@h:1/s", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("redis://h/s", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("redis://h:1/", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("redis://h:1/a b", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("nats://tok@127.0.0.1:4222/x.events", 1, "", "tok", "127.0.0.1", "4222", "x.events",
	    "nats://127.0.0.1:4222/x.events");
	expect_forward("nats://u:p@h:4222/a.b.c", 1, "u", "p", "h", "4222", "a.b.c", "nats://h:4222/a.b.c");
	expect_forward("nats://h:4222/e", 1, "", "", "h", "4222", "e", "nats://h:4222/e");
	expect_forward("nats://h:4222/a.*", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("nats://h:4222/a.>", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("nats://h:4222/.a", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("nats://h:4222/a.", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("nats://h:4222/a..b", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("nats://h:4222/\xc3\xa9", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("nats://@h:4222/e", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("kafka://h:9092/t", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("h:9092/t", 0, 0, 0, 0, 0, 0, 0);
	/* {type}: once; in a NATS subject only as its last name. */
	expect_forward("nats://h:4222/x.events.{type}", 1, "", "", "h", "4222", "x.events.{type}",
	    "nats://h:4222/x.events.{type}");
	expect_forward("nats://h:4222/{type}", 1, "", "", "h", "4222", "{type}", "nats://h:4222/{type}");
	expect_forward("redis://h:1/x:{type}:in", 1, "", "", "h", "1", "x:{type}:in", "redis://h:1/x:{type}:in");
	expect_forward("nats://h:4222/x.{type}.in", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("nats://h:4222/x.e{type}", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("nats://h:4222/x..{type}", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("nats://h:4222/x.>.{type}", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("redis://h:1/{type}{type}", 0, 0, 0, 0, 0, 0, 0);
}

/* ?dedupe= and ?maxlen=, alone or joined by &, and the key they make. */
static void
test_forward_params(void)
{
	static const struct {
		const char *url, *maxlen, *dedupe;
	} ok[] = {
		{ "redis://h:1/s", "", "600" },
		{ "redis://h:1/s?dedupe=0", "", "" },
		{ "redis://h:1/s?dedupe=000", "", "" },
		{ "redis://h:1/s?dedupe=86400", "", "86400" },
		{ "redis://h:1/s?dedupe=007", "", "7" },
		{ "redis://h:1/s?maxlen=5&dedupe=30", "5", "30" },
		{ "redis://h:1/s?dedupe=30&maxlen=5", "5", "30" },
		{ "nats://h:1/s", "", "" },
	};
	static const char *const bad[] = {
		"redis://h:1/s?dedupe=86401", "redis://h:1/s?dedupe=", "redis://h:1/s?dedupe=-1",
		"redis://h:1/s?dedupe=1e3", "redis://h:1/s?dedupe=99999999999999999999",
		"redis://h:1/s?dedupe", "redis://h:1/s?maxlen=5&", "redis://h:1/s?&dedupe=5",
		"redis://h:1/s?maxlen=5&maxlen", "redis://h:1/s?dedupe=5;maxlen=5", "redis://h:1/?dedupe=5",
	};
	struct forward f;
	const char *why;
	char key[FORWARD_KEY_MAX];
	size_t i;

	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		CHECK(forward_parse(ok[i].url, &f, &why) == 0 && strcmp(f.maxlen, ok[i].maxlen) == 0 &&
		    strcmp(f.dedupe, ok[i].dedupe) == 0, "%s: [%s] [%s]", ok[i].url, f.maxlen, f.dedupe);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK(forward_parse(bad[i], &f, &why) < 0, "%s taken", bad[i]);
	/* The script's name is its SHA-1, which Redis computes the same. */
	CHECK(forward_parse("redis://h:1/s", &f, &why) == 0 && strlen(f.script_sha) == 40, "script sha");
	forward_key(&f, "post.create", key, sizeof(key));
	CHECK(strcmp(key, "s") == 0, "untyped key: %s", key);
	CHECK(forward_parse("redis://h:1/x:{type}:in", &f, &why) == 0, "typed");
	forward_key(&f, "post.create", key, sizeof(key));
	CHECK(strcmp(key, "x:post.create:in") == 0, "typed key: %s", key);
	/* What a stream's subjects capture of x.events.> (every type). */
	{
		static const struct {
			const char *pat, *s;
			int covers;
		} c[] = {
			{ "x.events.>", "x.events.>", 1 }, { ">", "x.events.>", 1 }, { "x.>", "x.events.>", 1 },
			{ "x.*.>", "x.events.>", 1 }, { "x.events.*", "x.events.>", 0 },
			{ "x.events.post.*", "x.events.>", 0 }, { "x.events", "x.events.>", 0 },
			{ "x.events.a", "x.events.>", 0 }, { "y.events.>", "x.events.>", 0 },
			{ "x.event.>", "x.events.>", 0 }, { "x.events.>", "x.events.a", 1 },
			{ "x.*", "x.a", 1 }, { "x.*", "x.a.b", 0 }, { "x.a.b", "x.a", 0 }, { "*", ">", 0 },
		};

		for (i = 0; i < sizeof(c) / sizeof(c[0]); i++)
			CHECK(nats_subject_covers(c[i].pat, strlen(c[i].pat), c[i].s, strlen(c[i].s)) == c[i].covers,
			    "'%s' covers '%s': %d", c[i].pat, c[i].s, !c[i].covers);
	}
}

/* ---- base64, RFC 4648 section 10, and the CRC answer ---- */

static void
test_base64(void)
{
	static const char *const v[][2] = {
		{ "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" },
		{ "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" },
	};
	static const unsigned char high[3] = { 0xfb, 0xff, 0xfe };
	char out[16], sig[SIGNATURE_LEN + 1];
	struct hmac_key k;
	size_t i, n;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		n = base64_encode((const unsigned char *)v[i][0], strlen(v[i][0]), out);
		out[n] = '\0';
		CHECK(strcmp(out, v[i][1]) == 0, "base64(\"%s\") = \"%s\"", v[i][0], out);
	}
	/* The standard alphabet's last two characters, not base64url's. */
	n = base64_encode(high, 3, out);
	out[n] = '\0';
	CHECK(strcmp(out, "+//+") == 0, "base64(fb ff fe) = %s", out);

	/* The test vector from X's documentation. */
	hmac_key_init(&k, "secret", 6);
	signature_of(&k, "foo", 3, sig, NULL);
	sig[SIGNATURE_LEN] = '\0';
	CHECK(strcmp(sig, "sha256=dzukRpPHVT1u4g9h6l0nV6mk9KRNKEGuTpW1LkzWLbQ=") == 0, "crc(foo) = %s", sig);
	CHECK(ct_equal("abcd", "abcd", 4) && !ct_equal("abcd", "abce", 4) && !ct_equal("xbcd", "abcd", 4),
	    "ct_equal");
}

/* ---- JSON ---- */

/* Run the indenter over the whole of in; returns 0 and the output, or -1
 * and "line L, column C: why" in out. */
static int
json_run(const char *in, size_t n, enum json_style style, int stream, int bytewise, struct buf *out)
{
	struct json j;
	int r = 0;
	size_t i;

	out->len = 0;
	json_init(&j, style, out);
	j.stream = stream;
	if (bytewise) {
		for (i = 0; i < n && r == 0; i++)
			r = json_feed(&j, in + i, 1);
	} else {
		r = json_feed(&j, in, n);
	}
	if (r == 0)
		r = json_finish(&j);
	if (r < 0) {
		char msg[200];

		snprintf(msg, sizeof(msg), "line %lu, column %lu: %s", j.err_line, j.err_col, j.error);
		out->len = 0;
		buf_adds(out, msg);
	}
	buf_addc(out, '\0');
	return r;
}

static void
expect_json(const char *in, const char *indented, const char *compact)
{
	struct buf out = { 0 };
	int bytewise;

	for (bytewise = 0; bytewise < 2; bytewise++) {
		int r = json_run(in, strlen(in), JSON_INDENT, 0, bytewise, &out);

		CHECK(r == 0 && strcmp(out.p, indented) == 0, "indent %s (bytewise %d): got [%s]",
		    in, bytewise, out.p);
		r = json_run(in, strlen(in), JSON_COMPACT, 0, bytewise, &out);
		CHECK(r == 0 && strcmp(out.p, compact) == 0, "compact %s: got [%s]", in, out.p);
	}
	buf_free(&out);
}

static void
expect_json_error(const char *in, size_t n, const char *msg)
{
	struct buf out = { 0 };
	int bytewise;

	for (bytewise = 0; bytewise < 2; bytewise++) {
		int r = json_run(in, n, JSON_INDENT, 0, bytewise, &out);

		CHECK(r < 0 && strcmp(out.p, msg) == 0, "error for [%.*s]: want [%s], got [%s]",
		    (int)n, in, msg, out.p);
		r = json_run(in, n, JSON_CHECK, 0, bytewise, &out);
		CHECK(r < 0 && strcmp(out.p, msg) == 0, "check-only error for [%.*s]: got [%s]",
		    (int)n, in, out.p);
	}
	buf_free(&out);
}

static void
test_json(void)
{
	struct buf out = { 0 }, deep = { 0 };
	char err[200];
	int i;

	/* Layout: Python's json.dumps(obj, indent=2), then a newline. */
	expect_json("{}", "{}\n", "{}");
	expect_json("[]", "[]\n", "[]");
	expect_json(" { \"a\" : 1 } ", "{\n  \"a\": 1\n}\n", "{\"a\":1}");
	expect_json("{\"a\":[1,2,{}],\"b\":{\"c\":[]},\"d\":[[]]}",
	    "{\n  \"a\": [\n    1,\n    2,\n    {}\n  ],\n  \"b\": {\n    \"c\": []\n  },\n  \"d\": [\n    []\n  ]\n}\n",
	    "{\"a\":[1,2,{}],\"b\":{\"c\":[]},\"d\":[[]]}");
	expect_json("[true,false,null]", "[\n  true,\n  false,\n  null\n]\n", "[true,false,null]");
	/* Tokens are copied byte for byte: escapes, \/, surrogate pairs,
	 * raw UTF-8, integers past 2^53, exponents. */
	expect_json("{\"t\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\"}",
	    "{\n  \"t\": \"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\"\n}\n",
	    "{\"t\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\"}");
	expect_json("[\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xe4\xb8\xad\"]",
	    "[\n  \"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xe4\xb8\xad\"\n]\n",
	    "[\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xe4\xb8\xad\"]");
	expect_json("[1234567890123456789012345678901234567890,-0,0.5,1e10,1E-5,-12.5e+3,9007199254740993]",
	    "[\n  1234567890123456789012345678901234567890,\n  -0,\n  0.5,\n  1e10,\n  1E-5,\n  -12.5e+3,\n  9007199254740993\n]\n",
	    "[1234567890123456789012345678901234567890,-0,0.5,1e10,1E-5,-12.5e+3,9007199254740993]");
	expect_json("\"\"", "\"\"\n", "\"\"");
	expect_json("0", "0\n", "0");
	expect_json("\r\n\t[ 1 ,\n 2 ]\n", "[\n  1,\n  2\n]\n", "[1,2]");

	/* Every kind of invalid input, with its position. */
	expect_json_error("", 0, "line 1, column 1: expected a value, found end of input");
	expect_json_error("   ", 3, "line 1, column 4: expected a value, found end of input");
	expect_json_error("{\"a\" 1}", 7, "line 1, column 6: expected ':'");
	expect_json_error("{\"a\":1,}", 8, "line 1, column 8: expected a string key");
	expect_json_error("{,}", 3, "line 1, column 2: expected a string key or '}'");
	expect_json_error("{1:2}", 5, "line 1, column 2: expected a string key or '}'");
	expect_json_error("[1,]", 4, "line 1, column 4: expected a value");
	expect_json_error("[1 2]", 5, "line 1, column 4: expected ',' or ']'");
	expect_json_error("{\"a\":1]", 7, "line 1, column 7: expected ',' or '}'");
	expect_json_error("[1}", 3, "line 1, column 3: expected ',' or ']'");
	expect_json_error("{\n  \"a\": tru\n}", 14, "line 2, column 11: invalid literal (expected true, false or null)");
	expect_json_error("nul", 3, "line 1, column 4: invalid literal (expected true, false or null), found end of input");
	expect_json_error("[01]", 4, "line 1, column 3: leading zero in number");
	expect_json_error("[-]", 3, "line 1, column 3: expected a digit");
	expect_json_error("[1.]", 4, "line 1, column 4: expected a digit");
	expect_json_error("[1e]", 4, "line 1, column 4: expected a digit");
	expect_json_error("[1e+]", 5, "line 1, column 5: expected a digit");
	expect_json_error("[.5]", 4, "line 1, column 2: expected a value");
	expect_json_error("[+1]", 4, "line 1, column 2: expected a value");
	expect_json_error("1.", 2, "line 1, column 3: expected a digit, found end of input");
	expect_json_error("[NaN]", 5, "line 1, column 2: expected a value");
	expect_json_error("['a']", 5, "line 1, column 2: expected a value");
	expect_json_error("{} {}", 5, "line 1, column 4: expected end of input");
	expect_json_error("[\"a\tb\"]", 7, "line 1, column 4: control character in string (expected \\u escape)");
	expect_json_error("[\"\\x\"]", 6, "line 1, column 4: invalid escape in string");
	expect_json_error("[\"\\u12G4\"]", 10, "line 1, column 7: expected 4 hex digits after \\u");
	expect_json_error("[\"abc", 5, "line 1, column 6: expected '\"', found end of input");
	expect_json_error("[1,", 3, "line 1, column 4: expected a value, found end of input");
	expect_json_error("{\"a\":1", 6, "line 1, column 7: expected ',' or '}', found end of input");
	expect_json_error("[\"\0\"]", 5, "line 1, column 3: control character in string (expected \\u escape)");
	/* UTF-8: overlong, surrogate, past U+10FFFF, stray continuation,
	 * truncated sequence, bytes that never occur. */
	expect_json_error("[\"\xc0\x80\"]", 6, "line 1, column 3: invalid UTF-8 in string");
	expect_json_error("[\"\xe0\x80\xaf\"]", 7, "line 1, column 4: invalid UTF-8 in string");
	expect_json_error("[\"\xed\xa0\x80\"]", 7, "line 1, column 4: invalid UTF-8 in string");
	expect_json_error("[\"\xf4\x90\x80\x80\"]", 8, "line 1, column 4: invalid UTF-8 in string");
	expect_json_error("[\"\xf5\x80\x80\x80\"]", 8, "line 1, column 3: invalid UTF-8 in string");
	expect_json_error("[\"\x80\"]", 5, "line 1, column 3: invalid UTF-8 in string");
	expect_json_error("[\"\xe2\x82\"]", 6, "line 1, column 5: invalid UTF-8 in string");
	expect_json_error("[\xc3\xa9]", 4, "line 1, column 2: expected a value");

	/* Nesting: 256 levels are fine, 257 are not. */
	for (i = 0; i < 256; i++)
		buf_addc(&deep, '[');
	for (i = 0; i < 256; i++)
		buf_addc(&deep, ']');
	CHECK(json_run(deep.p, deep.len, JSON_COMPACT, 0, 0, &out) == 0 && out.len == 513,
	    "256 levels: %s", out.p);
	deep.len = 0;
	for (i = 0; i < 257; i++)
		buf_addc(&deep, '[');
	CHECK(json_run(deep.p, deep.len, JSON_INDENT, 0, 0, &out) < 0 &&
	    strcmp(out.p, "line 1, column 257: nesting deeper than 256 levels") == 0, "257 levels: %s", out.p);
	/* A million opening brackets cost no stack: the bound stops them. */
	deep.len = 0;
	for (i = 0; i < 1000000; i++)
		buf_addc(&deep, '{');
	CHECK(json_run(deep.p, deep.len, JSON_CHECK, 0, 0, &out) < 0, "a million '{'");
	/* Indentation deeper than the spaces string in json_newline. */
	deep.len = 0;
	for (i = 0; i < 40; i++)
		buf_addc(&deep, '[');
	buf_addc(&deep, '1');
	for (i = 0; i < 40; i++)
		buf_addc(&deep, ']');
	CHECK(json_run(deep.p, deep.len, JSON_INDENT, 0, 0, &out) == 0 &&
	    strstr(out.p, "\n                                                                                1\n") != NULL,
	    "80 spaces before the 1 at depth 40");

	/* Streams, for fmt: values one after another. */
	CHECK(json_run("{\"a\":1} [2]\n3", 13, JSON_INDENT, 1, 0, &out) == 0 &&
	    strcmp(out.p, "{\n  \"a\": 1\n}\n[\n  2\n]\n3\n") == 0, "stream: [%s]", out.p);
	CHECK(json_run("", 0, JSON_INDENT, 1, 0, &out) < 0, "an empty stream is an error");

	/* The 16-byte string scanner finds each kind of special byte at every
	 * position, including the tail after the last whole 16 bytes. */
	{
		static const char specials[] = { '"', '\\', 0x00, 0x1f, 0x7f, (char)0x80, (char)0xff, 0x20 };
		char text[48];
		size_t pos, k, bad = 0;

		for (k = 0; k < sizeof(specials); k++) {
			for (pos = 0; pos < sizeof(text); pos++) {
				size_t want = specials[k] == 0x20 || specials[k] == 0x7f ? sizeof(text) : pos;

				memset(text, 'a', sizeof(text));
				text[pos] = specials[k];
				if (json_plain_run(text, sizeof(text)) != want)
					bad++;
			}
		}
		CHECK(bad == 0, "json_plain_run wrong at %zu places", bad);
		CHECK(json_plain_run("abc", 0) == 0 && json_plain_run("abc", 3) == 3, "short runs");
	}
	/* Events must be objects: the CRC can never sign one. */
	CHECK(json_event("{\"a\":1}", 7, JSON_CHECK, NULL, err, sizeof(err)) == 0, "an object is an event");
	/* The whitespace it dropped: with none, the body is its own compact
	 * form (the event writer copies it as it is). Spaces in strings are
	 * kept, so they do not count. */
	CHECK(json_event("{ \"a\": 1 }\n", 11, JSON_CHECK, NULL, err, sizeof(err)) == 4, "four spaces dropped");
	CHECK(json_event("{\"a b\":\"c d\"}", 13, JSON_CHECK, NULL, err, sizeof(err)) == 0,
	    "spaces in strings are no whitespace between tokens");
	CHECK(json_event("\t{\"a\":[1,\r\n2]}", 14, JSON_CHECK, NULL, err, sizeof(err)) == 3, "tab and CRLF dropped");
	CHECK(json_event("[1]", 3, JSON_CHECK, NULL, err, sizeof(err)) < 0 &&
	    strcmp(err, "line 1, column 1: expected '{' (an event is a JSON object)") == 0, "%s", err);
	CHECK(json_event("\"abc\"", 5, JSON_CHECK, NULL, err, sizeof(err)) < 0, "a string is no event");
	CHECK(json_event("", 0, JSON_CHECK, NULL, err, sizeof(err)) < 0 &&
	    strstr(err, "found end of input") != NULL, "an empty body is no event: %s", err);
	buf_free(&out);
	buf_free(&deep);
}

/* ---- HTTP head parsing: every framing case ---- */

/* Scan and parse head as the server does, fed in pieces of step bytes. */
static enum status
parse(const char *head, size_t n, size_t step, struct request *req, const char **why)
{
	size_t scan = 0, line_end = 0, head_len = 0, have;
	enum status st = S_INCOMPLETE;

	*why = "";
	for (have = step < n ? step : n; ; have = have + step < n ? have + step : n) {
		st = http_scan_head(head, have, &scan, &line_end, &head_len, why);
		if (st != S_INCOMPLETE || have == n)
			break;
	}
	if (st == S_OK)
		st = http_parse_head(head, head_len, req, why);
	return st;
}

static enum status
parse_str(const char *head, struct request *req, const char **why)
{
	return parse(head, strlen(head), 99, req, why);
}

static void
expect_head(const char *head, enum status want, const char *why_part)
{
	size_t steps[] = { 1, 7, 100000 }, i;

	for (i = 0; i < 3; i++) {
		struct request req;
		const char *why;
		enum status st = parse(head, strlen(head), steps[i], &req, &why);

		CHECK(st == want && (why_part == NULL || strstr(why, why_part) != NULL),
		    "head [%.60s] step %zu: status %d (%s), want %d", head, steps[i], statuses[st].code, why,
		    statuses[want].code);
	}
}

static void
test_http(void)
{
	struct request req;
	const char *why;
	struct buf big = { 0 };
	int i;

	/* A good POST, fields case-insensitive. */
	{
		const char *h = "POST /webhooks/twitter?x=1 HTTP/1.1\r\nHOST: a\r\ncontent-LENGTH: 12\r\n"
		    "X-Twitter-Webhooks-Signature:  sha256=abc \r\nExpect: 100-Continue\r\n\r\nBODY";

		CHECK(parse(h, strlen(h), 3, &req, &why) == S_OK, "good POST: %s", why);
		CHECK(req.method == M_POST && req.http11 && req.keep_alive && req.has_length &&
		    req.content_length == 12 && req.expect_continue && !req.chunked, "POST fields");
		CHECK(req.path_len == 17 && req.target_len == 21 && req.head_len == strlen(h) - 4, "POST target");
		CHECK(req.signature_len == 10 && memcmp(req.signature, "sha256=abc", 10) == 0, "signature trimmed");
	}
	/* Keep-alive rules. */
	CHECK(parse_str("GET / HTTP/1.0\r\n\r\n", &req, &why) == S_OK && !req.keep_alive && !req.http11,
	    "1.0 closes by default");
	expect_head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", S_OK, NULL);
	CHECK(parse_str("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &req, &why) == S_OK &&
	    req.keep_alive, "1.0 with keep-alive");
	CHECK(parse_str("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n", &req, &why) == S_OK &&
	    !req.keep_alive, "Connection: close in a list");
	CHECK(parse_str("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n", &req, &why) == S_OK &&
	    req.chunked, "chunked");
	CHECK(parse_str("DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n", &req, &why) == S_OK &&
	    req.method == M_OTHER, "other methods parse");
	CHECK(parse_str("get / HTTP/1.1\r\nHost: a\r\n\r\n", &req, &why) == S_OK &&
	    req.method == M_OTHER, "methods are case-sensitive");

	/* Framing: each case its own status. */
	expect_head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
	    S_BAD_REQUEST, "both Content-Length and Transfer-Encoding");
	expect_head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
	    S_BAD_REQUEST, "more than one Content-Length");
	expect_head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", S_BAD_REQUEST, "not plain digits");
	expect_head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", S_BAD_REQUEST, "not plain digits");
	expect_head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", S_BAD_REQUEST, "not plain digits");
	expect_head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", S_BAD_REQUEST, "empty Content-Length");
	expect_head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
	    S_BAD_REQUEST, "overflows");
	expect_head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
	    S_BAD_REQUEST, "overflows");
	expect_head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", S_BAD_REQUEST,
	    "Transfer-Encoding");
	expect_head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", S_BAD_REQUEST,
	    "Transfer-Encoding");
	expect_head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
	    S_BAD_REQUEST, "Transfer-Encoding");
	expect_head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", S_BAD_REQUEST,
	    "Transfer-Encoding");
	expect_head("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", S_BAD_REQUEST, "HTTP/1.0");
	expect_head("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", S_BAD_REQUEST, "folding");
	expect_head("GET / HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n", S_BAD_REQUEST, "folding");
	expect_head("GET / HTTP/1.1\r\nHost : a\r\n\r\n", S_BAD_REQUEST, "whitespace before header colon");
	expect_head("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", S_BAD_REQUEST, "whitespace before header colon");
	expect_head("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", S_INCOMPLETE, NULL);  /* strlen stops at NUL */
	{
		static const char nul[] = "GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n";

		CHECK(parse(nul, sizeof(nul) - 1, 1, &req, &why) == S_BAD_REQUEST &&
		    strstr(why, "control byte") != NULL, "NUL in a header: %s", why);
	}
	expect_head("GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", S_BAD_REQUEST, "control byte");
	expect_head("GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n", S_BAD_REQUEST, "control byte");
	expect_head("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", S_BAD_REQUEST, "bare CR");
	expect_head("GET / HTTP/1.1\rHost: a\r\n\r\n", S_BAD_REQUEST, "bare CR");
	expect_head("GET / HTTP/1.1\nHost: a\n\n", S_BAD_REQUEST, "bare LF");
	expect_head("GET / HTTP/1.1\r\nHost: a\n\r\n", S_BAD_REQUEST, "bare LF");
	expect_head("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", S_BAD_REQUEST, "control byte");
	/* The request line: METHOD SP target SP HTTP/1.x, nothing else. */
	expect_head("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", S_BAD_REQUEST, "request line");
	expect_head("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", S_BAD_REQUEST, "request line");
	expect_head("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", S_BAD_REQUEST, "request line");
	expect_head("GET /\r\n\r\n", S_BAD_REQUEST, "request line");
	expect_head("GET / HTTP/2.0\r\nHost: a\r\n\r\n", S_BAD_REQUEST, "request line");
	expect_head("GET / HTTP/1.2\r\nHost: a\r\n\r\n", S_BAD_REQUEST, "request line");
	expect_head("GET / http/1.1\r\nHost: a\r\n\r\n", S_BAD_REQUEST, "request line");
	expect_head("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", S_BAD_REQUEST, "request line");
	expect_head("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", S_BAD_REQUEST, "request line");
	expect_head(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", S_BAD_REQUEST, "request line");
	expect_head("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", S_BAD_REQUEST, "request line");
	/* (The parser sees only heads: the connection drops empty lines
	 * before a request line, RFC 9112 2.2, as integration.py tests.) */
	/* Absolute form (RFC 9112, 3.2.2): its path is the target. */
	expect_head("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", S_OK, NULL);
	expect_head("GET http://a HTTP/1.1\r\nHost: a\r\n\r\n", S_BAD_REQUEST, "without a path");
	expect_head("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", S_BAD_REQUEST, "valid host");
	expect_head("GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", S_BAD_REQUEST, "starting with '/'");
	{
		const char h[] = "GET https://x.example:8443/p/q?crc_token=t HTTP/1.1\r\nHost: a\r\n\r\n";

		CHECK(http_parse_head(h, sizeof(h) - 1, &req, &why) == S_OK &&
		    req.target_len == 16 && memcmp(req.target, "/p/q?crc_token=t", 16) == 0 &&
		    req.path_len == 4, "absolute form: target [%.*s]", (int)req.target_len, req.target);
	}
	/* Host: a host and a port, no more (RFC 9112, 3.2). */
	expect_head("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", S_BAD_REQUEST, "Host is not");
	expect_head("GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", S_BAD_REQUEST, "Host is not");
	expect_head("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", S_OK, NULL);
	expect_head("GET / HTTP/1.1\r\nHost:\r\n\r\n", S_OK, NULL);
	expect_head("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", S_BAD_REQUEST, "request line");
	expect_head("GET / HTTP/1.1\r\n: empty name\r\n\r\n", S_BAD_REQUEST, "malformed header");
	expect_head("GET / HTTP/1.1\r\nno colon\r\n\r\n", S_BAD_REQUEST, "whitespace before header colon");
	expect_head("GET / HTTP/1.1\r\nNoColon\r\n\r\n", S_BAD_REQUEST, "malformed header");
	expect_head("GET / HTTP/1.1\r\nBad(name): x\r\n\r\n", S_BAD_REQUEST, "malformed header");
	/* Host: required on 1.1, never twice. */
	expect_head("GET / HTTP/1.1\r\n\r\n", S_BAD_REQUEST, "missing Host");
	expect_head("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", S_BAD_REQUEST, "more than one Host");
	expect_head("GET / HTTP/1.0\r\n\r\n", S_OK, NULL);
	expect_head("POST / HTTP/1.1\r\nHost: a\r\nx-twitter-webhooks-signature: a\r\n"
	    "X-TWITTER-WEBHOOKS-SIGNATURE: b\r\n\r\n", S_BAD_REQUEST, "more than one x-twitter");
	expect_head("POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", S_EXPECTATION_FAILED, "Expect");
	expect_head("GET / HTTP/1.1\r\nHost: a\r\n", S_INCOMPLETE, NULL);

	/* Limits: a request line of 8192 bytes passes and 8193 is 414. */
	buf_adds(&big, "GET /");
	while (big.len < 8192 - 9)
		buf_addc(&big, 'a');
	buf_adds(&big, " HTTP/1.1\r\nHost: a\r\n\r\n");
	buf_addc(&big, '\0');
	expect_head(big.p, S_OK, NULL);
	big.len = 0;
	buf_adds(&big, "GET /");
	while (big.len < 8192 - 8)
		buf_addc(&big, 'a');
	buf_adds(&big, " HTTP/1.1\r\nHost: a\r\n\r\n");
	buf_addc(&big, '\0');
	expect_head(big.p, S_URI_TOO_LONG, "8192");
	/* 100 fields pass, 101 are 431. */
	big.len = 0;
	buf_adds(&big, "GET / HTTP/1.1\r\nHost: a\r\n");
	for (i = 0; i < 99; i++)
		buf_adds(&big, "X-A: b\r\n");
	buf_adds(&big, "\r\n");
	buf_addc(&big, '\0');
	expect_head(big.p, S_OK, NULL);
	big.len -= 3;
	buf_adds(&big, "X-A: b\r\n\r\n");
	buf_addc(&big, '\0');
	expect_head(big.p, S_HEADERS_TOO_LARGE, "100 header fields");
	/* A header block of 16384 bytes passes, 16385 is 431. */
	big.len = 0;
	buf_adds(&big, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: ");
	while (big.len < 16 + 16384 - 4)
		buf_addc(&big, 'b');
	buf_adds(&big, "\r\n\r\n");
	buf_addc(&big, '\0');
	expect_head(big.p, S_OK, NULL);
	big.len -= 5;
	buf_adds(&big, "b\r\n\r\n");
	buf_addc(&big, '\0');
	expect_head(big.p, S_HEADERS_TOO_LARGE, "16384");
	buf_free(&big);
}

/* ---- chunked bodies ---- */

static enum status
dechunk(const char *in, size_t n, size_t step, size_t limit, struct buf *out, size_t *rest, const char **why)
{
	struct chunked ch;
	size_t at = 0;
	enum status st = S_INCOMPLETE;

	memset(&ch, 0, sizeof(ch));
	out->len = 0;
	*why = "";
	while (at < n) {
		size_t used = 0, take = n - at < step ? n - at : step;

		st = chunked_decode(&ch, in + at, take, &used, out, limit, why);
		at += used;
		if (st != S_INCOMPLETE)
			break;
		CHECK(used == take, "an incomplete decode uses all it is given");
	}
	*rest = n - at;
	return st;
}

static void
expect_chunked(const char *in, enum status want, const char *data, const char *why_part)
{
	size_t steps[] = { 1, 3, 100000 }, i, rest;
	struct buf out = { 0 };

	for (i = 0; i < 3; i++) {
		const char *why;
		enum status st = dechunk(in, strlen(in), steps[i], 1024, &out, &rest, &why);

		CHECK(st == want && (data == NULL || (out.len == strlen(data) && (out.len == 0 || memcmp(out.p, data, out.len) == 0))) &&
		    (why_part == NULL || strstr(why, why_part) != NULL),
		    "chunked [%.60s] step %zu: status %d (%s)", in, steps[i], statuses[st].code, why);
	}
	buf_free(&out);
}

static void
test_chunked(void)
{
	struct buf out = { 0 };
	const char *why;
	size_t rest;

	expect_chunked("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", S_OK, "hello world", NULL);
	expect_chunked("A\r\n0123456789\r\n0\r\n\r\n", S_OK, "0123456789", NULL);
	expect_chunked("a;name=value\r\n0123456789\r\n0\r\nTrailer: x\r\nOther: y\r\n\r\n", S_OK, "0123456789", NULL);
	expect_chunked("0\r\n\r\n", S_OK, "", NULL);
	expect_chunked("5\r\nhello\r\n", S_INCOMPLETE, "hello", NULL);
	expect_chunked("\r\n", S_BAD_REQUEST, NULL, "bad chunk size");
	expect_chunked("g\r\n", S_BAD_REQUEST, NULL, "bad chunk size");
	expect_chunked("-1\r\n", S_BAD_REQUEST, NULL, "bad chunk size");
	expect_chunked(" 5\r\nhello\r\n0\r\n\r\n", S_BAD_REQUEST, NULL, "bad chunk size");
	expect_chunked("5 \r\nhello\r\n0\r\n\r\n", S_BAD_REQUEST, NULL, "bad chunk size");
	/* BWS before an extension's ';' (RFC 9112, 7.1.1), and nowhere else. */
	expect_chunked("5 ;a=b\r\nhello\r\n0\t \t;x\r\n\r\n", S_OK, "hello", NULL);
	expect_chunked("5 x\r\nhello\r\n0\r\n\r\n", S_BAD_REQUEST, NULL, "bad chunk size");
	expect_chunked("5 5\r\nhello\r\n0\r\n\r\n", S_BAD_REQUEST, NULL, "bad chunk size");
	expect_chunked("0x5\r\nhello\r\n0\r\n\r\n", S_BAD_REQUEST, NULL, "bad chunk size");
	expect_chunked("5\nhello\r\n0\r\n\r\n", S_BAD_REQUEST, NULL, "bad chunk size");
	expect_chunked("5\r\rhello\r\n0\r\n\r\n", S_BAD_REQUEST, NULL, "line ending");
	expect_chunked("5\r\nhelloX\r\n0\r\n\r\n", S_BAD_REQUEST, NULL, "bad chunk terminator");
	expect_chunked("5\r\nhello\n0\r\n\r\n", S_BAD_REQUEST, NULL, "bad chunk terminator");
	expect_chunked("5\r\nhello\r\r0\r\n\r\n", S_BAD_REQUEST, NULL, "bad chunk terminator");
	expect_chunked("5;a\x01\r\nhello\r\n0\r\n\r\n", S_BAD_REQUEST, NULL, "control byte");
	expect_chunked("0\r\nTrailer: \x01\r\n\r\n", S_BAD_REQUEST, NULL, "control byte");
	expect_chunked("0\r\n\rX", S_BAD_REQUEST, NULL, "bare CR");
	expect_chunked("10000000000000000\r\n", S_BAD_REQUEST, NULL, "overflows");
	expect_chunked("ffffffffffffffff\r\n", S_PAYLOAD_TOO_LARGE, NULL, "--max-body");
	expect_chunked("401\r\n", S_PAYLOAD_TOO_LARGE, NULL, "--max-body");
	expect_chunked("400\r\n", S_INCOMPLETE, NULL, NULL);
	expect_chunked("200\r\n", S_INCOMPLETE, NULL, NULL);
	/* The limit counts the whole body, across chunks. */
	{
		struct buf in = { 0 };
		int i;

		for (i = 0; i < 3; i++) {
			buf_adds(&in, "200\r\n");
			while (in.len % 512 != 0 || in.len < (size_t)(i + 1) * 512)
				buf_addc(&in, 'x');
			in.len = (size_t)i * 512 + (size_t)i * 7 + 5;  /* rebuild cleanly */
			in.len = 0;
		}
		for (i = 0; i < 3; i++) {
			int k;

			buf_adds(&in, "200\r\n");
			for (k = 0; k < 512; k++)
				buf_addc(&in, 'x');
			buf_adds(&in, "\r\n");
		}
		CHECK(dechunk(in.p, in.len, 100000, 1024, &out, &rest, &why) == S_PAYLOAD_TOO_LARGE &&
		    out.len == 1024, "a third chunk of 512 passes 1024: %s", why);
		buf_free(&in);
	}
	/* Size lines have a bound even with endless extensions. */
	{
		struct buf in = { 0 };

		buf_adds(&in, "5;");
		while (in.len < 2000)
			buf_addc(&in, 'e');
		buf_addc(&in, '\0');
		expect_chunked(in.p, S_BAD_REQUEST, NULL, "1024");
		buf_free(&in);
	}
	/* *used is set on errors too: the bytes before the bad one. */
	{
		struct chunked ch;
		size_t used = 12345;

		memset(&ch, 0, sizeof(ch));
		out.len = 0;
		CHECK(chunked_decode(&ch, "5\r\nhelloX", 10, &used, &out, 1024, &why) == S_BAD_REQUEST &&
		    used == 8, "used on error: %zu", used);
	}
	/* What follows the body is left for the next request. */
	CHECK(dechunk("1\r\na\r\n0\r\n\r\nGET /", 16, 100000, 1024, &out, &rest, &why) == S_OK && rest == 5,
	    "pipelined bytes after a chunked body: rest %zu", rest);
	buf_free(&out);
}

/* ---- the query string and the crc_token rules ---- */

static void
test_query(void)
{
	char out[MAX_CRC_TOKEN + 1];
	const char *q;
	long n;

	q = "crc_token=abc&nonce=MTc2";
	n = query_param(q, strlen(q), "crc_token", out, sizeof(out));
	CHECK(n == 3 && memcmp(out, "abc", 3) == 0, "plain");
	q = "nonce=1&crc_token=a%2Bb%2Fc%3D%3d";
	n = query_param(q, strlen(q), "crc_token", out, sizeof(out));
	CHECK(n == 7 && memcmp(out, "a+b/c==", 7) == 0, "percent-decoded: %ld %.*s", n, (int)n, out);
	q = "crc_token=a+b";
	n = query_param(q, strlen(q), "crc_token", out, sizeof(out));
	CHECK(n == 3 && memcmp(out, "a b", 3) == 0, "'+' is a space, as in a form");
	q = "crc%5Ftoken=x";
	n = query_param(q, strlen(q), "crc_token", out, sizeof(out));
	CHECK(n == 1 && out[0] == 'x', "the name is decoded too");
	q = "crc_token=first&crc_token=second";
	n = query_param(q, strlen(q), "crc_token", out, sizeof(out));
	CHECK(n == 5 && memcmp(out, "first", 5) == 0, "the first one wins");
	q = "crc_token";
	CHECK(query_param(q, strlen(q), "crc_token", out, sizeof(out)) == 0, "no '=' is an empty value");
	q = "xcrc_token=1&crc_tokenx=2";
	CHECK(query_param(q, strlen(q), "crc_token", out, sizeof(out)) == -1, "no partial name matches");
	q = "";
	CHECK(query_param(q, 0, "crc_token", out, sizeof(out)) == -1, "empty query");
	q = "crc_token=%zz%4";
	n = query_param(q, strlen(q), "crc_token", out, sizeof(out));
	CHECK(n == 5 && memcmp(out, "%zz%4", 5) == 0, "a bad escape stays as it is");
	q = "crc_token=%7B%22a%22%3A1%7D";
	n = query_param(q, strlen(q), "crc_token", out, sizeof(out));
	CHECK(n == 7 && memcmp(out, "{\"a\":1}", 7) == 0 && !crc_token_ok(out, (size_t)n),
	    "a token that is a JSON object is refused");

	CHECK(crc_token_ok("M2RkODJkZmMtYjlkYi00NmQ4LTk0MGUtM2JjYzkwM2Q4MjQ0", 48), "X's token shape");
	CHECK(crc_token_ok("a+/=_-Z9", 8), "the whole alphabet");
	CHECK(!crc_token_ok("", 0), "empty");
	CHECK(!crc_token_ok("a b", 3), "space");
	CHECK(!crc_token_ok("a\0b", 3), "NUL");
	CHECK(!crc_token_ok("ab%", 3), "percent");
	{
		char t[300];

		memset(t, 'A', sizeof(t));
		CHECK(crc_token_ok(t, 255), "255 bytes");
		CHECK(!crc_token_ok(t, 256), "256 bytes");
		/* A long value is measured in full even when out is small. */
		q = "crc_token=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
		CHECK(query_param(q, strlen(q), "crc_token", t, 4) == 56, "length past cap");
	}
}


#ifdef XWEBHOOK_TLS
/* ---- DER: a certificate's serial and validity ---- */

/* A self-signed P-256 certificate made by `openssl ca` for this test:
 * serial FF01 (DER needs a 00 sign byte before it), notBefore
 * 2025-01-02 03:04:05 as UTCTime, notAfter 2051-06-07 08:09:10 as
 * GeneralizedTime (UTCTime ends with 2049). */
static const unsigned char unit_cert[] = {
	0x30, 0x82, 0x01, 0x14, 0x30, 0x81, 0xba, 0x02, 0x03, 0x00, 0xff, 0x01, 0x30, 0x0a, 0x06, 0x08,
	0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02, 0x30, 0x14, 0x31, 0x12, 0x30, 0x10, 0x06, 0x03,
	0x55, 0x04, 0x03, 0x0c, 0x09, 0x75, 0x6e, 0x69, 0x74, 0x2e, 0x74, 0x65, 0x73, 0x74, 0x30, 0x20,
	0x17, 0x0d, 0x32, 0x35, 0x30, 0x31, 0x30, 0x32, 0x30, 0x33, 0x30, 0x34, 0x30, 0x35, 0x5a, 0x18,
	0x0f, 0x32, 0x30, 0x35, 0x31, 0x30, 0x36, 0x30, 0x37, 0x30, 0x38, 0x30, 0x39, 0x31, 0x30, 0x5a,
	0x30, 0x14, 0x31, 0x12, 0x30, 0x10, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x09, 0x75, 0x6e, 0x69,
	0x74, 0x2e, 0x74, 0x65, 0x73, 0x74, 0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce,
	0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
	0x04, 0x03, 0xf0, 0x8e, 0xd7, 0x81, 0x9e, 0x14, 0x7f, 0x46, 0x06, 0xae, 0x10, 0x76, 0xc3, 0x3d,
	0xfb, 0xa9, 0x9e, 0x06, 0x23, 0x2f, 0x2b, 0x85, 0xb2, 0xec, 0xb3, 0x5b, 0xcc, 0x18, 0x81, 0x69,
	0x7e, 0xef, 0x43, 0xc0, 0x4f, 0xe2, 0x12, 0xb6, 0x65, 0xf7, 0xdb, 0xdf, 0x50, 0x13, 0xac, 0xda,
	0xc5, 0x9e, 0x01, 0xaf, 0x5e, 0xa2, 0x01, 0xa9, 0xd6, 0x60, 0xaf, 0x67, 0x0c, 0x92, 0x5b, 0x7b,
	0x2f, 0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02, 0x03, 0x49, 0x00,
	0x30, 0x46, 0x02, 0x21, 0x00, 0xd0, 0xce, 0x80, 0x2c, 0xd7, 0x22, 0xfc, 0xc6, 0xc3, 0x99, 0x87,
	0x50, 0xd1, 0xf5, 0xd8, 0x36, 0xe6, 0x16, 0x7a, 0xfe, 0xa2, 0x3e, 0x00, 0x97, 0x9a, 0xe8, 0x66,
	0xbc, 0x35, 0x9d, 0x14, 0x44, 0x02, 0x21, 0x00, 0xf6, 0x71, 0xaa, 0xd0, 0xfd, 0xbe, 0x44, 0x71,
	0xeb, 0x81, 0x9a, 0x63, 0x34, 0x2a, 0x1e, 0x0f, 0xa2, 0xcd, 0xdb, 0x02, 0x70, 0xd3, 0xaf, 0x0a,
	0x55, 0xe1, 0x73, 0x7f, 0xb1, 0x5f, 0x3b, 0x5d,

};

static void
test_der(void)
{
	struct cert_info ci;
	time_t t;
	size_t n;

	CHECK(cert_info(unit_cert, sizeof(unit_cert), &ci) == 0, "cert_info");
	CHECK(strcmp(ci.serial, "FF01") == 0, "serial %s", ci.serial);
	CHECK(ci.not_before == 1735787045, "notBefore %lld", (long long)ci.not_before);
	CHECK(ci.not_after == 2569738150, "notAfter %lld", (long long)ci.not_after);
	/* Every truncation fails cleanly (ASan watches the reads). */
	for (n = 0; n < sizeof(unit_cert); n++) {
		unsigned char *cut = xmalloc(n);

		memcpy(cut, unit_cert, n);
		if (cert_info(cut, n, &ci) == 0)
			break;
		free(cut);
	}
	CHECK(n == sizeof(unit_cert), "a certificate cut to %zu bytes was accepted", n);
	/* Two-digit years: 49 is 2049, 50 is 1950 (RFC 5280). */
	CHECK(der_time(0x17, (const unsigned char *)"491231235959Z", 13, &t) == 0 && t == 2524607999, "UTCTime 49");
	CHECK(der_time(0x17, (const unsigned char *)"500101000000Z", 13, &t) == 0 && t == -631152000, "UTCTime 50");
	CHECK(der_time(0x18, (const unsigned char *)"20500101000000Z", 15, &t) == 0 && t == 2524608000, "GeneralizedTime");
	CHECK(der_time(0x17, (const unsigned char *)"49123123595Z", 12, &t) < 0, "short UTCTime");
	CHECK(der_time(0x17, (const unsigned char *)"4912312359590", 13, &t) < 0, "no Z");
	CHECK(der_time(0x17, (const unsigned char *)"4912a1235959Z", 13, &t) < 0, "not digits");
	CHECK(der_time(0x04, (const unsigned char *)"491231235959Z", 13, &t) < 0, "wrong tag");
}
#endif

#ifdef XWEBHOOK_TLS
/* ---- ACME: the DER written here, read back by openssl ---- */

/* Run cmd (a shell line) and return what it printed, both streams. */
static void
run_capture(const char *cmd, struct buf *out)
{
	FILE *f = popen(cmd, "r");
	char chunk[4096];
	size_t n;

	out->len = 0;
	if (f == NULL)
		return;
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		buf_add(out, chunk, n);
	pclose(f);
	buf_addc(out, '\0');
}

static void
write_file(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");

	if (f != NULL) {
		fwrite(p, 1, n, f);
		fclose(f);
	}
}

/* Compare b with the hex want, printing what was built when they differ. */
static int
hex_equal(const struct buf *b, const char *want)
{
	size_t i, n = strlen(want) / 2;
	unsigned x;

	if (b->len != n)
		goto differ;
	for (i = 0; i < n; i++)
		if (sscanf(want + 2 * i, "%2x", &x) != 1 || (unsigned char)b->p[i] != x)
			goto differ;
	return 1;
differ:
	fprintf(stderr, "built: ");
	for (i = 0; i < b->len; i++)
		fprintf(stderr, "%02x", (unsigned char)b->p[i]);
	fprintf(stderr, "\n");
	return 0;
}

/* The DER of a CSR and of a tls-alpn-01 certificate, byte for byte: a
 * fixed key (ECDSA in BearSSL is deterministic, RFC 6979), serial and time
 * give fixed bytes, recorded from the builders before they were rewritten
 * to nest in place. openssl parses both (test_acme_der checks what they
 * say). */
static void
test_acme_der_known(void)
{
	static const char csr_want[] =
	    "308201093081af020100301d311b301906035504030c12686f6f6b732e6578616d706c652e746573743059301306072a"
	    "8648ce3d020106082a8648ce3d03010703420004515c3d6eb9e396b904d3feca7f54fdcd0cc1e997bf375dca515ad0a6"
	    "c3b4035f4536be3a50f318fbf9a5475902a221502bef0d57e08c53b2cc0a56f17d9f9354a030302e06092a864886f70d"
	    "01090e3121301f301d0603551d11041630148212686f6f6b732e6578616d706c652e74657374300a06082a8648ce3d04"
	    "03020349003046022100cc95e65a924feb483febb675ba57b3977bf0698c17b428414c3761f112af3dae022100cfb97f"
	    "6aa7d9e8712cfa8649714ffea5f86b08fd82001d5b93acc049208500a8";
	static const char alpn_want[] =
	    "3082018b30820132a0030201020210404142434445464748494a4b4c4d4e4f300a06082a8648ce3d040302301d311b30"
	    "1906035504030c12686f6f6b732e6578616d706c652e74657374301e170d3235313233313030303030305a170d323630"
	    "3130383030303030305a301d311b301906035504030c12686f6f6b732e6578616d706c652e746573743059301306072a"
	    "8648ce3d020106082a8648ce3d03010703420004515c3d6eb9e396b904d3feca7f54fdcd0cc1e997bf375dca515ad0a6"
	    "c3b4035f4536be3a50f318fbf9a5475902a221502bef0d57e08c53b2cc0a56f17d9f9354a3543052301d0603551d1104"
	    "1630148212686f6f6b732e6578616d706c652e74657374303106082b0601050507011f0101ff04220420a46fcf211e79"
	    "f8db029d65b9add53e0283c6e4a012172237a9e6c60ddb9746dc300a06082a8648ce3d040302034700304402204f2923"
	    "c260df6b163a026b6ee04d4437bdd0cfac1216cecd01bc1988dccf569202200def1ed8f71ef610ca22123afd24081b05"
	    "091fedc12c903fa814a8bea17d2929";
	struct ec_key k;
	struct buf der = { 0 };
	unsigned char serial[ALPN_SERIAL_LEN];
	size_t i;

	for (i = 0; i < 32; i++)
		k.x[i] = (unsigned char)(i + 1);
	for (i = 0; i < sizeof(serial); i++)
		serial[i] = (unsigned char)(0x40 + i);
	k.sk.curve = BR_EC_secp256r1;
	k.sk.x = k.x;
	k.sk.xlen = 32;
	CHECK(br_ec_compute_pub(br_ec_get_default(), &k.pk, k.q, &k.sk) == 65, "a fixed P-256 key");
	CHECK(csr_der(&der, "hooks.example.test", &k) == 0 && hex_equal(&der, csr_want), "csr_der: the known DER");
	der.len = 0;
	CHECK(alpn_cert_make(&der, "hooks.example.test", "tok-en_1.thumb-print_2", &k, serial, 1767225600) == 0 &&
	    hex_equal(&der, alpn_want), "alpn_cert_make: the known DER");
	/* Appended after what out holds, as the callers' buffers may. */
	der.len = 0;
	buf_adds(&der, "xy");
	CHECK(csr_der(&der, "hooks.example.test", &k) == 0 && der.len == 2 + strlen(csr_want) / 2 &&
	    memcmp(der.p, "xy", 2) == 0, "csr_der appends");
	buf_free(&der);
}

static void
test_acme_der(void)
{
	struct ec_key k;
	struct buf der = { 0 }, out = { 0 }, j = { 0 };
	char dir[] = "/tmp/xwebhook-unit-XXXXXX", path[128], cmd[1024], hex[65];
	unsigned char h[32];
	struct digest d;
	const char *ka = "tok-en_1.thumb-print_2";

	CHECK(mkdtemp(dir) != NULL, "mkdtemp");
	CHECK(ec_key_generate(&k) == 0 && k.pk.qlen == 65 && k.pk.q[0] == 4, "a P-256 key");

	/* The CSR: openssl verifies its signature and sees the SAN request. */
	CHECK(csr_der(&der, "hooks.example.test", &k) == 0, "csr_der");
	snprintf(path, sizeof(path), "%s/csr.der", dir);
	write_file(path, der.p, der.len);
	snprintf(cmd, sizeof(cmd), "openssl req -inform DER -in %s -noout -verify -text 2>&1", path);
	run_capture(cmd, &out);
	CHECK(out.p != NULL && strstr(out.p, "verify OK") != NULL && strstr(out.p, "DNS:hooks.example.test") &&
	    strstr(out.p, "CN = hooks.example.test") && strstr(out.p, "prime256v1") &&
	    strstr(out.p, "Requested Extensions"), "openssl on our CSR: %s", out.p ? out.p : "");

	/* The tls-alpn-01 certificate: self-signed (openssl checks the
	 * signature with the certificate's own key), the SAN, and the
	 * critical acmeIdentifier holding SHA-256 of the key authorization. */
	der.len = 0;
	CHECK(alpn_cert_der(&der, "hooks.example.test", ka, &k) == 0, "alpn_cert_der");
	snprintf(path, sizeof(path), "%s/alpn.der", dir);
	write_file(path, der.p, der.len);
	snprintf(cmd, sizeof(cmd), "openssl x509 -inform DER -in %s -noout -text 2>&1 && "
	    "openssl x509 -inform DER -in %s -out %s/alpn.pem && "
	    "openssl verify -check_ss_sig -partial_chain -ignore_critical -CAfile %s/alpn.pem %s/alpn.pem 2>&1", path, path, dir, dir,
	    dir);
	run_capture(cmd, &out);
	CHECK(out.p != NULL && strstr(out.p, "DNS:hooks.example.test") && strstr(out.p, "1.3.6.1.5.5.7.1.31: critical") &&
	    strstr(out.p, "Version: 3 (0x2)") && strstr(out.p, "ecdsa-with-SHA256") && strstr(out.p, ": OK"),
	    "openssl on our tls-alpn-01 certificate: %s", out.p ? out.p : "");
	sha256_init(&d);
	digest_update(&d, ka, strlen(ka));
	digest_final(&d, h);
	{
		/* The extension's value: OCTET STRING { OCTET STRING (32) }. */
		unsigned char want[34] = { 0x04, 0x20 };
		size_t i, found = 0;

		memcpy(want + 2, h, 32);
		for (i = 0; i + sizeof(want) <= der.len; i++)
			found += memcmp(der.p + i, want, sizeof(want)) == 0;
		CHECK(found == 1, "the acmeIdentifier's SHA-256 appears once in the certificate");
	}
	CHECK(cert_names((unsigned char *)der.p, der.len, "hooks.example.test") &&
	    cert_names((unsigned char *)der.p, der.len, "HOOKS.example.TEST") &&
	    !cert_names((unsigned char *)der.p, der.len, "example.test") &&
	    !cert_names((unsigned char *)der.p, der.len, "hooks.example.tes"), "cert_names");
	/* A certificate for a prefix of the name, or for the name with more
	 * after it, is not the name's. */
	{
		struct buf other = { 0 };

		CHECK(alpn_cert_der(&other, "hooks.example.tes", ka, &k) == 0 &&
		    cert_names((unsigned char *)other.p, other.len, "hooks.example.tes") &&
		    !cert_names((unsigned char *)other.p, other.len, "hooks.example.test"), "cert_names: a prefix");
		other.len = 0;
		CHECK(alpn_cert_der(&other, "hooks.example.testx", ka, &k) == 0 &&
		    !cert_names((unsigned char *)other.p, other.len, "hooks.example.test"), "cert_names: a longer name");
		buf_free(&other);
	}

	/* The key written as PEM reads back, for openssl too. */
	{
		struct buf pem = { 0 };
		struct ec_key back;

		ec_key_pem(&k, &pem);
		CHECK(ec_key_parse(pem.p, pem.len, &back) == 0 && memcmp(back.pk.q, k.pk.q, 65) == 0, "ec key round trip");
		snprintf(path, sizeof(path), "%s/key.pem", dir);
		write_file(path, pem.p, pem.len);
		snprintf(cmd, sizeof(cmd), "openssl ec -in %s -noout -check 2>&1", path);
		run_capture(cmd, &out);
		CHECK(out.p != NULL && strstr(out.p, "valid") != NULL, "openssl ec -check: %s", out.p ? out.p : "");
		buf_free(&pem);
	}

	/* JWK members in RFC 7638's order, base64url without padding. */
	jwk(&j, &k);
	buf_addc(&j, '\0');
	CHECK(strncmp(j.p, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"", 31) == 0 && strlen(j.p) == 31 + 43 + 7 + 43 + 2 &&
	    strpbrk(j.p, "+/=") == NULL, "jwk: %s", j.p);
	j.len = 0;
	b64url(&j, "\xfb\xff", 2);
	CHECK(j.len == 3 && memcmp(j.p, "-_8", 3) == 0, "b64url");
	/* PKCE's S256 challenge: RFC 7636 appendix B's example. */
	j.len = 0;
	pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", 43, &j);
	CHECK(j.len == 43 && memcmp(j.p, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", 43) == 0,
	    "pkce_challenge: %.*s", (int)j.len, j.p);

	/* RFC 3339 times, as ARI's windows come. */
	{
		time_t t = 0;

		CHECK(rfc3339("2025-01-02T04:00:00Z", &t) == 0 && t == 1735790400, "rfc3339 Z: %lld", (long long)t);
		CHECK(rfc3339("2025-01-02T04:00:00.123456Z", &t) == 0 && t == 1735790400, "rfc3339 fraction");
		CHECK(rfc3339("2025-01-02T06:30:00+02:30", &t) == 0 && t == 1735790400, "rfc3339 offset");
		CHECK(rfc3339("2025-01-02T01:00:00-03:00", &t) == 0 && t == 1735790400, "rfc3339 negative offset");
		CHECK(rfc3339("2025-01-02T04:00:00", &t) < 0 && rfc3339("2025-01-02 04:00:00Z", &t) < 0 &&
		    rfc3339("2025-01-02T04:00:00Zx", &t) < 0 && rfc3339("", &t) < 0, "rfc3339 refusals");
	}

	/* Names a CA issues for. */
	CHECK(acme_domain_ok("hooks.example.com") && acme_domain_ok("a-b.c1.io") && !acme_domain_ok("localhost") &&
	    !acme_domain_ok("*.example.com") && !acme_domain_ok("10.0.0.1") && !acme_domain_ok("-a.example.com") &&
	    !acme_domain_ok("a-.example.com") && !acme_domain_ok("a..b") && !acme_domain_ok("example.com.") &&
	    !acme_domain_ok("ex ample.com") && !acme_domain_ok(""), "acme_domain_ok");

	/* The week's orders, counted in --state-dir/DOMAIN/orders. */
	{
		char file[256], text[128], why[800] = "";
		time_t now = time(NULL), resume = 0;
		int i;

		state_dir = dir;
		acme_domain = "hooks.example.test";
		state_open(NULL);  /* makes DOMAIN; every state file is reached through it */
		for (i = 0; i < ACME_ORDERS_PER_WEEK; i++)
			CHECK(acme_orders(1, &resume, why, sizeof(why)) == 0, "order %d: %s", i, why);
		CHECK(acme_orders(0, &resume, why, sizeof(why)) == 1 && resume >= now + ACME_WEEK_S &&
		    resume <= time(NULL) + ACME_WEEK_S, "the cap, and a week after the first");
		CHECK(acme_orders(1, &resume, why, sizeof(why)) == 1, "no order recorded past the cap");
		state_path(file, sizeof(file), "orders");
		/* One older than a week does not count; one ahead of the clock
		 * (set back) counts as now. */
		snprintf(text, sizeof(text), "%lld\n%lld\n%lld\n%lld\n%lld\n", (long long)now - ACME_WEEK_S - 1,
		    (long long)now - 3, (long long)now - 2, (long long)now - 1, (long long)now + 365 * 86400);
		write_file(file, text, strlen(text));
		CHECK(acme_orders(0, &resume, why, sizeof(why)) == 0, "an order older than a week counts: %s", why);
		CHECK(acme_orders(1, &resume, why, sizeof(why)) == 0 &&
		    acme_orders(0, &resume, why, sizeof(why)) == 1 && resume == now - 3 + ACME_WEEK_S,
		    "the cap after one more: resumes %lld", (long long)resume);
		write_file(file, "12x\n", 4);
		CHECK(acme_orders(0, &resume, why, sizeof(why)) < 0 && strstr(why, "not a list of times") != NULL,
		    "garbage refused: %s", why);
		write_file(file, "1234", 4);
		CHECK(acme_orders(0, &resume, why, sizeof(why)) < 0, "a line without its end refused");
		/* Times in the future (a clock that was ahead): counted as now,
		 * and written back as now, so the cap lifts a week later. */
		write_file(file, "99999999999\n99999999999\n99999999999\n99999999999\n99999999999\n", 60);
		now = time(NULL);
		CHECK(acme_orders(0, &resume, why, sizeof(why)) == 1 && resume >= now + ACME_WEEK_S &&
		    resume <= time(NULL) + ACME_WEEK_S, "future times capped for a week: %s", why);
		{
			FILE *f = fopen(file, "r");
			long long v;
			int lines = 0, future = 0;

			while (f != NULL && fscanf(f, "%lld", &v) == 1) {
				lines++;
				future += v > (long long)time(NULL);
			}
			if (f != NULL)
				fclose(f);
			CHECK(lines == ACME_ORDERS_PER_WEEK && future == 0, "future times written back as now: %d lines, "
			    "%d in the future", lines, future);
		}
		/* Larger than ACME_ORDERS_FILE_MAX: refused before reading, as
		 * malformed (main's code read a file of any size: die() in
		 * buf_reserve took the server down). */
		{
			char big[ACME_ORDERS_FILE_MAX + 11];
			int fd;

			for (i = 0; i + 11 <= (int)sizeof(big); i += 11)
				memcpy(big + i, "1000000000\n", 11);
			write_file(file, big, (size_t)i);
			int refused;

			why[0] = '\0';
			refused = acme_orders(0, &resume, why, sizeof(why)) < 0 && strstr(why, "larger than 4096 bytes") != NULL &&
			    strstr(why, "remove it") != NULL;
			CHECK(refused, "an orders file over 4 KiB refused: %s", why);
			if (refused) {  /* else it would be read: gigabytes */
				fd = open(file, O_WRONLY | O_TRUNC);
				CHECK(fd >= 0 && ftruncate(fd, (off_t)5 << 30) == 0, "a sparse 5 GiB orders file");
				if (fd >= 0)
					close(fd);
				why[0] = '\0';
				CHECK(acme_orders(0, &resume, why, sizeof(why)) < 0 && strstr(why, "larger than") != NULL,
				    "a 5 GiB orders file refused unread: %s", why);
			}
			unlink(file);
		}
		/* The renewal floor: never after notAfter (less a margin), and
		 * counted from now at the latest. */
		{
			struct identity fake;

			memset(&fake, 0, sizeof(fake));
			now = time(NULL);
			acme_issued = now;
			fake.leaf.not_before = now - 3600;
			fake.leaf.not_after = now + 600;
			CHECK(renew_floor(&fake) <= fake.leaf.not_after - ACME_FLOOR_MARGIN_S &&
			    renew_floor(&fake) >= now, "floor of a certificate with 10 minutes left: %+lld s from notAfter",
			    (long long)(renew_floor(&fake) - fake.leaf.not_after));
			acme_issued = 0;
			fake.leaf.not_before = now + 1000LL * 365 * 86400;
			fake.leaf.not_after = now + 1001LL * 365 * 86400;
			CHECK(renew_floor(&fake) <= time(NULL) + ACME_FLOOR_MAX_S,
			    "floor of a certificate valid from a millennium ahead: %+lld s from now",
			    (long long)(renew_floor(&fake) - now));
			fake.leaf.not_before = now - 86400;
			fake.leaf.not_after = now + 89 * 86400;
			CHECK(renew_floor(&fake) == now, "floor of a 90-day certificate a day old: %+lld s from now",
			    (long long)(renew_floor(&fake) - now));
		}
		close(domain_fd);
		close(state_fd);
		domain_fd = state_fd = -1;
		state_dir = "/var/lib/xwebhook";
		acme_domain = NULL;
	}

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		CHECK(0, "rm -rf %s", dir);
	hex_encode(h, 32, hex);
	buf_free(&der);
	buf_free(&out);
	buf_free(&j);
}
#endif

/* ---- Parsers of what other servers say: HTTP status lines, host:port,
 * Redis (RESP) and NATS replies, and the small checks beside them ---- */

static void
test_http_status_line(void)
{
	/* RFC 9112, 4: HTTP-version SP 3DIGIT SP [ reason-phrase ] CRLF. */
	static const struct { const char *line; int status; } v[] = {
		{ "HTTP/1.1 200 OK\r\n", 200 },
		{ "HTTP/1.0 404 Not Found\r\n", 404 },
		{ "HTTP/1.1 100 Continue\r\n", 100 },
		{ "HTTP/1.1 999 \r\n", 999 },
		{ "HTTP/1.1 204\r\n", 204 },               /* no SP before an empty reason: taken */
		{ "HTTP/1.1 200 OK", 200 },
		{ "HTTP/1.2 200 OK\r\n", -1 },
		{ "HTTP/2 200 OK\r\n", -1 },
		{ "HTTP/2.0 200 OK\r\n", -1 },
		{ "http/1.1 200 OK\r\n", -1 },             /* HTTP-name is case-sensitive */
		{ "HTTP/1.1 20 OK\r\n", -1 },
		{ "HTTP/1.1 2000 OK\r\n", -1 },
		{ "HTTP/1.1 2x0 OK\r\n", -1 },
		{ "HTTP/1.1 -20 OK\r\n", -1 },
		{ "HTTP/1.1  200 OK\r\n", -1 },
		{ "HTTP/1.1\t200 OK\r\n", -1 },
		{ " HTTP/1.1 200 OK\r\n", -1 },
		{ "HTTP/1.1 200\n", -1 },                  /* n < 14 */
		{ "HTTP/1.1 200", -1 },
		{ "", -1 },
	};
	size_t i;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++)
		CHECK(http_status_line(v[i].line, strlen(v[i].line)) == v[i].status, "status line '%s': %d, not %d",
		    v[i].line, http_status_line(v[i].line, strlen(v[i].line)), v[i].status);
	/* Only n bytes are read: a whole line, cut short, is no status line. */
	CHECK(http_status_line("HTTP/1.1 200 OK\r\n", 13) == -1, "a status line cut at 13 bytes taken");
	CHECK(http_status_line("HTTP/1.1 200 OK\r\n", 14) == 200, "a status line of exactly 14 bytes refused");
}

static void
test_split_host_port(void)
{
	static const struct { const char *in, *host, *port; } ok[] = {
		{ "127.0.0.1:8080", "127.0.0.1", "8080" },
		{ "example.com", "example.com", "" },
		{ "example.com:443", "example.com", "443" },
		{ "[::1]:443", "::1", "443" },
		{ "[::1]", "::1", "" },
		{ "[2001:db8::1]:65535", "2001:db8::1", "65535" },
		{ ":8080", "", "8080" },
		{ "h:0", "h", "0" },
		{ "h:00080", "h", "00080" },
		{ "", "", "" },
	};
	static const char *const bad[] = {
		"h:", "h:123456", "h:65536", "h:99999", "h:8a", "h:-1", "h: 80", "h:+80",
		"::1:80", "a:b:c", "[::1", "[::1]x", "[::1]80", "[::1]:", "[abc]:80", "[]:80",
	};
	char host[16], port[6];
	const char *why;
	size_t i;

	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		int r = split_host_port(ok[i].in, strlen(ok[i].in), host, sizeof(host), port, sizeof(port), &why);

		CHECK(r == 0 && strcmp(host, ok[i].host) == 0 && strcmp(port, ok[i].port) == 0,
		    "'%s': %d, host '%s', port '%s'", ok[i].in, r, r == 0 ? host : "", r == 0 ? port : "");
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK(split_host_port(bad[i], strlen(bad[i]), host, sizeof(host), port, sizeof(port), &why) < 0 &&
		    why != NULL && why[0] != '\0', "'%s' taken", bad[i]);
	CHECK(split_host_port("::1:80", 6, host, sizeof(host), port, sizeof(port), &why) < 0 &&
	    strstr(why, "brackets") != NULL, "an IPv6 address without brackets: %s", why);
	/* The host must fit with its NUL: 15 bytes do, 16 do not. */
	CHECK(split_host_port("abcdefghijklmno:1", 17, host, sizeof(host), port, sizeof(port), &why) == 0 &&
	    strcmp(host, "abcdefghijklmno") == 0, "a 15-byte host refused");
	CHECK(split_host_port("abcdefghijklmnop:1", 18, host, sizeof(host), port, sizeof(port), &why) < 0 &&
	    strstr(why, "too long") != NULL, "a 16-byte host taken: %s", why);
	CHECK(split_host_port("[abcdefghijklmn:]:1", 19, host, sizeof(host), port, sizeof(port), &why) == 0 &&
	    strcmp(host, "abcdefghijklmn:") == 0, "a 15-byte bracketed host refused");
	CHECK(split_host_port("h:123", 5, host, sizeof(host), port, 3, &why) < 0, "a port longer than its room taken");
	/* Only n bytes are read. */
	CHECK(split_host_port("host:80garbage", 7, host, sizeof(host), port, sizeof(port), &why) == 0 &&
	    strcmp(host, "host") == 0 && strcmp(port, "80") == 0, "host:80 read past its length");
	CHECK(split_host_port("h:8080", 4, host, sizeof(host), port, sizeof(port), &why) == 0 &&
	    strcmp(port, "80") == 0, "a port cut at n: '%s'", port);
}

/* A string literal and its length, NULs in it counted. */
#define LIT(s) s, sizeof(s) - 1

/* A forward whose connection holds the bytes given (then its end, with
 * eof, else silence): what resp_reply and nats_read are fed below. */
static void
fake_forward(struct forward *f, int sv[2], const char *p, size_t n, int eof)
{
	memset(f, 0, sizeof(*f));
	sv[0] = sv[1] = -1;
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0 || fcntl(sv[0], F_SETFL, O_NONBLOCK) < 0 ||
	    write_all(sv[1], p, n) < 0 || (eof && shutdown(sv[1], SHUT_WR) < 0)) {
		CHECK(0, "fake_forward: %s", strerror(errno));
		return;
	}
	f->cl.c.fd = sv[0];
	f->cl.c.tr = &plain_transport;
}

static void
fake_forward_end(struct forward *f, int sv[2])
{
	if (sv[0] >= 0)
		close(sv[0]);
	if (sv[1] >= 0)
		close(sv[1]);
	buf_free(&f->in);
}

/* resp_reply on in (then the connection's end): its type, and its text. */
static int
resp_one(const char *in, size_t n, char *text, size_t tn, size_t *len)
{
	struct forward f;
	int sv[2], t;

	fake_forward(&f, sv, in, n, 1);
	t = resp_reply(&f, now_ms() + 2000, text, tn, len);
	fake_forward_end(&f, sv);
	return t;
}

static void
test_resp_reply(void)
{
	/* The RESP2 reply types XADD and AUTH answer with (redis.io's
	 * protocol spec): simple strings, errors, integers, bulk strings. */
	static const struct { const char *in; size_t n; int type; const char *text; size_t len; } ok[] = {
		{ LIT("+OK\r\n"), '+', LIT("OK") },
		{ LIT("-ERR unknown command 'XADD'\r\n"), '-', LIT("ERR unknown command 'XADD'") },
		{ LIT("-WRONGPASS invalid username-password pair\r\n"), '-', LIT("WRONGPASS invalid username-password pair") },
		{ LIT(":1000\r\n"), ':', LIT("1000") },
		{ LIT("+\r\n"), '+', LIT("") },
		{ LIT("$15\r\n1700000000000-0\r\n"), '$', LIT("1700000000000-0") },
		{ LIT("$0\r\n\r\n"), '$', LIT("") },
		{ LIT("$-1\r\n"), '$', LIT("") },               /* the null bulk string */
		{ LIT("$3\r\na\0b\r\n"), '$', LIT("a\0b") },      /* a NUL comes through */
		{ LIT("$2\r\n\r\n\r\n"), '$', LIT("\r\n") },      /* CRLF inside a bulk string */
	};
	static const char *const bad[] = {
		"OK\r\n", "*1\r\n$2\r\nOK\r\n", "+OK\n", "\r\n", "\n", "_\r\n",
		"$\r\n", "$-2\r\n", "$-\r\n", "$abc\r\n", "$ 3\r\nabc\r\n", "$1025\r\n", "$99999999999999999999\r\n",
		"$3\r\nhello\r\n", "$5\r\nhelloXY", "$5\r\nhello\n\n",
		"$5\r\nhel", ":10", "",                   /* cut short by the connection's end */
	};
	char text[RESP_MAX_LINE + 1], big[RESP_MAX_LINE + 16];
	size_t i, len;
	struct forward f;
	int sv[2], t;

	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		len = 99;
		t = resp_one(ok[i].in, ok[i].n, text, sizeof(text), &len);
		CHECK(t == ok[i].type && len == ok[i].len && memcmp(text, ok[i].text, len) == 0 && text[len] == '\0',
		    "RESP reply %zu: type %d, %zu bytes '%s'", i, t, len, t < 0 ? text : "");
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		t = resp_one(bad[i], strlen(bad[i]), text, sizeof(text), &len);
		CHECK(t == -1 && text[0] != '\0', "bad RESP reply '%s': %d", bad[i], t);
	}
	/* A bulk string of RESP_MAX_LINE bytes is taken; a line longer than
	 * that, with no end in sight, is not waited for. */
	memcpy(big, "$1024\r\n", 7);
	memset(big + 7, 'x', RESP_MAX_LINE);
	memcpy(big + 7 + RESP_MAX_LINE, "\r\n", 2);
	t = resp_one(big, 7 + RESP_MAX_LINE + 2, text, sizeof(text), &len);
	CHECK(t == '$' && len == RESP_MAX_LINE, "a bulk string of %d bytes: %d, %zu", RESP_MAX_LINE, t, len);
	big[0] = '+';
	memset(big + 1, 'y', RESP_MAX_LINE + 8);
	fake_forward(&f, sv, big, RESP_MAX_LINE + 9, 0);
	t = resp_reply(&f, now_ms() + 2000, text, sizeof(text), &len);
	CHECK(t == -1 && strstr(text, "longer than") != NULL, "a reply line with no end: %d %s", t, text);
	fake_forward_end(&f, sv);
	/* Text longer than its room is cut, and NUL-ended. */
	t = resp_one(LIT("+OKAYOKAY\r\n"), text, 4, &len);
	CHECK(t == '+' && len == 3 && strcmp(text, "OKA") == 0, "a reply cut to its room: %zu '%s'", len, text);
	/* Two replies in one read come one at a time; a reply still coming
	 * is waited for (IO_TIMEOUT by the deadline) and then taken whole. */
	fake_forward(&f, sv, LIT("+OK\r\n:2\r\n$5\r\nhel"), 0);
	t = resp_reply(&f, now_ms() + 2000, text, sizeof(text), &len);
	CHECK(t == '+' && strcmp(text, "OK") == 0, "the first of three replies: %d '%s'", t, text);
	t = resp_reply(&f, now_ms() + 2000, text, sizeof(text), &len);
	CHECK(t == ':' && strcmp(text, "2") == 0, "the second of three replies: %d '%s'", t, text);
	t = resp_reply(&f, now_ms() + 50, text, sizeof(text), &len);
	CHECK(t == IO_TIMEOUT, "a bulk string still coming: %d, not IO_TIMEOUT", t);
	CHECK(write_all(sv[1], LIT("lo\r\n")) == 0, "write");
	t = resp_reply(&f, now_ms() + 2000, text, sizeof(text), &len);
	CHECK(t == '$' && len == 5 && strcmp(text, "hello") == 0, "a bulk string in two reads: %d '%s'", t, text);
	fake_forward_end(&f, sv);
}

static void
test_resp_entry_id(void)
{
	/* Redis stream ids: <millisecondsTime>-<sequenceNumber>, each a
	 * 64-bit number. */
	static const char *const ok[] = {
		"1700000000000-0", "0-1", "1-0", "18446744073709551615-18446744073709551615",
	};
	static const char *const bad[] = {
		"", "0-0", "-", "-1", "1-", "1", "12", "1--2", "1-2-3", "a-1", "1-a", " 1-2", "1-2 ", "+1-2",
		"18446744073709551615-184467440737095516150",
	};
	size_t i;

	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		CHECK(resp_entry_id(ok[i], strlen(ok[i])), "entry id '%s' refused", ok[i]);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK(!resp_entry_id(bad[i], strlen(bad[i])), "'%s' taken as an entry id", bad[i]);
	CHECK(!resp_entry_id("1-23", 2), "an entry id read past its length");
}

/* nats_read on in (then the end, with eof): its op, with m and why. */
static int
nats_one(struct forward *f, int sv[2], const char *in, size_t n, int eof, struct nats_msg *m, char *why,
    size_t wn)
{
	fake_forward(f, sv, in, n, eof);
	why[0] = '\0';
	return nats_read(f, now_ms() + (eof ? 2000 : 50), m, why, wn);
}

static void
test_nats_read(void)
{
	/* The NATS client protocol (docs.nats.io, "Client Protocol"): control
	 * lines end in CRLF, ops are case-insensitive, fields are split by
	 * spaces or tabs; MSG <subject> <sid> [reply-to] <#bytes>, and HMSG
	 * <subject> <sid> [reply-to] <#header bytes> <#total bytes>. */
	static const struct { const char *in; int op; const char *args; } lines[] = {
		{ "INFO {\"max_payload\":1048576}\r\n", NATS_INFO, "{\"max_payload\":1048576}" },
		{ "PING\r\n", NATS_PING, "" },
		{ "PONG\r\n", NATS_PONG, "" },
		{ "pong\r\n", NATS_PONG, "" },
		{ "+OK\r\n", NATS_OK, "" },
		{ "-ERR 'Authorization Violation'\r\n", NATS_ERR, "'Authorization Violation'" },
		{ "PING\n", NATS_PING, "" },
		{ "\r\n\r\n  \r\nPING\r\n", NATS_PING, "" },  /* empty lines are nothing */
		{ "INFO\t{}\r\n", NATS_INFO, "{}" },
	};
	static const struct { const char *in; const char *subject, *payload; int status; } msgs[] = {
		{ "MSG x.events 1 5\r\nhello\r\n", "x.events", "hello", 0 },
		{ "msg x.events 1 _INBOX.a.1 5\r\nhello\r\n", "x.events", "hello", 0 },
		{ "MSG\tx\t1\t0\r\n\r\n", "x", "", 0 },
		{ "MSG x 1 2\r\n\r\n\r\n", "x", "\r\n", 0 },
		{ "HMSG _INBOX.a.1 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n", "_INBOX.a.1", "", 503 },
		{ "HMSG _INBOX.a.1 1 r 16 16\r\nNATS/1.0 503\r\n\r\n\r\n", "_INBOX.a.1", "", 503 },
		{ "HMSG s 1 12 17\r\nNATS/1.0\r\n\r\nhello\r\n", "s", "hello", 0 },
	};
	static const char *const bad[] = {
		"FOO\r\n", "MSG\r\n", "MSG x 1\r\n", "MSG x 1 r s 5\r\n", "HMSG x 1 5\r\n",
		"MSG x 1 5x\r\nhello\r\n", "MSG x 1 -5\r\n", "MSG x 1 99999999999\r\n", "MSG x 1 65537\r\n",
		"HMSG x 1 10 5\r\n0123456789\r\n", "MSG x 1 5\r\nhelloXY", "MSG x 1 5\r\nhello\n\n",
		"MSG x 1 5\r\nhel", "PIN", "",          /* cut short by the connection's end */
	};
	char why[256], *big;
	struct nats_msg m;
	struct forward f;
	size_t i;
	int sv[2], op;

	for (i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
		op = nats_one(&f, sv, lines[i].in, strlen(lines[i].in), 1, &m, why, sizeof(why));
		CHECK(op == lines[i].op && m.args_len == strlen(lines[i].args) &&
		    memcmp(m.args, lines[i].args, m.args_len) == 0, "NATS line %zu: op %d, args '%.*s' %s", i, op,
		    (int)m.args_len, m.args ? m.args : "", why);
		fake_forward_end(&f, sv);
	}
	for (i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++) {
		op = nats_one(&f, sv, msgs[i].in, strlen(msgs[i].in), 1, &m, why, sizeof(why));
		CHECK(op == NATS_MSG && m.subject_len == strlen(msgs[i].subject) &&
		    memcmp(m.subject, msgs[i].subject, m.subject_len) == 0 &&
		    m.payload_len == strlen(msgs[i].payload) && memcmp(m.payload, msgs[i].payload, m.payload_len) == 0 &&
		    m.status == msgs[i].status, "NATS message %zu: op %d, subject '%.*s', %zu bytes, status %d %s", i,
		    op, (int)m.subject_len, m.subject ? m.subject : "", m.payload_len, m.status, why);
		fake_forward_end(&f, sv);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		op = nats_one(&f, sv, bad[i], strlen(bad[i]), 1, &m, why, sizeof(why));
		CHECK(op == -1 && why[0] != '\0', "bad NATS input '%s': %d", bad[i], op);
		fake_forward_end(&f, sv);
	}
	/* Several in one read come one at a time; a message still coming is
	 * waited for, then taken whole. */
	op = nats_one(&f, sv, LIT("PING\r\n+OK\r\nMSG s 1 5\r\nhel"), 0, &m, why, sizeof(why));
	CHECK(op == NATS_PING, "the first of three: %d %s", op, why);
	op = nats_read(&f, now_ms() + 2000, &m, why, sizeof(why));
	CHECK(op == NATS_OK, "the second of three: %d %s", op, why);
	op = nats_read(&f, now_ms() + 50, &m, why, sizeof(why));
	CHECK(op == IO_TIMEOUT, "a message still coming: %d, not IO_TIMEOUT", op);
	CHECK(write_all(sv[1], LIT("lo\r\nPONG\r\n")) == 0, "write");
	op = nats_read(&f, now_ms() + 2000, &m, why, sizeof(why));
	CHECK(op == NATS_MSG && m.payload_len == 5 && memcmp(m.payload, "hello", 5) == 0,
	    "a message in two reads: %d %s", op, why);
	op = nats_read(&f, now_ms() + 2000, &m, why, sizeof(why));
	CHECK(op == NATS_PONG, "the line after a message: %d %s", op, why);
	fake_forward_end(&f, sv);
	/* A line of NATS_MAX_LINE bytes is read; a longer one, with no end
	 * in sight, is not waited for. A payload of NATS_MAX_REPLY is taken. */
	big = malloc(NATS_MAX_LINE + 64);
	if (big == NULL) {
		CHECK(0, "malloc");
		return;
	}
	memcpy(big, "INFO ", 5);
	memset(big + 5, 'i', NATS_MAX_LINE - 7);
	memcpy(big + NATS_MAX_LINE - 2, "\r\n", 2);
	op = nats_one(&f, sv, big, NATS_MAX_LINE, 1, &m, why, sizeof(why));
	CHECK(op == NATS_INFO && m.args_len == NATS_MAX_LINE - 7, "a line of %d bytes: %d %s", NATS_MAX_LINE, op, why);
	fake_forward_end(&f, sv);
	memset(big + 5, 'i', NATS_MAX_LINE + 8);
	op = nats_one(&f, sv, big, NATS_MAX_LINE + 13, 0, &m, why, sizeof(why));
	CHECK(op == -1 && strstr(why, "longer than") != NULL, "a line with no end: %d %s", op, why);
	fake_forward_end(&f, sv);
	i = (size_t)snprintf(big, 64, "MSG s 1 %d\r\n", NATS_MAX_REPLY);
	memset(big + i, 'p', NATS_MAX_REPLY);
	memcpy(big + i + NATS_MAX_REPLY, "\r\n", 2);
	op = nats_one(&f, sv, big, i + NATS_MAX_REPLY + 2, 1, &m, why, sizeof(why));
	CHECK(op == NATS_MSG && m.payload_len == NATS_MAX_REPLY, "a payload of %d bytes: %d %s", NATS_MAX_REPLY, op,
	    why);
	fake_forward_end(&f, sv);
	free(big);
}

static void
test_nats_fields(void)
{
	static const char *const subjects_ok[] = { "x", "x.events", "x.events.in", "_INBOX.abc", "a-b_c~!" };
	static const char *const subjects_bad[] = {
		"", ".", "x.", ".x", "x..y", "x.*", "x.>", "*", ">", "x y", "x\ty", "x\x7f", "x\xc3\xa9",
	};
	size_t i;

	CHECK(nats_number("0", 1, 10) == 0, "0");
	CHECK(nats_number("123", 3, 1000) == 123, "123");
	CHECK(nats_number("1000", 4, 1000) == 1000, "the most");
	CHECK(nats_number("1001", 4, 1000) == -1, "one past the most");
	CHECK(nats_number("", 0, 10) == -1, "empty");
	CHECK(nats_number("12a", 3, 1000) == -1, "12a");
	CHECK(nats_number("-1", 2, 10) == -1, "-1");
	CHECK(nats_number("+1", 2, 10) == -1, "+1");
	CHECK(nats_number("9999999999", 10, LONG_MAX) == 9999999999L, "ten digits");
	CHECK(nats_number("99999999999", 11, LONG_MAX) == -1, "eleven digits");
	CHECK(nats_number("129", 2, 100) == 12, "read past its length");
	for (i = 0; i < sizeof(subjects_ok) / sizeof(subjects_ok[0]); i++)
		CHECK(nats_subject_ok(subjects_ok[i]), "subject '%s' refused", subjects_ok[i]);
	for (i = 0; i < sizeof(subjects_bad) / sizeof(subjects_bad[0]); i++)
		CHECK(!nats_subject_ok(subjects_bad[i]), "subject '%s' taken", subjects_bad[i]);
}

static void
test_small_checks(void)
{
	/* host_ok: RFC 9112 3.2's Host is uri-host [ ":" port ]. */
	static const char *const hosts_ok[] = { "x", "example.com", "example.com:8080", "[::1]:80", "127.0.0.1", "" };
	static const char *const hosts_bad[] = { "a b", "a\tb", "a,b", "a/b", "a\\b", "a?b", "a#b", "user@host" };
	/* X's ids and dates, as its API takes them. */
	static const char *const ids_ok[] = { "1", "2244994945", "9223372036854775807", "0000000000000000001" };
	static const char *const ids_bad[] = { "", "-1", "12a", "1 ", " 1", "12345678901234567890", "+1" };
	static const char *const dates_ok[] = { "202401010000", "200601010000", "202402292359", "240002291200",
		"202412311159" };
	static const char *const dates_bad[] = { "", "20240101000", "2024010100000", "200512312359", "202402300000",
		"202302290000", "190002290000", "210002290000", "202413010000", "202400010000", "202401000000",
		"202401012400", "202401010060", "202404310000", "2024-1010000", "20240101000a" };
	size_t i;

	for (i = 0; i < sizeof(hosts_ok) / sizeof(hosts_ok[0]); i++)
		CHECK(host_ok(hosts_ok[i], strlen(hosts_ok[i])), "Host '%s' refused", hosts_ok[i]);
	for (i = 0; i < sizeof(hosts_bad) / sizeof(hosts_bad[0]); i++)
		CHECK(!host_ok(hosts_bad[i], strlen(hosts_bad[i])), "Host '%s' taken", hosts_bad[i]);
	CHECK(host_ok("a,b", 1), "a Host read past its length");
	for (i = 0; i < sizeof(ids_ok) / sizeof(ids_ok[0]); i++)
		CHECK(x_id_ok(ids_ok[i]), "X id '%s' refused", ids_ok[i]);
	for (i = 0; i < sizeof(ids_bad) / sizeof(ids_bad[0]); i++)
		CHECK(!x_id_ok(ids_bad[i]), "X id '%s' taken", ids_bad[i]);
	for (i = 0; i < sizeof(dates_ok) / sizeof(dates_ok[0]); i++)
		CHECK(x_date_ok(dates_ok[i]), "X date '%s' refused", dates_ok[i]);
	for (i = 0; i < sizeof(dates_bad) / sizeof(dates_bad[0]); i++)
		CHECK(!x_date_ok(dates_bad[i]), "X date '%s' taken", dates_bad[i]);
	CHECK(ip_literal("127.0.0.1") && ip_literal("::1") && ip_literal("2001:db8::1"), "IP literals");
	CHECK(!ip_literal("example.com") && !ip_literal("") && !ip_literal("[::1]") && !ip_literal("1.2.3") &&
	    !ip_literal("256.1.1.1"), "names taken as IP literals");
}

/* ---- The client's one way of each: URL splitter, host:port formatter,
 * request builder, percent-encoder, form-decoder, JSON object index ---- */

/* url_parse(s): want_rc, and when 0 what it split. */
static void
expect_url(const char *s, int want_rc, int https, const char *host, const char *port, const char *target)
{
	struct url u;
	int rc = url_parse(s, &u);

	if (want_rc < 0) {
		CHECK(rc < 0, "url_parse(%.80s) took it: host [%s] port [%s]", s, u.host, u.port);
		return;
	}
	CHECK(rc == 0 && u.https == https && strcmp(u.host, host) == 0 && strcmp(u.port, port) == 0 &&
	    strcmp(u.target, target) == 0, "url_parse(%.80s) = %d: %d [%s] [%s] [%s]", s, rc, u.https, u.host,
	    u.port, u.target);
}

static void
test_url_parse(void)
{
	char long_s[3000], host[300];

	expect_url("https://example.com", 0, 1, "example.com", "", "/");
	expect_url("HTTP://Example.com:8080/a?b=c#frag", 0, 0, "Example.com", "8080", "/a?b=c");
	expect_url("http://h?q=1", 0, 0, "h", "", "/?q=1");
	expect_url("http://h#f", 0, 0, "h", "", "/");
	expect_url("https://[::1]:443/x", 0, 1, "::1", "443", "/x");
	expect_url("http://[2001:db8::1]/", 0, 0, "2001:db8::1", "", "/");
	expect_url("http://h:0/", 0, 0, "h", "0", "/");
	expect_url("http://h:65535/", 0, 0, "h", "65535", "/");
	expect_url("http://h:65536/", -1, 0, 0, 0, 0);
	expect_url("http://h:123456/", -1, 0, 0, 0, 0);
	expect_url("http://h:/", -1, 0, 0, 0, 0);
	expect_url("http://h:8x/", -1, 0, 0, 0, 0);
	expect_url("http://h:-1/", -1, 0, 0, 0, 0);
	expect_url("http://::1/", -1, 0, 0, 0, 0);          /* IPv6 without brackets */
	expect_url("http://[::1/", -1, 0, 0, 0, 0);
	expect_url("http://[::1]x/", -1, 0, 0, 0, 0);
	expect_url("http://[1.2.3.4]/", -1, 0, 0, 0, 0);    /* brackets hold IPv6 only */
	expect_url("http://user@h/", -1, 0, 0, 0, 0);       /* no userinfo */
	expect_url("http://user:pw@h:1/", -1, 0, 0, 0, 0);
	expect_url("http:///path", -1, 0, 0, 0, 0);         /* empty host */
	expect_url("http://:80/", -1, 0, 0, 0, 0);
	expect_url("http://[]:80/", -1, 0, 0, 0, 0);
	expect_url("ftp://h/", -1, 0, 0, 0, 0);
	expect_url("h/x", -1, 0, 0, 0, 0);
	expect_url("http://h/a b", -1, 0, 0, 0, 0);
	expect_url("http://h/\x7f", -1, 0, 0, 0, 0);
	expect_url("http://h/\xc3\xa9", -1, 0, 0, 0, 0);
	/* Overlong: a host of 255 bytes is the most; a target of 2047. */
	memset(host, 'a', 255);
	host[255] = '\0';
	snprintf(long_s, sizeof(long_s), "http://%s/", host);
	expect_url(long_s, 0, 0, host, "", "/");
	snprintf(long_s, sizeof(long_s), "http://a%s/", host);
	expect_url(long_s, -1, 0, 0, 0, 0);
	memcpy(long_s, "http://h/", 9);
	memset(long_s + 9, 'p', 2045);
	long_s[9 + 2045] = '\0';
	CHECK(url_parse(long_s, &(struct url){ 0 }) == 0, "a target of 2046 bytes is taken");
	long_s[9 + 2045] = 'p';
	long_s[9 + 2046] = '\0';
	CHECK(url_parse(long_s, &(struct url){ 0 }) < 0, "a target of 2047 bytes is refused");
}

/* What is left of forward_parse after url_authority: the userinfo rules
 * of each scheme and the path; the authority's end is '/' only, so a
 * password may hold '?' and '#'. */
static void
test_url_authority(void)
{
	struct authority a;
	const char *why = NULL;

	CHECK(url_authority("u:p@h:1/x", "/", &a, &why) == 0 && a.userinfo != NULL && a.userinfo_len == 3 &&
	    memcmp(a.userinfo, "u:p", 3) == 0 && strcmp(a.host, "h") == 0 && strcmp(a.port, "1") == 0 &&
	    strcmp(a.end, "/x") == 0, "url_authority(u:p@h:1/x)");
	CHECK(url_authority("h:1?x/y", "/?#", &a, &why) == 0 && a.userinfo == NULL && strcmp(a.port, "1") == 0 &&
	    strcmp(a.end, "?x/y") == 0, "url_authority stops at ?");
	CHECK(url_authority("", "/", &a, &why) == 0 && a.host[0] == '\0' && a.port[0] == '\0' && *a.end == '\0',
	    "url_authority of nothing");
	CHECK(url_authority("[::1]:99999/", "/", &a, &why) < 0 && strstr(why, "0 to 65535") != NULL,
	    "url_authority port out of range: %s", why);
	CHECK(url_authority("::1:80/", "/", &a, &why) < 0 && strstr(why, "brackets") != NULL,
	    "url_authority bare IPv6: %s", why);
	expect_forward("redis://:p?w#d@h:1/s", 1, "", "p?w#d", "h", "1", "s", "redis://h:1/s");
	expect_forward("nats://[2001:db8::1]:4222/e", 1, "", "", "2001:db8::1", "4222", "e",
	    "nats://[2001:db8::1]:4222/e");
	expect_forward("redis://h:0/s", 1, "", "", "h", "0", "s", "redis://h:0/s");
	expect_forward("redis://h:65535/s", 1, "", "", "h", "65535", "s", "redis://h:65535/s");
	expect_forward("redis://h:65536/s", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("redis://:1/s", 0, 0, 0, 0, 0, 0, 0);       /* empty host */
	expect_forward("redis://:pw@:1/s", 0, 0, 0, 0, 0, 0, 0);
	expect_forward("redis://h:1", 0, 0, 0, 0, 0, 0, 0);        /* no path */
}

static void
expect_host_port(const char *host, const char *port, const char *omit, const char *want)
{
	char out[HOST_PORT_MAX];
	int rc = host_port_format(out, sizeof(out), host, port, omit);

	CHECK(rc == 0 && strcmp(out, want) == 0, "host_port_format(%s, %s, %s) = %d [%s]", host, port,
	    omit ? omit : "NULL", rc, out);
}

static void
test_host_port_format(void)
{
	char small[5], v6[300];

	expect_host_port("example.com", "", "443", "example.com");
	expect_host_port("example.com", "443", "443", "example.com");
	expect_host_port("example.com", "80", "443", "example.com:80");
	expect_host_port("example.com", "8443", "443", "example.com:8443");
	expect_host_port("::1", "8080", "80", "[::1]:8080");
	expect_host_port("::1", "80", "80", "[::1]");
	expect_host_port("2001:db8::1", "", NULL, "[2001:db8::1]");
	expect_host_port("h", "0", NULL, "h:0");
	expect_host_port("h", "65535", "443", "h:65535");
	expect_host_port("h", "443", NULL, "h:443");
	expect_host_port("127.0.0.1", "6379", NULL, "127.0.0.1:6379");
	CHECK(host_port_format(small, sizeof(small), "example.com", "", NULL) < 0, "a too small buffer is refused");
	CHECK(host_port_format(small, sizeof(small), "abcd", "", NULL) == 0 && strcmp(small, "abcd") == 0,
	    "an exact fit is taken");
	/* The longest: a 255-byte IPv6-shaped host, brackets and 5 digits. */
	memset(v6, ':', 255);
	v6[255] = '\0';
	CHECK(host_port_format(small, 0, "", "", NULL) < 0, "no room at all");
	{
		char out[HOST_PORT_MAX];

		CHECK(host_port_format(out, sizeof(out), v6, "65535", NULL) == 0 && strlen(out) == 263,
		    "the longest host:port fits HOST_PORT_MAX");
	}
}

static void
expect_request(const char *method, const char *url, const char *target, const char *fields, long long len,
    const char *want)
{
	struct url u;
	struct buf b = { 0 };

	CHECK(url_parse(url, &u) == 0, "url %s", url);
	http_request_head(&b, method, &u, target, fields, len);
	buf_addc(&b, '\0');
	CHECK(strcmp(b.p, want) == 0, "request head for %s:\n%s", url, b.p);
	buf_free(&b);
}

static void
test_http_request_head(void)
{
	expect_request("GET", "http://example.com:8080/a?b", NULL, "User-Agent: t\r\n", -1,
	    "GET /a?b HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: t\r\n\r\n");
	/* RFC 9112 3.2: the scheme's default port is left out, another kept. */
	expect_request("GET", "https://h:443/", NULL, "", -1, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
	expect_request("GET", "http://h:80/", NULL, "", -1, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
	expect_request("GET", "http://h:443/", NULL, "", -1, "GET / HTTP/1.1\r\nHost: h:443\r\n\r\n");
	expect_request("GET", "https://h:80/", NULL, "", -1, "GET / HTTP/1.1\r\nHost: h:80\r\n\r\n");
	/* An IPv6 literal in brackets (ACME sent it bare before). */
	expect_request("POST", "https://[2001:db8::1]/x", "/y", "", 5,
	    "POST /y HTTP/1.1\r\nHost: [2001:db8::1]\r\nContent-Length: 5\r\n\r\n");
	expect_request("POST", "https://[::1]:14000/dir", NULL, "Accept: a\r\nConnection: close\r\n", 0,
	    "POST /dir HTTP/1.1\r\nHost: [::1]:14000\r\nAccept: a\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
	expect_request("DELETE", "https://api.x.com/2/webhooks/1", NULL, "", -1,
	    "DELETE /2/webhooks/1 HTTP/1.1\r\nHost: api.x.com\r\n\r\n");
	expect_request("PUT", "http://h:1/", NULL, "", 1048576,
	    "PUT / HTTP/1.1\r\nHost: h:1\r\nContent-Length: 1048576\r\n\r\n");
}

static void
expect_form(const char *in, size_t n, size_t cap, const char *want, size_t want_len)
{
	char out[64];
	size_t got = form_decode(in, n, out, cap);

	CHECK(got == want_len && memcmp(out, want, got < cap ? got : cap) == 0, "form_decode(%.*s) = %zu [%.*s]",
	    (int)n, in, got, (int)(got < cap ? got : cap), out);
}

static void
test_form_decode(void)
{
	expect_form("a+b%20c", 7, 64, "a b c", 5);
	expect_form("%41%4a%4A", 9, 64, "AJJ", 3);
	expect_form("%41", 3, 64, "A", 1);                /* an escape that ends the input */
	expect_form("%00", 3, 64, "\0", 1);
	expect_form("%%41", 4, 64, "%A", 2);
	expect_form("%2B+", 4, 64, "+ ", 2);              /* an escaped '+' is a '+' */
	/* Bad escapes stay as they are, as Python's decoders leave them. */
	expect_form("%", 1, 64, "%", 1);
	expect_form("%4", 2, 64, "%4", 2);
	expect_form("100%", 4, 64, "100%", 4);
	expect_form("%zz", 3, 64, "%zz", 3);
	expect_form("%4g", 3, 64, "%4g", 3);
	expect_form("%g4", 3, 64, "%g4", 3);
	expect_form("%41", 2, 64, "%4", 2);               /* n, not the NUL, ends it */
	expect_form("", 0, 64, "", 0);
	/* Overlong: the length is the whole, cap bytes are kept. */
	expect_form("abcdef", 6, 3, "abc", 6);
	expect_form("%41%42%43%44", 12, 2, "AB", 4);
}

static void
expect_pct(const char *in, size_t n, const char *want)
{
	struct buf b = { 0 };

	pct_encode(&b, in, n);
	CHECK(b.len == strlen(want) && (b.len == 0 || memcmp(b.p, want, b.len) == 0), "pct_encode(%.*s) = [%.*s]",
	    (int)n, in, (int)b.len, b.p ? b.p : "");
	buf_free(&b);
}

static void
test_pct_encode(void)
{
	unsigned char all[256];
	struct buf b = { 0 };
	char back[256];
	size_t i;

	expect_pct("Az09-._~", 8, "Az09-._~");
	expect_pct(" ", 1, "%20");
	expect_pct("+/=", 3, "%2B%2F%3D");                /* a CRC token's base64 */
	expect_pct("%", 1, "%25");
	expect_pct("\0", 1, "%00");
	expect_pct("\xc3\xa9\xff", 3, "%C3%A9%FF");       /* uppercase hex */
	expect_pct("", 0, "");
	/* Every byte, encoded and form-decoded, comes back. */
	for (i = 0; i < 256; i++)
		all[i] = (unsigned char)i;
	pct_encode(&b, (const char *)all, sizeof(all));
	CHECK(form_decode(b.p, b.len, back, sizeof(back)) == 256 && memcmp(back, all, 256) == 0,
	    "pct_encode then form_decode is the identity");
	buf_free(&b);
}

static int
object_of(const char *json, struct json_object *o)
{
	return json_object_parse(json, strlen(json), o);
}

static void
test_json_object(void)
{
	struct json_object o;
	struct buf v = { 0 }, big = { 0 };
	char key[16];
	int i;

	CHECK(object_of("{\"a\":1,\"b\":\"x\",\"a\":2}", &o) == 0 && o.n == 3, "three members");
	CHECK(json_object_get(&o, "a", &v) == 0 && v.len == 1 && v.p[0] == '1', "the first duplicate decides");
	v.len = 0;
	CHECK(json_object_string(&o, "b", &v) == 0 && v.len == 1 && v.p[0] == 'x', "a string, decoded");
	v.len = 0;
	CHECK(json_object_string(&o, "a", &v) < 0 && json_object_get(&o, "c", &v) < 0 && v.len == 0,
	    "not a string; no such member");
	json_object_free(&o);

	CHECK(object_of(" { \"\\u0061\" : [ 1 , 2 ] , \"o\" : { \"k\" : 1 } , \"\" : null } ", &o) == 0,
	    "whitespace and escapes");
	CHECK(json_object_get(&o, "a", &v) == 0 && v.len == 5 && memcmp(v.p, "[1,2]", 5) == 0,
	    "an escaped key found by its text, the value compact: %.*s", (int)v.len, v.p);
	v.len = 0;
	CHECK(json_object_get(&o, "k", &v) < 0, "a nested member is not at the top level");
	CHECK(json_object_get(&o, "o", &v) == 0 && v.len == 7 && memcmp(v.p, "{\"k\":1}", 7) == 0, "an object value");
	v.len = 0;
	CHECK(json_object_get(&o, "", &v) == 0 && v.len == 4 && memcmp(v.p, "null", 4) == 0, "the empty key");
	v.len = 0;
	json_object_free(&o);

	/* A key with a NUL in it is not the key before the NUL. */
	CHECK(object_of("{\"a\\u0000b\":1}", &o) == 0 && json_object_get(&o, "a", &v) < 0,
	    "a key with a NUL");
	json_object_free(&o);
	CHECK(object_of("{\"s\":\"\\ud83d\\ude00\\\"\"}", &o) == 0 && json_object_string(&o, "s", &v) == 0 &&
	    v.len == 5 && memcmp(v.p, "\xf0\x9f\x98\x80\"", 5) == 0, "a string's escapes decoded");
	v.len = 0;
	json_object_free(&o);

	/* Not an object: nothing to look up. */
	CHECK(object_of("[1]", &o) < 0 && o.n == 0 && json_object_get(&o, "a", &v) < 0, "an array");
	CHECK(object_of("{\"a\":}", &o) < 0 && o.n == 0, "invalid JSON");
	CHECK(object_of("{\"a\":1", &o) < 0, "an unended object");
	CHECK(json_object_parse(NULL, 0, &o) < 0 && json_object_get(&o, "a", &v) < 0, "no body");
	CHECK(object_of("{}", &o) == 0 && o.n == 0 && json_object_get(&o, "", &v) < 0, "an empty object");
	json_object_free(&o);

	/* Many members: parsed once, each found. */
	buf_addc(&big, '{');
	for (i = 0; i < 5000; i++) {
		snprintf(key, sizeof(key), "%s\"k%d\":%d", i ? "," : "", i, i);
		buf_adds(&big, key);
	}
	buf_addc(&big, '}');
	CHECK(json_object_parse(big.p, big.len, &o) == 0 && o.n == 5000, "5000 members");
	CHECK(json_object_get(&o, "k4999", &v) == 0 && v.len == 4 && memcmp(v.p, "4999", 4) == 0, "the last one");
	json_object_free(&o);
	buf_free(&big);
	buf_free(&v);
}

static void
type_is(const char *json, const char *want)
{
	char t[EVENT_TYPE_MAX];

	memset(t, 'x', sizeof(t));
	event_type(json, strlen(json), t);
	CHECK(strcmp(t, want) == 0, "event_type(%s) = %s, not %s", json, t, want);
}

static void
test_event_type(void)
{
	char big[EVENT_TYPE_MAX + 40];

	/* X Activity API: data.event_type, wherever it is among data's members. */
	type_is("{\"data\":{\"event_uuid\":\"1\",\"filter\":{\"user_id\":\"2\",\"event_type\":\"no\"},"
	    "\"event_type\":\"post.create\",\"payload\":{}}}", "post.create");
	type_is(" {\n \"data\" : { \"payload\" : [ { \"a\" : \"}\\\"]\" } ] ,\n \"event_type\" : \"dm.received\" } } ",
	    "dm.received");
	type_is("{\"data\":{\"event_type\":\"chat.conversation_join\"}}", "chat.conversation_join");
	/* Account Activity: the top-level key after for_user_id. */
	type_is("{\"for_user_id\":\"1\",\"tweet_create_events\":[{\"text\":\"{,}\"}]}", "tweet_create_events");
	type_is("{\"for_user_id\":\"1\",\"user_has_blocked\":false,\"block_events\":[]}", "block_events");
	type_is("{\"user_event\":{\"revoke\":{}}}", "user_event");
	type_is("{\"for_user_id\":\"1\",\"direct_message_events\":[],\"apps\":{},\"users\":{}}",
	    "direct_message_events");
	/* A filtered-stream delivery: data is the post, no event_type. */
	type_is("{\"data\":{\"id\":\"1\",\"text\":\"event_type\"},\"includes\":{},\"matching_rules\":[]}",
	    "filtered_stream");
	/* Reduced to [a-z0-9_.], or "other". */
	type_is("{\"data\":{\"event_type\":\"Post.Create\"}}", "post.create");
	type_is("{\"data\":{\"event_type\":\"a b/c>*\"}}", "a_b_c__");
	type_is("{\"data\":{\"event_type\":\"\"}}", "other");
	type_is("{\"data\":{\"event_type\":\".post\"}}", "other");
	type_is("{\"data\":{\"event_type\":\"post.\"}}", "other");
	type_is("{\"data\":{\"event_type\":\"post..create\"}}", "other");
	type_is("{\"data\":{\"event_type\":\"post\\u002ecreate\"}}", "other");
	type_is("{\"data\":{\"event_type\":7}}", "other");
	type_is("{\"data\":[],\"x\":1}", "other");
	type_is("{}", "other");
	type_is("{\"for_user_id\":\"1\"}", "other");
	type_is("{\"_events\":1}", "other");
	snprintf(big, sizeof(big), "{\"data\":{\"event_type\":\"%0*d\"}}", EVENT_TYPE_MAX, 0);
	type_is(big, "other");
	snprintf(big, sizeof(big), "{\"data\":{\"event_type\":\"%0*d\"}}", EVENT_TYPE_MAX - 1, 0);
	{
		char t[EVENT_TYPE_MAX];

		event_type(big, strlen(big), t);
		CHECK(strlen(t) == EVENT_TYPE_MAX - 1, "the longest type kept: %s", t);
	}
}

int
main(void)
{
	test_sha256();
	test_hmac();
	test_hmac_key_lengths();
	test_base64();
	test_json();
	test_json_member();
	test_json_member_raw();
	test_forward_parse();
	test_forward_params();
	test_sha1();
	test_oauth();
	test_http();
	test_chunked();
	test_query();
	test_http_status_line();
	test_split_host_port();
	test_resp_reply();
	test_resp_entry_id();
	test_nats_read();
	test_nats_fields();
	test_small_checks();
#ifdef XWEBHOOK_TLS
	test_der();
	test_acme_der();
	test_acme_der_known();
#endif
	test_url_parse();
	test_url_authority();
	test_host_port_format();
	test_http_request_head();
	test_form_decode();
	test_pct_encode();
	test_json_object();
	test_event_type();
	printf("unit: %d passed, %d failed\n", passed, failed);
	return failed != 0;
}
