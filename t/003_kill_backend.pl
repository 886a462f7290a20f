# Copyright (c) 2026, the idem developers

# A backend killed with SIGKILL in the middle of fn: the server recovers, the
# half-done call left nothing behind, and the key is free for a retry.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use IdemTestUtil;

my $node = NewNode('crash');
$node->append_conf('postgresql.conf', 'restart_after_crash = on');
$node->start;
LoadShop($node);

my $call = q{SELECT idem.idempotent_call('order-1', 'shop.place_order(jsonb)', '{"sku": 1, "sleep": 600}'::jsonb)};
my ($out, $err) = ('', '');
my $victim = IPC::Run::start(
	[ 'psql', '-X', '-d', $node->connstr('postgres'), '-c', $call ],
	'>', \$out, '2>', \$err);

# Wait until the function is running (its INSERT is done, it sleeps).
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE '%order-1%'})
  or die 'the call never started';
my $pid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE '%order-1%'});

# A second caller waits for the key meanwhile.
my ($wout, $werr) = ('', '');
my $waiter = IPC::Run::start(
	[ 'psql', '-X', '-d', $node->connstr('postgres'), '-c',
	  q{SET idem.wait_timeout = '10min'; SELECT idem.idempotent_call('order-1', 'shop.place_order(jsonb)', '{"sku": 1, "sleep": 600}'::jsonb)} ],
	'>', \$wout, '2>', \$werr);
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%order-1%'})
  or die 'the second call never waited';

kill 'KILL', $pid;
$victim->finish;
$waiter->finish;
like($err, qr/server closed the connection|terminating connection/, 'the killed call reported a lost connection');

# The postmaster restarts the cluster; wait until it takes connections again.
my $ready = 0;
for (1 .. 600)
{
	$ready = system('pg_isready', '-q', '-h', $node->host, '-p', $node->port) == 0;
	last if $ready;
	select(undef, undef, undef, 0.1);
}
ok($ready, 'the server recovered after the crash');
like(slurp_file($node->logfile), qr/was terminated by signal 9/, 'the log shows the killed backend');

is($node->safe_psql('postgres', 'SELECT count(*) FROM idem.records'), '0', 'no record of the killed call');
is($node->safe_psql('postgres', 'SELECT count(*) FROM shop.effects'), '0', 'no effect of the killed call');

# The key is free: a retry runs the function and records it.
my $retry = $node->safe_psql('postgres',
	q{SELECT idem.idempotent_call('order-1', 'shop.place_order(jsonb)', '{"sku": 1, "sleep": 0}'::jsonb) ->> 'sku';
	  SELECT idem.last_call_replayed();});
is($retry, "1\nf", 'the retry ran the function');
is($node->safe_psql('postgres', 'SELECT count(*) FROM shop.effects'), '1', 'exactly one execution survives');

$node->stop;
done_testing();
