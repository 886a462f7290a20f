// @idem/node/consumer on a real cluster, without a broker: duplicates in a
// batch, call order, records that fail alone, IK422, a deadlock between two
// consumers' batches, and the lease-API variant's claims, heartbeat, wait and
// stale keys.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { processBatch, processBatchExternal, BatchError } from '../consumer.js';
import { once, KeyInUseError, StaleTokenError } from '../index.js';
import { makePool, sleep } from './helpers.js';
import { setupSchema, ledgerCounts } from './streamdb.js';

const pool = makePool('main', 6);
const run = `${process.pid}-${Date.now()}`;
before(() => setupSchema(pool));
after(() => pool.end());

test('batch semantics: duplicates in a batch replay, calls run in the records\' order, a failing record leaves the others committed', async () => {
  const scenario = `unit-${run}`;
  const recs = ['a', 'b', 'a', 'c', 'b', 'd'].map((id) => ({ data: { id, amount: 1 } }));
  const opts = { key: (r) => `${scenario}:${r.data.id}`, fn: 'stream_test.apply(jsonb)', arg: (r) => ({ s: scenario, ...r.data }) };
  const first = await processBatch(pool, recs, opts);
  assert.deepEqual(first.map((r) => r.replayed), [false, false, true, false, true, false]);
  assert.deepEqual(first[2].outcome, first[0].outcome);
  assert.deepEqual(first[4].outcome, first[1].outcome);
  const effects = [0, 1, 3, 5].map((i) => first[i].outcome.effect);
  assert.deepEqual(effects, [...effects].sort((x, y) => x - y), 'effects in the order of the records');
  // The same batch again: all replayed, nothing written.
  const again = await processBatch(pool, recs, opts);
  assert.ok(again.every((r) => r.replayed));
  assert.deepEqual(again.map((r) => r.outcome), first.map((r) => r.outcome));
  // A poisoned record fails alone; the others commit, and the retry runs only it.
  await pool.query('INSERT INTO stream_test.poison VALUES ($1, $2)', [scenario, 'f']);
  const mixed = ['e', 'f', 'g', 'a'].map((id) => ({ data: { id, amount: 1 } }));
  const err = await processBatch(pool, mixed, opts).then(() => null, (e) => e);
  assert.ok(err instanceof BatchError);
  assert.deepEqual(err.results.map((r) => (r.error ? 'failed' : r.replayed ? 'replayed' : 'ran')), ['ran', 'failed', 'ran', 'replayed']);
  await pool.query('DELETE FROM stream_test.poison WHERE scenario = $1', [scenario]);
  const retry = await processBatch(pool, mixed, opts);
  assert.deepEqual(retry.map((r) => r.replayed), [true, false, true, true]);
  // The same key with another argument is refused (IK422) for that record only.
  const clash = await processBatch(pool, [{ data: { id: 'h', amount: 1 } }, { data: { id: 'a', amount: 2 } }], opts).then(() => null, (e) => e);
  assert.equal(clash.results[1].error.code, 'IK422');
  assert.equal(clash.results[0].replayed, false);
  const c = await ledgerCounts(pool, scenario);
  assert.deepEqual(c, { rows: 8, events: 8, most: 1 });   // a..h
});

test('external batch: in-batch duplicates claim once, a failing handler releases only its key', async () => {
  const scenario = `unitx-${run}`;
  const calls = new Map();
  let failB = true;
  const recs = ['a', 'b', 'a', 'c'].map((id) => ({ id }));
  const opts = { key: (r) => `${scenario}:${r.id}`, lease: 5000 };
  const handler = async (r, step) => {
    calls.set(r.id, (calls.get(r.id) ?? 0) + 1);
    if (r.id === 'b' && failB) { await step.checkpoint('tried', { n: 1 }); throw new Error('provider down'); }
    return { done: r.id, recovery: step.recovery };
  };
  const err = await processBatchExternal(pool, recs, opts, handler).then(() => null, (e) => e);
  assert.ok(err instanceof BatchError);
  assert.deepEqual(err.results.map((r) => (r.error ? 'failed' : r.replayed ? 'replayed' : 'ran')), ['ran', 'failed', 'replayed', 'ran']);
  failB = false;
  const retry = await processBatchExternal(pool, recs, opts, handler);
  assert.deepEqual(retry.map((r) => r.replayed), [true, false, true, true]);
  assert.deepEqual(retry[1].outcome, { done: 'b', recovery: { point: 'tried', data: { n: 1 } } });
  assert.deepEqual(Object.fromEntries(calls), { a: 1, b: 2, c: 1 });
});

test('two batches that wait on each other (40P01): the record-by-record pass replays what the other committed', async () => {
  const scenario = `deadlock-${run}`;
  await pool.query(`CREATE OR REPLACE FUNCTION stream_test.slow_apply(e jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_sleep(0.3); RETURN stream_test.apply(e); END $$`);
  const opts = { key: (r) => `${scenario}:${r.id}`, fn: 'stream_test.slow_apply(jsonb)', arg: (r) => ({ s: scenario, id: r.id, amount: 1 }) };
  const [a, b] = await Promise.all([
    processBatch(pool, [{ id: 'x' }, { id: 'y' }], opts),
    processBatch(pool, [{ id: 'y' }, { id: 'x' }], opts),
  ]);
  // One batch ran both keys; the other, rolled back by the deadlock detector, replayed both.
  const ran = [...a, ...b].filter((r) => !r.replayed).map((r) => r.key).sort();
  assert.deepEqual(ran, [`${scenario}:x`, `${scenario}:y`]);
  assert.ok(a.every((r) => r.replayed) || b.every((r) => r.replayed));
  assert.deepEqual(await ledgerCounts(pool, scenario), { rows: 2, events: 2, most: 1 });
});

test('external batch: the heartbeat keeps every running key, a held key makes the batch wait and then fail claiming nothing', async () => {
  const scenario = `lease-${run}`;
  const k = (id) => `${scenario}:${id}`;
  // The heartbeat: handlers run for three leases; meanwhile the keys stay held.
  const lease = 600;
  const slow = processBatchExternal(pool, [{ id: 'a' }, { id: 'b' }], { key: (r) => k(r.id), lease },
    async (r) => { await sleep(3 * lease); return r.id; });
  await sleep(2 * lease);
  for (const id of ['a', 'b']) {
    await assert.rejects(once(pool, { key: k(id), request: { id }, wait: 0 }, async () => 'taken'),
      (err) => err instanceof KeyInUseError);
  }
  assert.deepEqual((await slow).map((r) => r.outcome), ['a', 'b']);
  // A key held by another holder: the claim is tried again for `wait`, then
  // KeyInUseError; the batch's other key was not kept.
  let release;
  const gate = new Promise((resolve) => { release = resolve; });
  const holder = once(pool, { key: k('held'), request: { id: 'held' }, lease: 30000 }, async () => { await gate; return 'holder'; });
  await sleep(100);
  const started = Date.now();
  await assert.rejects(processBatchExternal(pool, [{ id: 'free' }, { id: 'held' }], { key: (r) => k(r.id), wait: 400 }, async (r) => r.id),
    (err) => err instanceof KeyInUseError);
  assert.ok(Date.now() - started >= 400);
  assert.ok(Date.now() - started < 5000, 'no claim waited on the server (idem.wait_timeout 0, the default being 10 s)');
  assert.equal(await once(pool, { key: k('free'), request: { id: 'free' }, wait: 0 }, async () => 'claimable'), 'claimable');
  release();
  assert.equal(await holder, 'holder');
});

test('external batch: a key whose lease lapsed and was taken over is left out (IK412); the others complete', async () => {
  const scenario = `stale-${run}`;
  const k = (id) => `${scenario}:${id}`;
  const lease = 500;
  const single = makePool('main', 1);
  try {
    const batch = processBatchExternal(single, [{ id: 'a' }, { id: 'b' }], {
      key: (r) => k(r.id), lease, concurrency: 2,
      persist: (client, done) => client.query('INSERT INTO stream_test.ledger (scenario, event) SELECT $1, unnest($2::text[])',
        [scenario, done.map((d) => d.key)]),
    }, async (r) => {
      if (r.id === 'b') {
        // Hold the pool's only connection past the lease: no heartbeat gets through.
        const conn = await single.connect();
        await sleep(lease * 3);
        conn.release();
      }
      return `${r.id} by the batch`;
    });
    await sleep(lease * 2);
    assert.equal(await once(pool, { key: k('b'), request: { id: 'b' }, wait: 5000 }, async () => 'b by another'), 'b by another');
    const err = await batch.then(() => null, (e) => e);
    assert.ok(err instanceof BatchError);
    assert.equal(err.results[0].outcome, 'a by the batch');
    assert.ok(err.results[1].error instanceof StaleTokenError);
    // persist's writes commit with the outcomes: a's only.
    const { rows } = await pool.query('SELECT event FROM stream_test.ledger WHERE scenario = $1', [scenario]);
    assert.deepEqual(rows, [{ event: k('a') }]);
    const retry = await processBatchExternal(pool, [{ id: 'a' }, { id: 'b' }], { key: (r) => k(r.id) }, async () => 'ran again');
    assert.deepEqual(retry.map((r) => [r.outcome, r.replayed]), [['a by the batch', true], ['b by another', true]]);
  } finally {
    await single.end();
  }
});

test('external batch: persist failing records nothing and gives every key back at once', async () => {
  const scenario = `persist-${run}`;
  const calls = [];
  const opts = { key: (r) => `${scenario}:${r.id}`, lease: 60000, wait: 0 };
  const handler = async (r, step) => { calls.push(r.id); return { id: r.id, recovery: step.recovery }; };
  await assert.rejects(processBatchExternal(pool, [{ id: 'a' }, { id: 'b' }],
    { ...opts, persist: async () => { throw new Error('persist failed'); } }, handler), /persist failed/);
  // wait 0: a key still held would be KeyInUseError at once.
  const retry = await processBatchExternal(pool, [{ id: 'a' }, { id: 'b' }], opts, handler);
  assert.deepEqual(retry.map((r) => r.replayed), [false, false]);
  assert.deepEqual(calls.sort(), ['a', 'a', 'b', 'b']);
});

test('external batch: a key lost during the batch aborts its step only; the heartbeat keeps the others', async () => {
  const scenario = `lost-${run}`;
  const k = (id) => `${scenario}:${id}`;
  const lease = 600;
  let aborted = false;
  const batch = processBatchExternal(pool, [{ id: 'a' }, { id: 'b' }], { key: (r) => k(r.id), lease }, async (r, step) => {
    if (r.id === 'a') {
      // Someone else ends this claim and takes the key (as after a lapse).
      await pool.query('SELECT idem.release($1, $2)', [step.key, step.token]);
      await once(pool, { key: step.key, request: { id: 'a' }, wait: 0 }, async () => 'a by another');
      await new Promise((resolve) => step.signal.addEventListener('abort', resolve));
      aborted = true;
      return 'a by the batch';
    }
    await sleep(4 * lease);
    return 'b by the batch';
  });
  await sleep(3 * lease);
  await assert.rejects(once(pool, { key: k('b'), request: { id: 'b' }, wait: 0 }, async () => 'taken'),
    (err) => err instanceof KeyInUseError, 'b is still held past its first lease');
  const err = await batch.then(() => null, (e) => e);
  assert.ok(aborted);
  assert.ok(err instanceof BatchError);
  assert.ok(err.results[0].error instanceof StaleTokenError);
  assert.equal(err.results[1].outcome, 'b by the batch');
});

test('external batch: copies of a record whose JSON keys come in another order are duplicates; other values are IK422', async () => {
  const scenario = `order-${run}`;
  let runs = 0;
  const recs = [{ id: 'a', x: 1, y: [1, { p: 1, q: 2 }] }, { y: [1, { q: 2, p: 1 }], x: 1, id: 'a' }, { id: 'a', x: 2, y: [] }];
  const err = await processBatchExternal(pool, recs, { key: (r) => `${scenario}:${r.id}` }, async () => ++runs)
    .then(() => null, (e) => e);
  assert.equal(runs, 1);
  assert.deepEqual(err.results.slice(0, 2).map((r) => [r.outcome, r.replayed]), [[1, false], [1, true]]);
  assert.equal(err.results[2].error.code, 'IK422');
  // idem compares the same way: the reordered copy replays in a later batch.
  const later = await processBatchExternal(pool, [recs[1]], { key: (r) => `${scenario}:${r.id}` }, async () => ++runs);
  assert.deepEqual(later.map((r) => [r.outcome, r.replayed]), [[1, true]]);
});
