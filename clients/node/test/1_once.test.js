// once(): first call and replay, a pool smaller than the calls in flight,
// a throwing fn, the heartbeat, a stale holder.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { once, onceDetailed, StaleTokenError, RequestMismatchError, KeyInUseError } from '../index.js';
import { makePool, freshKey, sleep } from './helpers.js';

const pool = makePool('main', 10);
after(() => pool.end());

test('first call runs, a retry replays the same JSON value', async () => {
  const key = freshKey('first');
  let runs = 0;
  const fn = async () => { runs++; return { b: [1, 2.5, 'x'], a: { z: null, y: true }, at: runs }; };
  const first = await onceDetailed(pool, { key, request: { sku: 2 } }, fn);
  const again = await onceDetailed(pool, { key, request: { sku: 2 } }, fn);
  assert.equal(runs, 1);
  assert.equal(first.replayed, false);
  assert.equal(again.replayed, true);
  assert.deepStrictEqual(again.result, first.result);
  await assert.rejects(once(pool, { key, request: { sku: 3 } }, fn),
    (err) => err instanceof RequestMismatchError && err.code === 'IK422' && err.httpStatus === 422);
});

test('180 concurrent calls over 30 keys on a pool of 20: no deadlock, one run per key, equal outcomes', async () => {
  const small = makePool('main', 20);
  try {
    const keys = Array.from({ length: 30 }, (_, i) => freshKey(`many${i}`));
    const runs = new Map();
    const calls = [];
    for (let i = 0; i < 180; i++) {
      const key = keys[i % 30];
      calls.push(once(small, { key, request: { key }, lease: 5000, wait: 60000 }, async (step) => {
        runs.set(key, (runs.get(key) ?? 0) + 1);
        await sleep(50);
        await step.checkpoint('half', { i });
        const { rows: [r] } = await step.client.query('SELECT $1::int AS i, txid_current() AS tx', [i]);
        await sleep(50);
        return { key, by: r.i, tx: r.tx };
      }));
    }
    const results = await Promise.all(calls);
    assert.equal(runs.size, 30);
    for (const [key, n] of runs) assert.equal(n, 1, `${key} ran ${n} times`);
    for (let i = 0; i < 180; i++) assert.deepStrictEqual(results[i], results[i % 30]);
  } finally {
    await small.end();
  }
});

test('a thrown error releases the key: the retry runs at once and keeps the checkpoint', async () => {
  const key = freshKey('throw');
  await assert.rejects(once(pool, { key, lease: 60000 }, async (step) => {
    await step.checkpoint('began', { n: 1 });
    await step.client.query('CREATE TEMP TABLE IF NOT EXISTS dropped (x int)');
    throw new Error('boom');
  }), /boom/);
  const started = Date.now();
  const result = await once(pool, { key, lease: 60000, wait: 2000 }, async (step) => ({ recovery: step.recovery }));
  assert.ok(Date.now() - started < 2000, 'the retry did not wait for the 60 s lease');
  assert.deepStrictEqual(result, { recovery: { point: 'began', data: { n: 1 } } });
});

test('a slow fn is kept alive by the heartbeat past two leases', async () => {
  const key = freshKey('slow');
  const lease = 1500;
  const holder = once(pool, { key, lease }, async () => { await sleep(3 * lease + 500); return 'slow done'; });
  await sleep(lease / 2);
  // Meanwhile a competitor waits for at most a lease and is refused; then
  // another waits for the holder and replays its outcome.
  await assert.rejects(once(pool, { key, lease, wait: lease }, async () => 'competitor ran'),
    (err) => err instanceof KeyInUseError && err.httpStatus === 409);
  const waiter = once(pool, { key, lease, wait: 30000 }, async () => 'competitor ran');
  assert.equal(await holder, 'slow done');
  assert.equal(await waiter, 'slow done');
});

test('a stale holder is refused with IK412 and the new holder\'s outcome stands', async () => {
  const key = freshKey('stale');
  const lease = 1000;
  const stalled = makePool('main', 1);   // its only connection is held by step.client: no heartbeat gets through
  try {
    let release;
    const gate = new Promise((resolve) => { release = resolve; });
    const old = once(stalled, { key, lease }, async (step) => {
      await step.client.query('SELECT 1');
      await gate;
      return 'old holder';
    });
    await sleep(lease + 500);
    const fresh = await once(pool, { key, lease, wait: 20000 }, async () => 'new holder');
    release();
    await assert.rejects(old, (err) => err instanceof StaleTokenError && err.code === 'IK412' && err.httpStatus === 409);
    assert.equal(fresh, 'new holder');
    assert.equal(await once(pool, { key }, async () => 'ran again'), 'new holder');
  } finally {
    await stalled.end();
  }
});
