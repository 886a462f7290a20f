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
    -- PostgreSQL 16 repeats the unit in a setting's range, "(1 s .. 2147483647 s)":
    -- shown as before 16, "(1 .. 2147483647)", so that one output fits all majors
    message := regexp_replace(message, '\((-?[0-9.]+) ([A-Za-z]+) \.\. (-?[0-9.]+) \2\)', '(\1 .. \3)');
    RETURN state || E'\n  message: ' || message
           || coalesce(E'\n  detail:  ' || nullif(detail, ''), '')
           || coalesce(E'\n  hint:    ' || nullif(hint, ''), '');
END
$$;
GRANT EXECUTE ON FUNCTION t.try(text) TO PUBLIC;

-- How many times a function ran, and how many records exist.
CREATE FUNCTION t.runs() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM t.effects $$;
CREATE FUNCTION t.records() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM idem.records $$;

-- The extension's objects, as \dx+ lists them, but for the row types of its
-- tables and views and the array types, which PostgreSQL 17 records as
-- members too.
SELECT pg_describe_object(d.classid, d.objid, 0) AS "Object description"
  FROM pg_depend d
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'idem')
   AND NOT EXISTS (SELECT FROM pg_type t LEFT JOIN pg_class c ON c.oid = t.typrelid
                    WHERE d.classid = 'pg_type'::regclass AND t.oid = d.objid
                      AND (c.relkind <> 'c' OR EXISTS (SELECT FROM pg_type e WHERE e.typarray = t.oid)))
 ORDER BY 1;
