-- Deploying new versions of fn (README, Operations): the fingerprint names
-- fn by its schema-qualified signature, so a new body keeps every key while a
-- new name, schema or parameter type turns each recorded key into IK422.
CREATE SCHEMA fnv;
CREATE SEQUENCE fnv.runs;
CREATE FUNCTION fnv.f(o jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT jsonb_build_object('run', nextval('fnv.runs'), 'o', o) $$;
SELECT idem.idempotent_call('fnv-1', 'fnv.f(jsonb)', '{"a": 1}') AS first;

-- A new body with CREATE OR REPLACE: the key replays; a new key runs the new body.
CREATE OR REPLACE FUNCTION fnv.f(o jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT jsonb_build_object('run', nextval('fnv.runs'), 'body', 2) $$;
SELECT idem.idempotent_call('fnv-1', 'fnv.f(jsonb)', '{"a": 1}') AS new_body,
       idem.last_call_replayed() AS replayed;
SELECT idem.idempotent_call('fnv-2', 'fnv.f(jsonb)', '{"a": 2}') AS new_key,
       idem.last_call_replayed() AS replayed;

-- Dropped and created again with the same signature, even with another
-- result type: the key replays.
DROP FUNCTION fnv.f(jsonb);
SELECT t.try($$SELECT idem.idempotent_call('fnv-1', 'fnv.f(jsonb)', '{"a": 1}')$$) AS while_dropped;
CREATE FUNCTION fnv.f(o jsonb) RETURNS text LANGUAGE sql
    AS $$ SELECT 'run ' || nextval('fnv.runs') $$;
SELECT idem.idempotent_call('fnv-1', 'fnv.f(jsonb)', '{"a": 1}') AS recreated,
       idem.last_call_replayed() AS replayed;

-- Renamed: IK422 under the new name, 42883 under the old one.
ALTER FUNCTION fnv.f(jsonb) RENAME TO g;
SELECT t.try($$SELECT idem.idempotent_call('fnv-1', 'fnv.g(jsonb)', '{"a": 1}')$$) AS renamed;
SELECT t.try($$SELECT idem.idempotent_call('fnv-1', 'fnv.f(jsonb)', '{"a": 1}')$$) AS old_name;
ALTER FUNCTION fnv.g(jsonb) RENAME TO f;

-- Moved to another schema, or its schema renamed: IK422.
CREATE SCHEMA fnv_moved;
ALTER FUNCTION fnv.f(jsonb) SET SCHEMA fnv_moved;
SELECT t.try($$SELECT idem.idempotent_call('fnv-1', 'fnv_moved.f(jsonb)', '{"a": 1}')$$) AS moved;
ALTER FUNCTION fnv_moved.f(jsonb) SET SCHEMA fnv;
ALTER SCHEMA fnv RENAME TO fnv_renamed;
SELECT t.try($$SELECT idem.idempotent_call('fnv-1', 'fnv_renamed.f(jsonb)', '{"a": 1}')$$) AS schema_renamed;
ALTER SCHEMA fnv_renamed RENAME TO fnv;

-- A parameter's type renamed: IK422.
CREATE TYPE fnv.pair AS (a int, b int);
CREATE FUNCTION fnv.h(p fnv.pair) RETURNS int LANGUAGE sql AS $$ SELECT (p).a + (p).b $$;
SELECT idem.idempotent_call('fnv-3', 'fnv.h(fnv.pair)', '(1,2)') AS first;
ALTER TYPE fnv.pair RENAME TO couple;
SELECT t.try($$SELECT idem.idempotent_call('fnv-3', 'fnv.h(fnv.couple)', '(1,2)')$$) AS type_renamed;
ALTER TYPE fnv.couple RENAME TO pair;

-- Back under the first signature, every key replays again: nothing was lost.
SELECT idem.idempotent_call('fnv-1', 'fnv.f(jsonb)', '{"a": 1}') AS back,
       idem.last_call_replayed() AS replayed;
SELECT idem.idempotent_call('fnv-3', 'fnv.h(fnv.pair)', '(1,2)') AS back,
       idem.last_call_replayed() AS replayed;

-- The migration: a new function, the old one a wrapper of it, and a caller
-- that repeats an IK422 once under the other name.
CREATE FUNCTION fnv.k(o jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT jsonb_build_object('run', nextval('fnv.runs'), 'o', o) $$;
SELECT idem.idempotent_call('fnv-4', 'fnv.k(jsonb)', '{"a": 4}') AS before_deploy;
CREATE FUNCTION fnv.k_v2(o jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT jsonb_build_object('run', nextval('fnv.runs'), 'o', o, 'v', 2) $$;
CREATE OR REPLACE FUNCTION fnv.k(o jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT fnv.k_v2(o) $$;
CREATE FUNCTION fnv.call(key text, first regprocedure, other regprocedure, o jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        RETURN idem.idempotent_call(key, first, o);
    EXCEPTION WHEN SQLSTATE 'IK422' THEN
        RETURN idem.idempotent_call(key, other, o);
    END;
END $$;
-- A key recorded before the deploy replays under either name first.
SELECT fnv.call('fnv-4', 'fnv.k_v2(jsonb)', 'fnv.k(jsonb)', '{"a": 4}') AS new_first,
       idem.last_call_replayed() AS replayed;
SELECT fnv.call('fnv-4', 'fnv.k(jsonb)', 'fnv.k_v2(jsonb)', '{"a": 4}') AS old_first,
       idem.last_call_replayed() AS replayed;
-- A key recorded after it, under the new name, replays under either name first.
SELECT fnv.call('fnv-5', 'fnv.k_v2(jsonb)', 'fnv.k(jsonb)', '{"a": 5}') AS new_key;
SELECT fnv.call('fnv-5', 'fnv.k(jsonb)', 'fnv.k_v2(jsonb)', '{"a": 5}') AS old_first,
       idem.last_call_replayed() AS replayed;
-- A request that really is different is IK422 under both names.
SELECT t.try($$SELECT fnv.call('fnv-4', 'fnv.k_v2(jsonb)', 'fnv.k(jsonb)', '{"a": 6}')$$) AS different;
-- Four first calls, four runs: no key ran twice.
SELECT last_value AS runs FROM fnv.runs;
