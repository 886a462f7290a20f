-- Rule 1: the first call runs fn in the caller's transaction and records the
-- key, the fingerprint and the outcome in that same transaction.

-- Rollback removes both the effect and the record.
BEGIN;
SELECT idem.idempotent_call('order-1', 't.place_order(jsonb)', '{"sku": 1}'::jsonb);
SELECT t.runs() AS runs, t.records() AS records;
SELECT key, owner, outcome FROM idem.records;
ROLLBACK;
SELECT t.runs() AS runs, t.records() AS records;

-- Commit keeps both.
SELECT idem.idempotent_call('order-1', 't.place_order(jsonb)', '{"sku": 1}'::jsonb);
SELECT t.runs() AS runs, t.records() AS records;
SELECT key, owner::text, outcome, expires_at - created_at AS ttl,
       request_hash IS NOT NULL AS has_fingerprint
  FROM idem.records;

-- An untyped literal is read as fn's parameter type.
SELECT idem.idempotent_call('order-2', 't.place_order(jsonb)', '{"sku": 2}');
SELECT arg FROM t.effects ORDER BY id DESC LIMIT 1;

-- Arguments of several types; the outcome is to_jsonb of the result.
CREATE FUNCTION t.describe(n integer, s text, x numeric, d date, a integer[], b boolean)
RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO t.effects (fn, arg) VALUES ('describe', n::text);
    RETURN format('%s|%s|%s|%s|%s|%s', n, s, x, d, a, b);
END $$;
SELECT idem.idempotent_call('describe-1', 't.describe(integer,text,numeric,date,integer[],boolean)',
                            7, 'seven'::text, 7.5, '2026-01-02', ARRAY[1, 2], true);
SELECT idem.idempotent_call('describe-1', 't.describe(integer,text,numeric,date,integer[],boolean)',
                            7, 'seven'::text, 7.5, '2026-01-02', ARRAY[1, 2], true);
SELECT count(*) AS describe_runs FROM t.effects WHERE fn = 'describe';

-- A varchar argument is accepted for a text parameter (binary-coercible).
SELECT idem.idempotent_call('describe-2', 't.describe(integer,text,numeric,date,integer[],boolean)',
                            8, 'eight'::varchar, 8.0, NULL, NULL, NULL);

-- Results of other types.
CREATE FUNCTION t.nothing() RETURNS void LANGUAGE plpgsql AS $$
BEGIN INSERT INTO t.effects (fn) VALUES ('nothing'); END $$;
CREATE FUNCTION t.null_text() RETURNS text LANGUAGE plpgsql AS $$
BEGIN INSERT INTO t.effects (fn) VALUES ('null_text'); RETURN NULL; END $$;
CREATE TYPE t.pair AS (a integer, b text);
CREATE FUNCTION t.make_pair(a integer) RETURNS t.pair LANGUAGE sql AS $$
    INSERT INTO t.effects (fn) VALUES ('make_pair') RETURNING a, 'b'::text $$;
CREATE FUNCTION t.out_params(a integer, OUT doubled integer, OUT label text) LANGUAGE sql AS $$
    SELECT a * 2, 'x' $$;
CREATE FUNCTION t.json_result() RETURNS json LANGUAGE sql AS $$ SELECT '{"b": 1,  "a": [1, 2]}'::json $$;
CREATE FUNCTION t.strict_fn(a integer) RETURNS integer STRICT LANGUAGE plpgsql AS $$
BEGIN INSERT INTO t.effects (fn) VALUES ('strict_fn'); RETURN a; END $$;

SELECT idem.idempotent_call('void-1', 't.nothing()') AS void_outcome;
SELECT idem.idempotent_call('null-1', 't.null_text()') AS null_outcome;
SELECT idem.idempotent_call('pair-1', 't.make_pair(integer)', 3) AS composite_outcome;
SELECT idem.idempotent_call('out-1', 't.out_params(integer)', 21) AS out_params_outcome;
SELECT idem.idempotent_call('json-1', 't.json_result()') AS json_outcome;
-- A strict function is not run on a NULL argument; its outcome is null.
SELECT idem.idempotent_call('strict-1', 't.strict_fn(integer)', NULL::integer) AS strict_outcome;
SELECT fn, count(*) FROM t.effects WHERE fn IN ('nothing', 'null_text', 'make_pair', 'strict_fn')
 GROUP BY fn ORDER BY fn;
-- Replays of those return the same outcomes without running again.
SELECT idem.idempotent_call('void-1', 't.nothing()') AS void_replay,
       idem.idempotent_call('pair-1', 't.make_pair(integer)', 3) AS composite_replay;
SELECT fn, count(*) FROM t.effects WHERE fn IN ('nothing', 'make_pair') GROUP BY fn ORDER BY fn;

-- A built-in function works too, and the call works inside a query over rows.
SELECT g, idem.idempotent_call('upper-' || g, 'upper(text)', 'k' || g) FROM generate_series(1, 3) g;

-- The fingerprint is part of the stored format: records written by earlier
-- versions must keep replaying, so these values never change.  They cover
-- small items, a long string and many keys (fed to the digest in pieces of
-- every size) and multibyte text.
SELECT idem.idempotent_call('fp-1', 'jsonb_typeof(jsonb)', jsonb_build_object('n', 1.50, 'list', jsonb_build_array(true, null, 'x')));
SELECT idem.idempotent_call('fp-2', 'jsonb_typeof(jsonb)', jsonb_build_object('blob', repeat('b', 3000), 'keys', (SELECT jsonb_object_agg('k' || i, i) FROM generate_series(1, 200) i)));
SELECT idem.idempotent_call('fp-3', 'upper(text)', repeat('é', 700)) = to_jsonb(repeat('É', 700)) AS upper_outcome;
SELECT key, request_hash FROM idem.records WHERE key LIKE 'fp-%' ORDER BY key;
DELETE FROM idem.records WHERE key LIKE 'fp-%';
