#!/usr/bin/env python3
"""Bounded senders that retry the way real clients do, for fault-injection
tests (crates/cli/tests/multinode.rs): each message carries a unique id and is
retried on connection errors and temporary failures until it is accepted or
its attempts run out. Every number here is a bound: messages, threads,
attempts per message, the pause between attempts and each socket timeout.

  retrying_sender.py smtp --port P --mail-from A --rcpt B --prefix ID --count N
                     [--host H] [--threads T] [--attempts K] [--pause S]
      An MTA (Python's smtplib): EHLO, MAIL, RCPT, DATA; 4xx replies and
      connection errors are retried, 5xx gives up. The DATA phase is driven by
      hand so that a connection lost after the final dot (the server may have
      stored the message without our seeing its 250: RFC 1047) is told apart
      from one lost earlier ("phase": "after-dot").

  retrying_sender.py http --url U --inbox A --key K --to-domain D --prefix ID
                     --count N [--threads T] [--attempts K] [--pause S]
      An agent sending through POST /v1/inboxes/{A}/send with bearer key K and
      an Idempotency-Key (the message id), to <id>@D: connection errors and
      5xx are retried with the same key, 409 IDEMPOTENCY_KEY_IN_USE too (the
      first try may still be running on another node) until attempts run out.

Output: one JSON line per message as it finishes, in finishing order:
  {"id": ..., "outcome": "accepted" | "in_use" | "refused" | "gave_up",
   "attempts": [{"result": "250" | "451" | "202" | "409" | "error", "phase": ...,
                 "detail": ...}, ...],
   "message_id": ... (http, accepted)}
and a last line {"done": true, "counts": {outcome: n}}.
"""
import argparse
import http.client
import json
import smtplib
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

# Each socket operation (connect, each reply, each HTTP request) waits at most this long.
SOCKET_TIMEOUT = 15.0

print_lock = threading.Lock()


def emit(obj):
    with print_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def smtp_message(args, mid):
    return (
        f"From: {args.mail_from}\r\n"
        f"To: {args.rcpt}\r\n"
        f"Subject: {mid}\r\n"
        f"Message-ID: <{mid}@loadgen.example.net>\r\n"
        f"X-Multinode-Id: {mid}\r\n"
        "\r\n"
        f"Message {mid}, sent until a 250 comes back.\r\n"
    ).encode()


def smtp_attempt(args, mid):
    """One SMTP transaction; returns the attempt record."""
    phase = "connect"
    s = None
    try:
        s = smtplib.SMTP(timeout=SOCKET_TIMEOUT)
        code, _ = s.connect(args.host, args.port)
        if code != 220:
            return {"result": str(code), "phase": phase}
        phase = "ehlo"
        code, _ = s.ehlo("loadgen.example.net")
        if code != 250:
            return {"result": str(code), "phase": phase}
        phase = "mail"
        code, _ = s.mail(args.mail_from)
        if code != 250:
            return {"result": str(code), "phase": phase}
        phase = "rcpt"
        code, _ = s.rcpt(args.rcpt)
        if code not in (250, 251):
            return {"result": str(code), "phase": phase}
        phase = "data"
        code, _ = s.docmd("DATA")
        if code != 354:
            return {"result": str(code), "phase": phase}
        phase = "body"
        # No line of the message starts with a dot: nothing to stuff.
        s.send(smtp_message(args, mid) + b".\r\n")
        phase = "after-dot"
        code, text = s.getreply()
        result = {"result": str(code), "phase": phase, "detail": text.decode(errors="replace")}
        phase = "quit"
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass
        return result
    except (smtplib.SMTPException, OSError, socket.timeout) as e:
        return {"result": "error", "phase": phase, "detail": f"{type(e).__name__}: {e}"}
    finally:
        if s is not None:
            try:
                s.close()
            except OSError:
                pass


def smtp_send(args, mid):
    attempts = []
    for _ in range(args.attempts):
        a = smtp_attempt(args, mid)
        attempts.append(a)
        if a["result"] == "250":
            return {"id": mid, "outcome": "accepted", "attempts": attempts}
        if a["result"].startswith("5"):
            return {"id": mid, "outcome": "refused", "attempts": attempts}
        time.sleep(args.pause)
    return {"id": mid, "outcome": "gave_up", "attempts": attempts}


def http_attempt(args, mid):
    body = json.dumps(
        {"to": [f"{mid}@{args.to_domain}"], "subject": mid, "text": f"Outbound message {mid}.\n"}
    ).encode()
    req = urllib.request.Request(
        f"{args.url}/v1/inboxes/{args.inbox}/send",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Bearer {args.key}",
            "Content-Type": "application/json",
            "Idempotency-Key": mid,
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=SOCKET_TIMEOUT) as resp:
            text = resp.read().decode(errors="replace")
            return {
                "result": str(resp.status),
                "replayed": resp.headers.get("Idempotent-Replayed") == "true",
                "detail": text,
            }
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        return {"result": str(e.code), "detail": text}
    except (urllib.error.URLError, http.client.HTTPException, OSError, socket.timeout) as e:
        return {"result": "error", "detail": f"{type(e).__name__}: {e}"}


def http_send(args, mid):
    attempts = []
    for _ in range(args.attempts):
        a = http_attempt(args, mid)
        attempts.append(a)
        if a["result"] == "202":
            message_id = json.loads(a["detail"])["message_id"]
            return {"id": mid, "outcome": "accepted", "attempts": attempts, "message_id": message_id}
        in_use = a["result"] == "409" and "IDEMPOTENCY_KEY_IN_USE" in a["detail"]
        if a["result"].startswith("4") and not in_use:
            return {"id": mid, "outcome": "refused", "attempts": attempts}
        time.sleep(args.pause)
    last = attempts[-1]
    if last["result"] == "409":
        return {"id": mid, "outcome": "in_use", "attempts": attempts}
    return {"id": mid, "outcome": "gave_up", "attempts": attempts}


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    smtp = sub.add_parser("smtp")
    smtp.add_argument("--host", default="127.0.0.1")
    smtp.add_argument("--port", type=int, required=True)
    smtp.add_argument("--mail-from", required=True)
    smtp.add_argument("--rcpt", required=True)
    http_p = sub.add_parser("http")
    http_p.add_argument("--url", required=True)
    http_p.add_argument("--inbox", required=True)
    http_p.add_argument("--key", required=True)
    http_p.add_argument("--to-domain", required=True)
    for sp in (smtp, http_p):
        sp.add_argument("--prefix", required=True)
        sp.add_argument("--count", type=int, required=True)
        sp.add_argument("--threads", type=int, default=2)
        sp.add_argument("--attempts", type=int, default=40)
        sp.add_argument("--pause", type=float, default=0.25)
    args = p.parse_args()
    send = smtp_send if args.mode == "smtp" else http_send
    counts = {}
    counts_lock = threading.Lock()

    def worker(t):
        for i in range(t, args.count, args.threads):
            result = send(args, f"{args.prefix}-{i:04d}")
            with counts_lock:
                counts[result["outcome"]] = counts.get(result["outcome"], 0) + 1
            emit(result)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emit({"done": True, "counts": counts})


main()
