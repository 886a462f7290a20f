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

-- idem.my_records: key, status, outcome, created and expiry times.
\d idem.my_records
SELECT key, status, outcome ->> 'payload' AS payload,
       created_at <= clock_timestamp() AS created_in_past,
       expires_at - created_at AS ttl
  FROM idem.my_records WHERE key LIKE 'flag-%' ORDER BY key;
UPDATE idem.records SET expires_at = clock_timestamp() - interval '1 second' WHERE key = 'flag-2';
SELECT key, status FROM idem.my_records WHERE key LIKE 'flag-%' ORDER BY key;
