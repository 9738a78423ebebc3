#!/usr/bin/env python3
"""Regenerates the committed test vectors with an independent implementation.

Uses only Python's standard library and the `cryptography` package (>= 44, for
Argon2id); none of the crate's Rust code. Run from this directory:

    python3 generate.py

The Rust tests (tests/vectors.rs) must reproduce every value byte for byte.
"""
import base64
import hashlib
import hmac
import json
import struct

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def raw_public(priv):
    return priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def b64(b):
    return base64.b64encode(b).decode()


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


# --- signed owner request -------------------------------------------------------
seed = bytes(range(32))
owner = "0x" + "ab" * 20
method = "POST"
path = "/v1/pairings/ABCD-EFGH/approve?confirm=1"
body = b'{"confirmation":"123456"}'
ts = 1767225600
nonce = "AAECAwQFBgcICQoLDA0ODw"
priv = Ed25519PrivateKey.from_private_bytes(seed)
body_hash = hashlib.sha256(body).hexdigest()
canonical = "\n".join(["AGENTKEYS-OWNER-V1", method, path, body_hash, str(ts), nonce, owner])
sig = priv.sign(canonical.encode())
json.dump(
    {
        "seed_hex": seed.hex(),
        "public_key_b64": b64(raw_public(priv)),
        "owner": owner,
        "method": method,
        "path": path,
        "body": body.decode(),
        "ts": ts,
        "nonce": nonce,
        "body_sha256": body_hash,
        "canonical": canonical,
        "signature_hex": sig.hex(),
        "header": f"AgentKeys-Owner owner={owner}, ts={ts}, nonce={nonce}, sig={b64url(sig)}",
    },
    open("owner_signature_v1.json", "w"),
    indent=2,
)

# --- agent id from a device key ---------------------------------------------------
vectors = []
for dseed in [bytes(32), bytes([0x11] * 32), bytes(range(100, 132))]:
    pub = raw_public(Ed25519PrivateKey.from_private_bytes(dseed))
    vectors.append(
        {
            "seed_hex": dseed.hex(),
            "public_key_hex": pub.hex(),
            "agent_id": "0x" + hashlib.sha256(pub).hexdigest()[:40],
        }
    )
# The pairing collect message and confirmation code for the last device.
pair_code = "ABCD-EFGH"
conf_digest = hashlib.sha256(b"agentkeys/pairing-confirmation/v1\n" + pair_code.encode() + b"\n" + pub).digest()
confirmation = "%06d" % (struct.unpack(">Q", conf_digest[:8])[0] % 1_000_000)
collect = f"AGENTKEYS-PAIR-COLLECT-V1\n{pair_code}\n{vectors[-1]['agent_id']}"
json.dump(
    {
        "agent_ids": vectors,
        "pair_code": pair_code,
        "pair_code_hash_hex": hashlib.sha256(b"agentkeys/pair-code/v1\n" + pair_code.encode()).hexdigest(),
        "confirmation_code": confirmation,
        "collect_message": collect,
        "collect_signature_hex": Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132))).sign(collect.encode()).hex(),
    },
    open("device_key_v1.json", "w"),
    indent=2,
)


# --- encrypted key file, version 1 --------------------------------------------------
def rotl(v, c):
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def quarter(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 7)


def hchacha20(key, nonce16):
    s = list(struct.unpack("<4I", b"expand 32-byte k")) + list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))
    for _ in range(10):
        quarter(s, 0, 4, 8, 12); quarter(s, 1, 5, 9, 13); quarter(s, 2, 6, 10, 14); quarter(s, 3, 7, 11, 15)
        quarter(s, 0, 5, 10, 15); quarter(s, 1, 6, 11, 12); quarter(s, 2, 7, 8, 13); quarter(s, 3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


# draft-irtf-cfrg-xchacha-03 §2.2.1 test vector for HChaCha20.
assert hchacha20(bytes(range(32)), bytes.fromhex("000000090000004a0000000031415927")).hex() == (
    "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
)


def xchacha20poly1305_encrypt(key, nonce24, msg, aad):
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).encrypt(b"\0" * 4 + nonce24[16:], msg, aad)


def hkdf(ikm, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ikm)


passphrase = "correct horse battery staple"
key_seed = bytes(range(32, 64))
key_owner = "0x" + "cd" * 20
key_pub = raw_public(Ed25519PrivateKey.from_private_bytes(key_seed))
salt = bytes(range(16))
knonce = bytes(range(24))
m_cost, t_cost, p_cost = 64, 2, 1
pk = Argon2id(salt=salt, length=32, iterations=t_cost, lanes=p_cost, memory_cost=m_cost).derive(passphrase.encode())
aead_key = hkdf(pk, b"agentkeys/owner-key/v1/aead")
check = hkdf(pk, b"agentkeys/owner-key/v1/check")
aad = f"AGENTKEYS-OWNER-KEY-V1\n{key_owner}\n{b64(key_pub)}".encode()
ciphertext = xchacha20poly1305_encrypt(aead_key, knonce, key_seed, aad)
json.dump(
    {
        "passphrase": passphrase,
        "seed_hex": key_seed.hex(),
        "file": {
            "version": 1,
            "owner": key_owner,
            "public_key": b64(key_pub),
            "kdf": "argon2id",
            "m_cost": m_cost,
            "t_cost": t_cost,
            "p_cost": p_cost,
            "salt": b64(salt),
            "check": b64(check),
            "aead": "xchacha20poly1305",
            "nonce": b64(knonce),
            "ciphertext": b64(ciphertext),
        },
    },
    open("owner_key_file_v1.json", "w"),
    indent=2,
)
print("ok")
