#!/bin/bash
# test.sh: run the Python client's pytest suite against throwaway servers.
#
# Installs the Debian packages it needs, builds idem into a scratch folder,
# starts a cluster that loads it, pgbouncer in transaction pooling in front of
# it, and a second cluster with idem preloaded in arbiter mode whose DynamoDB
# endpoint is a closed port (DynamoDB down), then runs pytest against them
# (pytest starts uvicorn servers on 127.0.0.1 itself).  Stops everything and
# exits with pytest's status.  Run from anywhere, as root or as any user that
# can run PostgreSQL.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
PY=/usr/bin/python3

packages=(python3-psycopg python3-psycopg-pool python3-fastapi python3-uvicorn python3-pytest python3-httpx pgbouncer)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || { echo "test.sh: missing packages ${missing[*]}; run as root to install them" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

# shellcheck source=../../scripts/cluster.sh
source "$root/scripts/cluster.sh"
scratch=$(mktemp -d /tmp/idem-python.XXXXXX)
cleanup() {
    bouncer_stop "$scratch/bouncer"
    cluster_stop "$scratch/arbiter" 2>/dev/null || true
    cluster_stop "$scratch/main" 2>/dev/null || true
    rm -rf "$scratch"
}
trap cleanup EXIT

stage_install "$root" "$scratch" >"$scratch/build.log" 2>&1 || { cat "$scratch/build.log"; exit 1; }
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$scratch"

# The arbiter cluster: DynamoDB "down" is an endpoint at a port nobody listens on.
closed_port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cluster_start "$scratch/arbiter" "$(idem_conf --preload)" \
    "idem.arbiter = 'dynamodb'" "idem.dynamodb_table = 'idem'" \
    "idem.dynamodb_endpoint = 'http://127.0.0.1:$closed_port'" "idem.dynamodb_region = 'us-east-1'" \
    "idem.dynamodb_access_key_id = 'AKIDEXAMPLE'" "idem.dynamodb_secret_access_key = 'secret'" \
    "idem.dynamodb_request_timeout = '2s'"
as_pg psql -X -q -d postgres -c 'CREATE EXTENSION idem'
export IDEM_TEST_ARBITER_DSN="host=$PGHOST port=$PGPORT dbname=postgres user=postgres"

cluster_start "$scratch/main" "$(idem_conf)" "max_connections = 100"
as_pg psql -X -q -d postgres -c 'CREATE EXTENSION idem'
export IDEM_TEST_DSN="host=$PGHOST port=$PGPORT dbname=postgres user=postgres"

# pgbouncer in transaction pooling, on a unix socket of its own.
bouncer_start "$scratch/bouncer" 4
export IDEM_TEST_BOUNCER_DSN="host=$scratch/bouncer port=$BOUNCER_PORT dbname=postgres user=postgres"

cd "$here"
status=0
PYTHONPATH="$here" PYTHONDONTWRITEBYTECODE=1 $PY -m pytest -p no:cacheprovider -q -rfEs tests "$@" || status=$?
exit $status
