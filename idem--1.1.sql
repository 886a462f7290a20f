/* idem--1.1.sql: objects of the idem extension, version 1.1 (a fresh install; idem--1.0--1.1.sql updates 1.0) */

\echo Use "CREATE EXTENSION idem" to load this file. \quit

-- The key table: one row per (role, key) holding the request fingerprint and
-- the recorded outcome.  Only idem's C code writes it, so PUBLIC gets no
-- privilege on it; callers reach their own rows through idem.my_records.
-- Rows of idem.claim also hold a lease: token and lease_expires_at name the
-- current holder, outcome stays NULL until idem.complete, and the holder's
-- last idem.checkpoint is kept for whoever takes the key over.
-- Columns are ordered for alignment: fixed-width first, then the varlenas.
CREATE TABLE idem.records (
    request_hash bigint NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    token bigint,
    lease_expires_at timestamptz,
    owner regrole NOT NULL,
    key text COLLATE "C" NOT NULL,
    outcome jsonb,
    recovery_point text,
    recovery_data jsonb,
    -- key first: it tells keys apart at the first column, so a lookup
    -- compares one column per index entry instead of two
    CONSTRAINT records_pkey PRIMARY KEY (key, owner)
) USING heap;

REVOKE ALL ON TABLE idem.records FROM PUBLIC;

COMMENT ON TABLE idem.records IS
    'idempotency records: the outcome of the first call per (role, key); written only by idem';

-- pg_dump keeps the records, so a restored database replays instead of
-- running functions a second time.
SELECT pg_catalog.pg_extension_config_dump('idem.records', '');

-- idem.purge finds expired records through this index instead of reading
-- the whole table, and walks the roles that own records through it, one
-- descent per role, so that the records of a dropped role are found too.
-- idem's C code adds an entry to it with every record row it writes.
CREATE INDEX records_owner_expires_at ON idem.records (owner, expires_at);

-- Fencing tokens of idem.claim: every claim takes the next value, so a
-- token is larger than every token given out before it, for any key.
CREATE SEQUENCE idem.claim_tokens AS bigint NO CYCLE;
REVOKE ALL ON SEQUENCE idem.claim_tokens FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('idem.claim_tokens', '');

CREATE FUNCTION idem.idempotent_call(key text, fn regprocedure, VARIADIC args "any")
RETURNS jsonb
AS 'MODULE_PATHNAME', 'idem_idempotent_call'
LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION idem.idempotent_call(key text, fn regprocedure)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'idem_idempotent_call'
LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem.idempotent_call(text, regprocedure, "any") IS
    'run fn(args) once for this key; later calls with the key return the recorded outcome';
COMMENT ON FUNCTION idem.idempotent_call(text, regprocedure) IS
    'run fn() once for this key; later calls with the key return the recorded outcome';

CREATE FUNCTION idem.last_call_replayed()
RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_last_call_replayed'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION idem.last_call_replayed() IS
    'true if this session''s last idempotent_call returned a recorded outcome, false if it ran the function, null before any call';

-- The caller's own records.  security_barrier keeps a leaky function in a
-- caller's WHERE clause from seeing other roles' rows.
CREATE VIEW idem.my_records WITH (security_barrier) AS
SELECT r.key,
       CASE WHEN r.expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp() THEN 'expired'
            WHEN r.outcome IS NOT NULL THEN 'completed'
            WHEN r.lease_expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp() THEN 'claimed'
            ELSE 'lapsed' END AS status,
       r.outcome,
       r.created_at,
       r.expires_at,
       r.token,
       r.lease_expires_at,
       r.recovery_point,
       r.recovery_data
  FROM idem.records r
 WHERE r.owner OPERATOR(pg_catalog.=) (SELECT a.oid FROM pg_catalog.pg_roles a
                                        WHERE a.rolname OPERATOR(pg_catalog.=) pg_catalog."current_user"());

GRANT SELECT ON idem.my_records TO PUBLIC;

COMMENT ON VIEW idem.my_records IS
    'the calling role''s idempotency records';

-- Work outside the database: claim a key with a lease, do the work, then
-- complete it with the outcome (or release it).  Every function takes the
-- key lock of (current_user, key) and writes in the caller's transaction.
CREATE FUNCTION idem.claim(key text, request jsonb DEFAULT NULL, lease interval DEFAULT NULL,
                           OUT state text, OUT token bigint, OUT outcome jsonb,
                           OUT recovery_point text, OUT recovery_data jsonb)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_claim'
LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem.claim(text, jsonb, interval) IS
    'hold the key for lease and get state ''run'' and a fencing token, or state ''replay'' and the recorded outcome';

CREATE FUNCTION idem.complete(key text, token bigint, outcome jsonb)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_complete'
LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem.complete(text, bigint, jsonb) IS
    'record the outcome of a claimed key; later claims replay it';

CREATE FUNCTION idem.checkpoint(key text, token bigint, point text, data jsonb DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_checkpoint'
LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem.checkpoint(text, bigint, text, jsonb) IS
    'record a recovery point of a claimed key, handed to the next holder if this lease lapses';

CREATE FUNCTION idem.extend(key text, token bigint, lease interval)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'idem_extend'
LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem.extend(text, bigint, interval) IS
    'renew the lease of a claimed key to now + lease; returns when it now ends';

CREATE FUNCTION idem.release(key text, token bigint)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_release'
LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION idem.release(text, bigint) IS
    'give a claimed key back without an outcome, so that the next claim runs at once';

-- Deletes at most max_rows expired records and returns how many it deleted,
-- and the records of roles that no longer exist, expired or not: no one can
-- replay them, and a role created later under the same OID (once the OID
-- counter wraps around) would otherwise inherit them.  Records of every role
-- are purged, so PUBLIC may not call it: a DBA runs it, or grants it, or
-- schedules it with pg_cron.  The cutoff is read once, so that the index on
-- (owner, expires_at) serves the lookups.
CREATE FUNCTION idem.purge(max_rows integer DEFAULT 10000)
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

REVOKE ALL ON FUNCTION idem.purge(integer) FROM PUBLIC;

COMMENT ON FUNCTION idem.purge(integer) IS
    'delete at most max_rows expired idempotency records, and the records of dropped roles; returns how many were deleted';

-- DynamoDB sync
--
-- With idem.dynamodb_table set, every first execution also queues its
-- outcome here, in the caller's transaction: the row commits or vanishes
-- with the record.  The sync worker (shared_preload_libraries = 'idem')
-- delivers the rows of the database named by idem.dynamodb_database as
-- Powertools idempotency items.  States: pending (waiting or on the wire),
-- delivered, failed (permanent error; see idem.sync_retry_failed()),
-- conflict (the item holds another outcome; remote_outcome shows it).
--
-- idem.claim, idem.extend, idem.release and idem.complete queue a row too,
-- with the claim's fencing token: status INPROGRESS with the lease's end in
-- in_progress_expiration (release: the moment of release) and no outcome,
-- or COMPLETED with the outcome.  Rows of idempotent_call have no token and
-- are always COMPLETED.  Lease rows of one key may land in any order: the
-- item keeps the highest (token, id), so the newest state wins.
CREATE TABLE idem.sync_outbox (
    id bigint GENERATED ALWAYS AS IDENTITY,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    expires_at timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    delivered_at timestamptz,
    token bigint,
    in_progress_expiration timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    owner regrole NOT NULL,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'failed', 'conflict')),
    status text NOT NULL DEFAULT 'COMPLETED'
        CHECK (status IN ('INPROGRESS', 'COMPLETED')),
    key_prefix text NOT NULL,
    key text COLLATE "C" NOT NULL,
    outcome jsonb,
    remote_outcome jsonb,
    last_error text,
    -- arbiter mode: the pg_claim of the DynamoDB item this row completes
    arbiter_claim text,
    CONSTRAINT sync_outbox_pkey PRIMARY KEY (id),
    -- a COMPLETED item carries an outcome, an INPROGRESS one a lease end;
    -- only lease rows may be INPROGRESS
    CONSTRAINT sync_outbox_status CHECK (
        CASE status
            WHEN 'COMPLETED' THEN outcome IS NOT NULL AND in_progress_expiration IS NULL
            ELSE outcome IS NULL AND in_progress_expiration IS NOT NULL AND token IS NOT NULL
        END)
) USING heap;

CREATE INDEX sync_outbox_due ON idem.sync_outbox (next_attempt_at, id)
    WHERE state = 'pending';

REVOKE ALL ON TABLE idem.sync_outbox FROM PUBLIC;

COMMENT ON TABLE idem.sync_outbox IS
    'outcomes and claim states queued for DynamoDB, written in the transaction that recorded them';

CREATE FUNCTION idem.sync_worker_state(OUT worker_pid integer, OUT in_flight integer,
                                       OUT requests_sent bigint, OUT last_error text,
                                       OUT last_error_at timestamptz,
                                       OUT claim_deletes_pending integer,
                                       OUT setup_problem text)
RETURNS record
AS 'MODULE_PATHNAME', 'idem_sync_worker_state_1_1'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;

REVOKE ALL ON FUNCTION idem.sync_worker_state() FROM PUBLIC;

CREATE FUNCTION idem.sync_wakeup()
RETURNS void
AS 'MODULE_PATHNAME', 'idem_sync_wakeup'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

REVOKE ALL ON FUNCTION idem.sync_wakeup() FROM PUBLIC;

COMMENT ON FUNCTION idem.sync_wakeup() IS
    'wake the DynamoDB sync worker when the current transaction commits';

CREATE FUNCTION idem.sync_item_id(key_prefix text, key text)
RETURNS text
AS 'MODULE_PATHNAME', 'idem_sync_item_id'
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

COMMENT ON FUNCTION idem.sync_item_id(text, text) IS
    'the Powertools idempotency id of a key: prefix#base64(md5(JSON string of the key))';

CREATE FUNCTION idem.sync_put_item_request(key_prefix text, key text, outcome jsonb,
                                           expires_at timestamptz)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'idem_sync_put_item_request'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

COMMENT ON FUNCTION idem.sync_put_item_request(text, text, jsonb, timestamptz) IS
    'the conditional DynamoDB PutItem request the sync worker sends for an outcome';

-- Requeue the outbox rows that failed permanently (and, if asked, the
-- conflicts), once their cause is fixed.  Returns how many were requeued.
CREATE FUNCTION idem.sync_retry_failed(include_conflicts boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    requeued bigint;
BEGIN
    UPDATE idem.sync_outbox
       SET state = 'pending', next_attempt_at = clock_timestamp(),
           last_error = NULL, remote_outcome = NULL
     WHERE state = 'failed' OR (include_conflicts AND state = 'conflict');
    GET DIAGNOSTICS requeued = ROW_COUNT;
    IF requeued > 0 THEN
        PERFORM idem.sync_wakeup();
    END IF;
    RETURN requeued;
END
$$;

REVOKE ALL ON FUNCTION idem.sync_retry_failed(boolean) FROM PUBLIC;

COMMENT ON FUNCTION idem.sync_retry_failed(boolean) IS
    'requeue outcomes whose delivery to DynamoDB failed permanently (and conflicts, if asked)';

-- Delete outbox rows delivered more than older_than ago; returns how many.
-- The outbox keeps delivered rows until then, for inspection.
CREATE FUNCTION idem.sync_purge_delivered(older_than interval DEFAULT '1 day')
RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    purged bigint;
BEGIN
    DELETE FROM idem.sync_outbox
     WHERE state = 'delivered' AND delivered_at <= clock_timestamp() - older_than;
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END
$$;

REVOKE ALL ON FUNCTION idem.sync_purge_delivered(interval) FROM PUBLIC;

COMMENT ON FUNCTION idem.sync_purge_delivered(interval) IS
    'delete outbox rows delivered to DynamoDB more than older_than ago';

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
-- Untyped arguments
-- ---------------------------------------------------------------------

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
-- Monitoring
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
