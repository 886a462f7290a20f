-- Objects the other regression tests share.
CREATE EXTENSION idem;

CREATE SCHEMA t;
GRANT USAGE ON SCHEMA t TO PUBLIC;

-- Every execution of a test function leaves one row here.
CREATE TABLE t.effects (id serial PRIMARY KEY, fn text NOT NULL, arg text);
GRANT SELECT, INSERT ON t.effects TO PUBLIC;
GRANT USAGE ON SEQUENCE t.effects_id_seq TO PUBLIC;

CREATE FUNCTION t.place_order(payload jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    effect int;
BEGIN
    INSERT INTO t.effects (fn, arg) VALUES ('place_order', payload::text) RETURNING id INTO effect;
    RETURN jsonb_build_object('effect', effect, 'payload', payload);
END
$$;

-- Runs a statement and reports its error fields instead of failing, so the
-- expected output shows SQLSTATE, message, detail and hint of every error.
CREATE FUNCTION t.try(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    state text; message text; detail text; hint text;
BEGIN
    EXECUTE stmt;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                            detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
    RETURN state || E'\n  message: ' || message
           || coalesce(E'\n  detail:  ' || nullif(detail, ''), '')
           || coalesce(E'\n  hint:    ' || nullif(hint, ''), '');
END
$$;
GRANT EXECUTE ON FUNCTION t.try(text) TO PUBLIC;

-- How many times a function ran, and how many records exist.
CREATE FUNCTION t.runs() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM t.effects $$;
CREATE FUNCTION t.records() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM idem.records $$;

-- The extension's objects.
\dx+ idem
