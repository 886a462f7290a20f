#!/usr/bin/env bash
# run.sh: the HTTP example in one command.
#
#   bash examples/http/run.sh
#
# Installs what it needs (scripts/setup.sh, then node and the pg driver with
# install.sh), builds idem and installs it below a scratch folder, starts a
# throwaway cluster with CREATE EXTENSION idem, the fake payment provider
# (provider.js) and the charges service (server.js) on 127.0.0.1, and sends
# them requests with curl: a charge, its retry (replayed), two retries at the
# same moment, a retry after the service was killed between charging and
# recording, the same key with another body (422) and no key (400).  Then it
# prints the provider's counts: one charge per key.  Everything it started
# is stopped and removed at the end.  Works as root on Debian 12.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bash "$root/scripts/setup.sh"
sh "$here/install.sh" >/dev/null
command -v curl >/dev/null || { apt-get update -q >/dev/null; apt-get install -y -q curl >/dev/null; }
# shellcheck source-path=SCRIPTDIR source=../../scripts/cluster.sh
source "$root/scripts/cluster.sh"

scratch=$(mktemp -d /tmp/idem-http.XXXXXX)
provider_pid='' service_pid=''
cleanup() {
    # || true: under set -e a failed kill (already gone) would end the trap early
    [ -z "$service_pid" ] || kill "$service_pid" 2>/dev/null || true
    [ -z "$provider_pid" ] || kill "$provider_pid" 2>/dev/null || true
    cluster_stop "$scratch/cluster"
    rm -rf "$scratch"
}
trap cleanup EXIT

echo "== build idem and start a throwaway cluster"
stage_install "$root" "$scratch" >/dev/null
chmod 755 "$scratch"    # the server (user postgres) loads idem from $scratch/install
# shellcheck disable=SC2119 # idem_conf without --preload
cluster_start "$scratch/cluster" "$(idem_conf)"
export PGDATABASE=postgres
as_pg psql -X -q -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION idem'

provider_port=$(free_port)
service_port=$((provider_port + 1))
while ss -Htln "sport = :$service_port" | grep -q .; do service_port=$((service_port + 1)); done
provider=http://127.0.0.1:$provider_port
service=http://127.0.0.1:$service_port

wait_up() {
    for _ in $(seq 100); do curl -sf "$1" >/dev/null && return; sleep 0.1; done
    echo "nothing answers at $1" >&2; cat "$scratch"/*.log >&2; exit 1
}

start_service() {
    PORT=$service_port PROVIDER_URL=$provider LEASE_MS=2000 TEST_HOOKS=1 \
        node "$here/server.js" >>"$scratch/service.log" 2>&1 &
    service_pid=$!
    wait_up "$service/healthz"
}

echo "== start the payment provider ($provider) and the charges service ($service)"
node "$here/provider.js" --port "$provider_port" >"$scratch/provider.log" 2>&1 &
provider_pid=$!
wait_up "$provider/stats"
start_service

# post KEY BODY [CURL-ARGS...]: POST /charges (no Idempotency-Key header if
# KEY is empty) and print the status, Idempotent-Replayed and the body.
post() {
    local key=$1 body=$2 out
    shift 2
    out=$(mktemp "$scratch/response.XXXXXX")
    echo "  POST /charges ${key:+Idempotency-Key: $key }$body"
    if ! curl -s -o "$out.body" -D "$out.headers" -X POST "$service/charges" \
            -H 'Content-Type: application/json' ${key:+-H "Idempotency-Key: $key"} -d "$body" "$@"; then
        echo "    -> no response: the connection dropped"
        return
    fi
    local status replayed
    status=$(head -n 1 "$out.headers" | cut -d ' ' -f 2)
    replayed=$(grep -i '^Idempotent-Replayed:' "$out.headers" | tr -d '\r' || true)
    echo "    -> $status ${replayed:+[$replayed] }$(cat "$out.body")"
}

echo
echo "== a charge, and its retry: the retry gets the same response, replayed"
post order-1 '{"amount": 2500, "currency": "eur"}'
post order-1 '{"amount": 2500, "currency": "eur"}'

echo
echo "== two retries at the same moment while the provider is slow: one charges, the other waits for it"
curl -s -X POST "$provider/control" -d '{"key": "order-2", "delay_ms": 1000}' >/dev/null
post order-2 '{"amount": 990, "currency": "usd"}' >"$scratch/first.txt" &
first=$!
sleep 0.2
post order-2 '{"amount": 990, "currency": "usd"}' >"$scratch/second.txt"
wait "$first"
cat "$scratch/first.txt" "$scratch/second.txt"

echo
echo "== the service is killed (kill -9) after the provider charged, before idem recorded anything"
post order-3 '{"amount": 4200, "currency": "gbp"}' -H 'X-Test-Pause-After-Charge: 60000' >"$scratch/killed.txt" &
curl_pid=$!
for _ in $(seq 100); do grep -q 'pause after-charge key=order-3' "$scratch/service.log" && break; sleep 0.1; done
kill -9 "$service_pid"
wait "$service_pid" 2>/dev/null || true
wait "$curl_pid"
cat "$scratch/killed.txt"
echo "  the provider has charged it: $(curl -s "$provider/stats" | grep -o '"order-3":{[^}]*}')"
echo "  restart the service and retry: the claim waits out the dead request's 2 s lease, then takes the key over:"
start_service
for _ in $(seq 20); do
    post order-3 '{"amount": 4200, "currency": "gbp"}' | tee "$scratch/retry.txt"
    grep -q -- '-> 409' "$scratch/retry.txt" || break
    sleep 1
done
post order-3 '{"amount": 4200, "currency": "gbp"}'

echo
echo "== mistakes: the same key with another body, and no key"
post order-1 '{"amount": 9999, "currency": "eur"}'
post '' '{"amount": 2500, "currency": "eur"}'

echo
echo "== what the provider saw: one charge per key, however many requests"
# shellcheck disable=SC2016 # the ${...} are JavaScript's
curl -s "$provider/stats" | node -e '
    let text = "";
    process.stdin.on("data", (d) => { text += d; }).on("end", () => {
        const stats = JSON.parse(text);
        for (const [key, n] of Object.entries(stats.keys)) {
            console.log(`  ${key || "(no key)"}: ${n.charges} charge(s) from ${n.requests} request(s)`);
        }
        console.log(`  ${stats.charges} charges in all`);
    });'
echo "== the service's orders: one per key, committed together with idem's record"
as_pg psql -X -q -c 'SELECT idempotency_key, charge, amount, currency FROM app.orders ORDER BY id'
echo "Example finished: every key was charged once, and every retry got the first response."
