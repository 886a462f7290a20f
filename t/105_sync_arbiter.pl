# Copyright (c) 2026, the idem developers


# 105_sync_arbiter.pl
#	Arbiter mode (idem.arbiter = 'dynamodb'): two clusters and Powertools for
#	AWS Lambda (TypeScript) settle who runs a key through conditional writes
#	on one DynamoDB table.  A key runs once between them; a rollback, a
#	failed fn or a rolled-back savepoint frees the key at once; a backend
#	killed mid-fn holds the key until its lease lapses, not a moment less;
#	a local replay needs no DynamoDB; a DynamoDB that does not answer fails
#	first calls with IK503 and a cancel ends the wait at once.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use JSON::PP;
use Time::HiRes ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use SyncTest;

$ENV{AWS_ACCESS_KEY_ID} = $SyncTest::AKID;
$ENV{AWS_SECRET_ACCESS_KEY} = $SyncTest::SECRET;
delete $ENV{AWS_SESSION_TOKEN};

my $dyn = SyncTest->new;
my %env = (AWS_ACCESS_KEY_ID => $SyncTest::AKID, AWS_SECRET_ACCESS_KEY => $SyncTest::SECRET);
my $arbiter_conf = qq{
idem.arbiter = 'dynamodb'
idem.lease = '4s'
idem.wait_timeout = '20s'
restart_after_crash = on
max_prepared_transactions = 2
};
my $a = $dyn->pg_node('arbiter_a', $arbiter_conf);
my $b = $dyn->pg_node('arbiter_b', $arbiter_conf);

# A function that counts its executions in its own cluster.
for my $node ($a, $b)
{
	$node->safe_psql('postgres', q{
CREATE TABLE public.ran (key text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION public.work(args jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.ran (key) VALUES (args->>'k');
	PERFORM pg_sleep(coalesce((args->>'sleep')::float8, 0));
	IF (args->>'fail')::bool THEN
		RAISE EXCEPTION 'work % failed', args->>'k';
	END IF;
	RETURN jsonb_build_object('key', args->>'k', 'cluster', current_setting('cluster_name', true));
END $$;
});
}
$a->safe_psql('postgres', q{ALTER SYSTEM SET cluster_name = 'a'});
$b->safe_psql('postgres', q{ALTER SYSTEM SET cluster_name = 'b'});
$_->restart for ($a, $b);

# The SQL of a call of work on a key, with more arguments for work.
sub call_sql
{
	my ($key, $extra) = @_;
	$extra //= '';
	return qq{SELECT idem.idempotent_call('$key', 'public.work(jsonb)'::regprocedure, '{"k": "$key"$extra}'::jsonb)::text};
}

# Call work(key) on a node; returns (psql status, stdout, stderr).
sub call
{
	my ($node, $key, $extra) = @_;
	return $node->psql('postgres', "\\set VERBOSITY verbose\n" . call_sql($key, $extra));
}

# How often a key ran on a node.
sub ran
{
	my ($node, $key) = @_;
	return $node->safe_psql('postgres', "SELECT count(*) FROM public.ran WHERE key = '$key'");
}

# The item of a key, decoded ({} when absent).
sub item_of
{
	my ($key) = @_;
	my $id = $a->safe_psql('postgres', "SELECT idem.sync_item_id('idem', '$key')");
	return decode_json($dyn->dyn('get', $SyncTest::TABLE, $id));
}

# The item of a key once the sync worker has had up to 10 s to delete it
# (a rollback hands its claims to the worker rather than waiting for
# DynamoDB); {} when it is gone.
sub item_after_delete
{
	my ($key) = @_;
	for (1 .. 100)
	{
		my $item = item_of($key);
		return $item unless %$item;
		Time::HiRes::sleep(0.1);
	}
	return item_of($key);
}

# Run a Powertools handler on a key; returns its report.
sub powertools
{
	my ($key) = @_;
	return decode_json(SyncTest::run_node(\%env, 'powertools_e2e.js', $dyn->endpoint,
		$SyncTest::TABLE, 'idem', $key, '--report-errors'));
}

# --- one key, two clusters: the first runs it, the other replays it
my ($ret, $out, $err) = call($a, 'k1');
is($ret, 0, 'first call on a runs') or diag($err);
like($out, qr/"cluster": "arbiter_a"/, 'with its own outcome');
ok(SyncTest::wait_delivered($a), 'a delivered the outcome');
is(item_of('k1')->{status}{S}, 'COMPLETED', 'the item is COMPLETED');
($ret, $out, $err) = $b->psql('postgres', call_sql('k1') . '; SELECT idem.last_call_replayed()');
is($ret, 0, 'the call on b succeeds') or diag($err);
like($out, qr/"cluster": "arbiter_a"/, "b returns a's outcome");
like($out, qr/\nt$/, 'b reports a replay');
is(ran($b, 'k1'), '0', 'b did not run the key');
is($b->safe_psql('postgres', q{SELECT outcome->>'cluster' FROM idem.records WHERE key = 'k1'}), 'arbiter_a',
	"b recorded a's outcome locally");
is($b->safe_psql('postgres', q{SELECT count(*) FROM idem.sync_outbox WHERE key = 'k1'}), '0',
	'b queued nothing for a key it replayed from DynamoDB');

# --- another role's outcome is not handed out
$b->safe_psql('postgres', q{CREATE ROLE other LOGIN; GRANT INSERT ON public.ran TO other; GRANT USAGE ON SCHEMA idem TO other});
($ret, $out, $err) = $b->psql('postgres', "SET ROLE other;\n\\set VERBOSITY verbose\n" . call_sql('k1'));
like($err, qr/IK422.*recorded in DynamoDB by another role/s, "another role gets IK422, not postgres's outcome");
like($err, qr/DETAIL:.*role "postgres"/, 'the detail names the role that recorded it');

# --- a transaction that claimed keys cannot be prepared; its claim is deleted
($ret, $out, $err) = $a->psql('postgres', "\\set VERBOSITY verbose\nBEGIN;\n" . call_sql('k-2pc') .
	";\nPREPARE TRANSACTION 'p1';");
like($err, qr/0A000.*cannot PREPARE a transaction that claimed idempotency keys/s, 'PREPARE TRANSACTION is refused');
is_deeply(item_after_delete('k-2pc'), {}, 'and the claim is deleted');
is($a->safe_psql('postgres', q{SELECT count(*) FROM pg_prepared_xacts}), '0', 'nothing was prepared');

# --- Powertools and idem share keys both ways
my $pt = powertools('k1');
ok(!$pt->{ran}, 'Powertools does not run a key idem completed');
is($pt->{result}{cluster}, 'arbiter_a', "and returns idem's outcome");
$pt = powertools('k-lambda');
ok($pt->{ran}, 'Powertools runs a new key');
($ret, $out, $err) = call($a, 'k-lambda');
is($ret, 0, 'idem call on the Lambda key succeeds') or diag($err);
like($out, qr/"from": "lambda"/, "idem replays the Lambda's outcome");
is(ran($a, 'k-lambda'), '0', 'without running work');

# --- while a runs a key, b waits and then replays
my ($sout, $serr) = ('', '');
my $slow = IPC::Run::start([ 'psql', '-X', '-qAt', '-d', $a->connstr('postgres'), '-c',
	call_sql('k-slow', ', "sleep": 2') ],
	'>', \$sout, '2>', \$serr);
$a->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'})
  or die 'the slow call never started';
is(item_of('k-slow')->{status}{S}, 'INPROGRESS', 'a claimed the key in DynamoDB before running work');
$pt = powertools('k-slow');
is($pt->{error}, 'IdempotencyAlreadyInProgressError', 'Powertools sees the key in progress');
($ret, $out, $err) = call($b, 'k-slow');
$slow->finish;
is($ret, 0, 'b waited for the key') or diag($err);
like($out, qr/"cluster": "arbiter_a"/, "and returned a's outcome");
is(ran($a, 'k-slow') . '/' . ran($b, 'k-slow'), '1/0', 'the key ran once, on a');

# --- a rollback, a failed fn and a rolled-back savepoint free the key at once
$a->safe_psql('postgres', qq{BEGIN;
@{[ call_sql('k-rb') ]};
ROLLBACK;});
is_deeply(item_after_delete('k-rb'), {}, 'a rollback deletes the claim at once (through the sync worker)');
($ret, $out, $err) = call($a, 'k-fail', ', "fail": true');
like($err, qr/work k-fail failed/, 'a failing fn raises its error');
is_deeply(item_after_delete('k-fail'), {}, "a failed fn's claim is deleted");
$a->safe_psql('postgres', qq{BEGIN;
SAVEPOINT s;
@{[ call_sql('k-sp') ]};
ROLLBACK TO SAVEPOINT s;
@{[ call_sql('k-sp-kept') ]};
COMMIT;});
is_deeply(item_after_delete('k-sp'), {}, 'a rolled-back savepoint deletes its claim');
ok(SyncTest::wait_delivered($a), 'the committed claim of the same transaction is delivered');
is(item_of('k-sp-kept')->{status}{S}, 'COMPLETED', 'and completed');
for my $k ('k-rb', 'k-fail', 'k-sp')
{
	my $t0 = Time::HiRes::time();
	($ret, $out, $err) = call($b, $k);
	is($ret, 0, "b runs $k after a gave it up") or diag($err);
	cmp_ok(Time::HiRes::time() - $t0, '<', 3, "at once, not after the lease");
	is(ran($b, $k), '1', "b ran $k");
}

# --- a call whose fn runs past its lease is rolled back at commit
($ret, $out, $err) = $a->psql('postgres', "\\set VERBOSITY verbose\nSET idem.lease = '1s';\n" .
	call_sql('k-long', ', "sleep": 1.5'));
like($err, qr/IK412.*DynamoDB claim of idempotency key "k-long" lapsed before commit/s,
	'a call that outran its lease fails with IK412');
is(ran($a, 'k-long'), '0', 'and its work is rolled back');
is_deeply(item_after_delete('k-long'), {}, 'and its claim is deleted');

# --- a backend killed mid-fn holds the key until its lease lapses
my $victim = IPC::Run::start([ 'psql', '-X', '-qAt', '-d', $a->connstr('postgres'), '-c',
	call_sql('k-kill', ', "sleep": 600') ],
	'>', \$sout, '2>', \$serr);
$a->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'})
  or die 'the victim never started';
my $item = item_of('k-kill');
is($item->{status}{S}, 'INPROGRESS', 'the victim holds an INPROGRESS item');
my $lease_end_ms = $item->{in_progress_expiration}{N};
my $pid = $a->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep'});
kill 'KILL', $pid;
eval { $victim->finish };
$a->poll_query_until('postgres', 'SELECT true') or die 'a did not recover';
is(item_of('k-kill')->{status}{S}, 'INPROGRESS', 'the item outlives the killed backend');
($ret, $out, $err) = $b->psql('postgres', qq{\\set VERBOSITY verbose
SET idem.wait_timeout = 0;
@{[ call_sql('k-kill') ]}});
like($err, qr/IK409/, 'b cannot run the key while the lease is live');
like($err, qr/in use by another cluster or Lambda function/, 'the error says who holds it');
($ret, $out, $err) = $b->psql('postgres', qq{\\set VERBOSITY verbose
SET lock_timeout = '200ms';
@{[ call_sql('k-kill') ]}});
like($err, qr/IK409.*did not complete within lock_timeout \(200 ms\)/s,
	'a lower lock_timeout ends the wait for the item, and the detail names it');
($ret, $out, $err) = call($b, 'k-kill');
is($ret, 0, 'b runs the key once the lease lapses') or diag($err);
cmp_ok(Time::HiRes::time() * 1000, '>=', $lease_end_ms, 'not before the lease ended');
is(ran($b, 'k-kill'), '1', 'b ran it');

# --- the cluster of a killed backend takes its dead claim over at once
$victim = IPC::Run::start([ 'psql', '-X', '-qAt', '-d', $a->connstr('postgres'), '-c',
	call_sql('k-kill2', ', "sleep": 600') ],
	'>', \$sout, '2>', \$serr);
$a->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'})
  or die 'the second victim never started';
$lease_end_ms = item_of('k-kill2')->{in_progress_expiration}{N};
$pid = $a->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep'});
kill 'KILL', $pid;
eval { $victim->finish };
$a->poll_query_until('postgres', 'SELECT true') or die 'a did not recover';
($ret, $out, $err) = call($a, 'k-kill2');
is($ret, 0, "a runs the key of its killed backend") or diag($err);
cmp_ok(Time::HiRes::time() * 1000, '<', $lease_end_ms, "before the dead claim's lease ends");
is(ran($a, 'k-kill2'), '1', 'once: the killed run left nothing');

# --- the lease API claims in DynamoDB too
($ret, $out, $err) = $a->psql('postgres', q{SELECT state, token FROM idem.claim('job-1', '{"n": 1}', '30 s')});
my ($state, $token) = split /\|/, $out;
is($state, 'run', 'a claims job-1');
is(item_of('job-1')->{status}{S}, 'INPROGRESS', 'the claim is INPROGRESS in DynamoDB at once');
($ret, $out, $err) = $b->psql('postgres', qq{\\set VERBOSITY verbose
SET idem.wait_timeout = 0;
SELECT state FROM idem.claim('job-1', '{"n": 1}')});
like($err, qr/IK409/, "b cannot claim a's live claim");
$a->safe_psql('postgres', qq{SELECT idem.complete('job-1', $token, '{"done": "a"}')});
ok(SyncTest::wait_delivered($a), 'the completion is delivered');
$out = $b->safe_psql('postgres', q{SELECT state || ' ' || outcome::text FROM idem.claim('job-1', '{"n": 1}')});
is($out, 'replay {"done": "a"}', "b's claim replays a's outcome");

# --- local replays need no DynamoDB; first calls fail with IK503
$dyn->stop_proxy;
($ret, $out, $err) = call($a, 'k1');
is($ret, 0, 'a local replay works with DynamoDB down') or diag($err);
($ret, $out, $err) = call($a, 'k-down');
like($err, qr/IK503/, 'a first call fails with IK503');
like($err, qr/could not claim idempotency key "k-down" in DynamoDB/, 'naming the key');
like($err, qr/HINT:.*retry/i, 'with a hint to retry');
is(ran($a, 'k-down'), '0', 'and nothing ran');
$dyn->start_proxy;

# --- a cancel ends the wait for DynamoDB at once
$dyn->fault(mode => 'slow', count => 1, ms => 10000);
my $t0 = Time::HiRes::time();
($ret, $out, $err) = $a->psql('postgres', qq{\\set VERBOSITY verbose
SET statement_timeout = '500ms';
@{[ call_sql('k-cancel') ]}});
like($err, qr/57014/, 'statement_timeout cancels the DynamoDB call');
cmp_ok(Time::HiRes::time() - $t0, '<', 5, 'without waiting for the answer');
is(ran($a, 'k-cancel'), '0', 'nothing ran');
$dyn->fault(mode => 'ok');

# --- secrets stay out of the log; no crash
unlike(slurp_file($a->logfile), qr/\Q$SyncTest::SECRET\E/, 'the secret key is not in the log');
for my $node ($a, $b)
{
	unlike(slurp_file($node->logfile), qr/terminated by signal (6|11)|PANIC/, 'no crash in ' . $node->name);
}

done_testing();
