// stream.js: the parts of the stream tests and of bench/stream: a Kinesis
// client for kinesalite, a producer that sends business events with
// duplicates, and a shard consumer that checkpoints in PostgreSQL after each
// committed batch.
import {
  KinesisClient, CreateStreamCommand, DescribeStreamCommand, PutRecordsCommand, GetShardIteratorCommand,
  GetRecordsCommand,
} from '@aws-sdk/client-kinesis';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { BatchError } from '../consumer.js';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A Kinesis client for kinesalite at endpoint (HTTP/1.1: kinesalite does not speak HTTP/2). */
export function kinesisClient(endpoint) {
  // The pinned SDK warns on every process that Node 20 will not be supported
  // by its releases after January 2027; the test output has no use for it.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  return new KinesisClient({
    endpoint,
    region: 'us-east-1',
    credentials: { accessKeyId: 'AKIDSTREAMTEST', secretAccessKey: 'streamTestSecret' },
    requestHandler: new NodeHttpHandler(),
    maxAttempts: 10,
  });
}

/** Create a stream of one shard and wait until it is active; resolves to its shard id. */
export async function createStream(kinesis, name) {
  await kinesis.send(new CreateStreamCommand({ StreamName: name, ShardCount: 1 }));
  for (;;) {
    const { StreamDescription: d } = await kinesis.send(new DescribeStreamCommand({ StreamName: name }));
    if (d.StreamStatus === 'ACTIVE') return d.Shards[0].ShardId;
    await sleep(20);
  }
}

// A small deterministic generator, so that every run sends the same stream.
function lcg(seed) {
  let s = seed >>> 0;
  return () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 2 ** 32; };
}

/**
 * The records a producer sends for `events` business events: every event
 * once, and a fifth of them again as new records (a retry after a time-out),
 * half of those twice more; each copy right behind the first (1 to 3 records
 * later) or far from it (300 to 1500 records later).
 */
export function eventStream(events, seed = 25) {
  const rand = lcg(seed);
  const placed = [];
  for (let i = 0; i < events; i++) {
    const event = { id: `evt-${i}`, account: `acct-${i % 97}`, amount: 1 + (i * 37) % 500 };
    placed.push({ pos: i, event });
    if (i % 5 !== 0) continue;
    const copies = i % 10 === 0 ? 2 : 1;
    for (let c = 0; c < copies; c++) {
      const far = rand() < 0.5;
      placed.push({ pos: i + (far ? 300 + rand() * 1200 : 1 + rand() * 2) + 0.001 * (c + 1), event });
    }
  }
  placed.sort((a, b) => a.pos - b.pos);
  return placed.map((p) => p.event);
}

/** Send the events in order (PutRecords of up to 500); resolves to the records' sequence numbers. */
export async function produce(kinesis, stream, events) {
  const seqs = [];
  for (let i = 0; i < events.length; i += 500) {
    const chunk = events.slice(i, i + 500);
    const out = await kinesis.send(new PutRecordsCommand({
      StreamName: stream,
      Records: chunk.map((e) => ({ Data: Buffer.from(JSON.stringify(e)), PartitionKey: e.account })),
    }));
    if (out.FailedRecordCount) throw new Error(`PutRecords: ${out.FailedRecordCount} records failed`);
    for (const r of out.Records) seqs.push(r.SequenceNumber);
  }
  return seqs;
}

/** The checkpoint table: one sequence number per (consumer group, shard), as a Kinesis lease table keeps it. */
export const CHECKPOINT_DDL = `CREATE TABLE IF NOT EXISTS stream_checkpoints (
  grp text, shard text, seq numeric NOT NULL, PRIMARY KEY (grp, shard))`;

async function readCheckpoint(pool, grp, shard) {
  const { rows } = await pool.query('SELECT seq::text FROM stream_checkpoints WHERE grp = $1 AND shard = $2', [grp, shard]);
  return rows[0]?.seq;
}

// Move the checkpoint forward only: a consumer that lags behind another on
// the same shard must not send the group back.
async function writeCheckpoint(pool, grp, shard, seq) {
  await pool.query(`INSERT INTO stream_checkpoints VALUES ($1, $2, $3)
    ON CONFLICT (grp, shard) DO UPDATE SET seq = GREATEST(stream_checkpoints.seq, EXCLUDED.seq)`, [grp, shard, seq]);
}

/**
 * A consumer of one shard from the group's checkpoint up to the record with
 * sequence number `until`.  step() reads a batch, processes it
 * (process(records) resolves after its commit), then writes the checkpoint,
 * and resolves to true once `until` is checkpointed.  A batch that fails with
 * BatchError is processed again (the same records) after a pause, and not
 * checkpointed before it succeeds.  `on(event, info)` hears 'batch',
 * 'failed', 'committed' and 'checkpointed'.
 */
export async function shardConsumer({ kinesis, pool, stream, shard, grp, limit, process, until, on = () => {}, pauseMs = 0, retryMs = 20 }) {
  const from = await readCheckpoint(pool, grp, shard);
  let finished = from !== undefined && BigInt(from) >= BigInt(until);
  let iterator;
  if (!finished) {
    ({ ShardIterator: iterator } = await kinesis.send(new GetShardIteratorCommand({
      StreamName: stream, ShardId: shard,
      ...(from === undefined ? { ShardIteratorType: 'TRIM_HORIZON' } : { ShardIteratorType: 'AFTER_SEQUENCE_NUMBER', StartingSequenceNumber: from }),
    })));
  }
  return {
    async step() {
      while (!finished) {
        const out = await kinesis.send(new GetRecordsCommand({ ShardIterator: iterator, Limit: limit }));
        iterator = out.NextShardIterator;
        if (out.Records.length === 0) { await sleep(20); continue; }
        const records = out.Records.map((r) => ({ seq: r.SequenceNumber, data: JSON.parse(Buffer.from(r.Data).toString()) }));
        const last = records.at(-1).seq;
        on('batch', { records });
        for (let attempt = 1; ; attempt++) {
          try {
            on('committed', { records, results: await process(records), attempt });
            break;
          } catch (err) {
            if (!(err instanceof BatchError)) throw err;
            await on('failed', { records, error: err, attempt });
            await sleep(retryMs);
          }
        }
        if (pauseMs) await sleep(pauseMs);
        await writeCheckpoint(pool, grp, shard, last);
        on('checkpointed', { seq: last });
        finished = BigInt(last) >= BigInt(until);
        break;
      }
      return finished;
    },
  };
}

/** Run shardConsumer's steps until `until` is checkpointed. */
export async function consumeShard(options) {
  const consumer = await shardConsumer(options);
  while (!(await consumer.step()));
}
