#!/usr/bin/env python3
"""A real receiving MTA for delivery tests (aiosmtpd), on a loopback port.

Usage: smtp_sink.py OUTDIR [--tempfail N] [--reject]

Prints the port it listens on, then serves until killed. Each accepted message
is written to OUTDIR/<n>.eml (raw bytes as received, after the SMTP layer
removed dot-stuffing) with OUTDIR/<n>.json holding the envelope; the first N
DATA commands answer `451 4.3.0`, and with --reject every RCPT answers `550 5.1.1`.
OUTDIR/attempts counts DATA commands (one line per attempt).
"""
import argparse
import asyncio
import json
import os

from aiosmtpd.smtp import SMTP


class Handler:
    def __init__(self, outdir, tempfail, reject):
        self.outdir, self.tempfail, self.reject = outdir, tempfail, reject
        self.data_calls = 0
        self.accepted = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.reject:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def _write(self, name, data):
        tmp = os.path.join(self.outdir, "." + name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(self.outdir, name))

    async def handle_DATA(self, server, session, envelope):
        self.data_calls += 1
        with open(os.path.join(self.outdir, "attempts"), "a") as f:
            f.write("data\n")
        if self.data_calls <= self.tempfail:
            return "451 4.3.0 try again later"
        self.accepted += 1
        n = self.accepted
        meta = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos}
        self._write(f"{n}.json", json.dumps(meta).encode())
        self._write(f"{n}.eml", envelope.original_content)
        return "250 2.0.0 accepted"


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("outdir")
    p.add_argument("--tempfail", type=int, default=0)
    p.add_argument("--reject", action="store_true")
    args = p.parse_args()
    handler = Handler(args.outdir, args.tempfail, args.reject)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="sink.test"), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
