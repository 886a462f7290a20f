# Copyright (c) 2026, the idem developers

# ALTER EXTENSION idem UPDATE, along every version script in the tree: the
# oldest version with an install script (idem--X.sql) is installed, and the
# update scripts (idem--A--B.sql) take it step by step, one ALTER EXTENSION
# idem UPDATE TO per script, to the newest (idem.control's default_version).
# At every version records and claims are written; after every step each
# record written so far still replays without running its function again,
# and claims taken under an earlier version complete.  After each step the
# updated extension is the same, member by member, as a fresh install of
# the version it reached, where that version has an install script (the
# newest must have one): functions with their definitions and grants,
# tables with their columns, indexes and constraints, views, sequences,
# types, comments, ACLs and the extension's dump configuration, read from
# the catalogs.  A new version script is picked up without editing this
# test.  And DROP EXTENSION restarts the fencing tokens unless the counter
# is carried over as documented.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use File::Basename qw(basename);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemTestUtil;

# ------------------------------------------------- (a) the version scripts

# The tree this test runs from (the staged copy of the source) has the
# scripts that make install put where the server reads them.
my $tree = "$FindBin::RealBin/..";
my (%install, %updates, %versions);
for my $path (glob("$tree/idem--*.sql"))
{
	my $file = basename($path);
	if ($file =~ /^idem--([0-9.]+)--([0-9.]+)\.sql$/)
	{
		push @{ $updates{$1} }, $2;
		$versions{$1} = $versions{$2} = 1;
	}
	elsif ($file =~ /^idem--([0-9.]+)\.sql$/)
	{
		$install{$1} = $versions{$1} = 1;
	}
	else
	{
		fail("version script with a name this test does not understand: $file");
	}
}

# Numeric order of dotted versions: 1.10 comes after 1.9.
sub by_version
{
	my @x = split /\./, $a;
	my @y = split /\./, $b;
	while (@x || @y)
	{
		my $c = (shift(@x) // -1) <=> (shift(@y) // -1);
		return $c if $c;
	}
	return 0;
}

my ($control) = slurp_file("$tree/idem.control") =~ /^default_version\s*=\s*'([^']+)'/m;
my $oldest = (sort by_version keys %install)[0];
my $newest = (sort by_version keys %versions)[-1];
ok(defined $oldest, 'the tree has at least one install script')
  or BAIL_OUT("no idem--X.sql in $tree");
is($control, $newest, "idem.control's default_version is the newest version in the scripts");
ok($install{$newest}, "the newest version, $newest, has an install script of its own");

# The steps: from each version the update script to the nearest newer one.
my @chain = ($oldest);
while ($chain[-1] ne $newest)
{
	my @next = sort by_version @{ $updates{ $chain[-1] } // [] };
	last unless @next;
	push @chain, $next[0];
}
is($chain[-1], $newest, 'update scripts lead step by step from ' . $oldest . ' to ' . $newest
	. ' (' . join(' -> ', @chain) . ')');
my %on_chain = map { $_ => 1 } @chain;
for my $from (sort by_version keys %updates)
{
	for my $to (sort by_version @{ $updates{$from} })
	{
		my $i = (grep { $chain[$_] eq $from } 0 .. $#chain)[0];
		ok(defined $i && $i < $#chain && $chain[ $i + 1 ] eq $to,
			"idem--$from--$to.sql is one of the steps");
	}
}
for my $v (sort by_version keys %install)
{
	ok($on_chain{$v}, "the install script of $v is on the path the steps take");
}

my $node = NewNode('upgrade');
$node->start;

# The installation has the same scripts: none is missing from the Makefile.
# (pg_available_extension_versions does not look below extension_destdir,
# so the folder is read.)
my $sharedir = ($ENV{IDEM_DESTDIR} // '') . $node->config_data('--sharedir') . '/extension';
is(join(' ', sort map { basename($_) } glob("$sharedir/idem--*.sql")),
	join(' ', sort map { basename($_) } glob("$tree/idem--*.sql")),
	"$sharedir has every version script of the tree and no other");
is($node->safe_psql('postgres', qq{
	SELECT path FROM pg_extension_update_paths('idem') WHERE source = '$oldest' AND target = '$newest'}),
	join('--', @chain), 'and its shortest update path is the one taken here');

$node->safe_psql('postgres', q{
	CREATE ROLE regress_up_alice;
	CREATE DATABASE updated;
});

# ------------------------------------------------------------ (b) the data

$node->safe_psql('updated', qq{
	CREATE EXTENSION idem VERSION '$oldest';
	GRANT USAGE ON SCHEMA idem TO PUBLIC;
	CREATE SCHEMA shop;
	CREATE TABLE shop.effects (id serial PRIMARY KEY, payload jsonb);
	CREATE FUNCTION shop.place_order(payload jsonb) RETURNS jsonb LANGUAGE sql AS \$\$
		INSERT INTO shop.effects (payload) VALUES (payload)
		RETURNING jsonb_build_object('order', id) || payload \$\$;
	CREATE FUNCTION shop.label(n int8, note text) RETURNS text LANGUAGE sql AS \$\$
		INSERT INTO shop.effects (payload) VALUES (to_jsonb(note))
		RETURNING note || ' #' || n || ' effect ' || id \$\$;
	GRANT USAGE ON SCHEMA shop TO PUBLIC;
	GRANT ALL ON ALL TABLES IN SCHEMA shop TO PUBLIC;
	GRANT ALL ON ALL SEQUENCES IN SCHEMA shop TO PUBLIC;
});
is($node->safe_psql('updated', q{SELECT extversion FROM pg_extension WHERE extname = 'idem'}),
	$oldest, "the database starts at idem $oldest");

# Records of idempotent_call (two roles, typed and untyped arguments),
# written at version $v; the calls and their outcomes.
sub write_records
{
	my ($v) = @_;
	my @calls = (
		[ 'postgres',         qq{SELECT idem.idempotent_call('order-1\@$v', 'shop.place_order(jsonb)', '{"sku": 1}'::jsonb)} ],
		[ 'postgres',         qq{SELECT idem.idempotent_call('order-2\@$v', 'shop.place_order(jsonb)', '{"sku": 2}')} ],
		[ 'postgres',         qq{SELECT idem.idempotent_call('label-1\@$v', 'shop.label(int8, text)', 7::int8, 'gift')} ],
		[ 'regress_up_alice', qq{SELECT idem.idempotent_call('order-1\@$v', 'shop.place_order(jsonb)', '{"sku": 1}'::jsonb)} ],
	);
	return map { [ @$_, $node->safe_psql('updated', "SET ROLE $_->[0]; $_->[1]"), $v ] } @calls;
}

# Claims of idem.claim at version $v: one completed, and live ones (one
# with a checkpoint) to complete after the next step and after the last.
sub take_claims
{
	my ($v) = @_;
	$node->safe_psql('updated', qq{
		SELECT token FROM idem.claim('job-done\@$v', '{"n": 1}', '1 hour');
		SELECT idem.complete('job-done\@$v', (SELECT token FROM idem.records WHERE key = 'job-done\@$v'), '{"done": 1}');
	});
	my %live;
	for my $job (map { "$_\@$v" } qw(job-next job-next-checkpointed job-last job-last-checkpointed))
	{
		$live{$job} = $node->safe_psql('updated', "SELECT token FROM idem.claim('$job', '{\"n\": 2}', '1 hour')");
		$node->safe_psql('updated', "SELECT idem.checkpoint('$job', $live{$job}, 'half', '{\"at\": 50}')")
		  if $job =~ /checkpointed/;
	}
	return %live;
}

# Complete a live claim taken at version $from and check that it replays.
sub complete_claim
{
	my ($job, $token, $from, $now) = @_;
	$node->safe_psql('updated', "SELECT idem.complete('$job', $token, '{\"job\": \"$job\"}')");
	is($node->safe_psql('updated', "SELECT state || ' ' || outcome FROM idem.claim('$job', '{\"n\": 2}', '1 hour')"),
		qq{replay {"job": "$job"}}, "a claim taken under $from ($job) completes under $now");
}

# ------------------------------ (c) the members, updated against fresh

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

# The updated database against a fresh install of version $v in a database
# of its own, given the grant the updated database was given.
sub compare_with_fresh
{
	my ($v) = @_;
	my $db = "fresh_$v" =~ s/\./_/gr;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, "CREATE EXTENSION idem VERSION '$v'; GRANT USAGE ON SCHEMA idem TO PUBLIC");
	my @updated = split /\n/, $node->safe_psql('updated', $describe);
	my @fresh = split /\n/, $node->safe_psql($db, $describe);
	my %in_fresh = map { $_ => 1 } @fresh;
	my %in_updated = map { $_ => 1 } @updated;
	my @only_updated = grep { !$in_fresh{$_} } @updated;
	my @only_fresh = grep { !$in_updated{$_} } @fresh;

	cmp_ok(scalar(grep { /: member function$/ } @fresh), '>=', 10,
		"the description of a fresh $v lists the functions of the extension");
	ok(scalar(grep { /^table idem\.records: index / } @fresh), 'and the indexes of its tables');
	is(scalar(@updated), scalar(@fresh), "as many facts about the extension updated to $v as about a fresh one");
	ok(!@only_updated && !@only_fresh, "the extension updated to $v is member by member a fresh $v")
	  or diag(join("\n", 'only after the update:', @only_updated, 'only in a fresh install:', @only_fresh));
	return $db;
}

# ------------------------------------------------------ (d) step by step

my @records;
my (%next, %last);    # live claims: job => [token, version taken at]
my $fresh;
for my $i (0 .. $#chain)
{
	my $v = $chain[$i];
	if ($i > 0)
	{
		$node->safe_psql('updated', "ALTER EXTENSION idem UPDATE TO '$v'");
		is($node->safe_psql('updated', q{SELECT extversion FROM pg_extension WHERE extname = 'idem'}),
			$v, "ALTER EXTENSION idem UPDATE TO '$v' brings it from $chain[$i - 1] to $v");

		my $effects = $node->safe_psql('updated', 'SELECT count(*) FROM shop.effects');
		for my $r (@records)
		{
			my ($role, $sql, $outcome, $from) = @$r;
			is($node->safe_psql('updated', "SET ROLE $role; $sql; SELECT idem.last_call_replayed()"),
				"$outcome\nt", "under $v, $role replays a record of $from: $sql");
		}
		is($node->safe_psql('updated', 'SELECT count(*) FROM shop.effects'), $effects,
			"no function ran again under $v");
		for my $from (@chain[ 0 .. $i - 1 ])
		{
			is($node->safe_psql('updated',
					"SELECT state || ' ' || outcome FROM idem.claim('job-done\@$from', '{\"n\": 1}', '1 hour')"),
				'replay {"done": 1}', "a claim completed under $from replays its outcome under $v");
		}
		complete_claim($_, @{ $next{$_} }, $v) for sort keys %next;
		%next = ();
		if ($i == $#chain)
		{
			complete_claim($_, @{ $last{$_} }, $v) for sort keys %last;
		}
		$fresh = compare_with_fresh($v) if $install{$v};
	}
	if ($i < $#chain)
	{
		push @records, write_records($v);
		my %live = take_claims($v);
		for my $job (keys %live)
		{
			my $set = $job =~ /^job-next/ ? \%next : \%last;
			$set->{$job} = [ $live{$job}, $v ];
		}
	}
}
cmp_ok(scalar(@records), '>=', 4, 'records were written before the updates');

# A database created without a version gets the newest, the one compared.
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION idem');
is($node->safe_psql('fresh', q{SELECT extversion FROM pg_extension WHERE extname = 'idem'}),
	$newest, "CREATE EXTENSION idem installs the newest version, $newest");

# The plain ALTER EXTENSION idem UPDATE that README gives takes the oldest
# straight to the newest.
$node->safe_psql('postgres', 'CREATE DATABASE direct');
$node->safe_psql('direct', "CREATE EXTENSION idem VERSION '$oldest'; ALTER EXTENSION idem UPDATE");
is($node->safe_psql('direct', q{SELECT extversion FROM pg_extension WHERE extname = 'idem'}),
	$newest, "ALTER EXTENSION idem UPDATE without a version goes from $oldest to $newest");

# ------------------------------- (e) fencing tokens and DROP EXTENSION

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
