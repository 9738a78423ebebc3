-- The owner may deny a pairing request outright (issue 12): `status` may be
-- 'denied' (terminal; `owner` is who denied it, `consumed_at` when).
ALTER TABLE pairing_requests DROP CONSTRAINT pairing_requests_status_check;
ALTER TABLE pairing_requests ADD CONSTRAINT pairing_requests_status_check
    CHECK (status IN ('pending', 'approved', 'consumed', 'denied'));
