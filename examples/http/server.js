// server.js: an HTTP service whose POST /charges is safe to retry.  The
// client sends an Idempotency-Key header; idem (idem.claim, checkpoint,
// complete) makes sure each key charges the customer once and every retry
// gets the first response back, with "Idempotent-Replayed: true", even when
// this process is killed halfway through a request.
//
//   node server.js [PORT]      (listens on 127.0.0.1; PORT also from $PORT)
//
// PostgreSQL through the standard PG* variables (PGHOST, PGPORT, PGUSER,
// PGDATABASE, ...); the database needs CREATE EXTENSION idem.  Settings:
//   PROVIDER_URL         the payment provider, default http://127.0.0.1:8081
//   LEASE_MS             how long a claim holds a key without a heartbeat (3000)
//   WAIT_TIMEOUT_MS      how long a retry waits for a request in flight before
//                        409 (2000)
//   POOL_SIZE            PostgreSQL connections (10)
//   PROVIDER_TIMEOUT_MS  give up on the provider after this long: 502 (10000)
//   TEST_HOOKS=1         honour the request headers X-Test-Pause-After-Charge,
//                        X-Test-Pause-After-Checkpoint and
//                        X-Test-Pause-Before-Commit (milliseconds): the request
//                        stops there, prints "pause <point> key=<key>" and has
//                        no heartbeat, so a test can kill -9 the service in
//                        that window or let the lease lapse
//
// A request, with once() from clients/node (@idem/node):
//   1. once() claims the key with the request body.  A recorded key: send
//      the recorded response.  A key in flight: once() retries outside the
//      pool for up to WAIT_TIMEOUT_MS, then 409.  Otherwise this request
//      holds the key for LEASE_MS, extended by once()'s heartbeat.
//   2. unless an earlier holder that died left the checkpoint 'charged',
//      charge through the provider, passing the same key as the provider's
//      own Idempotency-Key (so a charge made before a crash is found, not
//      repeated); then checkpoint 'charged' with the charge (committed at
//      once: it must survive our crash).
//   3. insert the order through step.client; once() records the response with
//      complete in that transaction, so that both are recorded or neither is.
//   On an error, once() releases the key so that a retry runs at once (it
//   inherits the checkpoint, if any).
'use strict';

const http = require('node:http');
const { Pool } = require('pg');

const config = {
  port: Number(process.argv[2] || process.env.PORT || 8080),
  providerUrl: process.env.PROVIDER_URL || 'http://127.0.0.1:8081',
  leaseMs: Number(process.env.LEASE_MS || 3000),
  waitTimeoutMs: Number(process.env.WAIT_TIMEOUT_MS || 2000),
  poolSize: Number(process.env.POOL_SIZE || 10),
  providerTimeoutMs: Number(process.env.PROVIDER_TIMEOUT_MS || 10000),
  testHooks: process.env.TEST_HOOKS === '1',
};

const pool = new Pool({ max: config.poolSize });
pool.on('error', (err) => console.error(`idle connection lost: ${err.message}`));

class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// JSON with sorted keys: a fresh response and its replay (which comes back
// from jsonb, in jsonb's key order) are the same bytes.
function canonicalJson(value) {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

function send(res, status, body, headers = {}) {
  res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
  res.end(canonicalJson(body));
}

// The request as idem compares it: only the fields that make the charge, so
// that a retry with other white space or an extra field is the same request.
async function readCharge(req) {
  let text = '';
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 65536) throw new HttpError(413, 'too_large', 'the request body is too large');
  }
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new HttpError(400, 'invalid_json', 'the request body is not JSON');
  }
  if (body === null || typeof body !== 'object' || !Number.isSafeInteger(body.amount) || body.amount <= 0
      || typeof body.currency !== 'string' || !/^[a-z]{3}$/.test(body.currency)) {
    throw new HttpError(400, 'invalid_request',
      'expected {"amount": <positive integer, in minor units>, "currency": "<3 lower-case letters>"}');
  }
  return { amount: body.amount, currency: body.currency };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The test hooks: hold this request at a named point, and say so on stdout
// (synchronously, for a file), so that a test knows when to kill us.
function pauses(req, key) {
  return async (point, step) => {
    const ms = config.testHooks ? Number(req.headers[`x-test-pause-${point}`] || 0) : 0;
    if (ms > 0) {
      step.stopHeartbeat();
      console.log(`pause ${point} key=${key} ms=${ms}`);
      await sleep(ms);
    }
  };
}

// POST a JSON body; resolves to { status, body } (node:http rather than fetch,
// which Node 18, Debian 12's, still calls experimental).
function postJson(url, headers, body, timeoutMs) {
  const text = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...headers },
      timeout: timeoutMs,
    }, (res) => {
      let answer = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { answer += chunk; });
      res.on('end', () => resolve({ status: res.statusCode, body: answer }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(text);
  });
}

// Charge through the provider with the client's key as the provider's own:
// this is what makes a repeated call (after a crash or a lost answer) find
// the first charge instead of making a second one.
async function chargeProvider(key, { amount, currency }) {
  let res;
  try {
    res = await postJson(`${config.providerUrl}/charges`, { 'Idempotency-Key': key },
      { amount, currency }, config.providerTimeoutMs);
  } catch (err) {
    throw new HttpError(502, 'provider_unreachable', `the payment provider did not answer: ${err.message}`);
  }
  let body = {};
  try { body = JSON.parse(res.body); } catch { /* reported below */ }
  if (res.status < 200 || res.status > 299 || typeof body.id !== 'string') {
    throw new HttpError(502, 'provider_failed', `the payment provider answered ${res.status}: ${body.error}`);
  }
  return body;
}

// Charge once per key with @idem/node's once(): it claims the key (without
// waiting on a pooled connection), heartbeats with idem.extend, releases the
// key on any error, and records the response with idem.complete in the
// transaction of step.client, which commits it with the order.
async function chargeOnce(key, request, pause) {
  return onceDetailed(pool, { key, request, lease: config.leaseMs, wait: config.waitTimeoutMs }, async (step) => {
    // Charged before a crash: reuse that charge instead of calling the provider again.
    let charge = step.recovery?.point === 'charged' ? step.recovery.data.charge : undefined;
    if (charge === undefined) {
      charge = await chargeProvider(key, request);
      await pause('after-charge', step);
      await step.checkpoint('charged', { charge });   // commits at once: it must survive our crash
      await pause('after-checkpoint', step);
    }
    // No UNIQUE on idempotency_key: one order per key is idem's job here,
    // and the TAP test checks it.
    const { rows: [order] } = await step.client.query(
      `INSERT INTO app.orders (idempotency_key, charge, amount, currency) VALUES ($1, $2, $3, $4)
       RETURNING 'ord_' || id AS id`,
      [key, charge.id, request.amount, request.currency]);
    await pause('before-commit', step);
    return {
      status: 201,
      body: { order: order.id, charge: charge.id, amount: request.amount, currency: request.currency },
    };
  });
}

async function postCharge(req, res) {
  const key = req.headers['idempotency-key'];
  if (key === undefined) {
    throw new HttpError(400, 'missing_idempotency_key', 'send an Idempotency-Key header, a new one per charge');
  }
  // Validate before claiming: a malformed request records nothing.
  const request = await readCharge(req);
  const { result: { status, body }, replayed } = await chargeOnce(key, request, pauses(req, key));
  send(res, status, body, replayed ? { 'Idempotent-Replayed': 'true' } : {});
  return `${status}${replayed ? ' replayed' : ''}`;
}

// An error response: idem's errors with their httpStatus (IK412 is 409: a
// retry gets the winner's response), any other error 500.
function fail(res, err) {
  let status = err.status ?? err.httpStatus;   // idem's typed errors carry their HTTP status
  let { code, message } = err;
  if (status === undefined) {
    console.error(err.stack);
    [status, code, message] = [500, 'internal_error', 'internal error'];
  }
  if (!res.headersSent) send(res, status, { error: { code, message } }, status === 409 ? { 'Retry-After': '1' } : {});
  return `${status} ${code}`;
}

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/charges') {
    postCharge(req, res).catch((err) => fail(res, err))
      .then((result) => console.log(`POST /charges key=${req.headers['idempotency-key']} -> ${result}`));
  } else if (req.method === 'GET' && req.url === '/healthz') {
    send(res, 200, { ok: true });
  } else {
    send(res, 404, { error: { code: 'not_found', message: 'POST /charges is all there is' } });
  }
});

let onceDetailed;

async function main() {
  ({ onceDetailed } = await import('../../clients/node/index.js'));   // ESM, from this CommonJS file
  await pool.query(`CREATE SCHEMA IF NOT EXISTS app;
    CREATE TABLE IF NOT EXISTS app.orders (
      id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      idempotency_key text NOT NULL,
      charge text NOT NULL,
      amount bigint NOT NULL,
      currency text NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now())`);
  server.listen(config.port, '127.0.0.1', () => {
    console.log(`charges service listening on http://127.0.0.1:${server.address().port}`);
  });
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close(() => pool.end().then(() => process.exit(0)));
    server.closeIdleConnections();   // keep-alive clients would hold close() open
  });
}
main().catch((err) => {
  console.error(`cannot start: ${err.message}`);
  process.exit(1);
});
