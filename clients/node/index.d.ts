// Types of @idem/node (index.js).
import type { Pool, PoolClient, QueryResult, QueryResultRow } from 'pg';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface OnceOptions {
  /** The idempotency key (1 to idem.max_key_length characters). */
  key: string;
  /** What the key stands for; another request under the same key is IK422.  Compared as jsonb. */
  request?: unknown;
  /** Milliseconds the claim holds the key without a heartbeat (default 30000); extended every third of it. */
  lease?: number;
  /** Milliseconds to keep retrying a key another holder has, outside the pool, before KeyInUseError (default 10000). */
  wait?: number;
  /** Called with a heartbeat's error (a StaleTokenError also aborts step.signal). */
  onHeartbeatError?: (err: Error) => void;
  /**
   * 'lease' (default): the claim commits before fn runs; checkpoints; for work outside the database.
   * 'transaction': the claim, fn's writes through step.client and the outcome in one transaction on
   * one pooled connection, one commit; a crash before it leaves nothing; no checkpoints.
   */
  mode?: 'lease' | 'transaction';
}

export interface Step {
  readonly key: string;
  /** The fencing token of this claim. */
  readonly token: number;
  /** The last checkpoint of a holder whose lease lapsed, or null. */
  recovery: { point: string; data: Json } | null;
  /** Aborted when a heartbeat finds the key lost (IK412), or when step.client's connection is lost. */
  readonly signal: AbortSignal;
  /** Stop the heartbeat (work that must not outlive the lease, or a test of a stalled holder). */
  stopHeartbeat(): void;
  /** Record a recovery point, committed at once; call it before step.client's first query.  Mode 'lease' only (throws in 'transaction'). */
  checkpoint(name: string, data?: unknown): Promise<void>;
  /** A connection in a transaction ('lease': begun on its first query; 'transaction': the claim's); complete joins it and commits it. */
  readonly client: { query<R extends QueryResultRow = any>(text: string, values?: unknown[]): Promise<QueryResult<R>> };
}

export function once<T>(pool: Pool, options: OnceOptions, fn: (step: Step) => Promise<T> | T): Promise<T | Json>;
export function onceDetailed<T>(pool: Pool, options: OnceOptions, fn: (step: Step) => Promise<T> | T):
  Promise<{ result: T | Json; replayed: boolean }>;

export class IdemError extends Error {
  /** The SQLSTATE, IK400 ... IK508. */
  readonly code: string;
  /** The HTTP status it maps to. */
  readonly httpStatus: number;
  readonly detail?: string;
  readonly hint?: string;
  readonly cause: unknown;
}
/** IK400, 400. */
export class InvalidKeyError extends IdemError {}
/** IK409, 409: still in use after the wait; retry after retryAfter seconds. */
export class KeyInUseError extends IdemError { readonly retryAfter: number; }
/** IK412, 409: the lease lapsed and another caller holds or recorded the key; nothing was recorded. */
export class StaleTokenError extends IdemError {}
/** IK422, 422. */
export class RequestMismatchError extends IdemError {}
/** IK503, 503: arbiter mode, DynamoDB unavailable; nothing ran. */
export class ArbiterUnavailableError extends IdemError {}
/** The typed error for an IK SQLSTATE, any other error unchanged. */
export function idemError(err: unknown): unknown;

export type { PoolClient };
