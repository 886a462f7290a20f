// How the claim and the complete travel: statements prepared once per
// connection, sent as one pipeline per round trip; and the simple query
// protocol for good once a pool loses a prepared statement.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { once, onceDetailed } from '../index.js';
import { makePool, freshKey } from './helpers.js';

const main = makePool('main', 10);
after(() => main.end());

// The idem statements prepared on step.client's connection, with how many
// times each ran.
const preparedOn = async (step) => Object.fromEntries((await step.client.query(
  `SELECT name, generic_plans + custom_plans AS runs FROM pg_prepared_statements
    WHERE name LIKE 'idem\\_node1\\_%' ORDER BY name`)).rows.map((r) => [r.name, Number(r.runs)]));

// The claim's settings as fn sees them, and outside any call afterwards.
const SETTINGS = "SELECT current_setting('idem.wait_timeout') AS wait, current_setting('idle_in_transaction_session_timeout') AS idle";
const settingsOf = async (db) => (await db.query(SETTINGS)).rows[0];

test('a first call parses its statements once per connection and runs them prepared, with the claim\'s settings for its transaction only', async () => {
  const one = makePool('main', 1);
  try {
    await one.query('SELECT idem.last_call_replayed()');   // loads idem, which defines idem.wait_timeout
    const before = await settingsOf(one);
    const seen = [];
    for (let i = 0; i < 3; i++) {
      const result = await once(one, { key: freshKey('prepared-tx'), request: i, mode: 'transaction', lease: 7000 }, async (step) => {
        seen.push({ statements: await preparedOn(step), settings: await settingsOf(step.client) });
        return i;
      });
      assert.equal(result, i);
    }
    // The first call parsed all five; each ran as often as it was used.
    assert.deepStrictEqual(seen[0].statements,
      { idem_node1_begin: 1, idem_node1_claim: 0, idem_node1_claim_held: 1, idem_node1_commit: 0, idem_node1_complete: 0 });
    assert.deepStrictEqual(seen[2].statements,
      { idem_node1_begin: 3, idem_node1_claim: 0, idem_node1_claim_held: 3, idem_node1_commit: 2, idem_node1_complete: 2 });
    for (const { settings } of seen) assert.deepStrictEqual(settings, { wait: '0', idle: '7s' });
    assert.deepStrictEqual(await settingsOf(one), before);

    const key = freshKey('prepared-lease');
    let inside;
    await once(one, { key, mode: 'lease' }, async (step) => { inside = await preparedOn(step); });
    // step.client's transaction began with the prepared BEGIN, after the lease claim.
    assert.equal(inside.idem_node1_claim, 1);
    assert.equal(inside.idem_node1_begin, 4);
    assert.deepStrictEqual(await settingsOf(one), before);
    assert.equal((await onceDetailed(one, { key, mode: 'lease' }, async () => 'ran')).replayed, true);
  } finally {
    await one.end();
  }
});

test('a prepared statement lost under the pool (DEALLOCATE ALL) turns it to the simple protocol: the call still runs once and records its outcome', async () => {
  const one = makePool('main', 1);
  try {
    for (const mode of ['transaction', 'lease']) {
      await once(one, { key: freshKey(`before-loss-${mode}`), mode }, async () => 'prepared');
    }
    await one.query('DEALLOCATE ALL');
    const before = await settingsOf(one);
    for (const mode of ['transaction', 'lease']) {
      const key = freshKey(`after-loss-${mode}`);
      let runs = 0;
      let statements;
      let settings;
      const fn = async (step) => {
        runs++;
        statements = await preparedOn(step);
        settings = await settingsOf(step.client);
        return { mode };
      };
      assert.deepStrictEqual(await once(one, { key, mode, lease: 9000 }, fn), { mode });
      const again = await onceDetailed(one, { key, mode }, fn);
      assert.equal(runs, 1);
      assert.deepStrictEqual(again, { result: { mode }, replayed: true });
      assert.deepStrictEqual(statements, {}, 'the pool went on parsing statements after losing one');
      if (mode === 'transaction') assert.deepStrictEqual(settings, { wait: '0', idle: '9s' });
      assert.deepStrictEqual(await settingsOf(one), before);
    }
  } finally {
    await one.end();
  }
});

test('[lease] statements lost between the claim and step.client\'s first query: its transaction begins on the simple protocol, and the call completes', async () => {
  const one = makePool('main', 1);
  try {
    const key = freshKey('lost-in-fn');
    let runs = 0;
    const fn = async (step) => {
      runs++;
      await one.query('DEALLOCATE ALL');   // the pool's one connection, not yet step.client's
      const { rows: [r] } = await step.client.query('SELECT 41 + 1 AS n');
      return r.n;
    };
    assert.equal(await once(one, { key, mode: 'lease' }, fn), 42);
    assert.deepStrictEqual(await onceDetailed(one, { key, mode: 'lease' }, fn), { result: 42, replayed: true });
    assert.equal(runs, 1);
  } finally {
    await one.end();
  }
});

test('a pool whose connections already hold a statement of the same name falls back at its first call, which still runs once', async () => {
  const taken = makePool('main', 2);
  taken.on('connect', (client) => client.query('PREPARE idem_node1_begin AS SELECT 1').catch(() => {}));
  try {
    const key = freshKey('taken');
    let runs = 0;
    const fn = async () => ++runs;
    assert.equal(await once(taken, { key, mode: 'transaction' }, fn), 1);
    assert.equal(await once(taken, { key, mode: 'transaction' }, fn), 1);
    assert.equal(runs, 1);
    const { rows: [stored] } = await main.query('SELECT status, outcome FROM idem.my_records WHERE key = $1', [key]);
    assert.deepStrictEqual(stored, { status: 'completed', outcome: 1 });
  } finally {
    await taken.end();
  }
});

test('a prepared claim whose result type changed under it (as after an ALTER EXTENSION UPDATE that changes it) turns the pool to the simple protocol; the call still runs once', async () => {
  const db = `idem_retype_${process.pid}`;
  await main.query(`CREATE DATABASE ${db}`);
  const scratch = makePool('main', 1, { database: db });
  try {
    await scratch.query('CREATE EXTENSION idem');
    await once(scratch, { key: freshKey('retype-before'), mode: 'transaction' }, async () => 'prepared');
    // idem.claim's token becomes numeric: the prepared claim's result type changes.
    await scratch.query(`ALTER FUNCTION idem.claim(text, jsonb, interval) RENAME TO claim_bigint;
      CREATE FUNCTION idem.claim(key text, request jsonb, lease interval, OUT state text, OUT token numeric,
                                 OUT outcome jsonb, OUT recovery_point text, OUT recovery_data jsonb)
        LANGUAGE sql AS 'SELECT c.state, c.token::numeric, c.outcome, c.recovery_point, c.recovery_data
                           FROM idem.claim_bigint(key, request, lease) AS c'`);
    const key = freshKey('retype-after');
    let runs = 0;
    let statements;
    const fn = async (step) => {
      runs++;
      statements = await preparedOn(step);
      return runs;
    };
    assert.equal(await once(scratch, { key, mode: 'transaction' }, fn), 1);
    assert.deepStrictEqual(await onceDetailed(scratch, { key, mode: 'transaction' }, fn), { result: 1, replayed: true });
    assert.equal(runs, 1);
    // Still there, but the pool no longer runs them: the claim went on the simple protocol.
    assert.equal(statements.idem_node1_claim_held, 1);
  } finally {
    await scratch.end();
    await main.query(`DROP DATABASE ${db} WITH (FORCE)`);
  }
});

test('a pool of clients in node-postgres\'s pipeline mode (which refuses custom query classes) uses the simple protocol', async () => {
  const piped = makePool('main', 2, { pipeline: true });
  try {
    for (const mode of ['transaction', 'lease']) {
      const key = freshKey(`piped-${mode}`);
      let runs = 0;
      let statements;
      const fn = async (step) => {
        runs++;
        statements = await preparedOn(step);
        return { mode };
      };
      assert.deepStrictEqual(await once(piped, { key, mode }, fn), { mode });
      assert.deepStrictEqual(await onceDetailed(piped, { key, mode }, fn), { result: { mode }, replayed: true });
      assert.equal(runs, 1);
      assert.deepStrictEqual(statements, {});
    }
  } finally {
    await piped.end();
  }
});
