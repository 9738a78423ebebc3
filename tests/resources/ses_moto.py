"""boto3 against moto's server, for crates/cli/tests/ses_backend.rs.

usage: ses_moto.py ENDPOINT setup BUCKET DOMAIN | put BUCKET KEY FILE |
       keys BUCKET PREFIX | sent | unverify DOMAIN | sts-tokens JWKS_JSON
"""
import base64
import json
import sys
import time
import urllib.parse
import urllib.request

import boto3
import jwt

endpoint, command, args = sys.argv[1], sys.argv[2], sys.argv[3:]
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")

if command == "setup":
    bucket, domain = args
    boto3.client("s3", **kw).create_bucket(Bucket=bucket)
    boto3.client("ses", **kw).verify_domain_identity(Domain=domain)
    urllib.request.urlopen(urllib.request.Request(endpoint + "/moto-api/recorder/start-recording", method="POST"))
elif command == "put":
    bucket, key, path = args
    with open(path, "rb") as f:
        boto3.client("s3", **kw).put_object(Bucket=bucket, Key=key, Body=f.read())
    # When the object exists (the PUT answered), for the latency measurement.
    print(json.dumps({"at": time.time()}))
elif command == "keys":
    bucket, prefix = args
    listed = boto3.client("s3", **kw).list_objects_v2(Bucket=bucket, Prefix=prefix)
    print(json.dumps([o["Key"] for o in listed.get("Contents", [])]))
elif command == "sent":
    data = json.load(urllib.request.urlopen(endpoint + "/moto-api/data.json"))
    print(json.dumps(data.get("ses", {}).get("RawMessage", [])))
elif command == "unverify":
    boto3.client("ses", **kw).delete_identity(Identity=args[0])
elif command == "sts-tokens":
    # Every AssumeRoleWithWebIdentity moto recorded: its token verified
    # (ES256, our JWKS) by PyJWT, an independent verifier; prints the claims.
    jwks = json.loads(args[0])
    recording = urllib.request.urlopen(endpoint + "/moto-api/recorder/download-recording").read().decode()
    found = []
    for line in recording.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode()
        form = urllib.parse.parse_qs(body)
        if form.get("Action") != ["AssumeRoleWithWebIdentity"]:
            continue
        token = form["WebIdentityToken"][0]
        kid = jwt.get_unverified_header(token)["kid"]
        key = next(k for k in jwks["keys"] if k["kid"] == kid)
        claims = jwt.decode(token, key=jwt.PyJWK(key).key, algorithms=["ES256"], options={"verify_aud": False})
        found.append({"role_arn": form["RoleArn"][0], "session": form["RoleSessionName"][0], "claims": claims})
    print(json.dumps(found))
else:
    sys.exit(f"unknown command {command}")
