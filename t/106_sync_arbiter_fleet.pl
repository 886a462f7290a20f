# Copyright (c) 2026, the idem developers


# 106_sync_arbiter_fleet.pl
#	Arbiter mode across a fleet: three PostgreSQL clusters with
#	idem.arbiter = 'dynamodb' and two node processes running a handler made
#	idempotent by Powertools for AWS Lambda (TypeScript) share one DynamoDB
#	table.  Each of 200 keys is called 8 times at the same instant, the
#	calls spread over all five parties.  A ledger of executions (a row per
#	committed fn run in each cluster, each process's handler runs) holds
#	exactly one execution per key; every one of the 8 callers of a key gets
#	the outcome of that one execution, without an error (a Lambda caller
#	that Powertools turns away while another party holds the key retries,
#	as Lambda would); and DynamoDB ends with one COMPLETED item per key
#	holding that outcome, with nothing failed or in conflict and no crash.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use IPC::Run;
use JSON::PP;
use List::Util qw(max min sum0);
use Time::HiRes ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use SyncTest;

$ENV{AWS_ACCESS_KEY_ID} = $SyncTest::AKID;
$ENV{AWS_SECRET_ACCESS_KEY} = $SyncTest::SECRET;
delete $ENV{AWS_SESSION_TOKEN};

my $nkeys = 200;
my $retries = 8;
my $step_ms = 100;			# between the instants of two keys
my $pg_lanes = 12;			# connections per cluster
my $lambda_lanes = 16;		# concurrent invocations per node process
my $canon = JSON::PP->new->canonical;
my $dyn = SyncTest->new;
my @clusters = map {
	$dyn->pg_node("pg$_", qq{
idem.arbiter = 'dynamodb'
idem.lease = '30s'
idem.wait_timeout = '60s'
max_connections = 40
})
} (1 .. 3);
my @lambdas = ('lambda1', 'lambda2');
my @parties = ((map { $_->name } @clusters), @lambdas);
my @keys = map { sprintf('fleet-%03d', $_) } (1 .. $nkeys);

# fn of every cluster: leaves a ledger row per execution, runs for 30 ms
# and returns the party, the key and the ledger row's name.
for my $node (@clusters)
{
	my $party = $node->name;
	$node->safe_psql('postgres', qq{
CREATE TABLE public.ledger (n bigserial, key text NOT NULL, run text);
CREATE TABLE public.answers (key text, caller text, t_start float8, outcome jsonb, t_end float8);
CREATE FUNCTION public.work(args jsonb) RETURNS jsonb LANGUAGE plpgsql AS \$\$
DECLARE
	run text;
BEGIN
	run := '$party-' || nextval('public.ledger_n_seq');
	INSERT INTO public.ledger (key, run) VALUES (args->>'key', run);
	PERFORM pg_sleep(0.03);
	RETURN jsonb_build_object('party', '$party', 'key', args->>'key', 'run', run);
END \$\$;
});
}

# The plan: the 8 calls of key k all start at t0 + k * step; call i of key
# k goes to party (k + i) mod 5, so that each party gets one or two calls
# of every key.  A party's calls are dealt round robin to its lanes.
my $t0 = Time::HiRes::time() + 5;
my %plan;
for my $k (0 .. $#keys)
{
	my $at = $t0 + $k * $step_ms / 1000;
	push @{ $plan{ $parties[ ($k + $_) % @parties ] } }, { key => $keys[$k], at => $at }
	  for (0 .. $retries - 1);
}

my $dir = PostgreSQL::Test::Utils::tempdir();
my @runs;

# Start a cluster's calls: each lane is a psql that sleeps until a call's
# instant, then records the call's outcome and start and end times in
# public.answers (in the call's own transaction, so only answered calls
# leave a row).
for my $node (@clusters)
{
	my @calls = @{ $plan{ $node->name } };
	for my $lane (0 .. $pg_lanes - 1)
	{
		my $script = "\\set VERBOSITY verbose\n";
		for (my $i = $lane; $i < @calls; $i += $pg_lanes)
		{
			my ($key, $at) = ($calls[$i]{key}, $calls[$i]{at});
			$script .= sprintf("SELECT pg_sleep_until(to_timestamp(%.3f));\n", $at);
			$script .= qq{INSERT INTO public.answers SELECT '$key', '@{[ $node->name ]}/$lane', }
			  . q{extract(epoch FROM clock_timestamp()), }
			  . qq{idem.idempotent_call('$key', 'public.work(jsonb)'::regprocedure, '{"key": "$key"}'::jsonb), }
			  . qq{extract(epoch FROM clock_timestamp());\n};
		}
		my $base = "$dir/" . $node->name . "_$lane";
		append_to_file("$base.sql", $script);
		push @runs, { party => $node->name, base => $base, h => IPC::Run::start(
			[ 'psql', '-X', '-qAt', '-v', 'ON_ERROR_STOP=0', '-d', $node->connstr('postgres'), '-f', "$base.sql" ],
			'<', \undef, '>', "$base.out", '2>', "$base.err", IPC::Run::timeout(300)) };
	}
}

# Start each Lambda process with its calls.
for my $party (@lambdas)
{
	my $base = "$dir/$party";
	append_to_file("$base.json",
		encode_json([ map { { key => $_->{key}, at => int($_->{at} * 1000) } } @{ $plan{$party} } ]));
	push @runs, { party => $party, lambda => 1, base => $base, h => IPC::Run::start(
		[ 'node', "$SyncTest::HARNESS/fleet_lambda.js", $dyn->endpoint, $SyncTest::TABLE, 'idem',
			$party, $lambda_lanes, "$base.json" ],
		'<', \undef, '>', "$base.out", '2>', "$base.err", IPC::Run::timeout(300)) };
}

# Gather every answer, every execution and every error.
my %answers;		# key => [ { caller, outcome, t_start, t_end } ]
my %ledger;			# key => [ run ]
my @errors;
my $lambda_retries = 0;
my $ok_runs = 1;
for my $run (@runs)
{
	$ok_runs = 0 unless eval { $run->{h}->finish };
	my $err = slurp_file("$run->{base}.err");
	if ($run->{lambda})
	{
		my $report = eval { decode_json(slurp_file("$run->{base}.out")) };
		unless ($report)
		{
			push @errors, "$run->{party}: no report: $err";
			next;
		}
		for my $r (@{ $report->{results} })
		{
			push @{ $answers{ $r->{key} } }, { caller => $run->{party}, outcome => $canon->encode($r->{outcome}),
				t_start => $r->{t_start} / 1000, t_end => $r->{t_end} / 1000 };
		}
		push @{ $ledger{ $_->{key} } }, $_->{run} for @{ $report->{executions} };
		push @errors, map { "$run->{party}: $_->{key}: $_->{error}: $_->{message}" } @{ $report->{errors} };
		$lambda_retries += $report->{in_progress_retries};
		next;
	}
	push @errors, map { "$run->{party}: $_" } grep { /ERROR/ } split /\n/, $err;
}
ok($ok_runs, 'every caller process ran to its end');
for my $node (@clusters)
{
	for my $row (split /\n/, $node->safe_psql('postgres',
		q{SELECT key, caller, t_start, t_end, outcome::text FROM public.answers}))
	{
		my ($key, $caller, $t_start, $t_end, $outcome) = split /\|/, $row, 5;
		push @{ $answers{$key} }, { caller => $caller, outcome => $canon->encode(decode_json($outcome)),
			t_start => $t_start, t_end => $t_end };
	}
	for my $row (split /\n/, $node->safe_psql('postgres', q{SELECT key, run FROM public.ledger}))
	{
		my ($key, $run) = split /\|/, $row;
		push @{ $ledger{$key} }, $run;
	}
}

# --- every call answered, none failed
is(scalar(@errors), 0, 'no call failed')
  or diag(join("\n", @errors[ 0 .. min(9, $#errors) ]));
my @unanswered = grep { @{ $answers{$_} // [] } != $retries } @keys;
is(scalar(@unanswered), 0, "all $retries callers of every key were answered")
  or diag('keys: ' . join(', ', map { "$_ (" . scalar(@{ $answers{$_} // [] }) . ')' } @unanswered[ 0 .. min(9, $#unanswered) ]));
note('Powertools refusals (IdempotencyAlreadyInProgressError) retried by the Lambda callers: ' . $lambda_retries);

# --- the ledger: one execution per key, in the whole fleet
my @not_once = grep { @{ $ledger{$_} // [] } != 1 } @keys;
is(scalar(@not_once), 0, 'the ledger holds exactly one execution per key')
  or diag('keys not run once: ' . join(', ', map { "$_ [" . join(' ', @{ $ledger{$_} // [] }) . ']' } @not_once[ 0 .. min(9, $#not_once) ]));
is(sum0(map { scalar @$_ } values %ledger), $nkeys, "$nkeys executions in all");

# --- every caller of a key got the outcome of its one execution
my @split = grep { my %o = map { $_->{outcome} => 1 } @{ $answers{$_} // [] }; keys %o != 1 } @keys;
is(scalar(@split), 0, 'every caller of a key got the same outcome')
  or diag(join("\n", map { my $k = $_; "$k: " . join(' / ', map { "$_->{caller} $_->{outcome}" } @{ $answers{$k} }) }
	@split[ 0 .. min(4, $#split) ]));
my %outcome_of;		# key => the outcome its callers got
my @foreign;
for my $k (@keys)
{
	next unless @{ $answers{$k} // [] } && @{ $ledger{$k} // [] } == 1;
	$outcome_of{$k} = $answers{$k}[0]{outcome};
	my $o = decode_json($outcome_of{$k});
	push @foreign, $k unless $o->{key} eq $k && $o->{run} eq $ledger{$k}[0] && $ledger{$k}[0] =~ /^\Q$o->{party}\E-/;
}
is(scalar(@foreign), 0, "the outcome is that of the key's ledger entry")
  or diag('keys: ' . join(', ', map { "$_ $outcome_of{$_}" } @foreign[ 0 .. min(9, $#foreign) ]));

# --- the calls of a key did overlap, and every party won keys
my $together = grep
{
	my @a = @{ $answers{$_} // [] };
	@a && max(map { $_->{t_start} } @a) < min(map { $_->{t_end} } @a)
} @keys;
note("keys whose $retries calls were all in flight at one instant: $together of $nkeys");
cmp_ok($together, '>=', $nkeys / 4, 'the calls of many keys ran all at once');
my %won;
for my $k (@keys)
{
	$won{ $_ =~ s/-\d+$//r }++ for @{ $ledger{$k} // [] };
}
note('executions per party: ' . join(', ', map { "$_ " . ($won{$_} // 0) } @parties));
is(scalar(grep { $won{$_} } @parties), scalar(@parties), 'every party executed some keys');

# --- DynamoDB: one COMPLETED item per key, holding its outcome
ok(SyncTest::wait_delivered($_), $_->name . ' delivered its outcomes') for @clusters;
my $items = $dyn->scan;
is(scalar(@$items), $nkeys, 'one item per key, nothing else');
my %items = map { $_->{id}{S} => $_ } @$items;
my @ids = split /\n/, $clusters[0]->safe_psql('postgres',
	'SELECT idem.sync_item_id(\'idem\', k) FROM unnest(ARRAY[' . join(',', map { "'$_'" } @keys) . ']) WITH ORDINALITY u(k, i) ORDER BY i');
my @bad_items;
for my $i (0 .. $#keys)
{
	my $item = $items{ $ids[$i] };
	my $k = $keys[$i];
	push @bad_items, "$k " . ($item ? $canon->encode($item) : 'missing')
	  unless $item && $item->{status}{S} eq 'COMPLETED' && defined $outcome_of{$k} && $item->{data}
	  && $canon->encode(decode_json(SyncTest::av_to_json($item->{data}))) eq $outcome_of{$k};
}
is(scalar(@bad_items), 0, 'every item is COMPLETED with the outcome its callers got')
  or diag(join("\n", @bad_items[ 0 .. min(4, $#bad_items) ]));
for my $node (@clusters)
{
	is($node->safe_psql('postgres',
		q{SELECT pending || '/' || in_flight || '/' || failed || '/' || conflicts FROM idem.sync_status}),
		'0/0/0/0', $node->name . ': nothing pending, in flight, failed or in conflict');
	unlike(slurp_file($node->logfile), qr/terminated by signal|PANIC/, $node->name . ': no crash');
}

done_testing();
