# Copyright (c) 2026, the idem developers


# 034_prometheus.pl
#	monitoring/prometheus: Debian's prometheus-postgres-exporter, with
#	idem_queries.yaml, scrapes a cluster after a known workload, and the
#	scraped counters equal the workload's; the exporter runs as a role set
#	up as the query file says.  A second database holds a known sync state
#	(idem.dynamodb_table set, outbox rows in every state) and each idem_sync
#	metric equals what idem.sync_status shows.  promtool checks the rules
#	file and runs its unit tests.

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

# --- the exporter, on 127.0.0.1 only, through the unix socket; one scrape
# of database $db, returned as text
my $log = "$PostgreSQL::Test::Utils::tmp_check/exporter.log";
my $metrics = '';

sub scrape
{
	my ($db) = @_;
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $h = IPC::Run::start(
		[ $exporter, "--web.listen-address=127.0.0.1:$port", "--extend.query-path=$dir/idem_queries.yaml",
		  '--disable-default-metrics', '--disable-settings-metrics' ],
		'>>', $log, '2>&1',
		init => sub {
			$ENV{DATA_SOURCE_NAME} = 'host=' . $node->host . ' port=' . $node->port
			  . " user=idem_exporter dbname=$db sslmode=disable";
		});
	my $text = '';
	for (1 .. 100)
	{
		my $r = HTTP::Tiny->new(timeout => 10)->get("http://127.0.0.1:$port/metrics");
		$text = $r->{content} if $r->{success};
		last if $text =~ /^idem_stats_calls/m && $text =~ /^idem_sync_pending/m;
		Time::HiRes::sleep(0.2);
	}
	$h->kill_kill;
	$h->finish;
	return $text;
}

# The value of a metric of the latest scrape whose labels include all of %labels.
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

$metrics = scrape('postgres');

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
is(metric('idem_sync_setup_problem', datname => 'postgres'), 0, 'sync off: no set-up problem');
is(metric('idem_sync_seconds_since_delivery', datname => 'postgres'), 'NaN',
	'no delivery in the outbox: seconds_since_delivery is NaN');
is(metric('idem_sync_delivered_last_minute', datname => 'postgres'), 0, 'no delivery in the last minute');
is(metric('idem_sync_claim_deletes_pending', datname => 'postgres'), 0, 'no claim deletes pending');
is(metric('idem_sync_last_error_timestamp_seconds', datname => 'postgres'), 'NaN', 'no delivery error');

# --- a known sync state: idem.dynamodb_table set, and outcomes queued in a
# database the sync worker does not serve (it serves idem.dynamodb_database,
# postgres, whose outbox stays empty, so it sends nothing; the endpoint is a
# closed port all the same).  Woken by the commits, the worker finds no AWS
# credentials and records that as its last error.  The outbox rows are then
# moved by hand into each state and conflict cause that idem.sync_status
# counts.
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET idem.dynamodb_table = 'idem_prom';
	ALTER SYSTEM SET idem.dynamodb_endpoint = 'http://127.0.0.1:9';
	SELECT pg_reload_conf();
	CREATE DATABASE other;
});
LoadShop($node, 'other');
$node->safe_psql('other', q{
	GRANT USAGE ON SCHEMA idem TO idem_exporter;
	GRANT SELECT ON idem.sync_status TO idem_exporter;
	GRANT EXECUTE ON FUNCTION idem.sync_worker_state() TO idem_exporter;
});
$node->poll_query_until('other', q{SELECT current_setting('idem.dynamodb_table') = 'idem_prom'})
  or die 'the reload did not set idem.dynamodb_table';
my ($ret, $o, $e) = $node->psql('other', q{
	SELECT idem.idempotent_call('s-' || i, 'shop.place_order(jsonb)', jsonb_build_object('i', i))
	  FROM generate_series(1, 8) i});
is($ret, 0, 'calls in a database the worker does not serve work');
like($e, qr/outcomes queued in this database are not delivered/, 'and warn that nothing delivers them');
$node->poll_query_until('other', q{SELECT last_error IS NOT NULL FROM idem.sync_status})
  or die 'the sync worker recorded no error';
$node->safe_psql('other', q{
	UPDATE idem.sync_outbox SET state = 'delivered', delivered_at = clock_timestamp() - interval '10 minutes'
	 WHERE key = 's-1';
	UPDATE idem.sync_outbox SET state = 'delivered', delivered_at = clock_timestamp() WHERE key = 's-2';
	UPDATE idem.sync_outbox SET state = 'failed', last_error = 'refused' WHERE key = 's-3';
	UPDATE idem.sync_outbox SET state = 'conflict' WHERE key = 's-4';
	UPDATE idem.sync_outbox SET state = 'conflict', status = 'INPROGRESS', outcome = NULL, token = 1,
	       in_progress_expiration = clock_timestamp() + interval '1 minute'
	 WHERE key = 's-5';
	UPDATE idem.sync_outbox SET state = 'conflict', arbiter_claim = 'c-6' WHERE key = 's-6';
});

# what idem.sync_status shows the exporter's role, numbers as the query
# file turns them into metrics
my $status_sql = q{
	SELECT pending, in_flight, delivered, failed, conflicts, requests_sent,
	       conflicts_outcome_differs, conflicts_claim_overtaken, conflicts_lease_lapsed,
	       claim_deletes_pending, (setup_problem IS NOT NULL)::integer,
	       coalesce(extract(epoch FROM last_error_at)::text, 'NaN'),
	       delivered_last_minute, seconds_since_delivery, extract(epoch FROM oldest_pending_age),
	       last_error
	  FROM idem.sync_status};
my @names = qw(pending in_flight delivered failed conflicts requests_sent
  conflicts_outcome_differs conflicts_claim_overtaken conflicts_lease_lapsed
  claim_deletes_pending setup_problem last_error_timestamp_seconds);
my @before = split /\|/, $node->safe_psql('other', $status_sql, extra_params => [ '-U', 'idem_exporter' ]);
is_deeply([ @before[ 0 .. 10, 12 ] ], [ 2, 0, 2, 1, 3, 0, 1, 1, 1, 0, 1, 1 ],
	'idem.sync_status: 2 pending, 2 delivered (1 in the last minute), 1 failed, a conflict of each cause, a set-up problem');
like($before[15], qr/no AWS credentials/, 'and the last error: no credentials');
cmp_ok($before[11], '>', 0, 'which has a time');
$metrics = scrape('other');
my @after = split /\|/, $node->safe_psql('other', $status_sql, extra_params => [ '-U', 'idem_exporter' ]);
for my $i (0 .. $#names)
{
	my $v = metric("idem_sync_$names[$i]", datname => 'other');
	ok(defined $v && $v == $after[$i], "scraped idem_sync_$names[$i] (" . ($v // 'none') . ") is $after[$i]")
	  or diag(slurp_file($log) . $metrics);
}
# the rest move with the clock: the scrape lies between the two looks
my %moving = (delivered_last_minute => 12, seconds_since_delivery => 13, oldest_pending_age_seconds => 14);
for my $name (sort keys %moving)
{
	my $v = metric("idem_sync_$name", datname => 'other');
	my ($lo, $hi) = sort { $a <=> $b } ($before[ $moving{$name} ], $after[ $moving{$name} ]);
	ok(defined $v && $v >= $lo && $v <= $hi, "scraped idem_sync_$name (" . ($v // "none") . ") lies in [$lo, $hi]");
}
cmp_ok($after[13], '<', 600, 'seconds_since_delivery counts from the newest delivery');
is(metric('idem_sync_pending', datname => 'postgres'), undef, 'one series per scraped database');
like($metrics, qr/^# TYPE idem_sync_setup_problem gauge$/m, 'setup_problem is a gauge');
like($metrics, qr/^# TYPE idem_sync_seconds_since_delivery gauge$/m, 'seconds_since_delivery is a gauge');
unlike(slurp_file($log), qr/level=error/, 'the exporter logged no error');

$node->stop;
done_testing();
