/*-------------------------------------------------------------------------
 *
 * keylock.h
 *		Serialise first calls on one idempotency key.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_KEYLOCK_H
#define IDEM_KEYLOCK_H

#include "postgres.h"

#include "storage/lock.h"
#include "utils/timestamp.h"

/*
 * A bounded wait: until deadline, set by idem.wait_timeout or by a lower
 * lock_timeout (by_lock_timeout), whose value timeout_ms the "key in use"
 * error quotes; 0 means do not wait at all.  IdemWaitStart fills it in.
 */
typedef struct IdemWait
{
	TimestampTz deadline;
	int			timeout_ms;
	bool		by_lock_timeout;
} IdemWait;

/* A poll's pause between two looks, doubling up to max_ms. */
typedef struct IdemBackoff
{
	int			sleep_ms;
	int			max_ms;
} IdemBackoff;

/* What a read-only transaction refuses to write for a key. */
typedef enum IdemWriteKind
{
	IDEM_WRITE_FIRST_CALL,		/* the record of idempotent_call's first call */
	IDEM_WRITE_CLAIM,			/* a claim of idem.claim */
	IDEM_WRITE_HOLDER			/* a holder's complete, checkpoint, extend, release */
} IdemWriteKind;

extern void IdemWaitStart(IdemWait *wait, TimestampTz now, int wait_timeout_ms);
extern bool IdemWaitIsOver(const IdemWait *wait, TimestampTz now);
extern void IdemBackoffSleep(IdemBackoff *backoff, TimestampTz until);
extern void IdemCheckWritable(text *key, IdemWriteKind kind);
extern void IdemKeyLockAcquire(LOCKTAG *tag, Oid owner, text *key,
							   const IdemWait *wait);
extern void IdemKeyLockRelease(const LOCKTAG *tag);
extern void IdemWaitForWriter(TransactionId xid, text *key, const IdemWait *wait);
extern void IdemReportKeyInUse(text *key, const IdemWait *wait);

#endif							/* IDEM_KEYLOCK_H */
