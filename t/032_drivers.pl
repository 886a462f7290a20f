# Copyright (c) 2026, the idem developers

# idem.idempotent_call through real drivers and the extended protocol's bind
# parameters.  node-pg sends every parameter without a type; psycopg 3 sends
# strings without a type and other values typed.  A call whose arguments
# are all untyped runs once and replays, with the fingerprint of the same
# call written with literals; a typed value of the wrong type is refused
# (42804); an untyped parameter beside a typed one cannot be resolved by
# PostgreSQL (42P18), so such calls cast every parameter.  Each driver is
# skipped only when its runtime is missing.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use Cwd qw(abs_path);
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemTestUtil;

my $node = NewNode('drivers');
$node->start;
LoadShop($node);
$node->safe_psql('postgres', q{
	CREATE FUNCTION shop.label(n int8, note text) RETURNS text LANGUAGE sql AS $$
		INSERT INTO shop.effects (payload) VALUES (to_jsonb(note)) RETURNING note || ' #' || n $$;
});
my %conn = (
	host => $node->host,
	port => $node->port,
	user => $node->safe_psql('postgres', 'SELECT current_user'),
	dbname => 'postgres');
my $json = JSON::PP->new->canonical;

# Each driver script reads a list of [label, sql, params] from its argument
# and prints one line per call: the label, then the outcome and whether it
# replayed, or the SQLSTATE of its error.
my $calls = [
	# an object: node-pg sends it as JSON text, the python script json.dumps it
	[ 'json first',  q{SELECT idem.idempotent_call($1, 'shop.place_order(jsonb)', $2)}, [ 'K-1', { sku => 1 } ] ],
	[ 'json replay', q{SELECT idem.idempotent_call($1, 'shop.place_order(jsonb)', $2)}, [ 'K-1', '{"sku":1}' ] ],
	[ 'json other',  q{SELECT idem.idempotent_call($1, 'shop.place_order(jsonb)', $2)}, [ 'K-1', '{"sku": 2}' ] ],
	[ 'two untyped', q{SELECT idem.idempotent_call($1, 'shop.label(int8, text)', $2, $3)}, [ 'K-2', '7', 'gift' ] ],
	[ 'two replay',  q{SELECT idem.idempotent_call($1, 'shop.label(int8, text)', $2, $3)}, [ 'K-2', '7', 'gift' ] ],
	[ 'null',        q{SELECT idem.idempotent_call($1, 'shop.place_order(jsonb)', $2)}, [ 'K-3', undef ] ],
	[ 'cast all',    q{SELECT idem.idempotent_call($1, 'shop.label(int8, text)', $2::int8, $3::text)}, [ 'K-4', '8', 'card' ] ],
	[ 'typed wrong', q{SELECT idem.idempotent_call($1, 'shop.place_order(jsonb)', $2::text)}, [ 'K-5', '{}' ] ],
	[ 'cast one',    q{SELECT idem.idempotent_call($1, 'shop.label(int8, text)', $2::int8, $3)}, [ 'K-6', '9', 'tag' ] ],
	[ 'bad json',    q{SELECT idem.idempotent_call($1, 'shop.place_order(jsonb)', $2)}, [ 'K-7', 'not json' ] ],
	# a number: node-pg sends it untyped, psycopg typed (int2 here)
	[ 'number',      q{SELECT idem.idempotent_call($1, 'shop.label(int8, text)', $2, $3)}, [ 'K-8', { number => 5 }, 'box' ] ],
];
my %expected = (
	'json first'  => qr/^\{"order": \d+, "sku": 1\} false$/,
	'json other'  => qr/^IK422$/,
	'two untyped' => qr/^"gift #7" false$/,
	'two replay'  => qr/^"gift #7" true$/,
	'null'        => qr/^null false$/,
	'cast all'    => qr/^"card #8" false$/,
	'typed wrong' => qr/^42804$/,
	'cast one'    => qr/^42P18$/,
	'bad json'    => qr/^22P02$/,
);

# Run the calls through a driver with keys prefixed by $prefix; returns the
# output lines by label.
sub check_driver
{
	my ($driver, $prefix, $number, @cmd) = @_;
	my %expect = (%expected, number => $number);
	my $prefixed = [ map { [ $_->[0], $_->[1], [ map { defined && !ref && /^K-/ ? "$prefix$_" : $_ } @{ $_->[2] } ] ] } @$calls ];
	my $effects = $node->safe_psql('postgres', 'SELECT count(*) FROM shop.effects');
	my ($out, $err) = run_command([ @cmd, $json->encode({ %conn, calls => $prefixed }) ]);
	is($err, '', "$driver: no errors outside the calls");
	my %got = map { /^([^:]+): (.*)$/ ? ($1 => $2) : () } split /\n/, $out;
	for my $label (sort keys %expect)
	{
		like($got{$label} // '(missing)', $expect{$label}, "$driver: $label");
	}
	my ($first) = ($got{'json first'} // '') =~ /^(.*) false$/;
	is($got{'json replay'}, "$first true", "$driver: the same JSON written otherwise replays the outcome");
	my $runs = 4 + (($got{number} // "") =~ /^"/ ? 1 : 0);
	is($node->safe_psql('postgres', 'SELECT count(*) FROM shop.effects') - $effects, $runs,
		"$driver: $runs functions ran, once each");
	# the untyped call has the fingerprint of the same call with literals
	is($node->safe_psql('postgres', qq{
		SELECT idem.idempotent_call('${prefix}K-2', 'shop.label(int8, text)', 7::int8, 'gift'::text);
		SELECT idem.last_call_replayed()}), qq{"gift #7"\nt},
		"$driver: a call with typed values replays the call made with bind parameters");
	return;
}

my $python = '/usr/bin/python3';
SKIP:
{
	skip 'python3 is not installed', 1 unless -x $python;
	# With python present, a missing driver is a broken setup (scripts/setup.sh
	# installs python3-psycopg), not a reason to skip.
	ok(system($python, '-c', 'import psycopg') == 0, 'psycopg 3 is installed')
	  or last SKIP;
	my $script = q{
import json, sys, psycopg
args = json.loads(sys.argv[1])
conn = psycopg.connect(host=args['host'], port=args['port'], user=args['user'],
                       dbname=args['dbname'], autocommit=True)
for label, sql, params in args['calls']:
    # psycopg's placeholders are %s; objects become JSON text, as a caller
    # would write them, and {"number": n} the number n
    sql = sql.replace('$1', '%s').replace('$2', '%s').replace('$3', '%s')
    params = [p['number'] if isinstance(p, dict) and 'number' in p
              else json.dumps(p) if isinstance(p, dict) else p for p in params]
    try:
        outcome = conn.execute(sql, params).fetchone()[0]
        replayed = conn.execute('SELECT idem.last_call_replayed()').fetchone()[0]
        print('%s: %s %s' % (label, json.dumps(outcome, sort_keys=True), 'true' if replayed else 'false'))
    except psycopg.Error as e:
        print('%s: %s' % (label, e.sqlstate))
};
	# psycopg sends the number typed, beside an untyped string: 42P18
	check_driver('psycopg', 'py-', qr/^42P18$/, $python, '-c', $script);
}

my $example = abs_path("$FindBin::RealBin/../examples/http");
SKIP:
{
	skip 'node is not installed (examples/http/install.sh installs it)', 1
	  unless system('sh', '-c', 'command -v node >/dev/null') == 0;
	ok(-f "$example/node_modules/pg/package.json",
		'examples/http/node_modules has the pg driver (run examples/http/install.sh)')
	  or last SKIP;
	my $script = q{
const { Client } = require(process.env.IDEM_PG_MODULE);
const args = JSON.parse(process.argv[1]);
(async () => {
  const client = new Client({ host: args.host, port: args.port, user: args.user, database: args.dbname });
  await client.connect();
  for (const [label, sql, given] of args.calls) {
    const params = given.map(p => (p && typeof p === 'object' && 'number' in p ? p.number : p));
    try {
      const { rows: [row] } = await client.query(sql, params);
      const { rows: [flag] } = await client.query('SELECT idem.last_call_replayed() AS replayed');
      const outcome = row.idempotent_call;
      const sorted = outcome && typeof outcome === 'object'
        ? '{' + Object.keys(outcome).sort().map(k => JSON.stringify(k) + ': ' + JSON.stringify(outcome[k])).join(', ') + '}'
        : JSON.stringify(outcome);
      console.log(`${label}: ${sorted} ${flag.replayed}`);
    } catch (e) {
      console.log(`${label}: ${e.code}`);
    }
  }
  await client.end();
})();
};
	local $ENV{IDEM_PG_MODULE} = "$example/node_modules/pg";
	check_driver('node-pg', 'js-', qr/^"box #5" false$/, 'node', '-e', $script);
}

$node->stop;
done_testing();
