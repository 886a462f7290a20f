# Copyright (c) 2026, the idem developers


# 104_sync_lease.pl
#	Keys of idem.claim in DynamoDB: a live claim is an INPROGRESS item whose
#	in_progress_expiration is the lease's end, so that Powertools for AWS
#	Lambda (TypeScript) refuses to run the key; a completed one is a
#	COMPLETED item that Powertools returns without running; a released one
#	is free to Powertools at once.  States of one key delivered out of order
#	never bring an older state back, and a Lambda's item is a conflict.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use JSON::PP;
use Time::HiRes ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use SyncTest;

$ENV{AWS_ACCESS_KEY_ID} = $SyncTest::AKID;
$ENV{AWS_SECRET_ACCESS_KEY} = $SyncTest::SECRET;
delete $ENV{AWS_SESSION_TOKEN};

my $dyn = SyncTest->new;
my $node = $dyn->pg_node('lease');
my $canon = JSON::PP->new->canonical;
my %env = (AWS_ACCESS_KEY_ID => $SyncTest::AKID, AWS_SECRET_ACCESS_KEY => $SyncTest::SECRET);

# Run one SQL statement and return its output.
sub sql
{
	my ($q) = @_;
	return $node->safe_psql('postgres', $q);
}

# Claim a key for a lease; returns the token.
sub claim
{
	my ($key, $lease) = @_;
	my ($state, $token) = split /\|/,
	  sql("SELECT state, token FROM idem.claim('$key', '{\"job\": \"$key\"}', '$lease')");
	is($state, 'run', "claim of $key runs");
	return $token;
}

# The Powertools id of a key under the default prefix.
sub id_of
{
	my ($key) = @_;
	return sql("SELECT idem.sync_item_id('idem', '$key')");
}

# The item of a key, decoded ({} when absent).
sub item_of
{
	my ($key) = @_;
	return decode_json($dyn->dyn('get', $SyncTest::TABLE, id_of($key)));
}

# Run a Powertools handler on a key; returns its report.
sub powertools
{
	my ($key) = @_;
	return decode_json(SyncTest::run_node(\%env, 'powertools_e2e.js', $dyn->endpoint,
		$SyncTest::TABLE, 'idem', $key, '--report-errors'));
}

# Wait for the outbox to drain; fails the test if it does not.
sub settle
{
	my ($what) = @_;
	ok(SyncTest::wait_delivered($node), "$what: delivered");
}

# Epoch milliseconds and seconds of a record's lease end and expiry, as the
# item must carry them (rounded down).
sub record_epochs
{
	my ($key) = @_;
	return split /\|/, sql(qq{
SELECT floor(extract(epoch FROM lease_expires_at) * 1000)::bigint,
       floor(extract(epoch FROM expires_at))::bigint
  FROM idem.records WHERE key = '$key'});
}

# Count of a DynamoDB operation the proxy saw.
sub count_of
{
	my ($op) = @_;
	return $dyn->stats->{targets}{"DynamoDB_20120810.$op"} // 0;
}

# --- (a) A live claim is INPROGRESS until the lease's end: Powertools refuses.
my $token = claim('job-a', '5 minutes');
settle('the claim');
my ($lease_ms, $expires_s) = record_epochs('job-a');
my $item = item_of('job-a');
is($item->{status}{S}, 'INPROGRESS', 'a live claim is an INPROGRESS item');
is($item->{in_progress_expiration}{N}, $lease_ms,
	'in_progress_expiration is the end of the lease in epoch milliseconds');
is($item->{expiration}{N}, $expires_s, 'expiration is the record\'s expiry in epoch seconds');
ok(!exists $item->{data}, 'an INPROGRESS item has no data');
is($item->{pg_token}{N}, $token, 'the item carries the fencing token');
is($item->{pg_version}{N}, sql(q{SELECT max(id) FROM idem.sync_outbox WHERE key = 'job-a'}),
	'the item carries the outbox row id as its version');
is(sql(q{SELECT status || '/' || state || '/' || (outcome IS NULL) FROM idem.sync_outbox WHERE key = 'job-a'}),
	'INPROGRESS/delivered/true', 'the outbox row is an INPROGRESS state without outcome');

my $pt = powertools('job-a');
is($pt->{error}, 'IdempotencyAlreadyInProgressError', 'Powertools refuses a key PostgreSQL holds');
ok(!$pt->{ran}, 'Powertools did not run its handler while the claim is live');
is(item_of('job-a')->{pg_token}{N}, $token, 'the refusal left PostgreSQL\'s item alone');

# ... and an extend moves the lock's end.
my $new_end = sql(qq{SELECT floor(extract(epoch FROM idem.extend('job-a', $token, '10 minutes')) * 1000)::bigint});
settle('the extend');
is(item_of('job-a')->{in_progress_expiration}{N}, $new_end, 'an extend moves in_progress_expiration to the new end');
ok($new_end > $lease_ms, 'the new end is later');

# --- (b) Completed: Powertools returns PostgreSQL's outcome without running.
my $outcome = '{"done": true, "total": 12.5, "lines": [{"sku": "a", "qty": 2}], "note": null}';
sql("SELECT idem.complete('job-a', $token, '$outcome')");
settle('the completion');
$item = item_of('job-a');
is($item->{status}{S}, 'COMPLETED', 'a completed claim is a COMPLETED item');
ok(!exists $item->{in_progress_expiration}, 'a COMPLETED item has no in_progress_expiration');
is(SyncTest::av_to_json($item->{data}),
	'{"done":true,"lines":[{"qty":2,"sku":"a"}],"note":null,"total":12.5}',
	'data is the outcome as native DynamoDB values');
is((record_epochs('job-a'))[1], $item->{expiration}{N}, 'expiration follows the completed record');
$pt = powertools('job-a');
ok(!$pt->{error}, 'Powertools accepts the completed item') or diag($pt->{message});
ok(!$pt->{ran}, 'Powertools did not run its handler for a key PostgreSQL completed');
my $result = $canon->encode($pt->{result});
is(sql("SELECT '$result'::jsonb = outcome FROM idem.records WHERE key = 'job-a'"), 't',
	'Powertools returned PostgreSQL\'s outcome');

# --- (c) Released: the lock has lapsed, so Powertools runs at once.
$token = claim('job-c', '1 hour');
settle('the claim of job-c');
is(powertools('job-c')->{error}, 'IdempotencyAlreadyInProgressError', 'control: job-c is held');
sql("SELECT idem.release('job-c', $token)");
settle('the release');
$item = item_of('job-c');
is($item->{status}{S}, 'INPROGRESS', 'a released claim is still an INPROGRESS item ...');
ok($item->{in_progress_expiration}{N} <= int(Time::HiRes::time() * 1000), '... whose lock has already lapsed');
$pt = powertools('job-c');
ok(!$pt->{error}, 'Powertools takes over a released key') or diag($pt->{message});
ok($pt->{ran}, 'Powertools ran its handler after the release');
is($pt->{result}{from}, 'lambda', 'and returned its own result');

# --- (d) States delivered out of order: the newest wins.
# The proxy holds the first request it gets for 1.5 s, so the claim's (or
# the extend's) PutItem lands after the completion's.
my $gets = count_of('GetItem');
$dyn->fault(mode => 'slow', count => 1, ms => 1500);
$token = claim('job-d', '5 minutes');
sql("SELECT idem.extend('job-d', $token, '6 minutes')");
sql("SELECT idem.complete('job-d', $token, '{\"n\": 4}')");
settle('claim, extend and complete of job-d');
$dyn->fault(mode => 'ok');
ok(count_of('GetItem') > $gets, 'a state was refused and read back: it landed out of order');
$item = item_of('job-d');
is($item->{status}{S}, 'COMPLETED', 'the item stays COMPLETED after older states arrive');
is(SyncTest::av_to_json($item->{data}), '{"n":4}', 'with the outcome');
is($item->{pg_version}{N}, sql(q{SELECT max(id) FROM idem.sync_outbox WHERE key = 'job-d'}),
	'the item is the newest state');
is(sql(q{SELECT string_agg(status || ':' || state, ',' ORDER BY id) FROM idem.sync_outbox WHERE key = 'job-d'}),
	'INPROGRESS:delivered,INPROGRESS:delivered,COMPLETED:delivered',
	'every state of job-d counts as delivered, none as a conflict');
is(powertools('job-d')->{ran}, JSON::PP::false, 'Powertools replays job-d');

# A claim that lands after its own release must not hold the key again,
# though the released item's lock has lapsed as Powertools sees it.
$gets = count_of('GetItem');
$dyn->fault(mode => 'slow', count => 1, ms => 1500);
$token = claim('job-r', '1 hour');
sql("SELECT idem.release('job-r', $token)");
settle('claim and release of job-r');
$dyn->fault(mode => 'ok');
ok(count_of('GetItem') > $gets, 'the claim landed after the release and was refused');
$item = item_of('job-r');
is($item->{pg_version}{N}, sql(q{SELECT max(id) FROM idem.sync_outbox WHERE key = 'job-r'}),
	'the release is the state that stays');
ok($item->{in_progress_expiration}{N} <= int(Time::HiRes::time() * 1000), 'the key stays free');
is(sql(q{SELECT count(*) FILTER (WHERE state = 'delivered') FROM idem.sync_outbox WHERE key = 'job-r'}), '2',
	'both states of job-r count as delivered');
ok(powertools('job-r')->{ran}, 'Powertools runs job-r');

# A later holder's claim replaces a lapsed one.
my $first = claim('job-l', '1 second');
settle('the first claim of job-l');
sleep 2;
my $second = claim('job-l', '5 minutes');
ok($second > $first, 'the later holder has a larger token');
settle('the second claim of job-l');
is(item_of('job-l')->{pg_token}{N}, $second, 'the item holds the later claim');
is(powertools('job-l')->{error}, 'IdempotencyAlreadyInProgressError', 'Powertools refuses the later claim');

# --- A Lambda's item is another system's: a conflict, recorded once.
$pt = powertools('job-f');
ok($pt->{ran}, 'a Lambda completes job-f first');
$token = claim('job-f', '5 minutes');
ok($node->poll_query_until('postgres', q{SELECT state = 'conflict' FROM idem.sync_outbox WHERE key = 'job-f'}),
	'a claim of a key a Lambda completed is a conflict');
is(sql(q{SELECT remote_outcome::text FROM idem.sync_outbox WHERE key = 'job-f'}),
	'{"key": "job-f", "from": "lambda"}', 'the conflict records the Lambda\'s outcome');
is(item_of('job-f')->{data}{M}{from}{S}, 'lambda', 'the Lambda\'s item was not overwritten');

# --- idempotent_call keeps its items: no token, version or lease attributes.
sql(q{SELECT idem.idempotent_call('plain', 'public.echo(jsonb)'::regprocedure, '{"p": 1}'::jsonb)});
settle('the idempotent_call outcome');
$item = item_of('plain');
is(join(',', sort keys %$item), 'data,expiration,id,pg_database,pg_role,status',
	'an idempotent_call item has exactly its usual attributes');
is(sql(q{SELECT coalesce(token::text, 'none') || '/' || status FROM idem.sync_outbox WHERE key = 'plain'}),
	'none/COMPLETED', 'its outbox row has no token');

is(sql(q{SELECT failed || '/' || conflicts FROM idem.sync_status}), '0/1',
	'nothing failed; the one conflict is the Lambda\'s key');

done_testing();
