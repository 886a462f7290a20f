// express.js: an Express middleware for the Idempotency-Key header (IETF
// draft-ietf-httpapi-idempotency-key-header-07) on once(): the first request
// with a key runs the route and its response is recorded with idem.complete,
// in the transaction of req.idem.client; a retry gets that response back
// with "Idempotent-Replayed: true".
//
// By default (mode 'transaction') the claim, the route's writes through
// req.idem.client and the response commit in one transaction on one pooled
// connection: for routes whose work is all in PostgreSQL.  A route that
// calls other services and needs checkpoints says mode: 'lease'.

import { onceDetailed, IdemError } from './index.js';

// The header's value as a structured-field string (RFC 8941 sf-string):
// "..." of printable ASCII with \" and \\ escapes; undefined if malformed.
export function parseSfString(value) {
  const m = /^[ ]*"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"[ ]*$/.exec(value);
  return m ? m[1].replace(/\\(["\\])/g, '$1') : undefined;
}

// A response thrown out of once() so that the key is released, then sent.
class Unrecorded extends Error {
  constructor(response) {
    super('response not recorded');
    this.response = response;
  }
}

function problem(res, status, title, detail, headers = {}) {
  res.status(status).set({ 'Content-Type': 'application/problem+json', ...headers })
    .send(JSON.stringify({ type: 'about:blank', title, status, detail }));
}

// Buffer what the route writes instead of sending it; resolves to the
// response when the route ends it.
function capture(res) {
  const original = { write: res.write, end: res.end };
  const chunks = [];
  const add = (chunk, encoding) => {
    if (chunk != null && typeof chunk !== 'function') {
      chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk, typeof encoding === 'string' ? encoding : 'utf8'));
    }
  };
  const done = new Promise((resolve) => {
    res.write = (chunk, encoding, cb) => {
      add(chunk, encoding);
      (typeof encoding === 'function' ? encoding : cb)?.();
      return true;
    };
    res.end = (chunk, encoding, cb) => {
      add(chunk, encoding);
      resolve({ status: res.statusCode, body: Buffer.concat(chunks) });
      (typeof encoding === 'function' ? encoding : typeof chunk === 'function' ? chunk : cb)?.();
      return res;
    };
  });
  const restore = () => Object.assign(res, original);
  return { done, restore };
}

/**
 * idempotency(pool, options): the middleware.  Put it after express.json()
 * on the routes that take an Idempotency-Key.
 */
export function idempotency(pool, options = {}) {
  const {
    required = true,
    lease = 30000,
    wait = 5000,
    headers: replayHeaders = ['content-type', 'location'],
    recordServerErrors = false,
    scope,
    onHeartbeatError,
    mode = 'transaction',
  } = options;
  if (mode !== 'transaction' && mode !== 'lease') throw new TypeError(`idem: mode must be 'transaction' or 'lease', not ${mode}`);
  return async function idempotencyKey(req, res, next) {
    const header = req.get('Idempotency-Key');
    if (header === undefined) {
      if (!required) return next();
      return problem(res, 400, 'Idempotency-Key is missing', 'this operation needs an Idempotency-Key header');
    }
    const raw = parseSfString(header);
    if (raw === undefined || raw === '') {
      return problem(res, 400, 'Idempotency-Key is malformed',
        'the Idempotency-Key header must be a structured-field string, such as "8e03978e-40d5-43e8-bc93-6894a57f9324"');
    }
    const key = scope ? `${await scope(req)}\u001f${raw}` : raw;
    // The fingerprint: jsonb compares it as canonical JSON (key order and
    // white space never matter).
    const request = { method: req.method, path: req.baseUrl + req.path, body: req.body ?? null };
    let outcome;
    let firstBody;
    try {
      outcome = await onceDetailed(pool, { key, request, lease, wait, onHeartbeatError, mode }, async (step) => {
        req.idem = step;
        const { done, restore } = capture(res);
        next();
        const { status, body } = await done;
        restore();
        const stored = {};
        for (const name of replayHeaders) {
          const value = res.getHeader(name);
          if (value !== undefined) stored[name] = value;
        }
        const utf8 = body.toString('utf8');
        const response = Buffer.from(utf8, 'utf8').equals(body)
          ? { status, headers: stored, body: utf8 }
          : { status, headers: stored, body: body.toString('base64'), base64: true };
        if (status >= 500 && !recordServerErrors) throw new Unrecorded({ status, body });
        firstBody = body;   // sent below with the route's own headers, still on res
        return response;
      });
    } catch (err) {
      if (err instanceof Unrecorded) return res.end(err.response.body);
      if (err instanceof IdemError) {
        // IK412 can come after the route wrote its headers: drop them (or,
        // already on the wire, the connection) rather than send them with
        // an error.
        if (res.headersSent) return res.destroy();
        for (const name of res.getHeaderNames()) res.removeHeader(name);
        const retry = err.httpStatus === 409 ? { 'Retry-After': String(err.retryAfter ?? 1) } : {};
        return problem(res, err.httpStatus, err.name, err.message, retry);
      }
      return next(err);
    }
    if (!outcome.replayed) return res.end(firstBody);
    const { status, headers = {}, body = '', base64 } = outcome.result;
    res.status(status).set(headers).set('Idempotent-Replayed', 'true');
    return res.end(Buffer.from(body, base64 ? 'base64' : 'utf8'));
  };
}
