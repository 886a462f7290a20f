# Copyright (c) 2026, the idem developers


# 100_sync_format.pl
#	The DynamoDB items idem writes: Powertools ids on awkward keys (checked
#	against Powertools' own code), and every field of delivered items read
#	back from DynamoDB and compared with idem.records.

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
my $node = $dyn->pg_node('format');
my $json = JSON::PP->new->canonical->allow_nonref;

# A SQL literal for any string, control characters included.
sub lit
{
	my ($s) = @_;
	my $out = '';
	for my $c (split //, $s)
	{
		my $o = ord($c);
		if ($c eq "'" || $c eq "\\") { $out .= "\\$c"; }
		elsif ($o < 0x20 || $o == 0x7f) { $out .= sprintf('\\x%02x', $o); }
		else { $out .= $c; }
	}
	$out = "E'$out'";
	utf8::encode($out);
	return $out;
}

# Awkward keys: JSON escapes, controls, non-ASCII, long.
my @keys = (
	'ord-42', 'a"b', 'back\\slash', "tab\there", "new\nline", "cr\rret",
	"bell\x07", "ctl\x01\x1f", "\x08\x0c", "del\x7f", "caf\x{e9}",
	"emoji \x{1F600}", "line sep \x{2028}", "</script>", "'single'",
	'x' x 255, ' spaced ', 'slash/and+plus=');

# The hashing rule, checked against Powertools' own code.
{
	my $stdin = join('', map { $json->encode($_) . "\n" } @keys);
	utf8::encode($stdin);
	my $pt = SyncTest::run_node({}, 'dyn.js', '-', 'powertools-id', '  my-fn ', \$stdin);
	my @pt = split /\n/, $pt;
	is(scalar(@pt), scalar(@keys), 'Powertools hashed every key');
	for my $i (0 .. $#keys)
	{
		my $ours = $node->safe_psql('postgres',
			'SELECT idem.sync_item_id(' . lit('  my-fn ') . ', ' . lit($keys[$i]) . ')');
		is($ours, $pt[$i], 'id of key ' . JSON::PP->new->ascii->allow_nonref->encode($keys[$i]) . ' matches Powertools');
	}
	is($node->safe_psql('postgres', q{SELECT idem.sync_item_id('my-fn', 'ord-42')}),
		'my-fn#KJ5isyYulqGw38uvVwu96w==', 'known Powertools id of ord-42');
}

# The claim condition is Powertools' own.
like($node->safe_psql('postgres',
		q{SELECT idem.sync_put_item_request('p', 'k', '1', now()) ->> 'ConditionExpression'}),
	qr/^attribute_not_exists\(#id\) OR #expiration < :now OR \(#status = :inprogress AND attribute_exists\(#in_progress_expiration\) AND #in_progress_expiration < :now_ms\)$/,
	'PutItem is conditional on Powertools claim condition');

# Deliver outcomes of every JSON type under the awkward keys.
my @outcomes = (
	'{"sku": 1, "price": 12.50, "tags": ["a", "b"], "nested": {"deep": [1, {"x": null}]}, "ok": true}',
	'"just a string"', '42', '-0.000123', '12345678901234567890123456789012345678',
	'true', 'false', 'null', '[]', '{}', '[1, "two", 3.0, [4], {"five": 5}]',
	'{"": "empty key", "quote\"key": "v", "uni": "caf\u00e9 \ud83d\ude00"}',
	'{"s": ""}', '[null, null]', '1e20', '{"big": 1e-5}', '"tab\tnew\nline"',
	'{"b": false}');
my $sql = "BEGIN;\n";
for my $i (0 .. $#keys)
{
	my $o = $outcomes[ $i % @outcomes ];
	$sql .= 'SELECT idem.idempotent_call(' . lit($keys[$i])
	  . q{, 'public.echo(jsonb)'::regprocedure, } . lit($o) . "::jsonb);\n";
}
$sql .= "COMMIT;\n";
$node->safe_psql('postgres', $sql);

# Key prefix per role, captured at call time.
$node->safe_psql('postgres', q{
CREATE ROLE alice LOGIN;
GRANT USAGE ON SCHEMA idem TO alice;
ALTER ROLE alice SET idem.dynamodb_key_prefix = ' alice-fn ';
});
$node->safe_psql('postgres',
	q{SELECT idem.idempotent_call('alice-key', 'public.echo(jsonb)'::regprocedure, '{"who": "alice"}'::jsonb)},
	extra_params => [ '-U', 'alice' ]);

ok(SyncTest::wait_delivered($node), 'all outcomes delivered');

my $items = $dyn->scan;
my %by_id = map { $_->{id}{S} => $_ } @$items;
my $rows = $node->safe_psql('postgres', q{
SELECT idem.sync_item_id(o.key_prefix, o.key),
       floor(extract(epoch FROM r.expires_at))::bigint,
       r.owner::text,
       r.outcome::text
  FROM idem.sync_outbox o JOIN idem.records r USING (owner, key)
 ORDER BY o.id});
utf8::decode($rows);
my @rows = map { [ split /\|/, $_, 4 ] } split /\n/, $rows;
is(scalar(@rows), scalar(@keys) + 1, 'one outbox row per committed outcome');
is(scalar(@$items), scalar(@rows), 'one item per committed outcome');

for my $r (@rows)
{
	my ($id, $expiration, $role, $outcome) = @$r;
	my $item = $by_id{$id};
	ok($item, "item $id exists") or next;
	is($item->{status}{S}, 'COMPLETED', "$id: status COMPLETED");
	is($item->{expiration}{N}, $expiration, "$id: expiration is the record's expiry in epoch seconds");
	is($item->{pg_role}{S}, $role, "$id: pg_role");
	is($item->{pg_database}{S}, 'postgres', "$id: pg_database");
	ok(!exists $item->{in_progress_expiration}, "$id: no in_progress_expiration");
	my $data = SyncTest::av_to_json($item->{data});
	my $same = $node->safe_psql('postgres',
		'SELECT ' . lit($data) . '::jsonb = ' . lit($outcome) . '::jsonb');
	is($same, 't', "$id: data is the outcome as native DynamoDB values")
	  or diag("item data: $data\noutcome:   $outcome");
	is(join(',', sort keys %$item), 'data,expiration,id,pg_database,pg_role,status',
		"$id: no other attributes");
}

# Types: numbers are N, not strings; objects M; arrays L.
my $first = $by_id{ $node->safe_psql('postgres', q{SELECT idem.sync_item_id('idem', 'ord-42')}) };
is_deeply($first->{data}{M}{price}, { N => '12.5' }, 'a number becomes N');
is_deeply($first->{data}{M}{ok}, { BOOL => JSON::PP::true }, 'a boolean becomes BOOL');
is_deeply($first->{data}{M}{tags}, { L => [ { S => 'a' }, { S => 'b' } ] }, 'an array becomes L of S');
is_deeply($first->{data}{M}{nested}{M}{deep}{L}[1], { M => { x => { NULL => JSON::PP::true } } },
	'null inside an object inside a list');

# The per-role prefix was used, trimmed.
ok($by_id{'alice-fn#' . ($node->safe_psql('postgres', q{SELECT split_part(idem.sync_item_id('x', 'alice-key'), '#', 2)}))},
	'per-role key prefix captured at call time and trimmed');

done_testing();
