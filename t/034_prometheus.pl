
# 034_prometheus.pl
#	monitoring/prometheus: Debian's prometheus-postgres-exporter, with
#	idem_queries.yaml, scrapes a cluster after a known workload, and the
#	scraped counters equal the workload's; the exporter runs as a role set
#	up as the query file says.  promtool checks the rules file and runs its
#	unit tests.

use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use IPC::Run;
use Time::HiRes ();
use IdemTestUtil;

my $exporter = '/usr/bin/prometheus-postgres-exporter';
plan skip_all => 'prometheus-postgres-exporter and promtool are not installed (scripts/setup.sh installs them)'
  unless -x $exporter && system('promtool --version >/dev/null 2>&1') == 0;

my $dir = "$FindBin::RealBin/../monitoring/prometheus";

# --- promtool
my ($out, $err) = ('', '');
ok(IPC::Run::run([ 'promtool', 'check', 'rules', "$dir/idem_rules.yml" ], '>', \$out, '2>', \$err),
	'promtool check rules accepts the rules file') or diag("$out$err");
ok(IPC::Run::run([ 'promtool', 'test', 'rules', "$dir/idem_rules_test.yml" ], '>', \$out, '2>', \$err),
	'the alerts fire in promtool test rules') or diag("$out$err");

# --- a cluster with a known workload
my $node = NewNode('prom');
if ($ENV{IDEM_DESTDIR})
{
	my $pkglibdir = `pg_config --pkglibdir`;
	chomp $pkglibdir;
	$node->append_conf('postgresql.conf',
		qq{dynamic_library_path = '$ENV{IDEM_DESTDIR}$pkglibdir:\$libdir'});
}
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'idem'");
$node->start;
LoadShop($node);
$node->safe_psql('postgres', q{
	CREATE ROLE idem_exporter LOGIN IN ROLE pg_monitor;
	GRANT USAGE ON SCHEMA idem TO idem_exporter;
	GRANT SELECT ON idem.sync_status TO idem_exporter;
	GRANT EXECUTE ON FUNCTION idem.sync_worker_state() TO idem_exporter;
	CREATE ROLE app LOGIN;
	GRANT USAGE ON SCHEMA idem TO app;
});
# 7 first calls, each replayed twice, 3 mismatches, by app; a lease by postgres
$node->safe_psql('postgres', q{
	SELECT idem.idempotent_call('p-' || i, 'shop.place_order(jsonb)', jsonb_build_object('i', i))
	  FROM generate_series(1, 7) i, generate_series(1, 3) r}, extra_params => [ '-U', 'app' ]);
for my $i (1 .. 3)
{
	my ($ret, $o, $e) = $node->psql('postgres',
		qq{SELECT idem.idempotent_call('p-$i', 'shop.place_order(jsonb)', '{"other": 1}'::jsonb)},
		extra_params => [ '-U', 'app' ]);
	like($e, qr/already used for a different request/, "mismatch $i");
}
$node->safe_psql('postgres', q{
	SELECT idem.release('job', (SELECT token FROM idem.claim('job', '{}', '1 minute')))});

# --- the exporter, on 127.0.0.1 only, through the unix socket
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $log = "$PostgreSQL::Test::Utils::tmp_check/exporter.log";
my $h = IPC::Run::start(
	[ $exporter, "--web.listen-address=127.0.0.1:$port", "--extend.query-path=$dir/idem_queries.yaml",
	  '--disable-default-metrics', '--disable-settings-metrics' ],
	'>', $log, '2>&1',
	init => sub {
		$ENV{DATA_SOURCE_NAME} = 'host=' . $node->host . ' port=' . $node->port
		  . ' user=idem_exporter dbname=postgres sslmode=disable';
	});
my $metrics = '';
for (1 .. 100)
{
	my $r = HTTP::Tiny->new(timeout => 10)->get("http://127.0.0.1:$port/metrics");
	$metrics = $r->{content} if $r->{success};
	last if $metrics =~ /^idem_stats_calls/m;
	Time::HiRes::sleep(0.2);
}
$h->kill_kill;
$h->finish;

# The value of a metric whose labels include all of %labels.
sub metric
{
	my ($name, %labels) = @_;
	for my $line (split /\n/, $metrics)
	{
		next unless $line =~ /^\Q$name\E\{(.*)\} (\S+)$/;
		my ($l, $v) = ($1, $2);
		next if grep { $l !~ /(^|,)\Q$_\E="\Q$labels{$_}\E"/ } keys %labels;
		return $v;
	}
	return undef;
}

my %app = (datname => 'postgres', rolname => 'app', api => 'idempotent_call', fn => 'shop.place_order(jsonb)');
is(metric('idem_stats_calls', %app), 24, 'calls: 21 and 3 mismatched') or diag(slurp_file($log) . $metrics);
is(metric('idem_stats_executions', %app), 7, 'executions: 7');
is(metric('idem_stats_replays', %app), 14, 'replays: 14');
is(metric('idem_stats_mismatches', %app), 3, 'mismatches: 3');
is(metric('idem_stats_timeouts', %app), 0, 'timeouts: none');
is(metric('idem_stats_wait_seconds', %app), 0, 'no wait time');
my %lease = (datname => 'postgres', rolname => 'postgres', api => 'lease', fn => '');
is(metric('idem_stats_calls', %lease), 1, 'the lease API: one claim');
is(metric('idem_stats_releases', %lease), 1, 'and one release');
is(metric('idem_sync_pending', datname => 'postgres'), 0, 'sync status: nothing pending');
is(metric('idem_sync_requests_sent', datname => 'postgres'), 0, 'sync status: no requests');
like($metrics, qr/^# TYPE idem_stats_calls counter$/m, 'calls is a counter');
like($metrics, qr/^# TYPE idem_sync_oldest_pending_age_seconds gauge$/m, 'the sync lag is a gauge');
unlike(slurp_file($log), qr/level=error/, 'the exporter logged no error');

$node->stop;
done_testing();
