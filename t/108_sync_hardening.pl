# Copyright (c) 2026, the idem developers


# 108_sync_hardening.pl
#	The DynamoDB sync where it used to fail quietly: arbiter mode outside
#	the worker's database, claims deleted by a rollback without waiting for
#	DynamoDB, rows of a prepared transaction and rows no commit announced,
#	outcomes too large for an item, the log hook and the messages clients
#	see, half-configured sync, and what idem.sync_status tells an alert:
#	delivery recency and rate, conflicts by cause, a last error that clears
#	once everything is delivered, and set-up problems.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use JSON::PP;
use List::Util qw(max);
use Time::HiRes ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use SyncTest;

$ENV{AWS_ACCESS_KEY_ID} = $SyncTest::AKID;
$ENV{AWS_SECRET_ACCESS_KEY} = $SyncTest::SECRET;
delete $ENV{AWS_SESSION_TOKEN};
my %env = (AWS_ACCESS_KEY_ID => $SyncTest::AKID, AWS_SECRET_ACCESS_KEY => $SyncTest::SECRET);

my $dyn = SyncTest->new;
my $conf = qq{
idem.lease = '30s'
idem.wait_timeout = '20s'
idem.dynamodb_request_timeout = '10s'
max_prepared_transactions = 2
log_statement = 'all'
};
my $a = $dyn->pg_node('hard_a', $conf);
my $b = $dyn->pg_node('hard_b', $conf);

for my $node ($a, $b)
{
	$node->safe_psql('postgres', q{
CREATE TABLE public.ran (key text);
CREATE FUNCTION public.work(args jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.ran (key) VALUES (args->>'k');
	RETURN jsonb_build_object('key', args->>'k', 'cluster', current_setting('cluster_name', true));
END $$;
});
}

# The SQL of a call of work (or echo with a value) on a key.
sub call_sql
{
	my ($key) = @_;
	return qq{SELECT idem.idempotent_call('$key', 'public.work(jsonb)'::regprocedure, '{"k": "$key"}'::jsonb)::text};
}

sub echo_sql
{
	my ($key, $value) = @_;
	return qq{SELECT idem.idempotent_call('$key', 'public.echo(jsonb)'::regprocedure, '$value'::jsonb)::text};
}

# The item of a key, decoded ({} when absent).
sub item_of
{
	my ($key) = @_;
	my $id = $a->safe_psql('postgres', "SELECT idem.sync_item_id('idem', '$key')");
	return decode_json($dyn->dyn('get', $SyncTest::TABLE, $id));
}

# Wait up to secs for the item of a key to be gone; true if it is.
sub gone_within
{
	my ($key, $secs) = @_;
	my $until = Time::HiRes::time() + $secs;
	while (Time::HiRes::time() < $until)
	{
		return 1 unless %{ item_of($key) };
		Time::HiRes::sleep(0.1);
	}
	return !%{ item_of($key) };
}

# Put an item straight into dynalite, past the proxy and its faults.
sub put_foreign
{
	my ($key, $item) = @_;
	my $id = $a->safe_psql('postgres', "SELECT idem.sync_item_id('idem', '$key')");
	SyncTest::run_node(\%env, 'dyn.js', "http://127.0.0.1:$dyn->{dl_port}", 'put', $SyncTest::TABLE,
		encode_json({ id => { S => $id }, %$item }));
}

# A psql session driven line by line.
sub session
{
	my ($node) = @_;
	my %s = (in => '', out => '', err => '');
	$s{h} = IPC::Run::start([ 'psql', '-X', '-qAt', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') ],
		'<', \$s{in}, '>', \$s{out}, '2>', \$s{err});
	return \%s;
}

# Send SQL to a session and wait until it prints the marker.
sub send_wait
{
	my ($s, $sql, $marker) = @_;
	$s->{in} .= "$sql\nSELECT '$marker';\n";
	my $until = time() + 60;
	$s->{h}->pump until $s->{out} =~ /\Q$marker\E/ || $s->{err} =~ /ERROR/ || time() > $until;
	die "session: $s->{err}" unless $s->{out} =~ /\Q$marker\E/;
}

my $future = time() + 3600;
my ($ret, $out, $err, @warnings);

# Run one part of the test; a part that dies fails without ending the test.
sub section
{
	my ($name, $code) = @_;
	eval { $code->(); 1 } or fail("$name: $@");
}

# --- idem.sync_status against a known workload (b is untouched so far)
section('idem.sync_status against a known workload (b is untouched so far)', sub {
	$b->safe_psql('postgres', join(";\n", map { echo_sql("w-$_", $_) } 1 .. 7));
	ok(SyncTest::wait_delivered($b), 'the seven outcomes are delivered');
	is($b->safe_psql('postgres', q{SELECT delivered || '/' || delivered_last_minute FROM idem.sync_status}),
		'7/7', 'delivered_last_minute counts the seven deliveries');
	my $since = $b->safe_psql('postgres', 'SELECT seconds_since_delivery FROM idem.sync_status');
	ok($since >= 0 && $since < 60, "seconds_since_delivery is recent ($since)");
	is($b->safe_psql('postgres', q{SELECT coalesce(last_error, 'none') || '/' || claim_deletes_pending || '/'
	  || coalesce(setup_problem, 'none') FROM idem.sync_status}), 'none/0/none',
		'no error, no claim to delete, nothing missing in the set-up');

	# One conflict of each cause.  Another system's outcome before ours:
	put_foreign('c-outcome', { status => { S => 'COMPLETED' }, expiration => { N => "$future" },
		data => { S => 'theirs' } });
	$b->safe_psql('postgres', echo_sql('c-outcome', '"ours"'));
	# ... before our claim's state:
	put_foreign('c-claim', { status => { S => 'COMPLETED' }, expiration => { N => "$future" },
		data => { S => 'theirs' } });
	$b->safe_psql('postgres', q{SELECT idem.claim('c-claim', '{}', '30 s')});
	# ... and, in arbiter mode, a claim whose lease ended before its outcome
	# landed, while another party took the key over.
	my $s = session($b);
	send_wait($s, qq{SET idem.arbiter = 'dynamodb'; SET idem.lease = '2s'; BEGIN; @{[ echo_sql('c-lapse', '"ours"') ]};}, 'claimed');
	$dyn->stop_proxy;
	send_wait($s, 'COMMIT;', 'committed');
	$s->{in} .= "\\q\n";
	$s->{h}->finish;
	Time::HiRes::sleep(2.5);
	put_foreign('c-lapse', { status => { S => 'COMPLETED' }, expiration => { N => "$future" },
		data => { S => 'theirs' } });
	$dyn->start_proxy;
	ok($b->poll_query_until('postgres', 'SELECT pending = 0 FROM idem.sync_status'), 'the three rows settled');
	is($b->safe_psql('postgres', q{SELECT conflicts || '/' || conflicts_outcome_differs || '/'
	  || conflicts_claim_overtaken || '/' || conflicts_lease_lapsed FROM idem.sync_status}), '3/1/1/1',
		'sync_status counts one conflict of each cause');
	is($b->safe_psql('postgres', 'SELECT last_error IS NOT NULL FROM idem.sync_status'), 't',
		'last_error stays while conflicts are unresolved');
});

# --- a last error clears once everything is delivered
section('a last error clears once everything is delivered', sub {
	$dyn->stop_proxy;
	$a->safe_psql('postgres', echo_sql('err-1', '1'));
	ok($a->poll_query_until('postgres', q{SELECT last_error IS NOT NULL AND last_error_at IS NOT NULL
	  AND pending = 1 FROM idem.sync_status}), 'with DynamoDB down, sync_status shows the error and when');
	$dyn->start_proxy;
	ok(SyncTest::wait_delivered($a), 'once DynamoDB is back the outcome is delivered');
	{
		local $PostgreSQL::Test::Utils::timeout_default = 20;
		ok($a->poll_query_until('postgres', q{SELECT last_error IS NULL AND last_error_at IS NULL FROM idem.sync_status}),
			'and the last error is cleared');
	}
});

# --- arbiter mode only where the worker delivers the outbox
section('arbiter mode only where the worker delivers the outbox', sub {
	$a->safe_psql('postgres', q{CREATE DATABASE other});
	$a->safe_psql('other', q{CREATE EXTENSION idem;
	CREATE FUNCTION public.echo(j jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT j'});
	($ret, $out, $err) = $a->psql('other', "\\set VERBOSITY verbose\nSET idem.arbiter = 'dynamodb';\n"
		  . echo_sql('db-1', '1'));
	like($err, qr/55000.*arbiter mode is not set up in this database/s,
		'arbiter mode outside idem.dynamodb_database fails with 55000');
	like($err, qr/DETAIL:.*database "postgres"/, 'the detail names the database the worker serves');
	like($err, qr/HINT:.*idem\.dynamodb_database/, 'the hint names the setting');
	is_deeply(item_of('db-1'), {}, 'and nothing was claimed');

	# ... and outcomes queued there warn once per session
	($ret, $out, $err) = $a->psql('other', join(";\n", echo_sql('db-2', '2'), echo_sql('db-3', '3')));
	is($ret, 0, 'local calls in another database still work');
	@warnings = $err =~ /WARNING:  idempotency outcomes queued in this database are not delivered/g;
	is(scalar(@warnings), 1, 'one warning for two calls in a session');
	like($err, qr/DETAIL:.*delivers the outbox of database "postgres"/, 'saying which database is delivered');
	like($a->safe_psql('other', 'SELECT setup_problem FROM idem.sync_status'), qr/database "postgres"/,
		'sync_status of that database shows the problem');

	# ... and so does a server that did not preload idem
	my $c = PostgreSQL::Test::Cluster->new('hard_nopreload');
	$c->init;
	if ($ENV{IDEM_DESTDIR})
	{
		my $pkglibdir = `pg_config --pkglibdir`;
		chomp $pkglibdir;
		$c->append_conf('postgresql.conf', qq{
	extension_destdir = '$ENV{IDEM_DESTDIR}'
	dynamic_library_path = '$ENV{IDEM_DESTDIR}$pkglibdir:\$libdir'
	});
	}
	$c->append_conf('postgresql.conf', qq{
	idem.dynamodb_table = '$SyncTest::TABLE'
	idem.dynamodb_endpoint = '@{[ $dyn->endpoint ]}'
	});
	$c->start;
	$c->safe_psql('postgres', q{CREATE EXTENSION idem;
	CREATE FUNCTION public.echo(j jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT j'});
	($ret, $out, $err) = $c->psql('postgres', join(";\n", echo_sql('np-1', '1'), echo_sql('np-2', '2')));
	is($ret, 0, 'without preload, calls work');
	@warnings = $err =~ /WARNING:  idempotency outcomes queued in this database are not delivered/g;
	is(scalar(@warnings), 1, 'and warn once per session that nothing delivers them');
	like($err, qr/shared_preload_libraries/, 'naming shared_preload_libraries');
	like($c->safe_psql('postgres', 'SELECT setup_problem FROM idem.sync_status'), qr/shared_preload_libraries/,
		'sync_status shows it');
	$c->stop;
});

# --- an outcome too large for an item is refused at the call
section('an outcome too large for an item is refused at the call', sub {
	($ret, $out, $err) = $a->psql('postgres', "\\set VERBOSITY verbose\n"
		  . q{SELECT idem.idempotent_call('big', 'public.echo(jsonb)'::regprocedure, jsonb_build_object('s', repeat('x', 500000)))});
	like($err, qr/54000.*outcome for idempotency key "big" is too large for the DynamoDB sync/s,
		'an outcome over 400 KB fails with 54000');
	is($a->safe_psql('postgres', q{SELECT count(*) FROM idem.sync_outbox WHERE key = 'big'}), '0',
		'and queues nothing');
	($ret, $out, $err) = $a->psql('postgres', "\\set VERBOSITY verbose\nSET idem.arbiter = 'dynamodb';\n"
		  . q{SELECT idem.idempotent_call('big-arb', 'public.echo(jsonb)'::regprocedure, jsonb_build_object('s', repeat('x', 500000)))});
	like($err, qr/54000/, 'in arbiter mode too');
	ok(gone_within('big-arb', 10), 'and its claim is deleted, not left INPROGRESS');
	$a->safe_psql('postgres', echo_sql('not-big', '{"s": "' . ('x' x 300000) . '"}'));
	ok(SyncTest::wait_delivered($a), 'an outcome under the limit is delivered');
});

# --- the log hook changes no message a client sees
section('the log hook changes no message a client sees', sub {
	$a->safe_psql('postgres', q{CREATE ROLE mallory LOGIN});
	($ret, $out, $err) = $a->psql('postgres', 'SHOW idem.dynamodb_secret_access_key',
		extra_params => [ '-U', 'mallory' ]);
	like($err, qr/ERROR:  [^\n]* to examine "idem\.dynamodb_secret_access_key"$/m,
		"a non-superuser's SHOW fails with PostgreSQL's own message");
	unlike($err, qr/hidden by idem/, 'not a rewritten one');
	($ret, $out, $err) = $a->psql('postgres', q{DO $$BEGIN RAISE NOTICE 'idem.dynamodb_secret_access_key is hidden from SHOW'; END$$});
	like($err, qr/NOTICE:  idem\.dynamodb_secret_access_key is hidden from SHOW$/m, 'a notice naming the setting is untouched');
	# ... while values given to secret settings stay out of the log
	my $new_secret = 'Another+Secret/Value1';
	$a->safe_psql('postgres', qq{ALTER SYSTEM SET idem.dynamodb_secret_access_key = '$new_secret'});
	$a->safe_psql('postgres', qq{ALTER SYSTEM SET "idem.dynamodb_session_token" TO 'tok''$new_secret'});
	$a->psql('postgres', qq{SELECT set_config('idem.dynamodb_access_key_id', 'AKID$new_secret', false)});
	$a->safe_psql('postgres', q{ALTER SYSTEM RESET idem.dynamodb_secret_access_key});
	$a->safe_psql('postgres', q{ALTER SYSTEM RESET idem.dynamodb_session_token});
	my $log = slurp_file($a->logfile);
	ok(index($log, $new_secret) < 0, 'a value set by ALTER SYSTEM or set_config is not in the log');
	like($log, qr/ALTER SYSTEM SET idem\.dynamodb_secret_access_key = \*{8}/, 'the statement is logged with the value masked');
	like($log, qr/ALTER SYSTEM RESET idem\.dynamodb_secret_access_key$/m, 'a statement without a value is logged as it is');
});

# --- COMMIT PREPARED wakes the worker (which is idle and does not poll)
section('COMMIT PREPARED wakes the worker (which is idle and does not poll)', sub {
	ok(SyncTest::wait_delivered($a), 'a is idle');
	$a->safe_psql('postgres', "BEGIN;\n" . echo_sql('prep-1', '1') . ";\nPREPARE TRANSACTION 'p1';");
	$a->safe_psql('postgres', 'SELECT pg_sleep(1)');
	my $t0 = Time::HiRes::time();
	$a->safe_psql('postgres', "COMMIT PREPARED 'p1'");
	{
		local $PostgreSQL::Test::Utils::timeout_default = 4;
		ok($a->poll_query_until('postgres', q{SELECT state = 'delivered' FROM idem.sync_outbox WHERE key = 'prep-1'}),
			'the row of a prepared transaction is delivered after COMMIT PREPARED');
	}
	note(sprintf('COMMIT PREPARED to delivered: %.2f s', Time::HiRes::time() - $t0));
});

# --- a row no commit announced is delivered by the safety poll while rows wait
section('a row no commit announced is delivered by the safety poll while rows wait', sub {
	$a->safe_psql('postgres', q{
	INSERT INTO idem.sync_outbox (owner, key, key_prefix, outcome, expires_at, next_attempt_at)
	VALUES ('postgres', 'later-1', 'idem', '1', now() + interval '1 day', now() + interval '1 hour');
	SELECT idem.sync_wakeup();});
	$a->safe_psql('postgres', 'SELECT pg_sleep(1)');
	$a->safe_psql('postgres', q{
	INSERT INTO idem.sync_outbox (owner, key, key_prefix, outcome, expires_at)
	VALUES ('postgres', 'unannounced-1', 'idem', '1', now() + interval '1 day')});
	{
		local $PostgreSQL::Test::Utils::timeout_default = 30;
		ok($a->poll_query_until('postgres', q{SELECT state = 'delivered' FROM idem.sync_outbox WHERE key = 'unannounced-1'}),
			'a row inserted without a wake-up is delivered while another waits an hour');
	}
	$a->safe_psql('postgres', q{DELETE FROM idem.sync_outbox WHERE key = 'later-1'});
});

# --- a rollback does not wait for DynamoDB
section('a rollback does not wait for DynamoDB', sub {
	my $ctl = "http://127.0.0.1:$dyn->{control_port}/fault?mode=slow&count=1&ms=20000";
	($ret, $out, $err) = $a->psql('postgres', qq{SET idem.arbiter = 'dynamodb';
	BEGIN;
	@{[ call_sql('rb-slow') ]};
	COPY (SELECT 1) TO PROGRAM 'curl -s "$ctl" >/dev/null';
	\\timing on
	ROLLBACK;});
	my ($rollback_ms) = $out =~ /Time: ([0-9.]+) ms(?: \([0-9:.]+\))?\s*$/;
	$rollback_ms //= 'none';
	is($ret, 0, 'the rolled-back call ran') or diag($err);
	ok($rollback_ms ne 'none' && $rollback_ms < 3000,
		"ROLLBACK returns at once while DynamoDB hangs ($rollback_ms ms)");
	cmp_ok($a->safe_psql('postgres', 'SELECT claim_deletes_pending FROM idem.sync_status'), '>=', 1,
		'sync_status shows the claim waiting to be deleted');
	$dyn->fault(mode => 'ok');
	is(item_of('rb-slow')->{status}{S} // 'absent', 'INPROGRESS', 'the claim is still there while its DeleteItem hangs');
	ok(gone_within('rb-slow', 40), 'the worker deletes it once DynamoDB answers, before its lease ends');
	ok($a->poll_query_until('postgres', 'SELECT claim_deletes_pending = 0 FROM idem.sync_status'),
		'and nothing waits any more');

	# ... and at backend exit: a session that ends inside a transaction
	($ret, $out, $err) = $a->psql('postgres', qq{SET idem.arbiter = 'dynamodb';
	BEGIN;
	@{[ call_sql('rb-exit') ]};});
	ok(gone_within('rb-exit', 10), "the claim of a session that ended mid-transaction is deleted");
});

# --- another cluster takes a rolled-back key over at once
section('another cluster takes a rolled-back key over at once', sub {
	my @takeover;
	for my $i (1 .. 5)
	{
		my $key = "to-$i";
		$a->safe_psql('postgres', qq{SET idem.arbiter = 'dynamodb';
	BEGIN;
	@{[ call_sql($key) ]};
	ROLLBACK;});
		my $t = Time::HiRes::time();
		($ret, $out, $err) = $b->psql('postgres', "SET idem.arbiter = 'dynamodb';\n" . call_sql($key));
		push @takeover, Time::HiRes::time() - $t;
		is($ret, 0, "b runs $key after a rolled it back") or diag($err);
		is($b->safe_psql('postgres', "SELECT count(*) FROM public.ran WHERE key = '$key'"), '1', "b ran $key once");
	}
	cmp_ok(max(@takeover), '<', 5, 'each takeover well before the 30 s lease ends');
	note(sprintf('takeover of a rolled-back key by another cluster: %s s (median %.2f s, max %.2f s)',
		join(' ', map { sprintf('%.2f', $_) } @takeover), (sort { $::a <=> $::b } @takeover)[2], max(@takeover)));

});

for my $node ($a, $b)
{
	unlike(slurp_file($node->logfile), qr/terminated by signal (6|11)|PANIC/, 'no crash in ' . $node->name);
}

done_testing();
