/* idem--1.0.sql: objects of the idem extension, version 1.0 */

\echo Use "CREATE EXTENSION idem" to load this file. \quit

-- The key table: one row per (role, key) holding the request fingerprint and
-- the recorded outcome.  Only idem's C code writes it, so PUBLIC gets no
-- privilege on it; callers reach their own rows through idem.my_records.
-- Columns are ordered for alignment: fixed-width first, then the varlenas.
CREATE TABLE idem.records (
    request_hash bigint NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    owner regrole NOT NULL,
    key text COLLATE "C" NOT NULL,
    outcome jsonb NOT NULL,
    CONSTRAINT records_pkey PRIMARY KEY (owner, key)
) USING heap;

REVOKE ALL ON TABLE idem.records FROM PUBLIC;

COMMENT ON TABLE idem.records IS
    'idempotency records: the outcome of the first call per (role, key); written only by idem';

-- pg_dump keeps the records, so a restored database replays instead of
-- running functions a second time.
SELECT pg_catalog.pg_extension_config_dump('idem.records', '');

CREATE FUNCTION idem.idempotent_call(key text, fn regprocedure, VARIADIC args "any")
RETURNS jsonb
AS 'MODULE_PATHNAME', 'idempotent_call'
LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION idem.idempotent_call(key text, fn regprocedure)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'idempotent_call'
LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem.idempotent_call(text, regprocedure, "any") IS
    'run fn(args) once for this key; later calls with the key return the recorded outcome';
COMMENT ON FUNCTION idem.idempotent_call(text, regprocedure) IS
    'run fn() once for this key; later calls with the key return the recorded outcome';

CREATE FUNCTION idem.last_call_replayed()
RETURNS boolean
AS 'MODULE_PATHNAME', 'last_call_replayed'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION idem.last_call_replayed() IS
    'true if this session''s last idempotent_call returned a recorded outcome, false if it ran the function, null before any call';

-- The caller's own records.  security_barrier keeps a leaky function in a
-- caller's WHERE clause from seeing other roles' rows.
CREATE VIEW idem.my_records WITH (security_barrier) AS
SELECT r.key,
       CASE WHEN r.expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
            THEN 'completed' ELSE 'expired' END AS status,
       r.outcome,
       r.created_at,
       r.expires_at
  FROM idem.records r
 WHERE r.owner OPERATOR(pg_catalog.=) (SELECT a.oid FROM pg_catalog.pg_roles a
                                        WHERE a.rolname OPERATOR(pg_catalog.=) pg_catalog."current_user"());

GRANT SELECT ON idem.my_records TO PUBLIC;

COMMENT ON VIEW idem.my_records IS
    'the calling role''s idempotency records';

-- Deletes at most max_rows expired records and returns how many it deleted.
-- Records of every role are purged, so PUBLIC may not call it: a DBA runs it,
-- or grants it, or schedules it with pg_cron.
CREATE FUNCTION idem.purge(max_rows integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    purged bigint;
BEGIN
    IF max_rows < 1 THEN
        RAISE EXCEPTION 'max_rows must be at least 1, not %', max_rows
            USING ERRCODE = '22023',
                  HINT = 'Call idem.purge() for the default batch of 10000 records.';
    END IF;
    -- SKIP LOCKED: a record being replaced by a call right now is left to it.
    WITH expired AS (
        SELECT r.ctid AS tid
          FROM idem.records r
         WHERE r.expires_at <= clock_timestamp()
         LIMIT max_rows
           FOR UPDATE SKIP LOCKED
    )
    DELETE FROM idem.records r
     USING expired e
     WHERE r.ctid = e.tid
       AND r.expires_at <= clock_timestamp();
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END
$$;

REVOKE ALL ON FUNCTION idem.purge(integer) FROM PUBLIC;

COMMENT ON FUNCTION idem.purge(integer) IS
    'delete at most max_rows expired idempotency records; returns how many were deleted';
