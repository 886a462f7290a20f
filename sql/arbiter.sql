-- Arbiter mode (idem.arbiter): its setting, and calls where it is not set up.
-- Calls that reach DynamoDB are tested in t/105_sync_arbiter.pl and beside it.
-- (any call of idem's loads its library, which defines the setting)
SELECT idem.last_call_replayed() IS NULL AS loaded;
SHOW idem.arbiter;

-- Only a superuser may change who decides; the values are checked.
SELECT t.try($$SET idem.arbiter = 'raft'$$);
CREATE ROLE arbiter_user;
SET ROLE arbiter_user;
SELECT t.try($$SET idem.arbiter = 'dynamodb'$$);
RESET ROLE;
DROP ROLE arbiter_user;

-- A key recorded before the switch replays locally, with no DynamoDB at all.
SELECT idem.idempotent_call('arbiter-recorded', 't.place_order(jsonb)', '{"sku": 1}'::jsonb) IS NOT NULL AS recorded;
SELECT t.runs() AS runs_before \gset
SET idem.arbiter = 'dynamodb';
SELECT idem.idempotent_call('arbiter-recorded', 't.place_order(jsonb)', '{"sku": 1}'::jsonb) IS NOT NULL AS replayed,
       idem.last_call_replayed();

-- Without idem.dynamodb_table (and a preloaded idem), first calls and claims
-- fail with 55000, run nothing and record nothing.
SELECT t.records() AS records_before \gset
SELECT t.try($$SELECT idem.idempotent_call('arbiter-new', 't.place_order(jsonb)', '{"sku": 2}'::jsonb)$$);
SELECT t.try($$SELECT * FROM idem.claim('arbiter-lease', '{"sku": 3}')$$);
SELECT t.runs() = :runs_before AS nothing_ran, t.records() = :records_before AS nothing_recorded;

-- Back to local mode, the same calls work.
RESET idem.arbiter;
SELECT (idem.idempotent_call('arbiter-new', 't.place_order(jsonb)', '{"sku": 2}'::jsonb)) ? 'effect' AS ran_locally;
SELECT t.runs() = :runs_before + 1 AS ran_once;
