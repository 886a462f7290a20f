// helpers.js: connections to the clusters test.sh started, and small HTTP helpers.
import pg from 'pg';
import { spawn } from 'node:child_process';

const env = process.env;
export const targets = {
  main: { host: env.IDEM_TEST_HOST, port: Number(env.IDEM_TEST_PORT) },
  bouncer: { host: env.IDEM_TEST_BOUNCER_HOST, port: Number(env.IDEM_TEST_BOUNCER_PORT) },
  arbiter: { host: env.IDEM_TEST_ARBITER_HOST, port: Number(env.IDEM_TEST_ARBITER_PORT) },
};

export function makePool(target = 'main', max = 10, settings = {}) {
  const pool = new pg.Pool({ ...targets[target], user: 'postgres', database: 'postgres', max, ...settings });
  pool.on('error', () => {});
  return pool;
}

let counter = 0;
/** A key no other test (or earlier run on the same cluster) uses. */
export const freshKey = (name) => `${name}-${process.pid}-${Date.now()}-${counter++}`;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Listen on 127.0.0.1 on a free port; resolves to { url, close }. */
export function listen(app) {
  return new Promise((resolve) => {
    const server = app.listen(0, '127.0.0.1', () => {
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        close: () => new Promise((done) => { server.closeAllConnections(); server.close(done); }),
      });
    });
  });
}

/** POST JSON (text as given) with an optional Idempotency-Key; resolves to { status, headers, text }. */
export async function post(url, key, body, headers = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...(key === undefined ? {} : { 'Idempotency-Key': `"${key}"` }), ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

// Start a node program; resolves when a line of its output matches ready.
export function start(args, env, ready) {
  const child = spawn(process.execPath, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const waitFor = (re) => new Promise((resolve, reject) => {
    const check = () => { const m = re.exec(out); if (m) { resolve(m); return true; } return false; };
    if (check()) return;
    child.stdout.on('data', () => check());
    child.on('exit', (code) => reject(new Error(`${args[0]} exited with ${code}: ${out}`)));
  });
  child.stdout.on('data', (chunk) => { out += chunk; });
  return { child, waitFor, ready: waitFor(ready) };
}
