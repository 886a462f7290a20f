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
 * Every wait of a call is bounded, all together, by idem.wait_timeout or by
 * the caller's lock_timeout if that is lower: the wait runs under a
 * lock_timeout no longer than what is left, and a timeout becomes the
 * "key in use" error naming the setting that ended it.  On a hot standby
 * the primary's transactions hold no locks there, so a wait for one of them
 * polls instead, with the same bound.
 *
 * It also holds what the other waits of idem share: a poll that backs off
 * (for a lease, or an item in DynamoDB) and the check that a transaction
 * can write a key's record at all.
 *
 * This file also keeps the list of keys whose function is running in this
 * backend, so that a nested call on the same key is an error instead of a
 * second execution or a self-deadlock.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "errcodes.h"
#include "key.h"
#include "keylock.h"
#include "stats.h"

/*
 * locktag_field4 of idem's advisory locks.  SQL advisory locks use 1 and 2,
 * so idem's never collide with an application's.
 */
#define IDEM_LOCK_CLASS	0x4944

/* Polling a primary's transaction from a standby: first and longest pause. */
#define STANDBY_POLL_FIRST_MS	5
#define STANDBY_POLL_MAX_MS		100

/* Build the advisory lock tag of a (role, key). */
static void
KeyLockTag(LOCKTAG *tag, Oid owner, text *key)
{
	uint64		h = hash_bytes_extended((const unsigned char *) VARDATA_ANY(key),
										VARSIZE_ANY_EXHDR(key), owner);

	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 IDEM_LOCK_CLASS);
}

/*
 * Start the bound of a call's waits at now: idem.wait_timeout, or the
 * caller's lock_timeout when that is lower, since a key wait is a lock wait
 * to the caller.  With idem.wait_timeout = 0 nothing waits.
 */
void
IdemWaitStart(IdemWait *wait, TimestampTz now, int wait_timeout_ms)
{
	wait->timeout_ms = wait_timeout_ms;
	wait->by_lock_timeout = false;
	if (wait_timeout_ms > 0 && LockTimeout > 0 && LockTimeout < wait_timeout_ms)
	{
		wait->timeout_ms = LockTimeout;
		wait->by_lock_timeout = true;
	}
	wait->deadline = TimestampTzPlusMilliseconds(now, wait->timeout_ms);
}

/* Whether a wait must end now, before it sleeps again. */
bool
IdemWaitIsOver(const IdemWait *wait, TimestampTz now)
{
	return wait->timeout_ms == 0 || now >= wait->deadline;
}

/*
 * Sleep for the next pause of a poll, but not past until, on the process
 * latch, so that a cancel or a statement_timeout ends it at once; the wait
 * shows in pg_stat_activity as wait event Extension.
 */
void
IdemBackoffSleep(IdemBackoff *backoff, TimestampTz until)
{
	long		ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), until);

	ms = Max(1, Min(ms, backoff->sleep_ms));
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	backoff->sleep_ms = Min(backoff->sleep_ms * 2, backoff->max_ms);
}

/*
 * Refuse to write a key's record (a first call's, a claim, or a holder's
 * change to its claim) where it could not be written, before anything runs.
 * The key table is written below the executor, which would check this.
 */
void
IdemCheckWritable(text *key, IdemWriteKind kind)
{
	if (!XactReadOnly)
		return;
	if (kind == IDEM_WRITE_CLAIM)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot claim idempotency key \"%s\" in a read-only transaction",
						IdemKeyForMessage(key)),
				 errdetail("No outcome is recorded for this key, so the claim would have to be written."),
				 RecoveryInProgress() ?
				 errhint("Send claims to the primary server; a standby can only replay recorded outcomes.") :
				 errhint("Claim the key in a read-write transaction.")));
	if (kind == IDEM_WRITE_HOLDER)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot change the claim of idempotency key \"%s\" in a read-only transaction",
						IdemKeyForMessage(key)),
				 errdetail("idem.complete, idem.checkpoint, idem.extend and idem.release write the claim's record."),
				 RecoveryInProgress() ?
				 errhint("Send the holder's calls to the primary server.") :
				 errhint("Call it in a read-write transaction.")));
	ereport(ERROR,
			(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
			 errmsg("cannot run the first call with idempotency key \"%s\" in a read-only transaction",
					IdemKeyForMessage(key)),
			 errdetail("No outcome is recorded for this key, so the function would run and its outcome would have to be written."),
			 RecoveryInProgress() ?
			 errhint("Send first calls to the primary server; a standby can only replay recorded outcomes.") :
			 errhint("Run the call in a read-write transaction.")));
}

/*
 * Wait in the lock queue for the key lock (keytag) or for the end of a
 * transaction (xid), so that the waiter wakes the moment the holder lets go,
 * under a lock_timeout that ends at the deadline.  A timeout becomes the
 * "key in use" error.
 */
static void
WaitBounded(const LOCKTAG *keytag, TransactionId xid, text *key,
			const IdemWait *wait)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
													   wait->deadline);
	int			nestlevel;
	char		timeout[32];

	if (wait->timeout_ms == 0 || left <= 0)
		IdemReportKeyInUse(key, wait);
	snprintf(timeout, sizeof(timeout), "%ld", Min(left, (long) INT_MAX));

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
			IdemReportKeyInUse(key, wait);
		}
		PG_RE_THROW();
	}
	PG_END_TRY();
	IdemStatsWaitEnd();
	AtEOXact_GUC(true, nestlevel);
}

/*
 * On a hot standby, wait for the primary's transaction xid by polling until
 * the standby has replayed its end.  The primary's transactions hold no
 * locks on the standby, so XactLockTableWait would find none and spin
 * without a bound until the commit arrives.
 */
static void
WaitForPrimaryWriter(TransactionId xid, text *key, const IdemWait *wait)
{
	IdemBackoff backoff = {STANDBY_POLL_FIRST_MS, STANDBY_POLL_MAX_MS};

	if (!TransactionIdIsInProgress(xid))
		return;
	IdemStatsWaitBegin();
	do
	{
		if (IdemWaitIsOver(wait, GetCurrentTimestamp()))
			IdemReportKeyInUse(key, wait);
		IdemBackoffSleep(&backoff, wait->deadline);
	} while (TransactionIdIsInProgress(xid));
	IdemStatsWaitEnd();
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
	if (RecoveryInProgress())
		WaitForPrimaryWriter(xid, key, wait);
	else if (!IdemConditionalXactLockTableWait(xid))
		WaitBounded(NULL, xid, key, wait);
}

/*
 * Raise the "key in use" error (HTTP 409), naming the setting that ended
 * the wait.
 */
void
IdemReportKeyInUse(text *key, const IdemWait *wait)
{
	IdemStatsCount(IDEM_STAT_TIMEOUT);
	ereport(ERROR,
			(errcode(ERRCODE_IDEM_KEY_IN_USE),
			 errmsg("idempotency key \"%s\" is in use by another transaction",
					IdemKeyForMessage(key)),
			 wait->timeout_ms == 0 ?
			 errdetail("Another transaction is running the first call with this key, and idem.wait_timeout is 0.") :
			 errdetail("Another transaction is running the first call with this key and did not finish within %s (%d ms).",
					   wait->by_lock_timeout ? "lock_timeout" : "idem.wait_timeout",
					   wait->timeout_ms),
			 errhint("Retry the call later: once the other transaction commits, the call returns its outcome.")));
}
