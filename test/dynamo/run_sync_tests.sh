#!/usr/bin/env bash
# run_sync_tests.sh: build idem and run the DynamoDB sync TAP tests.
#
#   test/dynamo/run_sync_tests.sh [t/1xx_sync_....pl ...]
#
# Installs the node harness (install.sh), builds idem, installs it into a
# private copy of the PostgreSQL installation under $SYNC_PREFIX (default
# /tmp/idem-sync-pg) so that other checkouts installing idem at the same
# time cannot change the binaries under test, and runs prove as the
# postgres user.  Set SYNC_PREFIX=/ to test the system installation instead.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
prefix=${SYNC_PREFIX:-/tmp/idem-sync-pg}
pgbin=$(pg_config --bindir)
pgxs=$(dirname "$(pg_config --pgxs)")/../..

bash "$root/test/dynamo/install.sh" >/dev/null
make -C "$root" -s
if [ "$prefix" != / ]; then
	if [ ! -x "$prefix$pgbin/postgres" ]; then
		mkdir -p "$prefix$(dirname "$pgbin")/.." "$prefix$(pg_config --sharedir)/.."
		cp -a "$(dirname "$pgbin")" "$prefix$(dirname "$(dirname "$pgbin")")/"
		cp -a "$(pg_config --sharedir)" "$prefix$(dirname "$(pg_config --sharedir)")/"
	fi
	make -C "$root" -s install DESTDIR="$prefix"
	pgbin="$prefix$pgbin"
else
	make -C "$root" -s install
fi

# The postgres user writes tmp_check/ into the tree.
if [ "$(id -u)" -eq 0 ]; then
	chgrp postgres "$root" && chmod g+w "$root"
	rm -rf "$root/tmp_check"
fi
cd "$root"
tests=("$@")
[ ${#tests[@]} -eq 0 ] && tests=(t/1*_sync_*.pl)
run=(env PATH="$pgbin:$PATH" TESTDIR="$root" PG_REGRESS="$pgxs/src/test/regress/pg_regress"
	prove ${PROVE_FLAGS:-} -I "$pgxs/src/test/perl" -I "$root" "${tests[@]}")
if [ "$(id -u)" -eq 0 ]; then
	runuser -u postgres -- "${run[@]}"
else
	"${run[@]}"
fi
