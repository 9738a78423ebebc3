-- Follower leases of the mail backends' receive sources (issue 14 on several
-- nodes): at most one process follows a domain's IMAP mailbox or SES bucket at
-- a time. A row is the holder (a random id per `serve` start) and when its
-- lease ends (Unix milliseconds); an expired row may be taken by anyone.
CREATE TABLE backend_leases (
    domain   TEXT    NOT NULL PRIMARY KEY REFERENCES domains (name) ON DELETE CASCADE,
    holder   TEXT    NOT NULL,
    until_ms INTEGER NOT NULL
) WITHOUT ROWID;
