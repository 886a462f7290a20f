# Copyright (c) 2026, the idem developers

# Security: idem.control is not trusted, so a non-superuser cannot create,
# update or drop the extension and is told why; once a superuser installs it,
# non-superusers use it.  One role can never read, replay, purge or detect
# another role's records (not by reading, not by waiting on the key, not by
# a mismatch error, not through planner statistics), and fn runs with the
# caller's rights.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use IdemTestUtil;

my $node = NewNode('security');
$node->start;
$node->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN;
	CREATE ROLE bob LOGIN;
	CREATE DATABASE shopdb OWNER alice;
});

sub as
{
	my ($role, $sql, $db) = @_;
	my ($ret, $out, $err) = $node->psql($db // 'shopdb', "\\set VERBOSITY verbose\n$sql",
		extra_params => [ '-U', $role ]);
	return wantarray ? ($ret, $out, $err) : $out;
}

# Installing: refused to a non-superuser, even the database owner.
my ($ret, $out, $err) = as('alice', 'CREATE EXTENSION idem;');
isnt($ret, 0, 'a non-superuser cannot create the extension');
like($err, qr/42501: permission denied to create extension "idem"/, 'the error says permission denied');
like($err, qr/HINT:\s+Must be superuser to create this extension\./, 'the hint says a superuser must create it');
# pg_available_extension_versions does not list an extension installed
# under extension_destdir, so read the control file the server loads.
my $sharedir = `pg_config --sharedir`;
chomp $sharedir;
my $control = ($ENV{IDEM_DESTDIR} // '') . "$sharedir/extension/idem.control";
ok(-f $control, 'the installed control file is found');
unlike(slurp_file($control), qr/^\s*trusted\s*=\s*(true|on|yes|1)/mi, 'idem is not marked trusted');

$node->safe_psql('shopdb', q{
	CREATE EXTENSION idem;
	GRANT USAGE ON SCHEMA idem TO PUBLIC;
	CREATE SCHEMA shop;
	GRANT USAGE ON SCHEMA shop TO PUBLIC;
	CREATE TABLE shop.effects (id serial PRIMARY KEY, who text, payload jsonb);
	GRANT INSERT, SELECT ON shop.effects TO PUBLIC;
	GRANT USAGE ON SEQUENCE shop.effects_id_seq TO PUBLIC;
	CREATE FUNCTION shop.charge(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO shop.effects (who, payload) VALUES (current_user, payload);
		IF payload ? 'sleep' THEN PERFORM pg_sleep((payload ->> 'sleep')::float8); END IF;
		RETURN jsonb_build_object('charged_by', current_user::text, 'session', session_user::text) || payload;
	END $$;
	CREATE TABLE shop.secrets (s text);
	INSERT INTO shop.secrets VALUES ('top secret');
	CREATE FUNCTION shop.read_secret() RETURNS text LANGUAGE sql AS $$ SELECT s FROM shop.secrets $$;
});

# Updating and dropping: refused to non-superusers who do not own it.
($ret, $out, $err) = as('alice', 'ALTER EXTENSION idem UPDATE;');
like($err, qr/42501: must be owner of extension idem/, 'a non-superuser cannot update the extension');
($ret, $out, $err) = as('alice', 'DROP EXTENSION idem;');
like($err, qr/42501: must be owner of extension idem/, 'a non-superuser cannot drop the extension');

# Using: non-superusers call, replay and list their records.
is(as('alice', q{SELECT idem.idempotent_call('order-1', 'shop.charge(jsonb)', '{"amount": 10}')->>'charged_by'}),
	'alice', 'alice runs fn as herself');
is(as('alice', q{SELECT idem.idempotent_call('order-1', 'shop.charge(jsonb)', '{"amount": 10}')->>'charged_by', idem.last_call_replayed()}),
	'alice|t', 'alice replays');
is(as('alice', q{SELECT key FROM idem.my_records}), 'order-1', 'alice sees her record');

# Bob, with the same key: his own execution, never alice's outcome, and no
# mismatch error that would reveal her request.
is(as('bob', q{SELECT idem.idempotent_call('order-1', 'shop.charge(jsonb)', '{"amount": 99}')->>'charged_by', idem.last_call_replayed()}),
	'bob|f', "bob's call with alice's key runs fn as bob, with no IK422");
is(as('bob', q{SELECT count(*) FROM idem.my_records WHERE outcome->>'charged_by' = 'alice'}), '0',
	"alice's record is not in bob's view");
($ret, $out, $err) = as('bob', q{SELECT count(*) FROM idem.records});
like($err, qr/42501: permission denied for table records/, 'bob cannot read the key table');
($ret, $out, $err) = as('bob', q{SELECT idem.purge(1)});
like($err, qr/42501: permission denied for function purge/, 'bob cannot purge');
($ret, $out, $err) = as('bob', q{DELETE FROM idem.records WHERE key = 'order-1'});
like($err, qr/42501: permission denied for table records/, 'bob cannot delete records');
($ret, $out, $err) = as('bob', q{UPDATE idem.records SET outcome = '{}' WHERE true});
like($err, qr/42501: permission denied for table records/, 'bob cannot alter records');

# Planner statistics hold sample values of the key table: not shown to bob.
$node->safe_psql('shopdb', 'ANALYZE idem.records');
is($node->safe_psql('shopdb', q{SELECT count(*) > 0 FROM pg_stats WHERE schemaname = 'idem' AND tablename = 'records'}),
	't', 'the key table has statistics');
is(as('bob', q{SELECT count(*) FROM pg_stats WHERE schemaname = 'idem' AND tablename = 'records'}),
	'0', 'bob sees none of its statistics');

# While alice's first call on a key is open, bob's call on the same key does
# not wait (idem.wait_timeout = 0 would fail at once with IK409 if it did).
my $dir = PostgreSQL::Test::Utils::tempdir();
append_to_file("$dir/hold.sql", q{BEGIN;
SELECT idem.idempotent_call('order-2', 'shop.charge(jsonb)', '{"sleep": 0}');
SELECT pg_sleep(2);
COMMIT;
});
my ($hout, $herr) = ('', '');
my $holder = IPC::Run::start([ 'psql', '-X', '-qAt', '-d', $node->connstr('shopdb') . ' user=alice', '-f', "$dir/hold.sql" ],
	'>', \$hout, '2>', \$herr);
$node->poll_query_until('shopdb',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE usename = 'alice' AND wait_event = 'PgSleep'})
  or die "alice's transaction never started: $herr";
($ret, $out, $err) = as('bob', q{SET idem.wait_timeout = 0;
SELECT idem.idempotent_call('order-2', 'shop.charge(jsonb)', '{"sleep": 0}')->>'charged_by';});
is($out, 'bob', "bob does not wait for alice's open call on the same key") or diag($err);
($ret, $out, $err) = as('alice', q{SET idem.wait_timeout = 0;
SELECT idem.idempotent_call('order-2', 'shop.charge(jsonb)', '{"sleep": 0}');});
like($err, qr/IK409/, 'alice herself does wait (here: fails at once with IK409)');
$holder->finish;

# fn runs with the caller's rights: bob cannot reach what he may not, through
# idem, on a first call or a replay.
($ret, $out, $err) = as('bob', q{SELECT idem.idempotent_call('secret-1', 'shop.read_secret()')});
like($err, qr/42501: permission denied for table secrets/, "fn runs with bob's rights");
$node->safe_psql('shopdb', q{GRANT SELECT ON shop.secrets TO alice});
is(as('alice', q{SELECT idem.idempotent_call('secret-1', 'shop.read_secret()')}), '"top secret"',
	'alice, who may read it, gets the secret');
($ret, $out, $err) = as('bob', q{SELECT idem.idempotent_call('secret-1', 'shop.read_secret()')});
like($err, qr/42501: permission denied for table secrets/, "bob's retry with alice's key still runs with bob's rights");
$node->safe_psql('shopdb', q{REVOKE EXECUTE ON FUNCTION shop.read_secret() FROM PUBLIC});
$node->safe_psql('shopdb', q{GRANT EXECUTE ON FUNCTION shop.read_secret() TO alice});
($ret, $out, $err) = as('bob', q{SELECT idem.idempotent_call('secret-1', 'shop.read_secret()')});
like($err, qr/42501: permission denied for function read_secret/, 'bob needs EXECUTE on fn');
is($node->safe_psql('shopdb', q{SELECT string_agg(DISTINCT owner::text, ',' ORDER BY owner::text) FROM idem.records WHERE key = 'secret-1'}),
	'alice', 'only alice has a record of the secret');

$node->stop;
done_testing();
