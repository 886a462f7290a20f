# Copyright (c) 2026, the idem developers


# SyncTest.pm
#	Helpers for idem's DynamoDB sync TAP tests: start dynalite behind the
#	SigV4-verifying proxy (test/dynamo), create the table, read items back,
#	inject faults, and start PostgreSQL nodes configured for the sync.
#
# Everything listens on 127.0.0.1.  Child processes are killed at exit.

package SyncTest;

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use HTTP::Tiny;
use IPC::Run;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(usleep);

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our $HARNESS = abs_path(dirname(__FILE__) . '/../test/dynamo');
our $AKID = 'AKIDIDEMTEST0001';
our $SECRET = 'idemTestSecret/With+Slash=0123456789';
our $REGION = 'us-east-1';
our $TABLE = 'idem_test';

my @children;
my $json = JSON::PP->new->canonical->allow_nonref;

# Start dynalite and the proxy; options: session_token, dynalite_path (a
# directory for a LevelDB store that survives restart_dynalite; in memory
# without it).
sub new
{
	my ($class, %opts) = @_;
	my $self = bless {%opts}, $class;

	$self->{dl_port} = PostgreSQL::Test::Cluster::get_free_port();
	$self->{proxy_port} = PostgreSQL::Test::Cluster::get_free_port();
	$self->{control_port} = PostgreSQL::Test::Cluster::get_free_port();
	$self->{log} = "$PostgreSQL::Test::Utils::tmp_check/dynamo_$self->{proxy_port}.log";

	$self->start_dynalite;
	$self->start_proxy;
	$self->dyn('create-table', $TABLE);
	return $self;
}

# Start dynalite on its port, on disk when dynalite_path was given.
sub start_dynalite
{
	my ($self) = @_;
	my @cmd = ('node', 'node_modules/dynalite/cli.js',
		'--host', '127.0.0.1', '--port', $self->{dl_port}, '--createTableMs', '0');
	push @cmd, '--path', $self->{dynalite_path} if $self->{dynalite_path};
	$self->{dl_pid} = spawn($self->{log}, @cmd);
	wait_port($self->{dl_port});
}

# Kill dynalite with SIGKILL and start it again on the same port, after
# down_secs (default 0) without it; the table survives only with
# dynalite_path.
sub restart_dynalite
{
	my ($self, $down_secs) = @_;
	kill 'KILL', $self->{dl_pid};
	waitpid($self->{dl_pid}, 0);
	delete $self->{dl_pid};
	Time::HiRes::sleep($down_secs) if $down_secs;
	$self->start_dynalite;
}

# Fork and exec a command in the harness directory; returns its pid.
sub spawn
{
	my ($log, @cmd) = @_;
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>>', $log) or die;
		open(STDERR, '>&', \*STDOUT) or die;
		chdir $HARNESS or die;
		exec(@cmd) or die "exec: $!";
	}
	push @children, $pid;
	return $pid;
}

# Wait until something accepts connections on a port.
sub wait_port
{
	my ($port) = @_;
	for (1 .. 300)
	{
		my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp');
		if ($s)
		{
			close $s;
			return;
		}
		usleep(100_000);
	}
	die "nothing listens on port $port";
}

# Start (or restart) the proxy in front of dynalite.
sub start_proxy
{
	my ($self) = @_;
	my @cmd = ('node', 'proxy.js', '--port', $self->{proxy_port},
		'--control-port', $self->{control_port},
		'--target', "http://127.0.0.1:$self->{dl_port}",
		'--access-key-id', $AKID, '--secret-access-key', $SECRET,
		'--region', $REGION);
	push @cmd, '--session-token', $self->{session_token} if $self->{session_token};
	$self->{proxy_pid} = spawn($self->{log}, @cmd);
	wait_port($self->{proxy_port});
	wait_port($self->{control_port});
}

# Stop the proxy: the endpoint refuses connections until start_proxy.
sub stop_proxy
{
	my ($self) = @_;
	kill 'KILL', $self->{proxy_pid};
	waitpid($self->{proxy_pid}, 0);
	delete $self->{proxy_pid};
}

# The endpoint URL PostgreSQL talks to.
sub endpoint
{
	my ($self) = @_;
	return "http://127.0.0.1:$self->{proxy_port}";
}

# Run dyn.js against the proxy with the test credentials; returns stdout.
sub dyn
{
	my ($self, @args) = @_;
	my %env = (AWS_ACCESS_KEY_ID => $AKID, AWS_SECRET_ACCESS_KEY => $SECRET,
		AWS_REGION => $REGION);
	$env{AWS_SESSION_TOKEN} = $self->{session_token} if $self->{session_token};
	return run_node(\%env, 'dyn.js', $self->endpoint, @args);
}

# Run a node script of the harness; dies on failure, returns stdout.
sub run_node
{
	my ($env, @args) = @_;
	my $stdin = '';
	$stdin = pop @args if ref($args[-1]) eq 'SCALAR';
	local %ENV = (%ENV, %$env);
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run([ 'node', "$HARNESS/$args[0]", @args[ 1 .. $#args ] ],
		'<', (ref $stdin ? $stdin : \$stdin), '>', \$out, '2>', \$err);
	die "node @args failed: $err" unless $ok;
	return $out;
}

# Every item of the table, decoded.
sub scan
{
	my ($self, $table) = @_;
	my $out = $self->dyn('scan', $table // $TABLE);
	return [ map { decode_json($_) } grep { $_ ne '' } split /\n/, $out ];
}

# Change the proxy's fault injection.
sub fault
{
	my ($self, %q) = @_;
	my $qs = join('&', map { "$_=$q{$_}" } sort keys %q);
	my $r = HTTP::Tiny->new->get("http://127.0.0.1:$self->{control_port}/fault?$qs");
	die "fault: $r->{status}" unless $r->{success};
}

# The proxy's counters.
sub stats
{
	my ($self) = @_;
	my $r = HTTP::Tiny->new->get("http://127.0.0.1:$self->{control_port}/stats");
	die "stats: $r->{status}" unless $r->{success};
	return decode_json($r->{content});
}

# Plain JSON text of a DynamoDB AttributeValue (numbers kept as written).
sub av_to_json
{
	my ($av) = @_;
	my ($type) = keys %$av;
	my $v = $av->{$type};
	return $json->encode($v) if $type eq 'S';
	return $v if $type eq 'N';
	return $v ? 'true' : 'false' if $type eq 'BOOL';
	return 'null' if $type eq 'NULL';
	return '{' . join(',', map { $json->encode($_) . ':' . av_to_json($v->{$_}) } sort keys %$v) . '}'
	  if $type eq 'M';
	return '[' . join(',', map { av_to_json($_) } @$v) . ']' if $type eq 'L';
	die "unexpected AttributeValue type $type";
}

# Create, configure and start a node that syncs to this harness.
sub pg_node
{
	my ($self, $name, $extra) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	# Installed below IDEM_DESTDIR (scripts/test.sh): load idem from there,
	# preloaded library and extension alike.
	if ($ENV{IDEM_DESTDIR})
	{
		my $pkglibdir = `pg_config --pkglibdir`;
		chomp $pkglibdir;
		$node->append_conf('postgresql.conf', qq{
extension_destdir = '$ENV{IDEM_DESTDIR}'
dynamic_library_path = '$ENV{IDEM_DESTDIR}$pkglibdir:\$libdir'
});
	}
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'idem'
idem.dynamodb_table = '$TABLE'
idem.dynamodb_endpoint = '@{[ $self->endpoint ]}'
idem.dynamodb_region = '$REGION'
idem.dynamodb_retry_max_delay = '500ms'
idem.dynamodb_request_timeout = '3s'
log_min_messages = debug1
} . ($extra // ''));
	$node->start;
	$node->safe_psql('postgres', q{
CREATE EXTENSION idem;
CREATE FUNCTION public.echo(j jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT j';
});
	return $node;
}

# Wait until the outbox has nothing pending; true on success.
sub wait_delivered
{
	my ($node, $timeout) = @_;
	local $PostgreSQL::Test::Utils::timeout_default = $timeout // 120;
	return $node->poll_query_until('postgres',
		q{SELECT pending = 0 AND in_flight = 0 FROM idem.sync_status});
}

# Check that items and committed outcomes match one to one.
sub check_exactly_once
{
	my ($self, $node, $what) = @_;
	my $items = $self->scan;
	my %seen;
	$seen{ $_->{id}{S} }++ for @$items;
	my @dups = grep { $seen{$_} > 1 } keys %seen;
	my $expected = $node->safe_psql('postgres', q{
SELECT string_agg(idem.sync_item_id(o.key_prefix, o.key), ',' ORDER BY o.id)
  FROM idem.sync_outbox o});
	my @expected = split /,/, $expected;
	my $nrecords = $node->safe_psql('postgres', 'SELECT count(*) FROM idem.records');
	my @missing = grep { !$seen{$_} } @expected;
	is(scalar(@$items), $nrecords, "$what: as many items as committed outcomes");
	is(scalar(@dups), 0, "$what: no duplicate items");
	is(scalar(@missing), 0, "$what: every queued outcome has its item");
	is($node->safe_psql('postgres',
		q{SELECT pending || '/' || failed || '/' || conflicts FROM idem.sync_status}),
		'0/0/0', "$what: nothing pending, failed or in conflict");
}

END
{
	# Keep the test's exit status: waitpid sets $?.
	local $?;
	for my $pid (@children)
	{
		kill 'KILL', $pid;
		waitpid($pid, 0);
	}
}

1;
