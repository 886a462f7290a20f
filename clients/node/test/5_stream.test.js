// The consumer on a real stream (kinesalite) and a real cluster: 2,000
// business events sent as 2,600 records (a fifth of the events two or three
// times, some copies far apart), consumed exactly once per event by consumers
// that are killed mid-batch, that overlap on the shard, whose work fails for
// some records, and that charge a fake provider (the lease API).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { fileURLToPath } from 'node:url';
import { processBatch } from '../consumer.js';
import { makePool, sleep } from './helpers.js';
import { kinesisClient, createStream, eventStream, produce, consumeShard } from './stream.js';
import { setupSchema, ledgerCounts } from './streamdb.js';

const EVENTS = 2000;
const endpoint = process.env.IDEM_TEST_KINESIS;
const pool = makePool('main', 6);
const kinesis = kinesisClient(endpoint);
const run = `${process.pid}-${Date.now()}`;
const stream = `events-${run}`;
let shard;
let until;
let produced;

before(async () => {
  await setupSchema(pool);
  shard = await createStream(kinesis, stream);
  produced = eventStream(EVENTS);
  until = (await produce(kinesis, stream, produced)).at(-1);
  const ids = new Set(produced.map((e) => e.id));
  assert.equal(ids.size, EVENTS);
  assert.ok(produced.length >= EVENTS * 1.29, `${produced.length} records`);
  console.log(`producer: ${EVENTS} events sent as ${produced.length} records`);
});
after(async () => {
  await pool.end();
  kinesis.destroy();
});

// Every event has exactly one effect; prints the counts.
async function assertOncePerEvent(scenario, extra = '') {
  const c = await ledgerCounts(pool, scenario);
  console.log(`${scenario}: ${produced.length} records, ${c.events} events with an effect, ${c.rows} effects, at most ${c.most} per event${extra}`);
  assert.equal(c.events, EVENTS, 'every event processed');
  assert.equal(c.rows, EVENTS, 'one effect per event');
  assert.equal(c.most, 1);
}

// A consumer process; lines() yields its output lines as they come.
function startConsumer(cfg) {
  const child = spawn(process.execPath, [fileURLToPath(new URL('./stream_consumer.js', import.meta.url)),
    JSON.stringify({ endpoint, stream, shard, until, ...cfg })], { stdio: ['ignore', 'pipe', 'inherit'] });
  const seen = [];
  const waiters = [];
  let buffer = '';
  child.stdout.on('data', (chunk) => {
    buffer += chunk;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      seen.push({ line, at: Date.now() });
      for (const w of [...waiters]) if (w.test(line)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(line); }
    }
  });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return {
    child, seen, exited,
    /** The next line matching re, from now on. */
    next: (re) => new Promise((resolve, reject) => {
      waiters.push({ test: (l) => re.test(l), resolve });
      exited.then(() => reject(new Error(`consumer exited before ${re}`)));
    }),
    kill: async () => { child.kill('SIGKILL'); return exited; },
  };
}

const counts = (c) => {
  let ran = 0, replayed = 0;
  for (const { line } of c.seen) {
    const m = /^committed ran=(\d+) replayed=(\d+)$/.exec(line);
    if (m) { ran += Number(m[1]); replayed += Number(m[2]); }
  }
  return { ran, replayed };
};

test('consumers killed with SIGKILL mid-batch restart from the checkpoint: one effect per event', async () => {
  const scenario = `kill-${run}`;
  const cfg = { grp: scenario, scenario, limit: 100, mode: 'db', pauseMs: 30, batchDelayMs: 5 };
  // Kill during a batch's transaction, or after its commit and before its checkpoint.
  const plan = ['batch', 'committed', 'batch', 'committed', 'batch', 'committed'];
  let replayOnly = 0;
  let total = { ran: 0, replayed: 0 };
  let afterCommitted = false;
  for (const where of plan) {
    const c = startConsumer(cfg);
    const firstCommit = c.next(/^committed /);
    await c.next(/^checkpointed /);
    if (afterCommitted) {
      // The batch killed after its commit is read again: all of it replays.
      if (/ran=0 /.test(await firstCommit)) replayOnly++;
    }
    await c.next(/^checkpointed /);
    await c.next(new RegExp(`^${where}`));
    if (where === 'batch') await sleep(Math.random() * 10);
    const { signal } = await c.kill();
    assert.equal(signal, 'SIGKILL');
    const n = counts(c);
    total = { ran: total.ran + n.ran, replayed: total.replayed + n.replayed };
    afterCommitted = where === 'committed';
  }
  const last = startConsumer(cfg);
  const firstCommit = last.next(/^committed /);
  if (afterCommitted && / ran=0 /.test(` ${await firstCommit}`)) replayOnly++;
  assert.deepEqual(await last.exited, { code: 0, signal: null });
  const n = counts(last);
  total = { ran: total.ran + n.ran, replayed: total.replayed + n.replayed };
  assert.equal(replayOnly, 3, 'each batch committed but not checkpointed before a kill was replayed whole');
  await assertOncePerEvent(scenario, `; ${plan.length} kills, ${replayOnly} batches replayed whole after a kill between commit and checkpoint, ${total.replayed} replayed records`);
});

test('two consumers on one shard overlapping for a while: one effect per event', async () => {
  const scenario = `overlap-${run}`;
  const one = startConsumer({ grp: scenario, scenario, limit: 50, mode: 'db', batchDelayMs: 40 });
  for (let i = 0; i < 5; i++) await one.next(/^checkpointed /);
  // The second starts from the group's checkpoint while the first goes on.
  const two = startConsumer({ grp: scenario, scenario, limit: 70, mode: 'db', batchDelayMs: 40 });
  const started = Date.now();
  for (let i = 0; i < 12; i++) await two.next(/^checkpointed /);
  await one.kill();
  assert.deepEqual(await two.exited, { code: 0, signal: null });
  const overlapping = one.seen.filter((s) => s.at > started && s.line.startsWith('committed')).length;
  assert.ok(overlapping >= 3, `the first consumer committed ${overlapping} batches after the second started`);
  const a = counts(one), b = counts(two);
  assert.ok(b.replayed > 0, 'the second consumer replayed what the first had done');
  await assertOncePerEvent(scenario, `; first consumer ran ${a.ran} and replayed ${a.replayed}, second ran ${b.ran} and replayed ${b.replayed}, ${overlapping} batches of the first while both ran`);
});

test('a handler failing for some records: the batch is retried, the failed records run again and no other', async () => {
  const scenario = `fail-${run}`;
  const poisoned = [...new Set(produced.map((e) => e.id))].filter((id) => Number(id.slice(4)) % 53 === 7);
  await pool.query('INSERT INTO stream_test.poison SELECT $1, unnest($2::text[])', [scenario, poisoned]);
  const key = (r) => `${scenario}:${r.data.id}`;
  let failedKeys = null;
  let retries = 0, failures = 0;
  await consumeShard({
    kinesis, pool, stream, shard, grp: scenario, limit: 100, until,
    process: (records) => processBatch(pool, records, { key, fn: 'stream_test.apply(jsonb)', arg: (r) => ({ s: scenario, ...r.data }) }),
    on: async (event, info) => {
      if (event === 'failed') {
        assert.equal(failedKeys, null, 'a retry failed again');
        failedKeys = new Set(info.error.failed.map((r) => r.key));
        failures += failedKeys.size;
        for (const r of info.error.results) if (!r.error) assert.ok(!failedKeys.has(r.key));
        // The failure passes (say, a dependency came back).
        await pool.query('DELETE FROM stream_test.poison WHERE scenario = $1 AND $1 || \':\' || event = ANY($2)', [scenario, [...failedKeys]]);
      }
      if (event === 'committed' && info.attempt > 1) {
        retries++;
        const ran = new Set(info.results.filter((r) => !r.replayed).map((r) => r.key));
        assert.deepEqual(ran, failedKeys, 'the retry ran exactly the failed records');
        failedKeys = null;
      }
    },
  });
  assert.equal(failures, poisoned.length, 'each poisoned event failed once');
  assert.ok(retries >= 10);
  await assertOncePerEvent(scenario, `; ${failures} records failed, ${retries} batches retried`);
});

// A payment provider that remembers idempotency keys for its last 100 charges
// only (a window, as every provider's is) and counts calls and charges.
function fakeProvider() {
  const charges = new Map();   // key -> number of charges made
  const recent = [];
  const refusedOnce = new Set();
  let calls = 0, refused = 0, next = 0;
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      calls++;
      const key = req.headers['idempotency-key'];
      const event = JSON.parse(body);
      // Every 40th event's first call fails: the record is retried.
      if (Number(event.id.slice(4)) % 40 === 3 && !refusedOnce.has(key)) {
        refusedOnce.add(key); refused++;
        res.writeHead(503).end();
        return;
      }
      let hit = recent.find((r) => r.key === key);
      if (!hit) {
        hit = { key, charge: `ch_${next++}` };
        recent.push(hit);
        if (recent.length > 100) recent.shift();
        charges.set(key, (charges.get(key) ?? 0) + 1);
      }
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify({ charge: hit.charge }));
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}`, charges, stats: () => ({ calls, refused }),
    close: () => new Promise((done) => { server.closeAllConnections(); server.close(done); }),
  })));
}

test('lease API: one external effect per event through a provider, with kills and failing calls', async () => {
  const scenario = `external-${run}`;
  const provider = await fakeProvider();
  try {
    const cfg = { grp: scenario, scenario, limit: 25, mode: 'external', lease: 1500, providerUrl: provider.url };
    for (let k = 0; k < 3; k++) {
      const c = startConsumer(cfg);
      for (let i = 0; i < 4; i++) await c.next(/^checkpointed /);
      await c.next(/^batch /);
      await sleep(5 + Math.random() * 20);   // while the batch's handlers call the provider
      await c.kill();
    }
    const last = startConsumer(cfg);
    assert.deepEqual(await last.exited, { code: 0, signal: null });
    const { calls, refused } = provider.stats();
    const counts = [...provider.charges.values()];
    const twice = counts.filter((n) => n > 1).length;
    console.log(`${scenario}: provider got ${calls} calls (${refused} refused with 503), made ${counts.length} charges for ${EVENTS} events, ${twice} events charged twice; 3 kills`);
    assert.equal(provider.charges.size, EVENTS, 'every event charged');
    assert.equal(twice, 0, 'no event charged twice');
    assert.ok(refused > 0);
    // Calls beyond one per event are the refused ones and the calls cut short by a kill, never a duplicate record's.
    assert.ok(calls - EVENTS - refused <= 3 * 25, `${calls - EVENTS - refused} extra calls`);
    await assertOncePerEvent(scenario);
    const { rows: [m] } = await pool.query(`SELECT count(*)::int AS n FROM stream_test.ledger l JOIN idem.records r
      ON r.key = l.scenario || ':' || l.event WHERE l.scenario = $1 AND r.outcome ->> 'charge' = l.charge`, [scenario]);
    assert.equal(m.n, EVENTS, 'the recorded outcome names the ledger\'s charge');
  } finally {
    await provider.close();
  }
});
