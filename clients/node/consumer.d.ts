// Types of @idem/node/consumer (consumer.js).
import type { Pool, PoolClient } from 'pg';
import type { Json, IdemError } from './index.js';

/** One record's result: its outcome (recorded now or replayed), or the error that left it for the batch's retry. */
export type RecordResult =
  | { key: string; outcome: Json; replayed: boolean; error?: undefined }
  | { key: string; error: Error; outcome?: undefined; replayed?: undefined };

/** Some records of a batch failed; the others committed.  Do not checkpoint past the batch: read it again. */
export class BatchError extends Error {
  readonly results: RecordResult[];
  readonly failed: RecordResult[];
}

export interface BatchOptions<R> {
  /** The record's idempotency key (a business key: see README, "Exactly-once message processing"). */
  key: (record: R, index: number) => string;
  /** The SQL function that applies one record, taking one jsonb: 'app.apply_event(jsonb)'. */
  fn: string;
  /** Its argument (default: the record itself), sent as JSON. */
  arg?: (record: R, index: number) => unknown;
}

/** Run fn once per record key, the whole batch in one transaction; resolves after the commit. */
export function processBatch<R>(pool: Pool, records: R[], options: BatchOptions<R>): Promise<Array<{ key: string; outcome: Json; replayed: boolean }>>;

export interface RecordStep {
  readonly key: string;
  /** The fencing token of this record's claim. */
  readonly token: number;
  /** The last checkpoint of an earlier holder of the key (it crashed or failed), or null. */
  recovery: { point: string; data: Json } | null;
  /** Aborted when the batch's heartbeat finds this record's key lost (IK412). */
  readonly signal: AbortSignal;
  /** Record a recovery point for this key, committed at once. */
  checkpoint(point: string, data?: unknown): Promise<void>;
}

export interface ExternalBatchOptions<R> {
  key: (record: R, index: number) => string;
  /** What the key stands for (default: the record); another request under the key is IK422. */
  request?: (record: R, index: number) => unknown;
  /** Lease of the batch's claims in ms (default 30000), extended every third of it while handlers run. */
  lease?: number;
  /** How long to retry claiming when a key is held elsewhere, in ms (default 10000); then KeyInUseError. */
  wait?: number;
  /** Most handlers running at once (default 8). */
  concurrency?: number;
  /** Writes of the application, in the transaction that records the outcomes. */
  persist?: (client: PoolClient, done: Array<{ record: R; key: string; outcome: Json }>) => Promise<void>;
  onHeartbeatError?: (err: Error) => void;
}

/** Run handler once per record key for work outside the database; resolves after the outcomes committed. */
export function processBatchExternal<R, T>(pool: Pool, records: R[], options: ExternalBatchOptions<R>,
  handler: (record: R, step: RecordStep) => Promise<T> | T): Promise<Array<{ key: string; outcome: Json; replayed: boolean }>>;

export type { IdemError };
