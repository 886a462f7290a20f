#!/usr/bin/env bash
# test.sh: build idem and run its whole test suite on throwaway clusters.
#
#   scripts/test.sh            pg_regress, isolation specs and TAP tests, the
#                              client libraries' own runners (node's test
#                              runner, pytest), the benchmarks' smoke modes,
#                              and pg_regress and isolation specs on
#                              PostgreSQL 13, 17 and 18 (scripts/matrix.sh)
#
# Installs the packages it needs (scripts/setup.sh), builds the extension and
# installs it below a scratch folder (make install DESTDIR=..., loaded from
# there through Debian's extension_destdir, so the system's directories are
# not touched), copies the tree where the postgres user can write (the test
# tools write results/, output_iso/ and tmp_check/ into it), starts a
# throwaway cluster on a unix socket, and runs every suite even when an
# earlier one fails.  Ends with a line "N passed, N failed" and exits non-zero
# if anything failed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup.sh"
# node, dynalite and the SigV4-checking proxy of the DynamoDB sync tests
sh "$root/test/dynamo/install.sh"
# node and the pg driver of the HTTP example (t/030_http_example.pl)
sh "$root/examples/http/install.sh"
# shellcheck source=cluster.sh
source "$root/scripts/cluster.sh"

scratch=$(mktemp -d /tmp/idem-test.XXXXXX)
cleanup() { cluster_stop "$scratch/cluster"; rm -rf "$scratch"; }
trap cleanup EXIT

echo "== build and install"
make -C "$root" -s clean
stage_build "$root" "$scratch"

cluster_start "$scratch/cluster" "$(idem_conf)"

passed=0
failed=0
failures=()

# Run one suite through PGXS; count its tests from the runner's own lines.
run_suite() {
    local name=$1; shift
    local log="$scratch/$name.log"
    rm -f "$scratch/src/regression.diffs" "$scratch/src/output_iso/regression.diffs"
    echo "== $name"
    if as_pg make -C "$scratch/src" -s installcheck "$@" >"$log" 2>&1; then :; else failures+=("$name"); fi
    cat "$log"
    local ok bad
    case $name in
        tap)
            ok=$(grep -cE '^(\[[0-9:]+\] )?t/.*\.pl \.+ ok' "$log" || true)
            bad=$(grep -cE '^(\[[0-9:]+\] )?t/.*\.pl \.+ *$|^(\[[0-9:]+\] )?t/.*\.pl \.+ (Dubious|Failed)' "$log" || true)
            ;;
        *)
            ok=$(grep -cE '^(ok|test) .* \.\.\. ok|^ok +[0-9]+ +[-+] ' "$log" || true)
            bad=$(grep -cE 'FAILED|^not ok' "$log" || true)
            ;;
    esac
    passed=$((passed + ok))
    failed=$((failed + bad))
    for diffs in "$scratch/src/regression.diffs" "$scratch/src/output_iso/regression.diffs"; do
        if [ -s "$diffs" ]; then echo "-- $diffs:"; head -300 "$diffs"; fi
    done
    if [ "$name" = tap ] && [ -d "$scratch/src/tmp_check/log" ] && grep -qE 'Failed|Dubious' "$log"; then
        for f in "$scratch"/src/tmp_check/log/regress_log_*; do echo "-- $f:"; tail -60 "$f"; done
    fi
}

run_suite regress ISOLATION= TAP_TESTS=
run_suite isolation REGRESS= TAP_TESTS=
run_suite tap REGRESS= ISOLATION= PROVE_FLAGS=--timer

# The client libraries, each through its own runner (node's test runner,
# pytest) on clusters of its own; their summaries are counted here.
run_client() {
    local name=$1 script=$2
    local log="$scratch/client-$name.log"
    echo "== $name client"
    if bash "$script" >"$log" 2>&1; then :; else failures+=("$name-client"); fi
    cat "$log"
    local ok bad
    case $name in
        node)
            ok=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$log" | tail -1)
            bad=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$log" | tail -1)
            ;;
        python)
            # pytest -q closes with e.g. "1 failed, 28 passed, 2 errors in 45.9s"
            local summary
            summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|errors?)\b.* in [0-9.]+s' "$log" | tail -1 || true)
            ok=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+' || true)
            bad=$(( $(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '[0-9]+' || echo 0) +
                    $(grep -oE '[0-9]+ errors?' <<<"$summary" | grep -oE '[0-9]+' || echo 0) ))
            ;;
    esac
    passed=$((passed + ${ok:-0}))
    failed=$((failed + ${bad:-0}))
}

run_client node "$root/clients/node/test.sh"
run_client python "$root/clients/python/test.sh"

# The benchmark is not a test, but its smoke mode keeps it working: a few
# seconds of every variant and workload, failing if a pgbench run fails or
# idem runs a contended key more than once.
echo "== bench smoke"
if bash "$root/bench/run" --smoke >"$scratch/bench.log" 2>&1; then
    echo "bench smoke ... ok"; passed=$((passed + 1))
else
    cat "$scratch/bench.log"; echo "bench smoke ... FAILED"; failed=$((failed + 1)); failures+=(bench)
fi

# The same for the arbiter benchmark: a few seconds against dynalite, failing
# if a call fails, a first call runs twice or an outcome is not delivered.
echo "== bench arbiter smoke"
if bash "$root/bench/arbiter" --smoke >"$scratch/bench_arbiter.log" 2>&1; then
    echo "bench arbiter smoke ... ok"; passed=$((passed + 1))
else
    cat "$scratch/bench_arbiter.log"; echo "bench arbiter smoke ... FAILED"; failed=$((failed + 1)); failures+=(bench-arbiter)
fi

# And the HTTP benchmark: a few seconds of each variant (no idempotency, a
# Redis-backed Express middleware, idem's), failing if a request fails or a
# replay runs the route again.
echo "== bench http smoke"
if bash "$root/bench/http/run" --smoke >"$scratch/bench_http.log" 2>&1; then
    echo "bench http smoke ... ok"; passed=$((passed + 1))
else
    cat "$scratch/bench_http.log"; echo "bench http smoke ... FAILED"; failed=$((failed + 1)); failures+=(bench-http)
fi

# And the stream benchmark: 300 events through the Kinesis consumer of
# @idem/node/consumer and its at-least-once twin, failing if idem's effects
# are not one per event or the twin's not one per record.
echo "== bench stream smoke"
if bash "$root/bench/stream/run" --smoke >"$scratch/bench_stream.log" 2>&1; then
    echo "bench stream smoke ... ok"; passed=$((passed + 1))
else
    cat "$scratch/bench_stream.log"; echo "bench stream smoke ... FAILED"; failed=$((failed + 1)); failures+=(bench-stream)
fi

# The packaging: the Debian package (built from debian/ in a clean copy,
# lintian, installed with apt on a pg_createcluster cluster, then purged)
# and the PGXN archive (META.json, make dist, make installcheck of the
# unpacked archive).  Each script ends with "NAME: N passed, N failed", as
# scripts/matrix.sh does (run the same way below); exit status 77 means
# skipped (not root, or not a git checkout).
run_packaging() {
    local name=$1 script=$2 rc=0
    echo "== $name"
    bash "$script" >"$scratch/$name.log" 2>&1 || rc=$?
    cat "$scratch/$name.log"
    [ "$rc" -eq 77 ] && return 0
    local summary ok bad
    summary=$(grep -E "^$name: [0-9]+ passed, [0-9]+ failed$" "$scratch/$name.log" | tail -1 || true)
    ok=$(sed -n 's/^.*: \([0-9]*\) passed.*/\1/p' <<<"$summary")
    bad=$(sed -n 's/^.*, \([0-9]*\) failed$/\1/p' <<<"$summary")
    passed=$((passed + ${ok:-0}))
    failed=$((failed + ${bad:-0}))
    if [ "$rc" -ne 0 ]; then
        failures+=("$name")
        [ -z "$summary" ] && failed=$((failed + 1))
    fi
    return 0
}
run_packaging deb "$root/scripts/test_deb.sh"
run_packaging pgxn "$root/scripts/test_pgxn.sh"

# Other PostgreSQL majors (13, 17, 18): idem built against each one's headers;
# its regression suite, isolation specs, version scripts, and a preloaded
# server syncing to dynalite, on a server of that major (about 35 MB
# downloaded per major on the first run, then cached).  Each step prints a
# line "matrix 17 regress ... ok" or "... FAILED", and the whole ends with
# "matrix: N passed, N failed".
run_packaging matrix "$root/scripts/matrix.sh"

echo
if [ ${#failures[@]} -gt 0 ] && [ "$failed" -eq 0 ]; then failed=${#failures[@]}; fi
echo "idem: $passed passed, $failed failed"
[ ${#failures[@]} -eq 0 ] && [ "$failed" -eq 0 ]
