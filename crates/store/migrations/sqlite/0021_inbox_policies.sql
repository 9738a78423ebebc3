-- Inbox allow/block lists and the unauthenticated-mail policy (issue 13 §2).
-- One row per inbox that has a policy; `policy` is the JSON of
-- `agentkeys_core::policy::InboxPolicy`. `owner` is the inbox's owner when the
-- policy was set: a policy is read only while the inbox still belongs to that
-- owner, so an address removed and created again by someone else starts open.
CREATE TABLE inbox_policies (
    inbox      TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    policy     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
