-- The AWS SES + S3 mail backend (issue 14): `kind` may be 'ses' too. SQLite
-- cannot change a CHECK constraint in place, so the table is rebuilt with
-- its rows. For 'ses', `settings` is the bucket, prefix, region, endpoint and
-- role ARN (JSON, no secret) and `secret_sealed` is empty unless the operator
-- chose static keys (then they are sealed there like an IMAP password).
CREATE TABLE mail_backends_0027 (
    domain        TEXT    NOT NULL PRIMARY KEY REFERENCES domains (name) ON DELETE CASCADE,
    kind          TEXT    NOT NULL CHECK (kind IN ('imap', 'ses')),
    settings      TEXT    NOT NULL,
    secret_sealed BLOB    NOT NULL,
    status        TEXT    NOT NULL DEFAULT 'connecting',
    status_detail TEXT,
    status_at     INTEGER,
    updated_at    INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO mail_backends_0027 (domain, kind, settings, secret_sealed, status, status_detail, status_at, updated_at)
    SELECT domain, kind, settings, secret_sealed, status, status_detail, status_at, updated_at FROM mail_backends;
DROP TABLE mail_backends;
ALTER TABLE mail_backends_0027 RENAME TO mail_backends;
