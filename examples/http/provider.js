// provider.js: a fake payment provider for the HTTP example, standing in for
// a real card processor.  It counts every charge it makes, so a test can
// tell whether a customer was charged once or twice, and, like Stripe, it
// honours an Idempotency-Key header of its own: the first request with a key
// creates a charge, every later one with that key gets the same charge back.
//
//   node provider.js [--port N] [--delay-ms N]      (listens on 127.0.0.1)
//
//   POST /charges   {"amount": 1000, "currency": "eur"}, header Idempotency-Key
//                   201 and the new charge {"id": "ch_1", ...}; with a key seen
//                   before, 200 and the same charge (Idempotent-Replayed: true),
//                   or 422 if the amount or currency differ.  The response
//                   comes after the delay; the charge exists from the moment
//                   the request arrives.
//   GET  /stats     {"charges": N, "keys": {"<key>": {"charges": 1, "requests": 3}}}
//   POST /control   test knobs: {"delay_ms": N} for every request,
//                   {"key": K, "delay_ms": N} for one key,
//                   {"key": K, "fail": N} to answer the next N requests for K
//                   with 503 before charging anything.
'use strict';

const http = require('node:http');
const { parseArgs } = require('node:util');

const { values: opts } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.PROVIDER_PORT || '8081' },
    'delay-ms': { type: 'string', default: '0' },
  },
});

const charges = new Map();   // idempotency key -> charge
const stats = new Map();     // key -> { charges, requests }
const delays = new Map();    // key -> ms
const failures = new Map();  // key -> requests still to fail
let defaultDelay = Number(opts['delay-ms']);
let nextId = 1;
let total = 0;

function send(res, status, body, headers = {}) {
  res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

async function readJson(req) {
  let text = '';
  for await (const chunk of req) text += chunk;
  return text === '' ? {} : JSON.parse(text);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function charge(req, res) {
  const key = req.headers['idempotency-key'];
  const { amount, currency } = await readJson(req);
  if (!Number.isSafeInteger(amount) || amount <= 0 || typeof currency !== 'string') {
    return send(res, 400, { error: 'amount must be a positive integer and currency a string' });
  }
  const counts = stats.get(key ?? '') ?? { charges: 0, requests: 0 };
  stats.set(key ?? '', counts);
  counts.requests++;
  const delay = delays.get(key) ?? defaultDelay;

  if (failures.get(key) > 0) {
    failures.set(key, failures.get(key) - 1);
    await sleep(delay);
    return send(res, 503, { error: 'the card network is unavailable, nothing was charged' });
  }

  let status = 200;
  let made = key === undefined ? undefined : charges.get(key);
  if (made === undefined) {
    made = { id: `ch_${nextId++}`, amount, currency, created: new Date().toISOString() };
    if (key !== undefined) charges.set(key, made);
    counts.charges++;
    total++;
    status = 201;
  } else if (made.amount !== amount || made.currency !== currency) {
    return send(res, 422, { error: 'this idempotency key was used for another charge' });
  }
  await sleep(delay);
  send(res, status, made, status === 200 ? { 'Idempotent-Replayed': 'true' } : {});
}

async function control(req, res) {
  const { key, delay_ms: delay, fail } = await readJson(req);
  if (delay !== undefined) {
    if (key === undefined) defaultDelay = delay;
    else delays.set(key, delay);
  }
  if (fail !== undefined) failures.set(key, fail);
  send(res, 200, { ok: true });
}

const server = http.createServer((req, res) => {
  let handled;
  if (req.method === 'POST' && req.url === '/charges') handled = charge(req, res);
  else if (req.method === 'POST' && req.url === '/control') handled = control(req, res);
  else if (req.method === 'GET' && req.url === '/stats') {
    handled = Promise.resolve(send(res, 200, { charges: total, keys: Object.fromEntries(stats) }));
  } else handled = Promise.resolve(send(res, 404, { error: 'not found' }));
  handled.catch((err) => send(res, 400, { error: String(err.message) }));
});

server.listen(Number(opts.port), '127.0.0.1', () => {
  console.log(`provider listening on http://127.0.0.1:${server.address().port}`);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeIdleConnections();   // keep-alive clients would hold close() open
  });
}
