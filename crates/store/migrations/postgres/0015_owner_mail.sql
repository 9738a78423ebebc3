-- The owner's email channel (store/src/owner_mail.rs): emailed approval codes
-- (the fallback gate), notification settings, and which notices were sent.
-- A code and its link token are stored only as SHA-256 hex; a code is bound to
-- one gated action (bound_to: the action's canonical hash).
CREATE TABLE owner_email_codes (
    id               TEXT COLLATE "C" PRIMARY KEY,
    owner            TEXT COLLATE "C" NOT NULL REFERENCES owners (id),
    bound_to         TEXT    NOT NULL,
    code_hash        TEXT    NOT NULL,
    link_hash        TEXT COLLATE "C" NOT NULL UNIQUE,
    phrase           TEXT    NOT NULL,
    summary          TEXT    NOT NULL,
    requested_from   TEXT COLLATE "C",
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    tries            BIGINT NOT NULL DEFAULT 0 CHECK (tries >= 0),
    link_approved_at BIGINT,
    used_at          BIGINT
);
CREATE INDEX owner_email_codes_by_owner ON owner_email_codes (owner, created_at);
CREATE INDEX owner_email_codes_by_address ON owner_email_codes (requested_from, created_at);
-- Kinds of notice the owner turned off (comma-separated); no row: every kind on.
CREATE TABLE owner_notification_settings (
    owner      TEXT COLLATE "C" PRIMARY KEY REFERENCES owners (id),
    disabled   TEXT    NOT NULL,
    updated_at BIGINT NOT NULL
);
-- Notices sent once (a grant expiring, a threshold crossed): one row per key.
CREATE TABLE owner_notices_sent (
    owner   TEXT COLLATE "C" NOT NULL,
    key     TEXT COLLATE "C" NOT NULL,
    sent_at BIGINT NOT NULL,
    PRIMARY KEY (owner, key)
);
