-- idem writes idem.records itself, without the executor: it must keep every
-- plain index of the table, refuse indexes it cannot keep, and keep the
-- table from being changed under a running call.

-- A plain index a DBA adds is kept: the record written by a first call is
-- found through it.
CREATE INDEX records_expires_at ON idem.records (expires_at);
SELECT idem.idempotent_call('kt-1', 't.place_order(jsonb)', '{"sku": 401}'::jsonb) ->> 'payload';
-- amcheck finds every heap row of the table in the index
CREATE EXTENSION amcheck;
SELECT bt_index_check('idem.records_expires_at', true);
SET enable_seqscan = off;
SET enable_bitmapscan = off;
EXPLAIN (COSTS OFF)
  SELECT key FROM idem.records WHERE expires_at > now() + interval '1 hour' AND left(key, 3) = 'kt-';
SELECT key FROM idem.records WHERE expires_at > now() + interval '1 hour' AND left(key, 3) = 'kt-' ORDER BY key;
RESET enable_seqscan;
RESET enable_bitmapscan;
-- and so is its replacement of an expired record
UPDATE idem.records SET expires_at = now() - interval '1 second' WHERE key = 'kt-1';
SELECT idem.idempotent_call('kt-1', 't.place_order(jsonb)', '{"sku": 401}'::jsonb) ->> 'payload';
SELECT idem.last_call_replayed() AS replayed;
SELECT bt_index_check('idem.records_expires_at', true);
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT key FROM idem.records WHERE expires_at > now() + interval '1 hour' AND left(key, 3) = 'kt-' ORDER BY key;
RESET enable_seqscan;
RESET enable_bitmapscan;
DROP INDEX idem.records_expires_at;

-- An expression index cannot be kept: a first call fails, and its function's
-- effects and record vanish with it.
CREATE INDEX records_lower_key ON idem.records (lower(key));
SELECT count(*) AS effects_before FROM t.effects WHERE arg = '{"sku": 402}';
SELECT t.try($$SELECT idem.idempotent_call('kt-2', 't.place_order(jsonb)', '{"sku": 402}'::jsonb)$$);
SELECT count(*) AS effects_after FROM t.effects WHERE arg = '{"sku": 402}';
SELECT count(*) AS records FROM idem.records WHERE key = 'kt-2';
-- replays do not write, so they still work
SELECT idem.idempotent_call('kt-1', 't.place_order(jsonb)', '{"sku": 401}'::jsonb) ->> 'payload';
DROP INDEX idem.records_lower_key;

-- So can a partial index.
CREATE INDEX records_partial ON idem.records (key) WHERE owner <> 0;
SELECT t.try($$SELECT idem.idempotent_call('kt-2', 't.place_order(jsonb)', '{"sku": 402}'::jsonb)$$);
DROP INDEX idem.records_partial;
SELECT idem.idempotent_call('kt-2', 't.place_order(jsonb)', '{"sku": 402}'::jsonb) ->> 'payload';

-- A function that changes idem.records while its call is running is stopped:
-- the call holds the table open.
CREATE FUNCTION t.index_records(payload jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO t.effects (fn, arg) VALUES ('index_records', payload::text);
    CREATE INDEX records_during_call ON idem.records (created_at);
    RETURN payload;
END
$$;
SELECT t.try($$SELECT idem.idempotent_call('kt-3', 't.index_records(jsonb)', '{"sku": 403}'::jsonb)$$);
SELECT count(*) AS effects FROM t.effects WHERE fn = 'index_records';
SELECT count(*) AS records FROM idem.records WHERE key = 'kt-3';
SELECT count(*) AS indexes FROM pg_index WHERE indrelid = 'idem.records'::regclass;
DROP FUNCTION t.index_records(jsonb);
DROP EXTENSION amcheck;
