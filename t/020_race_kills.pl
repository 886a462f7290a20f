# Copyright (c) 2026, the idem developers

# Race with kills: many sessions retry a moving window of a few hundred keys
# at once through a function that writes a side effect and sleeps a few
# milliseconds, while random backends are killed with SIGKILL and the server
# is stopped in immediate mode and restarted at random moments.  Afterwards,
# for every key: a committed record has exactly one side effect and it is the
# one its outcome names, no side effect exists without its record, no key is
# stuck, the key table's index is intact, and every client that got an
# outcome got the one that was recorded.
#
# The suite runs it for IDEM_RACE_SECONDS (default 40); scripts/soak.sh runs
# it for as long as asked.  Tallies are printed as "# tally ..." lines.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use POSIX ();
use Time::HiRes qw(time sleep);
use IdemTestUtil;

my $seconds = $ENV{IDEM_RACE_SECONDS} // 40;
my $workers = $ENV{IDEM_RACE_WORKERS} // 6;
my $window = 300;           # keys in play at any moment
my $advance = 10;           # new keys per second entering the window
my $seed = $ENV{IDEM_RACE_SEED} // int(time() * 1000) % 1000000;
srand($seed);
note("seed $seed, $seconds s, $workers workers");

my $node = NewNode('race');
$node->append_conf('postgresql.conf', qq{
restart_after_crash = on
max_connections = 60
log_min_messages = warning
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION idem;
	CREATE EXTENSION amcheck;
	CREATE ROLE racer LOGIN;
	CREATE SCHEMA race;
	CREATE TABLE race.effects (id bigserial PRIMARY KEY, key text NOT NULL);
	CREATE FUNCTION race.work(k text) RETURNS jsonb LANGUAGE plpgsql AS $$
	DECLARE
		effect bigint;
	BEGIN
		INSERT INTO race.effects (key) VALUES (k) RETURNING id INTO effect;
		PERFORM pg_sleep(random() * 0.006);
		RETURN jsonb_build_object('effect', effect, 'key', k);
	END $$;
	GRANT USAGE ON SCHEMA race, idem TO racer;
	GRANT INSERT, SELECT ON race.effects TO racer;
	GRANT USAGE ON SEQUENCE race.effects_id_seq TO racer;
});

my $dir = PostgreSQL::Test::Utils::tempdir();
my $connstr = $node->connstr('postgres') . ' user=racer application_name=racer';
my $t0 = time();
my $deadline = $t0 + $seconds;

sub call_sql
{
	my ($tag, $k) = @_;
	return "SELECT '$tag', '$k', idem.idempotent_call('$k', 'race.work(text)', '$k'::text)::text, idem.last_call_replayed();\n";
}

# One client: batches of calls in autocommit mode or in transactions that
# commit, roll back, or run under REPEATABLE READ, each batch in a new psql
# (a new backend).  Outcomes count only once their transaction committed.
sub client
{
	my ($id) = @_;
	srand($seed + $id);
	local $ENV{PGOPTIONS} = '-c idem.wait_timeout=5s';
	my %tally;
	open(my $obs, '>', "$dir/observed.$id") or die $!;
	while (time() < $deadline)
	{
		my $base = int((time() - $t0) * $advance);
		# half the calls go to the newest keys, so that first calls race
		my @keys = map { 'key-' . ($base + (rand() < 0.5 ? $window - 1 - int(rand(20)) : int(rand($window)))) }
		  1 .. 1 + int(rand(4));
		my $mode = rand();
		my $sql = "\\set VERBOSITY sqlstate\n";
		if ($mode < 0.6)
		{
			$sql .= call_sql('R', $_) for @keys;
			$tally{batch_autocommit}++;
		}
		else
		{
			my ($begin, $end) =
			    $mode < 0.8 ? ('BEGIN', 'COMMIT')
			  : $mode < 0.9 ? ('BEGIN ISOLATION LEVEL REPEATABLE READ', 'COMMIT')
			  :               ('BEGIN', 'ROLLBACK');
			$tally{$end eq 'ROLLBACK' ? 'batch_rollback' : $begin =~ /REPEATABLE/ ? 'batch_repeatable_read' : 'batch_commit'}++;
			$sql .= "$begin;\n";
			$sql .= call_sql('T', $_) for @keys;
			$sql .= "$end;\nSELECT '$end';\n";
		}
		my ($out, $err) = ('', '');
		eval {
			IPC::Run::run([ 'psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', $connstr ],
				'<', \$sql, '>', \$out, '2>', \$err, IPC::Run::timeout(120));
		};
		$tally{client_exception}++ if $@;    # psql timed out, or exited before reading its input
		my @pending;
		for my $line (split /\n/, $out)
		{
			my @f = split /\|/, $line;
			if ($f[0] eq 'R') { print $obs "$f[1]\t$f[2]\n"; $tally{"outcome_$f[3]"}++; }
			elsif ($f[0] eq 'T') { push @pending, [@f]; }
			elsif ($f[0] eq 'COMMIT')
			{
				for my $p (@pending) { print $obs "$p->[1]\t$p->[2]\n"; $tally{"outcome_$p->[3]"}++; }
			}
			elsif ($f[0] eq 'ROLLBACK') { $tally{rolled_back_calls} += @pending; }
		}
		if ($err =~ /^psql: error: /m) { $tally{connect_failed}++; sleep(0.05); }
		elsif ($err =~ /server closed the connection|connection to server was lost|terminating connection/)
		{
			$tally{connection_lost}++;
		}
		$tally{"error_$1"}++ while $err =~ /(?:ERROR|FATAL):\s+([0-9A-Z]{5})$/mg;
	}
	close $obs;
	open(my $tf, '>', "$dir/tally.$id") or die $!;
	print $tf "$_ $tally{$_}\n" for sort keys %tally;
	close $tf;
}

my @pids;
for my $id (1 .. $workers)
{
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		eval { client($id); };
		print STDERR "client $id: $@" if $@;
		POSIX::_exit($@ ? 1 : 0);    # skip END blocks: the node belongs to the parent
	}
	push @pids, $pid;
}

# The chaos: SIGKILL a random busy client backend, or stop the server in
# immediate mode and start it again.  At least one of each happens.
sub wait_ready
{
	for (1 .. 600)
	{
		return 1 if system('pg_isready', '-q', '-h', $node->host, '-p', $node->port) == 0;
		sleep(0.1);
	}
	return 0;
}
my %chaos = (kills => 0, restarts => 0, kill_misses => 0);
my $step = 0;
while (time() < $deadline - 1)
{
	sleep(0.3 + rand(1.2));
	$step++;
	if ($step == 3 || rand() < 0.12)
	{
		$node->stop('immediate', fail_ok => 1);
		sleep(rand(0.5));
		$node->start(fail_ok => 1) or wait_ready();
		$chaos{restarts}++;
	}
	else
	{
		my ($ret, $pid) = $node->psql('postgres',
			q{SELECT pid FROM pg_stat_activity WHERE application_name = 'racer' ORDER BY state = 'active' DESC, random() LIMIT 1});
		if ($ret == 0 && $pid =~ /^\d+$/ && kill('KILL', $pid))
		{
			$chaos{kills}++;
			sleep(0.2);
		}
		else { $chaos{kill_misses}++; }
	}
	wait_ready() or die 'the server did not come back';
}
my $client_failures = 0;
for my $pid (@pids) { waitpid($pid, 0); $client_failures++ if $? != 0; }
is($client_failures, 0, 'every client process finished cleanly');
$node->start(fail_ok => 1) unless wait_ready();
wait_ready() or die 'the server is not up';

# Tallies.
my %tally = %chaos;
for my $id (1 .. $workers)
{
	open(my $tf, '<', "$dir/tally.$id") or next;
	while (<$tf>) { my ($k, $v) = split; $tally{$k} += $v; }
}
$tally{outcomes} = ($tally{outcome_t} // 0) + ($tally{outcome_f} // 0);
my @unexpected = grep { /^error_/ && !/^error_(IK409|40001|40P01|57P01|57P02|57P03|08006)$/ } sort keys %tally;

my %recorded = map { split /\|/, $_, 2 } split /\n/, $node->safe_psql('postgres',
	q{SELECT key, outcome::text FROM idem.records WHERE owner = 'racer'::regrole});
$tally{keys_recorded} = scalar keys %recorded;
$tally{effects} = $node->safe_psql('postgres', 'SELECT count(*) FROM race.effects');
my ($observed, $wrong, $unrecorded) = (0, 0, 0);
for my $id (1 .. $workers)
{
	open(my $obs, '<', "$dir/observed.$id") or next;
	while (<$obs>)
	{
		chomp;
		my ($k, $outcome) = split /\t/;
		$observed++;
		if (!defined $recorded{$k}) { $unrecorded++; diag("client got $outcome for $k, which has no record"); }
		elsif ($recorded{$k} ne $outcome) { $wrong++; diag("client got $outcome for $k, recorded $recorded{$k}"); }
	}
}
$tally{observed} = $observed;
note("tally $_ $tally{$_}") for sort keys %tally;

ok($tally{kills} > 0 && $tally{restarts} > 0, 'backends were killed and the server restarted');
ok(($tally{outcome_f} // 0) > 0 && ($tally{outcome_t} // 0) > 0, 'clients got first outcomes and replays');
is($observed, $tally{outcomes}, 'every outcome a client got was logged');
is($unrecorded, 0, 'no client got an outcome for a key without a committed record');
is($wrong, 0, 'every client that got an outcome got the recorded one');
is(join(', ', @unexpected), '', 'no unexpected errors');

my $check_effects = sub {
	my ($when) = @_;
	is($node->safe_psql('postgres', q{
		SELECT count(*) FROM idem.records r
		 WHERE (SELECT count(*) FROM race.effects e WHERE e.key = r.key) <> 1}),
		'0', "$when: every record has exactly one side effect");
	is($node->safe_psql('postgres', q{
		SELECT count(*) FROM idem.records r JOIN race.effects e ON e.key = r.key
		 WHERE (r.outcome ->> 'effect')::bigint <> e.id OR r.outcome ->> 'key' <> r.key}),
		'0', "$when: every record names its own side effect");
	is($node->safe_psql('postgres', q{
		SELECT count(*) FROM race.effects e
		 WHERE NOT EXISTS (SELECT FROM idem.records r WHERE r.key = e.key)}),
		'0', "$when: no side effect exists without its record");
};
$check_effects->('after the race');

# No key is stuck: with nobody else connected, every key ever in play gets an
# outcome at once (idem.wait_timeout = 0), replayed or run now.
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'}),
	'0', 'no key lock is left behind');
my $last_key = int($seconds * $advance) + $window;
my ($ret, $stdout, $stderr) = $node->psql('postgres', qq{
	SET ROLE racer;
	SET idem.wait_timeout = 0;
	SELECT count(*) FROM generate_series(0, $last_key) i,
		LATERAL (SELECT idem.idempotent_call('key-' || i, 'race.work(text)', ('key-' || i)::text)) c;
});
is($ret, 0, 'every key can be called without waiting');
is($stdout, $last_key + 1, 'every key has an outcome') or diag($stderr);
$check_effects->('after calling every key');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM generate_series(0, } . $last_key . q{) i
	 WHERE NOT EXISTS (SELECT FROM idem.records WHERE key = 'key-' || i)}),
	'0', 'every key has a record');

# The key table and its index survived the crashes intact.
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT bt_index_parent_check('idem.records_pkey', true)});
is($ret, 0, 'the primary key of idem.records passes amcheck') or diag($stderr);

$node->stop;
done_testing();
