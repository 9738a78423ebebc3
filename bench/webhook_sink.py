#!/usr/bin/env python3
"""A webhook receiver for the benchmark: answers every POST 204 at once and
counts them (the count is written to COUNT_FILE on SIGTERM). It verifies
nothing: the integration tests verify signatures; this only has to be fast.

Usage: webhook_sink.py PORT COUNT_FILE   (listens on 127.0.0.1 only)
"""
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNT = 0
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        global COUNT
        length = int(self.headers.get("content-length", "0"))
        if length:
            self.rfile.read(length)
        with LOCK:
            COUNT += 1
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    port, count_file = int(sys.argv[1]), sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True

    def stop(*_):
        with open(count_file, "w") as f:
            f.write(f"{COUNT}\n")
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
