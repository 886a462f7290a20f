-- Hostile input to every SQL-callable function and every setting of idem.
-- Each case gets a documented error (or a documented outcome), changes
-- nothing it should not, and leaves the server up (the next statement runs).
-- Huge values, and errors that quote them, are shown by their start, length,
-- md5 or a comparison with what they must be, never in full, so that this
-- file's expected output stays small.
\set VERBOSITY default
CREATE SCHEMA hostile;
GRANT USAGE ON SCHEMA hostile TO PUBLIC;
CREATE TABLE hostile.effects (id serial PRIMARY KEY, what text);
GRANT ALL ON hostile.effects, hostile.effects_id_seq TO PUBLIC;
-- What exists before: at the end, only the calls below that succeeded have
-- added records.
CREATE TABLE hostile.keys_before AS SELECT owner, key FROM idem.records;

------------------------------------------------------------------------------
-- 1. Fingerprint collisions (finding): a different request under a used key
-- must be IK422, never the other request's outcome.  Hash functions made for
-- hash tables map these pairs to one value; the fingerprint must not.
------------------------------------------------------------------------------
CREATE FUNCTION hostile.echo_jsonb(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN INSERT INTO hostile.effects (what) VALUES (p::text); RETURN p; END $$;
CREATE FUNCTION hostile.echo_numeric(p numeric) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN INSERT INTO hostile.effects (what) VALUES (p::text); RETURN to_jsonb(p); END $$;
CREATE FUNCTION hostile.echo_bigint(p bigint) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN INSERT INTO hostile.effects (what) VALUES (p::text); RETURN to_jsonb(p); END $$;
CREATE FUNCTION hostile.echo_text2(a text, b text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN INSERT INTO hostile.effects (what) VALUES (a || '|' || b); RETURN jsonb_build_array(a, b); END $$;
CREATE FUNCTION hostile.echo_int_array(p int[]) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN INSERT INTO hostile.effects (what) VALUES (p::text); RETURN to_jsonb(p); END $$;

-- A charge and a refund of the same amount.
SELECT idem.idempotent_call('h-col-1', 'hostile.echo_jsonb(jsonb)', '{"amount": 100}');
SELECT t.try($$SELECT idem.idempotent_call('h-col-1', 'hostile.echo_jsonb(jsonb)', '{"amount": -100}')$$);
SELECT idem.idempotent_call('h-col-2', 'hostile.echo_numeric(numeric)', 100.5);
SELECT t.try($$SELECT idem.idempotent_call('h-col-2', 'hostile.echo_numeric(numeric)', -100.5)$$);
-- bigint values whose high and low halves fold to the same 32 bits
SELECT idem.idempotent_call('h-col-3', 'hostile.echo_bigint(bigint)', 1::bigint);
SELECT t.try($$SELECT idem.idempotent_call('h-col-3', 'hostile.echo_bigint(bigint)', 4294967296::bigint)$$);
-- structure: an object and an array of the same strings, nested arrays
SELECT idem.idempotent_call('h-col-4', 'hostile.echo_jsonb(jsonb)', '{"a": "b"}');
SELECT t.try($$SELECT idem.idempotent_call('h-col-4', 'hostile.echo_jsonb(jsonb)', '["a", "b"]')$$);
SELECT idem.idempotent_call('h-col-5', 'hostile.echo_jsonb(jsonb)', '[[1, 2], 3]');
SELECT t.try($$SELECT idem.idempotent_call('h-col-5', 'hostile.echo_jsonb(jsonb)', '[1, [2, 3]]')$$);
SELECT t.try($$SELECT idem.idempotent_call('h-col-5', 'hostile.echo_jsonb(jsonb)', '[1, 2, 3]')$$);
-- a scalar and a one-element array; a string and a number
SELECT idem.idempotent_call('h-col-6', 'hostile.echo_jsonb(jsonb)', '1');
SELECT t.try($$SELECT idem.idempotent_call('h-col-6', 'hostile.echo_jsonb(jsonb)', '[1]')$$);
SELECT t.try($$SELECT idem.idempotent_call('h-col-6', 'hostile.echo_jsonb(jsonb)', '"1"')$$);
-- equal elements 32 places apart cancel out in a rotate-and-xor hash
SELECT idem.idempotent_call('h-col-7', 'hostile.echo_jsonb(jsonb)',
    (SELECT jsonb_agg(CASE WHEN i IN (0, 32) THEN 'x' ELSE i::text END ORDER BY i) FROM generate_series(0, 32) i));
SELECT t.try($$SELECT idem.idempotent_call('h-col-7', 'hostile.echo_jsonb(jsonb)',
    (SELECT jsonb_agg(CASE WHEN i IN (0, 32) THEN 'y' ELSE i::text END ORDER BY i) FROM generate_series(0, 32) i))$$);
-- text arguments shifted between parameters
SELECT idem.idempotent_call('h-col-8', 'hostile.echo_text2(text,text)', 'ab'::text, 'c'::text);
SELECT t.try($$SELECT idem.idempotent_call('h-col-8', 'hostile.echo_text2(text,text)', 'a'::text, 'bc'::text)$$);
SELECT idem.idempotent_call('h-col-9', 'hostile.echo_int_array(integer[])', ARRAY[1, 2]);
SELECT t.try($$SELECT idem.idempotent_call('h-col-9', 'hostile.echo_int_array(integer[])', ARRAY[2, 1])$$);
SELECT t.try($$SELECT idem.idempotent_call('h-col-9', 'hostile.echo_int_array(integer[])', ARRAY[[1], [2]])$$);
-- Equal values are still the same request: a replay, not IK422.
SELECT idem.idempotent_call('h-col-1', 'hostile.echo_jsonb(jsonb)', '{"amount": 100.00}') AS replay_of_equal_value;
SELECT idem.idempotent_call('h-col-2', 'hostile.echo_numeric(numeric)', 100.50) AS replay_of_equal_value;
SELECT idem.idempotent_call('h-col-8', 'hostile.echo_text2(text,text)', 'ab'::varchar, 'c') AS replay_of_equal_value;
SELECT idem.last_call_replayed() AS replayed;
-- Each key ran once.
SELECT what, count(*) FROM hostile.effects GROUP BY what ORDER BY what COLLATE "C";

------------------------------------------------------------------------------
-- 2. Keys: NULL, empty, huge, control characters, invalid UTF-8, wrong types.
------------------------------------------------------------------------------
SELECT t.try($$SELECT idem.idempotent_call(NULL::text, NULL::regprocedure)$$);
SELECT t.try($$SELECT idem.idempotent_call(NULL, NULL, NULL)$$);
SELECT t.try($$SELECT idem.idempotent_call('', 'hostile.echo_jsonb(jsonb)', NULL::jsonb)$$);
-- a 16 MB key is refused by length, without being stored or quoted in full
SELECT r AS error, length(r) < 400 AS short_message
  FROM (SELECT t.try(format($$SELECT idem.idempotent_call(repeat(%L, 16 * 1024 * 1024), 'hostile.echo_jsonb(jsonb)', '{}')$$, 'h-k')) AS r) s;
-- 256 characters of 4 bytes each
SELECT t.try(format($$SELECT idem.idempotent_call(%L, 'hostile.echo_jsonb(jsonb)', '{}')$$, repeat(U&'\+01F600', 256)));
-- control characters are ordinary key characters
SELECT idem.idempotent_call(E'\x01\x02\x1b[31m\x7f', 'hostile.echo_jsonb(jsonb)', '{"ctl": true}') AS control_key;
SELECT idem.idempotent_call(E'\x01\x02\x1b[31m\x7f', 'hostile.echo_jsonb(jsonb)', '{"ctl": true}') AS control_key_replay;
-- invalid UTF-8 never reaches idem: the server refuses it in the literal or conversion
SELECT t.try($$SELECT idem.idempotent_call(E'\xc3\x28', 'hostile.echo_jsonb(jsonb)', '{}')$$);
SELECT t.try($$SELECT idem.idempotent_call(convert_from('\xc328'::bytea, 'UTF8'), 'hostile.echo_jsonb(jsonb)', '{}')$$);
SELECT t.try($$SELECT idem.idempotent_call(E'nul\x00', 'hostile.echo_jsonb(jsonb)', '{}')$$);
-- wrong types for the key and the function
SELECT t.try($$SELECT idem.idempotent_call(42, 'hostile.echo_jsonb(jsonb)', '{}')$$);
SELECT t.try($$SELECT idem.idempotent_call('\x6b'::bytea, 'hostile.echo_jsonb(jsonb)', '{}')$$);
SELECT t.try($$SELECT idem.idempotent_call(ARRAY['h-k'], 'hostile.echo_jsonb(jsonb)', '{}')$$);
SELECT t.try($$SELECT idem.idempotent_call('h-k', 'hostile.echo_jsonb', '{}')$$);
SELECT t.try($$SELECT idem.idempotent_call('h-k', 42, '{}')$$);
SELECT t.try($$SELECT idem.idempotent_call('h-k', 0::oid::regprocedure, '{}')$$);
SELECT t.try($$SELECT idem.idempotent_call('h-k', -1::oid::regprocedure)$$);
SELECT t.try($$SELECT idem.idempotent_call('h-k', 'hostile.echo_jsonb(jsonb)'::regproc, '{}')$$);
-- the key and function as variables of other types
SELECT t.try($$SELECT idem.idempotent_call('h-k'::char(5), 'upper(text)', 'x'::text)$$);
SELECT key FROM idem.records WHERE key LIKE 'h-k%' ORDER BY key;
SELECT t.try($$SELECT idem.idempotent_call('h-k', 'upper(text)', 'x'::text)$$) AS char_key_is_trimmed_text;

------------------------------------------------------------------------------
-- 3. Arguments: huge and deep jsonb, wrong types, too many.
------------------------------------------------------------------------------
-- 3 MB of jsonb in and out: recorded and replayed intact
CREATE TEMP TABLE big AS SELECT (SELECT jsonb_agg(jsonb_build_object('i', i, 's', md5(i::text))) FROM generate_series(1, 60000) i) AS doc;
SELECT octet_length(doc::text) > 3000000 AS big_enough FROM big;
SELECT md5(idem.idempotent_call('h-huge', 'hostile.echo_jsonb(jsonb)', doc)::text) = md5(doc::text) AS huge_first FROM big;
SELECT md5(idem.idempotent_call('h-huge', 'hostile.echo_jsonb(jsonb)', doc)::text) = md5(doc::text) AS huge_replay,
       idem.last_call_replayed() AS replayed FROM big;
SELECT t.try($$SELECT idem.idempotent_call('h-huge', 'hostile.echo_jsonb(jsonb)', (SELECT doc || '1'::jsonb FROM big))$$);
-- 10000 levels deep: recorded and replayed intact
CREATE TEMP TABLE deep AS SELECT (repeat('[', 10000) || '"bottom"' || repeat(']', 10000))::jsonb AS doc;
SELECT md5(idem.idempotent_call('h-deep', 'hostile.echo_jsonb(jsonb)', doc)::text) = md5(doc::text) AS deep_first FROM deep;
SELECT md5(idem.idempotent_call('h-deep', 'hostile.echo_jsonb(jsonb)', doc)::text) = md5(doc::text) AS deep_replay,
       idem.last_call_replayed() AS replayed FROM deep;
SELECT t.try($$SELECT idem.idempotent_call('h-deep', 'hostile.echo_jsonb(jsonb)', (repeat('[', 9999) || '"bottom"' || repeat(']', 9999))::jsonb)$$);
-- too deep for the jsonb parser: refused before idem runs
SELECT t.try(format($$SELECT idem.idempotent_call('h-deeper', 'hostile.echo_jsonb(jsonb)', %L)$$, repeat('[', 1000000) || repeat(']', 1000000)));
-- a domain parameter: literals are checked by the domain, base-type values must be cast
CREATE DOMAIN hostile.positive AS numeric CHECK (VALUE > 0);
CREATE FUNCTION hostile.pay(amount hostile.positive) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN INSERT INTO hostile.effects (what) VALUES ('pay ' || amount); RETURN to_jsonb(amount); END $$;
SELECT t.try($$SELECT idem.idempotent_call('h-pay-1', 'hostile.pay(hostile.positive)', '-5')$$);
SELECT t.try($$SELECT idem.idempotent_call('h-pay-1', 'hostile.pay(hostile.positive)', 5::numeric)$$);
SELECT idem.idempotent_call('h-pay-1', 'hostile.pay(hostile.positive)', '5');
SELECT idem.idempotent_call('h-pay-1', 'hostile.pay(hostile.positive)', 5::hostile.positive) AS replay;
-- a record where a composite is expected, a wrong-typed NULL
CREATE TYPE hostile.pair AS (a int, b text);
CREATE FUNCTION hostile.take_pair(p hostile.pair) RETURNS hostile.pair LANGUAGE sql AS $$ SELECT p $$;
SELECT t.try($$SELECT idem.idempotent_call('h-pair', 'hostile.take_pair(hostile.pair)', ROW(1, 'x'))$$);
SELECT t.try($$SELECT idem.idempotent_call('h-pair', 'hostile.take_pair(hostile.pair)', NULL::int)$$);
SELECT idem.idempotent_call('h-pair', 'hostile.take_pair(hostile.pair)', ROW(1, 'x')::hostile.pair);
-- more arguments than a function can take: refused by the parser
SELECT t.try(format('SELECT idem.idempotent_call(%L, %L, %s)', 'h-many', 'upper(text)',
                    (SELECT string_agg('1', ', ') FROM generate_series(1, 99))));

------------------------------------------------------------------------------
-- 4. Functions that return sets, records, domains, arrays and void, that call
-- idem recursively, that raise, that change the role or search_path.
------------------------------------------------------------------------------
CREATE FUNCTION hostile.rows() RETURNS SETOF int LANGUAGE sql AS $$ SELECT 1 UNION ALL SELECT 2 $$;
CREATE FUNCTION hostile.table_fn() RETURNS TABLE (a int) LANGUAGE sql AS $$ SELECT 1 $$;
SELECT t.try($$SELECT idem.idempotent_call('h-shape-set', 'hostile.rows()')$$);
SELECT t.try($$SELECT idem.idempotent_call('h-shape-set', 'hostile.table_fn()')$$);
CREATE FUNCTION hostile.anon_record() RETURNS record LANGUAGE plpgsql AS $$
BEGIN RETURN ROW(1, 'one'::text); END $$;
CREATE FUNCTION hostile.out_params(OUT a int, OUT b text) LANGUAGE sql AS $$ SELECT 2, 'two' $$;
CREATE FUNCTION hostile.domain_result() RETURNS hostile.positive LANGUAGE sql AS $$ SELECT 3.50 $$;
CREATE FUNCTION hostile.bad_domain_result() RETURNS hostile.positive LANGUAGE plpgsql AS $$
BEGIN INSERT INTO hostile.effects (what) VALUES ('bad domain'); RETURN -1; END $$;
CREATE FUNCTION hostile.array_result() RETURNS int[] LANGUAGE sql AS $$ SELECT ARRAY[[1, NULL], [3, 4]] $$;
CREATE FUNCTION hostile.void_result() RETURNS void LANGUAGE plpgsql AS $$
BEGIN INSERT INTO hostile.effects (what) VALUES ('void'); END $$;
CREATE FUNCTION hostile.null_result() RETURNS jsonb LANGUAGE sql AS $$ SELECT NULL::jsonb $$;
CREATE FUNCTION hostile.json_result() RETURNS json LANGUAGE sql AS $$ SELECT '{"a": 1, "a": 2}'::json $$;
SELECT idem.idempotent_call('h-shape-record', 'hostile.anon_record()');
SELECT idem.idempotent_call('h-shape-out', 'hostile.out_params()');
SELECT idem.idempotent_call('h-shape-domain', 'hostile.domain_result()');
SELECT t.try($$SELECT idem.idempotent_call('h-shape-bad-domain', 'hostile.bad_domain_result()')$$);
SELECT idem.idempotent_call('h-shape-array', 'hostile.array_result()');
SELECT idem.idempotent_call('h-shape-void', 'hostile.void_result()');
SELECT idem.idempotent_call('h-shape-void', 'hostile.void_result()') AS replay;
SELECT idem.idempotent_call('h-shape-null', 'hostile.null_result()');
SELECT idem.idempotent_call('h-shape-json', 'hostile.json_result()');
SELECT key, outcome FROM idem.records WHERE key LIKE 'h-shape-%' ORDER BY key;
SELECT count(*) AS void_runs FROM hostile.effects WHERE what = 'void';
SELECT count(*) AS bad_domain_records FROM idem.records WHERE key = 'h-shape-bad-domain';

-- Recursion through idem with new keys, until the stack runs out: the error
-- unwinds every level, records nothing, and leaves no key marked running.
CREATE FUNCTION hostile.descend(depth int) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO hostile.effects (what) VALUES ('descend');
    IF depth = 0 THEN RETURN '"bottom"'; END IF;
    RETURN idem.idempotent_call('h-descend-' || depth, 'hostile.descend(integer)', depth - 1);
END $$;
SELECT split_part(t.try($$SELECT idem.idempotent_call('h-descend-1000000', 'hostile.descend(integer)', 999999)$$), E'\n', 1) AS bottomless;
SELECT count(*) AS records_of_bottomless FROM idem.records WHERE key LIKE 'h-descend-%';
SELECT idem.idempotent_call('h-descend-20', 'hostile.descend(integer)', 19) AS twenty_levels;
SELECT count(*) AS records_of_twenty FROM idem.records WHERE key LIKE 'h-descend-%';
SELECT idem.idempotent_call('h-descend-20', 'hostile.descend(integer)', 19) AS replay;
-- a function that raises idem's own SQLSTATEs: the caller sees them unchanged,
-- and nothing is recorded
CREATE FUNCTION hostile.spoof() RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'fake key in use' USING ERRCODE = 'IK409'; END $$;
SELECT t.try($$SELECT idem.idempotent_call('h-spoof', 'hostile.spoof()')$$);
CREATE FUNCTION hostile.commit_inside() RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN COMMIT; RETURN '1'; END $$;
SELECT t.try($$SELECT idem.idempotent_call('h-commit-inside', 'hostile.commit_inside()')$$);
SELECT count(*) AS spoof_records FROM idem.records WHERE key IN ('h-spoof', 'h-commit-inside');

-- A function that switches role: the record belongs to the caller, not to
-- the role the function switched to.
CREATE ROLE regress_hostile_caller;
CREATE ROLE regress_hostile_other;
GRANT regress_hostile_other TO regress_hostile_caller;
GRANT USAGE ON SCHEMA idem TO regress_hostile_caller, regress_hostile_other;
CREATE FUNCTION hostile.become_other() RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('role', 'regress_hostile_other', true);
    INSERT INTO hostile.effects (what) VALUES ('become_other as ' || current_user);
    RETURN to_jsonb(current_user::text);
END $$;
BEGIN;
SET LOCAL ROLE regress_hostile_caller;
SELECT idem.idempotent_call('h-switch-role', 'hostile.become_other()');
SELECT current_user AS role_after_call;
COMMIT;
SELECT owner, outcome FROM idem.records WHERE key = 'h-switch-role';
SET ROLE regress_hostile_other;
SELECT count(*) AS other_role_sees FROM idem.my_records WHERE key = 'h-switch-role';
RESET ROLE;
-- A function that changes search_path to a schema with look-alike objects:
-- idem still writes only its own table.
CREATE SCHEMA hostile_path;
CREATE TABLE hostile_path.records (LIKE idem.records);
CREATE FUNCTION hostile.repath() RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('search_path', 'hostile_path, pg_catalog', true);
    RETURN '"repathed"';
END $$;
SELECT idem.idempotent_call('h-repath', 'hostile.repath()');
SELECT idem.idempotent_call('h-repath', 'hostile.repath()') AS replay;
SELECT count(*) AS lookalike_rows FROM hostile_path.records;
SELECT count(*) AS repath_records FROM idem.records WHERE key = 'h-repath';
-- Temporary look-alikes of the key table and the view, first in the path.
CREATE TEMP TABLE records (LIKE idem.records);
CREATE TEMP VIEW my_records AS SELECT 'fake'::text AS key;
SET search_path = pg_temp, hostile_path, public;
SELECT idem.idempotent_call('h-temp-path', 'hostile.repath()');
SELECT key FROM idem.my_records WHERE key = 'h-temp-path';
RESET search_path;
SELECT count(*) AS temp_lookalike_rows FROM pg_temp.records;
DROP TABLE pg_temp.records;
DROP VIEW pg_temp.my_records;

------------------------------------------------------------------------------
-- 5. The other functions: last_call_replayed and purge.
------------------------------------------------------------------------------
SELECT t.try($$SELECT idem.last_call_replayed(true)$$);
SELECT t.try($$SELECT idem.purge(0)$$);
SELECT t.try($$SELECT idem.purge(-2147483648)$$);
SELECT t.try($$SELECT idem.purge('h-many')$$);
SELECT t.try($$SELECT idem.purge(2147483648)$$);
SELECT idem.purge(NULL) AS purge_null;
SELECT idem.purge(2147483647) AS purge_max;
-- purge with a hostile search_path
CREATE FUNCTION hostile_path.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'infinity'::timestamptz $$;
SET search_path = hostile_path, public;
SELECT idem.purge() AS purge_hostile_path;
RESET search_path;

------------------------------------------------------------------------------
-- 6. Settings: negative, absurd, malformed, empty and huge values.
------------------------------------------------------------------------------
SELECT t.try($$SET idem.ttl = -1$$);
SELECT t.try($$SET idem.ttl = 0$$);
SELECT t.try($$SET idem.ttl = '100 years'$$);
SELECT t.try($$SET idem.ttl = '2147483648'$$);
SELECT t.try($$SET idem.ttl = '1e100'$$);
SELECT t.try($$SET idem.ttl = 'forever'$$);
SELECT t.try($$SET idem.ttl = ''$$);
SELECT t.try($$SET idem.ttl = '10 parsecs'$$);
SELECT t.try($$SET idem.ttl = '500ms'$$);
-- a megabyte of digits: the error quotes all of them (shown by its start,
-- compared in full)
SELECT left(r, 72) AS error_start, length(r) AS error_length,
       r = E'22023\n  message: invalid value for parameter "idem.ttl": "' || repeat('9', 1024 * 1024) || '"' AS quotes_the_whole_value
  FROM (SELECT t.try(format('SET idem.ttl = %L', repeat('9', 1024 * 1024))) AS r) s;
SELECT t.try($$SET idem.wait_timeout = -1$$);
SELECT t.try($$SET idem.wait_timeout = '1 fortnight'$$);
SELECT t.try($$SET idem.wait_timeout = 'NaN'$$);
SELECT t.try($$SET idem.max_key_length = 513$$);
-- a fraction is rounded, as for every integer setting
SELECT t.try($$SET idem.max_key_length = '12.5'$$);
SHOW idem.max_key_length;
RESET idem.max_key_length;
SELECT t.try($$SET idem.max_key_length = NULL$$);
SELECT t.try($$SELECT set_config('idem.ttl', NULL, true)$$);
SHOW idem.ttl;
SHOW idem.wait_timeout;
SHOW idem.max_key_length;
-- The extremes that are allowed work.
SET idem.ttl = 2147483647;
SELECT idem.idempotent_call('h-ttl-max', 'upper(text)', 'x'::text);
SELECT expires_at > now() + interval '60 years' AS far_future FROM idem.records WHERE key = 'h-ttl-max';
RESET idem.ttl;
SET idem.max_key_length = 512;
SELECT length(key) AS longest_key, octet_length(key) AS its_bytes
  FROM (SELECT repeat(U&'\+01F600', 512) AS key) k, LATERAL (SELECT idem.idempotent_call(k.key, 'upper(text)', 'x'::text)) c;
SELECT count(*) AS longest_key_recorded FROM idem.records WHERE length(key) = 512;
RESET idem.max_key_length;
SET idem.wait_timeout = 2147483647;
SELECT idem.idempotent_call('h-wait-max', 'upper(text)', 'x'::text);
RESET idem.wait_timeout;
SHOW lock_timeout;
-- A placeholder set before the library is loaded with an invalid value is
-- discarded with a warning when it loads (unknown names: reserved_prefix.sql).
\c -
SET idem.ttl = 'forever';
SELECT idem.last_call_replayed() AS loads_the_library;
SHOW idem.ttl;

------------------------------------------------------------------------------
-- Nothing that failed changed anything: the records and effects this file
-- added are exactly those of the calls above that succeeded.
------------------------------------------------------------------------------
SELECT CASE WHEN length(key) > 30 THEN left(key, 10) || '... (' || length(key) || ' characters)' ELSE key END AS new_key,
       owner
  FROM idem.records r
 WHERE NOT EXISTS (SELECT FROM hostile.keys_before b WHERE b.owner = r.owner AND b.key = r.key)
 ORDER BY key COLLATE "C";
SELECT left(what, 40) AS effect, count(*) FROM hostile.effects GROUP BY what ORDER BY what COLLATE "C";

SET client_min_messages = warning;
DROP SCHEMA hostile, hostile_path CASCADE;
RESET client_min_messages;
-- idem.purge deletes the records of dropped roles; delete these now, so that
-- the purges of later files count only their own records.
DELETE FROM idem.records
 WHERE owner::oid IN (SELECT oid FROM pg_roles
                       WHERE rolname IN ('regress_hostile_caller', 'regress_hostile_other'));
DROP OWNED BY regress_hostile_caller, regress_hostile_other;
DROP ROLE regress_hostile_caller, regress_hostile_other;
