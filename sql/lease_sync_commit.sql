-- Every lease function that writes commits synchronously, whatever
-- synchronous_commit says: the commit returns only once its WAL is flushed.
-- A function declared SET synchronous_commit = off puts the caller's setting
-- back when it returns, which must not undo this.
SET synchronous_commit = off;
CREATE FUNCTION t.claim_quietly(k text) RETURNS bigint LANGUAGE sql
    SET synchronous_commit = off
    AS $$ SELECT token FROM idem.claim(k, NULL, '1 hour') $$;
CREATE FUNCTION t.complete_quietly(k text, tok bigint) RETURNS void LANGUAGE sql
    SET synchronous_commit = off
    AS $$ SELECT idem.complete(k, tok, '{"done": true}') $$;

-- The WAL position after the claim's row, before the commit record: once
-- COMMIT returns, the WAL must be flushed beyond it.
BEGIN;
SELECT t.claim_quietly('sync-1') AS token \gset
SELECT pg_current_wal_insert_lsn() AS written \gset
COMMIT;
SELECT pg_current_wal_flush_lsn() >= :'written'::pg_lsn AS claim_flushed_at_commit;

BEGIN;
SELECT t.complete_quietly('sync-1', :token);
SELECT pg_current_wal_insert_lsn() AS written \gset
COMMIT;
SELECT pg_current_wal_flush_lsn() >= :'written'::pg_lsn AS outcome_flushed_at_commit;

SHOW synchronous_commit;
SELECT key, status FROM idem.my_records WHERE key LIKE 'sync-%' ORDER BY key;
RESET synchronous_commit;
