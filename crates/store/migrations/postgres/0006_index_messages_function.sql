-- Issue 10: an indexing transaction as ONE statement (crates/store/src/postgres/index.rs).
-- The same steps as before (lock the `message_seq` row, skip rows already
-- indexed, number the new ones after the counter, insert them, move the
-- counter, notify MAIL_CHANNEL once per new row in `seq` order), run by the
-- server inside the statement's own transaction: the counter row is held from
-- the lock to the commit that follows the statement, never across a network
-- round trip of the node (seven round trips became one), so indexers on other
-- nodes wait only for the server's work and the commit.
-- Returns, for every input position `n` (from 1), the seq of its row.
CREATE FUNCTION agentkeys_index_messages(
    p_owner text[], p_inbox text[], p_id text[], p_received bigint[], p_size bigint[], p_channel text
) RETURNS TABLE (n bigint, seq bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_last  bigint;
    v_count bigint;
    r       record;
BEGIN
    SELECT c.last INTO v_last FROM message_seq c WHERE c.id = 1 FOR UPDATE;
    INSERT INTO messages (seq, owner, inbox, id, received_at, size)
    SELECT v_last + row_number() OVER (ORDER BY f.n), f.owner, f.inbox, f.id, f.received, f.size
      FROM (SELECT DISTINCT ON (k.owner, k.inbox, k.id) k.owner, k.inbox, k.id, k.received, k.size, k.n
              FROM unnest(p_owner, p_inbox, p_id, p_received, p_size) WITH ORDINALITY
                   AS k (owner, inbox, id, received, size, n)
             ORDER BY k.owner, k.inbox, k.id, k.n) f
     WHERE NOT EXISTS (SELECT 1 FROM messages m
                        WHERE m.owner = f.owner COLLATE "C" AND m.inbox = f.inbox COLLATE "C"
                          AND m.id = f.id COLLATE "C");
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        UPDATE message_seq SET last = v_last + v_count WHERE id = 1;
        FOR r IN SELECT m.seq, m.owner, m.inbox, m.id, m.size FROM messages m
                  WHERE m.seq > v_last AND m.seq <= v_last + v_count ORDER BY m.seq LOOP
            PERFORM pg_notify(p_channel, json_build_object(
                'seq', r.seq, 'owner', r.owner, 'inbox', r.inbox, 'id', r.id, 'size', r.size)::text);
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
