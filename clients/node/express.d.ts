// Types of @idem/node/express (express.js).
import type { Pool } from 'pg';
import type { RequestHandler, Request } from 'express';
import type { Step } from './index.js';

export interface IdempotencyOptions {
  /** Answer 400 to a request without Idempotency-Key (default true); false: run it without idem. */
  required?: boolean;
  /** Lease in milliseconds (default 30000). */
  lease?: number;
  /** How long a retry waits for a request in flight before 409 with Retry-After, in milliseconds (default 5000). */
  wait?: number;
  /** Response headers recorded and replayed (default ["content-type", "location"]). */
  headers?: string[];
  /** Record 5xx responses too (default false: a 5xx or a thrown error releases the key). */
  recordServerErrors?: boolean;
  /** A prefix of the key per client (for example the authenticated user), so clients never share keys. */
  scope?: (req: Request) => string | Promise<string>;
  onHeartbeatError?: (err: Error) => void;
  /**
   * 'transaction' (default): the claim, the route's writes through req.idem.client and the response in
   * one transaction, one commit; for routes whose work is all in PostgreSQL.  'lease': the claim
   * commits first and a heartbeat extends it; for routes that call other services (req.idem.checkpoint).
   */
  mode?: 'transaction' | 'lease';
}

export function idempotency(pool: Pool, options?: IdempotencyOptions): RequestHandler;
export function parseSfString(value: string): string | undefined;

declare global {
  namespace Express {
    interface Request {
      /** Set by idempotency() for the request that runs: checkpoint, recovery, client. */
      idem?: Step;
    }
  }
}
