# Copyright (c) 2026, the idem developers


# 102_sync_faults.pl
#	Faults: the endpoint down then up, 500s and throttling, answers slower
#	than the time-out, the server killed with SIGKILL mid-batch, a backend
#	killed inside its transaction, the worker terminated and killed.  After
#	each: as many items as committed outcomes, no duplicates, nothing
#	pending.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use SyncTest;

$ENV{AWS_ACCESS_KEY_ID} = $SyncTest::AKID;
$ENV{AWS_SECRET_ACCESS_KEY} = $SyncTest::SECRET;
delete $ENV{AWS_SESSION_TOKEN};

my $dyn = SyncTest->new;
my $node = $dyn->pg_node('faults', "idem.dynamodb_parallelism = 8\nrestart_after_crash = on\n");
my $batch = 0;

# Commit n first executions in one transaction.
sub calls
{
	my ($n, $tag) = @_;
	$batch++;
	$node->safe_psql('postgres', qq{
SELECT count(idem.idempotent_call('$tag-$batch-' || g, 'public.echo(jsonb)'::regprocedure, jsonb_build_object('g', g, 'tag', '$tag')))
  FROM generate_series(1, $n) g});
}

# The largest number of attempts any outbox row needed.
sub max_attempts
{
	return $node->safe_psql('postgres', 'SELECT max(attempts) FROM idem.sync_outbox');
}

calls(20, 'warmup');
ok(SyncTest::wait_delivered($node), 'warm-up delivered');
$dyn->check_exactly_once($node, 'warm-up');

# --- Endpoint down for a while, then up.
$dyn->stop_proxy;
calls(60, 'down');
ok(1, 'calls commit while the endpoint is down');
ok($node->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM idem.sync_outbox WHERE state = 'pending' AND attempts >= 2}),
	'deliveries are retried while the endpoint is down');
like($node->safe_psql('postgres', 'SELECT last_error FROM idem.sync_status'),
	qr/HTTP request failed/, 'the connection failure is reported');
is($node->safe_psql('postgres', 'SELECT failed FROM idem.sync_status'), '0',
	'a refused connection is transient, not a failure');
$dyn->start_proxy;
ok(SyncTest::wait_delivered($node), 'delivered once the endpoint is back');
$dyn->check_exactly_once($node, 'endpoint down then up');

# --- HTTP 500 and throttling.
my $before = max_attempts();
$dyn->fault(mode => '500', count => 30);
calls(40, 'e500');
ok(SyncTest::wait_delivered($node), 'delivered through 500 answers');
cmp_ok($dyn->stats->{injected}, '>=', 30, 'the proxy answered 500 to 30 requests');
$dyn->check_exactly_once($node, '500 answers');

$dyn->fault(mode => 'throttle', count => 30);
calls(40, 'throttle');
ok(SyncTest::wait_delivered($node), 'delivered through throttling');
cmp_ok($dyn->stats->{injected}, '>=', 60, 'the proxy throttled 30 requests');
$dyn->check_exactly_once($node, 'throttling');
cmp_ok(max_attempts(), '>', 1, 'transient errors were retried');

# --- Answers slower than the time-out.
$node->safe_psql('postgres', q{ALTER SYSTEM SET idem.dynamodb_request_timeout = '1s'; SELECT pg_reload_conf();});
$dyn->fault(mode => 'slow', ms => 2500, count => 10);
calls(10, 'slow');
ok($node->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM idem.sync_outbox WHERE last_error LIKE '%imeout%' OR attempts > 1}),
	'slow answers time out and are retried');
ok(SyncTest::wait_delivered($node), 'delivered after slow answers');
$dyn->check_exactly_once($node, 'slow answers');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET idem.dynamodb_request_timeout; SELECT pg_reload_conf();});

# --- The server killed with SIGKILL mid-batch.
my $gets_before = $dyn->stats->{targets}{'DynamoDB_20120810.GetItem'} // 0;
$dyn->fault(mode => 'slow', ms => 1000, count => 1000000);
calls(200, 'sigkill');
ok($node->poll_query_until('postgres', 'SELECT in_flight > 0 FROM idem.sync_status'),
	'requests in flight');
$node->kill9;
sleep 2;    # let the slow requests reach dynalite
$dyn->fault(mode => 'ok');
$node->start;
ok(SyncTest::wait_delivered($node), 'delivered after SIGKILL and restart');
$dyn->check_exactly_once($node, 'server SIGKILL mid-batch');
cmp_ok($dyn->stats->{targets}{'DynamoDB_20120810.GetItem'} // 0, '>', $gets_before,
	'redeliveries of items written before the crash were recognised by reading them back');

# --- A backend killed inside its transaction: its outcome never appears.
my $bg = $node->background_psql('postgres');
$bg->query_safe('BEGIN');
$bg->query_safe(q{SELECT idem.idempotent_call('crashed-in-xact', 'public.echo(jsonb)'::regprocedure, '1'::jsonb)});
my $bpid = $bg->query_safe('SELECT pg_backend_pid()');
chomp $bpid;
kill 'KILL', $bpid;
eval { $bg->quit };
ok($node->poll_query_until('postgres', 'SELECT true'), 'server back after a backend was killed');
calls(10, 'after-backend-kill');
ok(SyncTest::wait_delivered($node), 'delivered after the backend kill');
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem.sync_outbox WHERE key = 'crashed-in-xact'}), '0',
	'the killed transaction queued nothing');
my %ids = map { $_->{id}{S} => 1 } @{ $dyn->scan };
ok(!$ids{ $node->safe_psql('postgres', q{SELECT idem.sync_item_id('idem', 'crashed-in-xact')}) },
	'the killed transaction wrote no item');
$dyn->check_exactly_once($node, 'backend killed');

# --- The worker terminated, then killed, mid-batch.
for my $how ('terminate', 'kill')
{
	$dyn->fault(mode => 'slow', ms => 500, count => 1000000);
	calls(100, "worker-$how");
	ok($node->poll_query_until('postgres', 'SELECT in_flight > 0 FROM idem.sync_status'),
		"requests in flight before the worker $how");
	my $wpid = $node->safe_psql('postgres', 'SELECT worker_pid FROM idem.sync_status');
	if ($how eq 'terminate')
	{
		$node->safe_psql('postgres', "SELECT pg_terminate_backend($wpid)");
	}
	else
	{
		kill 'KILL', $wpid;
	}
	$dyn->fault(mode => 'ok');
	ok($node->poll_query_until('postgres',
			"SELECT worker_pid IS NOT NULL AND worker_pid <> $wpid FROM idem.sync_status"),
		"a new worker runs after the worker $how");
	ok(SyncTest::wait_delivered($node), "delivered after the worker $how");
	$dyn->check_exactly_once($node, "worker $how");
}

done_testing();
