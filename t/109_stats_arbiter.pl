# Copyright (c) 2026, the idem developers


# 109_stats_arbiter.pl
#	idem.stats in arbiter mode, two clusters on one dynalite table: a won
#	DynamoDB claim, a replay of the other cluster's item, an IK409 after
#	waiting for the other cluster, an IK503, a claim of the lease API, and
#	the DynamoDB round trips with their time.  Every other counter stays.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

use SyncTest;
use StatsTest;

$ENV{AWS_ACCESS_KEY_ID} = $SyncTest::AKID;
$ENV{AWS_SECRET_ACCESS_KEY} = $SyncTest::SECRET;
delete $ENV{AWS_SESSION_TOKEN};

my $dyn = SyncTest->new;
my $conf = qq{
idem.arbiter = 'dynamodb'
idem.lease = '20s'
idem.wait_timeout = '20s'
};
my $a = $dyn->pg_node('stats_a', $conf);
my $b = $dyn->pg_node('stats_b', $conf);
for my $node ($a, $b)
{
	$node->safe_psql('postgres', q{
CREATE FUNCTION public.work(args jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_sleep(coalesce((args->>'sleep')::float8, 0));
	RETURN args;
END $$;
});
}

my $work = 'idempotent_call work(jsonb) postgres';
my $lease = 'lease - postgres';

sub call
{
	my ($node, $key, $sql) = @_;
	return $node->psql('postgres', ($sql // '') .
		qq{SELECT idem.idempotent_call('$key', 'public.work(jsonb)'::regprocedure, '{"k": "$key"}'::jsonb)});
}

StatsTest::watch($a);
step('a first call on a wins its DynamoDB claim in one request',
	sub { my ($ret, $out, $err) = call($a, 'k1'); is($ret, 0, 'the call ran') or diag($err) },
	$work => { calls => 1, executions => 1, dynamodb_claims => 1, dynamodb_requests => 1 });
is($a->safe_psql('postgres', q{SELECT total_dynamodb_time > 0 AND max_dynamodb_time > 0 AND max_dynamodb_time <= total_dynamodb_time FROM idem.stats WHERE api = 'idempotent_call'}),
	't', 'the round trip is timed');
ok(SyncTest::wait_delivered($a), 'a delivered the outcome');

StatsTest::watch($b);
step("b replays a's item after a PutItem and a GetItem",
	sub { my ($ret, $out, $err) = call($b, 'k1'); is($ret, 0, 'the call replayed') or diag($err) },
	$work => { calls => 1, replays => 1, dynamodb_replays => 1, dynamodb_requests => 2 });
step('a local replay on b asks nothing of DynamoDB',
	sub { call($b, 'k1') },
	$work => { calls => 1, replays => 1 });

step('a key a runs is waited for by b, then IK409',
	sub {
		my ($out, $err) = ('', '');
		my $h = IPC::Run::start(
			[ 'psql', '-X', '-d', $a->connstr('postgres'), '-c',
			  q{SELECT idem.idempotent_call('k2', 'public.work(jsonb)'::regprocedure, '{"sleep": 4}'::jsonb)} ],
			'>', \$out, '2>', \$err);
		$a->poll_query_until('postgres',
			q{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE '%k2%'})
		  or die 'the call on a never started';
		my ($ret, $o, $e) = $b->psql('postgres',
			q{SET idem.wait_timeout = '500ms'; SELECT idem.idempotent_call('k2', 'public.work(jsonb)'::regprocedure, '{"sleep": 4}'::jsonb)});
		like($e, qr/in use by another cluster or Lambda function/, 'IK409 from DynamoDB');
		$h->finish;
	},
	$work => { calls => 1, waits => 1, timeouts => 1, dynamodb_requests => [ 3, 200 ] });
cmp_ok($b->safe_psql('postgres', q{SELECT max_wait_time FROM idem.stats WHERE api = 'idempotent_call'}),
	'>=', 300, 'the wait for the other cluster is timed');

step('a claim of the lease API wins its DynamoDB claim',
	sub { $b->safe_psql('postgres', q{SELECT state FROM idem.claim('job-1', '{}', '1 minute')}) },
	$lease => { calls => 1, dynamodb_claims => 1, dynamodb_requests => 1 });

step('a first call with DynamoDB down is an IK503 failure',
	sub {
		$dyn->stop_proxy;
		my ($ret, $out, $err) = call($b, 'k3');
		like($err, qr/could not claim idempotency key "k3" in DynamoDB/, 'IK503');
		$dyn->start_proxy;
	},
	$work => { calls => 1, dynamodb_failures => 1, dynamodb_requests => 1 });

$_->stop for ($a, $b);
done_testing();
