-- The AWS SES + S3 mail backend (issue 14): `kind` may be 'ses' too. For
-- 'ses', `settings` is the bucket, prefix, region, endpoint and role ARN
-- (JSON, no secret) and `secret_sealed` is empty unless the operator chose
-- static keys.
ALTER TABLE mail_backends DROP CONSTRAINT mail_backends_kind_check;
ALTER TABLE mail_backends ADD CONSTRAINT mail_backends_kind_check CHECK (kind IN ('imap', 'ses'));
