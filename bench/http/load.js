// load.js: the load generator of bench/http/run, a closed loop of CLIENTS
// concurrent clients, each sending its next request when its last one is
// answered, over keep-alive connections (one http.Agent, one socket per
// client), for SECONDS:
//
//   node load.js URL CLIENTS SECONDS first|replay TAG
//
// first   every request carries a new Idempotency-Key (TAG-client-n)
// replay  64 keys are sent once each first (not timed), then the timed loop
//         sends them again and again; every answer must be 201 with the body
//         of the key's first answer (and, from idem, Idempotent-Replayed)
//
// Every request is POST /orders with {"amount": 100}; anything but 201 is a
// failure.  GET /stats before and after tells how often the route's own body
// ran: once per first request, never for a replay (but in the variant none,
// which has no idempotency and runs every request).  Prints one JSON line:
// requests, failures, rps, p50_ms, p99_ms, runs (route executions in the
// timed loop), expected_runs and the first few problems.
import http from 'node:http';

const [url, clientsArg, secondsArg, mode, tag] = process.argv.slice(2);
const clients = Number(clientsArg);
const seconds = Number(secondsArg);
if (!url || !(clients > 0) || !(seconds > 0) || !['first', 'replay'].includes(mode) || !tag) {
  console.error('usage: node load.js URL CLIENTS SECONDS first|replay TAG');
  process.exit(2);
}
const target = new URL(url);
const agent = new http.Agent({ keepAlive: true, maxSockets: clients });
const payload = Buffer.from(JSON.stringify({ amount: 100 }));

// One request; resolves to { status, headers, body } or rejects.
function send(method, path, key) {
  return new Promise((resolve, reject) => {
    const headers = method === 'POST'
      ? { 'Content-Type': 'application/json', 'Content-Length': payload.length, 'Idempotency-Key': `"${key}"` }
      : {};
    const req = http.request({ host: target.hostname, port: target.port, method, path, agent, headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(method === 'POST' ? payload : undefined);
  });
}

const stats = async () => JSON.parse((await send('GET', '/stats')).body);

const problems = [];
let failures = 0;
const fail = (what) => {
  failures += 1;
  if (problems.length < 5) problems.push(what);
};

const { variant } = await stats();
const replays = mode === 'replay' && variant !== 'none';
const keys = [];
const firstBodies = new Map();
if (mode === 'replay') {
  for (let i = 0; i < 64; i += 1) {
    const key = `${tag}-r${i}`;
    const answer = await send('POST', '/orders', key);
    if (answer.status !== 201) fail(`priming ${key}: ${answer.status} ${answer.body}`);
    keys.push(key);
    firstBodies.set(key, answer.body);
  }
  // express-idempotency records the response after sending it, without
  // waiting: give it time before the keys are replayed.
  await new Promise((resolve) => setTimeout(resolve, 200));
}

const runsBefore = (await stats()).runs;
const latencies = [];
const started = process.hrtime.bigint();
const deadline = started + BigInt(Math.round(seconds * 1e9));

async function client(c) {
  for (let n = 0; process.hrtime.bigint() < deadline; n += 1) {
    const key = mode === 'first' ? `${tag}-${c}-${n}` : keys[(c + n * clients) % keys.length];
    const t0 = process.hrtime.bigint();
    try {
      const answer = await send('POST', '/orders', key);
      latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (answer.status !== 201) {
        fail(`${key}: ${answer.status} ${answer.body.slice(0, 200)}`);
      } else if (replays && answer.body !== firstBodies.get(key)) {
        fail(`${key}: replayed ${answer.body}, first answer was ${firstBodies.get(key)}`);
      } else if (replays && variant.startsWith('idem') && answer.headers['idempotent-replayed'] !== 'true') {
        fail(`${key}: no Idempotent-Replayed: true`);
      }
    } catch (err) {
      latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
      fail(`${key}: ${err.message}`);
    }
  }
}
await Promise.all(Array.from({ length: clients }, (_, c) => client(c)));
const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
const runs = (await stats()).runs - runsBefore;
agent.destroy();

latencies.sort((a, b) => a - b);
const pct = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.ceil((p / 100) * latencies.length) - 1)] : NaN);
const expectedRuns = replays ? 0 : latencies.length;
if (runs !== expectedRuns) fail(`the route ran ${runs} times for ${latencies.length} ${mode} requests (expected ${expectedRuns})`);
console.log(JSON.stringify({
  variant, mode, clients, requests: latencies.length, failures,
  rps: Number((latencies.length / elapsed).toFixed(1)),
  p50_ms: Number(pct(50).toFixed(3)), p99_ms: Number(pct(99).toFixed(3)),
  runs, expected_runs: expectedRuns, problems,
}));
process.exit(failures ? 1 : 0);
