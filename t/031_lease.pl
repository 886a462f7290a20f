# Copyright (c) 2026, the idem developers

# The lease API beyond one session: exactly one holder per key among many
# concurrent clients, directly and through pgbouncer in transaction pooling;
# a crashed holder (the application) frees its key when its lease lapses,
# never earlier, and hands its checkpoint on; claims and outcomes survive an
# immediate restart exactly as committed, even under synchronous_commit = off;
# an outcome too large for the DynamoDB sync is refused.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time);
use IdemTestUtil;

my $node = NewNode('lease');
# a backend notices at once that its client went away
$node->append_conf('postgresql.conf', "client_connection_check_interval = '100ms'");
# an asynchronous commit stays unflushed for seconds, so that an immediate
# stop loses it: what survives below is what idem made durable
$node->append_conf('postgresql.conf', "wal_writer_delay = '10s'\nwal_writer_flush_after = '1GB'");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION idem;
	CREATE ROLE worker LOGIN;
	GRANT USAGE ON SCHEMA idem TO worker;
	-- the external effect: one row per execution of a holder's work
	CREATE TABLE ledger (key text NOT NULL, token bigint NOT NULL);
	GRANT INSERT, SELECT ON ledger TO worker;
});

# Each transaction of this pgbench script is one retry of a request: claim,
# and if this client now holds the key, do the work in a transaction of its
# own (the ledger row), then complete with the token.  Concurrent retries
# wait in claim for the holder and replay its outcome.
my $script = PostgreSQL::Test::Utils::tempdir() . '/retry.sql';
append_to_file($script, q{
\set k random(1, 40)
SELECT (state = 'run')::int AS run, token AS tok FROM idem.claim('k' || :prefix::text || '-' || :k::text, NULL, '1 min') \gset
\if :run
INSERT INTO ledger VALUES ('k' || :prefix::text || '-' || :k::text, :tok);
SELECT pg_sleep(0.002);
SELECT idem.complete('k' || :prefix::text || '-' || :k::text, :tok, jsonb_build_object('token', :tok::bigint));
\endif
});

# Run 8 clients of the script against connstr and check the ledger: one
# execution per key, by the token whose outcome was recorded.
sub RetryStorm
{
	my ($connstr, $run, $label, @pgbench_opts) = @_;
	my $prefix = "k$run-";
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run([ 'pgbench', '-n', '-c', '8', '-j', '2', '-t', '60', @pgbench_opts,
		'-D', "prefix=$run", '-f', $script, $connstr ], '>', \$out, '2>', \$err);
	ok($ok, "$label: every retry finished without error") or diag("$out\n$err");
	my $keys = $node->safe_psql('postgres', qq{SELECT count(DISTINCT key) FROM ledger WHERE key LIKE '$prefix%'});
	cmp_ok($keys, '>=', 30, "$label: the retries reached most keys");
	is($node->safe_psql('postgres',
		qq{SELECT count(*) FROM (SELECT key FROM ledger WHERE key LIKE '$prefix%' GROUP BY key HAVING count(*) > 1) d}),
		'0', "$label: no key was worked on twice");
	is($node->safe_psql('postgres', qq{
		SELECT count(*) FROM ledger l JOIN idem.records r ON r.key = l.key
		 WHERE l.key LIKE '$prefix%' AND r.outcome ->> 'token' = l.token::text AND r.token = l.token}),
		$keys, "$label: every key's recorded outcome is its one holder's");
}

RetryStorm($node->connstr('postgres') . ' user=worker', 1, 'direct');

SKIP:
{
	skip 'pgbouncer is not installed (scripts/setup.sh installs it)', 4
	  unless system('sh', '-c', 'command -v pgbouncer >/dev/null') == 0;
	# A claim waiting for a holder occupies a server session, and the holder
	# needs one for complete: a pool as large as the clients keeps the
	# holders from starving behind their waiters.  The sessions are still
	# shared: each transaction takes whichever one is free.
	my ($bouncer, $connstr) = StartPgbouncer($node, 8, 'worker');
	# pgbench's default simple protocol: no prepared statements to lose
	RetryStorm($connstr->('worker'), 2, 'through pgbouncer');
	$bouncer->signal('INT');
	$bouncer->finish;
}

# A holder that dies (the application, killed with SIGKILL while it works)
# keeps the key until its lease lapses: not a moment earlier may anyone else
# claim it, and the next holder resumes from its checkpoint.
my ($hout, $herr) = ('', '');
# from a file: IPC::Run feeds a scalar only while the harness is pumped
my $holder_sql = PostgreSQL::Test::Utils::tempdir() . '/holder.sql';
append_to_file($holder_sql, q{
SELECT token FROM idem.claim('crash-1', '{"amount": 5}', '3 s') \gset
SELECT idem.checkpoint('crash-1', :token, 'charged', '{"charge": "ch_9"}');
SELECT pg_sleep(600);
});
my $holder = IPC::Run::start([ 'psql', '-X', '-qAt', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'),
	'-f', $holder_sql ], '>', \$hout, '2>', \$herr);
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE '%pg_sleep(600)%'})
  or die "the holder never started: $herr";
my ($old_token, $lease_end) = split /\|/, $node->safe_psql('postgres',
	q{SELECT token, extract(epoch FROM lease_expires_at) FROM idem.records WHERE key = 'crash-1'});
$holder->signal('KILL');
eval { $holder->finish };

my ($ret, $out, $err) = $node->psql('postgres',
	qq{\\set VERBOSITY verbose\nSET idem.wait_timeout = 0;\nSELECT * FROM idem.claim('crash-1', '{"amount": 5}');});
like($err, qr/IK409.*claimed by another holder/s, 'the dead holder still holds the key while its lease is live');
like($err, qr/DETAIL:.*lease ends at/s, 'the error says when the lease ends');

# A claim that waits gets the key the moment the lease lapses, not before.
my $row = $node->safe_psql('postgres', q{
	SET idem.wait_timeout = '20s';
	SELECT state, token, recovery_point, recovery_data, extract(epoch FROM clock_timestamp())
	  FROM idem.claim('crash-1', '{"amount": 5}')});
my ($state, $new_token, $point, $data, $claimed_at) = split /\|/, $row;
is($state, 'run', 'the key was claimed again after the lease lapsed');
cmp_ok($claimed_at, '>=', $lease_end, 'not before the lease ended');
cmp_ok($new_token, '>', $old_token, 'with a larger token');
is("$point|$data", 'charged|{"charge": "ch_9"}', "and the dead holder's checkpoint");
($ret, $out, $err) = $node->psql('postgres',
	qq{\\set VERBOSITY verbose\nSELECT idem.complete('crash-1', $old_token, '"from the dead"');});
like($err, qr/IK412/, "the dead holder's token can no longer complete");

# Claims and outcomes survive an immediate restart exactly as committed, also
# when the session runs with synchronous_commit = off.
$node->safe_psql('postgres', q{
	SET synchronous_commit = off;
	SELECT token FROM idem.claim('durable-1', NULL, '1 hour') \gset
	SELECT idem.checkpoint('durable-1', :token, 'step-1', '{"n": 1}');
	SELECT token FROM idem.claim('durable-2', NULL, '1 hour') \gset
	SELECT idem.complete('durable-2', :token, '{"done": true}');
	SELECT token FROM idem.claim('durable-3', NULL, '1 hour') \gset
	SELECT idem.release('durable-3', :token);
	SELECT token FROM idem.claim('durable-4', NULL, '1 hour') \gset
	SELECT idem.extend('durable-4', :token, '2 hours');
});
my $durable_sql = q{SELECT string_agg(format('%s %s %s %s %s %s', key, token, outcome, recovery_point,
	recovery_data, lease_expires_at), E'\n' ORDER BY key) FROM idem.records WHERE key LIKE 'durable-%'};
my $before = $node->safe_psql('postgres', $durable_sql);
my $max_token = $node->safe_psql('postgres', 'SELECT max(token) FROM idem.records');
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', $durable_sql), $before, 'claims, checkpoints, outcomes and leases survived the immediate restart');
my $after_token = $node->safe_psql('postgres', q{SELECT token FROM idem.claim('durable-5')});
cmp_ok($after_token, '>', $max_token, 'tokens given out after the restart are larger than every one before');
is($node->safe_psql('postgres', q{SELECT state || ' ' || outcome FROM idem.claim('durable-2')}),
	'replay {"done": true}', 'a completed key replays after the restart');

# With the DynamoDB sync on, complete refuses an outcome the item could not
# hold, and changes nothing (the sync needs a table name only to queue).
$node->append_conf('postgresql.conf', "idem.dynamodb_table = 'idem-lease-test'");
$node->reload;
my $token = $node->safe_psql('postgres', q{SELECT token FROM idem.claim('big-1')});
($ret, $out, $err) = $node->psql('postgres',
	qq{\\set VERBOSITY verbose\nSELECT idem.complete('big-1', $token, jsonb_build_object('blob', repeat('x', 500000)));});
like($err, qr/54000.*too large for the DynamoDB sync/s, 'an outcome over the item limit is refused with 54000');
is($node->safe_psql('postgres', q{SELECT outcome IS NULL FROM idem.records WHERE key = 'big-1'}),
	't', 'and the claim is unchanged');
$node->safe_psql('postgres', qq{SELECT idem.complete('big-1', $token, jsonb_build_object('blob', repeat('x', 1000)))});
is($node->safe_psql('postgres', q{SELECT length(outcome ->> 'blob') FROM idem.records WHERE key = 'big-1'}),
	'1000', 'a smaller outcome then completes the claim');

$node->stop;
done_testing();
