/* idem--1.0--1.1.sql: update idem 1.0 to 1.1 */

\echo Use "ALTER EXTENSION idem UPDATE TO '1.1'" to load this file. \quit

-- Every object this script creates or changes is defined exactly as in
-- idem--1.1.sql; t/040_upgrade.pl compares the two from the catalogs.

-- ---------------------------------------------------------------------
-- hardening
-- ---------------------------------------------------------------------

-- ---------------------------------------------------------------------
-- DynamoDB sync status
-- ---------------------------------------------------------------------

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
