# Copyright (c) 2026, the idem developers


# 107_sync_arbiter_faults.pl
#	Arbiter mode (idem.arbiter = 'dynamodb') under faults.  Two clusters make
#	first calls and replays of one shared key space while the proxy answers
#	500s, throttles, answers slower than idem.dynamodb_request_timeout and
#	drops connections, while dynalite (on disk) is killed and restarted,
#	while every request fails and while the endpoint refuses connections.
#	Afterwards, once every key is retried to an outcome: no key ran twice,
#	no outcome is lost (each key has one outcome, the same on both clusters,
#	in every answer a client got and in a COMPLETED item), every failed call
#	failed with IK503 or IK409, nothing is failed or in conflict in the
#	outboxes, and no server crashed.
#
#	Then it measures when a key can still run twice: cluster a commits an
#	outcome but is cut off from DynamoDB (its endpoint points at a closed
#	port), so its COMPLETED write cannot land.  With a lease shorter than
#	the cut, b takes the key over once the lease lapses and runs it again,
#	and a's write then lands as a conflict; a lapsed lease nobody claims in
#	between costs nothing; with a lease longer than the cut, b gets IK409 or
#	waits and replays a's outcome, and never runs the key.  The same with
#	every request failing for a while: a's sync worker and b race once it
#	ends, and every key that ran twice shows as a conflict on a.  A first
#	call whose PutItem times out (IK503) can still block its key, though
#	nothing ran, until its lease ends, for other clusters; its own cluster
#	takes the dead claim over at once.  A call that runs longer than its
#	lease lets b run the key too, and a's commit then fails with IK412.

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

my $t_start = Time::HiRes::time();
my $json = JSON::PP->new->canonical->allow_nonref;
my $dyn = SyncTest->new(dynalite_path => "$PostgreSQL::Test::Utils::tmp_check/dynalite_107");
# The lease outlasts every fault of the load phase, so that no key may run
# twice there; a fault only blocks a key until its lease ends.
my $arbiter_conf = qq{
idem.arbiter = 'dynamodb'
idem.lease = '20s'
idem.wait_timeout = '3s'
};
my $a = $dyn->pg_node('faults_a', $arbiter_conf);
my $b = $dyn->pg_node('faults_b', $arbiter_conf);
my %tag = (faults_a => 'a', faults_b => 'b');

# work() counts its executions in its cluster (ran, committed ones) and in
# the log (every one, rolled back or not); attempt() calls it through
# idempotent_call and records the answer or the SQLSTATE of the error.
for my $node ($a, $b)
{
	my $sql = q{
CREATE TABLE public.ran (key text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE public.attempts (key text, phase text, sqlstate text, message text, detail text,
	outcome jsonb, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE public.keys (key text PRIMARY KEY);
CREATE FUNCTION public.work(args jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.ran (key) VALUES (args->>'k');
	RAISE LOG 'idem-107 executes key % on cluster TAG', args->>'k';
	PERFORM pg_sleep(coalesce((args->>'sleep')::float8, 0));
	RETURN jsonb_build_object('key', args->>'k', 'cluster', 'TAG', 'nonce', md5(random()::text));
END $$;
CREATE FUNCTION public.attempt(k text, phase text, sleep float8 DEFAULT 0)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
	o jsonb;
	st text;
	msg text;
	det text;
BEGIN
	BEGIN
		o := idem.idempotent_call(k, 'public.work(jsonb)'::regprocedure,
			jsonb_build_object('k', k, 'sleep', sleep));
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
		INSERT INTO public.attempts (key, phase, sqlstate, message, detail) VALUES (k, phase, st, msg, det);
		RETURN NULL;
	END;
	INSERT INTO public.attempts (key, phase, sqlstate, outcome) VALUES (k, phase, 'ok', o);
	RETURN o;
END $$;
CREATE PROCEDURE public.settle(secs int)
LANGUAGE plpgsql AS $$
DECLARE
	k text;
	todo text[];
	left_over text[];
	stop timestamptz := clock_timestamp() + make_interval(secs => secs);
BEGIN
	SELECT array_agg(key ORDER BY key) INTO todo FROM public.keys;
	LOOP
		left_over := '{}';
		FOREACH k IN ARRAY todo LOOP
			IF public.attempt(k, 'settle') IS NULL THEN
				left_over := left_over || k;
			END IF;
			COMMIT;
		END LOOP;
		EXIT WHEN cardinality(left_over) = 0 OR clock_timestamp() > stop;
		todo := left_over;
		PERFORM pg_sleep(0.5);
	END LOOP;
END $$;
};
	my $t = $tag{ $node->name };
	$sql =~ s/TAG/$t/g;
	$node->safe_psql('postgres', $sql);
}

# Rows of a query on a node, each split on '|'.
sub rows
{
	my ($node, $sql) = @_;
	my $out = $node->safe_psql('postgres', $sql);
	return [ map { [ split /\|/, $_, -1 ] } grep { $_ ne '' } split /\n/, $out ];
}

# The item of a key, decoded ({} when absent).
sub item_of
{
	my ($key) = @_;
	my $id = $a->safe_psql('postgres', "SELECT idem.sync_item_id('idem', '$key')");
	return decode_json($dyn->dyn('get', $SyncTest::TABLE, $id));
}

# A key's outcome in a DynamoDB item, as a Perl structure.
sub item_data
{
	my ($item) = @_;
	return undef unless $item->{data};
	return decode_json(SyncTest::av_to_json($item->{data}));
}

# Executions per key in a node: committed (ran) and logged.
sub executions
{
	my ($node) = @_;
	my %ran = map { $_->[0] => $_->[1] }
	  @{ rows($node, 'SELECT key, count(*) FROM public.ran GROUP BY key') };
	my %logged;
	my $log = slurp_file($node->logfile);
	$logged{$1}++ while $log =~ /idem-107 executes key (\S+) on cluster/g;
	return (\%ran, \%logged);
}

# Crash signs in a node's log.
sub crashes
{
	my ($node) = @_;
	my @bad = grep { /terminated by signal|PANIC|server process .* was terminated|TRAP:/ }
	  split /\n/, slurp_file($node->logfile);
	return \@bad;
}

# ---------------------------------------------------------------------------
# Load under faults.
# ---------------------------------------------------------------------------

# Each pgbench client calls a random key of the current two-second window:
# both clusters ask for every key, first calls and replays interleaved.
my $script = "$PostgreSQL::Test::Utils::tmp_check/107_load.sql";
PostgreSQL::Test::Utils::append_to_file($script, q{\set r random(1, 8)
SELECT public.attempt('k' || (extract(epoch FROM clock_timestamp())::bigint / 2) || '-' || :r, 'load');
});

# Faults in order: name, seconds, what to do at the start and at the end.
# A restarted proxy counts from zero: $injected keeps the count before.
my $injected = 0;
my @schedule = (
	[ 'clean', 3, sub { }, sub { } ],
	[ '500 burst', 3, sub { $dyn->fault(mode => '500', count => 25) }, sub { $dyn->fault(mode => 'ok') } ],
	[ 'throttling', 3, sub { $dyn->fault(mode => 'throttle', count => 25) },
		sub { $dyn->fault(mode => 'ok') } ],
	[ 'slow answers', 8, sub { $dyn->fault(mode => 'slow', count => 12, ms => 4000) },
		sub { $dyn->fault(mode => 'ok') } ],
	[ 'connection resets', 3, sub { $dyn->fault(mode => 'reset', count => 25) },
		sub { $dyn->fault(mode => 'ok') } ],
	[ 'dynalite restart', 4, sub { $dyn->restart_dynalite(1.5) }, sub { } ],
	[ 'every request fails', 4, sub { $dyn->fault(mode => '500', count => 1000000000) },
		sub { $dyn->fault(mode => 'ok') } ],
	[ 'endpoint down', 3, sub { $injected = $dyn->stats->{injected}; $dyn->stop_proxy },
		sub { $dyn->start_proxy } ],
	[ 'clean again', 3, sub { }, sub { } ],);
my $duration = 0;
$duration += $_->[1] for @schedule;

my @bench;
for my $node ($a, $b)
{
	my %h = (node => $node, out => '', err => '');
	$h{run} = IPC::Run::start(
		[ 'pgbench', '-n', '-c', '3', '-j', '1', '-R', '40', '-T', $duration + 1,
			'-f', $script, '-h', $node->host, '-p', $node->port, 'postgres' ],
		'>', \$h{out}, '2>', \$h{err});
	push @bench, \%h;
}
my @phases;
for my $step (@schedule)
{
	my ($name, $secs, $begin, $end) = @$step;
	my $t0 = Time::HiRes::time();
	$begin->();
	Time::HiRes::sleep($secs - (Time::HiRes::time() - $t0)) if Time::HiRes::time() - $t0 < $secs;
	$end->();
	push @phases, [ $name, $t0, Time::HiRes::time() ];
}
for my $h (@bench)
{
	my $ok = eval { $h->{run}->finish };
	ok($ok, 'pgbench on ' . $h->{node}->name . ' ran to its end, no client aborted')
	  or diag("$h->{out}\n$h->{err}");
	like($h->{out}, qr/number of transactions actually processed: [1-9]/,
		'pgbench on ' . $h->{node}->name . ' made calls');
}
$dyn->fault(mode => 'ok');
$injected += $dyn->stats->{injected};
cmp_ok($injected, '>=', 75, "the proxy injected $injected faults");

# What callers got, per phase and SQLSTATE, on both clusters.
my %by_state;
for my $node ($a, $b)
{
	for my $p (@phases)
	{
		my ($name, $t0, $t1) = @$p;
		my $r = rows($node, qq{SELECT sqlstate, count(*) FROM public.attempts
WHERE at >= to_timestamp($t0) AND at < to_timestamp($t1) GROUP BY 1 ORDER BY 1});
		note(sprintf('%s, %-20s %s', $tag{ $node->name }, $name,
				join(' ', map { "$_->[0]=$_->[1]" } @$r)));
		$by_state{ $_->[0] } += $_->[1] for @$r;
	}
}
note('all load calls: ' . join(' ', map { "$_=$by_state{$_}" } sort keys %by_state));
for my $node ($a, $b)
{
	note($tag{ $node->name } . " $_->[1]x $_->[0]") for @{ rows($node, q{
SELECT left(sqlstate || ' ' || regexp_replace(coalesce(detail, message), '[0-9]+', 'N', 'g'), 110), count(*)
  FROM public.attempts WHERE sqlstate <> 'ok' GROUP BY 1 ORDER BY 2 DESC}) };
}
cmp_ok($by_state{IK503} // 0, '>', 0, 'faults failed some first calls with IK503');
cmp_ok($by_state{ok} // 0, '>', 0, 'and many calls succeeded');

# Every key either cluster asked for, on both.
my %keys;
$keys{ $_->[0] } = 1 for map { @{ rows($_, 'SELECT DISTINCT key FROM public.attempts') } } ($a, $b);
my @keys = sort keys %keys;
cmp_ok(scalar(@keys), '>=', 20, scalar(@keys) . ' keys were asked for');
for my $node ($a, $b)
{
	$node->safe_psql('postgres',
		'INSERT INTO public.keys VALUES ' . join(',', map { "('$_')" } @keys));
}

# Retry every key until it has an outcome: a on its own first, then b.
my $t_settle = Time::HiRes::time();
for my $node ($a, $b)
{
	$node->safe_psql('postgres', 'CALL public.settle(90)');
	ok(SyncTest::wait_delivered($node), $node->name . ' delivered every outcome');
}
note(sprintf('retrying every key to an outcome took %.1f s', Time::HiRes::time() - $t_settle));

# --- executions: one per key between the two clusters
my %outcome;
for my $node ($a, $b)
{
	my %o = map { $_->[0] => $_->[1] }
	  @{ rows($node, q{SELECT r.key, r.outcome::text FROM idem.records r JOIN public.keys USING (key)}) };
	$outcome{ $tag{ $node->name } } = \%o;
	is(scalar(keys %o), scalar(@keys), $node->name . ' has an outcome for every key');
}
my ($ran_a, $log_a) = executions($a);
my ($ran_b, $log_b) = executions($b);
my @twice = grep { ($ran_a->{$_} // 0) + ($ran_b->{$_} // 0) != 1 } @keys;
is(scalar(@twice), 0, 'every key ran exactly once between the two clusters')
  or diag(join("\n", map { "$_: a ran it " . ($ran_a->{$_} // 0) . ', b ' . ($ran_b->{$_} // 0) } @twice));
my @unlogged = grep { ($log_a->{$_} // 0) != ($ran_a->{$_} // 0) || ($log_b->{$_} // 0) != ($ran_b->{$_} // 0) } @keys;
is(scalar(@unlogged), 0, 'no execution was rolled back (log and table agree)')
  or diag(join("\n", map { "$_: logged " . ($log_a->{$_} // 0) . '/' . ($log_b->{$_} // 0) } @unlogged));
my $n_a = grep { $ran_a->{$_} } @keys;
note(sprintf('%d keys: %d ran on a, %d on b', scalar(@keys), $n_a, scalar(@keys) - $n_a));

# --- outcomes: the same everywhere
my @differ = grep { ($outcome{a}{$_} // '') ne ($outcome{b}{$_} // '') } @keys;
is(scalar(@differ), 0, 'both clusters hold the same outcome for every key')
  or diag(join("\n", map { "$_: a $outcome{a}{$_}, b $outcome{b}{$_}" } @differ[ 0 .. ($#differ > 9 ? 9 : $#differ) ]));
for my $node ($a, $b)
{
	is($node->safe_psql('postgres', q{SELECT count(*) FROM public.attempts a JOIN idem.records r USING (key)
WHERE a.sqlstate = 'ok' AND a.outcome <> r.outcome}), '0',
		'every answer a caller got on ' . $node->name . ' is the recorded outcome');
	my $bad = rows($node, q{SELECT sqlstate, count(*), min(message) FROM public.attempts
WHERE sqlstate NOT IN ('ok', 'IK503', 'IK409') GROUP BY 1});
	is(scalar(@$bad), 0, 'every failed call on ' . $node->name . ' failed with IK503 or IK409')
	  or diag(join("\n", map { join(' ', @$_) } @$bad));
}
my %items = map { $_->{id}{S} => $_ } @{ $dyn->scan };
my %item_id = map { $_->[0] => $_->[1] }
  @{ rows($a, q{SELECT key, idem.sync_item_id('idem', key) FROM public.keys}) };
my @not_completed = grep { (($items{ $item_id{$_} } // {})->{status}{S} // '') ne 'COMPLETED' } @keys;
is(scalar(@not_completed), 0, 'DynamoDB has a COMPLETED item for every key')
  or diag(join(', ', @not_completed));
my @other_data = grep {
	my $item = $items{ $item_id{$_} };
	!$item || $json->encode(item_data($item)) ne $json->encode(decode_json($outcome{a}{$_} // 'null'))
} @keys;
is(scalar(@other_data), 0, "every item holds the key's outcome") or diag(join(', ', @other_data));
for my $node ($a, $b)
{
	is($node->safe_psql('postgres',
			q{SELECT pending || '/' || failed || '/' || conflicts FROM idem.sync_status}),
		'0/0/0', $node->name . ': nothing pending, failed or in conflict');
}
note(sprintf('load phase done after %.0f s', Time::HiRes::time() - $t_start));

# ---------------------------------------------------------------------------
# The window for two executions: a committed outcome that cannot reach
# DynamoDB while its lease lapses.
# ---------------------------------------------------------------------------

my @take = map { "take-$_" } 1 .. 3;      # lease 2s; b asks once it lapsed
my @lapse = map { "lapse-$_" } 1 .. 3;    # lease 2s; nobody asks during the cut
my @hold = map { "hold-$_" } 1 .. 3;      # lease 15s; b asks during the cut
my $holdwait = 'hold-wait';               # lease 15s; b waits through the cut
my $dead = PostgreSQL::Test::Cluster::get_free_port();

# SQL array of keys.
sub arr
{
	return 'ARRAY[' . join(',', map { "'$_'" } @_) . ']';
}

my $bg = $a->background_psql('postgres');
$bg->query_safe('BEGIN');
$bg->query_safe(q{SET LOCAL idem.lease = '2s'});
is($bg->query_safe('SELECT count(public.attempt(k, \'window\')) FROM unnest(' . arr(@take, @lapse) . ') k'),
	'6', 'a runs the short-lease keys');
$bg->query_safe(q{SET LOCAL idem.lease = '15s'});
is($bg->query_safe('SELECT count(public.attempt(k, \'window\')) FROM unnest(' . arr(@hold, $holdwait) . ') k'),
	'4', 'a runs the long-lease keys');
is(item_of($_)->{status}{S}, 'INPROGRESS', "$_ is claimed in DynamoDB") for ($take[0], $hold[0]);
# cut a's sync worker off from DynamoDB before the outcomes commit
$a->safe_psql('postgres', qq{ALTER SYSTEM SET idem.dynamodb_endpoint = 'http://127.0.0.1:$dead';
SELECT pg_reload_conf();});
Time::HiRes::sleep(0.5);    # the worker reloads at once; the lease is 2s
$bg->query_safe('COMMIT');
my $t_commit = Time::HiRes::time();
$bg->quit;
ok($a->poll_query_until('postgres',
		qq{SELECT pending = 10 AND last_error LIKE '%$dead%' FROM idem.sync_status}),
	"a's outcomes are committed but cannot reach DynamoDB");

# Wait out the short lease, then b asks for the keys.
my $lease_end_ms = item_of($take[0])->{in_progress_expiration}{N};
Time::HiRes::sleep(0.2) while Time::HiRes::time() * 1000 < $lease_end_ms + 200;
for my $k (@take)
{
	my $out = $b->safe_psql('postgres', "SELECT public.attempt('$k', 'window')->>'cluster'");
	is($out, 'b', "b takes $k over after a's lease lapsed and runs it");
}
for my $k (@hold)
{
	my $out = $b->safe_psql('postgres', qq{SET idem.wait_timeout = '1s';
SELECT coalesce(public.attempt('$k', 'window')->>'cluster', 'error')});
	is($out, 'error', "b cannot run $k while a's long lease is live");
}
is($b->safe_psql('postgres', q{SELECT string_agg(DISTINCT sqlstate, ',') FROM public.attempts
WHERE phase = 'window' AND key LIKE 'hold-%'}), 'IK409', 'it fails with IK409');
my ($wout, $werr) = ('', '');
my $waiter = IPC::Run::start([ 'psql', '-X', '-qAt', '-d', $b->connstr('postgres'), '-c',
	qq{SET idem.wait_timeout = '30s'; SELECT public.attempt('$holdwait', 'window')->>'cluster'} ],
	'>', \$wout, '2>', \$werr);
ok(SyncTest::wait_delivered($b), "b delivered its outcomes of the keys it took over");
sleep 1;
is($b->safe_psql('postgres', "SELECT count(*) FROM public.attempts WHERE key = '$holdwait'"), '0',
	'b keeps waiting for a key whose lease is live');
is(item_of($lapse[0])->{status}{S}, 'INPROGRESS', 'a lapsed claim nobody asked for is still there');

# Reconnect a: its outcomes land where its claim still stands, and
# conflict where b took the key over.
$a->safe_psql('postgres', q{ALTER SYSTEM RESET idem.dynamodb_endpoint; SELECT pg_reload_conf();});
my $cut = Time::HiRes::time() - $t_commit;
ok(SyncTest::wait_delivered($a), 'a delivered or judged every outcome once reconnected');
$waiter->finish;
is($wout, "a\n", "the waiting call on b replays a's outcome once it lands") or diag($werr);
for my $k (@lapse, @hold)
{
	is($b->safe_psql('postgres', "SELECT public.attempt('$k', 'window')->>'cluster'"), 'a',
		"b replays a's outcome of $k");
}
my ($ran_a2) = executions($a);
my ($ran_b2) = executions($b);
my %twice = map { $_ => ($ran_a2->{$_} // 0) + ($ran_b2->{$_} // 0) } (@take, @lapse, @hold, $holdwait);
is(join(',', map { $twice{$_} } @take), '2,2,2', 'every taken-over key ran twice, once on each cluster');
is(join(',', map { $twice{$_} } @lapse, @hold, $holdwait), '1,1,1,1,1,1,1',
	'keys nobody took over ran once');
is($a->safe_psql('postgres', q{SELECT string_agg(state || ':' || (remote_outcome->>'cluster'), ',' ORDER BY key)
FROM idem.sync_outbox WHERE key LIKE 'take-%'}), 'conflict:b,conflict:b,conflict:b',
	"a's outcomes of the taken-over keys are conflicts holding b's outcome");
like($a->safe_psql('postgres', q{SELECT min(last_error) FROM idem.sync_outbox WHERE key LIKE 'take-%'}),
	qr/lease ended before its outcome was delivered/, 'saying the lease ended first');
is($a->safe_psql('postgres', q{SELECT pending || '/' || failed || '/' || conflicts FROM idem.sync_status}),
	'0/0/3', 'a counts the three conflicts, nothing else');
is($a->safe_psql('postgres', q{SELECT string_agg(state, ',' ORDER BY key) FROM idem.sync_outbox
WHERE key LIKE 'lapse-%' OR key LIKE 'hold-%'}), join(',', ('delivered') x 7),
	'the other outcomes of a were delivered');
is(join(',', map { item_data(item_of($_))->{cluster} } @take, @lapse, @hold),
	'b,b,b,a,a,a,a,a,a', "DynamoDB holds b's outcome of the taken-over keys, a's of the others");
is($a->safe_psql('postgres', qq{SELECT string_agg(outcome->>'cluster', ',') FROM idem.records WHERE key = ANY (@{[ arr(@take) ]})})
	  . '/' . $b->safe_psql('postgres', qq{SELECT string_agg(outcome->>'cluster', ',') FROM idem.records WHERE key = ANY (@{[ arr(@take) ]})}),
	'a,a,a/b,b,b', 'so each cluster replays its own outcome of a taken-over key');
my @gap = map {
	$b->safe_psql('postgres', "SELECT extract(epoch FROM at) FROM public.ran WHERE key = '$_'")
	  - $a->safe_psql('postgres', "SELECT extract(epoch FROM at) FROM public.ran WHERE key = '$_'")
} @take;
note(sprintf('window: a cut off from DynamoDB for %.1f s after committing; '
	  . 'lease 2s: %d of %d keys asked for by b ran twice (b ran them %s s after a), '
	  . '%d of %d not asked for ran once; lease 15s: %d of %d ran twice (b got IK409 or waited %s)',
	$cut, scalar(grep { $twice{$_} == 2 } @take), scalar(@take),
	join('/', map { sprintf('%.1f', $_) } @gap),
	scalar(grep { $twice{$_} == 1 } @lapse), scalar(@lapse),
	scalar(grep { $twice{$_} == 2 } @hold, $holdwait), scalar(@hold) + 1, 'and replayed'));

# --- the same with every request failing instead of a cut-off cluster:
# once the outage ends, a's sync worker (retrying every 500 ms at most)
# and b's first calls race for each key whose lease lapsed meanwhile
my @race = map { "race-$_" } 1 .. 5;
$bg = $a->background_psql('postgres');
$bg->query_safe('BEGIN');
$bg->query_safe(q{SET LOCAL idem.lease = '2s'});
is($bg->query_safe('SELECT count(public.attempt(k, \'window\')) FROM unnest(' . arr(@race) . ') k'),
	'5', 'a runs the race keys');
$lease_end_ms = item_of($race[-1])->{in_progress_expiration}{N};
$dyn->fault(mode => '500', count => 1000000000);
$bg->query_safe('COMMIT');
$t_commit = Time::HiRes::time();
$bg->quit;
Time::HiRes::sleep(0.1) while Time::HiRes::time() * 1000 < $lease_end_ms + 300;
$dyn->fault(mode => 'ok');
my $race_out = $b->safe_psql('postgres',
	join("\n", map { "SELECT coalesce(public.attempt('$_', 'window')->>'cluster', 'error');" } @race));
my $outage = Time::HiRes::time() - $t_commit;
ok(SyncTest::wait_delivered($b) && SyncTest::wait_delivered($a), 'both delivered after the outage');
($ran_a2) = executions($a);
($ran_b2) = executions($b);
my @race_twice = grep { ($ran_a2->{$_} // 0) + ($ran_b2->{$_} // 0) == 2 } @race;
is(scalar(grep { ($ran_a2->{$_} // 0) + ($ran_b2->{$_} // 0) > 2 } @race), 0, 'no race key ran more than twice');
is(join(',', split /\n/, $race_out), join(',', map { ($ran_b2->{$_} // 0) ? 'b' : 'a' } @race),
	"b answered its own outcome exactly where it ran the key, a's elsewhere");
is($a->safe_psql('postgres', q{SELECT string_agg(key, ',' ORDER BY key) FROM idem.sync_outbox
WHERE key LIKE 'race-%' AND state = 'conflict'}), join(',', @race_twice),
	'every key that ran twice shows as a conflict on a, and no other');
is(join(',', map { item_data(item_of($_))->{cluster} } @race), join(',', map { ($ran_b2->{$_} // 0) ? 'b' : 'a' } @race),
	'DynamoDB holds the outcome of whoever completed the key last under its own claim');
note(sprintf('window, every request failing for %.1f s after a committed, lease 2s: '
	  . '%d of %d keys ran twice (b first after the outage), %d landed from a first and b replayed',
	$outage, scalar(@race_twice), scalar(@race), scalar(@race) - scalar(@race_twice)));

# --- a first call whose PutItem times out gets IK503, but the PutItem
# lands after the rollback's DeleteItem: the claim is dead, though nothing
# ran.  Other clusters wait for its lease; the cluster that made it knows
# (it holds the key lock and has no record) and takes it over at once.
$dyn->fault(mode => 'slow', count => 1, ms => 4500);
my $t_late = Time::HiRes::time();
is($a->safe_psql('postgres', q{SET idem.lease = '9s';
SELECT coalesce(public.attempt('late-1', 'window')->>'cluster', 'error')}), 'error',
	'a first call whose PutItem is slower than the time-out fails');
is($a->safe_psql('postgres', q{SELECT sqlstate FROM public.attempts WHERE key = 'late-1'}), 'IK503', 'with IK503');
my $late;
for (1 .. 50)
{
	$late = item_of('late-1');
	last if %$late;
	Time::HiRes::sleep(0.1);
}
is($late->{status}{S} // 'absent', 'INPROGRESS', 'its PutItem landed after the rollback deleted nothing');
is($b->safe_psql('postgres', q{SET idem.wait_timeout = '500ms';
SELECT coalesce(public.attempt('late-1', 'window')->>'cluster', 'error')}), 'error',
	'so b cannot run the key while the dead claim lasts');
$lease_end_ms = $late->{in_progress_expiration}{N} // 0;
is($a->safe_psql('postgres', q{SELECT public.attempt('late-1', 'window')->>'cluster'}), 'a',
	'a takes its own dead claim over and runs the key');
cmp_ok(Time::HiRes::time() * 1000, '<', $lease_end_ms, "before the dead claim's lease ends");
ok(SyncTest::wait_delivered($a), "a delivers late-1's outcome");
is($b->safe_psql('postgres', q{SELECT public.attempt('late-1', 'window')->>'cluster'}), 'a',
	"b then replays a's outcome");
($ran_a2) = executions($a);
($ran_b2) = executions($b);
is(($ran_a2->{'late-1'} // 0) . '/' . ($ran_b2->{'late-1'} // 0), '1/0', 'the key ran once, on a');
note(sprintf('a call that failed with IK503 on a timed-out PutItem: its own cluster ran the key %.1f s later, '
	  . '%.1f s before the dead claim\'s lease (9s) ended', Time::HiRes::time() - $t_late,
	$lease_end_ms / 1000 - Time::HiRes::time()));

# --- the other way to two executions: fn runs longer than its lease.  b
# takes the key over and runs it; a refuses to commit its lapsed claim
# (IK412), so its effects roll back, and it then replays b's outcome.
my ($lout, $lerr) = ('', '');
my $long = IPC::Run::start([ 'psql', '-X', '-qAt', '-d', $a->connstr('postgres'),
	'-c', '\\set VERBOSITY verbose',
	'-c', q{SET idem.lease = '1s'; SELECT public.attempt('overrun', 'window', 3)->>'cluster'} ],
	'>', \$lout, '2>', \$lerr);
$a->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'})
  or die 'the long call never started';
$lease_end_ms = item_of('overrun')->{in_progress_expiration}{N};
Time::HiRes::sleep(0.1) while Time::HiRes::time() * 1000 < $lease_end_ms + 100;
is($b->safe_psql('postgres', q{SELECT public.attempt('overrun', 'window')->>'cluster'}), 'b',
	'b runs a key whose call on a outlives its lease');
eval { $long->finish };
like($lerr, qr/IK412.*claim of idempotency key "overrun" lapsed before commit/,
	'a refuses to commit the call whose claim lapsed, with IK412');
($ran_a2, my $logged_a2) = executions($a);
($ran_b2) = executions($b);
is(($logged_a2->{overrun} // 0) . '/' . ($ran_a2->{overrun} // 0) . '/' . ($ran_b2->{overrun} // 0), '1/0/1',
	'fn ran on both clusters, but only b committed its effects');
is($a->safe_psql('postgres', q{SELECT count(*) FROM idem.sync_outbox WHERE key = 'overrun'}), '0',
	'a queued no outcome');
ok(SyncTest::wait_delivered($b), "b delivered its outcome");
is($a->safe_psql('postgres', q{SELECT public.attempt('overrun', 'window')->>'cluster'}), 'b',
	"a then replays b's outcome");
is(item_data(item_of('overrun'))->{cluster}, 'b', "which DynamoDB holds");
note('fn longer than its lease (1s lease, 3s fn): fn ran on both clusters; a rolled back with IK412, one committed outcome');

# --- no crash; every failure of the whole test IK503 or IK409
for my $node ($a, $b)
{
	my $bad = rows($node, q{SELECT sqlstate, count(*), min(message) FROM public.attempts
WHERE sqlstate NOT IN ('ok', 'IK503', 'IK409') GROUP BY 1});
	is(scalar(@$bad), 0, 'no other SQLSTATE on ' . $node->name) or diag(join("\n", map { join(' ', @$_) } @$bad));
	note($tag{ $node->name } . ' log: ' . scalar(() = slurp_file($node->logfile) =~ /WARNING:  gave up deleting|WARNING:  could not delete/g)
		  . ' warnings about claims a rollback could not delete');
}
for my $node ($a, $b)
{
	my $bad = crashes($node);
	is(scalar(@$bad), 0, 'no crash in ' . $node->name) or diag(join("\n", @$bad));
}
note(sprintf('test took %.0f s', Time::HiRes::time() - $t_start));

done_testing();
