// The Express middleware over real HTTP on 127.0.0.1.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { makePool, freshKey, listen, post, sleep, start } from './helpers.js';
import { makeApp } from './app.js';

const providerJs = fileURLToPath(new URL('../../../examples/http/provider.js', import.meta.url));
const appJs = fileURLToPath(new URL('./app.js', import.meta.url));

let pool;
let provider;
let providerUrl;
let server;
let runs;
let leaseServer;
let leaseRuns;
before(async () => {
  pool = makePool('main', 10);
  provider = start([providerJs, '--port', '0'], {}, /listening on (http:\S+)/);
  providerUrl = (await provider.ready)[1];
  const made = await makeApp(pool, { providerUrl });   // the middleware's default mode, 'transaction'
  runs = made.runs;
  server = await listen(made.app);
  const madeLease = await makeApp(pool, { providerUrl, mode: 'lease' });
  leaseRuns = madeLease.runs;
  leaseServer = await listen(madeLease.app);
});
after(async () => {
  await server.close();
  await leaseServer.close();
  provider.child.kill();
  await pool.end();
});
const modes = ['transaction', 'lease'];
const serverOf = (mode) => (mode === 'lease' ? { url: leaseServer.url, runs: leaseRuns } : { url: server.url, runs });

const providerStats = async () => (await fetch(`${providerUrl}/stats`)).json();

test('first call and replay', async () => {
  const key = freshKey('http-first');
  const first = await post(`${server.url}/charges`, key, { amount: 100 });
  assert.equal(first.status, 201);
  assert.equal(first.headers.get('idempotent-replayed'), null);
  const again = await post(`${server.url}/charges`, key, '{ "amount" :100 }');
  assert.equal(again.status, 201);
  assert.equal(again.headers.get('idempotent-replayed'), 'true');
  assert.equal(again.text, first.text);
  assert.equal(again.headers.get('location'), first.headers.get('location'));
  assert.equal(again.headers.get('content-type'), first.headers.get('content-type'));
  assert.equal(runs.get(`"${key}"`), 1);
  assert.equal((await providerStats()).keys[key].charges, 1);
  const { rows } = await pool.query('SELECT count(*)::int AS n FROM app.orders WHERE key = $1', [key]);
  assert.equal(rows[0].n, 1);
});

for (const mode of modes) {
  test(`[${mode}] concurrent retries of one key: one execution, every caller the same body`, async () => {
    const { url, runs: counted } = serverOf(mode);
    const key = freshKey(`http-concurrent-${mode}`);
    const answers = await Promise.all(Array.from({ length: 12 }, () => post(`${url}/echo`, key, { sleep: 400 })));
    assert.equal(counted.get(`"${key}"`), 1);
    for (const a of answers) {
      assert.equal(a.status, 200);
      assert.equal(a.text, answers[0].text);
    }
    assert.equal(answers.filter((a) => a.headers.get('idempotent-replayed') === 'true').length, 11);
  });
}

test('the same key with another body: 422', async () => {
  const key = freshKey('http-other');
  assert.equal((await post(`${server.url}/echo`, key, { a: 1 })).status, 200);
  const other = await post(`${server.url}/echo`, key, { a: 2 });
  assert.equal(other.status, 422);
  assert.equal(JSON.parse(other.text).status, 422);
  assert.equal(runs.get(`"${key}"`), 1);
});

test('no key: 400, unless the route makes it optional; a malformed key: 400', async () => {
  const none = await post(`${server.url}/echo`, undefined, { a: 1 });
  assert.equal(none.status, 400);
  assert.match(none.headers.get('content-type'), /problem\+json/);
  const bad = await post(`${server.url}/echo`, undefined, { a: 1 }, { 'Idempotency-Key': 'not-a-string' });
  assert.equal(bad.status, 400);
  const optional = await post(`${server.url}/optional`, undefined, {});
  assert.equal(optional.status, 200);
  assert.deepStrictEqual(JSON.parse(optional.text), { keyed: false });
});

for (const mode of modes) test(`[${mode}] a route that throws: 500, the key is released and the retry runs`, async () => {
  // A 60 s lease and a 2 s wait: only a released key lets the retry run.
  const made = await makeApp(pool, { providerUrl, lease: 60000, wait: 2000, mode });
  const long = await listen(made.app);
  const key = freshKey(`http-throw-${mode}`);
  try {
    const failed = await post(`${long.url}/echo`, key, { fail: true });
    assert.equal(failed.status, 500);
    const retry = await post(`${long.url}/echo`, key, { fail: true });
    assert.equal(retry.status, 500);
    assert.equal(made.runs.get(`"${key}"`), 2);
  } finally {
    await long.close();
  }
  const { rows } = await pool.query("SELECT status FROM idem.my_records WHERE key = $1", [key]);
  assert.notEqual(rows[0]?.status, 'completed');
  // A 4xx is recorded and replayed.
  const { url, runs: counted } = serverOf(mode);
  const key4 = freshKey(`http-4xx-${mode}`);
  assert.equal((await post(`${url}/echo`, key4, { status: 409 })).status, 409);
  const replay = await post(`${url}/echo`, key4, { status: 409 });
  assert.equal(replay.status, 409);
  assert.equal(replay.headers.get('idempotent-replayed'), 'true');
  assert.equal(counted.get(`"${key4}"`), 1);
});

test('SIGKILL after the external call and its checkpoint, before complete: the retry resumes from the checkpoint, one charge', async () => {
  const key = freshKey('http-kill');
  const env = { PROVIDER_URL: providerUrl, LEASE_MS: '2000', PORT: '0' };
  const first = start([appJs], env, /listening (\d+)/);
  const url = `http://127.0.0.1:${(await first.ready)[1]}`;
  const pending = post(`${url}/charges`, key, { amount: 700 }, { 'X-Test-Pause-After-Checkpoint': '60000' })
    .then(() => 'answered', () => 'dropped');
  await first.waitFor(/pause after-checkpoint/);
  first.child.kill('SIGKILL');
  assert.equal(await pending, 'dropped');
  assert.equal((await providerStats()).keys[key].charges, 1);
  const second = start([appJs], env, /listening (\d+)/);
  try {
    const url2 = `http://127.0.0.1:${(await second.ready)[1]}`;
    const retry = await post(`${url2}/charges`, key, { amount: 700 });
    assert.equal(retry.status, 201);
    const stats = await providerStats();
    assert.equal(stats.keys[key].charges, 1);
    assert.equal(stats.keys[key].requests, 1, 'the retry reused the checkpoint instead of calling the provider');
    const { rows } = await pool.query('SELECT charge FROM app.orders WHERE key = $1', [key]);
    assert.equal(rows.length, 1);
    assert.equal(JSON.parse(retry.text).charge, rows[0].charge);
  } finally {
    second.child.kill();
  }
});

for (const mode of modes) test(`[${mode}] a slow route is kept alive by the heartbeat past two leases; a retry meanwhile waits and replays`, async () => {
  const made = await makeApp(pool, { providerUrl, lease: 1000, wait: 10000, mode });
  const slow = await listen(made.app);
  try {
    const key = freshKey(`http-slow-${mode}`);
    const first = post(`${slow.url}/echo`, key, { sleep: 2600 });
    await sleep(1500);
    const retry = await post(`${slow.url}/echo`, key, { sleep: 2600 });
    const answer = await first;
    assert.equal(answer.status, 200);
    assert.equal(retry.status, 200);
    assert.equal(retry.headers.get('idempotent-replayed'), 'true');
    assert.equal(retry.text, answer.text);
    assert.equal(made.runs.get(`"${key}"`), 1);
  } finally {
    await slow.close();
  }
});

test('[lease] a stalled holder whose lease lapsed is refused (IK412, 409) and the new holder\'s response stands', async () => {
  const one = makePool('main', 1);
  const stalledApp = await makeApp(one, { providerUrl, lease: 1000, wait: 5000, holdable: true, mode: 'lease' });
  const freshApp = await makeApp(pool, { providerUrl, lease: 1000, wait: 10000, mode: 'lease' });
  const stalled = await listen(stalledApp.app);
  const fresh = await listen(freshApp.app);
  try {
    const key = freshKey('http-stale');
    const old = post(`${stalled.url}/echo`, key, { hold: true });
    while (!stalledApp.gates.has(key)) await sleep(20);
    await sleep(1500);   // past its 1 s lease, with no heartbeat
    const taken = await post(`${fresh.url}/echo`, key, { hold: true });
    assert.equal(taken.status, 200);
    assert.equal(taken.headers.get('idempotent-replayed'), null);
    stalledApp.gates.get(key)();
    const refused = await old;
    assert.equal(refused.status, 409);
    assert.equal(JSON.parse(refused.text).title, 'StaleTokenError');
    assert.ok(refused.headers.get('retry-after'));
    const retry = await post(`${fresh.url}/echo`, key, { hold: true });
    assert.equal(retry.headers.get('idempotent-replayed'), 'true');
    assert.equal(retry.text, taken.text);
  } finally {
    await stalled.close();
    await fresh.close();
    await one.end();
  }
});
