-- `seq` visible in order per owner, not across the whole database (issue 10:
-- two nodes spent 17–35 % of their database time waiting for the one
-- `message_seq` row, whoever the mail was for).
--
-- Every reader that follows the index by `seq` reads one owner's rows (an
-- inbox's replay, its event stream, a waiter), so the order only has to hold
-- within an owner. An indexing transaction now takes a transaction-scoped
-- advisory lock per owner it writes for (sorted, so two batches never wait on
-- each other in a cycle), then its values from the sequence
-- `message_seq_values`, and holds the locks until it commits, exactly as it
-- held the counter row: an owner's next indexer takes its values only after
-- this one's rows are visible. Indexers for different owners no longer wait
-- for each other.
--
-- The one reader across owners, the webhook feeder, follows commit order
-- instead: each row records the transaction that wrote it (`xact`), and the
-- feeder reads only rows of transactions older than every transaction still
-- running (`pg_snapshot_xmin`), in `xact` order. Those rows are all committed
-- (or never will be), so a position in `xact` order is never overtaken.

-- Advisory lock class of the per-owner indexing lock (two-key form: its own
-- key space, apart from single-key advisory locks such as sqlx's migrations).
-- Owners whose names hash alike share a lock: more waiting, never less order.
CREATE FUNCTION agentkeys_lock_owners_for_index(p_owner text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_key integer;
BEGIN
    FOR v_key IN SELECT DISTINCT hashtext(o) FROM unnest(p_owner) AS o ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(1296516417, v_key);
    END LOOP;
END
$$;

CREATE SEQUENCE message_seq_values MINVALUE 1;
SELECT setval('message_seq_values', GREATEST((SELECT last FROM message_seq WHERE id = 1), 1),
              (SELECT last FROM message_seq WHERE id = 1) > 0);
DROP TABLE message_seq;

-- The writing transaction of each row. Rows already fed keep xact 1, the
-- others 2: both below every real transaction id (those start at 3), in the
-- order the feeder owes them.
ALTER TABLE messages ADD COLUMN xact xid8;
UPDATE messages SET xact = CASE WHEN seq <= (SELECT position FROM webhook_feed WHERE name = 'messages')
                                THEN '1'::xid8 ELSE '2'::xid8 END;
ALTER TABLE messages ALTER COLUMN xact SET DEFAULT pg_current_xact_id();
ALTER TABLE messages ALTER COLUMN xact SET NOT NULL;
CREATE INDEX messages_by_xact ON messages (xact, seq);
-- The feeder's position is now an `xact` (as a bigint): every row of that
-- transaction and of older ones has been fed.
UPDATE webhook_feed SET position = 1 WHERE name = 'messages';

DROP FUNCTION agentkeys_index_messages(text[], text[], text[], bigint[], bigint[], text[], text[], text[], boolean[],
                                       boolean[], text[], text[], bigint[], text[], boolean[], text);
CREATE FUNCTION agentkeys_index_messages(
    p_owner text[], p_inbox text[], p_id text[], p_received bigint[], p_size bigint[],
    p_from_address text[], p_from_name text[], p_subject text[], p_authenticated boolean[],
    p_has_attachment boolean[], p_recipients text[], p_terms text[],
    p_key_n bigint[], p_key text[], p_key_lookup boolean[],
    p_channel text
) RETURNS TABLE (n bigint, seq bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_seq     bigint;
    v_seqs    bigint[] := '{}';
    r         record;
    v_note    text;
    v_threads text[];
    v_thread  text;
BEGIN
    PERFORM agentkeys_lock_owners_for_index(p_owner);
    FOR r IN
        SELECT f.* FROM (SELECT DISTINCT ON (k.owner, k.inbox, k.id) k.*
                           FROM unnest(p_owner, p_inbox, p_id, p_received, p_size,
                                       p_from_address, p_from_name, p_subject, p_authenticated,
                                       p_has_attachment, p_recipients, p_terms) WITH ORDINALITY
                                AS k (owner, inbox, id, received, size, from_address, from_name, subject,
                                      authenticated, has_attachment, recipients, terms, n)
                          ORDER BY k.owner, k.inbox, k.id, k.n) f
         WHERE NOT EXISTS (SELECT 1 FROM messages m
                            WHERE m.owner = f.owner COLLATE "C" AND m.inbox = f.inbox COLLATE "C"
                              AND m.id = f.id COLLATE "C")
         ORDER BY f.n
    LOOP
        v_seq := nextval('message_seq_values');
        v_seqs := v_seqs || v_seq;
        SELECT array_agg(DISTINCT m.thread_id ORDER BY m.thread_id) INTO v_threads
          FROM message_thread_keys t JOIN messages m ON m.seq = t.seq
         WHERE t.owner = r.owner COLLATE "C" AND t.inbox = r.inbox COLLATE "C"
           AND t.key IN (SELECT x.key COLLATE "C" FROM unnest(p_key_n, p_key, p_key_lookup) AS x (n, key, lookup)
                          WHERE x.n = r.n AND x.lookup);
        IF v_threads IS NULL OR cardinality(v_threads) = 0 THEN
            v_thread := r.id;
        ELSE
            v_thread := v_threads[1];
            IF cardinality(v_threads) > 1 THEN
                UPDATE messages SET thread_id = v_thread
                 WHERE owner = r.owner COLLATE "C" AND inbox = r.inbox COLLATE "C"
                   AND thread_id = ANY (v_threads[2:]);
            END IF;
        END IF;
        INSERT INTO messages (seq, owner, inbox, id, received_at, size,
                              header_from_address, header_from_name, subject, authenticated,
                              thread_id, has_attachment, recipients, search)
        VALUES (v_seq, r.owner, r.inbox, r.id, r.received, r.size,
                r.from_address, r.from_name, r.subject, r.authenticated,
                v_thread, r.has_attachment, r.recipients,
                CASE WHEN r.terms = '' THEN ''::tsvector
                     ELSE array_to_tsvector(array_remove(string_to_array(r.terms, ' '), '')) END);
        INSERT INTO message_thread_keys (owner, inbox, key, seq)
        SELECT DISTINCT r.owner, r.inbox, x.key, v_seq
          FROM unnest(p_key_n, p_key) AS x (n, key) WHERE x.n = r.n
        ON CONFLICT DO NOTHING;
    END LOOP;
    FOR r IN SELECT m.seq, m.owner, m.inbox, m.id, m.size, m.header_from_address, m.header_from_name,
                    m.subject, m.authenticated
               FROM messages m
              WHERE m.seq = ANY (v_seqs) ORDER BY m.seq LOOP
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
    RETURN QUERY
        SELECT k.n, m.seq
          FROM unnest(p_owner, p_inbox, p_id) WITH ORDINALITY AS k (owner, inbox, id, n)
          JOIN messages m ON m.owner = k.owner COLLATE "C" AND m.inbox = k.inbox COLLATE "C"
                         AND m.id = k.id COLLATE "C"
         ORDER BY k.n;
END
$$;
