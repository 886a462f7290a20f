# Copyright (c) 2026, the idem developers


# 033_stats.pl
#	idem.stats: every counter moves by the event it names and by nothing
#	else (local mode; t/109_stats_arbiter.pl covers arbiter mode).  Each
#	step compares the whole view before and after, so a counter that moves
#	where it should not fails the step.  Also: concurrent waiters, a
#	backend terminated mid-call, a lapsed lease taken over, the role
#	isolation of the rows, a reset, idem.track = off, idem.log_events, a
#	clean restart (kept) and a crash (lost), eviction at idem.stats_max, and
#	the error without shared_preload_libraries.

use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes ();
use IdemTestUtil;
use StatsTest;

my $node = NewNode('stats');
# Installed below IDEM_DESTDIR: the preloaded library is found from there.
if ($ENV{IDEM_DESTDIR})
{
	my $pkglibdir = `pg_config --pkglibdir`;
	chomp $pkglibdir;
	$node->append_conf('postgresql.conf',
		qq{dynamic_library_path = '$ENV{IDEM_DESTDIR}$pkglibdir:\$libdir'});
}
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'idem'
restart_after_crash = on
idem.wait_timeout = '60s'
});
$node->start;
LoadShop($node);
StatsTest::watch($node);
$node->safe_psql('postgres', q{
CREATE FUNCTION shop.fail(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'fail %', payload;
END $$;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE watcher LOGIN IN ROLE pg_read_all_stats;
GRANT USAGE ON SCHEMA idem TO alice, bob, watcher;
});

# The wait times of a row.
sub wait_times
{
	my ($row) = @_;
	return split /\|/, $node->safe_psql('postgres', qq{
		SELECT total_wait_time, max_wait_time FROM idem.stats
		 WHERE api || ' ' || coalesce(fn::text, '-') || ' ' || pg_get_userbyid(userid) = '$row'});
}

my $place = 'idempotent_call shop.place_order(jsonb) postgres';
my $fail = 'idempotent_call shop.fail(jsonb) postgres';
my $lease = 'lease - postgres';

sub call
{
	my ($key, $payload, $fn, @sql) = @_;
	$fn //= 'shop.place_order(jsonb)';
	return $node->psql('postgres',
		join(';', @sql, qq{SELECT idem.idempotent_call('$key', '$fn', '$payload'::jsonb)}));
}

# Start a call in the background; returns its harness and output refs.
sub start_call
{
	my ($sql, %opt) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-At', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', \$out, '2>', \$err);
	return ($h, \$out, \$err);
}

sub wait_for_sleep
{
	my ($like) = @_;
	$node->poll_query_until('postgres',
		qq{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE '%$like%'})
	  or die "the call $like never started";
}

# --- idempotent_call -------------------------------------------------

step('a first call that commits is a call and an execution',
	sub { call('k1', '{"n": 1}') }, $place => { calls => 1, executions => 1 });
step('a replay is a call and a replay',
	sub { call('k1', '{"n": 1}') }, $place => { calls => 1, replays => 1 });
step('a key reused with other arguments is a mismatch (IK422)',
	sub { call('k1', '{"n": 2}') }, $place => { calls => 1, mismatches => 1 });
step('a first call whose transaction rolls back is an error',
	sub { $node->psql('postgres', q{BEGIN; SELECT idem.idempotent_call('k2', 'shop.place_order(jsonb)', '{}'::jsonb); ROLLBACK}) },
	$place => { calls => 1, errors => 1 });
step('a function that raises is an error',
	sub { call('k3', '{}', 'shop.fail(jsonb)') }, $fail => { calls => 1, errors => 1 });
step('a rolled-back savepoint makes its first run an error; the other commits',
	sub {
		$node->safe_psql('postgres', q{
			BEGIN;
			SAVEPOINT s;
			SELECT idem.idempotent_call('k4', 'shop.place_order(jsonb)', '{}'::jsonb);
			ROLLBACK TO s;
			SELECT idem.idempotent_call('k5', 'shop.place_order(jsonb)', '{}'::jsonb);
			COMMIT});
	},
	$place => { calls => 2, errors => 1, executions => 1 });
step('a failure caught by an exception block is an error, the call after it an execution',
	sub {
		$node->safe_psql('postgres', q{
			DO $$
			BEGIN
				BEGIN
					PERFORM idem.idempotent_call('k6', 'shop.fail(jsonb)', '{}'::jsonb);
				EXCEPTION WHEN OTHERS THEN NULL;
				END;
				PERFORM idem.idempotent_call('k7', 'shop.place_order(jsonb)', '{}'::jsonb);
			END $$});
	},
	$fail => { calls => 1, errors => 1 }, $place => { calls => 1, executions => 1 });
step('a replay in a transaction that rolls back still counts',
	sub { $node->psql('postgres', q{BEGIN; SELECT idem.idempotent_call('k1', 'shop.place_order(jsonb)', '{"n": 1}'::jsonb); ROLLBACK}) },
	$place => { calls => 1, replays => 1 });
step('a call with idem.wait_timeout = 0 on a busy key is a timeout without a wait',
	sub {
		my ($h) = start_call(q{SELECT idem.idempotent_call('k8', 'shop.place_order(jsonb)', '{"sleep": 2}'::jsonb)});
		wait_for_sleep('k8');
		my ($ret, $out, $err) = call('k8', '{"sleep": 2}', undef, q{SET idem.wait_timeout = 0});
		like($err, qr/is in use by another transaction/, 'IK409 without waiting');
		$h->finish;
	},
	$place => { calls => 2, executions => 1, timeouts => 1 });

# Concurrent waiters: one runs, three wait and replay.
step('three concurrent waiters each wait once and replay after the wait',
	sub {
		my ($h) = start_call(q{SELECT idem.idempotent_call('k9', 'shop.place_order(jsonb)', '{"sleep": 2}'::jsonb)});
		wait_for_sleep('k9');
		my @w = map { [ start_call(q{SELECT idem.idempotent_call('k9', 'shop.place_order(jsonb)', '{"sleep": 2}'::jsonb) ->> 'order'}) ] } 1 .. 3;
		$node->poll_query_until('postgres',
			q{SELECT count(*) = 3 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%k9%'})
		  or die 'the waiters never waited';
		$h->finish;
		$_->[0]->finish for @w;
		is(scalar(grep { ${ $_->[1] } =~ /^\d+$/ } @w), 3, 'the three waiters got the outcome');
	},
	$place => { calls => 4, executions => 1, replays => 3, replays_after_wait => 3, waits => 3 });
my ($total, $max) = wait_times($place);
ok($max > 200 && $max < 60000, "the longest wait is the writer's sleep ($max ms)");
ok($total >= 3 * 200, "the wait time adds up over the waiters ($total ms)");

step('a wait that runs out is a wait and a timeout',
	sub {
		my ($h) = start_call(q{SELECT idem.idempotent_call('k10', 'shop.place_order(jsonb)', '{"sleep": 3}'::jsonb)});
		wait_for_sleep('k10');
		my ($ret, $out, $err) = call('k10', '{"sleep": 3}', undef, q{SET idem.wait_timeout = '300ms'});
		like($err, qr/did not finish within idem.wait_timeout/, 'IK409 after waiting');
		$h->finish;
	},
	$place => { calls => 2, executions => 1, waits => 1, timeouts => 1 });
my ($total2, $max2) = wait_times($place);
ok($total2 - $total >= 250, 'the timed-out wait added its time (' . ($total2 - $total) . ' ms)');

step('a backend terminated while fn runs counts its call as an error; its waiter runs fn',
	sub {
		my ($h, $out, $err) = start_call(q{SELECT idem.idempotent_call('k11', 'shop.place_order(jsonb)', '{"sleep": 600}'::jsonb)});
		wait_for_sleep('k11');
		my ($w) = start_call(q{SELECT idem.idempotent_call('k11', 'shop.place_order(jsonb)', '{"sleep": 600}'::jsonb)});
		$node->poll_query_until('postgres',
			q{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%k11%'})
		  or die 'the waiter never waited';
		$node->safe_psql('postgres',
			q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE '%k11%'});
		$h->finish;
		like($$err, qr/terminating connection/, 'the first call was terminated');
		# the waiter now runs fn and sleeps: terminate it too
		wait_for_sleep('k11');
		$node->safe_psql('postgres',
			q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE '%k11%'});
		$w->finish;
	},
	$place => { calls => 2, errors => 2, waits => 1 });

# --- the lease API ---------------------------------------------------

my $token;
step('a claim is a call of the lease API; checkpoint and extend count nothing',
	sub {
		($token) = split /\|/, $node->safe_psql('postgres',
			q{SELECT token FROM idem.claim('L1', '{"r": 1}', '1 minute')});
		$node->safe_psql('postgres', qq{SELECT idem.checkpoint('L1', $token, 'charged', '{}')});
		$node->safe_psql('postgres', qq{SELECT idem.extend('L1', $token, '1 minute')});
	},
	$lease => { calls => 1 });
step('a stale token is counted (IK412)',
	sub { $node->psql('postgres', qq{SELECT idem.complete('L1', $token + 1000, '{}')}) },
	$lease => { stale_tokens => 1 });
step('a complete that rolls back is an error',
	sub { $node->psql('postgres', qq{BEGIN; SELECT idem.complete('L1', $token, '{"done": 1}'); ROLLBACK}) },
	$lease => { errors => 1 });
step('a complete that commits is an execution',
	sub { $node->safe_psql('postgres', qq{SELECT idem.complete('L1', $token, '{"done": 1}')}) },
	$lease => { executions => 1 });
step('a claim of a completed key is a replay',
	sub { $node->safe_psql('postgres', q{SELECT state FROM idem.claim('L1', '{"r": 1}', '1 minute')}) },
	$lease => { calls => 1, replays => 1 });
step('a claim with another request is a mismatch',
	sub { $node->psql('postgres', q{SELECT state FROM idem.claim('L1', '{"r": 2}', '1 minute')}) },
	$lease => { calls => 1, mismatches => 1 });
step('a claim that waits out a live lease is a wait and a timeout',
	sub {
		$node->safe_psql('postgres', q{SELECT token FROM idem.claim('L2', '{}', '1 minute')});
		my ($ret, $out, $err) = $node->psql('postgres',
			q{SET idem.wait_timeout = '300ms'; SELECT state FROM idem.claim('L2', '{}', '1 minute')});
		like($err, qr/is claimed by another holder/, 'IK409 on a live lease');
	},
	$lease => { calls => 2, waits => 1, timeouts => 1 });
step('a claim of a lapsed lease is a takeover, resuming at its checkpoint',
	sub {
		my $t = $node->safe_psql('postgres', q{SELECT token FROM idem.claim('L3', '{}', '100ms')});
		$node->safe_psql('postgres', qq{SELECT idem.checkpoint('L3', $t, 'step1', '{}')});
		Time::HiRes::sleep(0.5);
		is($node->safe_psql('postgres', q{SELECT state || ' ' || recovery_point FROM idem.claim('L3', '{}', '1 minute')}),
			'run step1', 'the takeover resumes at step1');
	},
	$lease => { calls => 2, takeovers => 1, resumptions => 1 });
step('a release is counted; a claim after it resumes without a takeover',
	sub {
		my $t = $node->safe_psql('postgres', q{SELECT token FROM idem.claim('L4', '{}', '1 minute')});
		$node->safe_psql('postgres', qq{SELECT idem.checkpoint('L4', $t, 'half', '{}')});
		$node->safe_psql('postgres', qq{SELECT idem.release('L4', $t)});
		$node->safe_psql('postgres', q{SELECT state FROM idem.claim('L4', '{}', '1 minute')});
	},
	$lease => { calls => 2, releases => 1, resumptions => 1 });

# --- roles -----------------------------------------------------------

step('each role has its own rows',
	sub {
		$node->safe_psql('postgres', q{SELECT idem.idempotent_call('r1', 'shop.place_order(jsonb)', '{}'::jsonb)}, extra_params => [ '-U', 'alice' ]);
		$node->safe_psql('postgres', q{SELECT idem.idempotent_call('r1', 'shop.place_order(jsonb)', '{}'::jsonb)}, extra_params => [ '-U', 'bob' ]);
	},
	'idempotent_call shop.place_order(jsonb) alice' => { calls => 1, executions => 1 },
	'idempotent_call shop.place_order(jsonb) bob' => { calls => 1, executions => 1 });
is($node->safe_psql('postgres', q{SELECT string_agg(DISTINCT pg_get_userbyid(userid), ',') FROM idem.stats}, extra_params => [ '-U', 'alice' ]),
	'alice', 'a role sees only its own rows');
is($node->safe_psql('postgres', q{SELECT string_agg(DISTINCT pg_get_userbyid(userid), ',' ORDER BY pg_get_userbyid(userid)) FROM idem.stats}, extra_params => [ '-U', 'watcher' ]),
	'alice,bob,postgres', 'a member of pg_read_all_stats sees every row');
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT idem.stats_reset()}, extra_params => [ '-U', 'alice' ]);
like($err, qr/permission denied for function stats_reset/, 'stats_reset is not granted to PUBLIC');

# --- log_events, track, reset ----------------------------------------

my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{
	SET idem.log_events = 'replays, conflicts';
	SELECT idem.idempotent_call('secret-key-1', 'shop.place_order(jsonb)', '{}'::jsonb);
	SELECT idem.idempotent_call('secret-key-1', 'shop.place_order(jsonb)', '{}'::jsonb);
	SELECT idem.idempotent_call('x' || repeat('y', 200), 'shop.place_order(jsonb)', '{}'::jsonb);
	SELECT idem.idempotent_call('x' || repeat('y', 200), 'shop.place_order(jsonb)', '{}'::jsonb);});
$node->psql('postgres', q{SET idem.log_events = 'conflicts'; SELECT idem.idempotent_call('secret-key-1', 'shop.place_order(jsonb)', '{"other": 1}'::jsonb)});
my $log = substr(slurp_file($node->logfile), $log_offset);
like($log, qr/LOG:  idem: idempotency key "secret-key-1" replayed, role "postgres", shop\.place_order\(jsonb\)/,
	'idem.log_events = replays logs a replay with key, role and target');
like($log, qr/idempotency key "xy{99}\.\.\." replayed/, 'a long key is shortened as in messages');
like($log, qr/idem: idempotency key "secret-key-1" used for a different request \(IK422\), role "postgres"/,
	'idem.log_events = conflicts logs a mismatch');
unlike($log, qr/idem: idempotency key "secret-key-1" runs/, 'executions are not logged unless asked');
$node->safe_psql('postgres', q{SET idem.log_events = 'executions, waits'; SELECT idem.idempotent_call('logged-run', 'shop.place_order(jsonb)', '{}'::jsonb)});
like(substr(slurp_file($node->logfile), $log_offset), qr/idem: idempotency key "logged-run" runs, role "postgres", shop\.place_order\(jsonb\)/,
	'idem.log_events = executions logs a first run');
($ret, $out, $err) = $node->psql('postgres', q{SET idem.log_events = 'replays, bogus'});
like($err, qr/Unrecognized event class "bogus"/, 'an unknown event class is refused');

step('with idem.track = off nothing is counted',
	sub { $node->safe_psql('postgres', q{SET idem.track = off; SELECT idem.idempotent_call('t1', 'shop.place_order(jsonb)', '{}'::jsonb)}) });

my $reset_before = $node->safe_psql('postgres', q{SELECT max(stats_reset) FROM idem.stats});
$node->safe_psql('postgres', q{SELECT idem.stats_reset()});
is($node->safe_psql('postgres', q{SELECT sum(calls + executions + replays + waits + errors + releases) + sum(total_wait_time) + sum(max_wait_time) FROM idem.stats}),
	'0', 'a reset sets every counter to zero');
is($node->safe_psql('postgres', qq{SELECT bool_and(stats_reset > '$reset_before') FROM idem.stats}),
	't', 'a reset moves stats_reset of every row');

# --- restarts --------------------------------------------------------

call('after-reset', '{}');
$node->restart;
is($node->safe_psql('postgres', qq{SELECT calls || '/' || executions FROM idem.stats WHERE api = 'idempotent_call' AND fn = 'shop.place_order(jsonb)'::regprocedure AND userid = 'postgres'::regrole}),
	'1/1', 'the counters survive a clean restart');

my $pid = $node->safe_psql('postgres', q{SELECT pg_backend_pid()});
my ($h) = start_call(q{SELECT pg_sleep(600)});
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'});
kill 'KILL', $node->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep'});
$h->finish;
my $ready = 0;
for (1 .. 600)
{
	$ready = system('pg_isready', '-q', '-h', $node->host, '-p', $node->port) == 0;
	last if $ready;
	Time::HiRes::sleep(0.1);
}
ok($ready, 'the server recovered from a killed backend');
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem.stats}), '0', 'a crash empties idem.stats');

# --- eviction --------------------------------------------------------

$node->append_conf('postgresql.conf', 'idem.stats_max = 100');
$node->restart;
$node->safe_psql('postgres', q{
	DO $$
	BEGIN
		FOR i IN 1 .. 100 LOOP
			EXECUTE format('CREATE FUNCTION shop.f%s(p jsonb) RETURNS jsonb LANGUAGE sql AS $f$ SELECT p $f$', i);
		END LOOP;
	END $$;
	SELECT idem.idempotent_call('e-' || i, format('shop.f%s(jsonb)', i)::regprocedure, '{}'::jsonb)
	  FROM generate_series(1, 100) i WHERE i <> 37;
	SELECT idem.idempotent_call('e-' || i || '-again', format('shop.f%s(jsonb)', i)::regprocedure, '{}'::jsonb)
	  FROM generate_series(1, 100) i WHERE i <> 37;});
# a session that keeps counting into shop.f37's entry
my ($in, $bout, $berr) = ('', '', '');
my $session = IPC::Run::start([ 'psql', '-X', '-At', '-d', $node->connstr('postgres') ],
	'<', \$in, '>', \$bout, '2>', \$berr);
sub in_session
{
	my ($sql) = @_;
	$bout = '';
	$in .= "$sql;\n";
	$session->pump until $bout =~ /\n$/;
}
in_session(q{SELECT idem.idempotent_call('e-37', 'shop.f37(jsonb)', '{}'::jsonb)});
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem.stats}), '100', 'the table is full at idem.stats_max');
call('e-new', '{}');
is($node->safe_psql('postgres', q{SELECT count(*) || ' ' || count(*) FILTER (WHERE fn = 'shop.f37(jsonb)'::regprocedure) || ' ' || count(*) FILTER (WHERE fn = 'shop.place_order(jsonb)'::regprocedure) FROM idem.stats}),
	'100 0 1', 'a new entry evicts the one with the fewest calls');
in_session(q{SELECT idem.idempotent_call('e-37-again', 'shop.f37(jsonb)', '{}'::jsonb)});
is($node->safe_psql('postgres', q{SELECT count(*) || ' ' || string_agg(calls::text, ',') FILTER (WHERE fn = 'shop.f37(jsonb)'::regprocedure) || ' ' || count(*) FILTER (WHERE fn = 'shop.place_order(jsonb)'::regprocedure) FROM idem.stats}),
	'100 1 0', 'a session that counted into an evicted entry counts into a new one');
$in .= "\\q\n";
$session->finish;
$node->stop;

# --- without shared_preload_libraries --------------------------------

my $plain = NewNode('plain');
$plain->start;
$plain->safe_psql('postgres', q{CREATE EXTENSION idem; CREATE FUNCTION public.f(x int) RETURNS jsonb LANGUAGE sql AS $$ SELECT to_jsonb(x) $$});
is($plain->safe_psql('postgres', q{SELECT idem.idempotent_call('p1', 'public.f(int)', 1)}), '1', 'calls work without the preload');
($ret, $out, $err) = $plain->psql('postgres', q{SELECT * FROM idem.stats});
like($err, qr/ERROR:  idem statistics are not collected/, 'reading idem.stats without the preload is an error');
like($err, qr/HINT:  Add idem to shared_preload_libraries and restart the server\./, 'with a hint');
$plain->safe_psql('postgres', q{SET idem.log_events = 'replays'; SELECT idem.idempotent_call('p1', 'public.f(int)', 1)});
like(slurp_file($plain->logfile), qr/idem: idempotency key "p1" replayed, role "postgres", f\(integer\)/,
	'idem.log_events works without the preload');
$plain->stop;

done_testing();
