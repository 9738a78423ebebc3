-- Mail backends (issue 14): a hosted domain whose mail is received and sent
-- through an external provider instead of our own MTA. No row: the native MTA.
-- `settings` is the backend's JSON (hosts, ports, user name; never a secret);
-- `secret_sealed` is the provider password sealed under a seed-derived key
-- (XChaCha20-Poly1305, the domain as associated data). `status` is what the
-- server last saw (`connecting`, `running`, `auth_failed`, `failing`).
CREATE TABLE mail_backends (
    domain        TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES domains (name) ON DELETE CASCADE,
    kind          TEXT COLLATE "C" NOT NULL CHECK (kind IN ('imap')),
    settings      TEXT NOT NULL,
    secret_sealed BYTEA NOT NULL,
    status        TEXT COLLATE "C" NOT NULL DEFAULT 'connecting',
    status_detail TEXT,
    status_at     BIGINT,
    updated_at    BIGINT NOT NULL
);

-- Import bookkeeping of a backend's source (an IMAP mailbox): the UIDVALIDITY
-- seen and the highest UID stored, and the one message being stored
-- (`pending_uid`, `pending_id`: the id it is stored under), so a restart
-- neither loses nor duplicates a message.
CREATE TABLE mail_import_cursors (
    domain       TEXT COLLATE "C" NOT NULL REFERENCES domains (name) ON DELETE CASCADE,
    mailbox      TEXT NOT NULL,
    uid_validity BIGINT NOT NULL,
    last_uid     BIGINT NOT NULL,
    pending_uid  BIGINT,
    pending_id   TEXT,
    PRIMARY KEY (domain, mailbox)
);
