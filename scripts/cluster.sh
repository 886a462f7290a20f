# cluster.sh: build idem into a scratch folder and start and stop throwaway
# PostgreSQL clusters that load it from there; meant to be sourced.
#
#   cluster_start [--initdb=ARGS] DIR [CONF...]
#                         initdb into DIR (ARGS: more initdb options) and
#                         start a server listening only on a unix socket in
#                         DIR, with each CONF appended to postgresql.conf;
#                         sets PGHOST, PGPORT, PGUSER and CLUSTER_PID (the
#                         postmaster's pid)
#   cluster_stop DIR      stop it (immediate) and remove DIR
#   stage_install ROOT DIR
#                         build idem in ROOT and install it below DIR/install
#                         (make install DESTDIR=...; exports IDEM_DESTDIR)
#   stage_build ROOT DIR  stage_install, then copy the tree to DIR/src,
#                         writable by the user that runs the tests
#   idem_conf [--preload] the postgresql.conf lines that load idem from
#                         IDEM_DESTDIR through Debian's extension_destdir
#                         (none without IDEM_DESTDIR: the server's own
#                         directories); --preload adds it to
#                         shared_preload_libraries, found through
#                         dynamic_library_path
#   as_pg CMD...          run CMD as the cluster's owner
#   free_port [BASE]      a TCP port number nobody listens on, from BASE
#                         (55432) on
#   worktree_ref ROOT     the commit to archive for ROOT's tracked files as
#                         they are on disk (HEAD when they are unchanged)
#   bouncer_start DIR POOL
#                         start pgbouncer in transaction pooling in front of
#                         the cluster of PGHOST/PGPORT (database postgres,
#                         user postgres trusted, at most POOL server
#                         sessions), on a unix socket in DIR; sets
#                         BOUNCER_PORT once it answers
#   bouncer_stop DIR      stop the pgbouncer started in DIR, if any
#   kinesalite_start DIR  start kinesalite (the Kinesis emulator, in memory;
#                         clients/node's test/kinesalite.js, its npm packages
#                         installed) on 127.0.0.1, a free port, its log and
#                         pid in DIR; sets KINESALITE_PORT once it listens
#   kinesalite_stop DIR   stop the kinesalite started in DIR, if any
#
# As root, the server and clients run as the postgres user (the server
# refuses root); as anyone else, as that user.  The PostgreSQL programs are
# those in PG_BIN (or PGBIN), by default pg_config's.

PG_BIN=${PG_BIN:-${PGBIN:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}}

# Run a command as the user that owns test clusters.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        local vars=() v
        for v in PGHOST PGPORT PGUSER PGDATABASE IDEM_DESTDIR; do
            [ -n "${!v:-}" ] && vars+=("$v=${!v}")
        done
        runuser -u postgres -- env PATH="$PG_BIN:$PATH" "${vars[@]}" "$@"
    else
        env PATH="$PG_BIN:$PATH" "$@"
    fi
}

# Find a TCP port number nobody listens on (for a cluster, used only to name
# the socket).  A port found is free only until its caller listens on it:
# callers that run at the same time pass BASEs apart, or find the same one.
# shellcheck disable=SC2120 # BASE is optional
free_port() {
    local base=${1:-55432} port
    for port in $(seq "$base" $((base + 200))); do
        if ! ss -Htln "sport = :$port" 2>/dev/null | grep -q . && [ ! -e "/tmp/.s.PGSQL.$port" ]; then
            echo "$port"; return
        fi
    done
    echo "$base"
}

cluster_start() {
    local initdb_args=
    case ${1:-} in --initdb=*) initdb_args=${1#--initdb=}; shift ;; esac
    local dir=$1; shift
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    # shellcheck disable=SC2086 # ARGS are words
    as_pg initdb -D "$dir/data" -U postgres -A trust --no-sync $initdb_args >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log"; return 1; }
    PGPORT=$(free_port)
    cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$dir'
port = $PGPORT
fsync = off
CONF
    for extra in "$@"; do echo "$extra" >>"$dir/data/postgresql.conf"; done
    as_pg pg_ctl -D "$dir/data" -l "$dir/server.log" -w start >/dev/null \
        || { cat "$dir/server.log"; return 1; }
    # shellcheck disable=SC2034 # for the caller (bench/run reads its children's CPU)
    CLUSTER_PID=$(head -n 1 "$dir/data/postmaster.pid")
    export PGHOST=$dir PGPORT PGUSER=postgres
}

cluster_stop() {
    local dir=$1
    [ -d "$dir/data" ] && as_pg pg_ctl -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}

# Each step returns on failure, so that a caller's "if stage_install" (where
# set -e does not apply) sees a failed build.
stage_install() {
    local root=$1 dir=$2
    make -C "$root" -s || return
    make -C "$root" -s install DESTDIR="$dir/install" || return
    export IDEM_DESTDIR="$dir/install"
}

stage_build() {
    local root=$1 dir=$2
    stage_install "$root" "$dir" || return
    cp -a "$root/." "$dir/src"
    rm -rf "$dir/src/results" "$dir/src/output_iso" "$dir/src/tmp_check"
    if [ "$(id -u)" -eq 0 ]; then chown -R postgres: "$dir"; fi
}

idem_conf() {
    if [ -n "${IDEM_DESTDIR:-}" ]; then
        echo "extension_destdir = '$IDEM_DESTDIR'"
        [ "${1:-}" = --preload ] &&
            echo "dynamic_library_path = '$IDEM_DESTDIR$("${PG_CONFIG:-pg_config}" --pkglibdir):\$libdir'"
    fi
    [ "${1:-}" = --preload ] && echo "shared_preload_libraries = 'idem'"
    return 0
}

# git stash create makes a commit of the tracked files when the tree has
# changes, and prints nothing when it has none.  A file rewritten with the
# same content (npm ci does that to package-lock.json) makes git 2.39's stash
# create exit 1 silently unless the index is refreshed first; should it fail
# all the same, the committed tree (HEAD) is archived.
worktree_ref() {
    local root=$1 ref
    git -C "$root" update-index -q --refresh >/dev/null 2>&1 || true
    ref=$(git -C "$root" stash create 2>/dev/null) || ref=
    echo "${ref:-HEAD}"
}

bouncer_start() {
    local dir=$1 pool=$2
    mkdir -p "$dir"
    BOUNCER_PORT=$(free_port)
    while [ "$BOUNCER_PORT" = "$PGPORT" ] || [ -e "$dir/.s.PGSQL.$BOUNCER_PORT" ]; do
        BOUNCER_PORT=$((BOUNCER_PORT + 1))
    done
    echo '"postgres" ""' >"$dir/users.txt"
    cat >"$dir/pgbouncer.ini" <<INI
[databases]
postgres = host=$PGHOST port=$PGPORT dbname=postgres

[pgbouncer]
listen_addr =
listen_port = $BOUNCER_PORT
unix_socket_dir = $dir
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
default_pool_size = $pool
max_client_conn = 200
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
    [ "$(id -u)" -eq 0 ] && chown -R postgres: "$dir"
    as_pg pgbouncer -d "$dir/pgbouncer.ini" >/dev/null 2>&1 || { cat "$dir/pgbouncer.log"; return 1; }
    local _
    for _ in $(seq 100); do
        as_pg psql -X -qAt -h "$dir" -p "$BOUNCER_PORT" -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    cat "$dir/pgbouncer.log"; return 1
}

# pgbouncer's own pid, from its pidfile: it daemonised itself.
bouncer_stop() {
    local dir=$1
    [ -s "$dir/pgbouncer.pid" ] && kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
}

# clients/node's test/kinesalite.js, not kinesalite's own cli (which listens
# on every interface); it prints "listening PORT" once it accepts.  Run as
# the caller: it needs no cluster.
kinesalite_start() {
    local dir=$1 root _
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    mkdir -p "$dir"
    node "$root/clients/node/test/kinesalite.js" 0 >"$dir/kinesalite.log" 2>&1 &
    echo $! >"$dir/kinesalite.pid"
    KINESALITE_PORT=
    for _ in $(seq 200); do
        KINESALITE_PORT=$(sed -n 's/^listening \([0-9]*\)$/\1/p' "$dir/kinesalite.log")
        [ -n "$KINESALITE_PORT" ] && return 0
        kill -0 "$(cat "$dir/kinesalite.pid")" 2>/dev/null || break
        sleep 0.05
    done
    echo "kinesalite did not start"; cat "$dir/kinesalite.log"; return 1
}

# The pidfile goes too: DIR may be a results folder that is kept.
kinesalite_stop() {
    local dir=$1
    [ -s "$dir/kinesalite.pid" ] && kill "$(cat "$dir/kinesalite.pid")" 2>/dev/null || true
    rm -f "$dir/kinesalite.pid"
}
