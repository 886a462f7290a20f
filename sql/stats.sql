-- idem.stats without shared_preload_libraries (as these suites run): reading
-- the counters fails with a hint, and calls keep working.  The counters
-- themselves are checked in t/033_stats.pl, which preloads idem.
CREATE FUNCTION t.stats_echo(p jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT p';
SELECT idem.idempotent_call('stats-1', 't.stats_echo(jsonb)', '{"n": 1}'::jsonb);
SELECT idem.idempotent_call('stats-1', 't.stats_echo(jsonb)', '{"n": 1}'::jsonb), idem.last_call_replayed();
SELECT t.try('SELECT * FROM idem.stats');
SELECT t.try('SELECT idem.stats_reset()');

-- the view is readable by PUBLIC, the reset is not
SELECT grantee, privilege_type FROM information_schema.role_table_grants
 WHERE table_schema = 'idem' AND table_name = 'stats' AND grantee = 'PUBLIC';
SELECT has_function_privilege('public', 'idem.stats_reset()', 'EXECUTE') AS public_may_reset;

-- idem.track and idem.log_events are superuser settings; idem.stats_max
-- exists only when idem is preloaded
SELECT name, setting, context FROM pg_settings
 WHERE name IN ('idem.track', 'idem.log_events', 'idem.stats_max') ORDER BY name;
SET idem.log_events = 'replays, Conflicts';
SHOW idem.log_events;
SET idem.log_events = 'all';
SET idem.log_events = 'none';
SET idem.log_events = 'replays, nothing';
SET idem.log_events = 'none, replays';
RESET idem.log_events;
