// app.js: the Express app the HTTP tests run, in the test process or, for
// the SIGKILL test, as a process of its own:
//   node test/app.js      (PORT, PROVIDER_URL, LEASE_MS, MODE and the PG* variables)
// POST /charges charges through the fake provider (examples/http/provider.js),
// checkpoints 'charged', then records the order in req.idem.client's
// transaction, which complete joins (mode 'lease', always).  POST /orders
// only writes an order through req.idem.client, and /echo only answers;
// both in the app's mode (default: the middleware's, 'transaction').
import express from 'express';
import pg from 'pg';
import { pathToFileURL } from 'node:url';
import { idempotency } from '../express.js';

export async function makeApp(pool, { providerUrl, lease = 3000, wait = 5000, holdable = false, mode } = {}) {
  await pool.query(`CREATE SCHEMA IF NOT EXISTS app;
    CREATE TABLE IF NOT EXISTS app.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      key text NOT NULL, charge text NOT NULL, amount bigint NOT NULL)`);
  const runs = new Map();   // key -> executions of a route's body
  const gates = new Map();  // key -> releases a request held by {"hold": true} (holdable apps only)
  const count = (req) => runs.set(req.get('Idempotency-Key'), (runs.get(req.get('Idempotency-Key')) ?? 0) + 1);
  const app = express();
  app.set('env', 'test');   // finalhandler: no stack traces on stderr
  app.use(express.json());
  const idem = idempotency(pool, { lease, wait, ...(mode ? { mode } : {}) });

  app.post('/charges', idempotency(pool, { lease, wait, mode: 'lease' }), async (req, res) => {
    count(req);
    const step = req.idem;
    let charge = step.recovery?.point === 'charged' ? step.recovery.data.charge : undefined;
    if (charge === undefined) {
      const answer = await fetch(`${providerUrl}/charges`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Idempotency-Key': step.key },
        body: JSON.stringify({ amount: req.body.amount, currency: 'eur' }),
      });
      charge = (await answer.json()).id;
      await step.checkpoint('charged', { charge });
      const pause = Number(req.get('X-Test-Pause-After-Checkpoint') ?? 0);
      if (pause > 0) {
        console.log(`pause after-checkpoint key=${step.key}`);
        await new Promise((resolve) => setTimeout(resolve, pause));
      }
    }
    const { rows: [order] } = await step.client.query(
      'INSERT INTO app.orders (key, charge, amount) VALUES ($1, $2, $3) RETURNING id', [step.key, charge, req.body.amount]);
    res.status(201).location(`/orders/${order.id}`).json({ order: Number(order.id), charge, amount: req.body.amount });
  });

  // An order written in req.idem.client's transaction, then an optional
  // pause before the response (and complete).
  app.post('/orders', idem, async (req, res) => {
    count(req);
    const { rows: [order] } = await req.idem.client.query(
      'INSERT INTO app.orders (key, charge, amount) VALUES ($1, $2, $3) RETURNING id', [req.idem.key, 'none', req.body.amount]);
    const pause = Number(req.get('X-Test-Pause-Before-Complete') ?? 0);
    if (pause > 0) {
      console.log(`pause before-complete key=${req.idem.key}`);
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
    if (req.body.fail) throw new Error('the route failed after its write');
    res.status(201).json({ order: Number(order.id), amount: req.body.amount });
  });

  // Echo, after an optional pause; fails with 500 when the body says so.
  app.post('/echo', idem, async (req, res) => {
    count(req);
    await new Promise((resolve) => setTimeout(resolve, req.body.sleep ?? 0));
    if (holdable && req.body.hold) {
      // Open step.client's transaction, then wait: with a pool of one, no heartbeat gets through.
      await req.idem.client.query('SELECT 1');
      await new Promise((resolve) => gates.set(req.idem.key, resolve));
    }
    if (holdable && req.body.stall) {
      // No heartbeat: the transaction sits idle (mode 'transaction') or the lease lapses.
      req.idem.stopHeartbeat();
      await new Promise((resolve) => gates.set(req.idem.key, resolve));
    }
    if (req.body.fail) throw new Error('the route failed');
    if (req.body.status) return res.status(req.body.status).json({ rejected: true });
    return res.json({ echo: req.body, at: Date.now(), n: runs.get(req.get('Idempotency-Key')) });
  });

  app.post('/optional', idempotency(pool, { required: false }), (req, res) => {
    count(req);
    res.json({ keyed: req.idem !== undefined });
  });
  return { app, runs, gates };
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const pool = new pg.Pool({ max: 5 });
  pool.on('error', () => {});
  const { app } = await makeApp(pool, {
    providerUrl: process.env.PROVIDER_URL, lease: Number(process.env.LEASE_MS ?? 2000), wait: 15000, mode: process.env.MODE || undefined,
  });
  const server = app.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
    console.log(`listening ${server.address().port}`);
  });
}
