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
