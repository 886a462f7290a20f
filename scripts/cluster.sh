# cluster.sh: start and stop a throwaway PostgreSQL cluster; meant to be sourced.
#
#   cluster_start DIR     initdb into DIR and start a server listening only on
#                         a unix socket in DIR; sets PGHOST, PGPORT, PGUSER
#   cluster_stop DIR      stop it (immediate) and remove DIR
#   stage_build ROOT DIR  build idem in ROOT, install it below DIR/install
#                         (exports IDEM_DESTDIR) and copy the tree to DIR/src,
#                         writable by the user that runs the tests
#
# As root, the server and clients run as the postgres user (the server
# refuses root); as anyone else, as that user.

PG_BIN=${PG_BIN:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}

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

# Find a TCP port number nobody listens on (used only to name the socket).
free_port() {
    local port
    for port in $(seq 55432 55632); do
        if ! ss -Htln "sport = :$port" 2>/dev/null | grep -q . && [ ! -e "/tmp/.s.PGSQL.$port" ]; then
            echo "$port"; return
        fi
    done
    echo 55432
}

cluster_start() {
    local dir=$1; shift
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    as_pg initdb -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1 \
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
    export PGHOST=$dir PGPORT PGUSER=postgres
}

cluster_stop() {
    local dir=$1
    [ -d "$dir/data" ] && as_pg pg_ctl -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}

stage_build() {
    local root=$1 dir=$2
    make -C "$root" -s
    make -C "$root" -s install DESTDIR="$dir/install"
    export IDEM_DESTDIR="$dir/install"
    cp -a "$root/." "$dir/src"
    rm -rf "$dir/src/results" "$dir/src/output_iso" "$dir/src/tmp_check"
    if [ "$(id -u)" -eq 0 ]; then chown -R postgres: "$dir"; fi
}
