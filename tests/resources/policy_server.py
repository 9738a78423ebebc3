#!/usr/bin/env python3
"""An HTTPS server for MTA-STS policies (http.server + ssl), on a loopback port.

Usage: policy_server.py CERT KEY POLICYDIR

Prints the port it listens on, then serves until killed. GET
/.well-known/mta-sts.txt with `Host: <name>[:port]` answers POLICYDIR/<name>.txt
as `text/plain` when that file exists; POLICYDIR/<name>.status (a number) and
POLICYDIR/<name>.type override the status (e.g. 301, with a Location header) and
the Content-Type. Anything else is 404. Each request appends "<name> <path>" to
POLICYDIR/requests.
"""
import http.server
import os
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        policies = self.server.policies
        name = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower().rstrip(".")
        with open(os.path.join(policies, "requests"), "a") as f:
            f.write(f"{name} {self.path}\n")
        path = os.path.join(policies, name + ".txt")
        if self.path != "/.well-known/mta-sts.txt" or "/" in name or not os.path.isfile(path):
            self.answer(404, "text/plain", b"not found\n")
            return
        with open(path, "rb") as f:
            body = f.read()
        status, ctype = 200, "text/plain"
        if os.path.isfile(os.path.join(policies, name + ".status")):
            with open(os.path.join(policies, name + ".status")) as f:
                status = int(f.read().strip())
        if os.path.isfile(os.path.join(policies, name + ".type")):
            with open(os.path.join(policies, name + ".type")) as f:
                ctype = f.read().strip()
        self.answer(status, ctype, body)

    def answer(self, status, ctype, body):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if 300 <= status < 400:
            self.send_header("Location", "https://elsewhere.test/.well-known/mta-sts.txt")
        self.end_headers()
        self.wfile.write(body)


def main():
    cert, key, policies = sys.argv[1:4]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.policies = policies
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


main()
