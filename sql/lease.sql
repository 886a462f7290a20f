-- The lease API: claim, checkpoint, extend, complete and release.
-- Tokens come from a sequence shared by every key, so the output shows
-- their order, never their values.
SET idem.wait_timeout = 0;
CREATE FUNCTION t.masked(stmt text) RETURNS text LANGUAGE sql AS $$
    SELECT regexp_replace(regexp_replace(t.try(stmt),
               '\d{4}-\d\d-\d\d [0-9:.]+[-+]\d\d', '<time>', 'g'), 'token \d+', 'token <n>', 'g')
$$;
CREATE FUNCTION t.row_of(k text) RETURNS text LANGUAGE sql AS $$
    SELECT format('%s %s %s %s %s', status, outcome, recovery_point, recovery_data,
                  CASE WHEN lease_expires_at = '-infinity' THEN 'released' ELSE 'lease' END)
      FROM idem.my_records WHERE key = k
$$;

-- A first claim runs, with a token and no recovery point.
SELECT state, token > 0 AS has_token, outcome, recovery_point, recovery_data
  FROM idem.claim('lease-1', '{"amount": 10}') \gset first_
SELECT :'first_state' AS state, :'first_has_token' AS has_token;
SELECT token AS t1 FROM idem.my_records WHERE key = 'lease-1' \gset
SELECT idem.last_call_replayed();
SELECT status, outcome IS NULL AS no_outcome,
       lease_expires_at BETWEEN now() + interval '29 s' AND now() + interval '31 s' AS default_lease,
       expires_at >= now() + interval '1 day' - interval '1 min' AS expires_after_ttl
  FROM idem.my_records WHERE key = 'lease-1';

-- While the lease is live, another claim waits up to idem.wait_timeout, then IK409.
SELECT t.masked($$SELECT * FROM idem.claim('lease-1', '{"amount": 10}')$$);
SET idem.wait_timeout = 50;
SELECT t.masked($$SELECT * FROM idem.claim('lease-1', '{"amount": 10}')$$);
SET idem.wait_timeout = 0;
-- A different request for a claimed key is IK422, live lease or not.
SELECT t.try($$SELECT * FROM idem.claim('lease-1', '{"amount": 11}')$$);
SELECT t.try($$SELECT * FROM idem.claim('lease-1')$$);

-- The holder records a checkpoint and extends its lease.
SELECT idem.checkpoint('lease-1', :t1, 'charged', '{"charge": "ch_1"}');
SELECT idem.extend('lease-1', :t1, '1 hour') BETWEEN now() + interval '59 min' AND now() + interval '61 min' AS extended;
SELECT lease_expires_at > now() + interval '59 min' AS lease_moved, expires_at >= lease_expires_at AS expiry_covers_lease
  FROM idem.my_records WHERE key = 'lease-1';
SELECT t.row_of('lease-1');

-- complete records the outcome in the caller's transaction: a rollback undoes it.
BEGIN;
SELECT idem.complete('lease-1', :t1, '{"status": 201, "charge": "ch_1"}');
SELECT t.row_of('lease-1');
ROLLBACK;
SELECT t.row_of('lease-1');
SELECT idem.complete('lease-1', :t1, '{"status": 201, "charge": "ch_1"}');

-- Every later claim replays, and a completed token changes nothing.
SELECT state, token = :t1 AS same_token, outcome, recovery_point, recovery_data
  FROM idem.claim('lease-1', '{"amount": 10}');
SELECT idem.last_call_replayed();
SELECT t.masked($$SELECT idem.complete('lease-1', $$ || :t1 || $$, '{"status": 500}')$$);
SELECT t.masked($$SELECT idem.checkpoint('lease-1', $$ || :t1 || $$, 'again')$$);
SELECT t.masked($$SELECT idem.extend('lease-1', $$ || :t1 || $$, '1 s')$$);
SELECT t.masked($$SELECT idem.release('lease-1', $$ || :t1 || $$)$$);
SELECT t.row_of('lease-1');
SELECT t.try($$SELECT * FROM idem.claim('lease-1', '{"amount": 12}')$$);

-- A lapsed lease is taken over with a larger token and the last checkpoint;
-- the old token is stale from then on, and nothing it tries changes the row.
SELECT state FROM idem.claim('lease-2', '{"amount": 20}', '10 ms');
SELECT token AS t2 FROM idem.my_records WHERE key = 'lease-2' \gset
SELECT idem.checkpoint('lease-2', :t2, 'charged', '{"charge": "ch_2"}');
SELECT pg_sleep(0.05);
SELECT status FROM idem.my_records WHERE key = 'lease-2';
SELECT state, token > :t2 AS larger_token, outcome, recovery_point, recovery_data
  FROM idem.claim('lease-2', '{"amount": 20}');
SELECT token AS t3 FROM idem.my_records WHERE key = 'lease-2' \gset
SELECT t.row_of('lease-2') AS before \gset
SELECT t.masked($$SELECT idem.complete('lease-2', $$ || :t2 || $$, '{"late": true}')$$);
SELECT t.masked($$SELECT idem.checkpoint('lease-2', $$ || :t2 || $$, 'late')$$);
SELECT t.masked($$SELECT idem.extend('lease-2', $$ || :t2 || $$, '1 hour')$$);
SELECT t.masked($$SELECT idem.release('lease-2', $$ || :t2 || $$)$$);
SELECT t.row_of('lease-2') = :'before' AS unchanged, token = :t3 AS newest_holds
  FROM idem.my_records WHERE key = 'lease-2';
-- A token never given out for the key is stale as well.
SELECT t.masked($$SELECT idem.complete('lease-2', $$ || (:t3 + 1000) || $$, '{}')$$);
SELECT t.masked($$SELECT idem.complete('no-such-key', 1, '{}')$$);

-- A lapsed lease nobody took over still belongs to its token.
SELECT state FROM idem.claim('lease-3', NULL, '10 ms');
SELECT token AS t4 FROM idem.my_records WHERE key = 'lease-3' \gset
SELECT pg_sleep(0.05);
SELECT idem.complete('lease-3', :t4, '"late but first"');
SELECT state, outcome FROM idem.claim('lease-3');

-- release gives the key back at once, keeping the checkpoint.
SELECT state FROM idem.claim('lease-4', '{"amount": 40}', '1 hour');
SELECT token AS t5 FROM idem.my_records WHERE key = 'lease-4' \gset
SELECT idem.checkpoint('lease-4', :t5, 'reserved');
SELECT idem.release('lease-4', :t5);
SELECT t.row_of('lease-4');
SELECT t.masked($$SELECT idem.release('lease-4', $$ || :t5 || $$)$$);
SELECT state, token > :t5 AS larger_token, recovery_point, recovery_data
  FROM idem.claim('lease-4', '{"amount": 40}');

-- A claim's transaction commits synchronously even under synchronous_commit = off:
-- once COMMIT returns, the WAL is flushed beyond the claim's row.  The setting
-- itself is left alone (sql/lease_sync_commit.sql has more).
SET synchronous_commit = off;
BEGIN;
SELECT state FROM idem.claim('lease-5');
SELECT pg_current_wal_insert_lsn() AS written \gset
COMMIT;
SELECT pg_current_wal_flush_lsn() >= :'written'::pg_lsn AS flushed_at_commit;
SHOW synchronous_commit;
-- A replay writes nothing and leaves the setting alone.
BEGIN;
SELECT state FROM idem.claim('lease-1', '{"amount": 10}');
SHOW synchronous_commit;
COMMIT;
RESET synchronous_commit;

-- One key table: idempotent_call and claim refuse each other's keys (IK422).
SELECT t.try($$SELECT idem.idempotent_call('lease-1', 't.place_order(jsonb)', '{}'::jsonb)$$);
SELECT t.try($$SELECT idem.idempotent_call('lease-4', 't.place_order(jsonb)', '{}'::jsonb)$$);
SELECT idem.idempotent_call('call-1', 't.place_order(jsonb)', '{"sku": 1}'::jsonb) ->> 'payload';
SELECT t.try($$SELECT * FROM idem.claim('call-1', '{"sku": 1}')$$);
SELECT t.masked($$SELECT idem.complete('call-1', 1, '{}')$$);

-- One namespace per role, as for idempotent_call: the same key is another
-- record for another role, and a role cannot complete another role's claim.
CREATE ROLE regress_idem_lease_a;
CREATE ROLE regress_idem_lease_b;
GRANT USAGE ON SCHEMA idem TO regress_idem_lease_a, regress_idem_lease_b;
SET ROLE regress_idem_lease_a;
SELECT state FROM idem.claim('lease-role', '{"who": "alice"}');
SELECT token AS alice_token FROM idem.my_records WHERE key = 'lease-role' \gset
RESET ROLE;
SET ROLE regress_idem_lease_b;
SELECT state FROM idem.claim('lease-role', '{"who": "bob"}');
SELECT t.masked(format($$SELECT idem.complete('lease-role', %s, '"bob wins"')$$, :alice_token));
SELECT key, status FROM idem.my_records;
RESET ROLE;
SET ROLE regress_idem_lease_a;
SELECT idem.complete('lease-role', :alice_token, '"alice"');
SELECT key, status, outcome FROM idem.my_records;
RESET ROLE;
SELECT owner, outcome FROM idem.records WHERE key = 'lease-role' ORDER BY owner::text;
DELETE FROM idem.records WHERE key = 'lease-role';
REVOKE USAGE ON SCHEMA idem FROM regress_idem_lease_a, regress_idem_lease_b;
DROP ROLE regress_idem_lease_a;
DROP ROLE regress_idem_lease_b;

-- Expiry (idem.ttl) and purge are shared: an expired outcome is claimed afresh.
SET idem.ttl = 1;
SELECT state FROM idem.claim('lease-6', NULL, '10 ms');
SELECT token AS t6 FROM idem.my_records WHERE key = 'lease-6' \gset
SELECT idem.complete('lease-6', :t6, '"first"');
RESET idem.ttl;
SELECT pg_sleep(1.1);
SELECT status FROM idem.my_records WHERE key = 'lease-6';
SELECT idem.purge() >= 1 AS purged;
SELECT count(*) FROM idem.my_records WHERE key = 'lease-6';
SELECT state, outcome, recovery_point FROM idem.claim('lease-6');
-- purge never deletes a claim whose lease is live, however short idem.ttl
SET idem.ttl = 1;
SELECT state FROM idem.claim('lease-7', NULL, '1 hour');
RESET idem.ttl;
SELECT pg_sleep(1.1);
SELECT idem.purge();
SELECT status FROM idem.my_records WHERE key = 'lease-7';

-- Bad input: a documented SQLSTATE, and nothing changes.
SELECT count(*) AS records_before FROM idem.records \gset
SELECT last_value AS tokens_before FROM idem.claim_tokens \gset
SELECT t.try($$SELECT * FROM idem.claim(NULL)$$);
SELECT t.try($$SELECT * FROM idem.claim('')$$);
SELECT t.try(format($$SELECT * FROM idem.claim(%L)$$, repeat('k', 256)));
SELECT t.try($$SELECT * FROM idem.claim('bad', NULL, '0 s')$$);
SELECT t.try($$SELECT * FROM idem.claim('bad', NULL, '-5 s')$$);
SELECT t.try($$SELECT * FROM idem.claim('bad', NULL, '24 hours 1 second')$$);
SELECT t.try($$SELECT * FROM idem.claim('bad', NULL, '1 mon')$$);
SELECT t.try($$SELECT idem.complete(NULL, 1, '{}')$$);
SELECT t.try($$SELECT idem.complete('', 1, '{}')$$);
SELECT t.try($$SELECT idem.complete('lease-7', NULL, '{}')$$);
SELECT t.try($$SELECT idem.complete('lease-7', 1, NULL)$$);
SELECT t.try($$SELECT idem.checkpoint('lease-7', 1, NULL)$$);
SELECT t.try($$SELECT idem.extend('lease-7', 1, NULL)$$);
SELECT t.try($$SELECT idem.extend('lease-7', 1, '0 s')$$);
SELECT t.try($$SELECT idem.extend('lease-7', 1, '2 days')$$);
SELECT t.try($$SELECT idem.release(NULL, 1)$$);
SELECT t.try($$SELECT idem.release('lease-7', NULL)$$);
SELECT t.masked($$SELECT idem.release('lease-7', 1)$$);
BEGIN READ ONLY;
SELECT t.try($$SELECT * FROM idem.claim('read-only')$$);
SELECT state FROM idem.claim('lease-1', '{"amount": 10}');
COMMIT;
SELECT count(*) = :records_before AS no_new_records,
       (SELECT last_value FROM idem.claim_tokens) = :tokens_before AS no_tokens_taken
  FROM idem.records;
SELECT t.row_of('lease-7');

-- The setting idem.lease is the default lease, and is bounded too.
SET idem.lease = '2min';
SELECT state FROM idem.claim('lease-8');
SELECT lease_expires_at BETWEEN now() + interval '119 s' AND now() + interval '121 s' AS lease_from_setting
  FROM idem.my_records WHERE key = 'lease-8';
SELECT t.try($$SET idem.lease = 0$$);
SELECT t.try($$SET idem.lease = '25h'$$);
RESET idem.lease;

-- my_records shows each state.
SELECT key, status FROM idem.my_records WHERE key LIKE 'lease-%' ORDER BY key;
RESET idem.wait_timeout;

-- The holder's calls write the claim's record: a read-only transaction
-- refuses each of them (25006) and nothing changes.
SELECT state FROM idem.claim('ro-lease-1', NULL, '1 hour');
SELECT token AS t9 FROM idem.my_records WHERE key = 'ro-lease-1' \gset
SELECT t.row_of('ro-lease-1') AS before \gset
BEGIN READ ONLY;
SELECT t.masked($$SELECT idem.checkpoint('ro-lease-1', $$ || :t9 || $$, 'step')$$);
SELECT t.masked($$SELECT idem.extend('ro-lease-1', $$ || :t9 || $$, '2 hours')$$);
SELECT t.masked($$SELECT idem.complete('ro-lease-1', $$ || :t9 || $$, '{"done": true}')$$);
SELECT t.masked($$SELECT idem.release('ro-lease-1', $$ || :t9 || $$)$$);
COMMIT;
SELECT t.row_of('ro-lease-1') = :'before' AS unchanged;
