# Copyright (c) 2026, the idem developers

# Memory: a backend's memory does not grow over a long run of calls, replays
# and errors.  One session runs a mix of first calls, replays and every kind
# of failed call; the total of its memory contexts after N rounds and after
# 10N rounds must be about the same.  A second run makes the calls inside one
# statement (a plpgsql loop), where one call site switches between functions,
# and compares the memory after N and after 10N calls of that loop.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemTestUtil;

my $N = 200;              # rounds before the first measurement
my $LIMIT = 256 * 1024;   # allowed growth between N and 10N, bytes

my $node = NewNode('memory');
$node->start;
LoadShop($node);
$node->safe_psql('postgres', q{
	CREATE FUNCTION shop.decline() RETURNS jsonb LANGUAGE plpgsql AS $$
	BEGIN
		RAISE EXCEPTION 'card declined' USING ERRCODE = 'P0042';
	END $$;
	CREATE FUNCTION shop.again(k text) RETURNS jsonb LANGUAGE sql
		AS $$ SELECT idem.idempotent_call(k, 'shop.again(text)', k) $$;
	CREATE FUNCTION shop.one(i int) RETURNS int LANGUAGE sql AS $$ SELECT i $$;
	CREATE FUNCTION shop.two(i int) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN i::text; END $$;
	CREATE FUNCTION shop.memory() RETURNS bigint LANGUAGE sql
		AS $$ SELECT sum(total_bytes)::bigint FROM pg_backend_memory_contexts $$;
});

# One round: a first call, its replay, and one call failing in each way.
sub round
{
	my ($i) = @_;
	my $k = "mem-$i";
	return <<"SQL";
SELECT idem.idempotent_call('$k', 'shop.place_order(jsonb)', '{"i": $i}');
SELECT idem.idempotent_call('$k', 'shop.place_order(jsonb)', '{"i": $i}');
SELECT idem.idempotent_call('$k', 'shop.place_order(jsonb)', '{"i": -1}');
SELECT idem.idempotent_call('$k-declined', 'shop.decline()');
SELECT idem.idempotent_call('', 'shop.place_order(jsonb)', '{}');
SELECT idem.idempotent_call('$k-gone', (4000000000 + $i)::oid::regprocedure);
SELECT idem.idempotent_call('$k-nested', 'shop.again(text)', '$k-nested');
SELECT idem.idempotent_call('$k-type', 'shop.place_order(jsonb)', 42);
SELECT idem.idempotent_call('$k-one', CASE WHEN $i % 2 = 0 THEN 'shop.one(int)' ELSE 'shop.two(int)' END::regprocedure, $i);
BEGIN;
SELECT idem.idempotent_call('$k-rolled-back', 'shop.place_order(jsonb)', '{}');
ROLLBACK;
SQL
}

my $measure = q{SELECT 'memory', shop.memory(),
	(regexp_match(pg_read_file('/proc/self/status'), 'RssAnon:\s+(\d+)'))[1]::bigint * 1024;
};
my $script = "\\set VERBOSITY sqlstate\n\\pset tuples_only on\n\\pset format unaligned\n";
$script .= round($_) for 1 .. $N;
$script .= $measure;
$script .= round($_) for $N + 1 .. 10 * $N;
$script .= $measure;
$script .= "SELECT 'pid', pg_backend_pid();\n";

my ($out, $err) = ('', '');
$node->psql('postgres', $script, stdout => \$out, stderr => \$err, on_error_stop => 0);
my @mem = $out =~ /^memory\|(\d+)\|(\d+)$/mg;
is(scalar(@mem), 4, 'both measurements were taken in one session');
my %errors;
$errors{$1}++ while $err =~ /ERROR:\s+([0-9A-Z]{5})$/mg;
note("errors by SQLSTATE: " . join(', ', map { "$_ x $errors{$_}" } sort keys %errors));
# every kind of failure happened in every round
is($errors{$_}, 10 * $N, "$_ raised in every round")
  for qw(IK422 P0042 IK400 42883 IK508 42804);
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem.records WHERE key LIKE 'mem-%'}),
	20 * $N, 'the calls that succeeded recorded their outcomes');

my ($ctx1, $rss1, $ctx2, $rss2) = @mem;
note("memory contexts: $ctx1 after $N rounds, $ctx2 after " . 10 * $N . " rounds");
note("RssAnon: $rss1 after $N rounds, $rss2 after " . 10 * $N . " rounds");
cmp_ok($ctx2 - $ctx1, '<', $LIMIT, 'memory contexts of the session did not grow');
cmp_ok($rss2 - $rss1, '<', 4 * $LIMIT, 'anonymous memory of the backend did not grow');

# Within one statement: a call site that alternates between functions, and
# one that replays, must not accumulate memory per call.
my ($loop, $loop_err) = ('', '');
$node->psql('postgres', qq{
	DO \$\$
	DECLARE
		outcome jsonb;
		at_n bigint;
	BEGIN
		FOR i IN 1 .. 10 * $N LOOP
			outcome := idem.idempotent_call('loop-' || i,
				CASE WHEN i % 2 = 0 THEN 'shop.one(int)' ELSE 'shop.two(int)' END::regprocedure, i);
			outcome := idem.idempotent_call('loop-' || i,
				CASE WHEN i % 2 = 0 THEN 'shop.one(int)' ELSE 'shop.two(int)' END::regprocedure, i);
			IF i = $N THEN
				at_n := shop.memory();
			END IF;
		END LOOP;
		RAISE NOTICE 'loop memory % %', at_n, shop.memory();
	END \$\$;
	SELECT count(*) FROM idem.records WHERE key LIKE 'loop-%';
}, stdout => \$loop, stderr => \$loop_err, on_error_stop => 1);
is($loop, 10 * $N, 'the loop recorded every call once');
my ($loop1, $loop2) = $loop_err =~ /loop memory (\d+) (\d+)/;
ok(defined $loop2, 'the loop measured its memory');
note("memory contexts in one statement: $loop1 after $N calls, $loop2 after " . 10 * $N);
cmp_ok($loop2 - $loop1, '<', $LIMIT, 'memory did not grow within one statement');

$node->stop;
done_testing();
