// server.js: the Express app that bench/http/run measures, in one of three
// variants that differ only in how POST /orders is made idempotent:
//
//   node server.js none     no idempotency
//   node server.js redis    express-idempotency with its Redis adapter
//                           (REDIS_URL)
//   node server.js idem     @idem/node's idempotency() middleware in its
//                           default mode, 'transaction'
//   node server.js idem-lease
//                           the same in mode 'lease' (the claim commits
//                           before the route runs, with a heartbeat)
//   node server.js idem-baseline
//                           idem's variant with the library in
//                           IDEM_BASELINE_DIR (another commit's
//                           clients/node: bench/http/run --baseline)
//
// POST /orders writes one row into bench_http.orders and answers 201 with it.
// In none and redis the row is written with a plain pool query; in idem and
// idem-lease it is written in req.idem.client's transaction, which
// idem.complete joins, so the recorded response commits with it.  GET /stats tells how many times the
// route's own body ran (a replay must not run it).  The PG* variables name the
// database; POOL_MAX (default 10) sizes the pool of every variant alike.
// Prints "listening PORT" once it listens on 127.0.0.1.
import { pathToFileURL } from 'node:url';
import express from 'express';
import pg from 'pg';

const variant = process.argv[2];
const pool = new pg.Pool({ max: Number(process.env.POOL_MAX ?? 10) });
pool.on('error', (err) => console.error('pool:', err.message));

const insert = 'INSERT INTO bench_http.orders (key, amount) VALUES ($1, $2) RETURNING id';
let runs = 0;

const app = express();
app.set('env', 'production');
app.use(express.json());
app.get('/stats', (req, res) => res.json({ variant, runs }));

// The route's own work, the same in every variant but for the connection.
async function placeOrder(query, req, res) {
  runs += 1;
  const amount = Number(req.body.amount);
  const { rows: [order] } = await query(insert, [req.get('Idempotency-Key') ?? null, amount]);
  res.status(201).json({ order: Number(order.id), amount });
}

if (variant === 'none') {
  app.post('/orders', (req, res) => placeOrder((...a) => pool.query(...a), req, res));
} else if (variant === 'redis') {
  // Both packages are CommonJS; the adapter's class is its default export.
  const { idempotency, getSharedIdempotencyService } = (await import('express-idempotency')).default;
  const RedisAdapter = (await import('express-idempotency-redis-adapter')).default.default;
  const adapter = new RedisAdapter({ connectionConfig: { url: process.env.REDIS_URL } });
  await adapter.connect();
  const middleware = idempotency({ dataAdapter: adapter });
  const service = getSharedIdempotencyService();
  app.post('/orders', middleware, async (req, res) => {
    // The middleware calls next() after sending a replay: the route must
    // check for a hit itself (the package's documented usage).
    if (service.isHit(req)) return;
    try {
      await placeOrder((...a) => pool.query(...a), req, res);
    } catch (err) {
      await service.reportError(req);
      throw err;
    }
  });
} else if (variant === 'idem' || variant === 'idem-lease' || variant === 'idem-baseline') {
  const { idempotency } = await import(variant === 'idem-baseline'
    ? pathToFileURL(`${process.env.IDEM_BASELINE_DIR}/express.js`).href
    : '@idem/node/express');
  const mode = variant === 'idem-lease' ? 'lease' : 'transaction';
  app.post('/orders', idempotency(pool, { lease: 30000, wait: 5000, mode }),
    (req, res) => placeOrder((...a) => req.idem.client.query(...a), req, res));
} else {
  console.error(`usage: node server.js none|redis|idem|idem-lease|idem-baseline (not ${variant})`);
  process.exit(2);
}

const server = app.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port}`));
server.keepAliveTimeout = 60000;
const stop = () => {
  server.close(() => pool.end().finally(() => process.exit(0)));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
