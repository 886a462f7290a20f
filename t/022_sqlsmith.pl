# Copyright (c) 2026, the idem developers

# Fuzzing: sqlsmith sends random queries, as a non-superuser, to a database
# with idem installed, some records and a function to call.  No backend may
# crash: the log shows no backend terminated by a signal and no restart, and
# the server still answers.  The number of queries is bounded
# (IDEM_SQLSMITH_QUERIES, default 2000).  The seed is fixed so that the suite
# sends the same queries every run and a failure can be replayed; set
# IDEM_SQLSMITH_SEED to explore others (scripts/soak.sh-style runs).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use IdemTestUtil;

plan skip_all => 'sqlsmith is not installed (scripts/setup.sh installs it)'
  unless system('sh', '-c', 'command -v sqlsmith >/dev/null') == 0;

my $queries = $ENV{IDEM_SQLSMITH_QUERIES} // 2000;
my $seed = $ENV{IDEM_SQLSMITH_SEED} // 20261127;
note("sqlsmith: $queries queries, seed $seed");

my $node = NewNode('fuzz');
$node->start;
$node->safe_psql('postgres', q{
	CREATE ROLE fuzzer LOGIN;
	ALTER ROLE fuzzer SET statement_timeout = '2s';
	ALTER ROLE fuzzer SET idem.wait_timeout = '1s';
	CREATE DATABASE fuzz;
});
$node->safe_psql('fuzz', q{
	CREATE EXTENSION idem;
	GRANT USAGE ON SCHEMA idem TO fuzzer;
	CREATE SCHEMA fz AUTHORIZATION fuzzer;
});
$node->safe_psql('fuzz', q{
	SET ROLE fuzzer;
	CREATE TABLE fz.orders (id serial PRIMARY KEY, k text, body jsonb, amount numeric, note varchar(20));
	INSERT INTO fz.orders (k, body, amount, note)
		SELECT 'order-' || i, jsonb_build_object('i', i, 'tags', jsonb_build_array('a', i)), i * 1.5, 'n' || i
		  FROM generate_series(1, 50) i;
	CREATE FUNCTION fz.place(b jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT b || '{"placed": true}' $$;
	SELECT count(idem.idempotent_call(k, 'fz.place(jsonb)', body)) FROM fz.orders;
});
# A record of another role that the fuzzer must not change.
$node->safe_psql('fuzz', q{SELECT idem.idempotent_call('owner-key', 'upper(text)', 'x'::text)});
my $before = $node->safe_psql('fuzz', q{SELECT md5(string_agg(outcome::text, ',' ORDER BY key)) FROM idem.records WHERE owner = 'postgres'::regrole});
is($node->safe_psql('fuzz', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'fuzzer'}), 'f', 'the fuzzer is not a superuser');

my $log_start = -s $node->logfile;
my ($out, $err) = ('', '');
my $target = $node->connstr('fuzz') . ' user=fuzzer';
IPC::Run::run([ 'sqlsmith', "--target=$target", "--max-queries=$queries", "--seed=$seed", '--verbose', '--dump-all-queries' ],
	'>', \$out, '2>', \$err, IPC::Run::timeout(600));
my $status = $? >> 8;
my @mentions = $out =~ /\bidem\.(idempotent_call|last_call_replayed|purge|my_records|records)\b/g;
my %mention;
$mention{$_}++ for @mentions;
note('queries naming idem objects: ' . join(', ', map { "$_ x $mention{$_}" } sort keys %mention));
my @progress = $err =~ /(queries: \d+[^\n]*)/g;
note("sqlsmith: $progress[-1]") if @progress;
is($status, 0, 'sqlsmith ran all its queries') or diag(substr($err, -2000));
ok(@mentions > 0, 'the random queries reached idem');

my $log = slurp_file($node->logfile, $log_start);
unlike($log, qr/terminated by signal|was terminated by exception|PANIC:|reinitializing|server process .* exited with exit code [^0]/,
	'no backend crashed');
is($node->safe_psql('fuzz', 'SELECT 1'), '1', 'the server still answers');
is($node->safe_psql('fuzz', q{SELECT md5(string_agg(outcome::text, ',' ORDER BY key)) FROM idem.records WHERE owner = 'postgres'::regrole}),
	$before, "another role's records are unchanged");
is($node->safe_psql('fuzz', q{SELECT idem.idempotent_call('order-1', 'fz.place(jsonb)', body)::text FROM fz.orders WHERE k = 'order-1'}),
	$node->safe_psql('fuzz', q{SELECT (body || '{"placed": true}')::text FROM fz.orders WHERE k = 'order-1'}),
	'idem still works afterwards');

$node->stop;
done_testing();
