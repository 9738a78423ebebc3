-- Mail backends (issue 14): a hosted domain whose mail is received and sent
-- through an external provider instead of our own MTA. No row: the native MTA.
-- `settings` is the backend's JSON (hosts, ports, user name; never a secret);
-- `secret_sealed` is the provider password sealed under a seed-derived key
-- (XChaCha20-Poly1305, the domain as associated data). `status` is what the
-- server last saw (`connecting`, `running`, `auth_failed`, `failing`).
CREATE TABLE mail_backends (
    domain        TEXT    NOT NULL PRIMARY KEY REFERENCES domains (name) ON DELETE CASCADE,
    kind          TEXT    NOT NULL CHECK (kind IN ('imap')),
    settings      TEXT    NOT NULL,
    secret_sealed BLOB    NOT NULL,
    status        TEXT    NOT NULL DEFAULT 'connecting',
    status_detail TEXT,
    status_at     INTEGER,
    updated_at    INTEGER NOT NULL
) WITHOUT ROWID;

-- Import bookkeeping of a backend's source (an IMAP mailbox): the UIDVALIDITY
-- seen and the highest UID stored, and the one message being stored
-- (`pending_uid`, `pending_id`: the id it is stored under), so a restart
-- neither loses nor duplicates a message.
CREATE TABLE mail_import_cursors (
    domain       TEXT    NOT NULL REFERENCES domains (name) ON DELETE CASCADE,
    mailbox      TEXT    NOT NULL,
    uid_validity INTEGER NOT NULL,
    last_uid     INTEGER NOT NULL,
    pending_uid  INTEGER,
    pending_id   TEXT,
    PRIMARY KEY (domain, mailbox)
) WITHOUT ROWID;
