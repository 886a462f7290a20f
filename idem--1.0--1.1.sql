/* idem--1.0--1.1.sql: update idem 1.0 to 1.1 */

\echo Use "ALTER EXTENSION idem UPDATE TO '1.1'" to load this file. \quit

-- Every object this script creates or changes is defined exactly as in
-- idem--1.1.sql; t/040_upgrade.pl compares the two from the catalogs.

-- ---------------------------------------------------------------------
-- hardening
-- ---------------------------------------------------------------------

-- idem.purge finds expired records through this index instead of reading
-- the whole table, and walks the roles that own records through it, one
-- descent per role, so that the records of a dropped role are found too.
-- idem's C code adds an entry to it with every record row it writes.
CREATE INDEX records_owner_expires_at ON idem.records (owner, expires_at);

-- Replaces the purge of 1.0, which read the whole table on every run (its
-- clock_timestamp() kept every index out of the plan).  Records of a role
-- that no longer exists are purged as well, expired or not: no one can
-- replay them, and a role created later under the same OID (once the OID
-- counter wraps around) would otherwise inherit them.
CREATE OR REPLACE FUNCTION idem.purge(max_rows integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cutoff timestamptz := clock_timestamp();
    role_id oid;
    batch bigint;
    purged bigint := 0;
BEGIN
    IF max_rows < 1 THEN
        RAISE EXCEPTION 'max_rows must be at least 1, not %', max_rows
            USING ERRCODE = '22023',
                  HINT = 'Call idem.purge() for the default batch of 10000 records.';
    END IF;
    role_id := (SELECT r.owner FROM idem.records r ORDER BY r.owner LIMIT 1);
    WHILE role_id IS NOT NULL AND purged < max_rows LOOP
        -- SKIP LOCKED: a record being replaced by a call right now is left to it.
        IF EXISTS (SELECT FROM pg_roles a WHERE a.oid = role_id) THEN
            WITH expired AS (
                SELECT r.ctid AS tid
                  FROM idem.records r
                 WHERE r.owner = role_id AND r.expires_at <= cutoff
                 ORDER BY r.expires_at
                 LIMIT max_rows - purged
                   FOR UPDATE SKIP LOCKED
            )
            DELETE FROM idem.records r
             USING expired e
             WHERE r.ctid = e.tid
               AND r.expires_at <= cutoff;
        ELSE
            WITH orphaned AS (
                SELECT r.ctid AS tid
                  FROM idem.records r
                 WHERE r.owner = role_id
                 LIMIT max_rows - purged
                   FOR UPDATE SKIP LOCKED
            )
            DELETE FROM idem.records r
             USING orphaned o
             WHERE r.ctid = o.tid
               AND r.owner = role_id;
        END IF;
        GET DIAGNOSTICS batch = ROW_COUNT;
        purged := purged + batch;
        role_id := (SELECT r.owner FROM idem.records r WHERE r.owner > role_id
                     ORDER BY r.owner LIMIT 1);
    END LOOP;
    RETURN purged;
END
$$;

COMMENT ON FUNCTION idem.purge(integer) IS
    'delete at most max_rows expired idempotency records, and the records of dropped roles; returns how many were deleted';

-- Drivers (node-pg, psycopg, ...) send bind parameters without a type, and
-- PostgreSQL cannot pass a parameter of unknown type as "any".  The type
-- idem.untyped is in the string category, which function resolution
-- prefers for arguments of unknown type, and no typed value converts to
-- it: a call whose arguments are all untyped (literals or bind parameters)
-- takes the overload below, every other call the one taking "any".  idem
-- reads each element as it reads an untyped literal, through the input
-- function of fn's parameter, so both give the same request fingerprint.
CREATE TYPE idem.untyped;

CREATE FUNCTION idem.untyped_in(cstring) RETURNS idem.untyped
AS 'textin' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION idem.untyped_out(idem.untyped) RETURNS cstring
AS 'textout' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION idem.untyped_recv(internal) RETURNS idem.untyped
AS 'textrecv' LANGUAGE internal STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION idem.untyped_send(idem.untyped) RETURNS bytea
AS 'textsend' LANGUAGE internal STABLE STRICT PARALLEL SAFE;

CREATE TYPE idem.untyped (
    INPUT = idem.untyped_in,
    OUTPUT = idem.untyped_out,
    RECEIVE = idem.untyped_recv,
    SEND = idem.untyped_send,
    LIKE = pg_catalog.text,
    CATEGORY = 'S'
);

COMMENT ON TYPE idem.untyped IS
    'an argument of idem.idempotent_call given without a type, read as an untyped literal';

CREATE FUNCTION idem.idempotent_call(key text, fn regprocedure, VARIADIC args idem.untyped[])
RETURNS jsonb
AS 'MODULE_PATHNAME', 'idem_idempotent_call'
LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem.idempotent_call(text, regprocedure, idem.untyped[]) IS
    'run fn(args) once for this key, its arguments given without a type (bind parameters of drivers); later calls with the key return the recorded outcome';

-- ---------------------------------------------------------------------
-- DynamoDB sync status
-- ---------------------------------------------------------------------

-- idem.sync_worker_state() gains the claim deletes waiting for the worker
-- and the set-up problem that keeps this database's outbox from being
-- delivered; idem.sync_status shows them, when the last delivery was, the
-- rate of deliveries and the conflicts by cause.  A changed OUT list needs
-- the function and the view that uses it created anew.
DROP VIEW idem.sync_status;
DROP FUNCTION idem.sync_worker_state();

CREATE FUNCTION idem.sync_worker_state(OUT worker_pid integer, OUT in_flight integer,
                                       OUT requests_sent bigint, OUT last_error text,
                                       OUT last_error_at timestamptz,
                                       OUT claim_deletes_pending integer,
                                       OUT setup_problem text)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_sync_worker_state_1_1'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;

REVOKE ALL ON FUNCTION idem.sync_worker_state() FROM PUBLIC;

-- pending counts rows waiting or on the wire; in_flight those on the wire.
-- last_error is the latest delivery problem, cleared once every row is
-- delivered.  Conflicts by cause: an outcome met another outcome
-- (outcome_differs), a claim's state met another system's outcome
-- (claim_overtaken), an arbiter claim's lease ended before its state
-- landed and another party took the key (lease_lapsed).
CREATE VIEW idem.sync_status AS
SELECT s.pending,
       w.in_flight,
       s.delivered,
       s.failed,
       s.conflicts,
       s.oldest_pending_age,
       w.last_error,
       w.last_error_at,
       w.requests_sent,
       w.worker_pid,
       pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()
         OPERATOR(pg_catalog.-) s.last_delivered_at) AS seconds_since_delivery,
       s.delivered_last_minute,
       s.conflicts_outcome_differs,
       s.conflicts_claim_overtaken,
       s.conflicts_lease_lapsed,
       w.claim_deletes_pending,
       w.setup_problem
  FROM (SELECT count(*) FILTER (WHERE o.state = 'pending') AS pending,
               count(*) FILTER (WHERE o.state = 'delivered') AS delivered,
               count(*) FILTER (WHERE o.state = 'failed') AS failed,
               count(*) FILTER (WHERE o.state = 'conflict') AS conflicts,
               pg_catalog.clock_timestamp()
                 OPERATOR(pg_catalog.-) min(o.created_at) FILTER (WHERE o.state = 'pending')
                 AS oldest_pending_age,
               max(o.delivered_at) AS last_delivered_at,
               count(*) FILTER (WHERE o.state = 'delivered'
                 AND o.delivered_at OPERATOR(pg_catalog.>) (pg_catalog.clock_timestamp()
                   OPERATOR(pg_catalog.-) interval '1 minute')) AS delivered_last_minute,
               count(*) FILTER (WHERE o.state = 'conflict' AND o.arbiter_claim IS NULL
                 AND o.outcome IS NOT NULL) AS conflicts_outcome_differs,
               count(*) FILTER (WHERE o.state = 'conflict' AND o.arbiter_claim IS NULL
                 AND o.outcome IS NULL) AS conflicts_claim_overtaken,
               count(*) FILTER (WHERE o.state = 'conflict' AND o.arbiter_claim IS NOT NULL)
                 AS conflicts_lease_lapsed
          FROM idem.sync_outbox o) s,
       idem.sync_worker_state() w;

REVOKE ALL ON idem.sync_status FROM PUBLIC;

COMMENT ON VIEW idem.sync_status IS
    'progress of the DynamoDB sync: queue sizes, delivery rate and recency, conflicts by cause, age of the oldest pending outcome, last error, set-up problems';

-- ---------------------------------------------------------------------
-- monitoring
-- ---------------------------------------------------------------------

-- Counters since the last reset, one row per (role, database, target); the
-- caller sees its own rows, or all of them with pg_read_all_stats.  Times
-- are in milliseconds.  Needs idem in shared_preload_libraries.
CREATE FUNCTION idem.stats_rows(
    OUT userid oid, OUT dbid oid, OUT api text, OUT fn regprocedure,
    OUT calls bigint, OUT executions bigint, OUT replays bigint,
    OUT replays_after_wait bigint, OUT waits bigint,
    OUT total_wait_time double precision, OUT max_wait_time double precision,
    OUT timeouts bigint, OUT mismatches bigint, OUT stale_tokens bigint,
    OUT errors bigint, OUT takeovers bigint, OUT resumptions bigint,
    OUT releases bigint, OUT dynamodb_claims bigint, OUT dynamodb_replays bigint,
    OUT dynamodb_failures bigint, OUT dynamodb_requests bigint,
    OUT total_dynamodb_time double precision, OUT max_dynamodb_time double precision,
    OUT stats_reset timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'idem_stats_rows'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

CREATE VIEW idem.stats AS
SELECT * FROM idem.stats_rows();

GRANT SELECT ON idem.stats TO PUBLIC;

COMMENT ON VIEW idem.stats IS
    'what idem did per role, database and target since the last idem.stats_reset(): calls, replays, waits, conflicts, DynamoDB claims';

CREATE FUNCTION idem.stats_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'idem_stats_reset'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

REVOKE ALL ON FUNCTION idem.stats_reset() FROM PUBLIC;

COMMENT ON FUNCTION idem.stats_reset() IS
    'set every counter of idem.stats to zero';
