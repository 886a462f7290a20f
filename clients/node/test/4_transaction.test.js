// Mode 'transaction' (the middleware's default): the claim, fn's writes
// through step.client and the outcome in one transaction on one pooled
// connection, one commit.  Also the literals the one-round-trip statements
// carry, in both modes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { once, onceDetailed, InvalidKeyError, RequestMismatchError } from '../index.js';
import { idempotency } from '../express.js';
import { makePool, freshKey, listen, post, sleep, start } from './helpers.js';
import { makeApp } from './app.js';

const appJs = fileURLToPath(new URL('./app.js', import.meta.url));
const tx = 'transaction';

let pool;
before(async () => {
  pool = makePool('main', 10);
  await makeApp(pool, {});   // creates app.orders
});
after(() => pool.end());

const rowsOf = async (key) => (await pool.query('SELECT id FROM app.orders WHERE key = $1 ORDER BY id', [key])).rows;
const recordOf = async (key) => (await pool.query('SELECT status, outcome FROM idem.my_records WHERE key = $1', [key])).rows[0];
const insertOrder = (step, amount) => step.client.query(
  'INSERT INTO app.orders (key, charge, amount) VALUES ($1, $2, $3) RETURNING id', [step.key, 'tx', amount]);

test('[transaction] fn\'s writes and the outcome commit together; a retry replays the same JSON value', async () => {
  const key = freshKey('tx-first');
  let runs = 0;
  const fn = async (step) => {
    runs++;
    const { rows: [row] } = await insertOrder(step, 5);
    return { order: Number(row.id), nested: { b: [1, 2.5], a: null } };
  };
  const first = await onceDetailed(pool, { key, request: { a: 1 }, mode: tx }, fn);
  const again = await onceDetailed(pool, { key, request: { a: 1 }, mode: tx }, fn);
  assert.equal(runs, 1);
  assert.equal(first.replayed, false);
  assert.equal(again.replayed, true);
  assert.deepStrictEqual(again.result, first.result);
  const rows = await rowsOf(key);
  assert.deepStrictEqual(rows.map((r) => Number(r.id)), [first.result.order]);
  const record = await recordOf(key);
  assert.equal(record.status, 'completed');
  assert.deepStrictEqual(record.outcome, first.result);
  // The lease-mode API on the same key replays it too: one key table.
  assert.deepStrictEqual(await once(pool, { key, request: { a: 1 } }, fn), first.result);
});

test('[transaction] fn throws after its write: neither the write nor a claim is left, and the retry runs at once', async () => {
  const key = freshKey('tx-throw');
  await assert.rejects(once(pool, { key, lease: 60000, mode: tx }, async (step) => {
    await insertOrder(step, 6);
    throw new Error('boom after the write');
  }), /boom after the write/);
  assert.deepStrictEqual(await rowsOf(key), []);
  assert.equal(await recordOf(key), undefined, 'the claim was rolled back with the write');
  // A 60 s lease and a 2 s wait: a claim left behind would make this KeyInUseError.
  const result = await once(pool, { key, lease: 60000, wait: 2000, mode: tx }, async (step) => {
    await insertOrder(step, 7);
    return { recovery: step.recovery, ran: 'again' };
  });
  assert.deepStrictEqual(result, { recovery: null, ran: 'again' });
  assert.equal((await rowsOf(key)).length, 1);
});

test('[transaction] step.checkpoint throws (it would roll back with the claim) and nothing is recorded', async () => {
  const key = freshKey('tx-checkpoint');
  await assert.rejects(once(pool, { key, mode: tx }, async (step) => {
    await insertOrder(step, 8);
    await step.checkpoint('charged', { charge: 'ch' });
    return 'unreachable';
  }), /needs mode 'lease'/);
  assert.deepStrictEqual(await rowsOf(key), []);
  assert.equal(await recordOf(key), undefined);
});

test('[transaction] 180 concurrent calls over 30 keys on a pool of 20: no deadlock, one run and one row per key, equal outcomes', async () => {
  const small = makePool('main', 20);
  try {
    const keys = Array.from({ length: 30 }, (_, i) => freshKey(`tx-many${i}`));
    const runs = new Map();
    const calls = [];
    for (let i = 0; i < 180; i++) {
      const key = keys[i % 30];
      calls.push(once(small, { key, request: { key }, lease: 5000, wait: 60000, mode: tx }, async (step) => {
        runs.set(key, (runs.get(key) ?? 0) + 1);
        const { rows: [row] } = await insertOrder(step, i);
        await sleep(50);
        const { rows: [t] } = await step.client.query('SELECT txid_current() AS tx');
        await sleep(50);
        return { key, by: i, order: Number(row.id), tx: t.tx };
      }));
    }
    const results = await Promise.all(calls);
    assert.equal(runs.size, 30);
    for (const [key, n] of runs) assert.equal(n, 1, `${key} ran ${n} times`);
    for (let i = 0; i < 180; i++) assert.deepStrictEqual(results[i], results[i % 30]);
    const { rows } = await pool.query('SELECT key, count(*)::int AS n FROM app.orders WHERE key = ANY($1) GROUP BY key', [keys]);
    assert.equal(rows.length, 30);
    for (const r of rows) assert.equal(r.n, 1, `${r.key} has ${r.n} rows`);
  } finally {
    await small.end();
  }
});

for (const mode of ['transaction', 'lease']) {
  test(`[${mode}] fn that also queries the pool itself while holding step.client: 180 calls over 30 keys on a pool of 20 still finish`, { timeout: 60000 }, async () => {
    // Without a connection left over, 20 holders would each hold one and wait for a second forever.
    const small = makePool('main', 20);
    try {
      const keys = Array.from({ length: 30 }, (_, i) => freshKey(`nested-${mode}${i}`));
      const results = await Promise.all(Array.from({ length: 180 }, (_, i) => once(small,
        { key: keys[i % 30], lease: 5000, wait: 60000, mode }, async (step) => {
          const { rows: [row] } = await insertOrder(step, i);
          await sleep(20);
          const { rows: [read] } = await small.query('SELECT $1::bigint AS id', [row.id]);   // beside step.client
          return { key: step.key, order: Number(read.id) };
        })));
      for (let i = 0; i < 180; i++) assert.deepStrictEqual(results[i], results[i % 30]);
      const { rows } = await pool.query('SELECT count(*)::int AS n FROM app.orders WHERE key = ANY($1)', [keys]);
      assert.equal(rows[0].n, 30);
    } finally {
      await small.end();
    }
  });
}

test('[transaction] a replay or a refused claim leaves no transaction open on the pooled connection', async () => {
  const one = makePool('main', 1);
  try {
    const key = freshKey('tx-clean');
    // In a transaction left open, now() would be older than the statement.
    const outside = async () => {
      const { rows: [r] } = await one.query('SELECT now() = statement_timestamp() AS fresh');
      assert.equal(r.fresh, true, 'the pooled connection was left in a transaction');
    };
    await once(one, { key, request: 1, mode: tx }, async () => 'done');
    await outside();
    assert.equal((await onceDetailed(one, { key, request: 1, mode: tx }, async () => 'ran')).replayed, true);
    await outside();
    await assert.rejects(once(one, { key, request: 2, mode: tx }, async () => 'ran'), RequestMismatchError);
    await outside();
  } finally {
    await one.end();
  }
});

test('keys and requests with quotes, backslashes and other characters travel intact in both modes, whatever standard_conforming_strings says; a NUL in a key is refused', async () => {
  const legacy = makePool('main', 2, { options: '-c standard_conforming_strings=off' });
  // A statement of idem's name on every connection: this pool falls back to
  // the simple protocol, where the values travel as SQL literals.
  legacy.on('connect', (client) => client.query('PREPARE idem_node1_begin AS SELECT 1').catch(() => {}));
  try {
    assert.equal((await legacy.query('SHOW standard_conforming_strings')).rows[0].standard_conforming_strings, 'off');
    for (const mode of ['lease', tx]) await oddKeys(mode, legacy, 'legacy');
  } finally {
    await legacy.end();
  }
  for (const mode of ['lease', tx]) await oddKeys(mode, pool, 'default');
  assert.throws(() => idempotency(pool, { mode: 'both' }), TypeError);
});

// First call, replay and IK422 of an awkward key and request through db
// (prepared statements on the default pool, literals on legacy).
async function oddKeys(mode, db, tag) {
  const key = freshKey(`odd'key\\"${mode}"\u00e9\u{1F600}';--${tag}`);
  const request = { q: "it's", b: 'back\\slash\\\\', c: "\\'", u: '\u00e9\u{1F600}', n: '\\u0000', e: "E'x'" };
  let runs = 0;
  const fn = async (step) => { runs++; return { key: step.key, request, text: "a'b\\c" }; };
  const first = await once(db, { key, request, mode }, fn);
  const { rows: [stored] } = await db.query('SELECT key, outcome FROM idem.my_records WHERE key = $1', [key]);
  assert.equal(stored.key, key);
  assert.deepStrictEqual(stored.outcome, first);
  assert.deepStrictEqual(first, { key, request, text: "a'b\\c" });
  assert.deepStrictEqual(await once(db, { key, request: { ...request }, mode }, fn), first);
  await assert.rejects(once(db, { key, request: { ...request, q: 'its' }, mode }, fn), RequestMismatchError);
  assert.equal(runs, 1);
  assert.equal((await recordOf(key)).status, 'completed');
  let ran = false;
  await assert.rejects(once(db, { key: `nul\u0000${mode}`, mode }, async () => { ran = true; }),
    (err) => err instanceof InvalidKeyError && err.httpStatus === 400);
  assert.equal(ran, false);
}

test('[transaction] over HTTP: the route\'s write and the recorded response commit together, or neither does', async () => {
  const made = await makeApp(pool, { lease: 60000, wait: 2000 });
  const server = await listen(made.app);
  try {
    const key = freshKey('tx-http');
    const answer = await post(`${server.url}/orders`, key, { amount: 3 });
    assert.equal(answer.status, 201);
    const rows = await rowsOf(key);
    assert.equal(rows.length, 1);
    assert.equal(JSON.parse(answer.text).order, Number(rows[0].id));
    const record = await recordOf(key);
    assert.equal(record.status, 'completed');
    assert.equal(record.outcome.body, answer.text);
    const again = await post(`${server.url}/orders`, key, { amount: 3 });
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.equal(again.text, answer.text);

    // Thrown after the write: 500, no row, no record, and the retry runs.
    const failing = freshKey('tx-http-fail');
    assert.equal((await post(`${server.url}/orders`, failing, { amount: 4, fail: true })).status, 500);
    assert.deepStrictEqual(await rowsOf(failing), []);
    assert.equal(await recordOf(failing), undefined);
    assert.equal((await post(`${server.url}/orders`, failing, { amount: 4 })).status, 201);
    assert.equal((await rowsOf(failing)).length, 1);
    assert.equal(made.runs.get(`"${failing}"`), 2);
  } finally {
    await server.close();
  }
});

test('[transaction] SIGKILL after the route\'s write, before COMMIT: neither is left, and the retry runs at once despite a 60 s lease', async () => {
  const key = freshKey('tx-kill');
  const env = { LEASE_MS: '60000', PORT: '0', PROVIDER_URL: 'http://127.0.0.1:9' };
  const first = start([appJs], env, /listening (\d+)/);
  const url = `http://127.0.0.1:${(await first.ready)[1]}`;
  const pending = post(`${url}/orders`, key, { amount: 9 }, { 'X-Test-Pause-Before-Complete': '60000' })
    .then(() => 'answered', () => 'dropped');
  await first.waitFor(/pause before-complete/);
  first.child.kill('SIGKILL');
  assert.equal(await pending, 'dropped');
  const second = start([appJs], env, /listening (\d+)/);
  try {
    const url2 = `http://127.0.0.1:${(await second.ready)[1]}`;
    const retry = await post(`${url2}/orders`, key, { amount: 9 });
    assert.equal(retry.status, 201);
    assert.equal(retry.headers.get('idempotent-replayed'), null, 'the retry ran: the killed claim was rolled back');
    const rows = await rowsOf(key);
    assert.equal(rows.length, 1, 'the killed request\'s write was rolled back');
    assert.equal(JSON.parse(retry.text).order, Number(rows[0].id));
  } finally {
    second.child.kill();
  }
});

test('[transaction] a holder idle for a whole lease (no heartbeat) loses its transaction: the key is free, its response is not recorded', async () => {
  const stalledApp = await makeApp(pool, { lease: 1000, wait: 5000, holdable: true });
  const freshApp = await makeApp(pool, { lease: 1000, wait: 10000 });
  const stalled = await listen(stalledApp.app);
  const fresh = await listen(freshApp.app);
  try {
    const key = freshKey('tx-stall');
    const old = post(`${stalled.url}/echo`, key, { stall: true });
    while (!stalledApp.gates.has(key)) await sleep(20);
    // The stalled transaction blocks the key until the server ends it (one lease idle); the gate
    // stays shut meanwhile, so only that lets this request run.
    const taken = await post(`${fresh.url}/echo`, key, { stall: true });
    assert.equal(taken.status, 200);
    assert.equal(taken.headers.get('idempotent-replayed'), null);
    stalledApp.gates.get(key)();
    const refused = await old;
    assert.ok(refused.status >= 500, `the stalled holder answered ${refused.status}`);
    const retry = await post(`${fresh.url}/echo`, key, { stall: true });
    assert.equal(retry.headers.get('idempotent-replayed'), 'true');
    assert.equal(retry.text, taken.text);
    // The stalled app survived its connection's end and still serves.
    assert.equal((await post(`${stalled.url}/echo`, freshKey('tx-after-stall'), { a: 1 })).status, 200);
  } finally {
    await stalled.close();
    await fresh.close();
  }
});

test('step.signal aborts when the server ends the holder\'s connection, whether read before or after; the key is left free', async () => {
  for (const mode of ['transaction', 'lease']) {
    for (const readFirst of [true, false]) {
      const key = freshKey(`signal-${mode}-${readFirst}`);
      let seen;
      await assert.rejects(once(pool, { key, mode }, async (step) => {
        const early = readFirst ? step.signal : null;
        const { rows: [{ pid }] } = await step.client.query('SELECT pg_backend_pid() AS pid');
        const ended = new Promise((resolve) => {
          if (early) early.addEventListener('abort', resolve);
          else setTimeout(resolve, 500);   // the signal is first read only after the connection ended
        });
        await pool.query('SELECT pg_terminate_backend($1)', [pid]);
        await ended;
        seen = step.signal;
        return 'not recorded';
      }));
      assert.equal(seen.aborted, true, `${mode}, signal read ${readFirst ? 'before' : 'after'} the end`);
      assert.ok(seen.reason instanceof Error);
      // The key is free again (the rolled-back claim, or a lease released or lapsed): it runs.
      assert.equal(await once(pool, { key, mode, wait: 5000 }, async () => 'ran'), 'ran');
    }
  }
});
