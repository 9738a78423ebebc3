#!/usr/bin/env python3
"""Signs a read capability with the server's own key, independently of the Rust
code, to test what the server does with a genuine but expired (or otherwise
chosen) capability.

Argument: a JSON plan {"seed_file": "<data dir>/master.seed", "payload": {...}}.
The key is HKDF-SHA256(salt "agentkeys-mail", IKM the seed, info
"capability/v1", 32 bytes); the token is
akcap1.<b64url(payload JSON)>.<b64url(HMAC-SHA256(key, "akcap1.<payload>"))>.
Prints the token.
"""
import base64
import hashlib
import hmac
import json
import sys


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main():
    plan = json.loads(sys.argv[1])
    seed = open(plan["seed_file"], "rb").read()
    prk = hmac.new(b"agentkeys-mail", seed, hashlib.sha256).digest()
    key = hmac.new(prk, b"capability/v1" + b"\x01", hashlib.sha256).digest()
    payload = json.dumps(plan["payload"], separators=(",", ":")).encode()
    signed = "akcap1." + b64(payload)
    mac = hmac.new(key, signed.encode(), hashlib.sha256).digest()
    print(signed + "." + b64(mac))


if __name__ == "__main__":
    main()
