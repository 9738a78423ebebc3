#!/usr/bin/env python3
"""A small OAuth2 provider on loopback for crates/cli/tests/imap_backend.rs:
both the token endpoint our server calls (RFC 6749 §6 refresh-token grant)
and the token introspection endpoint (RFC 7662) Dovecot's oauth2 passdb calls.

usage: oauth_provider.py LIFETIME_SECONDS REFRESH_TOKEN CLIENT_ID CLIENT_SECRET USER COUNT_FILE

Listens on 127.0.0.1, an ephemeral port, printed as `port <n>` on stdout.
POST /token with grant_type=refresh_token and the right refresh token and
client answers a new access token living LIFETIME_SECONDS; a wrong refresh
token answers 400 invalid_grant (as for a revoked one). Every /token request
is counted in COUNT_FILE (its number, rewritten). POST /introspect with
token=T (Dovecot's introspection_mode = post) answers active with the user for
a token issued here and not expired, else inactive.
"""
import json
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LIFETIME, REFRESH, CLIENT_ID, CLIENT_SECRET, USER, COUNT_FILE = sys.argv[1:7]
LIFETIME = int(LIFETIME)
issued = {}
lock = threading.Lock()
requests = 0


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        global requests
        length = int(self.headers.get("Content-Length", "0"))
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        field = lambda name: form.get(name, [""])[0]
        path = self.path.split("?")[0]
        if path == "/token":
            with lock:
                requests += 1
                with open(COUNT_FILE, "w") as f:
                    f.write(str(requests))
            if field("grant_type") != "refresh_token":
                return self.answer(400, {"error": "unsupported_grant_type"})
            if field("client_id") != CLIENT_ID or field("client_secret") != CLIENT_SECRET:
                return self.answer(401, {"error": "invalid_client"})
            if field("refresh_token") != REFRESH:
                return self.answer(400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
            token = "at-" + secrets.token_urlsafe(24)
            with lock:
                issued[token] = time.time() + LIFETIME
            return self.answer(200, {"access_token": token, "expires_in": LIFETIME, "token_type": "Bearer"})
        if path == "/introspect":
            token = field("token")
            auth = self.headers.get("Authorization", "")
            if not token and auth.startswith("Bearer "):
                token = auth[len("Bearer "):]
            with lock:
                expires = issued.get(token)
            if expires is not None and time.time() < expires:
                return self.answer(200, {"active": True, "username": USER})
            return self.answer(200, {"active": False})
        self.answer(404, {"error": "not_found"})


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
