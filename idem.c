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
 * In arbiter mode (src/arbiter.c) step 3 first claims the key in DynamoDB,
 * and replays instead what another cluster or Lambda function recorded.
 *
 * The lease API (claim, complete, checkpoint, extend, release) serves work
 * done outside the database on the same key table; its entry points here
 * only read their arguments, and src/lease.c does the work.
 *
 * This file also defines the core settings.  Everything it calls lives in
 * src/, one concept per file; nothing there calls back into this file.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_collation.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "arbiter.h"
#include "callsite.h"
#include "errcodes.h"
#include "key.h"
#include "keylock.h"
#include "keytable.h"
#include "lease.h"
#include "stats.h"
#include "sync.h"
#include "sync_outbox.h"

PG_MODULE_MAGIC;

/* Core settings */
static int	idem_ttl = 86400;	/* seconds */
static int	idem_wait_timeout = 10000;	/* milliseconds; 0 = do not wait */
static int	idem_max_key_length = 255;	/* characters */
static int	idem_lease = 30000;	/* milliseconds */

/*
 * What the session's last idempotent_call or claim did: -1 none or failed,
 * 0 ran fn (or returned 'run'), 1 replayed; and the subtransaction that did
 * it, whose rollback undoes the call and so resets the state
 * (InvalidSubTransactionId once its transaction committed).
 */
static int	last_call_state = -1;
static SubTransactionId last_call_subid = InvalidSubTransactionId;

PG_FUNCTION_INFO_V1(idem_idempotent_call);
PG_FUNCTION_INFO_V1(idem_last_call_replayed);
PG_FUNCTION_INFO_V1(idem_claim);
PG_FUNCTION_INFO_V1(idem_complete);
PG_FUNCTION_INFO_V1(idem_checkpoint);
PG_FUNCTION_INFO_V1(idem_extend);
PG_FUNCTION_INFO_V1(idem_release);

void		_PG_init(void);

static void LastCallXactCallback(XactEvent event, void *arg);
static void LastCallSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
									SubTransactionId parentSubid, void *arg);

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
	DefineCustomIntVariable("idem.lease",
							"Lease of idem.claim when the call gives none, and of an idempotent_call's DynamoDB claim in arbiter mode.",
							"Once a holder's lease ends without idem.complete or idem.release, the next claim takes the key over.",
							&idem_lease,
							30000, 1, (int) (IDEM_MAX_LEASE_USECS / 1000),
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	RegisterXactCallback(LastCallXactCallback, NULL);
	RegisterSubXactCallback(LastCallSubXactCallback, NULL);
	IdemSyncInit();
	IdemArbiterInit();
	IdemStatsInit();
#if PG_VERSION_NUM >= 150000
	MarkGUCPrefixReserved("idem");
#else
	EmitWarningsOnPlaceholders("idem");
#endif
}

/* Remember what this call did, in the subtransaction that did it. */
static void
SetLastCallState(int state)
{
	last_call_state = state;
	last_call_subid = GetCurrentSubTransactionId();
}

/*
 * A rollback undoes the last call along with its transaction, so nothing is
 * left for last_call_replayed to describe; a commit keeps it for good.
 */
static void
LastCallXactCallback(XactEvent event, void *arg)
{
	if (last_call_subid == InvalidSubTransactionId)
		return;
	if (event == XACT_EVENT_ABORT)
		last_call_state = -1;
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_COMMIT ||
		event == XACT_EVENT_PREPARE)
		last_call_subid = InvalidSubTransactionId;
}

/*
 * A savepoint rollback undoes the last call if the call ran inside it; a
 * release hands it to the enclosing subtransaction.
 */
static void
LastCallSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	if (mySubid != last_call_subid)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		last_call_state = -1;
		last_call_subid = InvalidSubTransactionId;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
		last_call_subid = parentSubid;
}

/*
 * Find the live record of (owner, key), or claim the key for a first call.
 *
 * Returns false with probe->state LIVE when there is a record to replay, or
 * CLAIMED when idem.claim holds the key (an error for the caller).
 * Returns true when the caller holds the key lock (keylock) and no live
 * record exists, not even one being written: the caller must run fn, write
 * the record and release the lock; probe->state is then ABSENT or EXPIRED
 * (with the expired row's tid to replace).  Waits for writers and for the
 * lock end together at now + idem.wait_timeout (or a lower lock_timeout).
 */
static bool
ClaimOrReplay(IdemKeyTable *table, Oid owner, text *key,
			  IdemRecordProbe *probe, LOCKTAG *keylock)
{
	IdemWait	wait = {0};
	bool		locked = false;

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();

		IdemKeyTableProbe(table, key, now, probe);
		if (probe->state == IDEM_RECORD_LIVE || probe->state == IDEM_RECORD_CLAIMED)
			break;
		if (wait.deadline == 0)
			IdemWaitStart(&wait, now, idem_wait_timeout);
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
			IdemCheckWritable(key, IDEM_WRITE_FIRST_CALL);
			/* an expired row keeps its index page pinned; the lock may wait */
			if (probe->state == IDEM_RECORD_EXPIRED)
				IdemKeyTableEndProbes(table);
			IdemKeyLockAcquire(keylock, owner, key, &wait);
			locked = true;
		}
	}

	if ((probe->state == IDEM_RECORD_LIVE || probe->state == IDEM_RECORD_CLAIMED) && locked)
	{
		IdemKeyLockRelease(keylock);
		locked = false;
	}
	Assert(locked ? (probe->state == IDEM_RECORD_ABSENT ||
					 probe->state == IDEM_RECORD_EXPIRED) :
		   (probe->state == IDEM_RECORD_LIVE || probe->state == IDEM_RECORD_CLAIMED));
	return locked;
}

/*
 * Arbiter mode: claim the key in DynamoDB for the lease idem.lease before
 * fn runs, or learn the outcome another party recorded for it.
 */
static void
ClaimInDynamoDB(Oid owner, text *key, IdemArbiterClaim *arbiter)
{
	TimestampTz now = GetCurrentTimestamp();

	IdemArbiterClaimKey(owner, key, NULL,
						(int64) idem_lease * 1000,
						now + (TimestampTz) idem_ttl * USECS_PER_SEC,
						idem_wait_timeout, arbiter);
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
	IdemRecord	record;
	IdemArbiterClaim arbiter = {0};

	last_call_state = -1;
	key = IdemKeyArgument(fcinfo, 0, idem_max_key_length);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("function of idempotent call with key \"%s\" must not be null",
						IdemKeyForMessage(key)),
				 errdetail("idem.idempotent_call needs the function to run on the first call."),
				 errhint("Name the function with its argument types, for example 'shop.place_order(jsonb)'.")));
	IdemStatsBeginCall(IDEM_TARGET_CALL, PG_GETARG_OID(1), key);
	site = IdemGetCallSite(fcinfo, PG_GETARG_OID(1));
	IdemReadArguments(site, fcinfo, values, nulls);
	request_hash = IdemRequestFingerprint(site, values, nulls);

	IdemKeyTableOpen(&table, owner, key);
	if (!ClaimOrReplay(&table, owner, key, &probe, &keylock))
	{
		IdemKeyTableClose(&table);
		if (probe.record.token != 0 || probe.record.request_hash != request_hash)
		{
			IdemStatsCount(IDEM_STAT_MISMATCH);
			ereport(ERROR,
					(errcode(ERRCODE_IDEM_KEY_MISMATCH),
					 errmsg("idempotency key \"%s\" was already used for a different request",
							IdemKeyForMessage(key)),
					 probe.record.token != 0 ?
					 errdetail("The key is claimed or recorded through idem.claim, whose outcomes idem.idempotent_call does not replay.") :
					 errdetail("The outcome recorded for this key came from a call with another function or other arguments."),
					 errhint("Use a new key for a new request; repeat the original request to get its outcome.")));
		}
		IdemStatsCount(IDEM_STAT_REPLAY);
		IdemStatsEndCall();
		SetLastCallState(1);
		PG_RETURN_JSONB_P(probe.record.outcome);
	}

	IdemKeyTableEndProbes(&table);
	if (idem_arbiter == IDEM_ARBITER_DYNAMODB)
		ClaimInDynamoDB(owner, key, &arbiter);
	IdemStatsCount(arbiter.replay ? IDEM_STAT_REPLAY : IDEM_STAT_EXECUTION);
	if (arbiter.replay)
		record.outcome = arbiter.outcome;
	else
		record.outcome = IdemInvokeFunction(site, values, nulls,
											OidIsValid(PG_GET_COLLATION()) ? PG_GET_COLLATION() : DEFAULT_COLLATION_OID,
											owner, key);
	/* read idem.ttl after fn, so that a SET LOCAL in fn applies as well */
	record.request_hash = request_hash;
	record.created_at = GetCurrentTimestamp();
	record.expires_at = record.created_at + (TimestampTz) idem_ttl * USECS_PER_SEC;
	if (arbiter.replay && arbiter.expires_at != 0)
		record.expires_at = Min(record.expires_at, arbiter.expires_at);
	record.token = 0;
	record.lease_expires_at = 0;
	record.recovery_point = NULL;
	record.recovery_data = NULL;
	IdemKeyTableWrite(&table, owner, key, &record,
					  probe.state == IDEM_RECORD_EXPIRED ? &probe.tid : NULL);
	IdemKeyTableClose(&table);
	/* an outcome another party recorded is in DynamoDB already */
	if (!arbiter.replay)
		IdemOutboxRecord(owner, key, record.outcome, record.expires_at,
						 arbiter.claim);
	IdemKeyLockRelease(&keylock);
	IdemStatsEndCall();
	SetLastCallState(arbiter.replay ? 1 : 0);
	PG_RETURN_JSONB_P(record.outcome);
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

/* The core settings the lease functions follow, as they are now. */
static IdemLeaseSettings
LeaseSettings(void)
{
	IdemLeaseSettings settings = {idem_ttl, idem_wait_timeout};

	return settings;
}

/* The lease argument argno in microseconds; idem.lease when it is NULL. */
static int64
LeaseArgument(FunctionCallInfo fcinfo, int argno, text *key, bool null_means_default)
{
	if (PG_ARGISNULL(argno))
	{
		if (null_means_default)
			return (int64) idem_lease * 1000;
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("lease for idempotency key \"%s\" must not be null",
						IdemKeyForMessage(key)),
				 errdetail("idem.extend renews the lease to now plus the lease given."),
				 errhint("Pass an interval such as '30 seconds'.")));
	}
	return IdemLeaseUsecs(PG_GETARG_INTERVAL_P(argno), key);
}

/*
 * idem.claim(key text, request jsonb, lease interval)
 *
 * Returns ('run', token, NULL, recovery_point, recovery_data) when the
 * caller now holds the key, or ('replay', token, outcome, NULL, NULL) when
 * an outcome is recorded.
 */
Datum
idem_claim(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	text	   *key;
	Jsonb	   *request;
	int64		lease_usecs;
	IdemLeaseSettings settings = LeaseSettings();
	IdemClaim	claim;
	Datum		values[5];
	bool		nulls[5] = {false};

	last_call_state = -1;
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	key = IdemKeyArgument(fcinfo, 0, idem_max_key_length);
	request = PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1);
	lease_usecs = LeaseArgument(fcinfo, 2, key, true);

	IdemStatsBeginCall(IDEM_TARGET_CLAIM, InvalidOid, key);
	IdemLeaseClaim(GetUserId(), key, request, lease_usecs, &settings, &claim);
	if (claim.replay)
		IdemStatsCount(IDEM_STAT_REPLAY);
	IdemStatsEndCall();

	values[0] = CStringGetTextDatum(claim.replay ? "replay" : "run");
	values[1] = Int64GetDatum(claim.token);
	values[2] = PointerGetDatum(claim.outcome);
	nulls[2] = claim.outcome == NULL;
	values[3] = PointerGetDatum(claim.recovery_point);
	nulls[3] = claim.recovery_point == NULL;
	values[4] = PointerGetDatum(claim.recovery_data);
	nulls[4] = claim.recovery_data == NULL;
	SetLastCallState(claim.replay ? 1 : 0);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/*
 * idem.complete(key text, token bigint, outcome jsonb)
 *
 * Records the outcome of the claim that token holds, in the caller's
 * transaction.
 */
Datum
idem_complete(PG_FUNCTION_ARGS)
{
	text	   *key = IdemKeyArgument(fcinfo, 0, idem_max_key_length);
	IdemLeaseSettings settings = LeaseSettings();

	IdemLeaseRequireToken(PG_ARGISNULL(1), key);
	IdemStatsBeginCall(IDEM_TARGET_HOLDER, InvalidOid, key);
	IdemLeaseComplete(GetUserId(), key, PG_GETARG_INT64(1),
					  PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2), &settings);
	IdemStatsEndCall();
	PG_RETURN_VOID();
}

/*
 * idem.checkpoint(key text, token bigint, point text, data jsonb)
 *
 * Records a recovery point of the claim that token holds.
 */
Datum
idem_checkpoint(PG_FUNCTION_ARGS)
{
	text	   *key = IdemKeyArgument(fcinfo, 0, idem_max_key_length);
	IdemLeaseSettings settings = LeaseSettings();

	IdemLeaseRequireToken(PG_ARGISNULL(1), key);
	IdemStatsBeginCall(IDEM_TARGET_HOLDER, InvalidOid, key);
	IdemLeaseCheckpoint(GetUserId(), key, PG_GETARG_INT64(1),
						PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2),
						PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3), &settings);
	IdemStatsEndCall();
	PG_RETURN_VOID();
}

/*
 * idem.extend(key text, token bigint, lease interval) returns timestamptz
 *
 * Renews the lease of the claim that token holds; returns its new end.
 */
Datum
idem_extend(PG_FUNCTION_ARGS)
{
	text	   *key = IdemKeyArgument(fcinfo, 0, idem_max_key_length);
	IdemLeaseSettings settings = LeaseSettings();
	int64		lease_usecs;
	TimestampTz lease_end;

	IdemLeaseRequireToken(PG_ARGISNULL(1), key);
	lease_usecs = LeaseArgument(fcinfo, 2, key, false);
	IdemStatsBeginCall(IDEM_TARGET_HOLDER, InvalidOid, key);
	lease_end = IdemLeaseExtend(GetUserId(), key, PG_GETARG_INT64(1),
								lease_usecs, &settings);
	IdemStatsEndCall();
	PG_RETURN_TIMESTAMPTZ(lease_end);
}

/*
 * idem.release(key text, token bigint)
 *
 * Gives the key back without an outcome.
 */
Datum
idem_release(PG_FUNCTION_ARGS)
{
	text	   *key = IdemKeyArgument(fcinfo, 0, idem_max_key_length);
	IdemLeaseSettings settings = LeaseSettings();

	IdemLeaseRequireToken(PG_ARGISNULL(1), key);
	IdemStatsBeginCall(IDEM_TARGET_HOLDER, InvalidOid, key);
	IdemLeaseRelease(GetUserId(), key, PG_GETARG_INT64(1), &settings);
	IdemStatsEndCall();
	PG_RETURN_VOID();
}
