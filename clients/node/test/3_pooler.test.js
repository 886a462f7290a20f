// Through pgbouncer in transaction pooling, and arbiter mode with DynamoDB down.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { once, ArbiterUnavailableError } from '../index.js';
import { makePool, freshKey, listen, post, sleep } from './helpers.js';
import { makeApp } from './app.js';

test('through pgbouncer in transaction pooling (5 server connections, a pool of 20)', async () => {
  const pool = makePool('bouncer', 20);
  try {
    const made = await makeApp(pool, { providerUrl: 'http://127.0.0.1:9' });
    const server = await listen(made.app);
    try {
      const keys = Array.from({ length: 10 }, (_, i) => freshKey(`bouncer${i}`));
      const answers = await Promise.all(Array.from({ length: 60 }, (_, i) => post(`${server.url}/echo`, keys[i % 10], { sleep: 100 })));
      for (let i = 0; i < 60; i++) {
        assert.equal(answers[i].status, 200);
        assert.equal(answers[i].text, answers[i % 10].text);
      }
      for (const key of keys) assert.equal(made.runs.get(`"${key}"`), 1);
    } finally {
      await server.close();
    }
    // once() with step.client's writes and a checkpoint, through the pooler.
    const key = freshKey('bouncer-once');
    const runs = [];
    const fn = async (step) => {
      runs.push(1);
      await step.checkpoint('half', { ok: true });
      await step.client.query('INSERT INTO app.orders (key, charge, amount) VALUES ($1, $2, 1)', [key, 'ch_b']);
      await sleep(100);
      return { done: key };
    };
    const results = await Promise.all(Array.from({ length: 8 }, () => once(pool, { key, lease: 5000, wait: 30000 }, fn)));
    assert.equal(runs.length, 1);
    for (const r of results) assert.deepStrictEqual(r, { done: key });
    const { rows } = await pool.query('SELECT count(*)::int AS n FROM app.orders WHERE key = $1', [key]);
    assert.equal(rows[0].n, 1);
  } finally {
    await pool.end();
  }
});

test('arbiter mode with DynamoDB down: IK503, mapped to 503', async () => {
  const pool = makePool('arbiter', 5);
  try {
    let ran = 0;
    await assert.rejects(once(pool, { key: freshKey('arbiter') }, async () => { ran++; }),
      (err) => err instanceof ArbiterUnavailableError && err.code === 'IK503' && err.httpStatus === 503);
    assert.equal(ran, 0);
    const made = await makeApp(pool, { providerUrl: 'http://127.0.0.1:9' });
    const server = await listen(made.app);
    try {
      const key = freshKey('arbiter-http');
      const answer = await post(`${server.url}/echo`, key, { a: 1 });
      assert.equal(answer.status, 503);
      assert.equal(JSON.parse(answer.text).status, 503);
      assert.equal(made.runs.get(`"${key}"`), undefined);
    } finally {
      await server.close();
    }
  } finally {
    await pool.end();
  }
});
