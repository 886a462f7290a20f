# Copyright (c) 2026, the idem developers


# 101_sync_delivery.pl
#	Delivery through the SigV4-verifying proxy: committed first executions
#	arrive exactly once; rolled-back calls and replays write nothing; the
#	proxy rejects bad signatures, unsigned headers and a missing session
#	token, and so do our deliveries when credentials are wrong (failed, then
#	requeued with idem.sync_retry_failed()); secrets stay hidden.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use SyncTest;

delete $ENV{AWS_SESSION_TOKEN};
delete $ENV{AWS_ACCESS_KEY_ID};
delete $ENV{AWS_SECRET_ACCESS_KEY};

my $dyn = SyncTest->new;

# --- The proxy really verifies signatures (else the tests below prove nothing).
$dyn->dyn('scan', $SyncTest::TABLE);
for my $tamper (qw(unsigned-header bad-signature body))
{
	local $ENV{DYN_TAMPER} = $tamper;
	eval { $dyn->dyn('scan', $SyncTest::TABLE) };
	like($@, qr/HTTP 400 .*(InvalidSignatureException)/, "proxy rejects a request with $tamper");
}
{
	local $SyncTest::SECRET = 'wrong-secret';
	eval { $dyn->dyn('scan', $SyncTest::TABLE) };
	like($@, qr/InvalidSignatureException/, 'proxy rejects a wrong secret');
}

# --- Credentials as superuser-only settings (no environment variables).
my $node = $dyn->pg_node('delivery', qq{
idem.dynamodb_access_key_id = '$SyncTest::AKID'
idem.dynamodb_secret_access_key = '$SyncTest::SECRET'
idem.dynamodb_parallelism = 8
});

# Committed, rolled back, savepoint-rolled-back and replayed calls.
$node->safe_psql('postgres', q{
BEGIN;
SELECT idem.idempotent_call('c-' || g, 'public.echo(jsonb)'::regprocedure, jsonb_build_object('n', g))
  FROM generate_series(1, 150) g;
COMMIT;
BEGIN;
SELECT idem.idempotent_call('rolled-' || g, 'public.echo(jsonb)'::regprocedure, jsonb_build_object('n', g))
  FROM generate_series(1, 20) g;
ROLLBACK;
BEGIN;
SELECT idem.idempotent_call('kept', 'public.echo(jsonb)'::regprocedure, '"kept"'::jsonb);
SAVEPOINT s;
SELECT idem.idempotent_call('undone', 'public.echo(jsonb)'::regprocedure, '"undone"'::jsonb);
ROLLBACK TO SAVEPOINT s;
COMMIT;
});
for my $i (1 .. 50)
{
	$node->safe_psql('postgres',
		"SELECT idem.idempotent_call('single-$i', 'public.echo(jsonb)'::regprocedure, '$i'::jsonb)");
}
ok(SyncTest::wait_delivered($node), 'outcomes delivered');
my $puts_before = $dyn->stats->{targets}{'DynamoDB_20120810.PutItem'};

# Replays: same keys, same arguments.
$node->safe_psql('postgres', q{
SELECT idem.idempotent_call('c-' || g, 'public.echo(jsonb)'::regprocedure, jsonb_build_object('n', g))
  FROM generate_series(1, 150) g;
SELECT idem.idempotent_call('kept', 'public.echo(jsonb)'::regprocedure, '"kept"'::jsonb);
});
is($node->safe_psql('postgres', 'SELECT count(*) FROM idem.sync_outbox'), '201',
	'replays and rolled-back calls queue nothing');
ok(SyncTest::wait_delivered($node), 'still nothing pending');
is($dyn->stats->{targets}{'DynamoDB_20120810.PutItem'}, $puts_before, 'replays send no request');

$dyn->check_exactly_once($node, 'committed calls');
my %ids = map { $_->{id}{S} => 1 } @{ $dyn->scan };
my $rolled = $node->safe_psql('postgres',
	q{SELECT string_agg(idem.sync_item_id('idem', k), ',') FROM unnest(ARRAY['rolled-1', 'rolled-20', 'undone']) k});
ok(!$ids{$_}, "rolled-back call wrote no item $_") for split /,/, $rolled;
ok($ids{ $node->safe_psql('postgres', q{SELECT idem.sync_item_id('idem', 'kept')}) },
	'the call before the savepoint was delivered');
is($node->safe_psql('postgres', 'SELECT delivered FROM idem.sync_status'), '201', 'sync_status counts deliveries');
is($node->safe_psql('postgres', q{SELECT idem.sync_purge_delivered('0 seconds')}), '201',
	'sync_purge_delivered removes delivered rows');
is($node->safe_psql('postgres', 'SELECT count(*) FROM idem.sync_outbox'), '0', 'the outbox is empty');

# Woken at commit, not by polling: an idle worker does not read the outbox.
my $scans = q{SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relid = 'idem.sync_outbox'::regclass};
$node->safe_psql('postgres', 'SELECT pg_sleep(1.5)');
my $idle0 = $node->safe_psql('postgres', $scans);
$node->safe_psql('postgres', 'SELECT pg_sleep(3)');
is($node->safe_psql('postgres', $scans), $idle0, 'an idle worker does not poll the outbox');
$node->safe_psql('postgres', q{SELECT idem.idempotent_call('wake-up', 'public.echo(jsonb)'::regprocedure, '1'::jsonb)});
ok(SyncTest::wait_delivered($node), 'a commit wakes the idle worker');
$node->safe_psql('postgres', 'SELECT pg_sleep(1.5)');
cmp_ok($node->safe_psql('postgres', $scans), '>', $idle0, 'the woken worker read the outbox');

# Keep-alive: far fewer connections than requests.
my $stats = $dyn->stats;
cmp_ok($stats->{connections}, '<', $stats->{requests} / 4,
	"connections are reused ($stats->{connections} connections for $stats->{requests} requests)");
is($stats->{rejected}, 4, 'the proxy rejected only the tampered requests');

# --- Secrets stay hidden.
$node->safe_psql('postgres', q{CREATE ROLE mallory LOGIN; CREATE ROLE reader LOGIN; GRANT pg_read_all_settings TO reader;});
my ($ret, $out, $err) = $node->psql('postgres', 'SHOW idem.dynamodb_secret_access_key',
	extra_params => [ '-U', 'mallory' ]);
like($err, qr/permission denied|must be superuser|privileges/, 'a non-superuser cannot SHOW the secret');
is($node->safe_psql('postgres', 'SHOW idem.dynamodb_secret_access_key', extra_params => [ '-U', 'reader' ]),
	'********', 'a member of pg_read_all_settings sees the secret masked');
is($node->safe_psql('postgres', 'SHOW idem.dynamodb_secret_access_key'), '********',
	'even a superuser sees the secret masked');
is($node->safe_psql('postgres', q{SELECT current_setting('idem.dynamodb_secret_access_key')}), '********',
	'current_setting() masks the secret');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_settings WHERE name IN ('idem.dynamodb_access_key_id', 'idem.dynamodb_secret_access_key', 'idem.dynamodb_session_token')}),
	'0', 'pg_settings does not list the credentials');
($ret, $out, $err) = $node->psql('postgres', 'SELECT * FROM idem.sync_status', extra_params => [ '-U', 'mallory' ]);
isnt($ret, 0, 'a non-superuser cannot read sync_status');
($ret, $out, $err) = $node->psql('postgres', 'SELECT * FROM idem.sync_outbox', extra_params => [ '-U', 'mallory' ]);
isnt($ret, 0, 'a non-superuser cannot read the outbox');

# --- Wrong secret: items fail permanently with the reason, then a fix and a retry deliver them.
$node->append_conf('postgresql.conf', "idem.dynamodb_secret_access_key = 'not-the-secret'\n");
$node->reload;
$node->safe_psql('postgres', q{SELECT pg_sleep(0.5)});
$node->safe_psql('postgres', q{
SELECT idem.idempotent_call('bad-cred-' || g, 'public.echo(jsonb)'::regprocedure, to_jsonb(g)) FROM generate_series(1, 5) g});
ok($node->poll_query_until('postgres', 'SELECT failed = 5 AND pending = 0 FROM idem.sync_status'),
	'wrong secret: deliveries fail permanently');
like($node->safe_psql('postgres', q{SELECT DISTINCT last_error FROM idem.sync_outbox WHERE state = 'failed'}),
	qr/InvalidSignatureException/, 'the reason is recorded');
like($node->safe_psql('postgres', 'SELECT last_error FROM idem.sync_status'),
	qr/InvalidSignatureException/, 'sync_status shows the last error');
$node->append_conf('postgresql.conf', "idem.dynamodb_secret_access_key = '$SyncTest::SECRET'\n");
$node->reload;
$node->safe_psql('postgres', q{SELECT pg_sleep(0.5)});
is($node->safe_psql('postgres', 'SELECT idem.sync_retry_failed()'), '5', 'sync_retry_failed requeues them');
ok(SyncTest::wait_delivered($node), 'requeued outcomes delivered after the fix');
$dyn->check_exactly_once($node, 'after the credential fix');

# The secret never reached the server log.
my $log = slurp_file($node->logfile);
ok(index($log, $SyncTest::SECRET) < 0, 'the secret is not in the server log');
ok(index($log, 'not-the-secret') < 0, 'the wrong secret is not in the server log either');
like($log, qr/idem.dynamodb_secret_access_key/, 'the log does mention the changed setting');
$node->stop;

# --- Session tokens: from the environment, required by the proxy.
my $tok = SyncTest->new(session_token => 'idem-session-token/123=');
{
	local $ENV{AWS_ACCESS_KEY_ID} = $SyncTest::AKID;
	local $ENV{AWS_SECRET_ACCESS_KEY} = $SyncTest::SECRET;
	my $tnode = $tok->pg_node('token');
	$tnode->safe_psql('postgres', q{SELECT idem.idempotent_call('tok-1', 'public.echo(jsonb)'::regprocedure, '1'::jsonb)});
	ok($tnode->poll_query_until('postgres', 'SELECT failed = 1 FROM idem.sync_status'),
		'missing session token: delivery fails');
	like($tnode->safe_psql('postgres', 'SELECT last_error FROM idem.sync_outbox'),
		qr/UnrecognizedClientException/, 'the proxy reported the missing token');
	$tnode->stop;
	local $ENV{AWS_SESSION_TOKEN} = 'idem-session-token/123=';
	$tnode->start;
	$tnode->safe_psql('postgres', 'SELECT idem.sync_retry_failed()');
	ok(SyncTest::wait_delivered($tnode), 'with AWS_SESSION_TOKEN set, the outcome is delivered');
	$tok->check_exactly_once($tnode, 'session token');
	$tnode->stop;
}

done_testing();
