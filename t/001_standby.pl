# Rule 2: a replay writes nothing, so it works on a hot standby, where a
# first call fails with SQLSTATE 25006 and runs nothing.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemTestUtil;

my $primary = NewNode('primary', allows_streaming => 1);
$primary->start;
LoadShop($primary);
$primary->safe_psql('postgres',
	q{SELECT idem.idempotent_call('order-1', 'shop.place_order(jsonb)', '{"sku": 1}'::jsonb)});
$primary->backup('backup');

my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'backup', has_streaming => 1);
$standby->start;

# A record committed after the backup reaches the standby by streaming.
my $first = $primary->safe_psql('postgres',
	q{SELECT idem.idempotent_call('order-2', 'shop.place_order(jsonb)', '{"sku": 2}'::jsonb)});
$primary->wait_for_catchup($standby);

my $call2 = q{SELECT idem.idempotent_call('order-2', 'shop.place_order(jsonb)', '{"sku": 2}'::jsonb)};
is($standby->safe_psql('postgres', "$call2; SELECT idem.last_call_replayed();"),
	"$first\nt", 'the standby replays an outcome recorded on the primary');
is($standby->safe_psql('postgres',
		q{SELECT idem.idempotent_call('order-1', 'shop.place_order(jsonb)', '{"sku": 1}'::jsonb) ->> 'order'}),
	'1', 'the standby replays an outcome from the base backup');

# A first call cannot run on the standby.
my ($rc, $out, $err) = $standby->psql('postgres',
	q{\set VERBOSITY verbose
	  SELECT idem.idempotent_call('order-3', 'shop.place_order(jsonb)', '{"sku": 3}'::jsonb)});
isnt($rc, 0, 'a first call on the standby fails');
like($err, qr/ERROR:  25006: cannot run the first call with idempotency key "order-3" in a read-only transaction/,
	'with SQLSTATE 25006, naming the key');
like($err, qr/HINT:  Send first calls to the primary server/, 'and a hint to use the primary');

# Mismatches are still detected on the standby.
($rc, $out, $err) = $standby->psql('postgres',
	q{\set VERBOSITY verbose
	  SELECT idem.idempotent_call('order-2', 'shop.place_order(jsonb)', '{"sku": 99}'::jsonb)});
like($err, qr/ERROR:  IK422: idempotency key "order-2" was already used for a different request/,
	'a mismatched replay on the standby fails with IK422');

# Nothing ran on either side.
is($primary->safe_psql('postgres', 'SELECT count(*) FROM shop.effects'), '2',
	'the primary ran the function once per key');
is($standby->safe_psql('postgres', 'SELECT count(*) FROM shop.effects'), '2',
	'the standby ran nothing');

$standby->stop;
$primary->stop;
done_testing();
