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
//                        409 (idem.wait_timeout; 2000)
//   POOL_SIZE            PostgreSQL connections (10)
//   PROVIDER_TIMEOUT_MS  give up on the provider after this long: 502 (10000)
//   TEST_HOOKS=1         honour the request headers X-Test-Pause-After-Charge,
//                        X-Test-Pause-After-Checkpoint and
//                        X-Test-Pause-Before-Commit (milliseconds): the request
//                        stops there, prints "pause <point> key=<key>" and has
//                        no heartbeat, so a test can kill -9 the service in
//                        that window or let the lease lapse
//
// One request, one pooled connection, from claim to commit:
//   1. claim the key with the request body (autocommit, so that retries see
//      the claim at once).  'replay': send the recorded response.  'run':
//      this request holds the key for LEASE_MS and has a fencing token.
//   2. unless an earlier holder that died left the checkpoint 'charged',
//      charge through the provider, passing the same key as the provider's
//      own Idempotency-Key (so a charge made before a crash is found, not
//      repeated), extending the lease meanwhile; then checkpoint 'charged'
//      with the charge (autocommit: it must survive our crash).
//   3. in one transaction: insert the order and complete the key with the
//      response, so that both are recorded or neither is.
//   On an error after the claim, release the key so that a retry runs at once
//   (it inherits the checkpoint, if any).
'use strict';

const http = require('node:http');
const { Pool, DatabaseError } = require('pg');

const config = {
  port: Number(process.argv[2] || process.env.PORT || 8080),
  providerUrl: process.env.PROVIDER_URL || 'http://127.0.0.1:8081',
  leaseMs: Number(process.env.LEASE_MS || 3000),
  waitTimeoutMs: Number(process.env.WAIT_TIMEOUT_MS || 2000),
  poolSize: Number(process.env.POOL_SIZE || 10),
  providerTimeoutMs: Number(process.env.PROVIDER_TIMEOUT_MS || 10000),
  testHooks: process.env.TEST_HOOKS === '1',
};
const lease = `${config.leaseMs} milliseconds`;

const pool = new Pool({
  max: config.poolSize,
  options: [process.env.PGOPTIONS, `-c idem.wait_timeout=${config.waitTimeoutMs}ms`].filter(Boolean).join(' '),
});
pool.on('error', (err) => console.error(`idle connection lost: ${err.message}`));

// idem's SQLSTATEs and the HTTP status each becomes; anything else is 500.
const STATUS_OF = {
  IK400: 400, // empty or overlong key
  IK409: 409, // another request with this key is still in flight
  IK412: 409, // this request lost the key (its lease lapsed and a retry took over)
  IK422: 422, // the key was used for a different request
};

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
  return async (point) => {
    const ms = config.testHooks ? Number(req.headers[`x-test-pause-${point}`] || 0) : 0;
    if (ms > 0) {
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

// Run work() while extending the lease every third of it, so that a slow
// provider does not let a retry take the key over meanwhile.
async function withHeartbeat(db, key, token, work) {
  const beat = setInterval(() => {
    db.query('SELECT idem.extend($1, $2, $3)', [key, token, lease])
      .catch((err) => console.error(`heartbeat for ${key}: ${err.message}`));  // checkpoint will fail too
  }, config.leaseMs / 3);
  try {
    return await work();
  } finally {
    clearInterval(beat);
  }
}

// Steps 2 and 3, for a claim in state 'run'.
async function run(db, key, request, claim, pause) {
  const { token } = claim;
  let charge;
  if (claim.recovery_point === 'charged') {
    charge = claim.recovery_data.charge;   // charged before a crash: do not call the provider again
  } else {
    charge = await withHeartbeat(db, key, token, () => chargeProvider(key, request));
    await pause('after-charge');
    await db.query("SELECT idem.checkpoint($1, $2, 'charged', $3)", [key, token, { charge }]);
    await pause('after-checkpoint');
  }

  await db.query('BEGIN');
  try {
    // No UNIQUE on idempotency_key: one order per key is idem's job here,
    // and the TAP test checks it.
    const { rows: [order] } = await db.query(
      `INSERT INTO app.orders (idempotency_key, charge, amount, currency) VALUES ($1, $2, $3, $4)
       RETURNING 'ord_' || id AS id`,
      [key, charge.id, request.amount, request.currency]);
    const response = {
      status: 201,
      body: { order: order.id, charge: charge.id, amount: request.amount, currency: request.currency },
    };
    await db.query('SELECT idem.complete($1, $2, $3)', [key, token, response]);
    await pause('before-commit');
    await db.query('COMMIT');
    return { ...response, replayed: false };
  } catch (err) {
    await db.query('ROLLBACK').catch(() => {});
    throw err;
  }
}

// Step 1, then 2 and 3; returns { status, body, replayed }.
async function chargeOnce(db, key, request, pause) {
  const { rows: [claim] } = await db.query(
    'SELECT state, token, outcome, recovery_point, recovery_data FROM idem.claim($1, $2, $3)',
    [key, request, lease]);
  if (claim.state === 'replay') return { ...claim.outcome, replayed: true };
  try {
    return await run(db, key, request, claim, pause);
  } catch (err) {
    // Nothing recorded: give the key back so that a retry runs at once
    // instead of waiting for the lease.  A retry keeps our checkpoint, and
    // had the provider charged after all (a lost answer), it gets that
    // charge back, as it sends the same key.  With IK412 the key is no
    // longer ours to give.
    if (err.code !== 'IK412') {
      await db.query('SELECT idem.release($1, $2)', [key, claim.token])
        .catch((releaseErr) => console.error(`release ${key}: ${releaseErr.message}`));
    }
    throw err;
  }
}

async function postCharge(req, res) {
  const key = req.headers['idempotency-key'];
  if (key === undefined) {
    throw new HttpError(400, 'missing_idempotency_key', 'send an Idempotency-Key header, a new one per charge');
  }
  // Validate before claiming: a malformed request records nothing.
  const request = await readCharge(req);
  const db = await pool.connect();
  let lost;
  try {
    const { status, body, replayed } = await chargeOnce(db, key, request, pauses(req, key));
    send(res, status, body, replayed ? { 'Idempotent-Replayed': 'true' } : {});
    return `${status}${replayed ? ' replayed' : ''}`;
  } catch (err) {
    lost = !(err instanceof HttpError) && !(err instanceof DatabaseError);   // the connection, not SQL
    throw err;
  } finally {
    db.release(lost);
  }
}

// An error response: idem's SQLSTATEs as STATUS_OF says, any other error 500.
function fail(res, err) {
  let status = err.status ?? STATUS_OF[err.code];
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

async function main() {
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
