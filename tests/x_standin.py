"""A stand-in for X's API, for the tests of xwebhook's X subcommands.

X cannot run on loopback, so this follows X's published API reference (the
v2 OpenAPI spec in xdevplatform/xdk, and the webhook and Account Activity
pages) for the calls xwebhook makes, and does what X does behind them:

- HTTPS only, with a certificate from the tests' own CA;
- the app's Bearer token where the reference says BearerToken, and
  OAuth 1.0a user context (HMAC-SHA1, RFC 5849) where it says UserToken:
  the signature is recomputed here from the request as received, stale
  timestamps (more than 300 s off) and reused nonces are refused, and a
  Bearer token on a user-context call gets 403 "Unsupported
  Authentication";
- a real CRC against the URL being registered or validated, over HTTPS,
  verifying the chain against the CA and answered within 3 s, through a
  host mapping (X only calls port 443; the test server listens elsewhere);
- X's errors: problem JSON (title, detail, type, status) with the reasons
  in errors[].message, and the legacy Account Activity messages for a
  failed CRC; x-rate-limit-limit/-remaining/-reset on every answer, and
  429 past the limit;
- a replay job whose completion is POSTed, signed, to the webhook.

Every request is recorded (method, path, headers, body) for the tests.
Misbehaviour on demand: `override` answers one fixed answer to everything
(an empty 200, say), `delay` holds every answer (a slow X), and the
certificate it is started with may be for another name or from another CA.
"""
import base64
import hashlib
import hmac
import http.client
import http.server
import json
import os
import socket
import ssl
import threading
import time
import urllib.parse

PROBLEM_INVALID = "https://api.twitter.com/2/problems/invalid-request"


def pct(s):
    return urllib.parse.quote(s, safe="-._~")


def oauth_signature(method, base_uri, params, consumer_secret, token_secret):
    """RFC 5849 section 3.4, written independently of xwebhook's."""
    pairs = sorted((pct(k), pct(v)) for k, v in params)
    normalized = "&".join("%s=%s" % kv for kv in pairs)
    base = "&".join((method.upper(), pct(base_uri), pct(normalized)))
    key = pct(consumer_secret) + "&" + pct(token_secret)
    return base64.b64encode(hmac.new(key.encode(), base.encode(), hashlib.sha1).digest()).decode()


def parse_oauth_header(value):
    if not value.startswith("OAuth "):
        return None
    out = {}
    for part in value[6:].split(","):
        k, _, v = part.strip().partition("=")
        if not (v.startswith('"') and v.endswith('"')):
            return None
        out[urllib.parse.unquote(k)] = urllib.parse.unquote(v[1:-1])
    return out


class App:
    """The X developer app the stand-in serves, and one user of it."""

    def __init__(self, consumer_key, consumer_secret, bearer, users):
        self.consumer_key, self.consumer_secret, self.bearer = consumer_key, consumer_secret, bearer
        self.users = users  # access token -> (token secret, user id)
        self.app_id = "29384710"


class Standin:
    def __init__(self, cert, key, ca, app, host_map, limits=None):
        """cert/key: this server's HTTPS identity (for 'localhost');
        ca: the roots a CRC verifies against; host_map: {hostname: port}
        on 127.0.0.1 where that hostname's port 443 is; limits: {endpoint
        name: requests per window}."""
        self.app, self.ca, self.host_map = app, ca, host_map
        self.limits = limits or {}
        self.used = {}
        self.window_end = int(time.time()) + 900
        self.webhooks = {}  # id -> {"id", "url", "valid", "created_at"}
        self.subscriptions = {}  # webhook id -> [user ids]
        self.nonces = set()
        self.requests = []
        self.crcs = []  # (url, outcome)
        self.next_id = 1460000000000000000
        self.lock = threading.Lock()
        self.delay = 0  # seconds before each answer (to look at the client meanwhile, or to be slow)
        self.released = threading.Event()  # ends every delay at once (set by close)
        self.override = None  # (status, headers, body bytes): answer this to everything
        # validate (PUT /2/webhooks/:id), in each way X's documents say it answers:
        # None: {"valid": <the CRC's outcome>} (the quickstart's reading); "lie":
        # {"valid": true} whatever the CRC did (spec 2.167: valid "indicates whether
        # the CRC validation check was triggered"); "attempted": {"attempted": true}
        # (spec 2.137); "400": a failed CRC is a 400 CrcValidationFailed (quickstart).
        self.put_mode = None
        self.crc_lag = 0  # seconds after the PUT before GET /2/webhooks shows the CRC's outcome
        self.stream_links = {}  # webhook id -> ["tweet.fields=a,b", ...] (filtered-stream webhooks)
        self.unlisted = set()  # webhook ids GET /2/webhooks leaves out (one deleted meanwhile, say)
        self.links_shape = "spec"  # GET /2/tweets/search/webhooks: "spec" data[], "quickstart" data.links[]
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                standin.handle(self, body)

            do_GET = do_POST = do_PUT = do_DELETE = handle_one

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.base = "https://localhost:%d" % self.port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- answers ----

    def send(self, h, status, obj, endpoint=None, extra=None):
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/problem+json" if status >= 400 and not isinstance(obj, bytes)
                      else "application/json")
        h.send_header("Content-Length", str(len(body)))
        if endpoint is not None:
            limit = self.limits.get(endpoint, 15)
            h.send_header("x-rate-limit-limit", str(limit))
            h.send_header("x-rate-limit-remaining", str(max(0, limit - self.used.get(endpoint, 0))))
            h.send_header("x-rate-limit-reset", str(self.window_end))
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def invalid(self, h, endpoint, message):
        self.send(h, 400, {"errors": [{"message": message}], "title": "Invalid Request",
                           "detail": "One or more parameters to your request was invalid.",
                           "type": PROBLEM_INVALID}, endpoint)

    # ---- authentication ----

    def authenticate(self, h, body_params, kind):
        """kind: 'bearer' or 'user'. Returns the user id (user context),
        True (app), or None after answering the refusal."""
        auth = h.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            if kind == "user":
                self.send(h, 403, {"title": "Unsupported Authentication",
                                   "detail": "Authenticating with OAuth 2.0 Application-Only is forbidden for "
                                             "this endpoint.  Supported authentication types are [OAuth 1.0a "
                                             "User Context, OAuth 2.0 User Context].",
                                   "type": "https://api.twitter.com/2/problems/unsupported-authentication",
                                   "status": 403})
                return None
            if not hmac.compare_digest(auth[7:], self.app.bearer):
                self.send(h, 401, {"title": "Unauthorized", "type": "about:blank", "status": 401,
                                   "detail": "Unauthorized"})
                return None
            return True
        o = parse_oauth_header(auth)
        if o is None:
            self.send(h, 401, {"title": "Unauthorized", "type": "about:blank", "status": 401,
                               "detail": "Unauthorized"})
            return None
        if kind == "bearer":
            self.send(h, 403, {"title": "Unsupported Authentication",
                               "detail": "Authenticating with OAuth 1.0a User Context is forbidden for this "
                                         "endpoint.  Supported authentication types are [OAuth 2.0 "
                                         "Application-Only].",
                               "type": "https://api.twitter.com/2/problems/unsupported-authentication",
                               "status": 403})
            return None
        why = self.check_oauth(h, o, body_params)
        if why is not None:
            self.send(h, 401, {"title": "Unauthorized", "type": "about:blank", "status": 401,
                               "detail": "Unauthorized", "errors": [{"message": why, "code": 32}]})
            return None
        return self.app.users[o["oauth_token"]][1]

    def check_oauth(self, h, o, body_params):
        need = ("oauth_consumer_key", "oauth_nonce", "oauth_signature", "oauth_signature_method",
                "oauth_timestamp", "oauth_token")
        if any(k not in o for k in need) or o.get("oauth_version", "1.0") != "1.0":
            return "Could not authenticate you (missing OAuth parameters)."
        if o["oauth_signature_method"] != "HMAC-SHA1":
            return "Could not authenticate you (unsupported signature method)."
        if o["oauth_consumer_key"] != self.app.consumer_key or o["oauth_token"] not in self.app.users:
            return "Could not authenticate you (unknown consumer key or token)."
        try:
            stamp = int(o["oauth_timestamp"])
        except ValueError:
            return "Could not authenticate you (bad timestamp)."
        if abs(stamp - time.time()) > 300:
            return "Timestamp out of bounds."
        path, _, query = h.path.partition("?")
        params = [(k, v) for k, v in o.items() if k != "oauth_signature"]
        params += urllib.parse.parse_qsl(query, keep_blank_values=True) + body_params
        want = oauth_signature(h.command, "https://localhost:%d%s" % (self.port, path), params,
                               self.app.consumer_secret, self.app.users[o["oauth_token"]][0])
        if not hmac.compare_digest(want, o["oauth_signature"]):
            return "Could not authenticate you (signature mismatch)."
        with self.lock:
            if o["oauth_nonce"] in self.nonces:
                return "Could not authenticate you (nonce used before)."
            self.nonces.add(o["oauth_nonce"])
        return None

    # ---- the CRC, as X runs it ----

    def crc(self, url):
        """GET url?crc_token=...&nonce=... over HTTPS within 3 s: None if
        the answer is right, else X's reason."""
        u = urllib.parse.urlsplit(url)
        token = base64.b64encode(os.urandom(24)).decode().rstrip("=")
        nonce = base64.b64encode(str(int(time.time() * 1000)).encode()).decode().rstrip("=")
        target = (u.path or "/") + ("?" + u.query + "&" if u.query else "?") + urllib.parse.urlencode(
            {"crc_token": token, "nonce": nonce})
        port = self.host_map.get(u.hostname)
        why = None
        try:
            if port is None:
                raise OSError("cannot resolve %s" % u.hostname)
            raw = socket.create_connection(("127.0.0.1", port), timeout=3)
            ctx = ssl.create_default_context(cafile=self.ca)
            s = ctx.wrap_socket(raw, server_hostname=u.hostname)
            c = http.client.HTTPConnection(u.hostname, timeout=3)
            c.sock = s
            c.request("GET", target, headers={"User-Agent": "Twitterbot/1.0"})
            r = c.getresponse()
            body = r.read()
            c.close()
            if r.status != 200:
                why = "CrcValidationFailed: Non-200 response code during CRC GET request (i.e. 404, 500, etc)."
            else:
                want = "sha256=" + base64.b64encode(hmac.new(self.app.consumer_secret.encode(), token.encode(),
                                                             hashlib.sha256).digest()).decode()
                try:
                    got = json.loads(body).get("response_token")
                except ValueError:
                    got = None
                if got != want:
                    why = ("CrcValidationFailed: Webhook URL does not meet the requirements. Invalid CRC token "
                           "or json response format.")
        except ssl.SSLError as e:
            why = "CrcValidationFailed: Error during CRC GET request: SSL handshake failed (%s)" % e.reason
        except socket.timeout:
            why = ("CrcValidationFailed: High latency on CRC GET request. Your webhook should respond in less "
                   "than 3 seconds.")
        except OSError as e:
            why = "CrcValidationFailed: Error during CRC GET request: could not connect (%s)" % e
        self.crcs.append((url, why))
        return why

    # ---- the endpoints ----

    def count(self, h, endpoint):
        """Charge one request to endpoint; answer 429 past its limit."""
        with self.lock:
            self.used[endpoint] = self.used.get(endpoint, 0) + 1
            over = self.used[endpoint] > self.limits.get(endpoint, 15)
        if over:
            self.send(h, 429, {"title": "Too Many Requests", "detail": "Too Many Requests", "type": "about:blank",
                               "status": 429}, endpoint)
        return not over

    def handle(self, h, body):
        with self.lock:
            self.requests.append({"method": h.command, "path": h.path, "headers": dict(h.headers.items()),
                                  "body": body})
        if self.delay and self.released.wait(self.delay):
            return  # closing: the client gave up long ago
        if self.override is not None:
            status, headers, raw = self.override
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(raw)))
            h.end_headers()
            h.wfile.write(raw)
            return
        path = urllib.parse.urlsplit(h.path).path
        parts = path.strip("/").split("/")
        m = h.command
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = "invalid"
        if parts[:2] == ["2", "webhooks"] and len(parts) == 2 and m == "GET":
            return self.list_webhooks(h)
        if parts[:2] == ["2", "webhooks"] and len(parts) == 2 and m == "POST":
            return self.create_webhook(h, data)
        if parts[:3] == ["2", "webhooks", "replay"] and len(parts) == 3 and m == "POST":
            return self.replay(h, data)
        if parts[:2] == ["2", "webhooks"] and len(parts) == 3 and m in ("PUT", "DELETE"):
            return self.one_webhook(h, parts[2])
        if parts[:3] == ["2", "account_activity", "webhooks"] and len(parts) >= 6 and parts[4] == "subscriptions":
            return self.subscription(h, parts[3], parts[5:])
        if parts == ["2", "account_activity", "subscriptions", "count"] and m == "GET":
            return self.subscription_count(h)
        if parts[:4] == ["2", "tweets", "search", "webhooks"] and len(parts) <= 5:
            return self.stream_link(h, parts[4] if len(parts) == 5 else None)
        self.send(h, 404, {"title": "Not Found Error", "detail": "Sorry, that page does not exist.",
                           "type": "https://api.twitter.com/2/problems/resource-not-found", "status": 404})

    def list_webhooks(self, h):
        if self.authenticate(h, [], "bearer") is None or not self.count(h, "webhooks"):
            return
        hooks = [w for w in self.webhooks.values() if w["id"] not in self.unlisted]
        out = {"meta": {"result_count": len(hooks)}}
        if hooks:
            out["data"] = hooks
        self.send(h, 200, out, "webhooks")

    def create_webhook(self, h, data):
        if self.authenticate(h, [], "bearer") is None or not self.count(h, "register"):
            return
        if not isinstance(data, dict) or not isinstance(data.get("url"), str) or not 1 <= len(data["url"]) <= 200:
            return self.invalid(h, "register", "The `url` field is required and must be 1 to 200 characters.")
        u = urllib.parse.urlsplit(data["url"])
        if u.scheme != "https" or u.port is not None:
            return self.invalid(h, "register", "UrlValidationFailed: The URL must use https and no port.")
        if any(w["url"] == data["url"] for w in self.webhooks.values()):
            return self.invalid(h, "register", "DuplicateUrlFailed: A webhook with this URL already exists.")
        why = self.crc(data["url"])
        if why is not None:
            return self.invalid(h, "register", why)
        with self.lock:
            self.next_id += 1
            w = {"id": str(self.next_id), "url": data["url"], "valid": True,
                 "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
            self.webhooks[w["id"]] = w
        self.send(h, 200, {"data": w}, "register")

    def one_webhook(self, h, wid):
        name = "validate" if h.command == "PUT" else "unregister"
        if self.authenticate(h, [], "bearer") is None or not self.count(h, name):
            return
        if wid not in self.webhooks:
            return self.invalid(h, name, "WebhookIdInvalid: The webhook id %s is not valid for this app." % wid)
        if h.command == "DELETE":
            del self.webhooks[wid]
            self.subscriptions.pop(wid, None)
            return self.send(h, 200, {"data": {"deleted": True}}, name)
        self.validate_webhook(h, wid, name)

    # ---- validate's answers, and the webhook's real state behind them ----

    def validate_webhook(self, h, wid, name):
        """A real CRC; GET /2/webhooks then lists its outcome (after
        crc_lag), and the PUT answers as put_mode says."""
        why = self.crc(self.webhooks[wid]["url"])
        w = self.webhooks[wid]

        def settle():
            w["valid"] = why is None
        if self.crc_lag:
            threading.Timer(self.crc_lag, settle).start()
        else:
            settle()
        if self.put_mode == "400" and why is not None:
            return self.invalid(h, name, why)
        if self.put_mode == "attempted":
            return self.send(h, 200, {"data": {"attempted": True}}, name)
        self.send(h, 200, {"data": {"valid": True if self.put_mode == "lie" else why is None}}, name)

    def subscription(self, h, wid, rest):
        m = h.command
        if rest == ["all"] and m == "GET":
            return self.subscribed(h, wid)
        if rest == ["all"] and m == "POST":
            user = self.authenticate(h, [], "user")
            if user is None or not self.count(h, "subscribe"):
                return
            if wid not in self.webhooks:
                return self.invalid(h, "subscribe", "WebhookIdInvalid: The webhook id %s is not valid." % wid)
            subs = self.subscriptions.setdefault(wid, [])
            if user in subs:
                return self.invalid(h, "subscribe", "DuplicateSubscriptionFailed: The user is already subscribed.")
            subs.append(user)
            return self.send(h, 200, {"data": {"subscribed": True}}, "subscribe")
        if rest == ["all", "list"] and m == "GET":
            if self.authenticate(h, [], "bearer") is None or not self.count(h, "subscriptions"):
                return
            if wid not in self.webhooks:
                return self.invalid(h, "subscriptions", "WebhookIdInvalid: The webhook id %s is not valid." % wid)
            return self.send(h, 200, {"data": {
                "application_id": self.app.app_id, "webhook_id": wid, "webhook_url": self.webhooks[wid]["url"],
                "subscriptions": [{"user_id": u} for u in self.subscriptions.get(wid, [])]}}, "subscriptions")
        if len(rest) == 2 and rest[1] == "all" and m == "DELETE":
            if self.authenticate(h, [], "bearer") is None or not self.count(h, "unsubscribe"):
                return
            if wid not in self.webhooks:
                return self.invalid(h, "unsubscribe", "WebhookIdInvalid: The webhook id %s is not valid." % wid)
            if rest[0] not in self.subscriptions.get(wid, []):
                return self.invalid(h, "unsubscribe", "SubscriptionNotFound: The user %s is not subscribed."
                                    % rest[0])
            self.subscriptions[wid].remove(rest[0])
            return self.send(h, 200, {"data": {"subscribed": False}}, "unsubscribe")
        self.send(h, 404, {"title": "Not Found Error", "detail": "Sorry, that page does not exist.",
                           "type": "https://api.twitter.com/2/problems/resource-not-found", "status": 404})

    # ---- is one user subscribed; how many are ----

    def subscribed(self, h, wid):
        """GET .../subscriptions/all: user context only (spec 2.167:
        OAuth2UserToken or UserToken), the token's user."""
        user = self.authenticate(h, [], "user")
        if user is None or not self.count(h, "subscribed"):
            return
        if wid not in self.webhooks:
            return self.invalid(h, "subscribed", "WebhookIdInvalid: The webhook id %s is not valid." % wid)
        self.send(h, 200, {"data": {"subscribed": user in self.subscriptions.get(wid, [])}}, "subscribed")

    def subscription_count(self, h):
        """GET /2/account_activity/subscriptions/count: app Bearer; the
        counts are strings in the spec and the quickstart."""
        if self.authenticate(h, [], "bearer") is None or not self.count(h, "subscription-count"):
            return
        n = sum(len(v) for v in self.subscriptions.values())
        self.send(h, 200, {"data": {"account_name": "xwebhook-tests", "provisioned_count": "15",
                                    "subscriptions_count_all": str(n), "subscriptions_count_direct_messages": "0"}},
                  "subscription-count")

    # ---- filtered-stream webhooks (Enterprise) ----

    # The query parameters a link takes: the filtered stream's (spec 2.167,
    # GET /2/tweets/search/stream), each with its enum.
    STREAM_FIELDS = {
        "tweet.fields": {"article", "attachments", "author_id", "card_uri", "community_id", "context_annotations",
                         "conversation_id", "created_at", "display_text_range", "edit_controls",
                         "edit_history_tweet_ids", "entities", "geo", "id", "in_reply_to_user_id", "lang",
                         "matched_media_notes", "media_metadata", "non_public_metrics", "note_request_suggestions",
                         "note_tweet", "organic_metrics", "paid_partnership", "possibly_sensitive",
                         "promoted_metrics", "public_metrics", "referenced_tweets", "reply_settings", "scopes",
                         "source", "suggested_source_links", "suggested_source_links_with_counts", "text",
                         "withheld"},
        "expansions": {"article.cover_media", "article.media_entities", "attachments.media_keys",
                       "attachments.media_source_tweet", "attachments.poll_ids", "author_id",
                       "edit_history_tweet_ids", "entities.mentions.username", "geo.place_id",
                       "in_reply_to_user_id", "entities.note.mentions.username", "referenced_tweets.id",
                       "referenced_tweets.id.attachments.media_keys", "referenced_tweets.id.author_id"},
        "media.fields": {"alt_text", "duration_ms", "height", "media_key", "non_public_metrics", "organic_metrics",
                         "preview_image_url", "promoted_metrics", "public_metrics", "type", "url", "variants",
                         "width"},
        "poll.fields": {"duration_minutes", "end_datetime", "id", "options", "voting_status"},
        "place.fields": {"contained_within", "country", "country_code", "full_name", "geo", "id", "name",
                         "place_type"},
        "user.fields": {"affiliation", "confirmed_email", "connection_status", "created_at", "description",
                        "entities", "id", "is_identity_verified", "location", "most_recent_tweet_id", "name",
                        "parody", "pinned_tweet_id", "profile_banner_url", "profile_image_url", "protected",
                        "public_metrics", "receives_your_dm", "subscription", "subscription_type", "url",
                        "username", "verified", "verified_followers_count", "verified_type", "withheld"},
    }

    def stream_link(self, h, wid):
        """POST/DELETE /2/tweets/search/webhooks/:id, GET /2/tweets/search/webhooks:
        app Bearer only."""
        m = h.command
        if (wid is None) != (m == "GET") or m not in ("GET", "POST", "DELETE"):
            return self.send(h, 404, {"title": "Not Found Error", "detail": "Sorry, that page does not exist.",
                                      "type": "https://api.twitter.com/2/problems/resource-not-found",
                                      "status": 404})
        if self.authenticate(h, [], "bearer") is None or not self.count(h, "stream"):
            return
        if m == "GET":
            links = [{"application_id": self.app.app_id, "business_user_id": "1877374016438091776",
                      "fields": f, "instance_id": "1877375130462289920", "webhook_id": w}
                     for w, f in self.stream_links.items()]
            return self.send(h, 200, {"data": links} if self.links_shape == "spec" else {"data": {"links": links}},
                             "stream")
        if wid not in self.webhooks:
            return self.invalid(h, "stream", "WebhookIdInvalid: The webhook id %s is not valid." % wid)
        if m == "DELETE":
            self.stream_links.pop(wid, None)
            return self.send(h, 200, {"data": {"deleted": True}}, "stream")
        fields = []
        for k, v in urllib.parse.parse_qsl(urllib.parse.urlsplit(h.path).query, keep_blank_values=True):
            values = v.split(",")
            if k not in self.STREAM_FIELDS or not set(values) <= self.STREAM_FIELDS[k] or \
                    len(set(values)) != len(values):
                return self.invalid(h, "stream", "The query parameter [%s] is not valid: %s" % (k, v))
            fields.append("%s=%s" % (k, v))
        self.stream_links[wid] = fields
        self.send(h, 200, {"data": {"provisioned": True}}, "stream")

    def replay(self, h, data):
        if self.authenticate(h, [], "bearer") is None or not self.count(h, "replay"):
            return
        if not isinstance(data, dict) or any(not isinstance(data.get(k), str) for k in
                                             ("webhook_id", "from_date", "to_date")):
            return self.invalid(h, "replay", "webhook_id, from_date and to_date are required.")
        if data["webhook_id"] not in self.webhooks:
            return self.invalid(h, "replay", "WebhookIdInvalid: The webhook id %s is not valid."
                                % data["webhook_id"])
        now = time.time()
        try:
            lo, hi = (time.mktime(time.strptime(data[k] + "UTC", "%Y%m%d%H%M%Z")) - time.timezone
                      for k in ("from_date", "to_date"))
        except ValueError:
            return self.invalid(h, "replay", "from_date and to_date must be yyyymmddhhmm.")
        if lo > hi or lo < now - 24 * 3600 - 60 or hi > now + 60:
            return self.invalid(h, "replay", "InvalidReplayWindow: from_date and to_date must be in order and "
                                             "within the past 24 hours.")
        with self.lock:
            self.next_id += 1
            job = str(self.next_id)
        self.send(h, 200, {"data": {"job_id": job,
                                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}},
                  "replay")
        threading.Thread(target=self.replay_done, args=(data["webhook_id"], job), daemon=True).start()

    def replay_done(self, wid, job):
        """Tell the webhook the job is done, as X does: a signed POST."""
        url = urllib.parse.urlsplit(self.webhooks[wid]["url"])
        body = json.dumps({"replay_job_status": {"webhook_id": wid, "job_id": job, "job_state": "Complete",
                                                 "job_state_description": "Job completed successfully"}}).encode()
        sig = "sha256=" + base64.b64encode(hmac.new(self.app.consumer_secret.encode(), body,
                                                    hashlib.sha256).digest()).decode()
        try:
            raw = socket.create_connection(("127.0.0.1", self.host_map[url.hostname]), timeout=5)
            s = ssl.create_default_context(cafile=self.ca).wrap_socket(raw, server_hostname=url.hostname)
            c = http.client.HTTPConnection(url.hostname, timeout=5)
            c.sock = s
            c.request("POST", url.path or "/", body, {"Content-Type": "application/json",
                                                      "x-twitter-webhooks-signature": sig})
            c.getresponse().read()
            c.close()
        except OSError:
            pass
