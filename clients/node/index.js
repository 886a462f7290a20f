// index.js: once(), idempotent work in application code on idem's lease API
// (idem.claim / checkpoint / extend / complete / release), with a pg.Pool.
//
// Two modes.  'lease' (the default of once()) is for work outside the
// database: the claim commits on its own before fn runs, a heartbeat extends
// it, checkpoints commit at once, and complete commits with step.client's
// writes.  'transaction' is for work that is all in PostgreSQL: one pooled
// connection, one transaction holding the claim, fn's writes and complete,
// one commit; a crash before it rolls everything back, claim included.
//
// Either way a caller claims with idem.wait_timeout = 0, so that one finding
// the key held never sits on a pooled connection the holder may need to
// finish: it gives the connection back and tries again after a pause, up to
// a bounded total wait.  A holder uses one connection at a time.
//
// The claim and the complete are one round trip each: prepared statements
// sent as a pipeline, or, on a pool that cannot keep prepared statements,
// several statements in one simple-protocol query (values as SQL literals).

// SQLSTATEs of idem and the HTTP status each stands for.
const HTTP_STATUS = { IK400: 400, IK409: 409, IK412: 409, IK422: 422, IK503: 503, IK508: 500 };

/** An error raised by idem (SQLSTATE IKxxx), with the HTTP status it maps to. */
export class IdemError extends Error {
  constructor(cause, message = cause.message) {
    super(message, { cause });
    this.name = this.constructor.name;
    this.code = cause.code;
    this.httpStatus = HTTP_STATUS[cause.code] ?? 500;
    this.detail = cause.detail;
    this.hint = cause.hint;
  }
}
/** IK400: the key is empty or too long. */
export class InvalidKeyError extends IdemError {}
/** IK409: another holder kept the key past the wait; retry later. */
export class KeyInUseError extends IdemError {
  constructor(cause, message, retryAfter = 1) {
    super(cause, message);
    this.retryAfter = retryAfter;
  }
}
/** IK412: this call's token no longer holds the key (its lease lapsed and another caller took over). */
export class StaleTokenError extends IdemError {}
/** IK422: the key was used for a different request. */
export class RequestMismatchError extends IdemError {}
/** IK503: arbiter mode, DynamoDB unavailable; nothing ran. */
export class ArbiterUnavailableError extends IdemError {}

const CLASSES = {
  IK400: InvalidKeyError, IK409: KeyInUseError, IK412: StaleTokenError,
  IK422: RequestMismatchError, IK503: ArbiterUnavailableError,
};

/** The typed error for a database error with an IK SQLSTATE; any other error unchanged. */
export function idemError(err) {
  if (err instanceof IdemError || typeof err?.code !== 'string' || !err.code.startsWith('IK')) return err;
  return new (CLASSES[err.code] ?? IdemError)(err);
}

// interval, brokenBy, autocommit, InUseBackoff and recordCheckpoint are also
// used by consumer.js; they are not part of the documented API.
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
export const interval = (ms) => `${Math.round(ms)} milliseconds`;
const MODES = ['lease', 'transaction'];

// A string as an SQL literal, read the same whatever
// standard_conforming_strings says: backslashes only inside E'...'.
function literal(text) {
  const quoted = text.replaceAll("'", "''");
  return text.includes('\\') ? `E'${quoted.replaceAll('\\', '\\\\')}'` : `'${quoted}'`;
}

// The key as text; null stays null (idem answers IK400).  A NUL character
// can travel in neither a query text nor a parameter, and no key may hold one.
function keyText(key) {
  if (key == null) return null;
  const text = String(key);
  if (text.includes('\u0000')) {
    throw new InvalidKeyError({ code: 'IK400', message: 'idempotency key must not contain NUL characters' });
  }
  return text;
}

// The key as an SQL literal; NULL stays NULL.
function keyLiteral(key) {
  const text = keyText(key);
  return text === null ? 'NULL' : literal(text);
}

const CLAIM_COLUMNS = 'state, token, outcome, recovery_point, recovery_data';

// Is err a broken connection rather than an SQL error?  (Then the
// connection goes back to the pool to be destroyed.)
export const brokenBy = (err) => (err?.code === undefined ? err ?? new Error('idem: connection lost') : undefined);

// Run one statement on a pooled connection held only for it.
export async function autocommit(pool, text, values) {
  const client = await pool.connect();
  let broken;
  try {
    return await client.query(text, values);
  } catch (err) {
    broken = brokenBy(err);
    throw idemError(err);
  } finally {
    client.release(broken);
  }
}

// The pauses between attempts at a key in use: 25 ms doubling to 500 ms,
// jittered, the last one ending at the deadline, so that a caller waits the
// whole bound and no longer.
export class InUseBackoff {
  constructor(waitMs) {
    this.deadline = Date.now() + waitMs;
    this.pause = 25;
  }

  get expired() {
    return Date.now() >= this.deadline;
  }

  async wait() {
    await sleep(Math.max(0, Math.min(this.pause * (0.5 + Math.random()), this.deadline - Date.now())));
    this.pause = Math.min(this.pause * 2, 500);
  }
}

// A holder keeps a pooled connection across fn (mode 'transaction': all of
// it; mode 'lease': from step.client's first query).  So that fn may still
// use the pool itself beside step.client (a query at a time), at most
// max - 1 holders per pool have such a connection at once: one is always
// left over, and every holder waiting for it gets it in turn.
const holderSlots = new WeakMap();

function slotsOf(pool) {
  let slots = holderSlots.get(pool);
  if (slots === undefined) {
    slots = { free: Math.max(1, (pool.options?.max ?? 10) - 1), waiting: [] };
    holderSlots.set(pool, slots);
  }
  return slots;
}

// Wait for a holder's slot of pool (holding no connection meanwhile).
function takeSlot(pool) {
  const slots = slotsOf(pool);
  if (slots.free > 0) {
    slots.free -= 1;
    return undefined;
  }
  return new Promise((resolve) => slots.waiting.push(resolve));
}

// Give a holder's slot back, to the longest waiter if any.
function giveSlot(pool) {
  const slots = slotsOf(pool);
  const next = slots.waiting.shift();
  if (next) next();
  else slots.free += 1;
}

// A pooled connection for a holder, once it has its slot.
async function connectHolder(pool) {
  await takeSlot(pool);
  try {
    return await pool.connect();
  } catch (err) {
    giveSlot(pool);
    throw err;
  }
}

// Give a holder's connection and its slot back.
function releaseHolder(pool, conn, broken) {
  conn.release(broken);
  giveSlot(pool);
}

// The statements of every first call, prepared once per connection: a call
// sends Bind and Execute for each statement of its round trip and one Sync
// (a pipeline of the extended query protocol), and the server skips the
// parsing, analysis and planning that the simple query protocol repeats for
// every query.  The claim's settings are set_config calls in a FROM
// subquery whose results the lease argument depends on, so no plan can
// call the claim first; is_local makes them end with the transaction (mode
// 'lease': the implicit one of the round trip).
const STATEMENTS = {
  begin: 'BEGIN',
  commit: 'COMMIT',
  claim: `SELECT ${CLAIM_COLUMNS} FROM (SELECT set_config('idem.wait_timeout', '0', true) AS no_wait) AS s,
    LATERAL idem.claim($1, $2::jsonb, CASE WHEN s.no_wait IS NOT NULL THEN $3::interval END)`,
  claim_held: `SELECT ${CLAIM_COLUMNS} FROM (SELECT set_config('idem.wait_timeout', '0', true) AS no_wait,
    set_config('idle_in_transaction_session_timeout', $1, true) AS idle) AS s,
    LATERAL idem.claim($2, $3::jsonb, CASE WHEN s.no_wait IS NOT NULL AND s.idle IS NOT NULL THEN $4::interval END)`,
  complete: 'SELECT idem.complete($1, $2, $3::jsonb)',
};
// The names carry a version, to be raised with any change to a text above:
// behind a pooler, connections may hold the statements of another version.
const statementName = (step) => `idem_node1_${step}`;

// A pooler that moves a client between server connections (pgbouncer in
// transaction pooling before 1.21, or without max_prepared_statements)
// loses prepared statements, and so does DEALLOCATE: the server then says
// there is no such statement (26000) or, where another client prepared one
// of the same name, a duplicate (42P05).  A statement whose result type
// changed under it (ALTER EXTENSION UPDATE) fails its revalidation (0A000,
// told apart by the routine, whatever the server's language).  The pool is
// turned over to the simple query protocol for good on the first of them.
const simpleProtocolPools = new WeakSet();

// The connections that have parsed idem's statements.  A connection parses
// all of them at its first use, so that a Bind of any that succeeds shows
// the server connection has the others too: a transaction begun with one
// can end with the prepared complete, where an error would cost the work
// done in it.  Every error that says a statement is lost thus comes at the
// start of a transaction, before anything ran.
const parsedOn = new WeakSet();

// Whether a call on conn of pool sends prepared statements: node-postgres's
// JavaScript client (the native one has no protocol-level access), not in
// its own pipeline mode (which refuses custom query classes), on a pool that
// has not lost any.
const usesPrepared = (pool, conn) =>
  !simpleProtocolPools.has(pool) && !conn.pipeline && typeof conn.connection?.parse === 'function';

// Note a lost prepared statement; true if err says one was lost.
function noteLostStatement(pool, err) {
  const lost = err?.code === '26000' || err?.code === '42P05' ||
    (err?.code === '0A000' && err.routine === 'RevalidateCachedQuery');
  if (lost) simpleProtocolPools.add(pool);
  return lost;
}

// One round trip of prepared statements, given to client.query as a
// Submittable (the interface pg-cursor uses): steps are [statement,
// values].  Resolves to the text fields of the last row returned, if any.
class PreparedRoundTrip {
  constructor(steps) {
    this.steps = steps;
    this.fields = undefined;
    this.done = new Promise((resolve, reject) => {
      this.callback = (err, fields) => (err ? reject(err) : resolve(fields));
    });
  }

  submit(connection) {
    connection.stream.cork?.();
    try {
      if (!parsedOn.has(connection)) {
        for (const [step, text] of Object.entries(STATEMENTS)) connection.parse({ name: statementName(step), text });
        parsedOn.add(connection);
      }
      for (const [step, values] of this.steps) {
        connection.bind({ statement: statementName(step), values });
        connection.execute();
      }
      connection.sync();
    } finally {
      connection.stream.uncork?.();
    }
    return null;
  }

  handleDataRow(msg) {
    this.fields = msg.fields;
  }

  handleReadyForQuery() {
    this.callback(null, this.fields);
  }

  handleError(err) {
    this.callback(err);
  }

  handleRowDescription() {}
  handleCommandComplete() {}
  handleEmptyQuery() {}
  handlePortalSuspended() {}
}

// Send steps on conn as one round trip of prepared statements.
async function sendPrepared(conn, steps) {
  const roundTrip = new PreparedRoundTrip(steps);
  conn.query(roundTrip);
  return roundTrip.done;
}

// A jsonb column's text as a value; SQL NULL as null.
const parseJson = (text) => (text == null ? null : JSON.parse(text));

// Claim the key with idem.wait_timeout = 0, pausing outside the pool between
// attempts.  'lease': in the implicit transaction of one query, committed
// when it returns.  'transaction': after BEGIN, on a connection that is
// returned with the claim uncommitted (unless it replays), with the
// transaction's idle_in_transaction_session_timeout set to the lease, so
// that a holder that vanishes without closing its connection frees the key
// after a lease, as a lapsed lease would.  Prepared statements where the
// pool keeps them (BEGIN and the claim, one round trip); else one
// simple-protocol query, where the settings are SET LOCAL.
async function claim(pool, key, requestText, leaseMs, waitMs, inTransaction) {
  const idle = String(Math.round(leaseMs));
  const steps = inTransaction
    ? [['begin', []], ['claim_held', [idle, keyText(key), requestText, interval(leaseMs)]]]
    : [['claim', [keyText(key), requestText, interval(leaseMs)]]];
  const backoff = new InUseBackoff(waitMs);
  for (;;) {
    const client = inTransaction ? await connectHolder(pool) : await pool.connect();
    const prepared = usesPrepared(pool, client);
    let row;
    try {
      if (prepared) {
        const [state, token, outcome, recoveryPoint, recoveryData] = await sendPrepared(client, steps);
        row = { state, token, outcome: parseJson(outcome), recovery_point: recoveryPoint, recovery_data: parseJson(recoveryData) };
      } else {
        const results = await client.query(simpleClaim(key, requestText, leaseMs, inTransaction));
        [row] = results[results.length - 1].rows;
      }
    } catch (err) {
      const broken = brokenBy(err);
      // An error ends the implicit transaction of 'lease' by itself.
      if (!broken && inTransaction) await client.query('ROLLBACK').catch(() => {});
      if (inTransaction) releaseHolder(pool, client, broken);
      else client.release(broken);
      // Nothing ran: try again at once on the simple protocol.
      if (prepared && noteLostStatement(pool, err)) continue;
      if (err.code !== 'IK409' || backoff.expired) {
        if (err.code === 'IK409') {
          throw new KeyInUseError(err, `idempotency key "${key}" is still in use after waiting ${waitMs} ms`, 1);
        }
        throw idemError(err);
      }
      await backoff.wait();
      continue;
    }
    if (!inTransaction) {
      client.release();
      return { row };
    }
    if (row.state === 'replay') {
      // Nothing was written: the caller need not wait for the transaction's
      // end, but the connection goes back to the pool only after it.
      client.query('ROLLBACK').then(() => releaseHolder(pool, client), (err) => releaseHolder(pool, client, err));
      return { row };
    }
    return { row, client, prepared };
  }
}

// The claim as one simple-protocol query.
function simpleClaim(key, requestText, leaseMs, inTransaction) {
  const call = `SELECT ${CLAIM_COLUMNS} FROM idem.claim(${keyLiteral(key)}, ${literal(requestText)}::jsonb, '${interval(leaseMs)}'::interval)`;
  return inTransaction
    ? `BEGIN; SET LOCAL idem.wait_timeout = 0; SET LOCAL idle_in_transaction_session_timeout = ${Math.round(leaseMs)}; ${call}`
    : `SET LOCAL idem.wait_timeout = 0; ${call}`;
}

// Open step.client's transaction on conn; true if it began with a prepared
// statement (see parsedOn), false if on the simple protocol.
async function begin(pool, conn) {
  if (usesPrepared(pool, conn)) {
    try {
      await sendPrepared(conn, [['begin', []]]);
      return true;
    } catch (err) {
      // Nothing ran, BEGIN included: begin again on the simple protocol.
      if (!noteLostStatement(pool, err)) throw err;
    }
  }
  await conn.query('BEGIN');
  return false;
}

// Record outcomeText for the claim and commit, in one round trip on conn,
// whose transaction holds the claim or step.client's writes; prepared
// statements if the transaction began with one.
async function completeAndCommit(pool, conn, prepared, key, tokenText, outcomeText) {
  if (!prepared) {
    await conn.query(`SELECT idem.complete(${keyLiteral(key)}, ${tokenText}, ${literal(outcomeText)}::jsonb); COMMIT`);
    return;
  }
  try {
    await sendPrepared(conn, [['complete', [keyText(key), tokenText, outcomeText]], ['commit', []]]);
  } catch (err) {
    noteLostStatement(pool, err);
    throw err;
  }
}

// Watch a checked-out connection: the server may end it between queries
// (idle_in_transaction_session_timeout, pg_terminate_backend), and pg then
// emits 'error' on it, which must not go unheard.
function watch(conn, onLost) {
  conn.on('error', onLost);
  return () => conn.removeListener('error', onLost);
}

// Record a checkpoint in autocommit; returns it as a later holder reads it
// back (data as JSON).
export async function recordCheckpoint(pool, key, tokenText, point, data) {
  await autocommit(pool, 'SELECT idem.checkpoint($1, $2, $3, $4::jsonb)', [key, tokenText, point, JSON.stringify(data)]);
  return { point, data: JSON.parse(JSON.stringify(data)) };
}

// What both holders' steps share: step.signal, made when first read (most
// steps never read it, and an AbortController is not free on every call),
// and aborted with the reason the step lost its claim.
class Holder {
  constructor() {
    this._controller = null;
  }

  get signal() {
    this._controller ??= new AbortController();
    return this._controller.signal;
  }

  _abort(reason) {
    this._controller ??= new AbortController();
    this._controller.abort(reason);
  }
}

// The holder's side in mode 'lease': step.client's lazy transaction,
// checkpoints, and the heartbeat that extends the lease every third of it.
class Step extends Holder {
  constructor(pool, key, row, leaseMs, onHeartbeatError) {
    super();
    this.key = key;
    this.token = Number(row.token);
    this.recovery = row.recovery_point == null ? null : { point: row.recovery_point, data: row.recovery_data };
    this._pool = pool;
    this._tokenText = String(row.token);
    this._conn = null;
    this._prepared = false;
    this._unwatch = null;
    this._beating = null;
    this._stopped = false;
    this._timer = setInterval(() => this._beat(leaseMs, onHeartbeatError), leaseMs / 3);
    this._timer.unref?.();
    const step = this;
    /** The connection whose transaction complete joins: BEGIN on its first query. */
    this.client = {
      async query(...args) {
        return (await step._transaction()).query(...args);
      },
    };
  }

  async _transaction() {
    if (this._conn === null) {
      this._conn = (async () => {
        const conn = await connectHolder(this._pool);
        this._unwatch = watch(conn, (err) => this._abort(err));
        try {
          this._prepared = await begin(this._pool, conn);
        } catch (err) {
          this._giveBack(conn, err);
          throw err;
        }
        return conn;
      })();
    }
    return this._conn;
  }

  // Give step.client's connection and its holder's slot back.
  _giveBack(conn, broken) {
    this._unwatch();
    releaseHolder(this._pool, conn, broken);
  }

  _beat(leaseMs, onError) {
    if (this._beating || this._stopped) return;
    this._beating = (async () => {
      const conn = await this._pool.connect();
      if (this._stopped) { conn.release(); return; }
      let broken;
      const query = conn.query('SELECT idem.extend($1, $2, $3::interval)', [this.key, this._tokenText, interval(leaseMs)]);
      this._inQuery = query;
      try {
        await query;
      } catch (err) {
        broken = brokenBy(err);
        const typed = idemError(err);
        if (typed instanceof StaleTokenError) this._abort(typed);
        onError?.(typed);
      } finally {
        this._inQuery = null;
        conn.release(broken);
      }
    })().catch((err) => onError?.(err)).finally(() => { this._beating = null; });
  }

  // Stop the heartbeat; wait for an extend already sent (not for one still
  // waiting for a connection, which may never come while we hold ours).
  async _stop() {
    this._stopped = true;
    clearInterval(this._timer);
    if (this._inQuery) await this._inQuery.catch(() => {});
  }

  /** Stop the heartbeat: the lease then ends lease ms after the last extend (work that must not outlive it, or a test of a stalled holder). */
  stopHeartbeat() {
    clearInterval(this._timer);
  }

  /** Record a recovery point (autocommit: it survives a crash); the next holder after a lapse gets it as step.recovery. */
  async checkpoint(name, data = null) {
    if (this._conn !== null) {
      throw new Error('idem: checkpoint before the first step.client query (a checkpoint commits on its own, the transaction commits with complete)');
    }
    this.recovery = await recordCheckpoint(this._pool, this.key, this._tokenText, name, data);
  }

  // Record the outcome: in step.client's transaction if it was used, else on its own.
  async _complete(outcomeText) {
    await this._stop();
    if (this._conn === null) {
      await autocommit(this._pool, 'SELECT idem.complete($1, $2, $3::jsonb)', [this.key, this._tokenText, outcomeText]);
      return;
    }
    const conn = await this._conn;
    let broken;
    try {
      await completeAndCommit(this._pool, conn, this._prepared, this.key, this._tokenText, outcomeText);
    } catch (err) {
      broken = brokenBy(err);
      if (!broken) await conn.query('ROLLBACK').catch(() => {});
      throw idemError(err);
    } finally {
      this._conn = null;
      this._giveBack(conn, broken);
    }
  }

  // Undo step.client's transaction and give the key back (not after IK412:
  // the key is someone else's then).
  async _abandon(err) {
    await this._stop();
    if (this._conn !== null) {
      const conn = await this._conn.catch(() => null);
      this._conn = null;
      if (conn) {
        const failed = await conn.query('ROLLBACK').then(() => undefined, (e) => e);
        this._giveBack(conn, failed);
      }
    }
    if (!(idemError(err) instanceof StaleTokenError)) {
      await autocommit(this._pool, 'SELECT idem.release($1, $2)', [this.key, this._tokenText]).catch(() => {});
    }
  }
}

// The holder's side in mode 'transaction': the claim's connection, in the
// transaction that holds the uncommitted claim, is step.client from the
// start.  Other callers meet the uncommitted claim and back off; none can
// take the key over while the transaction is open, so the heartbeat only
// keeps the transaction from sitting idle for a whole lease.
class TransactionStep extends Holder {
  constructor(pool, conn, prepared, key, row, leaseMs, onHeartbeatError) {
    super();
    this.key = key;
    this._pool = pool;
    this._prepared = prepared;
    this.token = Number(row.token);
    this.recovery = row.recovery_point == null ? null : { point: row.recovery_point, data: row.recovery_data };
    this._conn = conn;
    this._tokenText = String(row.token);
    this._unwatch = watch(conn, (err) => this._abort(err));
    this._beating = null;
    this._done = false;
    this._timer = setInterval(() => this._beat(onHeartbeatError), leaseMs / 3);
    this._timer.unref?.();
    /** The connection in the claim's transaction; complete joins it and commits it. */
    this.client = { query: (...args) => conn.query(...args) };
  }

  // A query on the idle transaction: what resets the server's idle timer.
  _beat(onError) {
    if (this._beating || this._done) return;
    this._beating = this._conn.query('SELECT 1')
      .then(() => {}, (err) => onError?.(idemError(err)))
      .finally(() => { this._beating = null; });
  }

  /** Stop the heartbeat: the server then ends the transaction (rolling everything back) once it sits idle for a lease. */
  stopHeartbeat() {
    clearInterval(this._timer);
  }

  /** Not in mode 'transaction': the claim commits only with the outcome, so a checkpoint would be rolled back with it. */
  async checkpoint() {
    throw new Error("idem: step.checkpoint needs mode 'lease' (in mode 'transaction' nothing commits before complete, so a crash would roll the checkpoint back)");
  }

  // Give the connection and the holder's slot back, once.
  _end(broken) {
    this._done = true;
    clearInterval(this._timer);
    this._unwatch();
    releaseHolder(this._pool, this._conn, broken);
  }

  // Record the outcome and commit, in one round trip; on failure roll back.
  async _complete(outcomeText) {
    this._done = true;
    clearInterval(this._timer);
    let broken;
    try {
      await completeAndCommit(this._pool, this._conn, this._prepared, this.key, this._tokenText, outcomeText);
    } catch (err) {
      broken = brokenBy(err);
      if (!broken) broken = await this._conn.query('ROLLBACK').then(() => undefined, (e) => e);
      this._end(broken);
      this._conn = null;
      throw idemError(err);
    }
    this._end(undefined);
    this._conn = null;
  }

  // Roll back fn's writes and the claim with them: the key is free again.
  async _abandon() {
    if (this._conn === null) return;
    const failed = await this._conn.query('ROLLBACK').then(() => undefined, (e) => e);
    this._end(failed);
    this._conn = null;
  }
}

/**
 * Run fn once for key: replay the recorded result, or claim the key and run
 * fn(step), recording its result with complete.  Returns { result, replayed }.
 */
export async function onceDetailed(pool, options = {}, fn) {
  const { key, request = null, lease = 30000, wait = 10000, onHeartbeatError, mode = 'lease' } = options;
  if (typeof fn !== 'function') throw new TypeError('idem: once(pool, options, fn) needs fn');
  if (!MODES.includes(mode)) throw new TypeError(`idem: mode must be 'lease' or 'transaction', not ${mode}`);
  const inTransaction = mode === 'transaction';
  const { row, client, prepared } = await claim(pool, key, JSON.stringify(request ?? null), lease, wait, inTransaction);
  if (row.state === 'replay') return { result: row.outcome, replayed: true };
  const step = inTransaction
    ? new TransactionStep(pool, client, prepared, key, row, lease, onHeartbeatError)
    : new Step(pool, key, row, lease, onHeartbeatError);
  let result;
  try {
    // What the first caller gets is what a retry gets from jsonb.
    const text = JSON.stringify((await fn(step)) ?? null) ?? 'null';
    result = JSON.parse(text);
    await step._complete(text);
  } catch (err) {
    await step._abandon(err);
    throw idemError(err);
  }
  return { result, replayed: false };
}

/** Run fn once for key (see onceDetailed); returns the result, recorded or replayed. */
export async function once(pool, options, fn) {
  return (await onceDetailed(pool, options, fn)).result;
}
