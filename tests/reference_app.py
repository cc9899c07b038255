#!/usr/bin/env python3
"""The tutorial's Flask + waitress webhook app (../shared/reference-app.md),
as users run it today, for tests/bench.sh to measure against. The port
comes from the PORT environment variable; nothing else differs.
"""
import base64
import hashlib
import hmac
import json
import os
import sys

from flask import Flask, jsonify, request
from waitress import serve

app = Flask(__name__)

TWITTER_CONSUMER_SECRET = os.environ.get("TWITTER_CONSUMER_SECRET")
if TWITTER_CONSUMER_SECRET is None:
    print("Missing consumer secret. Ensure TWITTER_CONSUMER_SECRET env var is set.")
    sys.exit(1)

HOST = "127.0.0.1"
PORT = int(os.environ.get("PORT", "8080"))


@app.route("/webhooks/twitter", methods=["GET", "POST"])
def webhook_request():
    if request.method == "GET":
        crc_token = request.args.get("crc_token")
        print(f"CRC Token received: {crc_token}")
        if crc_token is None:
            print("Error: No crc_token found in the request.")
            return json.dumps({"error": "No crc_token"})
        sha256_hash_digest = hmac.new(
            TWITTER_CONSUMER_SECRET.encode("utf-8"),
            msg=crc_token.encode("utf-8"),
            digestmod=hashlib.sha256,
        ).digest()
        response = {"response_token": "sha256=" + base64.b64encode(sha256_hash_digest).decode("utf-8")}
        return jsonify(response)
    elif request.method == "POST":
        event_data = request.get_json()
        if event_data:
            print(json.dumps(event_data, indent=2))
        else:
            print(f"Body: {request.data.decode('utf-8')}")
        return "", 200
    return "Method Not Allowed", 405


if __name__ == "__main__":
    print(f"Running with Waitress WSGI server on {HOST}:{PORT}")
    serve(app, host=HOST, port=PORT)
