-- Rule 9: telling a replay from a first execution, and the caller's view of
-- its own records.

-- A new session has made no call yet.
\c
SELECT idem.last_call_replayed() IS NULL AS no_call_yet;
SELECT idem.idempotent_call('flag-1', 't.place_order(jsonb)', '{"sku": 20}'::jsonb) ->> 'payload',
       idem.last_call_replayed() AS replayed;
SELECT idem.idempotent_call('flag-1', 't.place_order(jsonb)', '{"sku": 20}'::jsonb) ->> 'payload',
       idem.last_call_replayed() AS replayed;
-- Usable in the same transaction, statement by statement.
BEGIN;
SELECT idem.idempotent_call('flag-2', 't.place_order(jsonb)', '{"sku": 21}'::jsonb) ->> 'payload';
SELECT idem.last_call_replayed() AS replayed;
SELECT idem.idempotent_call('flag-2', 't.place_order(jsonb)', '{"sku": 21}'::jsonb) ->> 'payload';
SELECT idem.last_call_replayed() AS replayed;
COMMIT;
-- After a failed call it is NULL again: there is no outcome to describe.
SELECT t.try($$SELECT idem.idempotent_call('flag-1', 't.place_order(jsonb)', '{"sku": 99}'::jsonb)$$);
SELECT idem.last_call_replayed() IS NULL AS unknown_after_error;
-- A savepoint rollback undoes the call, replay or first execution alike:
-- nothing is left to describe.  A released savepoint keeps it.
BEGIN;
SAVEPOINT a;
SELECT idem.idempotent_call('flag-1', 't.place_order(jsonb)', '{"sku": 20}'::jsonb) ->> 'payload';
SELECT idem.last_call_replayed() AS replayed;
ROLLBACK TO SAVEPOINT a;
SELECT idem.last_call_replayed() IS NULL AS unknown_after_rollback_to_savepoint;
SAVEPOINT b;
SELECT idem.idempotent_call('flag-3', 't.place_order(jsonb)', '{"sku": 23}'::jsonb) ->> 'payload';
SAVEPOINT c;
SELECT 1;
ROLLBACK TO SAVEPOINT c;
SELECT idem.last_call_replayed() IS FALSE AS ran_kept_by_inner_rollback;
ROLLBACK TO SAVEPOINT b;
SELECT idem.last_call_replayed() IS NULL AS unknown_after_first_call_rolled_back;
SAVEPOINT d;
SELECT idem.idempotent_call('flag-1', 't.place_order(jsonb)', '{"sku": 20}'::jsonb) ->> 'payload';
RELEASE SAVEPOINT d;
SELECT idem.last_call_replayed() AS replayed_kept_by_release;
ROLLBACK;
SELECT idem.last_call_replayed() IS NULL AS unknown_after_rollback;
-- In a PL/pgSQL block whose exception handler rolls the call back.
DO $$
DECLARE
    inside boolean;
BEGIN
    BEGIN
        PERFORM idem.idempotent_call('flag-1', 't.place_order(jsonb)', '{"sku": 20}'::jsonb);
        inside := idem.last_call_replayed();
        RAISE EXCEPTION 'undo';
    EXCEPTION WHEN raise_exception THEN
        RAISE NOTICE 'replayed inside the block: %, after its rollback: %', inside, idem.last_call_replayed();
    END;
END $$;
-- A committed call's flag outlives a later transaction that rolls back.
SELECT idem.idempotent_call('flag-1', 't.place_order(jsonb)', '{"sku": 20}'::jsonb) ->> 'payload';
BEGIN;
SELECT 1;
ROLLBACK;
SELECT idem.last_call_replayed() AS replayed_after_other_rollback;
SELECT count(*) AS flag_3_records FROM idem.my_records WHERE key = 'flag-3';

-- idem.my_records: key, status, outcome, created and expiry times.
\d idem.my_records
SELECT key, status, outcome ->> 'payload' AS payload,
       created_at <= clock_timestamp() AS created_in_past,
       expires_at - created_at AS ttl
  FROM idem.my_records WHERE key LIKE 'flag-%' ORDER BY key;
UPDATE idem.records SET expires_at = clock_timestamp() - interval '1 second' WHERE key = 'flag-2';
SELECT key, status FROM idem.my_records WHERE key LIKE 'flag-%' ORDER BY key;
