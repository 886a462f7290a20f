# Copyright (c) 2026, the idem developers

# The HTTP example (examples/http): a charges service that honours
# Idempotency-Key through idem.claim, checkpoint and complete, in front of a
# fake payment provider that counts charges and honours a key of its own.
# Concurrent retries, a key held by another session, clients that give up
# early, kill -9 of the service between the provider call and complete, a
# request that outlives its lease, and bad input: every key is charged
# exactly once according to the provider, has exactly one order, and every
# retry gets the same response body.  Skipped only when node is missing.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use Cwd qw(abs_path);
use HTTP::Tiny;
use JSON::PP;
use POSIX ();
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemTestUtil;

my $example = abs_path("$FindBin::RealBin/../examples/http");
plan skip_all => 'node is not installed (examples/http/install.sh installs it)'
  unless system('sh', '-c', 'command -v node >/dev/null') == 0;
# With node present, a missing driver is a broken setup, not a reason to skip.
unless (-f "$example/node_modules/pg/package.json")
{
	fail('examples/http/node_modules has the pg driver (run examples/http/install.sh)');
	done_testing();
	exit;
}

my $node = NewNode('http');
$node->append_conf('postgresql.conf', 'max_connections = 50');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION idem');

my $json = JSON::PP->new->canonical;
my $dir = PostgreSQL::Test::Utils::tempdir();
my $log = "$PostgreSQL::Test::Utils::tmp_check/http_example.log";
my ($provider_port, $service_port) =
  (PostgreSQL::Test::Cluster::get_free_port(), PostgreSQL::Test::Cluster::get_free_port());
my $provider = "http://127.0.0.1:$provider_port";
my $service = "http://127.0.0.1:$service_port";
my $lease_ms = 2000;
my %children;

# Start a node script of the example; its output goes to $log.
sub spawn
{
	my ($env, @cmd) = @_;
	my $pid = fork() // die "fork: $!";
	if ($pid == 0)
	{
		open(STDOUT, '>>', $log) or die;
		open(STDERR, '>&', \*STDOUT) or die;
		chdir $example or die;
		%ENV = (%ENV, %$env);
		exec('node', @cmd) or POSIX::_exit(127);
	}
	$children{$pid} = 1;
	return $pid;
}

sub wait_http
{
	my ($url) = @_;
	for (1 .. 200)
	{
		return if HTTP::Tiny->new(timeout => 1)->get($url)->{success};
		usleep(50_000);
	}
	BAIL_OUT("nothing answers at $url:\n" . slurp_file($log));
}

my $service_pid;
sub start_service
{
	$service_pid = spawn({
		PGHOST => $node->host, PGPORT => $node->port, PGDATABASE => 'postgres',
		PGUSER => $node->safe_psql('postgres', 'SELECT current_user'),
		PORT => $service_port, PROVIDER_URL => $provider,
		LEASE_MS => $lease_ms, WAIT_TIMEOUT_MS => 1500, POOL_SIZE => 20,
		TEST_HOOKS => 1 }, 'server.js');
	wait_http("$service/healthz");
}

sub kill_service
{
	kill 'KILL', $service_pid;
	waitpid($service_pid, 0);
	delete $children{$service_pid};
}

spawn({}, 'provider.js', '--port', $provider_port);
wait_http("$provider/stats");
start_service();

sub provider
{
	my ($path, $body) = @_;
	my $http = HTTP::Tiny->new(timeout => 10);
	my $r = $body ? $http->post("$provider$path", { content => $json->encode($body) }) : $http->get("$provider$path");
	die "provider $path: $r->{status}" unless $r->{success};
	return decode_json($r->{content});
}

# POST /charges from a child process, so that many run at once; returns a
# handle for collect.  Options: key (undef: no header), body, headers,
# timeout (the client gives up after this many seconds), at (start at this
# time), retry_409 (repeat on 409 up to this many times).
my $posts = 0;
sub post_async
{
	my (%o) = @_;
	my $file = "$dir/response" . ++$posts;
	my $pid = fork() // die "fork: $!";
	if ($pid == 0)
	{
		# _exit: a child must not run the END blocks that stop the cluster
		eval {
			my $wait = ($o{at} // 0) - time;
			usleep($wait * 1e6) if $wait > 0;
			my %headers = ('Content-Type' => 'application/json', %{ $o{headers} // {} });
			$headers{'Idempotency-Key'} = $o{key} if defined $o{key};
			my ($r, $start, $tries);
			do
			{
				usleep(300_000) if $tries++;
				$start = time;
				$r = HTTP::Tiny->new(timeout => $o{timeout} // 60)->post("$service/charges",
					{ headers => \%headers, content => $o{body} });
			} while ($r->{status} == 409 && $tries <= ($o{retry_409} // 0));
			my %res = (status => $r->{status}, body => $r->{content}, start => $start, end => time,
				replayed => $r->{headers}{'idempotent-replayed'} // '', tries => $tries);
			open(my $fh, '>', $file) or die;
			print $fh $json->encode(\%res);
			close $fh;
		};
		POSIX::_exit($@ ? 1 : 0);
	}
	return { pid => $pid, file => $file, key => $o{key} };
}

sub collect
{
	my ($h) = @_;
	waitpid($h->{pid}, 0);
	die "client for $h->{key} failed" if $? != 0;
	return { %{ decode_json(slurp_file($h->{file})) }, key => $h->{key} };
}

sub post
{
	return collect(post_async(@_));
}

sub charge_body
{
	my ($amount) = @_;
	return qq{{"amount": $amount, "currency": "eur"}};
}

# The code in an error response, or the status and body of a success.
sub error_code
{
	my ($r) = @_;
	my $body = eval { decode_json($r->{body}) } // {};
	return ref $body->{error} ? $body->{error}{code} : "$r->{status} $r->{body}";
}

sub orders_per_key
{
	my ($like) = @_;
	return { map { split /\|/ } split /\n/, $node->safe_psql('postgres',
		qq{SELECT idempotency_key, count(*) FROM app.orders WHERE idempotency_key LIKE '$like' GROUP BY 1}) };
}

# Per key: is every count in %$counts equal to the expected one?  Lists the
# keys that differ.
sub per_key
{
	my ($keys, $counts, $expected, $name) = @_;
	my @off = grep { ($counts->{$_} // 0) != $expected } @$keys;
	is(join(',', map { "$_=" . ($counts->{$_} // 0) } @off), '', $name);
}

sub provider_counts
{
	my ($what) = @_;
	my $keys = provider('/stats')->{keys};
	return { map { $_ => $keys->{$_}{$what} } keys %$keys };
}

#
# (a) Thirty keys, each sent seven times at the same moment while the
# provider takes 300 ms.  One request per key charges, the others wait for
# it and replay its response; a 409 (past idem.wait_timeout) may only come
# while the first is in flight.
#
provider('/control', { delay_ms => 300 });
my @keys = map { "conc-$_" } 1 .. 30;
my %body = map { $keys[$_] => charge_body(100 + $_) } 0 .. $#keys;
my $at = time + 1;
my @handles;
for my $try (1 .. 7)
{
	push @handles, post_async(key => $_, body => $body{$_}, at => $at) for @keys;
}
my %by_key;
push @{ $by_key{ $_->{key} } }, $_ for map { collect($_) } @handles;
provider('/control', { delay_ms => 0 });

my (%bodies, %ran, %replays, @late_409, @other, %first);
for my $key (@keys)
{
	for my $r (@{ $by_key{$key} })
	{
		if ($r->{status} == 201)
		{
			$bodies{$key}{ $r->{body} }++;
			$r->{replayed} eq 'true' ? $replays{$key}++ : $ran{$key}++;
			$first{$key} = $r if $r->{replayed} ne 'true';
		}
		elsif ($r->{status} != 409 || error_code($r) ne 'IK409')
		{
			push @other, "$key: $r->{status} $r->{body}";
		}
	}
	for my $r (grep { $_->{status} == 409 } @{ $by_key{$key} })
	{
		push @late_409, $key if !$first{$key} || $r->{start} > $first{$key}{end};
	}
}
is(join("\n", @other), '', 'concurrent retries: every response is 201 or 409 IK409');
per_key(\@keys, { map { $_ => scalar keys %{ $bodies{$_} } } @keys }, 1,
	'concurrent retries: one response body per key');
per_key(\@keys, \%ran, 1, 'concurrent retries: one request per key ran, without Idempotent-Replayed');
ok((grep { $replays{$_} } @keys) > 0, 'concurrent retries: the others replayed, with Idempotent-Replayed: true');
my $nreplays = 0;
$nreplays += $replays{$_} // 0 for @keys;
note(sprintf('concurrent retries: %d replays, %d 409s', $nreplays,
	scalar(grep { $_->{status} == 409 } map { @{ $by_key{$_} } } @keys)));
is(join(',', @late_409), '', 'concurrent retries: 409 only while the first request was in flight');

my @again = map { post(key => $_, body => $body{$_}) } @keys;
is(join(',', map { $_->{key} } grep { $_->{status} != 201 || $_->{replayed} ne 'true'
	  || $_->{body} ne $first{ $_->{key} }{body} } @again),
	'', 'concurrent retries: a retry after they finished replays the same body');
per_key(\@keys, provider_counts('charges'), 1, 'concurrent retries: the provider charged each key once');
per_key(\@keys, provider_counts('requests'), 1, 'concurrent retries: the provider was called once per key');
per_key(\@keys, orders_per_key('conc-%'), 1, 'concurrent retries: one order per key');

#
# A retry while the first request is still in flight, past idem.wait_timeout
# (1.5 s here): 409 IK409.  The provider takes 3 s, longer than the lease
# (2 s): the heartbeat keeps it.  Once the first has finished, a retry gets
# its body.
#
provider('/control', { key => 'busy', delay_ms => 3000 });
my $busy = post_async(key => 'busy', body => charge_body(7));
usleep(300_000);
my $waiter = post(key => 'busy', body => charge_body(7));
$busy = collect($busy);
is($waiter->{status} . ' ' . error_code($waiter), '409 IK409', 'a retry of a request in flight gets 409 IK409');
cmp_ok($waiter->{end}, '<', $busy->{end}, 'the 409 came while the first request was in flight');
is($busy->{status}, 201, 'the first request, longer than its lease, completed (the heartbeat kept it)');
my $after = post(key => 'busy', body => charge_body(7));
is("$after->{status} $after->{replayed} $after->{body}", "201 true $busy->{body}",
	'the retry after it finished replays the same body');

#
# A key claimed by someone else (here psql, with a 60 s lease) is in use:
# the service's claim waits idem.wait_timeout (1.5 s) and answers 409 IK409,
# and nothing is charged.  Once that holder releases it, a retry runs.
#
my $held = $node->safe_psql('postgres',
	q{SELECT token FROM idem.claim('held', '{"amount": 8, "currency": "eur"}', '60 s')});
my $inuse = post(key => 'held', body => charge_body(8));
is($inuse->{status} . ' ' . error_code($inuse), '409 IK409', 'a key claimed by another session: 409 IK409');
cmp_ok($inuse->{end} - $inuse->{start}, '>=', 1.4, 'the 409 came after idem.wait_timeout');
per_key(['held'], provider_counts('requests'), 0, 'a key in use reached no provider');
$node->safe_psql('postgres', "SELECT idem.release('held', $held)");
my $freed = post(key => 'held', body => charge_body(8));
is("$freed->{status} $freed->{replayed}", '201 ', 'after the other session released the key, a retry runs');

#
# (b) Clients that give up early: the provider takes 1.2 s, the client waits
# 0.4 s, gives up and retries at once.  The service carried on with the
# first request; the retry waits for it and gets its response.
#
my @slow = map { "timeout-$_" } 1 .. 3;
provider('/control', { key => $_, delay_ms => 1200 }) for @slow;
my @gaveup = map { post_async(key => $_, body => charge_body(55), timeout => 0.4) } @slow;
@gaveup = map { collect($_) } @gaveup;
is(join(',', map { $_->{status} } @gaveup), '599,599,599', 'client timeouts: the clients gave up (599)');
my @retried = map { post_async(key => $_, body => charge_body(55), retry_409 => 10) } @slow;
@retried = map { collect($_) } @retried;
is(join(',', map { "$_->{status} $_->{replayed}" } @retried), join(',', ('201 true') x 3),
	'client timeouts: the retries replayed the request they had given up on');
my @later = map { post(key => $_, body => charge_body(55)) } @slow;
is(join(',', map { $later[$_]{body} eq $retried[$_]{body} ? 'same' : $later[$_]{body} } 0 .. 2),
	'same,same,same', 'client timeouts: every later retry gets the same body');
per_key(\@slow, provider_counts('charges'), 1, 'client timeouts: the provider charged each key once');
per_key(\@slow, orders_per_key('timeout-%'), 1, 'client timeouts: one order per key');

#
# (c) kill -9 of the service inside each window between the provider call
# and commit: after the provider charged, before the checkpoint; after the
# checkpoint, before complete; after complete, before COMMIT.  Several keys
# in each window at once; then the service is restarted and clients retry
# (with 409 while the dead requests' leases are still live).
#
my %windows = (
	'after-charge' => [ map { "kill-charge-$_" } 1 .. 3 ],
	'after-checkpoint' => [ map { "kill-checkpoint-$_" } 1 .. 3 ],
	'before-commit' => [ map { "kill-commit-$_" } 1 .. 2 ]);
my @killed = map { @{ $windows{$_} } } sort keys %windows;
my %killbody = map { $killed[$_] => charge_body(300 + $_) } 0 .. $#killed;
my @victims;
for my $window (sort keys %windows)
{
	push @victims, post_async(key => $_, body => $killbody{$_},
		headers => { "X-Test-Pause-$window" => 60_000 }) for @{ $windows{$window} };
}
my %window_of = map { my $w = $_; map { $_ => $w } @{ $windows{$w} } } keys %windows;
my $paused = 0;
for (1 .. 200)
{
	my $out = slurp_file($log);
	$paused = grep { $out =~ /^pause $window_of{$_} key=\Q$_\E /m } @killed;
	last if $paused == @killed;
	usleep(50_000);
}
is($paused, scalar @killed, 'kills: every request is paused in its window');
per_key(\@killed, provider_counts('charges'), 1, 'kills: the provider charged each key before the kill');
kill_service();
is(join(',', map { collect($_)->{status} } @victims), join(',', (599) x @killed),
	'kills: the clients lost their connections');
is($node->safe_psql('postgres', q{SELECT count(*) FROM app.orders WHERE idempotency_key LIKE 'kill-%'}),
	'0', 'kills: no order was committed');

start_service();
my @recovered;
for my $key (@killed)
{
	push @recovered, post_async(key => $key, body => $killbody{$key}, retry_409 => 40) for 1 .. 3;
}
my (%rbodies, %rran, @rbad);
for my $r (map { collect($_) } @recovered)
{
	push @rbad, "$r->{key}: $r->{status} $r->{body}" if $r->{status} != 201;
	$rbodies{ $r->{key} }{ $r->{body} }++;
	$rran{ $r->{key} }++ if $r->{replayed} ne 'true';
}
is(join("\n", @rbad), '', 'kills: every retry after the restart got 201');
per_key(\@killed, { map { $_ => scalar keys %{ $rbodies{$_} } } @killed }, 1,
	'kills: one response body per key');
per_key(\@killed, \%rran, 1, 'kills: one retry per key finished the request, the others replayed it');
my %last = map { my $r = post(key => $_, body => $killbody{$_}); ($_ => $r) } @killed;
is(join(',', grep { $last{$_}{replayed} ne 'true' || !$rbodies{$_}{ $last{$_}{body} } } @killed), '',
	'kills: a later retry replays the same body');
per_key(\@killed, provider_counts('charges'), 1, 'kills: the provider charged each key once');
my $requests = provider_counts('requests');
per_key($windows{'after-charge'}, $requests, 2,
	'kills: killed before the checkpoint, the retry asked the provider again (with the same key)');
per_key([ @{ $windows{'after-checkpoint'} }, @{ $windows{'before-commit'} } ], $requests, 1,
	'kills: killed after the checkpoint, the retry used the recorded charge');
per_key(\@killed, orders_per_key('kill-%'), 1, 'kills: one order per key');

#
# Fencing: a request that stalls past its lease (no kill) after charging.
# A retry takes the key over and finishes it; the stalled request then fails
# with IK412 and changes nothing.
#
my $stalled = post_async(key => 'stall', body => charge_body(9),
	headers => { 'X-Test-Pause-After-Charge' => $lease_ms + 2000 });
usleep(300_000);
my $takeover = post(key => 'stall', body => charge_body(9), retry_409 => 20);
$stalled = collect($stalled);
is("$takeover->{status} $takeover->{replayed}", '201 ', 'fencing: a retry took over the lapsed lease and ran');
is($stalled->{status} . ' ' . error_code($stalled), '409 IK412', 'fencing: the stalled request got 409 IK412');
my $fenced = post(key => 'stall', body => charge_body(9));
is("$fenced->{replayed} $fenced->{body}", "true $takeover->{body}", 'fencing: retries replay the winner\'s body');
per_key(['stall'], provider_counts('charges'), 1, 'fencing: charged once');
per_key(['stall'], orders_per_key('stall'), 1, 'fencing: one order');

#
# (d) Bad input, and a provider failure.
#
my $ok = post(key => 'bad-1', body => charge_body(10));
is($ok->{status}, 201, 'bad input: a first request');
my $r = post(body => charge_body(10));
is("$r->{status} " . error_code($r), '400 missing_idempotency_key', 'bad input: no Idempotency-Key: 400');
$r = post(key => '', body => charge_body(10));
is("$r->{status} " . error_code($r), '400 IK400', 'bad input: an empty key: 400 IK400');
$r = post(key => 'k' x 300, body => charge_body(10));
is("$r->{status} " . error_code($r), '400 IK400', 'bad input: an overlong key: 400 IK400');
$r = post(key => 'bad-1', body => charge_body(11));
is("$r->{status} " . error_code($r), '422 IK422', 'bad input: the same key with another body: 422 IK422');
$r = post(key => 'bad-2', body => '{"amount": "ten"}');
is("$r->{status} " . error_code($r), '400 invalid_request', 'bad input: an invalid body: 400');
$r = post(key => 'bad-1', body => charge_body(10));
is("$r->{status} $r->{replayed} $r->{body}", "201 true $ok->{body}", 'bad input: the original still replays');

provider('/control', { key => 'flaky', fail => 1 });
$r = post(key => 'flaky', body => charge_body(12));
is("$r->{status} " . error_code($r), '502 provider_failed', 'provider failure: 502');
$r = post(key => 'flaky', body => charge_body(12));
is("$r->{status} $r->{replayed}", '201 ', 'provider failure: the key was released, a retry runs at once');
cmp_ok($r->{end} - $r->{start}, '<', 1, 'provider failure: the retry did not wait');
per_key([ 'bad-1', 'flaky' ], provider_counts('charges'), 1, 'bad input: one charge per key');
per_key([ 'bad-2', 'k' x 300 ], provider_counts('requests'), 0, 'bad input: refused requests reached no provider');

# Every order's key replays the response that names the order: no order
# without its recorded outcome (and no outcome without its order, by the
# counts above).
is($node->safe_psql('postgres', q{SELECT count(*) FROM app.orders o
	LEFT JOIN idem.my_records r ON r.key = o.idempotency_key
	WHERE r.status IS DISTINCT FROM 'completed' OR r.outcome #>> '{body,order}' IS DISTINCT FROM 'ord_' || o.id}),
	'0', 'every order\'s key has a completed record whose response names that order');
my $charges = provider('/stats');
is($charges->{charges}, $node->safe_psql('postgres', 'SELECT count(*) FROM app.orders'),
	'the provider made as many charges as there are orders');

# Stop the node processes (before the cluster, so that the service does not
# watch its connections being closed).
sub stop_children
{
	for my $pid (keys %children)
	{
		kill 'KILL', $pid;
		waitpid($pid, 0);
	}
	%children = ();
}

END
{
	local $?;
	stop_children();
}

stop_children();
$node->stop;
done_testing();
