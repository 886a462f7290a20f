# Copyright (c) 2026, the idem developers

# Rule 10: pg_dump keeps the records, so a restored database replays instead
# of running the function again, for the role that made each record.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemTestUtil;

my $source = NewNode('source');
$source->start;
$source->safe_psql('postgres', 'CREATE ROLE regress_alice; CREATE ROLE regress_bob');
LoadShop($source);
$source->safe_psql('postgres', 'GRANT USAGE ON SCHEMA idem TO PUBLIC');

my $alice_call = q{SET ROLE regress_alice;
	SELECT idem.idempotent_call('order-1', 'shop.place_order(jsonb)', '{"sku": 1}'::jsonb);};
my $bob_call = q{SET ROLE regress_bob;
	SELECT idem.idempotent_call('order-1', 'shop.place_order(jsonb)', '{"sku": 1}'::jsonb);};
my $alice_outcome = $source->safe_psql('postgres', $alice_call);
my $bob_outcome = $source->safe_psql('postgres', $bob_call);
isnt($alice_outcome, $bob_outcome, 'two roles recorded two outcomes under one key');

my $dump = $source->basedir . '/idem.dump';
$source->command_ok(
	[ 'pg_dump', '-Fc', '-f', $dump, '-d', $source->connstr('postgres') ],
	'pg_dump of a database with idem records');

# Restore into another cluster, whose roles have other OIDs.
my $target = NewNode('target');
$target->start;
$target->safe_psql('postgres',
	'CREATE ROLE regress_padding; CREATE ROLE regress_bob; CREATE ROLE regress_alice; CREATE DATABASE restored');
$target->command_ok(
	[ 'pg_restore', '--exit-on-error', '-d', $target->connstr('restored'), $dump ],
	'pg_restore into a new database');

is($target->safe_psql('restored', 'SELECT count(*) FROM idem.records'), '2',
	'the records were restored');
is($target->safe_psql('restored', "$alice_call SELECT idem.last_call_replayed();"),
	"$alice_outcome\nt", 'alice replays her outcome in the restored database');
is($target->safe_psql('restored', "$bob_call SELECT idem.last_call_replayed();"),
	"$bob_outcome\nt", 'bob replays his outcome in the restored database');
is($target->safe_psql('restored', 'SELECT count(*) FROM shop.effects'), '2',
	'the function did not run again after the restore');

# Mismatch detection survives the restore too: the fingerprint names the
# function by its qualified signature, not by its OID.
my ($rc, $out, $err) = $target->psql('restored',
	q{\set VERBOSITY verbose
	  SET ROLE regress_alice;
	  SELECT idem.idempotent_call('order-1', 'shop.place_order(jsonb)', '{"sku": 2}'::jsonb)});
like($err, qr/IK422/, 'a different request under a restored key is still refused');

$source->stop;
$target->stop;
done_testing();
