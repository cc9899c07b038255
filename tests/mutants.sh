#!/usr/bin/env bash
# Mutation testing: plant one bug at a time in a copy of xwebhook.c, build
# it, and run the tests that claim to catch it. Every mutant must be killed
# (some test fails); one that survives names a test that is missing.
#
#   tests/mutants.sh            every mutant
#   tests/mutants.sh 3 17       only these
#
# Not part of ./test.sh (it builds and tests once per mutant: some minutes).
# Needs what ./test.sh needs, and strace.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
W=$(mktemp -d /tmp/xwebhook-mutants.XXXXXX)
trap 'rm -rf "$W"' EXIT
SAN="-g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"

# One mutant per block: a description; the exact text to replace (it must
# occur once); what replaces it; the tests that must catch it, as
# SUITE:NAME,NAME (SUITE is unit, unit-tls, int, tls, events, fault, brokers, xapi, acme or systemd; NAME filters
# test names, as ONLY does).
python3 - "$W/mutants.json" <<'PY'
import json, sys
M = [
 ("signature compared on its first 8 bytes only",
  "!ct_equal(expected, req->signature, SIGNATURE_LEN)", "!ct_equal(expected, req->signature, 8)",
  "int:badly_signed"),
 ("a signature with more after it accepted",
  "if (req->signature_len != SIGNATURE_LEN ||", "if (req->signature_len < SIGNATURE_LEN ||",
  "int:badly_signed"),
 ("constant-time compare keeps only the last byte's difference",
  "d |= x[i] ^ y[i];", "d = x[i] ^ y[i];", "unit int:badly_signed"),
 ("crc_token may hold '{'",
  "c != '_' && c != '-')\n\t\t\treturn 0;", "c != '_' && c != '-' && c != '{')\n\t\t\treturn 0;",
  "int:crc_refusals"),
 ("crc_token may hold '\"'",
  "c != '_' && c != '-')\n\t\t\treturn 0;", "c != '_' && c != '-' && c != '\"')\n\t\t\treturn 0;",
  "int:crc_refusals"),
 ("crc_token of 256 bytes accepted",
  "if (n == 0 || n > MAX_CRC_TOKEN)", "if (n == 0 || n > MAX_CRC_TOKEN + 1)", "int:crc_refusals"),
 ("empty crc_token accepted",
  "if (n == 0 || n > MAX_CRC_TOKEN)", "if (n > MAX_CRC_TOKEN)", "int:crc_refusals"),
 ("HMAC keys of 65 to 128 bytes copied, not hashed",
  "\tif (n > 64) {\n\t\tstruct digest s;", "\tif (n > 128) {\n\t\tstruct digest s;", "unit"),
 ("HMAC key of 64 bytes hashed",
  "\tif (n > 64) {\n\t\tstruct digest s;", "\tif (n >= 64) {\n\t\tstruct digest s;", "unit"),
 ("base64 drops its last padding character",
  "\t\tout[o++] = '=';", "\t\t(void)0;", "unit"),
 ("no fdatasync before the 200",
  "if (output_fd >= 0 && fdatasync(output_fd) < 0) {", "if (0) {", "int:synced_before"),
 ("a batch stdout refused stays in --output",
  "\t\t\tstdout_stalled = 1;\n\t\t\toutput_cut(*start);", "\t\t\tstdout_stalled = 1;",
  "events:with_output_keeps"),
 ("a failed --output write is not cut back",
  "\t\t\twarn(\"cannot append events to %s:\", output_path);\n\t\t\toutput_cut(*start);",
  "\t\t\twarn(\"cannot append events to %s:\", output_path);", "fault:full_disk"),
 ("the writer waits on stdout for an hour",
  "r = outq_write(&stdout_queue, text.p, text.len, deadline);",
  "r = outq_write(&stdout_queue, text.p, text.len, deadline + 3600000);", "events:unread_stdout_gives"),
 ("the log queue never drops",
  "\tif (o->q.len + n > o->limit)\n\t\to->dropped++;", "\tif (0)\n\t\to->dropped++;", "events:unread_stderr"),
 ("a body is allocated at its declared size",
  "if ((st = body_room(c, take, why)) != S_OK)", "if ((st = body_room(c, need, why)) != S_OK)",
  "events:declared_sizes,thousand_slow"),
 ("the shared body budget is never spent",
  "if (atomic_fetch_add(&body_held, more) + more > body_budget) {",
  "if (atomic_fetch_add(&body_held, more) + more > SIZE_MAX / 2) {", "events:thousand_slow"),
 ("the chunked reader never rewinds",
  "c->in_len = c->pos = req->head_len;", "c->in_len = c->pos;", "events:chunked_bodies"),
 ("a full server never evicts",
  "if (nslots >= max_conns && slot_evict(c->peer) < 0)", "if (nslots >= max_conns)",
  "int:connection_limit"),
 ("eviction takes a connection waiting on the writer",
  "if (k->fresh && !conn_busy(k))", "if (k->fresh)", "events:all_slots"),
 ("Content-Length and Transfer-Encoding together accepted",
  "if (req->chunked && req->has_length) {", "if (0) {", "unit int:framing"),
 ("a declared body one byte over --max-body accepted",
  "!(req->has_length && req->content_length > max_body)) {",
  "!(req->has_length && req->content_length > max_body + 1)) {", "int:bodies_over_max_body"),
 ("a chunked body may pass --max-body",
  "if (ch->size > limit - out->len)\n", "if (ch->size > limit - out->len + 1)\n",
  "unit int:bodies_over_max_body"),
 ("header block limit off by 100",
  "if (*line_end != 0 && k + 1 - *line_end > MAX_HEADER_BLOCK) {",
  "if (*line_end != 0 && k + 1 - *line_end > MAX_HEADER_BLOCK + 100) {", "unit"),
 ("bare LF accepted as a line end",
  "\t\t\tif (k == 0 || buf[k - 1] != '\\r') {", "\t\t\tif (0) {", "unit"),
 # (TLS 1.0 and 1.1 allowed by the version range alone is no bug: every
 # suite offered is AEAD, which only TLS 1.2 has, so no 1.0 or 1.1
 # handshake can complete. Mutant 27, a CBC suite, is the real risk.)
 ("sessions never resumed",
  "\tbr_ssl_server_set_cache(&t->sc, &session_cache.vtable);\n", "", "tls:session_resumption"),
 ("ECDHE-RSA-AES128-SHA256 (CBC) negotiable",
  "static uint16_t tls_suites[] = {\n", "static uint16_t tls_suites[] = {\n\tBR_TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256,\n",
  "tls:every_tls12_suite"),
 ("the head deadline ten times longer",
  "deadline = now_ms() + head_timeout;", "deadline = now_ms() + head_timeout * 10;", "fault:slowloris"),
 ("NATS publishes without Nats-Msg-Id (same length, another name)",
  "\\r\\nNats-Msg-Id: %s\\r\\n", "\\r\\nNats-Msg-Xx: %s\\r\\n", "brokers:nats_stream"),
 ("NATS PINGs left unanswered while idle",
  "if (op == NATS_PING && f->cl.c.tr->write(&f->cl.c, \"PONG\\r\\n\", 6, now_ms() + 1000) < 0)",
  "if (op == NATS_PING && 0)", "brokers:idle_nats"),
 ("OAuth parameters not sorted",
  "\tqsort(ps, np, sizeof(*ps), oauth_param_cmp);\n", "", "unit"),
 ("one OAuth nonce for every request",
  "hex_encode(raw, sizeof(raw), nonce);", "snprintf(nonce, sizeof(nonce), \"fixed\");",
  "xapi:the_whole_path"),
 ("errors[].message left out of X's failure line",
  "if (!x_say(&line, \"; \", &eo, \"message\"))", "if (0)", "xapi:a_crc_with_the_wrong_secret"),
 ("a 429 without when the limit resets",
  "if (a->status == 429 && (reset", "if (a->status == 0 && (reset", "xapi:a_429"),
 ("C1 controls from X reach the terminal raw",
  "if (ch == 0x7f || (ch == 0xc2 &&", "if (ch == 0x7f || (0 &&", "xapi:hostile"),
 ("ACME badNonce not tried again",
  "if (!acme_is_problem(ans, \"badNonce\"))\n\t\t\tbreak;", "break;", "acme:tls_alpn_01"),
 ("the tls-alpn-01 certificate for any name",
  "if (t->alpn == NULL || strcasecmp(sni, acme_domain) != 0)", "if (t->alpn == NULL)", "acme:the_tls_alpn"),
 ("HTTP served after a tls-alpn-01 handshake",
  "if (t->sock.acme_only && t->sock.handshaken)", "if (0)", "acme:the_tls_alpn"),
 ("ACME renews only when a thirtieth of the lifetime is left",
  "life < 10 * 86400 ? life / 2 : life / 3", "life < 10 * 86400 ? life / 2 : life / 30", "acme:expiring_in_5_days"),
 ("--state-dir, DOMAIN and the files in them opened (and given away) through a link",
  "int fd = openat(at, name, flags | O_NOFOLLOW | O_CLOEXEC), saved;",
  "int fd = openat(at, name, flags | O_CLOEXEC), saved;", "acme:a_linked_domain_dir,links_planted"),
 ("anyone may own what is in --state-dir",
  "return uid == 0 || uid == geteuid() || (owner != NULL && uid == owner->pw_uid);", "return uid == uid;",
  "acme:a_fifo_a_hard_link"),
 ("a hard link in --state-dir accepted",
  "if (!dir && st->st_nlink != 1)", "if (0)", "acme:a_fifo_a_hard_link"),
 ("a FIFO in --state-dir accepted",
  "if (!dir && !S_ISREG(st->st_mode))", "if (0)", "acme:a_fifo_a_hard_link"),
 ("leftover temp files in DOMAIN kept",
  "\tstate_sweep(domain_fd, shown);", "", "acme:leftover_temp,sigterm_while"),
 ("a state temp file opened as before: through a link, truncating",
  "O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC", "O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC",
  "acme:a_link_at_a_temp_name"),
 ("--output opened through a link as root",
  "O_NOCTTY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK,", "O_NOCTTY | O_CLOEXEC | O_NONBLOCK,",
  "events:output_through_a_link"),
 ("as root, a link on the path of --output or --state-dir followed",
  "next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);",
  "next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);",
  "events:output_through_a_link acme:a_link_on_the_state"),
 ("--pid-file opened through a link",
  "pid_fd = open(pid_path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);",
  "pid_fd = open(pid_path, O_RDWR | O_CREAT | O_NONBLOCK | O_CLOEXEC, 0644);", "int:pid_file_that"),
 ("--pid-file not locked",
  "if (flock(pid_fd, LOCK_EX | LOCK_NB) < 0) {", "if (0) {", "int:pid_file_is"),
 ("a subcommand ended by a SIGHUP meant for the server",
  "\t\tsignal(SIGHUP, SIG_IGN);", "\t\t(void)0;", "int:subcommands_are_not"),
 ("--output of a third user given to --user",
  "st.st_uid != 0 && st.st_uid != owner->pw_uid)", "st.st_uid != 0 && 0)", "events:output_through_a_link"),
 ("one broker round trip at a time",
  "WRITER_INFLIGHT = 4,", "WRITER_INFLIGHT = 1,", "brokers:the_next_batch_goes_out"),
 ("Redis's replies owed to a failed batch taken for the next",
  "forwards[i].skip += inflight_at(k)->n - inflight_at(k)->acked[i];", "(void)k;",
  "brokers:replies_owed_to_a_failed"),
 ("batches out to a failed broker left in --output",
  "\tforward_forget();\n\toutput_cut(inflight_at(0)->start);", "\tforward_forget();",
  "brokers:a_broker_failing_with_batches_out"),
 ("SIGHUP's file taken up with a batch out",
  "if (inflight.n == 0 && (fd = atomic_exchange(&output_reopened, -1)) >= 0) {",
  "if ((fd = atomic_exchange(&output_reopened, -1)) >= 0) {", "brokers:sighup_with_a_batch_out"),
 ("a body with whitespace copied as its own compact form",
  "\t\tif (spaces == 0)\n\t\t\tbuf_add(&c->compact", "\t\tif (spaces >= 0)\n\t\t\tbuf_add(&c->compact",
  "int:output_file_gets_compact"),
 ("the second hash of the pair takes the first's message words",
  "\t\t\tabef2 = _mm_sha256rnds2_epu32(abef2, cdgh2, m2);", "\t\t\tabef2 = _mm_sha256rnds2_epu32(abef2, cdgh2, m);",
  "unit"),
 ("a PubAck counted for the batch before its event's",
  "if (seq >= x->first[i] && seq - x->first[i] < x->n)", "if (seq >= x->first[i] && seq - x->first[i] <= x->n)",
  "brokers:pubacks_out_of_order"),
 ("an XADD's reply counted without its entry id ($-1, any string)",
  "t != '$' || !resp_entry_id(text, tl)) {", "t != '$') {",
  "brokers:no_entry_id,null_to_every_xadd"),
 ("a PubAck from another stream counted",
  "if (name.len != strlen(f->stream) || memcmp(name.p, f->stream, name.len) != 0) {", "if (0) {",
  "brokers:do_not_say_stored,nothing_or_another_stream"),
 ("a PubAck carrying a JetStream error counted",
  "\tif (error > 0) {\n\t\tjetstream_error(m,", "\tif (0) {\n\t\tjetstream_error(m,",
  "brokers:do_not_say_stored"),
 ("a PubAck without seq counted",
  "if (seq == 0 && !duplicate) {", "if (0) {", "brokers:do_not_say_stored"),
 ("PubAcks counted per batch, not matched once per publish",
  "if (f->got.p[seq - f->got_from] != 0)\n\t\t\tcontinue;", "if (0)\n\t\t\tcontinue;",
  "brokers:stand_in_for_a_missing"),
 ("the group commit's fdatasync after the 200s are released",
  "\tif (output_fd >= 0 && fdatasync(output_fd) < 0) {\n\t\twarn(\"cannot sync %s:\", output_path);\n"
  "\t\tinflight_fail(S_INTERNAL_ERROR, \"could not write the event to the --output file\");\n\t\treturn;\n\t}\n"
  "\tfor (; k > 0; k--, inflight.n--) {\n\t\twriter_decide(inflight_at(0)->events, S_OK, NULL);\n"
  "\t\tinflight.head = (inflight.head + 1) % WRITER_INFLIGHT;\n\t}\n",
  "\tfor (; k > 0; k--, inflight.n--) {\n\t\twriter_decide(inflight_at(0)->events, S_OK, NULL);\n"
  "\t\tinflight.head = (inflight.head + 1) % WRITER_INFLIGHT;\n\t}\n"
  "\tif (output_fd >= 0 && fdatasync(output_fd) < 0) {\n\t\twarn(\"cannot sync %s:\", output_path);\n"
  "\t\tinflight_fail(S_INTERNAL_ERROR, \"could not write the event to the --output file\");\n\t\treturn;\n\t}\n",
  "events:group_commit brokers:group_commit"),
 ("a 2xx from X without data (an empty body, {}) taken as success",
  "} else if ((why = x_answer_lacks(xc, a)) != NULL) {", "} else if ((why = x_answer_lacks(xc, a)) != NULL && 0) {",
  "xapi:a_2xx_without"),
 ("X's data of the wrong kind (a string, an array for an object) taken",
  "else if (data.len == 0 || data.p[0] != (list ? '[' : '{'))", "else if (0)", "xapi:a_2xx_without"),
 ("webhooks without data taken whatever meta.result_count says",
  "count.len == 1 && count.p[0] == '0' ?", "count.len >= 1 ?", "xapi:a_2xx_without"),
 ("the client's deadline messages name its default 10 s",
  "return (long long)((cl->deadline - cl->start + 999) / 1000);", "return CLIENT_TIMEOUT_MS / 1000;",
  "xapi:a_slow_x"),
 ("the shared client leaves certificate failures unnamed (check alone names them)",
  "if (x509_error_text(cl->tls_error, &t->x509.leaf, name, tr->path, text, sizeof(text)) < 0)", "if (1)",
  "xapi:tls_failures"),
 ("a certificate for another name called undecodable",
  "case BR_ERR_X509_BAD_SERVER_NAME:", "case BR_ERR_X509_BAD_SERVER_NAME + 1000:",
  "xapi:tls_failures tls:check_fails_for_each"),
 ("an expired certificate not dated",
  "if (dated && ci.not_after < now) {", "if (0) {", "tls:check_fails_for_each"),
 ("an https URL with an IP address for a host dialled",
  "if (trust != NULL && ip_literal(name)) {", "if (0) {", "xapi:tls_failures"),
 ("check without a secret takes the right shape for the right value",
  "report(\"unknown\", \"response_token has the right shape", "report(\"warn\", \"response_token has the right shape",
  "tls:check_without_a_secret"),
 ("check exits 0 when it cannot tell",
  "return CHECK_CANNOT_TELL;", "return 0;", "tls:check_without_a_secret,check_against_hostile"),
 ("cert_names without its length check: a prefix of the domain taken for it",
  "if (tag == 0x82 && len == strlen(dns) && strncasecmp((const char *)v, dns, len) == 0)",
  "if (tag == 0x82 && strncasecmp((const char *)v, dns, len) == 0)", "unit-tls acme:should_not_have_issued"),
 ("cert_names compares the domain's length only: a longer name taken for it",
  "if (tag == 0x82 && len == strlen(dns) && strncasecmp((const char *)v, dns, len) == 0)",
  "if (tag == 0x82 && len >= strlen(dns) && strncasecmp((const char *)v, dns, strlen(dns)) == 0)",
  "unit-tls acme:should_not_have_issued"),
 ("an issued certificate for another name stored and served",
  "if (!cert_names(id->chain[0].data, id->chain[0].data_len, acme_domain)) {\n\t\tsnprintf(why, wn, \"the CA issued",
  "if (0) {\n\t\tsnprintf(why, wn, \"the CA issued", "acme:should_not_have_issued"),
 ("an issued certificate's expiry not checked",
  "if (id->leaf.not_after <= now + ACME_CLOCK_SKEW_S) {", "if (0) {", "acme:should_not_have_issued"),
 ("an issued chain's signatures not checked",
  "\tif (err != 0) {", "\tif (0) {", "acme:should_not_have_issued"),
 ("no floor: a certificate already due renewed at once",
  "\t\tif (when < renew_floor(id)) {", "\t\tif (0) {", "acme:already_due"),
 ("the floor a thirtieth of the lifetime",
  "keep = life / ACME_FLOOR_FRACTION;", "keep = life / 30;", "acme:already_due"),
 ("no weekly cap on orders",
  "\tif (n >= ACME_ORDERS_PER_WEEK) {", "\tif (0) {", "unit-tls acme:weekly_order_cap"),
 ("the weekly count never written to --state-dir",
  "if (out.failed || state_write(path, out.p, out.len) < 0) {", "if (out.failed) {",
  "unit-tls acme:weekly_order_cap"),
 ("a poll's Retry-After not clamped to the poll's limit",
  "\t\tif (wait > left) {", "\t\tif (0) {", "acme:huge_retry_after"),
 ("times ahead of the clock clamped but never written back: capped forever",
  "\t\t\tclamped = 1;\n", "", "unit-tls"),
 ("every order attempt counted at newOrder, not the certificate at finalize",
  "\tif (acme_post(a, a->new_order, payload.p,",
  "\tif (acme_orders(1, &(time_t){ 0 }, why, wn) != 0 || acme_post(a, a->new_order, payload.p,",
  "acme:failed_validations"),
 ("the orders file read whatever its size",
  "state_read_max(path, &text, ACME_ORDERS_FILE_MAX)", "state_read_max(path, &text, 0)", "unit-tls"),
 ("the issued chain checked up to its last certificate again",
  "last = &id->chain[1];", "last = &id->chain[id->chain_len - 1];", "acme:name_constrained"),
 ("the renewal floor may fall after notAfter",
  "return from < last ? from : last;", "return from;", "unit-tls"),
 ("the renewal floor counted from a notBefore ahead of now",
  "\tif (from > now)\n\t\tfrom = now;", "\tif (0)\n\t\tfrom = now;", "unit-tls"),
 ("a stored certificate not yet valid kept",
  "if (id->leaf.not_before > time(NULL) + ACME_CLOCK_SKEW_S || id->leaf.not_before >= id->leaf.not_after) {",
  "if (0) {", "acme:not_yet_valid"),
 ("Host without the brackets of an IPv6 literal",
  "int v6 = strchr(host, ':') != NULL;\n\tint show", "int v6 = 0;\n\tint show", "int:check_sends_host"),
 ("Host without a port that is not the scheme's default",
  "u->host, u->port, u->https ? \"443\" : \"80\");\n\tbuf_adds(b, method);",
  "u->host, u->port, u->port);\n\tbuf_adds(b, method);", "int:check_sends_host"),
 ("the last of duplicate JSON members decides",
  "for (i = 0; i < o->n; i++)\n\t\tif (slot[i].key_len == kl", "for (i = o->n; i-- > 0;)\n\t\tif (slot[i].key_len == kl",
  "unit"),
 ("DER lengths of 128 to 255 in two bytes (not the shortest form)",
  "} else if (n < 0x100) {\n\t\th[k++] = 0x81;", "} else if (n < 0x80) {\n\t\th[k++] = 0x81;",
  "unit-tls"),
 ("a DER value closed with the length of its contents less one",
  "size_t at = w->at[--w->depth], k = der_head(h, w->tag[w->depth], b->len - at);",
  "size_t at = w->at[--w->depth], k = der_head(h, w->tag[w->depth], b->len - at - (b->len > at));",
  "unit-tls"),
 ("READY=1 before a certificate is served (--acme)",
  "if (!atomic_load(&serving_up) || !certificate_served() || atomic_exchange(&ready_told, 1))",
  "if (!atomic_load(&serving_up) || atomic_exchange(&ready_told, 1))", "systemd:acme_ready"),
 ("no READY=1 when ACME installs the first certificate",
  "ready_tell();  /* the first certificate: READY=1 now */", "(void)0;", "systemd:acme_ready"),
 ("no RELOADING=1 before a reload",
  "\tif (told)\n\t\tnotify_send(msg);", "\tif (0)\n\t\tnotify_send(msg);", "systemd:ready_reloading"),
 ("MONOTONIC_USEC in milliseconds",
  "\"RELOADING=1\\nMONOTONIC_USEC=%lld\", (long long)now_us()",
  "\"RELOADING=1\\nMONOTONIC_USEC=%lld\", (long long)now_ms()", "systemd:ready_reloading"),
 ("no STOPPING=1",
  "notify_send(\"STOPPING=1\");", "(void)0;", "systemd:ready_reloading"),
 ("an abstract NOTIFY_SOCKET keeps its '@'",
  "notify_addr.sun_path[0] = '\\0';", "(void)0;", "systemd:abstract"),
 ("a NOTIFY_SOCKET too long for sun_path copied anyway",
  "} else if (n > sizeof(notify_addr.sun_path) - (e[0] == '/')) {", "} else if (0) {", "systemd:cannot_be_used"),
 ("a warning for every failed send",
  "if (!atomic_exchange(&notify_failing, 1))", "if (1)", "systemd:cannot_be_used"),
 ("WATCHDOG=1 whatever the threads do",
  "if (threads_alive(now))\n\t\t\tnotify_send(\"WATCHDOG=1\");",
  "if (threads_alive(now) || 1)\n\t\t\tnotify_send(\"WATCHDOG=1\");", "systemd:writer_stuck,loop_stopped"),
 ("the event loops' heartbeats not looked at",
  "for (i = 0; i < nloops && age <= stale; i++) {", "for (i = 0; i < 0 && age <= stale; i++) {",
  "systemd:loop_stopped"),
 ("an idle writer sleeps until work comes",
  "(void)pthread_cond_timedwait(&writer.work, &writer.lock, &until);",
  "(void)until;\n\t\t\tpthread_cond_wait(&writer.work, &writer.lock);", "systemd:watchdog_pings"),
 ("WATCHDOG=1 at the whole interval, not half",
  "next = now + watchdog_ms / 2;", "next = now + watchdog_ms;", "systemd:watchdog_pings"),
 ("WATCHDOG_PID of another process obeyed",
  "(wp == NULL || strtol(wp, NULL, 10) == (long)getpid())", "(wp == NULL || 1)", "systemd:watchdog_pings"),
 ("no floor under the watchdog's stale time (a writer waiting on stdout looks stuck)",
  "int64_t stale = watchdog_ms / 2 > WATCHDOG_STALE_MIN_MS ? watchdog_ms / 2 : WATCHDOG_STALE_MIN_MS;",
  "int64_t stale = watchdog_ms / 2;", "systemd:no_wedge"),
]
json.dump([dict(zip(("what", "old", "new", "tests"), m)) for m in M], open(sys.argv[1], "w"))
PY

n=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$W/mutants.json")
want=" $* "
killed=0; survived=0; broken=0
for ((i = 1; i <= n; i++)); do
	[ $# -gt 0 ] && [[ "$want" != *" $i "* ]] && continue
	d="$W/m$i"
	mkdir -p "$d"
	cp -r tests README.md "$d/" 2>/dev/null
	rm -rf "$d/tests/out"
	what=$(python3 - "$W/mutants.json" "$i" xwebhook.c "$d/xwebhook.c" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))[int(sys.argv[2]) - 1]
src = open(sys.argv[3]).read()
if src.count(m["old"]) != 1:
    sys.exit("mutant %s: its text occurs %d times" % (sys.argv[2], src.count(m["old"])))
open(sys.argv[4], "w").write(src.replace(m["old"], m["new"]))
print(m["what"] + "\t" + m["tests"])
PY
	) || { echo "BROKEN  $i: the mutant does not apply"; broken=$((broken + 1)); continue; }
	desc=${what%%$'\t'*}
	tests=${what#*$'\t'}
	(
		cd "$d" || exit 2
		mkdir -p tests/out
		cc $SAN -o tests/xwebhook-asan xwebhook.c 2>tests/out/build.log || exit 2
		case "$tests" in *tls*)
			cc $SAN -DXWEBHOOK_TLS -o tests/xwebhook-tls-asan xwebhook.c -lbearssl 2>>tests/out/build.log || exit 2
		esac
		case "$tests" in *xapi*|*acme*|*systemd*)
			cc $SAN -DXWEBHOOK_TLS -o tests/xwebhook-tls-asan xwebhook.c -lbearssl 2>>tests/out/build.log || exit 2
		esac
		case "$tests" in *events*) gcc -O2 -o tests/out/xwebhook-gcc xwebhook.c || exit 2; esac
		for t in $tests; do
			suite=${t%%:*}; names=${t#*:}; [ "$names" = "$t" ] && names=""
			case "$suite" in
			unit) cc $SAN -o tests/unit tests/unit.c 2>>tests/out/build.log && tests/unit >tests/out/unit.log 2>&1 ;;
			unit-tls) cc $SAN -DXWEBHOOK_TLS -o tests/unit-tls tests/unit.c -lbearssl 2>>tests/out/build.log &&
			    tests/unit-tls >tests/out/unit-tls.log 2>&1 ;;
			int) ONLY=$names python3 tests/integration.py tests/xwebhook-asan tests/fixtures >tests/out/int.log 2>&1 ;;
			fault) ONLY=$names python3 tests/fault.py tests/xwebhook-asan tests/fixtures >tests/out/fault.log 2>&1 ;;
			events) ONLY=$names python3 tests/events.py tests/xwebhook-asan tests/fixtures tests/out/xwebhook-gcc \
			    >tests/out/events.log 2>&1 ;;
			tls) ONLY=$names python3 tests/tls.py tests/xwebhook-tls-asan tests/fixtures >tests/out/tls.log 2>&1 ;;
			brokers) ONLY=$names python3 tests/brokers.py tests/xwebhook-asan tests/fixtures \
			    >tests/out/brokers.log 2>&1 ;;
			xapi) ONLY=$names python3 tests/xapi.py tests/xwebhook-tls-asan tests/fixtures >tests/out/xapi.log 2>&1 ;;
			acme) ONLY=$names python3 tests/acme.py tests/xwebhook-tls-asan tests/fixtures >tests/out/acme.log 2>&1 ;;
			systemd) ONLY=$names python3 tests/systemd.py tests/xwebhook-asan tests/fixtures tests/xwebhook-tls-asan \
			    >tests/out/systemd.log 2>&1 ;;
			esac || exit 1
		done
		exit 0
	)
	rc=$?
	if [ $rc = 1 ]; then
		killed=$((killed + 1)); printf 'killed   %2d  %s  (%s)\n' "$i" "$desc" "$tests"
	elif [ $rc = 0 ]; then
		survived=$((survived + 1)); printf 'SURVIVED %2d  %s  (%s)\n' "$i" "$desc" "$tests"
	else
		broken=$((broken + 1)); printf 'BROKEN   %2d  %s: does not build\n' "$i" "$desc"; tail -5 "$d/tests/out/build.log"
	fi
	rm -rf "$d"
done
echo "mutants: $killed killed, $survived survived, $broken broken"
[ "$survived" -eq 0 ] && [ "$broken" -eq 0 ]
