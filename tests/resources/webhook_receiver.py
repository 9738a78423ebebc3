#!/usr/bin/env python3
"""A webhook receiver for the webhook tests, verifying every request with the
Standard Webhooks reference library (`pip install standardwebhooks`).

Usage: webhook_receiver.py LOG [--fail-first N] [--port N]

Prints the port it listens on (127.0.0.1), then serves until killed. Commands
on stdin, one per line:
  SECRET whsec_...   a secret to verify with (several: any may verify)
  MODE ok|fail|hang  answer normally / 500 to everything / never answer

Every request is appended to LOG as one JSON line: {"id", "timestamp",
"verified", "verified_with" (indexes of the secrets whose signature matched),
"status" (what we answered; null when hanging), "attempt" (nth request with
this webhook-id), "headers" (the webhook-* ones), "body" (parsed JSON)}.
With --fail-first N the first N requests of each webhook-id answer 500.
"""
import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

LOCK = threading.Lock()
SECRETS = []
STATE = {"mode": "ok"}
SEEN = {}


def verify(body, headers):
    matched = []
    for i, secret in enumerate(SECRETS):
        try:
            Webhook(secret).verify(body, headers)
            matched.append(i)
        except WebhookVerificationError:
            pass
    return matched


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        wid = headers.get("webhook-id", "")
        with LOCK:
            SEEN[wid] = SEEN.get(wid, 0) + 1
            attempt = SEEN[wid]
            mode = STATE["mode"]
            matched = verify(body, headers)
        if mode == "hang":
            status = None
        elif mode == "fail" or attempt <= ARGS.fail_first:
            status = 500
        else:
            status = 200
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        entry = {
            "id": wid,
            "timestamp": headers.get("webhook-timestamp"),
            "verified": bool(matched),
            "verified_with": matched,
            "status": status,
            "attempt": attempt,
            "headers": {k: v for k, v in headers.items() if k.startswith("webhook-") or k in ("content-type", "user-agent")},
            "body": parsed,
        }
        with LOCK, open(ARGS.log, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if status is None:
            time.sleep(3600)
            return
        answer = b'{"ok": true}' if status == 200 else b'{"error": "try again"}'
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def commands():
    for line in sys.stdin:
        word, _, arg = line.strip().partition(" ")
        with LOCK:
            if word == "SECRET":
                SECRETS.append(arg)
            elif word == "MODE":
                STATE["mode"] = arg
        print("OK", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("log")
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    ARGS = parser.parse_args()
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    print(server.server_address[1], flush=True)
    threading.Thread(target=commands, daemon=True).start()
    server.serve_forever()
