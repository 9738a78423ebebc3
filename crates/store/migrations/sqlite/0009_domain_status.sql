-- Where each hosted domain's DNS verification stands (`agentkeys domain verify`):
-- not_started → pending → verifying → verified | invalid | failed. `status_detail`
-- is the last check's findings as JSON (one entry per record: MX, SPF, DMARC,
-- each DKIM selector), `checked_at` when it ended (Unix seconds).
ALTER TABLE domains ADD COLUMN status TEXT NOT NULL DEFAULT 'not_started'
    CHECK (status IN ('not_started', 'pending', 'verifying', 'verified', 'invalid', 'failed'));
ALTER TABLE domains ADD COLUMN status_detail TEXT;
ALTER TABLE domains ADD COLUMN checked_at INTEGER;
