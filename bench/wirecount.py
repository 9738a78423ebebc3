#!/usr/bin/env python3
"""Counting TCP proxies for bench/store.sh: how many database round trips and
S3 requests a server makes per accepted message and per mint.

    wirecount.py pg   --listen PORT --upstream HOST:PORT --out FILE
    wirecount.py http --listen PORT --upstream HOST:PORT --out FILE

Listens on 127.0.0.1:PORT, forwards every connection to the upstream byte for
byte, and parses the client's side of the stream:

- pg: PostgreSQL frontend messages. A round trip is a message the client must
  wait for ReadyForQuery after: a simple Query ('Q') or a Sync ('S') closing an
  extended-protocol batch (Parse/Bind/Describe/Execute). Executes are counted
  per statement text (from Parse, by prepared-statement name), so the report
  shows which statements ran how often. An SSLRequest or GSSENCRequest is
  answered 'N' by the proxy itself (plain text, so the stream can be parsed;
  sqlx's default sslmode=prefer then continues without TLS).
- http: HTTP/1.1 requests (request line, headers, Content-Length or chunked
  body, keep-alive), counted per method and kind (PUT object, GET object,
  HEAD, DELETE, LIST = GET with a list-type or prefix query).

Counters are written as one JSON object to FILE (atomically) at most every
0.2 s while they change and on SIGTERM. Nothing else: no timing, no rewriting.
Runs until killed (by PID, by the script that started it).
"""

import argparse
import asyncio
import json
import os
import signal
import struct
import sys
from collections import Counter

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
FLUSH_EVERY = 0.2


class Counts:
    def __init__(self, path):
        self.path = path
        self.c = Counter()
        self.statements = Counter()
        self.dirty = True

    def add(self, key, n=1):
        self.c[key] += n
        self.dirty = True

    def statement(self, text):
        self.statements[" ".join(text.split())[:160]] += 1
        self.dirty = True

    def flush(self):
        if not self.dirty:
            return
        self.dirty = False
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"counts": dict(self.c), "statements": dict(self.statements)}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


async def pump(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


class PgParser:
    """Parses the frontend side of one PostgreSQL connection."""

    def __init__(self, counts):
        self.counts = counts
        self.buf = bytearray()
        self.started = False
        self.names = {}  # prepared statement name -> text
        self.portal = {}  # portal name -> statement text

    def feed(self, data):
        self.buf += data
        while True:
            if not self.started:
                if len(self.buf) < 8:
                    return
                (length,) = struct.unpack("!I", self.buf[:4])
                if len(self.buf) < length:
                    return
                del self.buf[:length]
                self.started = True  # the startup message (requests are handled before feeding)
                continue
            if len(self.buf) < 5:
                return
            kind = chr(self.buf[0])
            (length,) = struct.unpack("!I", self.buf[1:5])
            if len(self.buf) < 1 + length:
                return
            body = bytes(self.buf[5 : 1 + length])
            del self.buf[: 1 + length]
            self.message(kind, body)

    def message(self, kind, body):
        c = self.counts
        if kind == "Q":
            c.add("pg_round_trips")
            c.add("pg_simple_queries")
            c.statement(body.split(b"\0", 1)[0].decode("utf-8", "replace"))
        elif kind == "S":
            c.add("pg_round_trips")
            c.add("pg_syncs")
        elif kind == "P":
            name, rest = body.split(b"\0", 1)
            text = rest.split(b"\0", 1)[0].decode("utf-8", "replace")
            self.names[name] = text
            self.portal[b""] = text
            c.add("pg_parses")
        elif kind == "B":
            portal, rest = body.split(b"\0", 1)
            stmt = rest.split(b"\0", 1)[0]
            self.portal[portal] = self.names.get(stmt, "<unknown statement>")
            c.add("pg_binds")
        elif kind == "E":
            portal = body.split(b"\0", 1)[0]
            c.add("pg_executes")
            c.statement(self.portal.get(portal, "<unknown portal>"))
        elif kind == "X":
            c.add("pg_terminates")


async def pg_startup(client_reader, client_writer):
    """Reads the client's first message(s); answers SSL/GSS requests 'N'.
    Returns the startup bytes to forward, or None for a cancel request."""
    while True:
        head = await client_reader.readexactly(8)
        length, code = struct.unpack("!II", head)
        rest = await client_reader.readexactly(length - 8)
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            client_writer.write(b"N")
            await client_writer.drain()
            continue
        return head + rest, code == CANCEL_REQUEST


class HttpParser:
    """Parses the request side of one HTTP/1.1 connection."""

    def __init__(self, counts):
        self.counts = counts
        self.buf = bytearray()
        self.body_left = 0
        self.chunked = False

    def feed(self, data):
        self.buf += data
        while True:
            if self.body_left:
                n = min(self.body_left, len(self.buf))
                del self.buf[:n]
                self.body_left -= n
                if self.body_left:
                    return
                continue
            if self.chunked:
                if not self.skip_chunks():
                    return
                continue
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            lines = head.split("\r\n")
            method, target = (lines[0].split(" ") + ["", ""])[:2]
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            path, _, query = target.partition("?")
            if method == "GET" and ("list-type" in query or "prefix=" in query or path.rstrip("/").count("/") <= 1):
                kind = "LIST"
            elif method in ("PUT", "GET", "HEAD", "DELETE", "POST"):
                kind = method
            else:
                kind = "OTHER"
            self.counts.add("s3_requests")
            self.counts.add("s3_" + kind)
            if headers.get("transfer-encoding", "").lower() == "chunked":
                self.chunked = True
            else:
                self.body_left = int(headers.get("content-length", "0") or 0)
                self.counts.add("s3_body_bytes", self.body_left)

    def skip_chunks(self):
        while True:
            end = self.buf.find(b"\r\n")
            if end < 0:
                return False
            size = int(bytes(self.buf[:end]).split(b";")[0], 16)
            if len(self.buf) < end + 2 + size + 2:
                return False
            del self.buf[: end + 2 + size + 2]
            self.counts.add("s3_body_bytes", size)
            if size == 0:
                self.chunked = False
                return True


async def handle(kind, upstream, counts, client_reader, client_writer):
    host, port = upstream
    try:
        first, cancel = b"", False
        if kind == "pg":
            first, cancel = await pg_startup(client_reader, client_writer)
        server_reader, server_writer = await asyncio.open_connection(host, port)
    except (ConnectionError, asyncio.IncompleteReadError, OSError):
        client_writer.close()
        return
    counts.add(kind + "_connections")
    parser = PgParser(counts) if kind == "pg" else HttpParser(counts)
    if first:
        parser.feed(first)
        server_writer.write(first)
    if cancel:
        counts.add("pg_cancels")

    async def client_to_server():
        try:
            while True:
                data = await client_reader.read(65536)
                if not data:
                    break
                parser.feed(data)
                server_writer.write(data)
                await server_writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                server_writer.close()
            except Exception:
                pass

    await asyncio.gather(client_to_server(), pump(server_reader, client_writer))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["pg", "http"])
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    host, _, port = a.upstream.rpartition(":")
    counts = Counts(a.out)
    server = await asyncio.start_server(
        lambda r, w: handle(a.kind, (host, int(port)), counts, r, w), "127.0.0.1", a.listen
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"listening 127.0.0.1:{a.listen} -> {a.upstream} ({a.kind})", flush=True)
    async with server:
        while not stop.is_set():
            counts.flush()
            try:
                await asyncio.wait_for(stop.wait(), FLUSH_EVERY)
            except asyncio.TimeoutError:
                pass
    counts.dirty = True
    counts.flush()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
