-- Threads and search (issue 13 §4; sqlite 0023). Every value is derived at
-- acceptance from the stored copy (`MessageFacts`) and written by the one
-- indexing statement, so a message is searchable and threaded exactly when it
-- is acknowledged.
ALTER TABLE messages ADD COLUMN thread_id TEXT COLLATE "C";
UPDATE messages SET thread_id = id WHERE thread_id IS NULL;
ALTER TABLE messages ADD COLUMN has_attachment BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE messages ADD COLUMN recipients TEXT NOT NULL DEFAULT '';
-- The message's words as lexemes with a field prefix (`s_` subject, `f_`
-- From:, `t_` To:/Cc:, `b_` body) and one `i_<hex>` lexeme naming the
-- (owner, inbox), built by array_to_tsvector from the words MessageFacts
-- extracted (no PostgreSQL parser or dictionary: the same words as SQLite).
ALTER TABLE messages ADD COLUMN search TSVECTOR NOT NULL DEFAULT ''::tsvector;
CREATE INDEX messages_by_thread ON messages (owner, inbox, thread_id, id);
CREATE INDEX messages_search ON messages USING GIN (search);

CREATE TABLE message_thread_keys (
    owner TEXT COLLATE "C" NOT NULL,
    inbox TEXT COLLATE "C" NOT NULL,
    key   TEXT COLLATE "C" NOT NULL,
    seq   BIGINT NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
    PRIMARY KEY (owner, inbox, key, seq)
);
CREATE INDEX message_thread_keys_by_seq ON message_thread_keys (seq);

-- The indexing statement (migration 0006) with threads and search: for each new
-- row, in input order, the thread is the oldest thread any of its lookup keys
-- reaches (threads it joins are merged into it), else its own id; its keys are
-- stored; its words become its tsvector.
DROP FUNCTION agentkeys_index_messages(text[], text[], text[], bigint[], bigint[], text[], text[], text[], boolean[], text);
CREATE FUNCTION agentkeys_index_messages(
    p_owner text[], p_inbox text[], p_id text[], p_received bigint[], p_size bigint[],
    p_from_address text[], p_from_name text[], p_subject text[], p_authenticated boolean[],
    p_has_attachment boolean[], p_recipients text[], p_terms text[],
    p_key_n bigint[], p_key text[], p_key_lookup boolean[],
    p_channel text
) RETURNS TABLE (n bigint, seq bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_last    bigint;
    v_next    bigint;
    r         record;
    v_note    text;
    v_threads text[];
    v_thread  text;
BEGIN
    SELECT c.last INTO v_last FROM message_seq c WHERE c.id = 1 FOR UPDATE;
    v_next := v_last;
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
        v_next := v_next + 1;
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
        VALUES (v_next, r.owner, r.inbox, r.id, r.received, r.size,
                r.from_address, r.from_name, r.subject, r.authenticated,
                v_thread, r.has_attachment, r.recipients,
                CASE WHEN r.terms = '' THEN ''::tsvector
                     ELSE array_to_tsvector(array_remove(string_to_array(r.terms, ' '), '')) END);
        INSERT INTO message_thread_keys (owner, inbox, key, seq)
        SELECT DISTINCT r.owner, r.inbox, x.key, v_next
          FROM unnest(p_key_n, p_key) AS x (n, key) WHERE x.n = r.n
        ON CONFLICT DO NOTHING;
    END LOOP;
    IF v_next > v_last THEN
        UPDATE message_seq SET last = v_next WHERE id = 1;
        FOR r IN SELECT m.seq, m.owner, m.inbox, m.id, m.size, m.header_from_address, m.header_from_name,
                        m.subject, m.authenticated
                   FROM messages m
                  WHERE m.seq > v_last AND m.seq <= v_next ORDER BY m.seq LOOP
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
