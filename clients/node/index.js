// index.js: once(), idempotent work in application code on idem's lease API
// (idem.claim / checkpoint / extend / complete / release), with a pg.Pool.
//
// A call claims the key in a short transaction of its own with
// idem.wait_timeout = 0, so that a caller finding the key held never sits on
// a pooled connection the holder may need to finish: it gives the connection
// back and tries again after a pause, up to a bounded total wait.  The holder
// uses one connection at a time: the claim's, then one for each checkpoint,
// then step.client's transaction, in which complete records the outcome.

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

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const interval = (ms) => `${Math.round(ms)} milliseconds`;

// Run one statement on a pooled connection held only for it.
async function autocommit(pool, text, values) {
  const client = await pool.connect();
  let broken;
  try {
    return await client.query(text, values);
  } catch (err) {
    broken = err.code === undefined ? err : undefined;   // not SQL: the connection may be gone
    throw idemError(err);
  } finally {
    client.release(broken);
  }
}

// Claim the key in a transaction of its own that never waits for another
// holder (wait_timeout 0), pausing outside the pool between attempts.
async function claim(pool, key, request, leaseMs, waitMs) {
  const deadline = Date.now() + waitMs;
  let pause = 25;
  for (;;) {
    const client = await pool.connect();
    let broken;
    try {
      await client.query("BEGIN; SELECT set_config('idem.wait_timeout', '0', true)");
      const { rows: [row] } = await client.query(
        'SELECT state, token, outcome, recovery_point, recovery_data FROM idem.claim($1, $2::jsonb, $3::interval)',
        [key, JSON.stringify(request ?? null), interval(leaseMs)]);
      await client.query('COMMIT');
      return row;
    } catch (err) {
      broken = err.code === undefined ? err : undefined;
      if (!broken) await client.query('ROLLBACK').catch(() => {});
      if (err.code !== 'IK409' || Date.now() >= deadline) {
        if (err.code === 'IK409') {
          throw new KeyInUseError(err, `idempotency key "${key}" is still in use after waiting ${waitMs} ms`,
            1);
        }
        throw idemError(err);
      }
    } finally {
      client.release(broken);
    }
    // The last pause ends at the deadline, so a caller waits the whole bound.
    await sleep(Math.max(0, Math.min(pause * (0.5 + Math.random()), deadline - Date.now())));
    pause = Math.min(pause * 2, 500);
  }
}

// The holder's side: step.client's lazy transaction, checkpoints, and the
// heartbeat that extends the lease every third of it.
class Step {
  constructor(pool, key, row, leaseMs, onHeartbeatError) {
    this.key = key;
    this.token = Number(row.token);
    this.recovery = row.recovery_point == null ? null : { point: row.recovery_point, data: row.recovery_data };
    this._pool = pool;
    this._tokenText = String(row.token);
    this._conn = null;
    this._controller = new AbortController();
    this.signal = this._controller.signal;
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
        const conn = await this._pool.connect();
        try {
          await conn.query('BEGIN');
        } catch (err) {
          conn.release(err);
          throw err;
        }
        return conn;
      })();
    }
    return this._conn;
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
        broken = err.code === undefined ? err : undefined;
        const typed = idemError(err);
        if (typed instanceof StaleTokenError) this._controller.abort(typed);
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
    await autocommit(this._pool, 'SELECT idem.checkpoint($1, $2, $3, $4::jsonb)',
      [this.key, this._tokenText, name, JSON.stringify(data)]);
    this.recovery = { point: name, data: JSON.parse(JSON.stringify(data)) };
  }

  // Record the outcome: in step.client's transaction if it was used, else on its own.
  async _complete(outcome) {
    await this._stop();
    const values = [this.key, this._tokenText, JSON.stringify(outcome)];
    if (this._conn === null) {
      await autocommit(this._pool, 'SELECT idem.complete($1, $2, $3::jsonb)', values);
      return;
    }
    const conn = await this._conn;
    let broken;
    try {
      await conn.query('SELECT idem.complete($1, $2, $3::jsonb)', values);
      await conn.query('COMMIT');
    } catch (err) {
      broken = err.code === undefined ? err : undefined;
      if (!broken) await conn.query('ROLLBACK').catch(() => {});
      throw idemError(err);
    } finally {
      this._conn = null;
      conn.release(broken);
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
        conn.release(failed);
      }
    }
    if (!(idemError(err) instanceof StaleTokenError)) {
      await autocommit(this._pool, 'SELECT idem.release($1, $2)', [this.key, this._tokenText]).catch(() => {});
    }
  }
}

/**
 * Run fn once for key: replay the recorded result, or claim the key and run
 * fn(step), recording its result with complete.  Returns { result, replayed }.
 */
export async function onceDetailed(pool, { key, request = null, lease = 30000, wait = 10000, onHeartbeatError } = {}, fn) {
  if (typeof fn !== 'function') throw new TypeError('idem: once(pool, options, fn) needs fn');
  const row = await claim(pool, key, request, lease, wait);
  if (row.state === 'replay') return { result: row.outcome, replayed: true };
  const step = new Step(pool, key, row, lease, onHeartbeatError);
  let result;
  try {
    // What the first caller gets is what a retry gets from jsonb.
    result = JSON.parse(JSON.stringify((await fn(step)) ?? null));
    await step._complete(result);
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
