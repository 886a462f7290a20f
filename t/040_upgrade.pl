# Copyright (c) 2026, the idem developers

# ALTER EXTENSION idem UPDATE from 1.0 to 1.1: every record written under
# 1.0 still replays and every live claim can still be completed afterwards;
# and the updated extension is the same, member by member, as a fresh
# install of 1.1 (functions with their definitions and grants, tables with
# their columns, indexes and constraints, views, sequences, types, comments,
# ACLs and the extension's dump configuration), read from the catalogs.
# And DROP EXTENSION restarts the fencing tokens unless the counter is
# carried over as documented.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemTestUtil;

my $node = NewNode('upgrade');
$node->start;
$node->safe_psql('postgres', q{
	CREATE ROLE regress_up_alice;
	CREATE DATABASE updated;
	CREATE DATABASE fresh;
});

# ------------------------------------------------------------ (a) the data

$node->safe_psql('updated', q{
	CREATE EXTENSION idem VERSION '1.0';
	GRANT USAGE ON SCHEMA idem TO PUBLIC;
	CREATE SCHEMA shop;
	CREATE TABLE shop.effects (id serial PRIMARY KEY, payload jsonb);
	CREATE FUNCTION shop.place_order(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
		INSERT INTO shop.effects (payload) VALUES (payload)
		RETURNING jsonb_build_object('order', id) || payload $$;
	CREATE FUNCTION shop.label(n int8, note text) RETURNS text LANGUAGE sql AS $$
		INSERT INTO shop.effects (payload) VALUES (to_jsonb(note))
		RETURNING note || ' #' || n || ' effect ' || id $$;
	GRANT USAGE ON SCHEMA shop TO PUBLIC;
	GRANT ALL ON ALL TABLES IN SCHEMA shop TO PUBLIC;
	GRANT ALL ON ALL SEQUENCES IN SCHEMA shop TO PUBLIC;
});
is($node->safe_psql('updated', q{SELECT extversion FROM pg_extension WHERE extname = 'idem'}),
	'1.0', 'the database starts at idem 1.0');

# Records of idempotent_call (two roles, typed and untyped arguments) and
# claims of idem.claim: completed, live, and live with a checkpoint.
my @calls = (
	[ 'postgres',         q{SELECT idem.idempotent_call('order-1', 'shop.place_order(jsonb)', '{"sku": 1}'::jsonb)} ],
	[ 'postgres',         q{SELECT idem.idempotent_call('order-2', 'shop.place_order(jsonb)', '{"sku": 2}')} ],
	[ 'postgres',         q{SELECT idem.idempotent_call('label-1', 'shop.label(int8, text)', 7::int8, 'gift')} ],
	[ 'regress_up_alice', q{SELECT idem.idempotent_call('order-1', 'shop.place_order(jsonb)', '{"sku": 1}'::jsonb)} ],
);
my @outcomes = map {
	$node->safe_psql('updated', "SET ROLE $_->[0]; $_->[1]")
} @calls;

$node->safe_psql('updated', q{
	SELECT token FROM idem.claim('job-done', '{"n": 1}', '1 hour');
	SELECT idem.complete('job-done', (SELECT token FROM idem.records WHERE key = 'job-done'), '{"done": 1}');
});
my %tokens;
for my $job (qw(job-live job-checkpointed))
{
	$tokens{$job} = $node->safe_psql('updated',
		"SELECT token FROM idem.claim('$job', '{\"n\": 2}', '1 hour')");
}
$node->safe_psql('updated',
	"SELECT idem.checkpoint('job-checkpointed', $tokens{'job-checkpointed'}, 'half', '{\"at\": 50}')");
my $effects = $node->safe_psql('updated', 'SELECT count(*) FROM shop.effects');

$node->safe_psql('updated', 'ALTER EXTENSION idem UPDATE');
is($node->safe_psql('updated', q{SELECT extversion FROM pg_extension WHERE extname = 'idem'}),
	'1.1', 'ALTER EXTENSION idem UPDATE brings it to 1.1');

for my $i (0 .. $#calls)
{
	my ($role, $sql) = @{ $calls[$i] };
	is($node->safe_psql('updated', "SET ROLE $role; $sql; SELECT idem.last_call_replayed()"),
		"$outcomes[$i]\nt", "after the update, $role replays: $sql");
}
is($node->safe_psql('updated', 'SELECT count(*) FROM shop.effects'), $effects,
	'no function ran again after the update');
is($node->safe_psql('updated',
		q{SELECT state || ' ' || outcome FROM idem.claim('job-done', '{"n": 1}', '1 hour')}),
	'replay {"done": 1}', 'a claim completed under 1.0 replays its outcome');
for my $job (sort keys %tokens)
{
	$node->safe_psql('updated', "SELECT idem.complete('$job', $tokens{$job}, '{\"job\": \"$job\"}')");
	is($node->safe_psql('updated',
			"SELECT state || ' ' || outcome FROM idem.claim('$job', '{\"n\": 2}', '1 hour')"),
		qq{replay {"job": "$job"}}, "a claim taken under 1.0 ($job) completes under 1.1");
}

# ------------------------------------------- (b) updated against fresh

$node->safe_psql('fresh', 'CREATE EXTENSION idem');
# the grant the updated database was given above, so that ACLs compare
$node->safe_psql('fresh', 'GRANT USAGE ON SCHEMA idem TO PUBLIC');

# One line per fact about every member of the extension (pg_depend deptype
# 'e'), named by identity rather than OID so that two databases compare.
# Tables and views also bring their columns, indexes, constraints, triggers
# and policies, which depend on the table rather than on the extension.
my $describe = q{
WITH ext AS (
	SELECT * FROM pg_extension WHERE extname = 'idem'
), members AS (
	SELECT d.classid, d.objid, d.objsubid
	  FROM pg_depend d, ext
	 WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
), named AS (
	SELECT m.*, pg_describe_object(m.classid, m.objid, m.objsubid) AS what FROM members m
), facts AS (
	-- every member, and its comment
	SELECT what, 'member ' || (pg_identify_object(classid, objid, objsubid)).type AS fact FROM named
	UNION ALL
	SELECT n.what, 'comment ' || d.description
	  FROM named n JOIN pg_description d ON d.classoid = n.classid AND d.objoid = n.objid AND d.objsubid = 0
	UNION ALL
	-- functions: the whole definition, owner and grants
	SELECT n.what, 'definition ' || pg_get_functiondef(p.oid)
	  FROM named n JOIN pg_proc p ON n.classid = 'pg_proc'::regclass AND p.oid = n.objid
	 WHERE p.prokind IN ('f', 'p', 'w')
	UNION ALL
	SELECT n.what, concat_ws(' ', 'kind', p.prokind, 'owner', p.proowner::regrole, 'acl', p.proacl::text)
	  FROM named n JOIN pg_proc p ON n.classid = 'pg_proc'::regclass AND p.oid = n.objid
	UNION ALL
	-- relations: kind, options, owner, grants
	SELECT n.what, concat_ws(' ', 'relkind', c.relkind, 'persistence', c.relpersistence,
	                         'am', (SELECT amname FROM pg_am WHERE oid = c.relam),
	                         'options', c.reloptions::text, 'owner', c.relowner::regrole,
	                         'acl', c.relacl::text, 'rowsecurity', c.relrowsecurity)
	  FROM named n JOIN pg_class c ON n.classid = 'pg_class'::regclass AND c.oid = n.objid
	UNION ALL
	-- columns in order, with type, collation, NOT NULL, default, identity,
	-- generation, grants and comment
	SELECT n.what, concat_ws(' ', 'column', row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
	                         a.attname, format_type(a.atttypid, a.atttypmod),
	                         'collate=' || (SELECT collname FROM pg_collation WHERE oid = a.attcollation),
	                         CASE WHEN a.attnotnull THEN 'not null' END,
	                         'default=' || pg_get_expr(ad.adbin, ad.adrelid),
	                         'identity=' || nullif(a.attidentity::text, ''), 'generated=' || nullif(a.attgenerated::text, ''),
	                         'acl=' || a.attacl::text, 'comment=' || col_description(c.oid, a.attnum))
	  FROM named n JOIN pg_class c ON n.classid = 'pg_class'::regclass AND c.oid = n.objid
	  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	  LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
	UNION ALL
	SELECT n.what, 'index ' || pg_get_indexdef(i.indexrelid)
	       || coalesce(' comment ' || obj_description(i.indexrelid, 'pg_class'), '')
	  FROM named n JOIN pg_index i ON n.classid = 'pg_class'::regclass AND i.indrelid = n.objid
	UNION ALL
	SELECT n.what, 'constraint ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
	  FROM named n JOIN pg_constraint co ON n.classid = 'pg_class'::regclass AND co.conrelid = n.objid
	UNION ALL
	SELECT n.what, 'trigger ' || pg_get_triggerdef(t.oid)
	  FROM named n JOIN pg_trigger t ON n.classid = 'pg_class'::regclass AND t.tgrelid = n.objid
	 WHERE NOT t.tgisinternal
	UNION ALL
	SELECT n.what, concat_ws(' ', 'policy', po.polname, po.polcmd, po.polpermissive, po.polroles::regrole[]::text,
	                         pg_get_expr(po.polqual, po.polrelid), pg_get_expr(po.polwithcheck, po.polrelid))
	  FROM named n JOIN pg_policy po ON n.classid = 'pg_class'::regclass AND po.polrelid = n.objid
	UNION ALL
	SELECT n.what, 'view ' || pg_get_viewdef(c.oid)
	  FROM named n JOIN pg_class c ON n.classid = 'pg_class'::regclass AND c.oid = n.objid
	 WHERE c.relkind IN ('v', 'm')
	UNION ALL
	SELECT n.what, concat_ws(' ', 'sequence', format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
	                         s.seqmax, s.seqmin, s.seqcache, s.seqcycle)
	  FROM named n JOIN pg_sequence s ON n.classid = 'pg_class'::regclass AND s.seqrelid = n.objid
	UNION ALL
	-- types: what makes them behave
	SELECT n.what, concat_ws(' ', 'type', t.typtype, t.typcategory, t.typispreferred, t.typlen, t.typbyval,
	                         t.typalign, t.typstorage, t.typinput::regprocedure, t.typoutput::regprocedure,
	                         t.typreceive::regprocedure, t.typsend::regprocedure,
	                         (SELECT collname FROM pg_collation WHERE oid = t.typcollation),
	                         format_type(t.typbasetype, t.typtypmod), t.typnotnull,
	                         t.typdefault, 'owner', t.typowner::regrole, 'acl', t.typacl::text)
	  FROM named n JOIN pg_type t ON n.classid = 'pg_type'::regclass AND t.oid = n.objid
	UNION ALL
	-- schemas
	SELECT n.what, concat_ws(' ', 'owner', s.nspowner::regrole, 'acl', s.nspacl::text)
	  FROM named n JOIN pg_namespace s ON n.classid = 'pg_namespace'::regclass AND s.oid = n.objid
	UNION ALL
	-- the extension itself: version, schema, and what pg_dump keeps
	SELECT 'extension idem', concat_ws(' ', 'version', extversion, 'schema', extnamespace::regnamespace,
	                                   'relocatable', extrelocatable, 'owner', extowner::regrole,
	                                   'schema acl', (SELECT nspacl::text FROM pg_namespace WHERE oid = extnamespace))
	  FROM ext
	UNION ALL
	SELECT 'extension idem', 'dumps ' || cfg.rel::regclass || ' where ' || quote_literal(cfg.cond)
	  FROM ext, unnest(ext.extconfig, ext.extcondition) AS cfg(rel, cond)
)
SELECT what || ': ' || fact FROM facts ORDER BY 1
};

my @updated = split /\n/, $node->safe_psql('updated', $describe);
my @fresh = split /\n/, $node->safe_psql('fresh', $describe);
my %in_fresh = map { $_ => 1 } @fresh;
my %in_updated = map { $_ => 1 } @updated;
my @only_updated = grep { !$in_fresh{$_} } @updated;
my @only_fresh = grep { !$in_updated{$_} } @fresh;

cmp_ok(scalar(grep { /: member function$/ } @fresh), '>=', 10,
	'the description lists the functions of the extension');
ok(scalar(grep { /^table idem\.records: index / } @fresh), 'and the indexes of its tables');
is(scalar(@updated), scalar(@fresh), 'as many facts about the updated extension as about a fresh one');
ok(!@only_updated && !@only_fresh, 'the updated extension is member by member a fresh 1.1')
  or diag(join("\n", 'only after the update:', @only_updated, 'only in a fresh install:', @only_fresh));

# ------------------------------- (c) fencing tokens and DROP EXTENSION

# DROP EXTENSION drops the token sequence with everything else, so a new
# CREATE EXTENSION starts the tokens at 1 again; the documented recipe
# (keep last_value, setval after the re-create) carries the counter over.
my $claim = q{SELECT token FROM idem.claim('token-' || clock_timestamp(), NULL, '1 hour')};
$node->safe_psql('fresh', $claim) for 1 .. 3;
my $last = $node->safe_psql('fresh', $claim);
cmp_ok($last, '>=', 4, 'four claims took four tokens');
$node->safe_psql('fresh', 'DROP EXTENSION idem; CREATE EXTENSION idem');
is($node->safe_psql('fresh', $claim), '1', 'a re-created extension starts the tokens at 1 again');
my $saved = $node->safe_psql('fresh', 'SELECT last_value FROM idem.claim_tokens');
$node->safe_psql('fresh', 'DROP EXTENSION idem; CREATE EXTENSION idem');
$node->safe_psql('fresh', "SELECT setval('idem.claim_tokens', greatest($saved, $last))");
cmp_ok($node->safe_psql('fresh', $claim), '>', $last,
	'after setval the first token is larger than every token given out before');

$node->stop;
done_testing();
