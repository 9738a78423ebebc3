-- DKIM keys of the hosted domains (DESIGN.md §6), one row per key version.
--
-- The Ed25519 key is derived from the master seed (`dkim/<domain>/v<version>`)
-- and never stored. The RSA-2048 key cannot be derived cheaply, so it is
-- generated once and stored here as PKCS#8 DER sealed with AES-256-GCM under a
-- seed-derived key (`dkim-rsa-wrap/v1`), the domain and version as associated
-- data: `nonce (12 bytes) || ciphertext || tag (16 bytes)`. A rotation adds a
-- row with the next version; the newest version signs.
CREATE TABLE domain_keys (
    domain          TEXT    NOT NULL REFERENCES domains (name),
    version         INTEGER NOT NULL CHECK (version >= 1),
    selector_ed     TEXT    NOT NULL,
    selector_rsa    TEXT    NOT NULL,
    rsa_key_wrapped BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (domain, version)
) WITHOUT ROWID;
