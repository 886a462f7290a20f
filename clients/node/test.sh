#!/usr/bin/env bash
# test.sh: the Node library's tests, in one command (as root on Debian 12, or
# as a user who can run PostgreSQL).
#
#   bash clients/node/test.sh [node --test arguments...]
#
# Installs what it needs (node, npm and pgbouncer from apt when missing; the
# npm packages at package-lock.json's versions with npm ci), builds idem into
# a scratch folder, starts a throwaway cluster with CREATE EXTENSION idem,
# pgbouncer in transaction pooling in front of it, and a second cluster in
# arbiter mode (idem preloaded, idem.arbiter = 'dynamodb') whose DynamoDB
# endpoint is a closed port, and kinesalite (the Kinesis emulator, in memory,
# on 127.0.0.1) for the stream consumer's tests, runs node's test runner on
# test/, prints its summary, stops everything it started and exits with the
# runner's status.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v pgbouncer >/dev/null || missing+=(pgbouncer)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q "${missing[@]}" >/dev/null
fi
(cd "$here" && { [ -f node_modules/.package-lock.json ] && cmp -s package-lock.json node_modules/.installed-lock; } \
    || { npm ci --no-audit --no-fund --loglevel=error >/dev/null && cp package-lock.json node_modules/.installed-lock; })

# shellcheck source-path=SCRIPTDIR source=../../scripts/cluster.sh
source "$root/scripts/cluster.sh"
scratch=$(mktemp -d /tmp/idem-node.XXXXXX)
chmod 755 "$scratch"
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    kinesalite_stop "$scratch/kinesalite"
    bouncer_stop "$scratch/bouncer"
    cluster_stop "$scratch/arbiter"
    cluster_stop "$scratch/main"
    rm -rf "$scratch"
}
trap cleanup EXIT

stage_install "$root" "$scratch" >/dev/null
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$scratch"

# shellcheck disable=SC2119 # idem_conf without --preload
cluster_start "$scratch/main" "$(idem_conf)" "max_connections = 150"
as_pg psql -X -q -d postgres -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION idem'
export IDEM_TEST_HOST=$PGHOST IDEM_TEST_PORT=$PGPORT

# pgbouncer in transaction pooling, on a unix socket of its own.
bouncer_start "$scratch/bouncer" 5
export IDEM_TEST_BOUNCER_HOST=$scratch/bouncer IDEM_TEST_BOUNCER_PORT=$BOUNCER_PORT

# Arbiter mode with DynamoDB down: the endpoint is a port nobody listens on.
closed=$(free_port)
cluster_start "$scratch/arbiter" "$(idem_conf --preload)" \
    "idem.arbiter = 'dynamodb'" "idem.dynamodb_table = 'idem'" "idem.dynamodb_region = 'us-east-1'" \
    "idem.dynamodb_endpoint = 'http://127.0.0.1:$closed'" "idem.dynamodb_access_key_id = 'AKIDIDEMTEST0001'" \
    "idem.dynamodb_secret_access_key = 'idemTestSecret'" "idem.dynamodb_retry_max_delay = '100ms'" \
    "idem.dynamodb_request_timeout = '1s'"
as_pg psql -X -q -d postgres -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION idem'
export IDEM_TEST_ARBITER_HOST=$PGHOST IDEM_TEST_ARBITER_PORT=$PGPORT
export PGHOST=$IDEM_TEST_HOST PGPORT=$IDEM_TEST_PORT PGUSER=postgres PGDATABASE=postgres

kinesalite_start "$scratch/kinesalite"
export IDEM_TEST_KINESIS=http://127.0.0.1:$KINESALITE_PORT

cd "$here"
status=0
[ $# -gt 0 ] || set -- test/*.test.js
node --test --test-concurrency=1 "$@" || status=$?
exit $status
