-- Issue 10: an indexing transaction as ONE statement (crates/store/src/postgres/index.rs).
-- The same steps as before (lock the `message_seq` row, skip rows already
-- indexed, number the new ones after the counter, insert them, move the
-- counter, notify MAIL_CHANNEL once per new row in `seq` order), run by the
-- server inside the statement's own transaction: the counter row is held from
-- the lock to the commit that follows the statement, never across a network
-- round trip of the node (seven round trips became one), so indexers on other
-- nodes wait only for the server's work and the commit.
-- Each row carries its header summary (migration 0007's columns), and so does
-- its notification, unless that would pass PostgreSQL's payload limit ("shorter
-- than 8000 bytes", MAX_NOTIFY_PAYLOAD_BYTES in index.rs): then the summary is
-- left out rather than fail the transaction that makes the mail durable.
-- Returns, for every input position `n` (from 1), the seq of its row.
CREATE FUNCTION agentkeys_index_messages(
    p_owner text[], p_inbox text[], p_id text[], p_received bigint[], p_size bigint[],
    p_from_address text[], p_from_name text[], p_subject text[], p_authenticated boolean[], p_channel text
) RETURNS TABLE (n bigint, seq bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_last  bigint;
    v_count bigint;
    r       record;
    v_note  text;
BEGIN
    SELECT c.last INTO v_last FROM message_seq c WHERE c.id = 1 FOR UPDATE;
    INSERT INTO messages (seq, owner, inbox, id, received_at, size,
                          header_from_address, header_from_name, subject, authenticated)
    SELECT v_last + row_number() OVER (ORDER BY f.n), f.owner, f.inbox, f.id, f.received, f.size,
           f.from_address, f.from_name, f.subject, f.authenticated
      FROM (SELECT DISTINCT ON (k.owner, k.inbox, k.id) k.owner, k.inbox, k.id, k.received, k.size,
                   k.from_address, k.from_name, k.subject, k.authenticated, k.n
              FROM unnest(p_owner, p_inbox, p_id, p_received, p_size,
                          p_from_address, p_from_name, p_subject, p_authenticated) WITH ORDINALITY
                   AS k (owner, inbox, id, received, size, from_address, from_name, subject, authenticated, n)
             ORDER BY k.owner, k.inbox, k.id, k.n) f
     WHERE NOT EXISTS (SELECT 1 FROM messages m
                        WHERE m.owner = f.owner COLLATE "C" AND m.inbox = f.inbox COLLATE "C"
                          AND m.id = f.id COLLATE "C");
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        UPDATE message_seq SET last = v_last + v_count WHERE id = 1;
        FOR r IN SELECT m.seq, m.owner, m.inbox, m.id, m.size, m.header_from_address, m.header_from_name,
                        m.subject, m.authenticated
                   FROM messages m
                  WHERE m.seq > v_last AND m.seq <= v_last + v_count ORDER BY m.seq LOOP
            v_note := json_build_object(
                'seq', r.seq, 'owner', r.owner, 'inbox', r.inbox, 'id', r.id, 'size', r.size,
                'from_address', r.header_from_address, 'from_name', r.header_from_name,
                'subject', r.subject, 'authenticated', r.authenticated)::text;
            IF octet_length(v_note) > 7999 THEN
                v_note := json_build_object(
                    'seq', r.seq, 'owner', r.owner, 'inbox', r.inbox, 'id', r.id, 'size', r.size)::text;
            END IF;
            PERFORM pg_notify(p_channel, v_note);
        END LOOP;
    END IF;
    RETURN QUERY
        SELECT k.n, m.seq
          FROM unnest(p_owner, p_inbox, p_id) WITH ORDINALITY AS k (owner, inbox, id, n)
          JOIN messages m ON m.owner = k.owner COLLATE "C" AND m.inbox = k.inbox COLLATE "C"
                         AND m.id = k.id COLLATE "C"
         ORDER BY k.n;
END
$$;
