-- Rule 6: records expire after idem.ttl; an expired record counts as absent.
-- The GUCs exist once the library is loaded: by the session's first call of
-- an idem function, or at server start with shared_preload_libraries.
SELECT idem.last_call_replayed() IS NULL AS no_call_yet;
SHOW idem.ttl;
SELECT expires_at - created_at AS default_ttl FROM idem.records WHERE key = 'order-1';

-- SET LOCAL sets the TTL of one call.
BEGIN;
SET LOCAL idem.ttl = '2h';
SELECT idem.idempotent_call('short-1', 't.place_order(jsonb)', '{"sku": 10}'::jsonb) ->> 'payload';
COMMIT;
SHOW idem.ttl;
SELECT expires_at - created_at AS local_ttl FROM idem.records WHERE key = 'short-1';

-- Age the record past its expiry: the next call runs fn again and replaces it.
UPDATE idem.records SET expires_at = clock_timestamp() - interval '1 second' WHERE key = 'short-1';
SELECT status FROM idem.my_records WHERE key = 'short-1';
SELECT count(*) AS runs_before FROM t.effects WHERE arg = '{"sku": 10}';
SELECT idem.idempotent_call('short-1', 't.place_order(jsonb)', '{"sku": 10}'::jsonb) ->> 'payload';
SELECT idem.last_call_replayed() AS replayed;
SELECT count(*) AS runs_after FROM t.effects WHERE arg = '{"sku": 10}';
SELECT count(*) AS records_for_key, min(status) AS status, min(expires_at - created_at) AS ttl
  FROM idem.my_records WHERE key = 'short-1';

-- An expired record does not hold its request either: another request may
-- use the key.
UPDATE idem.records SET expires_at = clock_timestamp() - interval '1 second' WHERE key = 'short-1';
SELECT idem.idempotent_call('short-1', 't.place_order(jsonb)', '{"sku": 11}'::jsonb) ->> 'payload';

-- TTL bounds.
SELECT t.try($$SET idem.ttl = 0$$);
SELECT t.try($$SET idem.ttl = '-1s'$$);

-- idem.purge deletes expired records in bounded batches and says how many.
SELECT idem.idempotent_call('purge-' || g, 'upper(text)', 'p' || g) FROM generate_series(1, 5) g;
UPDATE idem.records SET expires_at = clock_timestamp() - interval '1 second' WHERE key LIKE 'purge-%';
SELECT count(*) AS live_records FROM idem.records WHERE expires_at > clock_timestamp();
SELECT idem.purge(2) AS purged;
SELECT idem.purge() AS purged;
SELECT idem.purge() AS purged;
SELECT count(*) AS expired_left FROM idem.records WHERE key LIKE 'purge-%';
SELECT count(*) AS live_records FROM idem.records WHERE expires_at > clock_timestamp();
SELECT t.try($$SELECT idem.purge(0)$$);
-- PUBLIC may not purge.
SELECT has_function_privilege('public', 'idem.purge(integer)', 'EXECUTE') AS public_can_purge;
