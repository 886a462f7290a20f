# IdemTestUtil: what idem's TAP tests share.
#
# NewNode makes a PostgreSQL::Test::Cluster that loads idem from where it was
# installed: the server's own directories, or those below IDEM_DESTDIR when
# the extension was installed with "make install DESTDIR=..." (Debian's
# extension_destdir).  LoadShop creates the extension and a test function
# whose every execution leaves a row in shop.effects.
package IdemTestUtil;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(NewNode LoadShop);

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

1;
