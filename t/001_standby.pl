# Copyright (c) 2026, the idem developers

# Rule 2: a replay writes nothing, so it works on a hot standby, where a
# first call fails with SQLSTATE 25006 and runs nothing.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(gettimeofday tv_interval);
use IdemTestUtil;

my $primary = NewNode('primary', allows_streaming => 1);
$primary->start;
LoadShop($primary);
$primary->safe_psql('postgres',
	q{SELECT idem.idempotent_call('order-1', 'shop.place_order(jsonb)', '{"sku": 1}'::jsonb)});
$primary->backup('backup');

my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'backup', has_streaming => 1);
$standby->start;

# A record committed after the backup reaches the standby by streaming.
my $first = $primary->safe_psql('postgres',
	q{SELECT idem.idempotent_call('order-2', 'shop.place_order(jsonb)', '{"sku": 2}'::jsonb)});
$primary->wait_for_catchup($standby);

my $call2 = q{SELECT idem.idempotent_call('order-2', 'shop.place_order(jsonb)', '{"sku": 2}'::jsonb)};
is($standby->safe_psql('postgres', "$call2; SELECT idem.last_call_replayed();"),
	"$first\nt", 'the standby replays an outcome recorded on the primary');
is($standby->safe_psql('postgres',
		q{SELECT idem.idempotent_call('order-1', 'shop.place_order(jsonb)', '{"sku": 1}'::jsonb) ->> 'order'}),
	'1', 'the standby replays an outcome from the base backup');

# A first call cannot run on the standby.
my ($rc, $out, $err) = $standby->psql('postgres',
	q{\set VERBOSITY verbose
	  SELECT idem.idempotent_call('order-3', 'shop.place_order(jsonb)', '{"sku": 3}'::jsonb)});
isnt($rc, 0, 'a first call on the standby fails');
like($err, qr/ERROR:  25006: cannot run the first call with idempotency key "order-3" in a read-only transaction/,
	'with SQLSTATE 25006, naming the key');
like($err, qr/HINT:  Send first calls to the primary server/, 'and a hint to use the primary');

# Mismatches are still detected on the standby.
($rc, $out, $err) = $standby->psql('postgres',
	q{\set VERBOSITY verbose
	  SELECT idem.idempotent_call('order-2', 'shop.place_order(jsonb)', '{"sku": 99}'::jsonb)});
like($err, qr/ERROR:  IK422: idempotency key "order-2" was already used for a different request/,
	'a mismatched replay on the standby fails with IK422');

# Nothing ran on either side.
is($primary->safe_psql('postgres', 'SELECT count(*) FROM shop.effects'), '2',
	'the primary ran the function once per key');
is($standby->safe_psql('postgres', 'SELECT count(*) FROM shop.effects'), '2',
	'the standby ran nothing');

# A first call still open on the primary whose row the standby has replayed
# already: a call of its key on the standby waits for it, as on the primary,
# bounded by idem.wait_timeout (or a lower lock_timeout, named in the detail),
# shows a wait event while it waits, and replays once the primary commits.
# The standby holds no locks of the primary's transactions, so the wait
# cannot be a lock wait there.
my $call4 = q{SELECT idem.idempotent_call('order-4', 'shop.place_order(jsonb)', '{"sku": 4}'::jsonb)};
my $holder = $primary->background_psql('postgres');
$holder->query_safe("BEGIN; $call4");
# a commit flushes the WAL of the open transaction's row too
$primary->safe_psql('postgres', 'CREATE TABLE wal_flushed_here ()');
$primary->wait_for_catchup($standby);

my $timed_out = 0;
my $start = [gettimeofday];
($rc, $out, $err) = $standby->psql('postgres',
	"\\set VERBOSITY verbose\nSET idem.wait_timeout = '500ms';\n$call4",
	timeout => 60, timed_out => \$timed_out);
my $elapsed = tv_interval($start);
ok(!$timed_out, 'a call on the standby waiting for an open first call ends');
like($err, qr/ERROR:  IK409: idempotency key "order-4" is in use by another transaction/,
	'with IK409 while the primary holds the key');
like($err, qr/DETAIL:  .*within idem\.wait_timeout \(500 ms\)/, 'naming idem.wait_timeout');
cmp_ok($elapsed, '<', 20, 'in a bounded time (idem.wait_timeout = 500ms)');
note "the standby call waited $elapsed s";

($rc, $out, $err) = $standby->psql('postgres',
	"\\set VERBOSITY verbose\nSET idem.wait_timeout = '1h';\nSET lock_timeout = '300ms';\n$call4",
	timeout => 60, timed_out => \$timed_out);
like($err, qr/DETAIL:  .*within lock_timeout \(300 ms\)/,
	'a lower lock_timeout ends the wait on the standby, and the detail names it');

# The same on the primary, where the wait is a lock wait.
($rc, $out, $err) = $primary->psql('postgres',
	"\\set VERBOSITY verbose\nSET idem.wait_timeout = '1h';\nSET lock_timeout = '300ms';\n$call4",
	timeout => 60, timed_out => \$timed_out);
like($err, qr/ERROR:  IK409: .*\nDETAIL:  .*within lock_timeout \(300 ms\)/,
	'on the primary a lower lock_timeout is named in the detail as well');

my $waiter = $standby->background_psql('postgres');
$waiter->query_safe("SET idem.wait_timeout = '120s'");
$waiter->query_until(qr/waiting/, "\\echo waiting\n$call4 ->> 'sku';\n");
ok($standby->poll_query_until('postgres',
		q{SELECT wait_event_type || '/' || wait_event FROM pg_stat_activity
		   WHERE query LIKE '%order-4%' AND pid <> pg_backend_pid()},
		'Extension/Extension'),
	'the waiting call on the standby shows a wait event');
$holder->query_safe('COMMIT');
is($waiter->query_safe('SELECT idem.last_call_replayed()'), "4\nt",
	'once the primary commits, the waiting call on the standby replays its outcome');
$waiter->quit;
$holder->quit;
is($primary->safe_psql('postgres', q{SELECT count(*) FROM shop.effects WHERE payload ->> 'sku' = '4'}), '1',
	'the open first call ran once');

# A lease function's commit waits for the synchronous standbys as
# synchronous_commit = on does, even in a session that set it off and through
# a function declared SET synchronous_commit = off, which puts the session's
# setting back before the commit.  A synchronous standby that never connects
# holds the commit until synchronous_standby_names is emptied.
$primary->safe_psql('postgres', q{
	CREATE FUNCTION shop.claim_quietly(k text) RETURNS text LANGUAGE sql
		SET synchronous_commit = off
		AS $$ SELECT state FROM idem.claim(k, NULL, '1 hour') $$});
$primary->append_conf('postgresql.conf', "synchronous_standby_names = 'nobody_connects'");
$primary->reload;
my $claimer = $primary->background_psql('postgres');
$claimer->query_safe('SET synchronous_commit = off');
$claimer->query_until(qr/claiming/, "\\echo claiming\nSELECT shop.claim_quietly('sync-standby-1');\n");
ok($primary->poll_query_until('postgres',
		q{SELECT wait_event FROM pg_stat_activity WHERE query LIKE '%claim_quietly(''sync-standby-1'')%' AND pid <> pg_backend_pid()},
		'SyncRep'),
	"a claim's commit waits for the synchronous standby under synchronous_commit = off");
$primary->adjust_conf('postgresql.conf', 'synchronous_standby_names', "''");
$primary->reload;
is($claimer->query_safe('SELECT 1'), "run\n1", 'and completes once no synchronous standby is required');
$claimer->quit;

$standby->stop;
$primary->stop;
done_testing();
