/*-------------------------------------------------------------------------
 *
 * idem.c
 *		SQL entry points of idem: run a function once per idempotency key.
 *
 * idempotent_call(key, fn, args...) returns the outcome recorded for
 * (current_user, key) if there is one, and otherwise runs fn(args...) and
 * records its outcome in the caller's transaction.  The protocol:
 *
 *	1. Probe the key table, seeing uncommitted rows.  A live record is
 *	   replayed: nothing is written.  A row another transaction is writing is
 *	   waited for, then probed again.
 *	2. No record: take the key lock (keylock.c) and probe again, since a
 *	   concurrent first call may have written its row meanwhile.
 *	3. Still none: run fn, write the record, release the key lock.  The
 *	   uncommitted row now makes later callers wait for this transaction;
 *	   they replay if it commits and run fn themselves if it rolls back.
 *
 * This file also defines the core settings.  Everything it calls lives in
 * src/, one concept per file; nothing there calls back into this file.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_collation.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "callsite.h"
#include "errcodes.h"
#include "key.h"
#include "keylock.h"
#include "keytable.h"
#include "sync.h"
#include "sync_outbox.h"

PG_MODULE_MAGIC;

/* Core settings */
static int	idem_ttl = 86400;	/* seconds */
static int	idem_wait_timeout = 10000;	/* milliseconds; 0 = do not wait */
static int	idem_max_key_length = 255;	/* characters */

/* What the session's last idempotent_call did: -1 none or failed, 0 ran fn, 1 replayed. */
static int	last_call_state = -1;

PG_FUNCTION_INFO_V1(idem_idempotent_call);
PG_FUNCTION_INFO_V1(idem_last_call_replayed);

void		_PG_init(void);

/* Define idem's settings. */
void
_PG_init(void)
{
	DefineCustomIntVariable("idem.ttl",
							"How long a recorded outcome is replayed.",
							"A record older than this counts as absent: the next call with its key runs the function again.",
							&idem_ttl,
							86400, 1, INT_MAX,
							PGC_USERSET, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("idem.wait_timeout",
							"How long a call waits for a concurrent call with the same key.",
							"0 means do not wait: fail at once if the key is in use.",
							&idem_wait_timeout,
							10000, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("idem.max_key_length",
							"Longest idempotency key accepted, in characters.",
							NULL,
							&idem_max_key_length,
							255, 1, 512,
							PGC_USERSET, 0,
							NULL, NULL, NULL);
	IdemSyncInit();
#if PG_VERSION_NUM >= 150000
	MarkGUCPrefixReserved("idem");
#else
	EmitWarningsOnPlaceholders("idem");
#endif
}

/* Refuse a first call where its record could not be written. */
static void
CheckWritable(text *key)
{
	if (XactReadOnly)
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
 * Find the live record of (owner, key), or claim the key for a first call.
 *
 * Returns false with probe->state LIVE when there is a record to replay.
 * Returns true when the caller holds the key lock (keylock) and no live
 * record exists, not even one being written: the caller must run fn, write
 * the record and release the lock; probe->state is then ABSENT or EXPIRED
 * (with the expired row's tid to replace).  Waits for writers and for the
 * lock end together at now + idem.wait_timeout.
 */
static bool
ClaimOrReplay(IdemKeyTable *table, Oid owner, text *key,
			  IdemRecordProbe *probe, LOCKTAG *keylock)
{
	IdemWait	wait = {0, idem_wait_timeout};
	bool		locked = false;

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();

		IdemKeyTableProbe(table, key, now, probe);
		if (probe->state == IDEM_RECORD_LIVE)
			break;
		if (wait.deadline == 0)
			wait.deadline = TimestampTzPlusMilliseconds(now, idem_wait_timeout);
		if (probe->state == IDEM_RECORD_BUSY)
		{
			/* pin nothing while waiting */
			IdemKeyTableEndProbes(table);
			IdemWaitForWriter(probe->busy_xid, key, &wait);
		}
		else if (locked)
			break;
		else
		{
			CheckWritable(key);
			/* an expired row keeps its index page pinned; the lock may wait */
			if (probe->state == IDEM_RECORD_EXPIRED)
				IdemKeyTableEndProbes(table);
			IdemKeyLockAcquire(keylock, owner, key, &wait);
			locked = true;
		}
	}

	if (probe->state == IDEM_RECORD_LIVE && locked)
	{
		IdemKeyLockRelease(keylock);
		locked = false;
	}
	Assert(locked ? (probe->state == IDEM_RECORD_ABSENT ||
					 probe->state == IDEM_RECORD_EXPIRED) :
		   probe->state == IDEM_RECORD_LIVE);
	return locked;
}

/*
 * idem.idempotent_call(key text, fn regprocedure, VARIADIC args "any")
 *
 * Returns fn's recorded outcome for (current_user, key), running fn and
 * recording the outcome only if there is none.
 */
Datum
idem_idempotent_call(PG_FUNCTION_ARGS)
{
	Oid			owner = GetUserId();
	text	   *key;
	IdemCallSite *site;
	Datum		values[FUNC_MAX_ARGS];
	bool		nulls[FUNC_MAX_ARGS];
	uint64		request_hash;
	IdemKeyTable table;
	IdemRecordProbe probe;
	LOCKTAG		keylock;
	Jsonb	   *outcome;
	TimestampTz now;
	TimestampTz expires_at;

	last_call_state = -1;
	key = IdemKeyArgument(fcinfo, 0, idem_max_key_length);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("function of idempotent call with key \"%s\" must not be null",
						IdemKeyForMessage(key)),
				 errdetail("idem.idempotent_call needs the function to run on the first call."),
				 errhint("Name the function with its argument types, for example 'shop.place_order(jsonb)'.")));
	site = IdemGetCallSite(fcinfo, PG_GETARG_OID(1));
	IdemReadArguments(site, fcinfo, values, nulls);
	request_hash = IdemRequestFingerprint(site, values, nulls);

	IdemKeyTableOpen(&table, owner, key);
	if (!ClaimOrReplay(&table, owner, key, &probe, &keylock))
	{
		IdemKeyTableClose(&table);
		if (probe.request_hash != request_hash)
			ereport(ERROR,
					(errcode(ERRCODE_IDEM_KEY_MISMATCH),
					 errmsg("idempotency key \"%s\" was already used for a different request",
							IdemKeyForMessage(key)),
					 errdetail("The outcome recorded for this key came from a call with another function or other arguments."),
					 errhint("Use a new key for a new request; repeat the original request to get its outcome.")));
		last_call_state = 1;
		PG_RETURN_JSONB_P(probe.outcome);
	}

	IdemKeyTableEndProbes(&table);
	outcome = IdemInvokeFunction(site, values, nulls,
								 OidIsValid(PG_GET_COLLATION()) ? PG_GET_COLLATION() : DEFAULT_COLLATION_OID,
								 owner, key);
	/* read idem.ttl after fn, so that a SET LOCAL in fn applies as well */
	now = GetCurrentTimestamp();
	expires_at = now + (TimestampTz) idem_ttl * USECS_PER_SEC;
	IdemKeyTableWrite(&table, owner, key, request_hash, outcome, now, expires_at,
					  probe.state == IDEM_RECORD_EXPIRED ? &probe.tid : NULL);
	IdemKeyTableClose(&table);
	IdemOutboxRecord(owner, key, outcome, expires_at);
	IdemKeyLockRelease(&keylock);
	last_call_state = 0;
	PG_RETURN_JSONB_P(outcome);
}

/*
 * idem.last_call_replayed()
 *
 * Whether this session's last idempotent_call replayed a recorded outcome
 * (true) or ran the function (false); NULL before any call or after a call
 * that failed.  The SQL counterpart of Stripe's Idempotent-Replayed header.
 */
Datum
idem_last_call_replayed(PG_FUNCTION_ARGS)
{
	if (last_call_state < 0)
		PG_RETURN_NULL();
	PG_RETURN_BOOL(last_call_state == 1);
}
