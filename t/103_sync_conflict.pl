# Copyright (c) 2026, the idem developers


# 103_sync_conflict.pl
#	First writer wins across systems: an item another writer put first is
#	never overwritten (same outcome: delivered; other outcome: a recorded
#	conflict, not a loop), an expired one is claimed; permanent failures
#	(missing table, oversized item) wait in 'failed' until
#	idem.sync_retry_failed(); and Powertools for AWS Lambda (TypeScript)
#	returns a PostgreSQL outcome without running its handler.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use SyncTest;

$ENV{AWS_ACCESS_KEY_ID} = $SyncTest::AKID;
$ENV{AWS_SECRET_ACCESS_KEY} = $SyncTest::SECRET;
delete $ENV{AWS_SESSION_TOKEN};

my $dyn = SyncTest->new;
my $node = $dyn->pg_node('conflict');

# Call echo(outcome) under key; returns nothing.
sub call
{
	my ($key, $outcome) = @_;
	$node->safe_psql('postgres',
		"SELECT idem.idempotent_call('$key', 'public.echo(jsonb)'::regprocedure, '$outcome'::jsonb)");
}

# The id of a key under the default prefix.
sub id_of
{
	my ($key, $prefix) = @_;
	$prefix //= 'idem';
	return $node->safe_psql('postgres', "SELECT idem.sync_item_id('$prefix', '$key')");
}

my $future = time() + 3600;
my $past = time() - 3600;

# --- Another writer got there first with a different outcome.
$dyn->dyn('put', $SyncTest::TABLE, encode_json({
	id => { S => id_of('taken') }, status => { S => 'COMPLETED' },
	expiration => { N => "$future" }, data => { M => { by => { S => 'lambda' } } } }));
# ... with the same outcome.
$dyn->dyn('put', $SyncTest::TABLE, encode_json({
	id => { S => id_of('same') }, status => { S => 'COMPLETED' },
	expiration => { N => "$future" }, data => { M => { n => { N => '1.0' } } } }));
# ... long ago: expired, so claimable.
$dyn->dyn('put', $SyncTest::TABLE, encode_json({
	id => { S => id_of('expired') }, status => { S => 'COMPLETED' },
	expiration => { N => "$past" }, data => { S => 'old' } }));

call('taken', '{"by": "postgres"}');
call('same', '{"n": 1}');
call('expired', '{"fresh": true}');
ok($node->poll_query_until('postgres', 'SELECT pending = 0 FROM idem.sync_status'), 'all three settled');

is($node->safe_psql('postgres', q{SELECT state FROM idem.sync_outbox WHERE key = 'taken'}), 'conflict',
	'a different outcome already there is a conflict');
is($node->safe_psql('postgres', q{SELECT remote_outcome::text FROM idem.sync_outbox WHERE key = 'taken'}),
	'{"by": "lambda"}', 'the conflict records the outcome found');
is($node->safe_psql('postgres', 'SELECT conflicts FROM idem.sync_status'), '1', 'sync_status counts the conflict');
my $item = decode_json($dyn->dyn('get', $SyncTest::TABLE, id_of('taken')));
is($item->{data}{M}{by}{S}, 'lambda', 'the first writer\'s item was not overwritten');
is($node->safe_psql('postgres', q{SELECT state FROM idem.sync_outbox WHERE key = 'same'}), 'delivered',
	'the same outcome already there counts as delivered');
$item = decode_json($dyn->dyn('get', $SyncTest::TABLE, id_of('expired')));
is_deeply($item->{data}, { M => { fresh => { BOOL => JSON::PP::true } } }, 'an expired item is claimed');

# No loop: more traffic leaves the conflict alone.
my $puts = $dyn->stats->{targets}{'DynamoDB_20120810.PutItem'};
call("later-$_", "$_") for 1 .. 5;
ok(SyncTest::wait_delivered($node), 'later outcomes delivered');
is($node->safe_psql('postgres', q{SELECT attempts FROM idem.sync_outbox WHERE key = 'taken'}), '1',
	'the conflict is not retried');
is($dyn->stats->{targets}{'DynamoDB_20120810.PutItem'} - $puts, 5, 'only the new outcomes were sent');

# --- Permanent failures: a missing table, then an oversized item.
$node->safe_psql('postgres', q{ALTER SYSTEM SET idem.dynamodb_table = 'idem_later'; SELECT pg_reload_conf();});
$node->poll_query_until('postgres', q{SELECT current_setting('idem.dynamodb_table') = 'idem_later'});
sleep 1;
call('to-later', '{"x": 1}');
ok($node->poll_query_until('postgres', 'SELECT failed = 1 AND pending = 0 FROM idem.sync_status'),
	'a missing table fails permanently');
like($node->safe_psql('postgres', q{SELECT last_error FROM idem.sync_outbox WHERE key = 'to-later'}),
	qr/ResourceNotFoundException/, 'the reason names the missing table');
sleep 1;
is($node->safe_psql('postgres', q{SELECT attempts FROM idem.sync_outbox WHERE key = 'to-later'}), '1',
	'a permanent failure is not retried by itself');
$dyn->dyn('create-table', 'idem_later');
is($node->safe_psql('postgres', 'SELECT idem.sync_retry_failed()'), '1', 'sync_retry_failed requeues it');
ok(SyncTest::wait_delivered($node), 'delivered once the table exists');
is(scalar(@{ $dyn->scan('idem_later') }), 1, 'the item is in the new table');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET idem.dynamodb_table; ALTER SYSTEM SET idem.dynamodb_table = 'idem_test'; SELECT pg_reload_conf();});
$node->poll_query_until('postgres', q{SELECT current_setting('idem.dynamodb_table') = 'idem_test'});
sleep 1;

my ($ret, $out, $err) = $node->psql('postgres',
	q{SELECT idem.idempotent_call('too-big', 'public.echo(jsonb)'::regprocedure, jsonb_build_object('blob', repeat('x', 450 * 1024)))});
like($err, qr/outcome for idempotency key "too-big" is too large for the DynamoDB sync/,
	'an outcome over 400 KB is refused at the call');
# A row queued without that check (by the library of idem 1.0, say) still
# fails permanently in the worker.
$node->safe_psql('postgres', q{
INSERT INTO idem.sync_outbox (owner, key, key_prefix, outcome, expires_at)
VALUES ('postgres', 'too-big', 'idem', jsonb_build_object('blob', repeat('x', 450 * 1024)), now() + interval '1 day');
SELECT idem.sync_wakeup();});
ok($node->poll_query_until('postgres', q{SELECT state = 'failed' FROM idem.sync_outbox WHERE key = 'too-big'}),
	'an item over 400 KB fails permanently');
like($node->safe_psql('postgres', q{SELECT last_error FROM idem.sync_outbox WHERE key = 'too-big'}),
	qr/ValidationException.*size/i, 'the reason is the item size');

# --- Powertools end to end, key prefix set per database.
$node->safe_psql('postgres', q{ALTER DATABASE postgres SET idem.dynamodb_key_prefix = 'order-fn'});
call('pt-order-1', '{"order": 1, "total": 12.5, "lines": [{"sku": "a", "qty": 2}], "paid": true, "note": null}');
ok(SyncTest::wait_delivered($node), 'the outcome for Powertools is delivered');
my %env = (AWS_ACCESS_KEY_ID => $SyncTest::AKID, AWS_SECRET_ACCESS_KEY => $SyncTest::SECRET);
my $pt = decode_json(SyncTest::run_node(\%env, 'powertools_e2e.js', $dyn->endpoint, $SyncTest::TABLE,
	'order-fn', 'pt-order-1'));
ok(!$pt->{ran}, 'Powertools did not run the handler for a key PostgreSQL completed');
my $result = JSON::PP->new->canonical->encode($pt->{result});
is($node->safe_psql('postgres',
		qq{SELECT '$result'::jsonb = outcome FROM idem.records WHERE key = 'pt-order-1'}),
	't', 'Powertools returned the PostgreSQL outcome');
my $control = decode_json(SyncTest::run_node(\%env, 'powertools_e2e.js', $dyn->endpoint, $SyncTest::TABLE,
	'order-fn', 'pt-order-unknown'));
ok($control->{ran}, 'control: Powertools runs the handler for a key nobody completed');
$pt = decode_json(SyncTest::run_node(\%env, 'powertools_e2e.js', $dyn->endpoint, $SyncTest::TABLE,
	'other-fn', 'pt-order-1'));
ok($pt->{ran}, 'control: another key prefix does not see the PostgreSQL outcome');

done_testing();
