/*-------------------------------------------------------------------------
 *
 * lease.c
 *		Claims with a lease, for work done outside the database.
 *
 * idem.claim gives the caller a key for a while (the lease) and a fencing
 * token; the caller does its work, in a payment provider or a mail server,
 * and records the outcome with idem.complete, or gives the key back with
 * idem.release.  A claim is a row of idem.records without an outcome, so
 * keys, roles, expiry and purge are those of idempotent_call, and the key
 * lock and the wait for a writing transaction serialise claims exactly as
 * they serialise first calls.
 *
 * The lease is what a crashed holder leaves behind: once it ends, the next
 * claim takes the key over with a larger token and the holder's last
 * checkpoint.  A holder proves itself with its token; a token whose lease
 * was taken over, released or completed changes nothing, so a slow holder
 * never overwrites a newer holder's work.  Tokens come from one sequence,
 * so each is larger than every token given out before it.
 *
 * The work is outside the database, so a crash cannot roll it back: every
 * lease function that writes makes its transaction commit as under
 * synchronous_commit = on, even in a session that turned it off.  A claim
 * lost in a crash or a failover would let a second holder repeat work that
 * was already done.  The local flush is forced through the flag CREATE
 * DATABASE uses; the wait for synchronous standbys needs the setting, which
 * is raised only once the commit has begun, since a function's SET clause
 * puts the setting back when the function returns.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/xact.h"
#include "commands/sequence.h"
#include "common/int.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "arbiter.h"
#include "errcodes.h"
#include "fingerprint.h"
#include "key.h"
#include "keylock.h"
#include "keytable.h"
#include "lease.h"
#include "stats.h"
#include "sync.h"
#include "sync_outbox.h"

/* Polling a live lease: first and longest sleep between probes. */
#define LEASE_POLL_FIRST_MS	5
#define LEASE_POLL_MAX_MS	100

/* A key table opened for one lease function, with its key lock. */
typedef struct LeaseCall
{
	Oid			owner;
	text	   *key;
	IdemKeyTable table;
	IdemRecordProbe probe;
	LOCKTAG		keylock;
	bool		locked;
	IdemWait	wait;
} LeaseCall;

/*
 * Convert a lease argument to microseconds, refusing one that is not more
 * than zero or longer than IDEM_MAX_LEASE_USECS.  A day counts 24 hours.
 */
int64
IdemLeaseUsecs(Interval *lease, text *key)
{
	int64		usecs;

	if (lease->month != 0 || lease->day < -2 || lease->day > 2 ||
		pg_add_s64_overflow(lease->time, (int64) lease->day * USECS_PER_DAY, &usecs) ||
		usecs <= 0 || usecs > IDEM_MAX_LEASE_USECS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lease for idempotency key \"%s\" is out of range",
						IdemKeyForMessage(key)),
				 errdetail("The lease given was %s; it must be more than 0 and at most 24 hours.",
						   DatumGetCString(DirectFunctionCall1(interval_out,
															   IntervalPGetDatum(lease)))),
				 errhint("Ask for a lease that covers the work, and renew it with idem.extend for longer work.")));
	return usecs;
}

/* The fingerprint of a claim's request; NULL is a value of its own. */
static uint64
ClaimFingerprint(Jsonb *request)
{
	static uint8 signature[PG_SHA256_DIGEST_LENGTH];
	static bool have_signature = false;

	if (!have_signature)
	{
		IdemDigestSignature("idem.claim(jsonb)", signature);
		have_signature = true;
	}
	IdemFingerprintBegin(signature);
	if (request == NULL)
		IdemFingerprintNull();
	else
		IdemFingerprintJsonb(request);
	return IdemFingerprintEnd();
}

/* This transaction wrote a lease row: its commit waits as under "on". */
static bool sync_commit_required = false;

/*
 * At the start of the commit of a transaction that wrote a lease row, after
 * every function has returned, raise synchronous_commit = off to on for
 * this commit, so that it waits for the synchronous standbys as well.
 */
static void
LeaseXactCallback(XactEvent event, void *arg)
{
	if (!sync_commit_required)
		return;
	if (event == XACT_EVENT_PRE_COMMIT &&
		synchronous_commit < SYNCHRONOUS_COMMIT_LOCAL_FLUSH)
		(void) set_config_option("synchronous_commit", "on",
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE)
		sync_commit_required = false;
}

/*
 * Make this transaction commit synchronously: a claim, checkpoint, extend or
 * outcome lost in a crash would let a second holder repeat external work.
 */
static void
RequireSynchronousCommit(void)
{
	static bool callback_registered = false;

	ForceSyncCommit();
	if (!callback_registered)
	{
		RegisterXactCallback(LeaseXactCallback, NULL);
		callback_registered = true;
	}
	sync_commit_required = true;
}

/* Raise the error of a key recorded or claimed for a different request. */
static void
ReportMismatch(text *key, const IdemRecordProbe *probe)
{
	IdemStatsCount(IDEM_STAT_MISMATCH);
	ereport(ERROR,
			(errcode(ERRCODE_IDEM_KEY_MISMATCH),
			 errmsg("idempotency key \"%s\" was already used for a different request",
					IdemKeyForMessage(key)),
			 probe->record.token == 0 ?
			 errdetail("The outcome recorded for this key came from idem.idempotent_call, not from idem.claim.") :
			 probe->state == IDEM_RECORD_LIVE ?
			 errdetail("The outcome recorded for this key came from a claim with another request.") :
			 errdetail("The key is claimed for another request."),
			 errhint("Use a new key for a new request; repeat the original request to get its outcome.")));
}

/*
 * Raise the error of a claim that waited out idem.wait_timeout (or a lower
 * lock_timeout) for a live lease.
 */
static void
ReportClaimed(text *key, TimestampTz lease_expires_at, const IdemWait *wait)
{
	IdemStatsCount(IDEM_STAT_TIMEOUT);
	ereport(ERROR,
			(errcode(ERRCODE_IDEM_KEY_IN_USE),
			 errmsg("idempotency key \"%s\" is claimed by another holder",
					IdemKeyForMessage(key)),
			 wait->timeout_ms == 0 ?
			 errdetail("The holder's lease ends at %s, and idem.wait_timeout is 0.",
					   timestamptz_to_str(lease_expires_at)) :
			 errdetail("The holder's lease ends at %s; it did not complete or release the key within %s (%d ms).",
					   timestamptz_to_str(lease_expires_at),
					   wait->by_lock_timeout ? "lock_timeout" : "idem.wait_timeout",
					   wait->timeout_ms),
			 errhint("Retry later: the retry returns the outcome once the holder completes, and runs once its lease lapses.")));
}

/*
 * Raise the error of a claim of a key whose live claim this very
 * transaction holds: waiting could only end in a timeout, since the holder
 * is the waiter, and a second 'run' would hand the same work out twice.
 */
static void
ReportClaimedHere(text *key, const IdemRecord *record)
{
	ereport(ERROR,
			(errcode(ERRCODE_IDEM_KEY_IN_USE),
			 errmsg("idempotency key \"%s\" is already claimed by this transaction",
					IdemKeyForMessage(key)),
			 errdetail("This transaction holds the key with token " INT64_FORMAT ", whose lease ends at %s.",
					   record->token, timestamptz_to_str(record->lease_expires_at)),
			 errhint("Use the token the first claim returned: complete, checkpoint, extend or release the key with it.")));
}

/* Open the key table for a lease function on (owner, key). */
static void
BeginLeaseCall(LeaseCall *call, Oid owner, text *key, int wait_timeout_ms)
{
	call->owner = owner;
	call->key = key;
	call->locked = false;
	IdemWaitStart(&call->wait, GetCurrentTimestamp(), wait_timeout_ms);
	IdemKeyTableOpen(&call->table, owner, key);
}

/* Let go of the key lock, if held. */
static void
UnlockKey(LeaseCall *call)
{
	if (call->locked)
	{
		IdemKeyLockRelease(&call->keylock);
		call->locked = false;
	}
}

/* Release the key lock and close the key table. */
static void
EndLeaseCall(LeaseCall *call)
{
	UnlockKey(call);
	IdemKeyTableClose(&call->table);
}

/* Take the key lock, pinning nothing while waiting for it. */
static void
LockKey(LeaseCall *call)
{
	IdemKeyTableEndProbes(&call->table);
	IdemKeyLockAcquire(&call->keylock, call->owner, call->key, &call->wait);
	call->locked = true;
}

/*
 * Sleep while another holder's lease is live, then probe again: the holder
 * completes or releases in its own transaction, which nothing here can wait
 * on, so waiting is polling, with a growing interval.
 */
static void
SleepOnLease(LeaseCall *call, TimestampTz lease_expires_at, IdemBackoff *backoff)
{
	if (IdemWaitIsOver(&call->wait, GetCurrentTimestamp()))
		ReportClaimed(call->key, lease_expires_at, &call->wait);
	IdemKeyTableEndProbes(&call->table);
	IdemStatsWaitBegin();
	IdemBackoffSleep(backoff, Min(call->wait.deadline, lease_expires_at));
	IdemStatsWaitEnd();
}

/*
 * Probe the key under its key lock, waiting out any transaction that is
 * writing it, so that the caller may change the row it finds.
 */
static void
ProbeLocked(LeaseCall *call)
{
	for (;;)
	{
		if (!call->locked)
			LockKey(call);
		IdemKeyTableProbe(&call->table, call->key, GetCurrentTimestamp(), &call->probe);
		if (call->probe.state != IDEM_RECORD_BUSY)
			return;
		/* a writer's row stays uncommitted after it lets go of the lock */
		IdemKeyTableEndProbes(&call->table);
		UnlockKey(call);
		IdemWaitForWriter(call->probe.busy_xid, call->key, &call->wait);
	}
}

/* Take a fencing token larger than every token given out before. */
static int64
NextToken(void)
{
	return nextval_internal(IdemTableOid("claim_tokens", false), false);
}

/*
 * In arbiter mode, the name of the DynamoDB claim of token, for the outbox
 * rows of its states; NULL in local mode.  A key is claimed and completed
 * in one mode: a change of idem.arbiter in between shows as a conflict.
 */
static char *
ArbiterClaimOf(int64 token)
{
	return idem_arbiter == IDEM_ARBITER_DYNAMODB ? IdemArbiterLeaseClaim(token) : NULL;
}

/*
 * Arbiter mode: claim the key in DynamoDB for lease_usecs, or take the
 * outcome another party recorded into record as completed by its token.
 * Returns true for the latter.  A won claim's lease counts from the PutItem
 * that won it, which comes after now when another party held the key: the
 * record's lease end moves with it.
 */
static bool
ClaimInDynamoDB(Oid owner, text *key, IdemRecord *record, TimestampTz now,
				int64 lease_usecs, int wait_timeout_ms)
{
	IdemArbiterClaim arbiter;

	IdemArbiterClaimKey(owner, key, &record->token, lease_usecs,
						record->expires_at, wait_timeout_ms, &arbiter);
	if (!arbiter.replay)
	{
		record->lease_expires_at = arbiter.lease_end;
		record->expires_at = Max(record->expires_at, arbiter.lease_end);
		return false;
	}
	record->outcome = arbiter.outcome;
	record->lease_expires_at = now;
	if (arbiter.expires_at != 0)
		record->expires_at = Min(record->expires_at, arbiter.expires_at);
	return true;
}

/*
 * Claim (owner, key) for lease_usecs, or find its outcome.
 *
 * Loops until it can decide: a recorded outcome is replayed; a row being
 * written is waited for; a live lease is polled until it ends, or the holder
 * completes or releases, or idem.wait_timeout passes; anything else (no
 * row, an expired one, a lapsed or released claim) is claimed under the key
 * lock, after probing again once the lock is held.
 */
void
IdemLeaseClaim(Oid owner, text *key, Jsonb *request, int64 lease_usecs,
			   const IdemLeaseSettings *settings, IdemClaim *claim)
{
	uint64		request_hash = ClaimFingerprint(request);
	LeaseCall	call;
	IdemRecordProbe *probe = &call.probe;
	IdemBackoff backoff = {LEASE_POLL_FIRST_MS, LEASE_POLL_MAX_MS};
	TimestampTz now;
	IdemRecord	record;
	bool		replay = false;

	BeginLeaseCall(&call, owner, key, settings->wait_timeout_ms);
	for (;;)
	{
		now = GetCurrentTimestamp();
		IdemKeyTableProbe(&call.table, key, now, probe);
		if (probe->state == IDEM_RECORD_BUSY)
		{
			IdemKeyTableEndProbes(&call.table);
			UnlockKey(&call);
			IdemWaitForWriter(probe->busy_xid, key, &call.wait);
			continue;
		}
		if ((probe->state == IDEM_RECORD_LIVE || probe->state == IDEM_RECORD_CLAIMED) &&
			(probe->record.token == 0 || probe->record.request_hash != request_hash))
			ReportMismatch(key, probe);
		if (probe->state == IDEM_RECORD_LIVE)
		{
			EndLeaseCall(&call);
			claim->replay = true;
			claim->token = probe->record.token;
			claim->outcome = probe->record.outcome;
			claim->recovery_point = NULL;
			claim->recovery_data = NULL;
			return;
		}
		if (probe->state == IDEM_RECORD_CLAIMED &&
			probe->record.lease_expires_at > now)
		{
			if (probe->own)
				ReportClaimedHere(key, &probe->record);
			UnlockKey(&call);
			SleepOnLease(&call, probe->record.lease_expires_at, &backoff);
			continue;
		}
		if (call.locked)
			break;
		IdemCheckWritable(key, IDEM_WRITE_CLAIM);
		LockKey(&call);
	}

	/* No outcome and no live lease, and the key lock is held: claim it. */
	RequireSynchronousCommit();
	record.request_hash = request_hash;
	record.token = NextToken();
	record.lease_expires_at = now + lease_usecs;
	record.expires_at = Max(now + (TimestampTz) settings->ttl_s * USECS_PER_SEC,
							record.lease_expires_at);
	record.outcome = NULL;
	IdemKeyTableEndProbes(&call.table);
	if (idem_arbiter == IDEM_ARBITER_DYNAMODB)
		replay = ClaimInDynamoDB(owner, key, &record, now, lease_usecs,
								 settings->wait_timeout_ms);
	if (probe->state == IDEM_RECORD_CLAIMED)
	{
		/* take over a lapsed or released claim, with its last checkpoint */
		if (probe->record.lease_expires_at != DT_NOBEGIN)
			IdemStatsCount(IDEM_STAT_TAKEOVER);
		if (!replay && probe->record.recovery_point != NULL)
			IdemStatsCount(IDEM_STAT_RESUMPTION);
		record.created_at = probe->record.created_at;
		record.recovery_point = probe->record.recovery_point;
		record.recovery_data = probe->record.recovery_data;
		IdemKeyTableEndProbes(&call.table);
		IdemKeyTableUpdate(&call.table, owner, key, &probe->tid, &record);
	}
	else
	{
		record.created_at = now;
		record.recovery_point = NULL;
		record.recovery_data = NULL;
		IdemKeyTableEndProbes(&call.table);
		IdemKeyTableWrite(&call.table, owner, key, &record,
						  probe->state == IDEM_RECORD_EXPIRED ? &probe->tid : NULL);
	}
	/* an outcome another party recorded is in DynamoDB already */
	if (!replay)
		IdemOutboxRecordLease(owner, key, record.token, NULL,
							  record.lease_expires_at, record.expires_at,
							  ArbiterClaimOf(record.token));
	EndLeaseCall(&call);

	claim->replay = replay;
	claim->token = record.token;
	claim->outcome = record.outcome;
	claim->recovery_point = replay ? NULL : record.recovery_point;
	claim->recovery_data = replay ? NULL : record.recovery_data;
}

/*
 * Find the claim that token holds on (owner, key), under the key lock, or
 * raise the stale-token error saying why there is none.  A lapsed lease
 * that nobody took over still belongs to its token.
 */
static IdemRecord *
HeldClaim(LeaseCall *call, int64 token, const char *action)
{
	IdemRecordProbe *probe = &call->probe;
	IdemRecord *record = &probe->record;
	const char *why = NULL;

	IdemCheckWritable(call->key, IDEM_WRITE_HOLDER);
	ProbeLocked(call);
	if (probe->state == IDEM_RECORD_ABSENT || probe->state == IDEM_RECORD_EXPIRED)
		why = "No claim of this key exists: it was never claimed, or its record expired.";
	else if (record->token == 0)
		why = "The key was recorded by idem.idempotent_call, which takes no token.";
	else if (probe->state == IDEM_RECORD_LIVE)
		why = record->token == token ?
			"This token already completed the key." :
			psprintf("The key was completed by a later holder (token " INT64_FORMAT ").",
					 record->token);
	else if (record->token > token)
		why = psprintf("The key was claimed again (token " INT64_FORMAT "), so this token's lease had lapsed or was released.",
					   record->token);
	else if (record->token < token)
		why = psprintf("The key is held by token " INT64_FORMAT "; this token was never given out for it.",
					   record->token);
	else if (record->lease_expires_at == DT_NOBEGIN)
		why = "This token released the key.";
	if (why == NULL)
		return record;

	IdemStatsCount(IDEM_STAT_STALE_TOKEN);
	ereport(ERROR,
			(errcode(ERRCODE_IDEM_STALE_TOKEN),
			 errmsg("token " INT64_FORMAT " does not hold idempotency key \"%s\"; cannot %s",
					token, IdemKeyForMessage(call->key), action),
			 errdetail_internal("%s", why),
			 errhint("Claim the key again with idem.claim: it returns the recorded outcome, or a new token.")));
	pg_unreachable();
}

/*
 * Write the held claim's new version; once the key lock goes, the
 * uncommitted row makes other callers wait for this transaction.
 */
static void
ReplaceHeldClaim(LeaseCall *call, IdemRecord *record)
{
	IdemKeyTableEndProbes(&call->table);
	IdemKeyTableUpdate(&call->table, call->owner, call->key, &call->probe.tid, record);
}

/* Refuse a NULL token argument. */
void
IdemLeaseRequireToken(bool isnull, text *key)
{
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("token for idempotency key \"%s\" must not be null",
						IdemKeyForMessage(key)),
				 errdetail("Only the holder of a claim may change it, and the token is what proves it."),
				 errhint("Pass the token that idem.claim returned.")));
}

/*
 * Record the outcome of the claim token holds, in the caller's transaction,
 * so that the caller's own writes commit together with it.
 */
void
IdemLeaseComplete(Oid owner, text *key, int64 token, Jsonb *outcome,
				  const IdemLeaseSettings *settings)
{
	LeaseCall	call;
	IdemRecord *record;
	TimestampTz now;

	if (outcome == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("outcome for idempotency key \"%s\" must not be null",
						IdemKeyForMessage(key)),
				 errdetail("Retries of the request get this outcome back; a missing outcome would leave them nothing to return."),
				 errhint("Record a JSON null ('null'::jsonb) if the work has no result, or release the key with idem.release.")));
	if (IdemSyncEnabled())
		IdemOutboxCheckOutcome(key, outcome);

	BeginLeaseCall(&call, owner, key, settings->wait_timeout_ms);
	record = HeldClaim(&call, token, "complete it");
	RequireSynchronousCommit();
	now = GetCurrentTimestamp();
	record->outcome = outcome;
	record->expires_at = now + (TimestampTz) settings->ttl_s * USECS_PER_SEC;
	ReplaceHeldClaim(&call, record);
	IdemStatsCount(IDEM_STAT_EXECUTION);
	IdemOutboxRecordLease(owner, key, token, outcome,
						  record->lease_expires_at, record->expires_at,
						  ArbiterClaimOf(token));
	EndLeaseCall(&call);
}

/* Record a recovery point of the claim token holds, for a later holder. */
void
IdemLeaseCheckpoint(Oid owner, text *key, int64 token, text *point, Jsonb *data,
					const IdemLeaseSettings *settings)
{
	LeaseCall	call;
	IdemRecord *record;

	if (point == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("recovery point for idempotency key \"%s\" must not be null",
						IdemKeyForMessage(key)),
				 errdetail("The point names the step a later holder resumes from."),
				 errhint("Pass a name such as 'charged', and the data the later holder needs in the fourth argument.")));

	BeginLeaseCall(&call, owner, key, settings->wait_timeout_ms);
	record = HeldClaim(&call, token, "record a checkpoint");
	RequireSynchronousCommit();
	record->recovery_point = point;
	record->recovery_data = data;
	ReplaceHeldClaim(&call, record);
	EndLeaseCall(&call);
}

/*
 * Renew the lease of the claim token holds to now + lease_usecs; returns
 * when it now ends.  The record's expiry moves with it, so that a purge
 * never deletes a live claim.
 */
TimestampTz
IdemLeaseExtend(Oid owner, text *key, int64 token, int64 lease_usecs,
				const IdemLeaseSettings *settings)
{
	LeaseCall	call;
	IdemRecord *record;
	TimestampTz now;

	BeginLeaseCall(&call, owner, key, settings->wait_timeout_ms);
	record = HeldClaim(&call, token, "extend its lease");
	RequireSynchronousCommit();
	now = GetCurrentTimestamp();
	record->lease_expires_at = now + lease_usecs;
	record->expires_at = Max(record->expires_at, record->lease_expires_at);
	ReplaceHeldClaim(&call, record);
	IdemOutboxRecordLease(owner, key, token, NULL,
						  record->lease_expires_at, record->expires_at,
						  ArbiterClaimOf(token));
	EndLeaseCall(&call);
	return record->lease_expires_at;
}

/*
 * Give the key back without an outcome, keeping its last checkpoint: the
 * next claim runs at once instead of waiting for the lease to lapse.
 */
void
IdemLeaseRelease(Oid owner, text *key, int64 token,
				 const IdemLeaseSettings *settings)
{
	LeaseCall	call;
	IdemRecord *record;

	BeginLeaseCall(&call, owner, key, settings->wait_timeout_ms);
	record = HeldClaim(&call, token, "release it");
	RequireSynchronousCommit();
	record->lease_expires_at = DT_NOBEGIN;
	ReplaceHeldClaim(&call, record);
	IdemStatsCount(IDEM_STAT_RELEASE);
	IdemOutboxRecordLease(owner, key, token, NULL,
						  GetCurrentTimestamp(), record->expires_at,
						  ArbiterClaimOf(token));
	EndLeaseCall(&call);
}
