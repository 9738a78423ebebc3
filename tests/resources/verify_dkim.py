#!/usr/bin/env python3
"""Independent DKIM verifier for the delivery tests (dkimpy + PyNaCl).

Usage: verify_dkim.py PLAN.json
PLAN: {"dns": {"<selector>._domainkey.<domain>.": "<TXT value>", ...},
       "messages": ["<path of a signed .eml>", ...]}
Every message must carry exactly two DKIM-Signature headers (rsa-sha256 and
ed25519-sha256) and both must verify. Prints one line per message; exit 1 on any
failure, 2 if the corpus is empty.
"""
import json
import sys

import dkim


def main():
    plan = json.load(open(sys.argv[1]))
    records = {name.encode(): value.encode() for name, value in plan["dns"].items()}

    def dnsfunc(name, timeout=5):
        if isinstance(name, str):
            name = name.encode()
        if not name.endswith(b"."):
            name += b"."
        return records.get(name)

    if not plan["messages"]:
        print("empty corpus")
        return 2
    failures = 0
    for path in plan["messages"]:
        message = open(path, "rb").read()
        d = dkim.DKIM(message)
        count = len([h for h in d.headers if h[0].lower() == b"dkim-signature"])
        results, algos = [], []
        for i in range(count):
            try:
                results.append(bool(d.verify(idx=i, dnsfunc=dnsfunc)))
            except dkim.DKIMException as e:
                results.append(f"error: {e}")
            algos.append(d.signature_fields.get(b"a", b"?").decode())
        ok = count == 2 and all(r is True for r in results) and sorted(algos) == ["ed25519-sha256", "rsa-sha256"]
        print(f"{'ok  ' if ok else 'FAIL'} {path} signatures={count} results={results} {algos}")
        failures += 0 if ok else 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
