// bench.js: records per second through a Kinesis shard consumer (kinesalite,
// PostgreSQL) with @idem/node/consumer against the same consumer without it.
// Run by bench/stream/run, which starts kinesalite and the cluster.
//
//   node bench/stream/bench.js OUT_DIR EVENTS ROUNDS SIZES VARIANTS
//
// Variants (each the same shard loop: GetRecords of SIZE, process, write the
// checkpoint to PostgreSQL):
//   plain          at-least-once: bench_stream.apply(jsonb) for every record in
//                  one statement (one round trip, one commit); duplicates are
//                  applied twice
//   idem           processBatch: idem.idempotent_call of the same function for
//                  every record in one statement; duplicates replayed
//   plain-external at-least-once work outside the database (an in-process
//                  handler), then one INSERT of the batch's results
//   idem-external  processBatchExternal: claims, the same handler, completes
//                  with the same INSERT (persist)
//
// Each run consumes a fresh consumer group from the start of the stream, so
// idem's keys are new (first calls, plus the stream's duplicates); the
// variants of one batch size run in lockstep, a batch each in turn.  Prints
// one line per run, writes runs.csv and exits 1 if a run's effects are wrong:
// idem variants one per event, plain variants one per record.
import { writeFileSync, appendFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { processBatch, processBatchExternal } from '../../clients/node/consumer.js';
import { kinesisClient, createStream, eventStream, produce, shardConsumer, CHECKPOINT_DDL } from '../../clients/node/test/stream.js';

// pg and the AWS SDK come from clients/node's packages (its devDependencies).
const pg = createRequire(new URL('../../clients/node/package.json', import.meta.url))('pg');
const [out, eventsArg, roundsArg, sizesArg, variantsArg] = process.argv.slice(2);
const EVENTS = Number(eventsArg);
const ROUNDS = Number(roundsArg);
const SIZES = sizesArg.split(',').map(Number);
const VARIANTS = variantsArg.split(',');
const pool = new pg.Pool({ max: 8 });
const kinesis = kinesisClient(process.env.BENCH_KINESIS);

await pool.query(`
  CREATE SCHEMA IF NOT EXISTS bench_stream;
  CREATE TABLE IF NOT EXISTS bench_stream.ledger (
    id bigserial PRIMARY KEY, run text NOT NULL, event text NOT NULL, amount int, charge text);
  CREATE OR REPLACE FUNCTION bench_stream.apply(e jsonb) RETURNS jsonb LANGUAGE sql AS $$
    INSERT INTO bench_stream.ledger (run, event, amount) VALUES (e ->> 'run', e ->> 'id', (e ->> 'amount')::int)
    RETURNING jsonb_build_object('effect', id) $$;
  ${CHECKPOINT_DDL};`);

const stream = `bench-${process.pid}`;
const shard = await createStream(kinesis, stream);
const events = eventStream(EVENTS);
const seqs = await produce(kinesis, stream, events);
// Batch size 1 reads one record per GetRecords: a shorter stretch keeps its runs short.
// A whole number of batches, so that no batch reaches past the stretch.
const stretch = (size) => {
  const target = size === 1 ? events.length / 16 : size === 10 ? events.length / 2 : events.length;
  return Math.min(events.length, Math.ceil(target / size) * size);
};
console.log(`stream: ${EVENTS} events as ${events.length} records; batch sizes ${SIZES.join(',')}; variants ${VARIANTS.join(',')}; ${ROUNDS} round(s)`);

const work = (record) => ({ charge: `ch-${record.data.id}` });   // the outside work: in process, no I/O

const processors = {
  plain: (run) => async (records) => {
    await pool.query(`SELECT bench_stream.apply(u.a) FROM unnest($1::jsonb[]) WITH ORDINALITY AS u(a, n) ORDER BY u.n`,
      [records.map((r) => JSON.stringify({ run, ...r.data }))]);
    return records.map(() => ({ replayed: false }));
  },
  idem: (run) => (records) => processBatch(pool, records, {
    key: (r) => `${run}:${r.data.id}`, fn: 'bench_stream.apply(jsonb)', arg: (r) => ({ run, ...r.data }),
  }),
  'plain-external': (run) => async (records) => {
    const done = records.map((r) => ({ record: r, outcome: work(r) }));
    await insertCharges(pool, run, done);
    return records.map(() => ({ replayed: false }));
  },
  'idem-external': (run) => (records) => processBatchExternal(pool, records, {
    key: (r) => `${run}:${r.data.id}`, request: (r) => r.data, persist: (client, done) => insertCharges(client, run, done),
  }, (record) => work(record)),
};

async function insertCharges(db, run, done) {
  await db.query(`INSERT INTO bench_stream.ledger (run, event, amount, charge)
    SELECT $1, e ->> 'id', (e ->> 'amount')::int, c FROM unnest($2::jsonb[], $3::text[]) AS u(e, c)`,
  [run, done.map((d) => JSON.stringify(d.record.data)), done.map((d) => d.outcome.charge)]);
}

writeFileSync(`${out}/runs.csv`, 'round,variant,batch,records,events,effects,seconds,rps,process_seconds,process_rps,ok\n');
let status = 0;
for (let round = 1; round <= ROUNDS; round++) {
  for (const size of SIZES) {
    // The variants go through the stream in lockstep, one batch each in turn
    // (the order reversed at every turn), so that a change in the machine's
    // load hits them alike; each one's time is the sum of its own steps.
    const n = stretch(size);
    const lanes = [];
    for (const variant of VARIANTS) {
      const run = `${variant}-${size}-${round}-${process.pid}`;
      const process_ = processors[variant](run);
      const lane = { variant, run, seconds: 0, busy: 0, done: false };
      lane.consumer = await shardConsumer({
        kinesis, pool, stream, shard, grp: run, limit: size, until: seqs[n - 1],
        process: async (records) => {
          const t = process.hrtime.bigint();
          const r = await process_(records);
          lane.busy += Number(process.hrtime.bigint() - t) / 1e9;
          return r;
        },
      });
      lanes.push(lane);
    }
    for (let turn = 0; lanes.some((l) => !l.done); turn++) {
      for (const lane of turn % 2 ? [...lanes].reverse() : lanes) {
        if (lane.done) continue;
        const t = process.hrtime.bigint();
        lane.done = await lane.consumer.step();
        lane.seconds += Number(process.hrtime.bigint() - t) / 1e9;
      }
    }
    const distinct = new Set(events.slice(0, n).map((e) => e.id)).size;
    for (const { variant, run, seconds, busy } of lanes) {
      const { rows: [c] } = await pool.query('SELECT count(*)::int AS effects, count(DISTINCT event)::int AS events FROM bench_stream.ledger WHERE run = $1', [run]);
      const wanted = variant.startsWith('idem') ? distinct : n;
      const ok = c.effects === wanted && c.events === distinct;
      if (!ok) status = 1;
      const line = [round, variant, size, n, distinct, c.effects, seconds.toFixed(3), (n / seconds).toFixed(0), busy.toFixed(3), (n / busy).toFixed(0), ok ? 1 : 0];
      appendFileSync(`${out}/runs.csv`, `${line.join(',')}\n`);
      console.log(`round ${round} batch ${String(size).padStart(3)} ${variant.padEnd(14)} ${String(n).padStart(5)} records ${String((n / seconds).toFixed(0)).padStart(7)} rec/s end to end, ${String((n / busy).toFixed(0)).padStart(7)} rec/s processing; effects ${c.effects} (want ${wanted})${ok ? '' : '  WRONG'}`);
    }
  }
}
await pool.end();
kinesis.destroy();
process.exit(status);
