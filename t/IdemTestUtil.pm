# Copyright (c) 2026, the idem developers

# IdemTestUtil: what idem's TAP tests share.
#
# NewNode makes a PostgreSQL::Test::Cluster that loads idem from where it was
# installed: the server's own directories, or those below IDEM_DESTDIR when
# the extension was installed with "make install DESTDIR=..." (Debian's
# extension_destdir).  LoadShop creates the extension and a test function
# whose every execution leaves a row in shop.effects.  StartPgbouncer puts
# pgbouncer in transaction pooling mode in front of a node.
package IdemTestUtil;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use IPC::Run;

our @EXPORT = qw(NewNode LoadShop StartPgbouncer);

sub NewNode
{
	my ($name, %init) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%init);
	$node->append_conf('postgresql.conf', "extension_destdir = '$ENV{IDEM_DESTDIR}'")
	  if $ENV{IDEM_DESTDIR};
	return $node;
}

sub LoadShop
{
	my ($node, $db) = @_;
	$node->safe_psql($db // 'postgres', q{
		CREATE EXTENSION idem;
		CREATE SCHEMA shop;
		CREATE TABLE shop.effects (id serial PRIMARY KEY, payload jsonb);
		CREATE FUNCTION shop.place_order(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
		DECLARE
			effect int;
		BEGIN
			INSERT INTO shop.effects (payload) VALUES (payload) RETURNING id INTO effect;
			IF payload ? 'sleep' THEN
				PERFORM pg_sleep((payload ->> 'sleep')::float8);
			END IF;
			RETURN jsonb_build_object('order', effect) || payload;
		END $$;
		GRANT USAGE ON SCHEMA shop TO PUBLIC;
		GRANT SELECT, INSERT ON shop.effects TO PUBLIC;
		GRANT USAGE ON SEQUENCE shop.effects_id_seq TO PUBLIC;
	});
}

# Start pgbouncer on a unix socket of its own, pooling transactions of the
# given users (trusted) onto at most $pool_size server sessions.  Returns the
# harness (stop it with ->signal('INT') and ->finish) and the connection
# string for a user, or dies if it does not come up.
sub StartPgbouncer
{
	my ($node, $pool_size, @users) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir_short();
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my ($host, $pgport) = ($node->host, $node->port);
	append_to_file("$dir/users.txt", join('', map { qq{"$_" ""\n} } @users));
	append_to_file("$dir/pgbouncer.ini", qq{
[databases]
postgres = host=$host port=$pgport dbname=postgres

[pgbouncer]
listen_addr =
listen_port = $port
unix_socket_dir = $dir
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
default_pool_size = $pool_size
max_client_conn = 100
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
});
	my ($out, $err) = ('', '');
	my $bouncer = IPC::Run::start([ 'pgbouncer', "$dir/pgbouncer.ini" ], '>', \$out, '2>', \$err);
	my $connstr = sub { "host=$dir port=$port dbname=postgres user=$_[0]" };
	for (1 .. 100)
	{
		return ($bouncer, $connstr, $dir)
		  if system('psql', '-X', '-qAt', '-d', $connstr->($users[0]), '-c', 'SELECT 1') == 0;
		select(undef, undef, undef, 0.1);
	}
	die "pgbouncer did not start: $err";
}

1;
