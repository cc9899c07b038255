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
        # OAuth 2.0 (xwebhook login): the app's Client ID, and its Client
        # Secret when it is a confidential client (None: a public one).
        self.client_id, self.client_secret = "Y2xpZW50LWlkLVpxOHg6MTpjaQ", None


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
        self.oauth2 = OAuth2(app)
        self.activity_init()
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
        """kind: 'bearer' (the app alone), 'user' (user context) or 'any'.
        Returns the user id (user context), True (app), or None after
        answering the refusal."""
        auth = h.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            user = self.oauth2.user(auth[7:]) if kind != "bearer" else None
            if user == "expired" or (kind == "user" and user is None and auth[7:] != self.app.bearer):
                self.send(h, 401, {"title": "Unauthorized", "type": "about:blank", "status": 401,
                                   "detail": "Unauthorized"})
                return None
            if user is not None:
                return user
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
        if path in OAuth2.PATHS:
            return self.oauth2.handle(self, h, path, body)
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
        if parts[:3] == ["2", "activity", "subscriptions"] and len(parts) <= 4:
            return self.activity(h, parts[3] if len(parts) == 4 else None, data)
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


# ---- OAuth 2.0 user context: authorize, token, revoke ----

def b64url(raw):
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class OAuth2:
    """X's OAuth 2.0 Authorization Code flow with PKCE, as the
    authorization-code and user-access-token pages describe it: the
    authorize page (a test drives it as a browser; the user's answer is
    `consent`), the token endpoint (authorization_code with the S256
    challenge checked against the verifier, refresh_token rotating both
    tokens, HTTP Basic for a confidential client, client_id in the form for
    a public one) and revoke. `expires_in` is what new access tokens last;
    `token_delay` holds each token answer (two runs racing to refresh)."""

    PATHS = ("/i/oauth2/authorize", "/2/oauth2/token", "/2/oauth2/revoke")
    VERIFIER_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

    def __init__(self, app):
        self.app = app
        self.consent = True
        self.expires_in = 7200
        self.token_delay = 0
        self.codes = {}     # code -> {"challenge", "redirect_uri", "scope"}
        self.access = {}    # access token -> (user id, expires at, scope)
        self.refresh = {}   # refresh token -> (user id, scope)
        self.grants = []    # (grant_type, form, Authorization) of every token request
        self.revoked = []   # (token, hint)
        self.lock = threading.Lock()

    def user(self, token):
        """The user id of a valid user access token, "expired", or None."""
        with self.lock:
            got = self.access.get(token)
        if got is None:
            return None
        return got[0] if got[1] > time.time() else "expired"

    def handle(self, standin, h, path, body):
        if path == "/i/oauth2/authorize" and h.command == "GET":
            return self.authorize(standin, h)
        if h.command != "POST":
            return standin.send(h, 405, {"error": "invalid_request", "error_description": "POST only"})
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        refusal = self.client(h, form)
        if refusal is not None:
            return standin.send(h, 401, {"error": "unauthorized_client", "error_description": refusal})
        if path == "/2/oauth2/revoke":
            with self.lock:
                self.revoked.append((form.get("token"), form.get("token_type_hint")))
                self.access.pop(form.get("token"), None)
                self.refresh.pop(form.get("token"), None)
            return standin.send(h, 200, {"revoked": True})
        if self.token_delay:
            time.sleep(self.token_delay)
        with self.lock:
            self.grants.append((form.get("grant_type"), form, h.headers.get("Authorization")))
            return self.token(standin, h, form)

    def client(self, h, form):
        """Why the client's authentication is refused, or None."""
        auth = h.headers.get("Authorization", "")
        if self.app.client_secret is None:
            if auth or form.get("client_id") != self.app.client_id:
                return "Missing valid authorization header" if auth else "client_id is missing or unknown"
            return None
        if not auth.startswith("Basic "):
            return "Missing valid authorization header"
        cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        if (urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(secret)) != (self.app.client_id,
                                                                                 self.app.client_secret):
            return "Missing valid authorization header"
        return None

    def authorize(self, standin, h):
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(h.path).query, keep_blank_values=True))
        need = ("response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge",
                "code_challenge_method")
        if (any(k not in q for k in need) or q["response_type"] != "code" or q["client_id"] != self.app.client_id
                or q["code_challenge_method"] != "S256"):
            return standin.send(h, 400, b"Something went wrong: the authorize request is not valid.")
        if self.consent:
            code = b64url(os.urandom(48))
            with self.lock:
                self.codes[code] = {"challenge": q["code_challenge"], "redirect_uri": q["redirect_uri"],
                                    "scope": q["scope"]}
            answer = {"state": q["state"], "code": code}
        else:
            answer = {"error": "access_denied", "state": q["state"]}
        h.send_response(302)
        h.send_header("Location", q["redirect_uri"] + "?" + urllib.parse.urlencode(answer))
        h.send_header("Content-Length", "0")
        h.end_headers()

    def issue(self, user, scope):
        access, refresh = b64url(os.urandom(60)), b64url(os.urandom(60))
        self.access[access] = (user, time.time() + self.expires_in, scope)
        out = {"token_type": "bearer", "expires_in": self.expires_in, "access_token": access, "scope": scope}
        if "offline.access" in scope.split():
            self.refresh[refresh] = (user, scope)
            out["refresh_token"] = refresh
        return out

    def token(self, standin, h, form):
        user = next(iter(self.app.users.values()))[1]
        if form.get("grant_type") == "authorization_code":
            c = self.codes.pop(form.get("code", ""), None)
            if c is None or form.get("redirect_uri") != c["redirect_uri"]:
                return standin.send(h, 400, {"error": "invalid_request",
                                             "error_description": "Value passed for the authorization code "
                                                                  "was invalid."})
            v = form.get("code_verifier", "")
            if (not 43 <= len(v) <= 128 or not set(v) <= self.VERIFIER_CHARS
                    or b64url(hashlib.sha256(v.encode()).digest()) != c["challenge"]):
                return standin.send(h, 400, {"error": "invalid_request",
                                             "error_description": "Value passed for the code verifier did not "
                                                                  "match the code challenge."})
            return standin.send(h, 200, self.issue(user, c["scope"]))
        if form.get("grant_type") == "refresh_token":
            r = self.refresh.pop(form.get("refresh_token", ""), None)
            if r is None:
                return standin.send(h, 400, {"error": "invalid_request",
                                             "error_description": "Value passed for the token was invalid."})
            return standin.send(h, 200, self.issue(r[0], r[1]))
        return standin.send(h, 400, {"error": "unsupported_grant_type", "error_description": "grant_type"})
# ---- the X Activity API (XAA): /2/activity/subscriptions ----
# From openapi.json 2.167 (xdevplatform/docs) and x-api/activity/*.mdx.
# Kept in a block of its own (other engineers extend this file too).

XAA_EVENTS = (
    "profile.update.bio", "profile.update.profile_picture", "profile.update.banner_picture",
    "profile.update.screenname", "profile.update.geo", "profile.update.url", "profile.update.verified_badge",
    "profile.update.affiliate_badge", "profile.update.handle", "news.new", "follow.follow", "follow.unfollow",
    "spaces.start", "spaces.end", "broadcast.start", "broadcast.end", "broadcast.chat", "chat.received",
    "chat.sent", "chat.conversation.join", "chat.conversation_join", "chat.conversation.member_added",
    "chat.conversation.member_removed", "chat.conversation.admin_added", "chat.conversation.admin_removed",
    "chat.update.group_name", "chat.update.restrictions", "dm.sent", "dm.received", "dm.indicate_typing",
    "dm.read", "post.create", "post.delete", "post.mention.create", "post.reply.create", "post.quote.create",
    "post.repost.create", "like.create", "mute.mute", "mute.unmute", "block.block", "block.unblock")
# The introduction's "Current private events": user context only.
XAA_PRIVATE = ("like.create", "chat.", "dm.", "post.mention.create", "post.reply.create", "post.quote.create",
               "post.repost.create", "mute.", "block.", "broadcast.chat")
XAA_SHAPES = ("2.167", "2.166", "flat", "array")
PROBLEM_FORBIDDEN = "https://api.twitter.com/2/problems/client-forbidden"


def xaa_private(event):
    return any(event == p or (p.endswith(".") and event.startswith(p)) for p in XAA_PRIVATE)


def _activity_init(self):
    self.xaa = {}  # subscription id -> subscription, in creation order
    self.xaa_shape = "2.167"  # which documented answer shape: one of XAA_SHAPES
    self.xaa_limit = 1500  # the introduction's self-serve limit
    self.xaa_page = None  # a smaller page than max_results asks for (to test pagination)
    self.xaa_forbidden = set()  # event types the user token lacks the scope for (403)
    self.xaa_tokens = {}  # pagination token -> offset
    # rate-limits.mdx: 500/15min for each of the four calls; one count for all of them here
    self.limits.setdefault("activity", 500)


def _xaa_answer(self, h, sub, endpoint):
    """One subscription in the shape under test."""
    n = len(self.xaa)
    if self.xaa_shape == "2.167":
        out = {"data": {"subscription": sub}}
    elif self.xaa_shape == "2.166":
        out = {"data": {"subscription": sub, "total_subscriptions_for_instance_id": n},
               "meta": {"total_subscriptions": n}}
    elif self.xaa_shape == "flat":
        out = {"data": sub, "meta": {"total_subscriptions": n}}
    else:
        out = {"data": [sub], "meta": {"total_subscriptions": n}}
    self.send(h, 200, out, endpoint)


def _xaa_fields(self, h, data, allowed, endpoint):
    """additionalProperties: false, and tag and webhook_id as the spec has them."""
    if not isinstance(data, dict):
        self.invalid(h, endpoint, "The request body must be a JSON object.")
        return False
    extra = sorted(set(data) - set(allowed))
    if extra:
        self.invalid(h, endpoint, "[%s] is not a valid property (additionalProperties is false)." % extra[0])
        return False
    if "tag" in data and not (isinstance(data["tag"], str) and 1 <= len(data["tag"]) <= 200):
        self.invalid(h, endpoint, "tag must be 1 to 200 characters.")
        return False
    if "webhook_id" in data and data["webhook_id"] not in self.webhooks:
        self.invalid(h, endpoint, "WebhookIdInvalid: The webhook id %s is not valid." % data["webhook_id"])
        return False
    return True


def _activity(self, h, sid, data):
    m = h.command
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query, keep_blank_values=True)
    if sid is None and m == "POST":
        return self.xaa_create(h, data)
    if sid is None and m == "GET":
        return self.xaa_list(h, query)
    if sid is None and m == "DELETE":
        return self.xaa_delete_many(h, query)
    if sid is not None and m in ("PUT", "DELETE"):
        if self.authenticate(h, [], "bearer") is None or not self.count(h, "activity"):
            return
        if sid not in self.xaa:
            return self.invalid(h, "activity", "SubscriptionNotFound: subscription %s does not exist." % sid)
        if m == "DELETE":
            del self.xaa[sid]
            return self.send(h, 200, {"data": {"deleted": True}, "meta": {"total_subscriptions": len(self.xaa)}},
                             "activity")
        if not self.xaa_fields(h, data, ("tag", "webhook_id"), "activity"):
            return
        self.xaa[sid].update(data)
        self.xaa[sid]["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        return self.xaa_answer(h, self.xaa[sid], "activity")
    self.send(h, 404, {"title": "Not Found Error", "detail": "Sorry, that page does not exist.",
                       "type": "https://api.twitter.com/2/problems/resource-not-found", "status": 404})


def _xaa_create(self, h, data):
    who = self.authenticate(h, [], "any")
    if who is None or not self.count(h, "activity"):
        return
    if not self.xaa_fields(h, data, ("event_type", "filter", "tag", "webhook_id"), "activity"):
        return
    ev, f = data.get("event_type"), data.get("filter")
    if ev not in XAA_EVENTS:
        return self.invalid(h, "activity", "event_type must be one of the supported event types.")
    if not isinstance(f, dict) or set(f) - {"user_id", "keyword", "direction"}:
        return self.invalid(h, "activity", "filter takes user_id, keyword and direction only.")
    if ev == "news.new" and (not isinstance(f.get("keyword"), str) or "user_id" in f):
        return self.invalid(h, "activity", "news.new is filtered by keyword.")
    if ev != "news.new" and (not isinstance(f.get("user_id"), str) or not f["user_id"].isdigit() or "keyword" in f):
        return self.invalid(h, "activity", "%s is filtered by user_id." % ev)
    if "direction" in f and (ev != "like.create" or f["direction"] not in ("inbound", "outbound")):
        return self.invalid(h, "activity", "direction is not supported for %s." % ev)
    if xaa_private(ev) and who is True:
        return self.send(h, 403, {"title": "Forbidden", "status": 403, "type": PROBLEM_FORBIDDEN,
                                  "detail": "%s is a private event: it requires user-context authentication "
                                            "of the filtered user." % ev})
    if ev in self.xaa_forbidden:
        return self.send(h, 403, {"title": "Forbidden", "status": 403, "type": PROBLEM_FORBIDDEN,
                                  "detail": "The user token lacks the scope %s requires." % ev})
    if ev.split(".")[0] in ("mute", "block") and f["user_id"] != who:
        return self.invalid(h, "activity", "Mute and block subscriptions are actor-only: filter.user_id must "
                                           "identify the authenticated user.")
    if len(self.xaa) >= self.xaa_limit:
        return self.invalid(h, "activity", "SubscriptionLimitExceeded: this app has reached its %d "
                                           "subscriptions." % self.xaa_limit)
    with self.lock:
        self.next_id += 1
        sid = str(self.next_id)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    # The spec: "responses always use the canonical name".
    canonical = "chat.conversation.join" if ev == "chat.conversation_join" else ev
    sub = {"subscription_id": sid, "event_type": canonical, "filter": f, "created_at": stamp, "updated_at": stamp}
    for k in ("tag", "webhook_id"):
        if k in data:
            sub[k] = data[k]
    self.xaa[sid] = sub
    self.xaa_answer(h, sub, "activity")


def _xaa_list(self, h, query):
    if self.authenticate(h, [], "any") is None or not self.count(h, "activity"):
        return
    try:
        size = int(query.get("max_results", ["1000"])[0])
    except ValueError:
        size = 0
    if not 1 <= size <= 1000:
        return self.invalid(h, "activity", "max_results must be 1 to 1000.")
    start = 0
    if "pagination_token" in query:
        tok = query["pagination_token"][0]
        if len(tok) < 16 or tok not in self.xaa_tokens:
            return self.invalid(h, "activity", "The pagination_token is not valid.")
        start = self.xaa_tokens[tok]
    size = min(size, self.xaa_page or size)
    subs = list(self.xaa.values())[start:start + size]
    out = {"meta": {"result_count": len(subs)}}
    if subs:
        out["data"] = subs
    if start + size < len(self.xaa):
        # base32hex, as the spec says, '=' padding and all.
        tok = base64.b32hexencode(os.urandom(11)).decode()
        self.xaa_tokens[tok] = start + size
        out["meta"]["next_token"] = tok
    if self.xaa_shape == "flat":
        out["meta"]["total_subscriptions"] = len(self.xaa)
    self.send(h, 200, out, "activity")


def _xaa_delete_many(self, h, query):
    if self.authenticate(h, [], "bearer") is None or not self.count(h, "activity"):
        return
    ids = query.get("ids", [""])[0].split(",")
    if not 1 <= len(ids) <= 100 or not all(i.isdigit() and len(i) <= 19 for i in ids):
        return self.invalid(h, "activity", "ids must be 1 to 100 ids of 1 to 19 digits.")
    data, errors = [], []
    for i in ids:
        if self.xaa.pop(i, None) is not None:
            data.append({"subscription_id": i, "deleted": True})
        else:
            errors.append({"subscription_id": i, "reason": "NotFound",
                           "message": "Subscription %s does not exist." % i})
    out = {"data": data, "meta": {"total_subscriptions": len(self.xaa)}}
    if errors:
        out["errors"] = errors
    self.send(h, 200, out, "activity")


Standin.activity_init = _activity_init
Standin.activity = _activity
Standin.xaa_answer = _xaa_answer
Standin.xaa_fields = _xaa_fields
Standin.xaa_create = _xaa_create
Standin.xaa_list = _xaa_list
Standin.xaa_delete_many = _xaa_delete_many
