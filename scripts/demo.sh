#!/usr/bin/env bash
# demo.sh: install idem and show it working on a throwaway local cluster.
#
# Installs the packages idem needs, builds and installs the extension into
# this machine's PostgreSQL 15, starts a scratch cluster listening only on a
# unix socket, and shows a retried call running once and a concurrent retry
# receiving the first call's outcome.  The cluster is removed at the end.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup.sh"
# shellcheck source=cluster.sh
source "$root/scripts/cluster.sh"

echo "== build and install idem"
make -C "$root" -s
make -C "$root" -s install

scratch=$(mktemp -d /tmp/idem-demo.XXXXXX)
chmod 755 "$scratch"
trap 'cluster_stop "$scratch/cluster"; rm -rf "$scratch"' EXIT
cluster_start "$scratch/cluster"
export PGDATABASE=postgres

psql_demo() { as_pg psql -X -q -v ON_ERROR_STOP=1 "$@"; }

echo "== a shop whose place_order must not run twice for one order"
psql_demo <<'SQL'
CREATE EXTENSION idem;
CREATE SCHEMA shop;
CREATE TABLE shop.charges (id serial PRIMARY KEY, sku int, charged_at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION shop.place_order(o jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    charge int;
BEGIN
    INSERT INTO shop.charges (sku) VALUES ((o ->> 'sku')::int) RETURNING id INTO charge;
    PERFORM pg_sleep(coalesce((o ->> 'slow')::float8, 0));
    RETURN jsonb_build_object('charge', charge, 'sku', o -> 'sku');
END $$;
SQL

echo
echo "== the first call runs place_order; the retry replays its outcome"
psql_demo <<'SQL'
\echo first call:
SELECT idem.idempotent_call('order-7f3a', 'shop.place_order(jsonb)', '{"sku": 1}'::jsonb) AS outcome,
       idem.last_call_replayed() AS replayed;
\echo retry (same key, same request):
SELECT idem.idempotent_call('order-7f3a', 'shop.place_order(jsonb)', '{"sku": 1}'::jsonb) AS outcome,
       idem.last_call_replayed() AS replayed;
\echo charges made:
SELECT count(*) AS charges FROM shop.charges;
\echo the same key with another request is refused:
\set VERBOSITY verbose
\set ON_ERROR_STOP 0
SELECT idem.idempotent_call('order-7f3a', 'shop.place_order(jsonb)', '{"sku": 2}'::jsonb);
SQL

echo
echo "== two sessions race on one key: one runs, the other waits and gets its outcome"
as_pg psql -X -q -c "SET application_name = 'first'" \
    -c "SELECT 'session A got' AS who, idem.idempotent_call('order-9b1c', 'shop.place_order(jsonb)', '{\"sku\": 3, \"slow\": 2}'::jsonb) AS outcome, idem.last_call_replayed() AS replayed" &
first=$!
# start the second call once the first is inside place_order
until as_pg psql -X -qAtc "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'first' AND wait_event = 'PgSleep'" | grep -q 1; do sleep 0.1; done
as_pg psql -X -q -c "SELECT 'session B got' AS who, idem.idempotent_call('order-9b1c', 'shop.place_order(jsonb)', '{\"sku\": 3, \"slow\": 2}'::jsonb) AS outcome, idem.last_call_replayed() AS replayed"
wait "$first"
psql_demo -c "SELECT sku, count(*) AS charges FROM shop.charges GROUP BY sku ORDER BY sku" \
          -c "SELECT key, status, outcome FROM idem.my_records ORDER BY created_at"
echo "Demo finished: each order was charged once."
