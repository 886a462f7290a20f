// consumer.js: exactly-once processing of a batch of stream or queue records
// (Kinesis, SQS, Kafka, ...) on idem, one key per record.
//
// processBatch: the work is an SQL function; every record's
// idem.idempotent_call runs in one statement, so the batch is one round trip
// and one commit.  processBatchExternal: the work happens outside the
// database; the batch's keys are claimed in one statement (one synchronous
// commit), the handler runs per claimed key, and the outcomes are recorded
// with idem.complete in one more statement or transaction (one more synchronous
// commit).
//
// Both resolve only after the batch committed, and reject with BatchError
// when some records failed (the others are committed): the caller writes the
// broker's checkpoint after a resolved call and never after a rejected one,
// so a failed record is read again, and its retry replays every record that
// succeeded.

import {
  autocommit, brokenBy, idemError, interval, recordCheckpoint, IdemError, InUseBackoff, RequestMismatchError, KeyInUseError,
} from './index.js';

/** Some records of a batch failed; the others committed.  results[i] holds each record's outcome or error. */
export class BatchError extends Error {
  constructor(results) {
    const failed = results.filter((r) => r.error !== undefined);
    super(`${failed.length} of ${results.length} records failed; the others were committed: ${failed[0].error?.message}`,
      { cause: failed[0].error });
    this.name = 'BatchError';
    this.results = results;
    this.failed = failed;
  }
}

const asJson = (value) => JSON.parse(JSON.stringify(value ?? null));

function keysOf(records, key) {
  if (!Array.isArray(records)) throw new TypeError('idem: records must be an array');
  if (typeof key !== 'function') throw new TypeError('idem: options.key must be a function of a record');
  return records.map((record, i) => {
    const k = key(record, i);
    if (typeof k !== 'string') throw new TypeError(`idem: the key of record ${i} is not a string`);
    return k;
  });
}

function settle(results) {
  if (results.some((r) => r.error !== undefined)) throw new BatchError(results);
  return results;
}

// One statement: the function scan of unnest ... WITH ORDINALITY feeds the
// calls in the records' order (no sort is planned), and a key met again
// later in the statement replays the outcome the same statement recorded.
// The function's name is resolved once, in an InitPlan: a bare
// $3::regprocedure would parse it again for every record (a third of the
// statement's time at 2,000 records).
const BATCH_CALL = `SELECT idem.idempotent_call(u.k, (SELECT $3::regprocedure), u.a) AS outcome, idem.last_call_replayed() AS replayed
  FROM unnest($1::text[], $2::jsonb[]) WITH ORDINALITY AS u(k, a, n) ORDER BY u.n`;
const ONE_CALL = 'SELECT idem.idempotent_call($1, $3::regprocedure, $2::jsonb) AS outcome, idem.last_call_replayed() AS replayed';

/**
 * Run fn (an SQL function taking one jsonb, named as a regprocedure) once per
 * record key, all in one transaction.  Resolves to [{ key, outcome, replayed }]
 * in the records' order after the commit; rejects with BatchError if some
 * records failed (the others committed).
 */
export async function processBatch(pool, records, { key, fn, arg = (record) => record } = {}) {
  if (typeof fn !== 'string') throw new TypeError("idem: options.fn must name an SQL function, e.g. 'app.apply(jsonb)'");
  const keys = keysOf(records, key);
  if (keys.length === 0) return [];
  const args = records.map((record, i) => JSON.stringify(arg(record, i) ?? null));
  const client = await pool.connect();
  let lost;
  try {
    // In autocommit the statement is its own transaction: one round trip, one commit.
    try {
      const { rows } = await client.query(BATCH_CALL, [keys, args, fn]);
      return rows.map((row, i) => ({ key: keys[i], outcome: row.outcome, replayed: row.replayed }));
    } catch (err) {
      lost = brokenBy(err);
      if (lost) throw err;
    }
    // Something failed and the statement rolled back: again record by record,
    // each behind a savepoint, so that the records that succeed commit and
    // only the failed ones are left for the batch's retry.
    const results = [];
    try {
      await client.query('BEGIN');
      for (let i = 0; i < keys.length; i++) {
        await client.query('SAVEPOINT idem_record');
        try {
          const { rows: [row] } = await client.query(ONE_CALL, [keys[i], args[i], fn]);
          await client.query('RELEASE SAVEPOINT idem_record');
          results.push({ key: keys[i], outcome: row.outcome, replayed: row.replayed });
        } catch (err) {
          if (brokenBy(err)) throw err;
          await client.query('ROLLBACK TO SAVEPOINT idem_record');
          results.push({ key: keys[i], error: idemError(err) });
        }
      }
      await client.query('COMMIT');
    } catch (err) {
      lost = brokenBy(err);
      if (!lost) await client.query('ROLLBACK').catch(() => {});
      throw idemError(err);
    }
    return settle(results);
  } finally {
    client.release(lost);
  }
}

// Run work(client) in a transaction of its own on a pooled connection.
async function inTransaction(pool, work) {
  const client = await pool.connect();
  let lost;
  try {
    await client.query('BEGIN');
    const value = await work(client);
    await client.query('COMMIT');
    return value;
  } catch (err) {
    lost = brokenBy(err);
    if (!lost) await client.query('ROLLBACK').catch(() => {});
    throw idemError(err);
  } finally {
    client.release(lost);
  }
}

// The claims of a batch in one statement, in autocommit: one round trip, one
// synchronous commit.  set_config(..., true) lasts until the end of the
// statement's own transaction; claim's lease argument is computed from its
// result, so that it runs before each claim whatever plan is chosen (the
// planner pulls the subquery up into that argument).
const CLAIM_ALL = `SELECT c.state, c.token, c.outcome, c.recovery_point, c.recovery_data
  FROM (SELECT set_config('idem.wait_timeout', '0', true) AS nowait) AS s,
       unnest($1::text[], $2::jsonb[]) WITH ORDINALITY AS u(k, r, n),
       LATERAL idem.claim(u.k, u.r, CASE s.nowait WHEN '0' THEN $3::interval END) AS c
 ORDER BY u.n`;

// Claim every key in one transaction that never waits for another holder:
// all or none, so a key held elsewhere (another consumer's batch, a crashed
// consumer's lease) leaves this batch holding nothing while it pauses.
async function claimAll(pool, keys, requests, leaseMs, waitMs) {
  const backoff = new InUseBackoff(waitMs);
  for (;;) {
    try {
      return (await autocommit(pool, CLAIM_ALL, [keys, requests, interval(leaseMs)])).rows;
    } catch (err) {
      if (!(err instanceof KeyInUseError) || backoff.expired) throw err;
    }
    await backoff.wait();
  }
}

// JSON text with the keys of every object sorted: requests compare as jsonb
// values do, whatever the order of their keys.
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

// Run tasks with at most `limit` of them at a time.
async function mapLimit(items, limit, task) {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await task(items[i], i);
    }
  });
  await Promise.all(workers);
}

const COMPLETE_ALL = `SELECT count(*) FROM unnest($1::text[], $2::bigint[], $3::jsonb[]) AS u(k, t, o),
  LATERAL idem.complete(u.k, u.t, u.o) AS c`;
const RELEASE_ALL = `SELECT count(*) FROM unnest($1::text[], $2::bigint[]) AS u(k, t), LATERAL idem.release(u.k, u.t) AS r`;
// Both in one statement, for a batch without persist: one round trip, one commit.
const FINISH_ALL = `SELECT (${COMPLETE_ALL}) AS completed,
  (SELECT count(*) FROM unnest($4::text[], $5::bigint[]) AS v(k, t), LATERAL idem.release(v.k, v.t) AS r) AS released`;

/**
 * Run handler(record, step) once per record key for work outside the
 * database, on the lease API.  The batch's distinct keys are claimed in one
 * transaction; the handlers of the keys to run run (at most `concurrency` at
 * a time); their results are recorded with idem.complete in one transaction,
 * with persist(client, done) if given, and the keys of failed handlers are
 * released.  Resolves to [{ key, outcome, replayed }] in the records' order;
 * rejects with BatchError if some handlers failed (the others committed).
 */
export async function processBatchExternal(pool, records, options, handler) {
  const {
    key, request = (record) => record, lease = 30000, wait = 10000, concurrency = 8, persist, onHeartbeatError,
  } = options ?? {};
  if (typeof handler !== 'function') throw new TypeError('idem: processBatchExternal(pool, records, options, handler) needs handler');
  const keys = keysOf(records, key);
  if (keys.length === 0) return [];
  const requests = records.map((record, i) => JSON.stringify(request(record, i) ?? null));

  // One claim per distinct key, taken by its first record.  A later record
  // with the key and another request is refused as idem would refuse it.
  const first = new Map();
  const results = new Array(records.length);
  for (let i = 0; i < keys.length; i++) {
    const j = first.get(keys[i]);
    if (j === undefined) first.set(keys[i], i);
    else if (canonical(JSON.parse(requests[j])) !== canonical(JSON.parse(requests[i]))) {
      results[i] = {
        key: keys[i],
        error: new RequestMismatchError({ code: 'IK422', message: `idempotency key "${keys[i]}" was already used for a different request` }),
      };
    }
  }
  const owners = [...first.values()];
  const rows = await claimAll(pool, owners.map((i) => keys[i]), owners.map((i) => requests[i]), lease, wait);

  const byKey = new Map();
  const toRun = [];
  owners.forEach((i, n) => {
    const row = rows[n];
    if (row.state === 'replay') {
      byKey.set(keys[i], { key: keys[i], outcome: row.outcome, replayed: true });
    } else {
      toRun.push({
        index: i, key: keys[i], token: String(row.token),
        recovery: row.recovery_point == null ? null : { point: row.recovery_point, data: row.recovery_data },
      });
    }
  });

  // The heartbeat extends the running keys' leases every third of the lease,
  // in one statement.  If a key was taken over (IK412) the statement fails
  // for all: the keys are then extended one by one, and a lost key's step is
  // aborted and left out of later beats, so that it cannot starve the others.
  const running = new Set(toRun);
  for (const task of toRun) task.controller = new AbortController();
  const extend = (tasks) => autocommit(pool,
    'SELECT count(*) FROM unnest($1::text[], $2::bigint[]) AS u(k, t), LATERAL idem.extend(u.k, u.t, $3::interval) AS e',
    [tasks.map((t) => t.key), tasks.map((t) => t.token), interval(lease)]);
  const beat = async () => {
    const live = [...running];
    try {
      await extend(live);
    } catch (err) {
      if (err?.code !== 'IK412') { onHeartbeatError?.(err); return; }
      for (const task of live) {
        try {
          await extend([task]);
        } catch (e) {
          if (e?.code === 'IK412') {
            running.delete(task);
            task.controller.abort(e);
          }
          onHeartbeatError?.(e);
        }
      }
    }
  };
  let beating = null;
  const timer = setInterval(() => {
    if (beating || running.size === 0) return;
    beating = beat().catch((err) => onHeartbeatError?.(err)).finally(() => { beating = null; });
  }, lease / 3);
  timer.unref?.();

  const done = [];
  const failed = [];
  try {
    await mapLimit(toRun, concurrency, async (task) => {
      const step = {
        key: task.key,
        token: Number(task.token),
        recovery: task.recovery,
        signal: task.controller.signal,
        async checkpoint(point, data = null) {
          task.recovery = step.recovery = await recordCheckpoint(pool, task.key, task.token, point, data);
        },
      };
      try {
        task.outcome = asJson(await handler(records[task.index], step));
        done.push(task);
      } catch (err) {
        task.error = idemError(err);
        failed.push(task);
      } finally {
        running.delete(task);
      }
    });
  } finally {
    clearInterval(timer);
    if (beating) await beating;
  }

  // Outcomes and releases in one transaction, one commit.  If it fails (a
  // lease lapsed and another holder took a key: IK412), again key by key
  // behind savepoints, so that only the stale keys are left out.
  done.sort((a, b) => a.index - b.index);
  // tasks is never empty.
  const finish = async (client, tasks) => {
    if (persist) await persist(client, tasks.map((t) => ({ record: records[t.index], key: t.key, outcome: t.outcome })));
    await client.query(COMPLETE_ALL, [tasks.map((t) => t.key), tasks.map((t) => t.token), tasks.map((t) => JSON.stringify(t.outcome))]);
  };
  try {
    if (persist && done.length > 0) {
      await inTransaction(pool, async (client) => {
        await finish(client, done);
        if (failed.length > 0) await client.query(RELEASE_ALL, [failed.map((t) => t.key), failed.map((t) => t.token)]);
      });
    } else if (done.length + failed.length > 0) {
      await autocommit(pool, FINISH_ALL, [done.map((t) => t.key), done.map((t) => t.token),
        done.map((t) => JSON.stringify(t.outcome)), failed.map((t) => t.key), failed.map((t) => t.token)]);
    }
  } catch (err) {
    if (!(err instanceof IdemError)) {
      // persist or the connection failed: give every key back, so that the
      // batch's retry runs at once (with each key's checkpoint).
      const all = [...done, ...failed];
      await autocommit(pool, RELEASE_ALL, [all.map((t) => t.key), all.map((t) => t.token)]).catch(() => {});
      throw err;
    }
    await inTransaction(pool, async (client) => {
      for (const task of done) {
        await client.query('SAVEPOINT idem_record');
        try {
          await finish(client, [task]);
          await client.query('RELEASE SAVEPOINT idem_record');
        } catch (e) {
          if (brokenBy(e)) throw e;
          await client.query('ROLLBACK TO SAVEPOINT idem_record');
          task.error = idemError(e);
        }
      }
      for (const task of failed) {
        await client.query('SAVEPOINT idem_record');
        await client.query('SELECT idem.release($1, $2)', [task.key, task.token])
          .then(() => client.query('RELEASE SAVEPOINT idem_record'), () => client.query('ROLLBACK TO SAVEPOINT idem_record'));
      }
    });
  }
  for (const task of [...done, ...failed]) {
    byKey.set(task.key, task.error === undefined
      ? { key: task.key, outcome: task.outcome, replayed: false }
      : { key: task.key, error: task.error });
  }

  // Every record gets its key's result; a duplicate inside the batch counts as a replay.
  for (let i = 0; i < keys.length; i++) {
    if (results[i] !== undefined) continue;
    const r = byKey.get(keys[i]);
    results[i] = first.get(keys[i]) === i || r.error !== undefined ? r : { key: r.key, outcome: r.outcome, replayed: true };
  }
  return settle(results);
}
