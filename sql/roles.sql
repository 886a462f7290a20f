-- Rule 7: a record belongs to the role that made the call; fn runs with the
-- caller's privileges; the key table is closed to PUBLIC; search_path cannot
-- redirect idem.
CREATE ROLE regress_idem_alice;
CREATE ROLE regress_idem_bob;
GRANT USAGE ON SCHEMA idem TO regress_idem_alice, regress_idem_bob;

CREATE FUNCTION t.whoami(note text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO t.effects (fn, arg) VALUES ('whoami', current_user);
    RETURN jsonb_build_object('user', current_user, 'note', note);
END $$;

-- Same key, two roles: each gets its own record and outcome.
SET ROLE regress_idem_alice;
SELECT idem.idempotent_call('shared-key', 't.whoami(text)', 'hello'::text) AS alice_first;
SELECT idem.idempotent_call('shared-key', 't.whoami(text)', 'hello'::text) AS alice_replay;
RESET ROLE;
SET ROLE regress_idem_bob;
SELECT idem.idempotent_call('shared-key', 't.whoami(text)', 'hello'::text) AS bob_first;
SELECT idem.last_call_replayed() AS bob_replayed;
-- Another role's record does not block a different request under the same key.
SELECT idem.idempotent_call('alice-only', 't.whoami(text)', 'bob'::text) AS bob_own;
RESET ROLE;
SELECT arg, count(*) FROM t.effects WHERE fn = 'whoami' GROUP BY arg ORDER BY arg;
SELECT owner::text, key, outcome FROM idem.records WHERE key IN ('shared-key', 'alice-only') ORDER BY 1, 2;

-- Each role sees only its own records in idem.my_records, and nothing of
-- idem.records itself.
SET ROLE regress_idem_alice;
SELECT key, status, outcome FROM idem.my_records ORDER BY key;
SELECT t.try($$SELECT count(*) FROM idem.records$$);
SELECT t.try($$INSERT INTO idem.records (request_hash, created_at, expires_at, owner, key, outcome) VALUES (1, now(), now(), 'regress_idem_alice', 'forged', '{}')$$);
SELECT t.try($$DELETE FROM idem.records$$);
SELECT t.try($$SELECT idem.purge()$$);
-- A leaky function in a WHERE clause sees no other role's rows.
CREATE FUNCTION pg_temp.leak(k text) RETURNS boolean LANGUAGE plpgsql COST 0.0001 AS $$
BEGIN RAISE NOTICE 'saw key %', k; RETURN true; END $$;
SELECT key FROM idem.my_records WHERE pg_temp.leak(key);
RESET ROLE;

-- Replaying requires EXECUTE on fn.
REVOKE EXECUTE ON FUNCTION t.whoami(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION t.whoami(text) TO regress_idem_bob;
SET ROLE regress_idem_alice;
SELECT t.try($$SELECT idem.idempotent_call('shared-key', 't.whoami(text)', 'hello'::text)$$);
SELECT t.try($$SELECT idem.idempotent_call('alice-new', 't.whoami(text)', 'hello'::text)$$);
RESET ROLE;
SET ROLE regress_idem_bob;
SELECT idem.idempotent_call('shared-key', 't.whoami(text)', 'hello'::text) AS bob_still_replays;
RESET ROLE;
GRANT EXECUTE ON FUNCTION t.whoami(text) TO PUBLIC;

-- idempotent_call is not SECURITY DEFINER: fn runs as the caller.  A
-- SECURITY DEFINER fn runs as its own owner, as it would if called directly.
SELECT proname, prosecdef FROM pg_proc
 WHERE pronamespace = 'idem'::regnamespace ORDER BY proname, pronargs;
CREATE FUNCTION t.definer_whoami() RETURNS text SECURITY DEFINER LANGUAGE sql AS $$ SELECT current_user::text $$;
GRANT EXECUTE ON FUNCTION t.definer_whoami() TO PUBLIC;
SET ROLE regress_idem_alice;
SELECT idem.idempotent_call('definer', 't.definer_whoami()') AS definer_result;
-- The record is the caller's, not the definer's.
SELECT key AS alice_owns FROM idem.my_records WHERE key = 'definer';
RESET ROLE;

-- A hostile search_path changes nothing: idem resolves its own objects by
-- schema, and the view and purge qualify every name.
CREATE SCHEMA evil;
CREATE TABLE evil.records (LIKE idem.records);
CREATE FUNCTION evil.jsonb_hash_extended(jsonb, bigint) RETURNS bigint LANGUAGE sql AS $$ SELECT 0::bigint $$;
CREATE FUNCTION evil.current_user() RETURNS name LANGUAGE sql AS $$ SELECT 'regress_idem_bob'::name $$;
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'infinity'::timestamptz $$;
CREATE OPERATOR evil.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = pg_catalog.oidne);
GRANT USAGE ON SCHEMA evil TO PUBLIC;
SET ROLE regress_idem_alice;
SET search_path = evil, pg_catalog, public;
SELECT idem.idempotent_call('shared-key', 't.whoami(text)', 'hello'::text) AS alice_replay_evil_path;
SELECT key FROM idem.my_records ORDER BY key;
RESET search_path;
RESET ROLE;
SELECT count(*) AS evil_rows FROM evil.records;
DROP SCHEMA evil CASCADE;

DROP OWNED BY regress_idem_alice, regress_idem_bob;
DROP ROLE regress_idem_alice, regress_idem_bob;
