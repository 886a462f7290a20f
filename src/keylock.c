/*-------------------------------------------------------------------------
 *
 * keylock.c
 *		Serialise first calls on one idempotency key.
 *
 * A first call must hold something that makes a concurrent first call on the
 * same (role, key) wait, from the moment it finds no record until its record
 * row exists.  From then on the uncommitted row itself makes others wait (they
 * wait for the writing transaction).  The "something" is a heavyweight
 * advisory lock on a hash of (role, key), released as soon as the row is
 * written: holding it to commit would use one shared lock-table entry per
 * call and exhaust max_locks_per_transaction in batch jobs.
 *
 * Every wait is bounded by idem.wait_timeout: the wait runs under a
 * lock_timeout no longer than what is left, and a timeout becomes the
 * "key in use" error.
 *
 * This file also keeps the list of keys whose function is running in this
 * backend, so that a nested call on the same key is an error instead of a
 * second execution or a self-deadlock.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "errcodes.h"
#include "key.h"
#include "keylock.h"
#include "stats.h"

/*
 * locktag_field4 of idem's advisory locks.  SQL advisory locks use 1 and 2,
 * so idem's never collide with an application's.
 */
#define IDEM_LOCK_CLASS	0x4944

/* Build the advisory lock tag of a (role, key). */
static void
KeyLockTag(LOCKTAG *tag, Oid owner, text *key)
{
	uint64		h = hash_bytes_extended((const unsigned char *) VARDATA_ANY(key),
										VARSIZE_ANY_EXHDR(key), owner);

	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 IDEM_LOCK_CLASS);
}

/* Milliseconds left until deadline, at least 1; 0 means it has passed. */
static int
MillisecondsLeft(TimestampTz deadline)
{
	long		ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);

	if (ms <= 0)
		return 0;
	return (int) Min(ms, (long) INT_MAX);
}

/*
 * Wait in the lock queue for the key lock (keytag) or for the end of a
 * transaction (xid), so that the waiter wakes the moment the holder lets go,
 * under a lock_timeout that ends at the deadline.  A lower lock_timeout set
 * by the caller still applies.  A timeout becomes the "key in use" error.
 */
static void
WaitBounded(const LOCKTAG *keytag, TransactionId xid, text *key,
			const IdemWait *wait)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	int			left = MillisecondsLeft(wait->deadline);
	int			nestlevel;
	char		timeout[32];

	if (wait->wait_timeout_ms == 0 || left == 0)
		IdemReportKeyInUse(key, wait->wait_timeout_ms);
	if (LockTimeout > 0 && LockTimeout < left)
		left = LockTimeout;
	snprintf(timeout, sizeof(timeout), "%d", left);

	IdemStatsWaitBegin();
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("lock_timeout", timeout, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	PG_TRY();
	{
		if (keytag != NULL)
			(void) LockAcquire(keytag, ExclusiveLock, false, false);
		else
			XactLockTableWait(xid, NULL, NULL, XLTW_None);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcontext);
		if (geterrcode() == ERRCODE_LOCK_NOT_AVAILABLE)
		{
			FlushErrorState();
			IdemReportKeyInUse(key, wait->wait_timeout_ms);
		}
		PG_RE_THROW();
	}
	PG_END_TRY();
	IdemStatsWaitEnd();
	AtEOXact_GUC(true, nestlevel);
}

/*
 * Take the key lock, waiting at most until the deadline, and fill in its
 * tag for IdemKeyLockRelease.  With idem.wait_timeout = 0 the lock is only
 * tried.
 */
void
IdemKeyLockAcquire(LOCKTAG *tag, Oid owner, text *key, const IdemWait *wait)
{
	KeyLockTag(tag, owner, key);
	if (LockAcquire(tag, ExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
		WaitBounded(tag, InvalidTransactionId, key, wait);
}

/* Release the key lock once the record row is written. */
void
IdemKeyLockRelease(const LOCKTAG *tag)
{
	LockRelease(tag, ExclusiveLock, false);
}

/*
 * Wait for the transaction that is writing a record of this key to end,
 * at most until the deadline.
 */
void
IdemWaitForWriter(TransactionId xid, text *key, const IdemWait *wait)
{
	if (!ConditionalXactLockTableWait(xid))
		WaitBounded(NULL, xid, key, wait);
}

/* Raise the "key in use" error (HTTP 409). */
void
IdemReportKeyInUse(text *key, int wait_timeout_ms)
{
	IdemStatsCount(IDEM_STAT_TIMEOUT);
	ereport(ERROR,
			(errcode(ERRCODE_IDEM_KEY_IN_USE),
			 errmsg("idempotency key \"%s\" is in use by another transaction",
					IdemKeyForMessage(key)),
			 wait_timeout_ms == 0 ?
			 errdetail("Another transaction is running the first call with this key, and idem.wait_timeout is 0.") :
			 errdetail("Another transaction is running the first call with this key and did not finish within idem.wait_timeout (%d ms).",
					   wait_timeout_ms),
			 errhint("Retry the call later: once the other transaction commits, the call returns its outcome.")));
}
