#!/usr/bin/env python3
"""An independent verifier of the broker's OIDC tokens (PyJWT + cryptography),
for the Rust tests. Takes one JSON argument and prints one JSON object.

Input:
  {"jwks": {"keys": [...]},          # the JWKS document as served
   "token": "<compact JWT>",
   "issuer": "https://...",          # expected iss
   "audience": "sts.amazonaws.com"}  # expected aud
Output:
  {"ok": true, "header": {...}, "claims": {...}, "checks": [...]}
  {"ok": false, "error": "<what failed>"}

Checks, in order: header alg ES256 / typ JWT / a kid that the JWKS publishes; the
JWK is EC P-256 with 32-byte x and y, alg ES256, use sig, and its kid is
base64url(SHA-256(04 || x || y)[:16]); the ES256 signature (PyJWT over the JWK);
iss, aud, exp, iat (required, exp in the future); the exact claim set;
sub = agentkeys:agent:0x<40 hex>; agentkeys_user_wallet is 40 lowercase hex with no
0x and equals the AWS principal tag, which is transitive.
"""
import base64
import hashlib
import json
import re
import sys

try:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(f"missing Python module ({e}); run scripts/test.sh or: pip install pyjwt cryptography", file=sys.stderr)
    sys.exit(2)

EXPECTED_CLAIMS = {
    "iss", "sub", "aud", "iat", "exp", "jti", "agentkeys_user_wallet", "https://aws.amazon.com/tags",
}


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64url_encode(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


def verify(plan):
    checks = []
    token = plan["token"]
    header = jwt.get_unverified_header(token)
    check(header.get("alg") == "ES256", f"header alg is {header.get('alg')!r}, not ES256")
    check(header.get("typ") == "JWT", f"header typ is {header.get('typ')!r}, not JWT")
    kid = header.get("kid")
    check(isinstance(kid, str) and kid, "header has no kid")
    checks.append("header")

    matching = [k for k in plan["jwks"]["keys"] if k.get("kid") == kid]
    check(len(matching) == 1, f"JWKS publishes {len(matching)} keys with kid {kid!r}")
    jwk = matching[0]
    check(jwk.get("kty") == "EC" and jwk.get("crv") == "P-256", "JWK is not EC P-256")
    check(jwk.get("alg") == "ES256" and jwk.get("use") == "sig", "JWK alg/use is not ES256/sig")
    x, y = b64url_decode(jwk["x"]), b64url_decode(jwk["y"])
    check(len(x) == 32 and len(y) == 32, "JWK coordinates are not 32 bytes each")
    check(b64url_encode(hashlib.sha256(b"\x04" + x + y).digest()[:16]) == kid, "kid is not the key's hash")
    key = jwt.PyJWK.from_dict(jwk)
    check(isinstance(key.key, ec.EllipticCurvePublicKey), "JWK did not load as an EC public key")
    check(key.key.curve.name == "secp256r1", f"curve is {key.key.curve.name}")
    checks.append("jwk")

    claims = jwt.decode(
        token,
        key=key.key,
        algorithms=["ES256"],
        audience=plan["audience"],
        issuer=plan["issuer"],
        options={"require": ["iss", "sub", "aud", "iat", "exp", "jti"], "verify_signature": True},
    )
    checks.append("signature")

    check(set(claims) == EXPECTED_CLAIMS, f"claim set is {sorted(claims)}")
    check(re.fullmatch(r"agentkeys:agent:0x[0-9a-f]{40}", claims["sub"]), f"sub is {claims['sub']!r}")
    wallet = claims["agentkeys_user_wallet"]
    check(re.fullmatch(r"[0-9a-f]{40}", wallet), f"wallet is {wallet!r}")
    tags = claims["https://aws.amazon.com/tags"]
    check(set(tags) == {"principal_tags", "transitive_tag_keys"}, f"tags claim has {sorted(tags)}")
    check(tags["principal_tags"] == {"agentkeys_user_wallet": [wallet]}, "principal tag differs from the wallet")
    check(tags["transitive_tag_keys"] == ["agentkeys_user_wallet"], "wallet tag is not transitive")
    check(claims["exp"] > claims["iat"], "exp is not after iat")
    checks.append("claims")
    return {"ok": True, "header": header, "claims": claims, "checks": checks}


def main():
    plan = json.loads(sys.argv[1])
    try:
        result = verify(plan)
    except (Failed, jwt.PyJWTError) as e:
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
