#!/usr/bin/env python3
"""Submits every .eml file of a directory, as raw bytes, in one submission
session (STARTTLS + AUTH PLAIN) with Python's smtplib.

Usage: submit_files.py PORT USER PASSWORD RCPT DIR
Prints one JSON object: {"<file name>": [code, text], ...}. Bytes are sent as
they are (smtplib only dot-stuffs), so bare LF/CR and 8-bit bytes reach the server.
"""
import json
import os
import smtplib
import ssl
import sys


def main():
    port, user, password, rcpt, d = sys.argv[1:6]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = smtplib.SMTP("127.0.0.1", int(port), timeout=120)
    s.ehlo("corpus.example.net")
    s.starttls(context=ctx)
    s.ehlo("corpus.example.net")
    s.login(user, password)
    out = {}
    for name in sorted(f for f in os.listdir(d) if f.endswith(".eml")):
        data = open(os.path.join(d, name), "rb").read()
        try:
            s.sendmail(user, [rcpt], data)
            out[name] = [250, "ok"]
        except smtplib.SMTPResponseException as e:
            out[name] = [e.smtp_code, e.smtp_error.decode(errors="replace")]
            s.rset()
        except smtplib.SMTPRecipientsRefused as e:
            out[name] = [550, str(e)]
            s.rset()
    s.quit()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
