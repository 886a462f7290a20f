# Copyright (c) 2026, the idem developers

# Poolers: through pgbouncer in transaction pooling mode, where consecutive
# transactions of one client run on different server sessions, concurrent
# retries still execute once and every client gets the one recorded outcome;
# replays work, and last_call_replayed() called in the same statement tells
# them apart.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use IdemTestUtil;

plan skip_all => 'pgbouncer is not installed (scripts/setup.sh installs it)'
  unless system('sh', '-c', 'command -v pgbouncer >/dev/null') == 0;

my $node = NewNode('pooled');
$node->start;
LoadShop($node);
$node->safe_psql('postgres', q{
	CREATE ROLE shopper LOGIN;
	GRANT USAGE ON SCHEMA idem TO shopper;
});

# pgbouncer pooling transactions onto at most three server sessions.
my ($bouncer, $connstr, $dir) = StartPgbouncer($node, 3, 'shopper', 'postgres');
my $pooled = $connstr->('shopper');
pass('pgbouncer accepts connections');

sub pooled_psql
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'psql', '-X', '-qAt', '-v', 'ON_ERROR_STOP=1', '-d', $pooled ],
		'<', \$sql, '>', \$out, '2>', \$err);
	chomp $out;
	return ($?, $out, $err);
}

# Twelve clients at once, each calling the same six keys in its own order;
# every call sleeps in fn, so first calls overlap and callers wait.  One call
# per transaction: each may run on another server session.
my @keys = map { "pooled-$_" } 1 .. 6;
my @clients;
for my $c (1 .. 12)
{
	my @order = sort { ($a . $c) cmp ($b . $c) } @keys;
	@order = reverse @order if $c % 2;
	my $sql = join '', map {
		qq{SELECT '$_', idem.idempotent_call('$_', 'shop.place_order(jsonb)', '{"sleep": 0.2, "key": "$_"}')::text, idem.last_call_replayed();\n}
	} @order;
	my ($out, $err) = ('', '');
	# from a file: IPC::Run feeds a scalar only while the harness is pumped
	append_to_file("$dir/client$c.sql", $sql);
	push @clients, { out => \$out, err => \$err,
		h => IPC::Run::start([ 'psql', '-X', '-qAt', '-v', 'ON_ERROR_STOP=1', '-d', $pooled, '-f', "$dir/client$c.sql" ],
			'>', \$out, '2>', \$err) };
}
my (%outcomes, %ran, $calls, $failures);
for my $client (@clients)
{
	$client->{h}->finish;
	$failures++ if $client->{h}->result != 0;
	diag(${ $client->{err} }) if ${ $client->{err} } ne '';
	for (split /\n/, ${ $client->{out} })
	{
		my ($k, $outcome, $replayed) = split /\|/;
		$calls++;
		$outcomes{$k}{$outcome}++;
		$ran{$k}++ if $replayed eq 'f';
	}
}
is($failures // 0, 0, 'every client finished without error');
is($calls, 12 * 6, 'every call returned an outcome');
is(join(',', map { scalar keys %{ $outcomes{$_} } } @keys), join(',', (1) x 6),
	'all clients got one and the same outcome per key');
is(join(',', map { $ran{$_} // 0 } @keys), join(',', (1) x 6),
	'exactly one call per key ran fn, the others replayed');
is($node->safe_psql('postgres',
	q{SELECT string_agg(n::text, ',') FROM (SELECT count(*) AS n FROM shop.effects WHERE payload ->> 'key' LIKE 'pooled-%' GROUP BY payload ->> 'key') e}),
	join(',', (1) x 6), 'fn ran once per key');
my %recorded = map { split /\|/, $_, 2 } split /\n/, $node->safe_psql('postgres',
	q{SELECT key, outcome::text FROM idem.records WHERE key LIKE 'pooled-%'});
is(join(',', map { join('', keys %{ $outcomes{$_} }) eq ($recorded{$_} // '') ? 'same' : 'differs' } @keys),
	join(',', ('same') x 6), 'the outcome the clients got is the recorded one');

# The pooled sessions really were shared: more clients than server sessions.
my ($ret, $pools) = (0, '');
($ret, $pools) = $node->psql('postgres',
	q{SELECT count(*) FROM pg_stat_activity WHERE usename = 'shopper'});
cmp_ok($pools, '<=', 3, 'at most three server sessions served the twelve clients');

# A transaction that holds the first call open: a client through the pooler
# waits for it and then replays.  SET LOCAL scopes idem's settings to one
# transaction, as transaction pooling requires.
my ($hout, $herr) = ('', '');
sub hold
{
	my ($k) = @_;
	append_to_file("$dir/$k.sql", qq{BEGIN;
SELECT idem.idempotent_call('$k', 'shop.place_order(jsonb)', '{"key": "$k"}')::text;
SELECT pg_sleep(1.5);
COMMIT;
});
	return IPC::Run::start([ 'psql', '-X', '-qAt', '-v', 'ON_ERROR_STOP=1', '-d', $pooled, '-f', "$dir/$k.sql" ],
		'>', \$hout, '2>', \$herr);
}
my $holder = hold('pooled-held');
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE usename = 'shopper' AND wait_event = 'PgSleep'})
  or die "the holding transaction never started: $herr";
my ($wret, $wout, $werr) = pooled_psql(q{
BEGIN;
SET LOCAL idem.wait_timeout = '30s';
SELECT idem.idempotent_call('pooled-held', 'shop.place_order(jsonb)', '{"key": "pooled-held"}')::text, idem.last_call_replayed();
COMMIT;
});
$holder->finish;
my ($held) = split /\n/, $hout;    # the call's line, before pg_sleep's
is($wret, 0, 'the waiting client succeeded') or diag($werr);
is($wout, "$held|t", 'the waiting client replayed the outcome of the holding transaction');
($wret, $wout) = pooled_psql(q{SHOW idem.wait_timeout});
is($wout, '10s', 'SET LOCAL did not leak into the pooled session');

# A waiter with idem.wait_timeout = 0 fails with IK409 through the pooler.
($hout, $herr) = ('', '');
$holder = hold('pooled-busy');
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE usename = 'shopper' AND wait_event = 'PgSleep'})
  or die "the holding transaction never started: $herr";
($wret, $wout, $werr) = pooled_psql(q{
\set VERBOSITY sqlstate
BEGIN;
SET LOCAL idem.wait_timeout = 0;
SELECT idem.idempotent_call('pooled-busy', 'shop.place_order(jsonb)', '{"key": "pooled-busy"}');
COMMIT;
});
$holder->finish;
like($werr, qr/ERROR:\s+IK409/, 'a busy key fails with IK409 through the pooler');
is($node->safe_psql('postgres', q{SELECT count(*) FROM shop.effects WHERE payload ->> 'key' = 'pooled-busy'}),
	'1', 'the refused call did not run fn');

$bouncer->signal('INT');
$bouncer->finish;
$node->stop;
done_testing();
