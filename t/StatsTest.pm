# Copyright (c) 2026, the idem developers

# StatsTest: what the tests of idem.stats share.
#
# step() runs an action and checks that exactly the counters it names moved
# in idem.stats, by the amounts given, and that every other counter of every
# row stayed: a counter must move by the event it names and by nothing else.
# A row is named "api fn role", as "idempotent_call public.f(jsonb) alice" or
# "lease - alice"; an amount is a number or [min, max].
package StatsTest;

use strict;
use warnings;
use Exporter 'import';
use Test::More;

our @EXPORT = qw(step snapshot);

our @COUNTS = qw(calls executions replays replays_after_wait waits timeouts
  mismatches stale_tokens errors takeovers resumptions releases
  dynamodb_claims dynamodb_replays dynamodb_failures dynamodb_requests);

my $watched;

# Watch the view of this node in the steps that follow.
sub watch
{
	($watched) = @_;
}

# The whole view of a node as { row => { column => value } }.
sub snapshot
{
	my ($node) = @_;
	my $rows = ($node // $watched)->safe_psql('postgres', q{
		SELECT api || ' ' || coalesce(fn::text, '-') || ' ' || pg_get_userbyid(userid), }
		  . join(', ', @COUNTS) . q{ FROM idem.stats});
	my %s;
	for my $line (split /\n/, $rows)
	{
		my ($name, @v) = split /\|/, $line;
		@{ $s{$name} }{@COUNTS} = @v;
	}
	return \%s;
}

# Run $action, then check the counters against %want.
sub step
{
	my ($what, $action, %want) = @_;
	my $before = snapshot();
	$action->();
	my $after = snapshot();
	my @bad;
	my %rows = map { $_ => 1 } keys %$before, keys %$after;
	for my $row (sort keys %rows)
	{
		for my $col (@COUNTS)
		{
			my $d = ($after->{$row}{$col} // 0) - ($before->{$row}{$col} // 0);
			my $w = $want{$row}{$col} // 0;
			my ($lo, $hi) = ref $w ? @$w : ($w, $w);
			push @bad, "$row $col moved by $d, expected " . (ref $w ? "$lo to $hi" : $w)
			  if $d < $lo || $d > $hi;
		}
	}
	ok(!@bad, $what) or diag(join("\n", @bad));
}

1;
