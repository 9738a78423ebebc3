#!/usr/bin/env python3
"""A real receiving MTA for delivery tests (aiosmtpd), on a loopback port.

Usage: smtp_sink.py OUTDIR [--tempfail N] [--reject] [--reject-domain D] [--pipelining]
                    [--data-delay SECONDS] [--starttls]
                    [--tls-cert PEM --tls-key PEM] [--host ADDR] [--port N]

Prints the port it listens on, then serves until killed. Each accepted message
is written to OUTDIR/<n>.eml (raw bytes as received, after the SMTP layer
removed dot-stuffing) with OUTDIR/<n>.json holding the envelope; the first N
DATA commands answer `451 4.3.0`, and with --reject every RCPT answers `550 5.1.1`
(with --reject-domain D, only the recipients at domain D).
--pipelining advertises PIPELINING (RFC 2920; aiosmtpd reads pipelined commands
in order); --data-delay waits that long before answering each DATA transfer;
--starttls offers STARTTLS with a self-signed certificate made at start;
--tls-cert/--tls-key offer it with the given certificate instead (e.g. one from
test_ca.py for the MX host's name). --host and --port choose where it listens
(default 127.0.0.1, a free port), so two sinks can share a port on two loopback
addresses.
OUTDIR/attempts counts DATA commands (one line per attempt), OUTDIR/connections
counts connections and OUTDIR/tls STARTTLS upgrades (one line each).
"""
import argparse
import asyncio
import datetime
import json
import os
import ssl
import tempfile

from aiosmtpd.smtp import SMTP


def append_line(outdir, name, text):
    with open(os.path.join(outdir, name), "a") as f:
        f.write(text + "\n")


class CountingSMTP(SMTP):
    def connection_made(self, transport):
        if transport.get_extra_info("sslcontext") is None:  # not the STARTTLS upgrade
            append_line(self.__outdir, "connections", "connection")
        super().connection_made(transport)

    async def smtp_STARTTLS(self, arg):
        append_line(self.__outdir, "tls", "starttls")
        return await super().smtp_STARTTLS(arg)


def self_signed_context():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sink.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    d = tempfile.mkdtemp()
    cert_path, key_path = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


class Handler:
    def __init__(self, outdir, tempfail, reject, pipelining=False, data_delay=0.0):
        self.outdir, self.tempfail, self.reject = outdir, tempfail, reject
        self.pipelining, self.data_delay = pipelining, data_delay
        self.data_calls = 0
        self.accepted = 0
        self.reject_domain = None

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.reject_domain and address.lower().endswith("@" + self.reject_domain):
            return "550 5.1.1 no such user here"
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
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
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
    p.add_argument("--reject-domain")
    p.add_argument("--pipelining", action="store_true")
    p.add_argument("--data-delay", type=float, default=0.0)
    p.add_argument("--starttls", action="store_true")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    handler = Handler(args.outdir, args.tempfail, args.reject, args.pipelining, args.data_delay)
    handler.reject_domain = args.reject_domain.lower() if args.reject_domain else None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    else:
        tls = self_signed_context() if args.starttls else None
    CountingSMTP._CountingSMTP__outdir = args.outdir
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: CountingSMTP(handler, hostname="sink.test", tls_context=tls), args.host, args.port
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
