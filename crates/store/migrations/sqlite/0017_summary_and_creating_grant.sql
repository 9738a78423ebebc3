-- The header summary of each indexed message (issue 11 §4): what an event and a
-- listing say besides id and size, so a listener need not fetch every message.
-- Derived from the stored copy like every other column (`HeaderSummary`,
-- store/src/header_summary.rs): bounded, cleaned text; `header_from_*` is the
-- From: header, the field `authenticated` (our MX's verdict) is about, never
-- the envelope sender. Rows indexed before this migration have none.
ALTER TABLE messages ADD COLUMN header_from_address TEXT;
ALTER TABLE messages ADD COLUMN header_from_name TEXT;
ALTER TABLE messages ADD COLUMN subject TEXT;
ALTER TABLE messages ADD COLUMN authenticated INTEGER NOT NULL DEFAULT 0 CHECK (authenticated IN (0, 1));

-- The grant an agent created an inbox under (`create` scope; NULL for inboxes
-- the operator or owner created). Revoking that grant ends the inbox now,
-- shortening it ends the inbox no later than the grant, and removing the
-- `create` scope ends it now (KeysAndGrants/OwnerApproval, issue 11 §5).
ALTER TABLE inboxes ADD COLUMN created_by_grant TEXT;
CREATE INDEX inboxes_by_creating_grant ON inboxes (created_by_grant) WHERE created_by_grant IS NOT NULL;

-- The owner a hosted domain is assigned to (NULL: shared by every owner). Only
-- on a domain assigned to them may an owner's agents create inboxes (`create`
-- scope; `agentkeys domain assign`, core::may_create_on_domain).
ALTER TABLE domains ADD COLUMN owner TEXT;
