-- Issue 10: an audit append as ONE statement (crates/store/src/postgres/audit.rs).
-- Before, a node locked the chain head (`audit_chain`, FOR UPDATE), sealed the
-- records in Rust, inserted them and moved the head: the head stayed locked
-- across three of the node's round trips (lock, insert, update; a stand-alone
-- append also its BEGIN and COMMIT), so appends from several nodes serialized
-- on network latency. `agentkeys_audit_append` does the same steps inside the
-- server: lock the head, seal each record onto it, insert, move the head.
--
-- The hash is `crates/audit`'s, computed here byte for byte
-- (`agentkeys_audit_hash`, the encoding of crates/audit/src/canonical.rs):
--   hash = SHA-256(prev_hash || lp(tag) || u64be(seq) || i64be(ts) || lp(actor)
--                  || lp(operation) || lp(subject) || lp(outcome) || lp(detail))
--   lp(s) = u32be(byte length of s) || UTF-8 bytes of s
-- The node passes the format tag and the canonical JSON of the detail (both
-- made by crates/audit), and checks every returned hash by recomputing it in
-- Rust before it hands out a receipt; `audit verify` recomputes them all.
-- PostgreSQL's built-in sha256() (11+) is used, no extension needed.

-- lp(s): the UTF-8 byte length as u32 big-endian, then the bytes.
CREATE FUNCTION agentkeys_audit_lp(s text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT int4send(octet_length(convert_to(s, 'UTF8'))) || convert_to(s, 'UTF8')
$$;

-- The record hash, for seq >= 1 (int8send of a positive bigint is its u64be).
CREATE FUNCTION agentkeys_audit_hash(
    p_prev bytea, p_tag text, p_seq bigint, p_ts bigint, p_actor text, p_operation text,
    p_subject text, p_outcome text, p_detail text
) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT sha256(p_prev || agentkeys_audit_lp(p_tag) || int8send(p_seq) || int8send(p_ts)
                  || agentkeys_audit_lp(p_actor) || agentkeys_audit_lp(p_operation)
                  || agentkeys_audit_lp(p_subject) || agentkeys_audit_lp(p_outcome)
                  || agentkeys_audit_lp(p_detail))
$$;

-- Appends the records given by the arrays (position n from 1, all stamped
-- p_ts) in order after the chain head, in the caller's transaction (or the
-- statement's own), and returns each one's seq, prev_hash and hash (hex).
-- The head row stays locked until that transaction ends; with no records it is
-- locked and left as it was (the writer's readiness probe).
CREATE FUNCTION agentkeys_audit_append(
    p_tag text, p_ts bigint, p_actor text[], p_operation text[], p_subject text[], p_outcome text[],
    p_detail text[], p_detail_owner text[], p_detail_agent text[]
) RETURNS TABLE (r_n bigint, r_seq bigint, r_prev_hash text, r_hash text)
LANGUAGE plpgsql AS $$
DECLARE
    v_seq  bigint;
    v_hash bytea;
    v_prev bytea;
    v_n    integer := coalesce(array_length(p_actor, 1), 0);
BEGIN
    SELECT c.seq, decode(c.hash, 'hex') INTO v_seq, v_hash FROM audit_chain c WHERE c.id = 1 FOR UPDATE;
    IF v_n = 0 THEN
        RETURN;
    END IF;
    FOR i IN 1 .. v_n LOOP
        v_prev := v_hash;
        v_seq := v_seq + 1;
        v_hash := agentkeys_audit_hash(v_prev, p_tag, v_seq, p_ts, p_actor[i], p_operation[i],
                                       p_subject[i], p_outcome[i], p_detail[i]);
        IF v_hash IS NULL THEN
            RAISE EXCEPTION 'audit record % has a NULL field', i;
        END IF;
        INSERT INTO audit_log (seq, ts, actor, operation, subject, outcome, detail, prev_hash, hash,
                               detail_owner, detail_agent)
        VALUES (v_seq, p_ts, p_actor[i], p_operation[i], p_subject[i], p_outcome[i], p_detail[i],
                encode(v_prev, 'hex'), encode(v_hash, 'hex'), p_detail_owner[i], p_detail_agent[i]);
        r_n := i;
        r_seq := v_seq;
        r_prev_hash := encode(v_prev, 'hex');
        r_hash := encode(v_hash, 'hex');
        RETURN NEXT;
    END LOOP;
    UPDATE audit_chain SET seq = v_seq, hash = encode(v_hash, 'hex') WHERE id = 1;
END
$$;
