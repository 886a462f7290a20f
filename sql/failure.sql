-- Rule 5: if fn raises, the error reaches the caller unchanged and nothing is
-- recorded; the key stays free.
CREATE FUNCTION t.flaky(fail boolean) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO t.effects (fn, arg) VALUES ('flaky', fail::text);
    IF fail THEN
        RAISE EXCEPTION 'card declined' USING ERRCODE = 'P0042',
              DETAIL = 'the issuer said no', HINT = 'try another card';
    END IF;
    RETURN '{"charged": true}';
END $$;

SELECT t.records() AS records_before;
-- The function's own SQLSTATE, message, detail and hint arrive unchanged.
SELECT t.try($$SELECT idem.idempotent_call('charge-1', 't.flaky(boolean)', true)$$);
SELECT t.records() AS records_after, count(*) AS flaky_effects
  FROM t.effects WHERE fn = 'flaky';

-- The key is free: a retry runs the function (with an argument that now succeeds
-- it would be a different request, so retry the same request after a fix).
CREATE OR REPLACE FUNCTION t.flaky(fail boolean) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO t.effects (fn, arg) VALUES ('flaky', fail::text);
    RETURN '{"charged": true}';
END $$;
SELECT idem.idempotent_call('charge-1', 't.flaky(boolean)', true) AS retried;
SELECT idem.last_call_replayed() AS replayed;
SELECT count(*) AS flaky_effects FROM t.effects WHERE fn = 'flaky';

-- An error caught in a subtransaction frees the key within the same
-- transaction: the key lock taken in the subtransaction is released with it.
CREATE SEQUENCE t.attempts;
CREATE FUNCTION t.fail_once() RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO t.effects (fn) VALUES ('fail_once');
    IF nextval('t.attempts') = 1 THEN
        RAISE EXCEPTION 'first attempt fails';
    END IF;
    RETURN '"second attempt"';
END $$;
DO $$
BEGIN
    BEGIN
        PERFORM idem.idempotent_call('retry-in-xact', 't.fail_once()');
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'caught: %', SQLERRM;
    END;
    RAISE NOTICE 'retried: %', idem.idempotent_call('retry-in-xact', 't.fail_once()');
END $$;
SELECT key, outcome FROM idem.records WHERE key = 'retry-in-xact';
SELECT count(*) AS fail_once_effects FROM t.effects WHERE fn = 'fail_once';
