// stream_consumer.js: one consumer process of the stream tests, so that a
// test can kill it with SIGKILL.  It consumes a kinesalite shard through
// @idem/node/consumer until the last record is checkpointed, and prints one
// line per step: "batch N", "committed ran=R replayed=P", "checkpointed SEQ",
// "failed N", "done".
//
//   node test/stream_consumer.js '{"endpoint": ..., "stream": ..., "shard": ..., "grp": ...,
//     "limit": 100, "until": SEQ, "mode": "db" | "external", "scenario": ..., "pauseMs": 0,
//     "batchDelayMs": 0, "providerUrl": ..., "lease": 30000}'
import { processBatch, processBatchExternal } from '../consumer.js';
import { makePool, sleep } from './helpers.js';
import { kinesisClient, consumeShard } from './stream.js';

const cfg = JSON.parse(process.argv[2]);
const pool = makePool('main', 4);
const kinesis = kinesisClient(cfg.endpoint);
const say = (line) => process.stdout.write(`${line}\n`);
const key = (r) => `${cfg.scenario}:${r.data.id}`;

// Work inside PostgreSQL: stream_test.apply writes the ledger row.
const inDatabase = (records) => processBatch(pool, records, {
  key, fn: 'stream_test.apply(jsonb)', arg: (r) => ({ s: cfg.scenario, ...r.data }),
});

// Work outside: a charge at the fake provider (its own idempotency key is
// the record's key), a checkpoint with the charge, and the ledger row
// written with the outcomes.
const outside = (records) => processBatchExternal(pool, records, {
  key,
  request: (r) => r.data,
  lease: cfg.lease ?? 30000,
  wait: 60000,
  concurrency: 8,
  persist: async (client, done) => {
    await client.query(`INSERT INTO stream_test.ledger (scenario, event, amount, charge)
      SELECT $1, e ->> 'id', (e ->> 'amount')::int, c FROM unnest($2::jsonb[], $3::text[]) AS u(e, c)`,
    [cfg.scenario, done.map((d) => JSON.stringify(d.record.data)), done.map((d) => d.outcome.charge)]);
  },
}, async (record, step) => {
  if (step.recovery?.point === 'charged') return { charge: step.recovery.data.charge };
  const res = await fetch(`${cfg.providerUrl}/charge`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Idempotency-Key': step.key },
    body: JSON.stringify(record.data),
  });
  if (res.status !== 200) throw new Error(`provider answered ${res.status}`);
  const { charge } = await res.json();
  await step.checkpoint('charged', { charge });
  return { charge };
});

let batches = 0;
await consumeShard({
  kinesis, pool, stream: cfg.stream, shard: cfg.shard, grp: cfg.grp, limit: cfg.limit, until: cfg.until,
  pauseMs: cfg.pauseMs ?? 0,
  process: async (records) => {
    if (cfg.batchDelayMs) await sleep(cfg.batchDelayMs);
    return cfg.mode === 'external' ? outside(records) : inDatabase(records);
  },
  on: (event, info) => {
    if (event === 'batch') say(`batch ${++batches}`);
    if (event === 'failed') say(`failed ${info.error.failed.length}`);
    if (event === 'committed') {
      const ran = info.results.filter((r) => !r.replayed).length;
      say(`committed ran=${ran} replayed=${info.results.length - ran}`);
    }
    if (event === 'checkpointed') say(`checkpointed ${info.seq}`);
  },
});
say('done');
await pool.end();
kinesis.destroy();
