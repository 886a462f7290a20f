-- How long a claim waits for a live lease: idem.wait_timeout, or a lower
-- lock_timeout, and IK409's detail names the one that ended the wait.  A
-- claim of a key that its own transaction holds fails at once: waiting for
-- itself could never end well.
CREATE FUNCTION t.try_masked(stmt text) RETURNS text LANGUAGE sql AS $$
    SELECT regexp_replace(regexp_replace(t.try(stmt),
               '\d{4}-\d\d-\d\d [0-9:.]+[-+]\d\d', '<time>', 'g'), 'token \d+', 'token <n>', 'g')
$$;
SET idem.wait_timeout = '30s';

-- A second claim in the transaction that holds the key fails at once.
BEGIN;
SELECT state FROM idem.claim('wait-1', '{"n": 1}', '1 hour');
SELECT clock_timestamp() AS t0 \gset
SELECT t.try_masked($$SELECT * FROM idem.claim('wait-1', '{"n": 1}')$$);
SELECT clock_timestamp() - :'t0' < interval '10 s' AS at_once;
-- the first claim still holds the key with its token; released, it can be claimed again
SELECT idem.release('wait-1', token) FROM idem.my_records WHERE key = 'wait-1';
SELECT state FROM idem.claim('wait-1', '{"n": 1}', '1 hour');
COMMIT;
-- A request that differs is still IK422 first.
BEGIN;
SELECT state FROM idem.claim('wait-2', '{"n": 2}', '1 hour');
SELECT t.try_masked($$SELECT * FROM idem.claim('wait-2', '{"n": 3}')$$);
ROLLBACK;

-- Another session's claim: a lower lock_timeout ends the wait, and the detail says so.
\c
SET idem.wait_timeout = '30s';
SET lock_timeout = '100ms';
SELECT clock_timestamp() AS t0 \gset
SELECT t.try_masked($$SELECT * FROM idem.claim('wait-1', '{"n": 1}')$$);
SELECT clock_timestamp() - :'t0' < interval '10 s' AS bounded_by_lock_timeout;
SET lock_timeout = '1h';
SET idem.wait_timeout = '100ms';
SELECT t.try_masked($$SELECT * FROM idem.claim('wait-1', '{"n": 1}')$$);
SET idem.wait_timeout = 0;
SELECT t.try_masked($$SELECT * FROM idem.claim('wait-1', '{"n": 1}')$$);
RESET lock_timeout;
RESET idem.wait_timeout;
