#!/usr/bin/env python3
"""A real SMTP client (Python's smtplib) driven by a JSON plan, for the Rust
integration tests. Prints one JSON object: the reply of every step.

Plan:
  {"port": 2525, "host": "127.0.0.1",
   "tls": "none" | "starttls" | "implicit",
   "login": ["user", "password"],            # optional, after TLS
   "steps": [["mail", "a@b", ["SIZE=123"]], ["rcpt", "c@d"],
             ["data", {"from": "...", "to": "...", "subject": "...", "size": 1000, "raw": "..."}],
             ["sendmail", "from", ["to1", "to2"], {message spec}],
             ["raw_data", "bytes as sent"],  # DATA, then the string's code points
                                             # 0-255 as bytes, verbatim (no dot-stuffing,
                                             # no terminator added): smuggling tests
             ["rset"], ["noop"]]}
Output: {"connect": [code, text], "login": [code, text] | null, "steps": [[code, text], ...]}
"""
import json
import smtplib
import ssl
import sys


def build_message(spec):
    if "raw" in spec:
        return spec["raw"].encode()
    headers = (
        f"From: {spec.get('from', 'sender@example.net')}\r\n"
        f"To: {spec.get('to', 'rcpt@example.net')}\r\n"
        f"Subject: {spec.get('subject', 'test')}\r\n"
        f"Message-ID: <{spec.get('subject', 'test').replace(' ', '.')}@example.net>\r\n"
        "\r\n"
    ).encode()
    size = int(spec.get("size", 200))
    line = b"The quick brown fox jumps over the lazy dog 0123456789.\r\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(headers))]
    return headers + body


def reply(exc_or_tuple):
    if isinstance(exc_or_tuple, tuple):
        code, text = exc_or_tuple
        return [code, text.decode(errors="replace") if isinstance(text, bytes) else str(text)]
    return [exc_or_tuple.smtp_code, exc_or_tuple.smtp_error.decode(errors="replace")]


def main():
    plan = json.loads(sys.argv[1])
    host, port = plan.get("host", "127.0.0.1"), plan["port"]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    out = {"connect": None, "login": None, "steps": []}
    tls = plan.get("tls", "none")
    if tls == "implicit":
        s = smtplib.SMTP_SSL(host, port, context=ctx, timeout=60)
    else:
        s = smtplib.SMTP(host, port, timeout=60)
    out["connect"] = [220, "connected"]
    s.ehlo("client.example.net")
    if tls == "starttls":
        code, text = s.starttls(context=ctx)
        out["starttls"] = [code, text.decode()]
        s.ehlo("client.example.net")
    if plan.get("login"):
        user, password = plan["login"]
        try:
            out["login"] = reply(s.login(user, password))
        except smtplib.SMTPAuthenticationError as e:
            out["login"] = reply(e)
        except smtplib.SMTPResponseException as e:
            out["login"] = reply(e)
    for step in plan.get("steps", []):
        op = step[0]
        try:
            if op == "mail":
                out["steps"].append(reply(s.mail(step[1], step[2] if len(step) > 2 else [])))
            elif op == "rcpt":
                out["steps"].append(reply(s.rcpt(step[1])))
            elif op == "data":
                out["steps"].append(reply(s.data(build_message(step[1]))))
            elif op == "sendmail":
                refused = s.sendmail(step[1], step[2], build_message(step[3]))
                out["steps"].append([250, json.dumps({k: reply(v) for k, v in refused.items()})])
            elif op == "raw_data":
                code, text = s.docmd("DATA")
                if code != 354:
                    out["steps"].append(reply((code, text)))
                    continue
                s.send(step[1].encode("latin-1"))
                out["steps"].append(reply(s.getreply()))
            elif op == "rset":
                out["steps"].append(reply(s.rset()))
            elif op == "noop":
                out["steps"].append(reply(s.noop()))
            else:
                raise SystemExit(f"unknown step {op}")
        except smtplib.SMTPRecipientsRefused as e:
            out["steps"].append([550, json.dumps({k: reply(v) for k, v in e.recipients.items()})])
        except smtplib.SMTPResponseException as e:
            out["steps"].append(reply(e))
        except smtplib.SMTPServerDisconnected as e:
            out["steps"].append([0, f"disconnected: {e}"])
            break
    try:
        s.quit()
    except smtplib.SMTPException:
        pass
    print(json.dumps(out))


if __name__ == "__main__":
    main()
