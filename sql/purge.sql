-- idem.purge reads what it deletes, not the whole key table: it walks the
-- roles that own records and their expired records through the index on
-- (owner, expires_at).  With 100000 live records and 50 expired ones the
-- planner picks that index by itself; pg_stat_xact_user_tables counts the
-- scans of the purging transaction.
INSERT INTO idem.records (request_hash, created_at, expires_at, owner, key, outcome)
SELECT g, clock_timestamp(), clock_timestamp() + interval '1 day', current_user::regrole,
       'purge-live-' || g, '{}'
  FROM generate_series(1, 100000) g;
INSERT INTO idem.records (request_hash, created_at, expires_at, owner, key, outcome)
SELECT g, clock_timestamp() - interval '2 days', clock_timestamp() - interval '1 day', current_user::regrole,
       'purge-old-' || g, '{}'
  FROM generate_series(1, 50) g;

-- Records of a dropped role are purged too, expired or not: no one can
-- replay them, and a role created later under the same OID would inherit
-- them.  (roles.sql dropped regress_idem_alice and regress_idem_bob, whose
-- records are still here as well.)
CREATE ROLE regress_idem_gone;
GRANT USAGE ON SCHEMA idem TO regress_idem_gone;
SET ROLE regress_idem_gone;
SELECT idem.idempotent_call('gone-1', 't.place_order(jsonb)', '{"sku": 1}'::jsonb) IS NOT NULL AS recorded;
SELECT state FROM idem.claim('gone-2', NULL, '1 hour');
RESET ROLE;
SELECT oid AS gone_oid FROM pg_roles WHERE rolname = 'regress_idem_gone' \gset
REVOKE USAGE ON SCHEMA idem FROM regress_idem_gone;
DROP ROLE regress_idem_gone;
SELECT count(*) AS gone_records FROM idem.records WHERE owner::oid = :gone_oid;
SELECT count(*) AS orphaned_records
  FROM idem.records r WHERE NOT EXISTS (SELECT FROM pg_roles a WHERE a.oid = r.owner);
ANALYZE idem.records;

-- (the counts of one transaction: the backend flushes them only between
-- transactions, and may still hold those of earlier ones)
BEGIN;
SELECT seq_scan AS seq_before, idx_scan AS idx_before
  FROM pg_stat_xact_user_tables WHERE relid = 'idem.records'::regclass \gset
SELECT idem.purge(10) AS purged;
SELECT idem.purge() AS purged;
SELECT idem.purge() AS purged_again;
SELECT seq_scan - :seq_before AS seq_scans, idx_scan > :idx_before AS used_an_index
  FROM pg_stat_xact_user_tables WHERE relid = 'idem.records'::regclass;
COMMIT;
SELECT count(*) AS orphaned_records
  FROM idem.records r WHERE NOT EXISTS (SELECT FROM pg_roles a WHERE a.oid = r.owner);
SELECT count(*) AS expired_records FROM idem.records WHERE expires_at <= clock_timestamp();
SELECT count(*) AS live_records_kept FROM idem.records WHERE key LIKE 'purge-live-%';

-- amcheck finds every row of the table in the new index
CREATE EXTENSION amcheck;
SELECT bt_index_check('idem.records_owner_expires_at', true);
DROP EXTENSION amcheck;

DELETE FROM idem.records WHERE key LIKE 'purge-live-%';
