#!/usr/bin/env bash
# test_deb.sh: build idem's Debian package from debian/ and use it.
#
#   scripts/test_deb.sh    as root on Debian 12
#
# Installs the packaging tools with apt, builds the source and binary
# packages with dpkg-buildpackage in a clean copy of the tree (git archive of
# the tracked files as they are on disk), runs lintian on them (an error
# fails the test; warnings are printed), installs postgresql-15-idem with
# apt, runs the package's autopkgtest against it (debian/tests/installcheck:
# the regression tests and isolation specs on a pg_virtualenv cluster),
# creates a cluster with pg_createcluster (a unix socket in a scratch
# folder, no TCP), and checks there: CREATE EXTENSION idem at the packaged
# version, a first call and its replay, and the packaged library loaded
# through shared_preload_libraries.  Then drops that cluster and purges the
# package, whatever happened: other clusters (Debian's main) are not
# touched.  Ends with "deb: N passed, N failed"; exits 77 (skipped) when
# not run as root or when the tree is not a git checkout (nothing to archive).
set -euo pipefail
# a step that stops the script under set -e says which one, so that no failure is silent
trap 'echo "test_deb.sh: line $LINENO: \"$BASH_COMMAND\" failed (status $?)" >&2' ERR

root=$(cd "$(dirname "$0")/.." && pwd)
# psql, lintian and the cluster tools run as other users, who may not be
# allowed into the caller's working directory: they would warn into the
# outputs compared here
cd /
major=15
package=postgresql-$major-idem

if [ "$(id -u)" -ne 0 ]; then
    echo "test_deb.sh: skipped, needs root (apt-get install, pg_createcluster)"
    exit 77
fi
if ! git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
    echo "test_deb.sh: skipped, $root is not a git checkout"
    exit 77
fi
if dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    echo "test_deb.sh: $package is already installed; this test would remove it" >&2
    exit 1
fi

tools=(debhelper dpkg-dev fakeroot lintian postgresql-server-dev-all
       "postgresql-$major" libcurl4-openssl-dev libssl-dev)
missing=()
for p in "${tools[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# apt waits for the package database while another apt or dpkg holds it
apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -y -q "$@"; }
if [ ${#missing[@]} -gt 0 ]; then
    echo "test_deb.sh: installing ${missing[*]}"
    apt_get update >/dev/null
    apt_get install --no-install-recommends "${missing[@]}" >/dev/null
fi

# shellcheck source=cluster.sh
source "$root/scripts/cluster.sh"

scratch=$(mktemp -d /tmp/idem-deb.XXXXXX)
chmod 755 "$scratch"
cluster=idem_deb_$$
passed=0
failed=0

cleanup() {
    if pg_lsclusters -h "$major" "$cluster" >/dev/null 2>&1; then
        pg_dropcluster --stop "$major" "$cluster" || true
    fi
    # pg_dropcluster leaves the folder when it holds a file of ours
    rm -rf "/etc/postgresql/$major/$cluster"
    if dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok"; then
        apt_get purge "$package" >/dev/null || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT

check() {
    local what=$1 got=$2 want=$3
    if [ "$got" = "$want" ]; then
        echo "ok - $what"; passed=$((passed + 1))
    else
        echo "not ok - $what"; echo "#   got:  $got"; echo "#   want: $want"; failed=$((failed + 1))
    fi
}

# The tracked files as they are on disk.
git -C "$root" archive --prefix=idem/ "$(worktree_ref "$root")" | tar -x -C "$scratch"
version=$(dpkg-parsechangelog -l "$scratch/idem/debian/changelog" -S Version)
extversion=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$scratch/idem/idem.control")

echo "== dpkg-buildpackage ($version)"
if (cd "$scratch/idem" && nice dpkg-buildpackage -us -uc) >"$scratch/build.log" 2>&1; then
    echo "ok - dpkg-buildpackage builds the source and binary packages"; passed=$((passed + 1))
else
    tail -60 "$scratch/build.log"
    echo "not ok - dpkg-buildpackage"; echo "deb: $passed passed, $((failed + 1)) failed"; exit 1
fi
deb=$(ls "$scratch"/${package}_"$version"_*.deb)
check "it makes $package (besides its debug symbols) and nothing else" \
    "$(cd "$scratch" && ls ./*.deb | sed 's|^\./||; s/_.*//' | grep -v -- '-dbgsym$' | tr '\n' ' ')" "$package "

echo "== lintian"
lintian_rc=0
runuser -u nobody -- lintian --fail-on error "$scratch"/idem_"$version"_*.changes >"$scratch/lintian.log" 2>&1 || lintian_rc=$?
cat "$scratch/lintian.log"
check "lintian reports no error" \
    "$lintian_rc $(grep -c '^E:' "$scratch/lintian.log" || true)" "0 0"

echo "== apt-get install $package"
apt_get install "$deb" >"$scratch/install.log" 2>&1 \
    || { cat "$scratch/install.log"; }
check "apt installs $package $version" \
    "$(dpkg-query -W -f='${Status} ${Version}' "$package" 2>/dev/null || true)" "install ok installed $version"
libdir=$(/usr/lib/postgresql/$major/bin/pg_config --pkglibdir)
sharedir=$(/usr/lib/postgresql/$major/bin/pg_config --sharedir)
check "the package holds the library, the control file and every version script" \
    "$(dpkg -L "$package" | grep -E "^$libdir/idem\.so$|^$sharedir/extension/idem" | sort | tr '\n' ' ')" \
    "$(cd "$scratch/idem" && { echo "$libdir/idem.so"; echo "$sharedir/extension/idem.control";
        for f in idem--*.sql; do echo "$sharedir/extension/$f"; done; } | sort | tr '\n' ' ')"

# debian/tests/installcheck, the package's autopkgtest: the regression
# tests and isolation specs on a cluster of pg_virtualenv's own (a private
# configuration folder, a port of our choosing on localhost)
echo "== debian/tests/installcheck"
if (cd "$scratch/idem" && PGPORT=$(free_port) debian/tests/installcheck) >"$scratch/autopkgtest.log" 2>&1; then
    echo "ok - debian/tests/installcheck passes against the installed package"; passed=$((passed + 1))
else
    tail -80 "$scratch/autopkgtest.log"; echo "not ok - debian/tests/installcheck"; failed=$((failed + 1))
fi
grep -E '^ *All [0-9]+ tests passed|^### ' "$scratch/autopkgtest.log" || true

echo "== pg_createcluster $major $cluster"
port=$(free_port)
mkdir "$scratch/socket"
chown postgres: "$scratch/socket"
pg_createcluster "$major" "$cluster" -d "$scratch/data" -s "$scratch/socket" -l "$scratch/server.log" -p "$port" \
    --start-conf=manual -o fsync=off >"$scratch/create.log" 2>&1 || cat "$scratch/create.log"
# (pg_createcluster -o quotes values and drops empty ones: conf.d takes it)
echo "listen_addresses = ''" >"/etc/postgresql/$major/$cluster/conf.d/no-tcp.conf"
pg_ctlcluster "$major" "$cluster" start || cat "$scratch/server.log"
sql() { runuser -u postgres -- psql -X -qAt -v ON_ERROR_STOP=1 -h "$scratch/socket" -p "$port" -d postgres "$@" 2>&1; }
check "the cluster listens on no TCP address" "$(sql -c 'SHOW listen_addresses')" ""
check "and loads extensions from the system's directories only" \
    "$(sql -c 'SHOW extension_destdir')" ""

check "CREATE EXTENSION idem installs version $extversion" \
    "$(sql -c 'CREATE EXTENSION idem' -c "SELECT extversion FROM pg_extension WHERE extname = 'idem'")" \
    "$extversion"
sql >/dev/null <<'SQL'
CREATE SEQUENCE greetings;
CREATE FUNCTION greet(name text) RETURNS text LANGUAGE sql
    AS $$ SELECT 'hello ' || name || ' #' || nextval('greetings') $$;
SQL
call="SELECT idem.idempotent_call('greet-1', 'greet(text)', 'ada')"
check "a first call runs the function" \
    "$(sql -c "$call" -c 'SELECT idem.last_call_replayed()')" "$(printf '"hello ada #1"\nf')"
check "a second call with the key replays the outcome" \
    "$(sql -c "$call" -c 'SELECT idem.last_call_replayed()')" "$(printf '"hello ada #1"\nt')"
check "and the function ran once" "$(sql -c "SELECT last_value FROM greetings")" "1"

# The packaged library also starts with the server (idem.stats counts only then).
pg_conftool "$major" "$cluster" set shared_preload_libraries idem
pg_ctlcluster "$major" "$cluster" restart || cat "$scratch/server.log"
check "preloaded, idem.stats counts a replay" \
    "$(sql -c "$call" -c "SELECT sum(replays) FROM idem.stats WHERE fn = 'greet(text)'::regprocedure")" \
    "$(printf '"hello ada #1"\n1')"

echo "== pg_dropcluster, apt-get purge"
pg_dropcluster --stop "$major" "$cluster"
rm -rf "/etc/postgresql/$major/$cluster"
apt_get purge "$package" >"$scratch/purge.log" 2>&1 || cat "$scratch/purge.log"
check "the cluster is gone, with its configuration" \
    "$(pg_lsclusters -h | awk -v c="$cluster" '$2 == c' | wc -l) $(ls -d "/etc/postgresql/$major/$cluster" 2>/dev/null | wc -l)" "0 0"
check "purging the package removes its files" \
    "$(ls "$libdir/idem.so" "$sharedir/extension/idem.control" 2>/dev/null | wc -l)" "0"

echo "deb: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
