#!/usr/bin/env python3
"""The outbound DKIM corpus, generated deterministically (no randomness, no
clock): 120 messages combining header shapes, body shapes and line endings.

Usage: outbound_corpus.py OUTDIR FROM_ADDRESS

Writes OUTDIR/<nnn>-<header>-<body>-<endings>.eml. Every message's first header
is `X-Corpus: <that name>`, so a received copy can be traced back to its
source. FROM_ADDRESS is the submitting inbox (the server pins `From:` to it).
Lines stay within RFC 5322's 998 characters: receivers may refuse longer ones.
"""
import base64
import os
import sys

COUNT = 120


def header_shapes(addr):
    return [
        ("ascii", f"From: Bot <{addr}>\r\nTo: Friend <friend@example.com>\r\nSubject: plain ascii subject\r\n"
                  "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <m@agents.localhost>\r\n".encode()),
        ("utf8-raw", f"From: Zoë Ünïcode <{addr}>\r\nTo: friend@example.com\r\nSubject: Grüße aus Köln — 日本語 🚀\r\n".encode()),
        ("encoded-word", f"From: =?UTF-8?B?Wm/DqyDDnG7Dr2NvZGU=?= <{addr}>\r\nTo: friend@example.com\r\n"
                         "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= and =?ISO-8859-1?Q?caf=E9?=\r\n".encode()),
        ("latin1-8bit", f"From: {addr}\r\nTo: friend@example.com\r\nSubject: caf".encode() + b"\xe9 na\xefve\r\n"),
        ("folded", f"From: {addr}\r\nTo: a@example.com,\r\n b@example.com,\r\n\tc@example.com\r\n"
                   "Subject: a folded\r\n  subject line\r\n\tcontinued\r\n".encode()),
        ("lowercase", f"from: {addr}\r\nto: friend@example.com\r\nsubject: lower case names\r\nmime-version: 1.0\r\n".encode()),
        ("whitespace", f"From:   {addr}  \r\nSubject:\t tabbed   subject\t\r\nTo:friend@example.com\r\n".encode()),
        ("many-to", f"From: {addr}\r\nTo: ".encode()
                    + ",\r\n ".join(f"user{i}@example.com" for i in range(40)).encode()
                    + b"\r\nSubject: many recipients in To\r\n"),
        ("duplicates", f"From: {addr}\r\nSubject: one\r\nX-Tag: a\r\nX-Tag: b\r\nReply-To: r@example.com\r\n"
                       "In-Reply-To: <p@example.com>\r\nReferences: <o@example.com>\r\n <p@example.com>\r\n".encode()),
        ("long-header", f"From: {addr}\r\nSubject: {'long subject word ' * 50}\r\n".encode()),
    ]


def attachment(size, seed):
    raw = bytes((i * 7 + seed) % 256 for i in range(size))
    b64 = base64.b64encode(raw).decode()
    return "".join(b64[i:i + 76] + "\r\n" for i in range(0, len(b64), 76))


def body_shapes():
    mime = "MIME-Version: 1.0\r\n"
    return [
        ("plain", b"\r\nhello there\r\nsecond line\r\n"),
        ("empty", b"\r\n"),
        ("no-final-newline", b"\r\nno newline at the end"),
        ("dots", b"\r\n.\r\n..\r\n.leading dot\r\n...\r\n. \r\nend\r\n"),
        ("dot-first-line", b"\r\n.starts with a dot\r\nnext\r\n"),
        ("long-998", b"\r\n" + b"x" * 998 + b"\r\n" + b"y " * 499 + b"\r\n"),
        ("long-utf8", b"\r\n" + ("ü" * 499).encode() + b"\r\n"),
        ("trailing-ws", b"\r\nline with trailing   \r\n\ttabbed\t\r\n  \r\n"),
        ("trailing-blank", b"\r\nbody\r\n\r\n\r\n\r\n"),
        ("latin1-body", (mime + "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n").encode()
                        + b"caf\xe9 na\xefve \xff\xfe\r\n"),
        ("utf8-body", (mime + "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                       "Привет, мир! 🚀 日本語\r\n").encode()),
        ("qp", (mime + "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
                "Gr=C3=BC=C3=9Fe soft=\r\nbreak and =3D sign\r\n").encode()),
        ("alternative", (mime + "Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
                         "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain part\r\n"
                         "--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html <b>part</b></p>\r\n--b1--\r\n").encode()),
        ("attachment", (mime + "Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\npreamble\r\n"
                        "--outer\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
                        "--outer\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n"
                        "Content-Disposition: attachment; filename=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                        + attachment(3000, 1) + "--outer--\r\nepilogue\r\n").encode()),
        ("big-attachment", (mime + "Content-Type: multipart/mixed; boundary=\"z\"\r\n\r\n"
                            "--z\r\nContent-Type: text/plain\r\n\r\nbig one\r\n"
                            "--z\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                            + attachment(120_000, 3) + "--z--\r\n").encode()),
        ("nested", (mime + "Content-Type: multipart/mixed; boundary=\"o\"\r\n\r\n"
                    "--o\r\nContent-Type: multipart/alternative; boundary=\"i\"\r\n\r\n"
                    "--i\r\nContent-Type: text/plain\r\n\r\n.dot start in a part\r\n--i--\r\n"
                    "--o\r\nContent-Type: message/rfc822\r\n\r\nFrom: x@y.test\r\nSubject: inner\r\n\r\ninner body\r\n--o--\r\n").encode()),
        ("binary-ish", b"\r\n" + bytes(b for b in range(1, 256) if b not in (10, 13)) + b"\r\n"),
        ("smuggle-lookalike", b"\r\nbefore\n.\nMAIL FROM:<x@evil.test>\r\nafter\r.\rRCPT TO:<y@evil.test>\r\n"),
        ("many-lines", b"\r\n" + b"".join(f"line {i:05d} of a longer message\r\n".encode() for i in range(3000))),
        ("html-only", (mime + "Content-Type: text/html; charset=utf-8\r\n\r\n"
                       "<html><body><p>Your code is <b>123456</b></p>\r\n<a href=\"https://example.com/?a=1&b=2\">link</a></body></html>\r\n").encode()),
    ]


ENDINGS = ["crlf", "lf", "mixed"]


def with_endings(message, endings):
    if endings == "crlf":
        return message
    if endings == "lf":
        return message.replace(b"\r\n", b"\n")
    # mixed: every other line ending becomes a bare LF.
    lines = message.split(b"\r\n")
    out = b""
    for i, line in enumerate(lines[:-1]):
        out += line + (b"\n" if i % 2 else b"\r\n")
    return out + lines[-1]


def main():
    outdir, addr = sys.argv[1], sys.argv[2]
    os.makedirs(outdir, exist_ok=True)
    headers, bodies = header_shapes(addr), body_shapes()
    for n in range(COUNT):
        h_name, h = headers[n % len(headers)]
        b_name, b = bodies[(n * 7) % len(bodies)]
        e = ENDINGS[(n // len(bodies)) % len(ENDINGS)]
        name = f"{n:03d}-{h_name}-{b_name}-{e}"
        message = f"X-Corpus: {name}\r\n".encode() + h + b
        with open(os.path.join(outdir, name + ".eml"), "wb") as f:
            f.write(with_endings(message, e))
    print(COUNT)


if __name__ == "__main__":
    main()
