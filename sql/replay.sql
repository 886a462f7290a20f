-- Rule 2: a later call with the same key and request returns the recorded
-- outcome without running fn, and writes nothing.
SELECT t.runs() AS runs_before;
SELECT idem.idempotent_call('order-1', 't.place_order(jsonb)', '{"sku": 1}'::jsonb) AS replay;
SELECT t.runs() AS runs_after;

-- No write: a replay does not even get a transaction ID.
BEGIN;
SELECT idem.idempotent_call('order-1', 't.place_order(jsonb)', '{"sku": 1}'::jsonb) AS replay;
SELECT pg_current_xact_id_if_assigned() IS NULL AS no_xid_assigned;
COMMIT;

-- So a replay works in a read-only transaction, where a first call fails
-- with SQLSTATE 25006 and runs nothing.
BEGIN READ ONLY;
SELECT idem.idempotent_call('order-1', 't.place_order(jsonb)', '{"sku": 1}'::jsonb) AS replay;
SELECT t.try($$SELECT idem.idempotent_call('order-ro', 't.place_order(jsonb)', '{"sku": 9}'::jsonb)$$);
COMMIT;
SELECT t.runs() AS runs_unchanged;

-- A retry in the same transaction as the first call replays too, and so does
-- a second call in the same statement.
BEGIN;
SELECT idem.idempotent_call('order-3', 't.place_order(jsonb)', '{"sku": 3}'::jsonb) AS first;
SELECT idem.idempotent_call('order-3', 't.place_order(jsonb)', '{"sku": 3}'::jsonb) AS retry;
COMMIT;
SELECT idem.idempotent_call('order-4', 't.place_order(jsonb)', '{"sku": 4}'::jsonb)
     = idem.idempotent_call('order-4', 't.place_order(jsonb)', '{"sku": 4}'::jsonb) AS same_outcome;
SELECT count(*) AS order_3_and_4_runs FROM t.effects
 WHERE fn = 'place_order' AND arg IN ('{"sku": 3}', '{"sku": 4}');

-- A prepared statement executed repeatedly keeps replaying.
PREPARE again(text) AS SELECT idem.idempotent_call($1, 't.place_order(jsonb)', '{"sku": 5}'::jsonb) ->> 'payload';
EXECUTE again('order-5');
EXECUTE again('order-5');
EXECUTE again('order-5');
SELECT count(*) AS order_5_runs FROM t.effects WHERE arg = '{"sku": 5}';
DEALLOCATE again;

-- A large outcome (stored out of line) replays intact.
CREATE FUNCTION t.big(n integer) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_agg(jsonb_build_object('i', i, 'pad', repeat('x', 100))) FROM generate_series(1, n) i $$;
SELECT md5(idem.idempotent_call('big-1', 't.big(integer)', 5000)::text)
     = md5(t.big(5000)::text) AS first_intact,
       md5(idem.idempotent_call('big-1', 't.big(integer)', 5000)::text)
     = md5(t.big(5000)::text) AS replay_intact;
