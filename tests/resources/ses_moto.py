"""boto3 against moto's server, for crates/cli/tests/ses_backend.rs.

usage: ses_moto.py ENDPOINT setup BUCKET DOMAIN | put BUCKET KEY FILE |
       keys BUCKET PREFIX | sent | unverify DOMAIN | sts-tokens JWKS_JSON |
       queue NAME | notify QUEUE_URL BUCKET KEY RCPT... | queue-depth QUEUE_URL
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
elif command == "queue":
    # The SQS queue an SNS topic of the receipt rule's S3 action delivers to.
    print(json.dumps({"url": boto3.client("sqs", **kw).create_queue(QueueName=args[0])["QueueUrl"]}))
elif command == "notify":
    # What SES publishes after its S3 action stored KEY (the SES developer
    # guide's "Received" notification), in the SNS envelope SNS delivers to SQS.
    queue_url, bucket, key, recipients = args[0], args[1], args[2], args[3:]
    # SES's receipt time: the object's write time here, so that the same
    # object always gives the same notification (a redelivery is identical).
    written = boto3.client("s3", **kw).head_object(Bucket=bucket, Key=key)["LastModified"]
    now = written.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    message_id = key.rsplit("/", 1)[-1]
    notification = {
        "notificationType": "Received",
        "receipt": {
            "timestamp": now, "processingTimeMillis": 120, "recipients": recipients,
            "spamVerdict": {"status": "PASS"}, "virusVerdict": {"status": "PASS"},
            "spfVerdict": {"status": "PASS"}, "dkimVerdict": {"status": "PASS"}, "dmarcVerdict": {"status": "PASS"},
            "action": {"type": "S3", "topicArn": "arn:aws:sns:us-east-1:123456789012:agentkeys-inbound",
                       "bucketName": bucket, "objectKeyPrefix": key.rsplit("/", 1)[0] + "/", "objectKey": key},
        },
        "mail": {"timestamp": now, "source": "bounce@example.com", "messageId": message_id,
                 "destination": ["undisclosed-recipients:;"], "headersTruncated": False},
    }
    envelope = {
        "Type": "Notification", "MessageId": message_id + "-sns",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:agentkeys-inbound",
        "Subject": "Amazon SES Email Receipt Notification", "Message": json.dumps(notification), "Timestamp": now,
    }
    boto3.client("sqs", **kw).send_message(QueueUrl=queue_url, MessageBody=json.dumps(envelope))
    print(json.dumps({"at": time.time()}))
elif command == "queue-depth":
    # Messages waiting plus messages received and not yet deleted.
    a = boto3.client("sqs", **kw).get_queue_attributes(
        QueueUrl=args[0], AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    print(json.dumps(sum(int(v) for v in a["Attributes"].values())))
else:
    sys.exit(f"unknown command {command}")
