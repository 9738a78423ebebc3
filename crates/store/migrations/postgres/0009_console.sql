-- The owner's web console (store/src/console.rs): passkeys, one-time passkey
-- registration links, WebAuthn challenges and sign-in sessions. Secrets (link
-- and session tokens) are stored only as SHA-256 hex; a passkey and a
-- challenge's state are the relying-party library's JSON, opaque to the store.
CREATE TABLE console_passkey_links (
    token_hash TEXT COLLATE "C" PRIMARY KEY,
    owner      TEXT COLLATE "C" NOT NULL REFERENCES owners (id),
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE TABLE console_passkeys (
    credential_id TEXT COLLATE "C" PRIMARY KEY,
    owner         TEXT COLLATE "C" NOT NULL REFERENCES owners (id),
    name          TEXT    NOT NULL,
    passkey       TEXT    NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
CREATE INDEX console_passkeys_owner ON console_passkeys (owner);
-- Single use: taking a challenge deletes it (DELETE … RETURNING).
CREATE TABLE console_challenges (
    id         TEXT COLLATE "C" PRIMARY KEY,
    owner      TEXT COLLATE "C",
    purpose    TEXT    NOT NULL,
    bound_to   TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_challenges_expiry ON console_challenges (expires_at);
CREATE TABLE console_sessions (
    token_hash   TEXT COLLATE "C" PRIMARY KEY,
    owner        TEXT COLLATE "C" NOT NULL REFERENCES owners (id),
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
