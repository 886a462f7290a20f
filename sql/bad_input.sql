-- Rule 8: bad input gets a distinct, documented SQLSTATE and changes nothing.
CREATE TEMP TABLE before AS SELECT t.runs() AS runs, t.records() AS records;

-- Keys: NULL, empty, too long (HTTP 400: IK400).
SELECT t.try($$SELECT idem.idempotent_call(NULL, 't.place_order(jsonb)', '{}'::jsonb)$$);
SELECT t.try($$SELECT idem.idempotent_call('', 't.place_order(jsonb)', '{}'::jsonb)$$);
SELECT t.try(format($$SELECT idem.idempotent_call(%L, 't.place_order(jsonb)', '{}'::jsonb)$$, repeat('k', 256)));
SELECT t.try(format($$SELECT idem.idempotent_call(%L, 't.place_order(jsonb)', '{}'::jsonb)$$, repeat('k', 1000000)));
-- 255 characters is fine; the limit counts characters, not bytes.
SELECT idem.idempotent_call(repeat('k', 255), 'upper(text)', 'x'::text);
SELECT idem.idempotent_call(repeat('é', 255), 'upper(text)', 'x'::text);
SET idem.max_key_length = 10;
SELECT t.try($$SELECT idem.idempotent_call('eleven-char', 'upper(text)', 'x'::text)$$);
SELECT idem.idempotent_call('ten-chars!', 'upper(text)', 'x'::text);
RESET idem.max_key_length;
SELECT t.try($$SET idem.max_key_length = 0$$);
SELECT t.try($$SET idem.max_key_length = 100000$$);
-- Keys with quotes, backslashes, control characters and non-ASCII text are
-- ordinary keys.
SELECT idem.idempotent_call(E'a"b\\c\n\t\u00e9\U0001F600', 'upper(text)', 'odd'::text);
SELECT idem.idempotent_call(E'a"b\\c\n\t\u00e9\U0001F600', 'upper(text)', 'odd'::text);
SELECT idem.last_call_replayed() AS replayed;

-- Functions: NULL, unknown, wrong kind.
SELECT t.try($$SELECT idem.idempotent_call('k1', NULL, 1)$$);
SELECT t.try($$SELECT idem.idempotent_call('k1', 't.no_such_function(jsonb)', '{}'::jsonb)$$);
SELECT t.try($$SELECT idem.idempotent_call('k1', 4294967295::oid::regprocedure, '{}'::jsonb)$$);
SELECT t.try($$SELECT idem.idempotent_call('k1', 'sum(integer)', 1)$$);
SELECT t.try($$SELECT idem.idempotent_call('k1', 'row_number()')$$);
CREATE PROCEDURE t.proc(a integer) LANGUAGE sql AS $$ SELECT 1 $$;
SELECT t.try($$SELECT idem.idempotent_call('k1', 't.proc(integer)', 1)$$);
SELECT t.try($$SELECT idem.idempotent_call('k1', 'generate_series(integer,integer)', 1, 3)$$);
SELECT t.try($$SELECT idem.idempotent_call('k1', 'array_length(anyarray,integer)', ARRAY[1], 1)$$);
SELECT t.try($$SELECT idem.idempotent_call('k1', 'pg_typeof("any")', 1)$$);
CREATE FUNCTION t.trig() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
SELECT t.try($$SELECT idem.idempotent_call('k1', 't.trig()')$$);

-- Arguments: wrong count, wrong types, a VARIADIC array.
SELECT t.try($$SELECT idem.idempotent_call('k1', 't.place_order(jsonb)')$$);
SELECT t.try($$SELECT idem.idempotent_call('k1', 't.place_order(jsonb)', '{}'::jsonb, 2)$$);
SELECT t.try($$SELECT idem.idempotent_call('k1', 't.place_order(jsonb)', 42)$$);
SELECT t.try($$SELECT idem.idempotent_call('k1', 't.place_order(jsonb)', '{"a":1}'::text)$$);
SELECT t.try($$SELECT idem.idempotent_call('k1', 't.place_order(jsonb)', 'not json')$$);
SELECT t.try($$SELECT idem.idempotent_call('k1', 'upper(text)', VARIADIC ARRAY['a'])$$);

-- A nested call on the same key from inside fn is an error, not a hang and not
-- a second execution; a nested call on another key is fine.
CREATE FUNCTION t.nested(k text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO t.effects (fn, arg) VALUES ('nested', k);
    RETURN idem.idempotent_call(k, 't.nested(text)', k);
END $$;
SELECT t.try($$SELECT idem.idempotent_call('loop', 't.nested(text)', 'loop'::text)$$);
CREATE FUNCTION t.outer_call(k text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RETURN jsonb_build_object('inner', idem.idempotent_call(k || '-inner', 't.place_order(jsonb)', '{"nested": true}'::jsonb) -> 'payload');
END $$;
SELECT idem.idempotent_call('outer', 't.outer_call(text)', 'outer'::text);
SELECT idem.idempotent_call('outer', 't.outer_call(text)', 'outer'::text) AS outer_replay;
SELECT key FROM idem.records WHERE key LIKE 'outer%' ORDER BY key;

-- Nothing that failed ran or was recorded: only the successful calls above
-- (two max-length keys, 'ten-chars!', the odd key, and outer with its inner
-- call) added records.
SELECT t.runs() - runs AS new_runs, t.records() - records AS new_records FROM before;
SELECT count(*) AS nested_runs FROM t.effects WHERE fn = 'nested';

-- GUC values out of range are refused.
SELECT t.try($$SET idem.wait_timeout = -1$$);
