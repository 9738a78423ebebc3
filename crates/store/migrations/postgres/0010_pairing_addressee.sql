-- `agent pair --owner` (issue 12): the owner a pairing request is addressed to
-- (an owner id, or an address no owner had when it was opened); NULL: any
-- owner. The console lists an owner's pending requests by it.
ALTER TABLE pairing_requests ADD COLUMN addressed_to TEXT COLLATE "C";
CREATE INDEX pairing_requests_addressed ON pairing_requests (addressed_to, status, opened_at);
