#!/usr/bin/env bash
# run_sync_tests.sh: build idem and run the DynamoDB sync TAP tests.
#
#   test/dynamo/run_sync_tests.sh [t/1xx_sync_....pl ...]
#
# Installs the node harness (install.sh), builds idem and installs it below a
# scratch folder like scripts/test.sh (stage_build in scripts/cluster.sh:
# make install DESTDIR=..., which t/SyncTest.pm loads through
# extension_destdir and dynamic_library_path, so that other checkouts
# installing idem at the same time cannot change the library under test),
# and runs the sync TAP tests (t/1*_sync_*.pl, or the ones named) through
# PGXS's installcheck as the postgres user.  Set SYNC_PREFIX=/ to test the
# system installation instead (make install, as root).  The tests' logs are
# left in tmp_check/ of this tree.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=SCRIPTDIR/../../scripts/cluster.sh
source "$root/scripts/cluster.sh"

tests=("$@")
[ ${#tests[@]} -eq 0 ] && tests=("$root"/t/1*_sync_*.pl)
tests=("${tests[@]#"$root"/}")
for t in "${tests[@]}"; do
	[ -f "$root/$t" ] || { echo "run_sync_tests.sh: no test $t in $root" >&2; exit 2; }
done

bash "$root/test/dynamo/install.sh" >/dev/null
scratch=$(mktemp -d /tmp/idem-sync-tests.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
stage_build "$root" "$scratch"
if [ "${SYNC_PREFIX:-}" = / ]; then
	make -C "$root" -s install
	unset IDEM_DESTDIR
fi

status=0
as_pg make -C "$scratch/src" -s installcheck REGRESS= ISOLATION= \
	PROVE_TESTS="${tests[*]}" PROVE_FLAGS="${PROVE_FLAGS:-}" || status=$?
rm -rf "$root/tmp_check"
cp -a "$scratch/src/tmp_check" "$root/tmp_check" 2>/dev/null || true
exit "$status"
