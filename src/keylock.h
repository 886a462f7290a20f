/*-------------------------------------------------------------------------
 *
 * keylock.h
 *		Serialise first calls on one idempotency key.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_KEYLOCK_H
#define IDEM_KEYLOCK_H

#include "postgres.h"

#include "storage/lock.h"
#include "utils/timestamp.h"

/*
 * A bounded wait: until deadline, under idem.wait_timeout (milliseconds,
 * quoted in the "key in use" error; 0 means do not wait at all).
 */
typedef struct IdemWait
{
	TimestampTz deadline;
	int			wait_timeout_ms;
} IdemWait;

extern void IdemKeyLockAcquire(LOCKTAG *tag, Oid owner, text *key,
							   const IdemWait *wait);
extern void IdemKeyLockRelease(const LOCKTAG *tag);
extern void IdemWaitForWriter(TransactionId xid, text *key, const IdemWait *wait);
extern void IdemReportKeyInUse(text *key, int wait_timeout_ms);

#endif							/* IDEM_KEYLOCK_H */
