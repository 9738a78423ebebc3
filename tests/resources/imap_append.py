#!/usr/bin/env python3
"""Appends messages to an IMAP mailbox over TLS with Python's imaplib (the
provider side of crates/cli/tests/imap_backend.rs).

usage: imap_append.py HOST PORT CAFILE USER PASSWORD INTERVAL_MS FILE...

Each FILE is one raw message, appended to INBOX in order, INTERVAL_MS apart.
After each APPEND completes, prints `appended <n> <unix time in seconds>`.
"""
import imaplib
import ssl
import sys
import time


def main():
    host, port, cafile, user, password, interval_ms = sys.argv[1:7]
    files = sys.argv[7:]
    ctx = ssl.create_default_context(cafile=cafile)
    imap = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx, timeout=30)
    imap.login(user, password)
    for n, path in enumerate(files, start=1):
        with open(path, "rb") as f:
            raw = f.read()
        status, _ = imap.append("INBOX", None, imaplib.Time2Internaldate(time.time()), raw)
        if status != "OK":
            sys.exit(f"APPEND {path}: {status}")
        print(f"appended {n} {time.time():.6f}", flush=True)
        if n < len(files):
            time.sleep(int(interval_ms) / 1000.0)
    imap.logout()


if __name__ == "__main__":
    main()
