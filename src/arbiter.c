/*-------------------------------------------------------------------------
 *
 * arbiter.c
 *		Arbiter mode: a first call claims its key in DynamoDB before it
 *		runs, so that every PostgreSQL cluster and every Powertools Lambda
 *		handler sharing the table runs each key once between them.
 *
 * With idem.arbiter = 'dynamodb', a first call that holds the local key
 * lock sends one conditional PutItem of an INPROGRESS item, under
 * Powertools' own claim condition, before fn runs.  The condition decides:
 *
 *	written		the key is ours until the lease ends: fn runs, and after
 *				commit the sync worker turns the item COMPLETED, conditional
 *				on our claim (sync_worker.c)
 *	failed		one GetItem: a COMPLETED item is another party's outcome,
 *				replayed without running fn; an INPROGRESS item is another
 *				party running the key, waited for with backoff up to
 *				idem.wait_timeout, then IK409
 *
 * Each item names its claim in pg_claim.  A claim whose transaction or
 * savepoint rolls back is handed to the sync worker, which deletes it at
 * once, conditional on that name, so that another party can run the key
 * without waiting for the lease to end.  The abort itself sends nothing:
 * it runs with interrupts held, also at backend exit and shutdown, and
 * must not wait for the network.  The hand-over goes through shared
 * memory, since the transaction's outbox rows vanish with it; whatever a
 * crash loses there lapses at the end of its lease.
 * A DynamoDB fault fails the call with IK503; there is no local fallback,
 * which would give up the guarantee between clusters.
 *
 * The HTTP wait sleeps on the process latch, so a cancel or a
 * statement_timeout ends it at once; the client is then dropped, since
 * the answer still on its way belongs to no one any more.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "arbiter.h"
#include "dynamodb.h"
#include "errcodes.h"
#include "key.h"
#include "keylock.h"
#include "stats.h"
#include "sync.h"
#include "sync_format.h"

/* Pause between two looks at another party's INPROGRESS item. */
#define POLL_FIRST_MS	10
#define POLL_MAX_MS		200

int			idem_arbiter = IDEM_ARBITER_LOCAL;

static const struct config_enum_entry arbiter_options[] = {
	{"local", IDEM_ARBITER_LOCAL, false},
	{"dynamodb", IDEM_ARBITER_DYNAMODB, false},
	{NULL, 0, false}
};

/* A claim of this transaction: deleted if the (sub)transaction aborts. */
typedef struct HeldClaim
{
	SubTransactionId subid;
	char	   *item_id;
	char	   *claim;
	char	   *key;			/* for messages */
	TimestampTz lease_end;		/* others may take the key over from then */
} HeldClaim;

static HeldClaim *held = NULL;
static int	nheld = 0;
static int	maxheld = 0;
static MemoryContext arbiter_cxt = NULL;	/* held claims and abort work */
static bool callbacks_registered = false;

static IdemDynamoClient *client = NULL;
static char *client_settings = NULL;	/* what client was built from */
static char *database_name = NULL;

/* Define idem.arbiter. */
void
IdemArbiterInit(void)
{
	DefineCustomEnumVariable("idem.arbiter",
							 "Who decides which call of a key runs: this cluster alone, or DynamoDB.",
							 "With dynamodb, a first call claims its key in idem.dynamodb_table before it runs, so that every cluster and Lambda function sharing the table runs the key once.",
							 &idem_arbiter,
							 IDEM_ARBITER_LOCAL, arbiter_options,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);
}

/* Drop the client, aborting whatever it has on the wire. */
static void
DropClient(void)
{
	if (client != NULL)
		IdemDynamoDestroy(client);
	client = NULL;
}

/*
 * The settings a client is built from, as one string, so that a reload
 * that changes any of them builds a new client.
 */
static char *
ClientSettings(void)
{
	return psprintf("%s\n%s\n%s\n%s\n%s\n%d", idem_dynamodb_endpoint,
					idem_dynamodb_region, idem_dynamodb_access_key_id,
					idem_dynamodb_secret_access_key, idem_dynamodb_session_token,
					idem_dynamodb_request_timeout);
}

/* The backend's client; NULL with *problem set when none can be built. */
static IdemDynamoClient *
Client(char **problem)
{
	char	   *settings = ClientSettings();

	*problem = NULL;
	if (client != NULL && strcmp(settings, client_settings) == 0)
		return client;
	DropClient();
	if (client_settings != NULL)
		pfree(client_settings);
	client_settings = MemoryContextStrdup(TopMemoryContext, settings);
	client = IdemSyncConnect(4, problem);
	return client;
}

/* Refuse arbiter mode where its claims could not be completed. */
static void
RequireArbiter(text *key)
{
	char	   *problem = NULL;

	if (!IdemSyncEnabled())
		problem = "idem.dynamodb_table is not set.";
	else if (!IdemSyncWorkerRegistered())
		problem = "idem is not in shared_preload_libraries, so no sync worker runs to complete the claims.";
	else if (IdemSyncSetupProblem() != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot claim idempotency key \"%s\" in DynamoDB: arbiter mode is not set up in this database",
						IdemKeyForMessage(key)),
				 errdetail_internal("Claims made here would never be completed: %s.",
									IdemSyncSetupProblem()),
				 errhint("Make arbiter-mode calls in the database named by idem.dynamodb_database, or set idem.arbiter to 'local' in this one.")));
	else if (Client(&problem) == NULL)
		problem = psprintf("There are %s.", problem);
	if (problem == NULL)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot claim idempotency key \"%s\" in DynamoDB: arbiter mode is not set up",
					IdemKeyForMessage(key)),
			 errdetail_internal("%s", problem),
			 errhint("Configure the idem.dynamodb_* settings and load idem at server start, or set idem.arbiter to 'local'.")));
}

/* Report a DynamoDB fault; the call stops and nothing has run. */
static void
ReportFault(text *key, const char *operation, IdemDynamoResult *res)
{
	IdemStatsCount(IDEM_STAT_DYNAMODB_FAILURE);
	ereport(ERROR,
			(errcode(ERRCODE_IDEM_ARBITER_UNAVAILABLE),
			 errmsg("could not claim idempotency key \"%s\" in DynamoDB",
					IdemKeyForMessage(key)),
			 errdetail_internal("%s failed: %s", operation,
								res->error ? res->error : "no answer"),
			 res->status == IDEM_DYNAMO_TRANSIENT ?
			 errhint("DynamoDB is unreachable, slow or throttling.  Nothing ran; retry the call later.") :
			 errhint("Nothing ran.  Check the idem.dynamodb_* settings and the table, then retry the call.")));
}

/*
 * Send one request and wait for its answer; a cancel or timeout interrupts
 * the wait at once.
 */
static void
Request(text *key, const char *operation, const char *body,
		IdemDynamoResult *res)
{
	char	   *problem;
	IdemDynamoClient *c = Client(&problem);

	if (c == NULL)
	{
		RequireArbiter(key);
		elog(ERROR, "no DynamoDB client: %s", problem);
	}
	IdemStatsRoundTripBegin();
	IdemDynamoSend(c, operation, body, NULL);
	PG_TRY();
	{
		while (!IdemDynamoNextResult(c, res))
		{
			(void) IdemDynamoWait(c, -1, PG_WAIT_EXTENSION);
			CHECK_FOR_INTERRUPTS();
		}
	}
	PG_CATCH();
	{
		DropClient();
		PG_RE_THROW();
	}
	PG_END_TRY();
	IdemStatsRoundTripEnd();
}

/*
 * Hand the claims of subtransaction from and those below it to the sync
 * worker, which deletes each only while it still holds its item, and
 * forget them.  Runs during abort, also at backend exit and shutdown: it
 * neither waits for DynamoDB nor raises an error.  A claim that cannot be
 * queued lapses at the end of its lease.
 */
static void
DeleteHeldClaims(SubTransactionId from)
{
	int			kept = 0;
	int			lost = 0;

	for (int i = 0; i < nheld; i++)
	{
		if (held[i].subid < from)
			held[kept++] = held[i];
		else if (!IdemSyncQueueClaimDelete(held[i].item_id, held[i].claim,
										   held[i].lease_end))
			lost++;
	}
	nheld = kept;
	if (lost > 0)
		ereport(WARNING,
				(errmsg("could not queue the deletion of %d DynamoDB claims of a rolled-back idempotent call",
						lost),
				 errdetail("The sync worker's queue of claims to delete is full or not set up."),
				 errhint("Other parties can run the keys once their leases end.")));
	if (nheld == 0)
		MemoryContextReset(arbiter_cxt);
}

/* Forget every claim: the transaction is over. */
static void
ForgetHeldClaims(void)
{
	nheld = 0;
	if (arbiter_cxt != NULL)
		MemoryContextReset(arbiter_cxt);
}

/*
 * Before commit: a claim whose lease has lapsed may have been taken over by
 * another party, which then runs the key too; roll back rather than commit
 * a second outcome.
 */
static void
RefuseLapsedClaims(void)
{
	TimestampTz now = GetCurrentTimestamp();

	for (int i = 0; i < nheld; i++)
	{
		if (held[i].lease_end > now)
			continue;
		ereport(ERROR,
				(errcode(ERRCODE_IDEM_STALE_TOKEN),
				 errmsg("the DynamoDB claim of idempotency key \"%s\" lapsed before commit",
						held[i].key),
				 errdetail("The claim's lease ended at %s, so another cluster or Lambda function may run the key; this transaction is rolled back.",
						   timestamptz_to_str(held[i].lease_end)),
				 errhint("Set idem.lease longer than the function runs, then retry the call.")));
	}
}

/*
 * At transaction end: a commit leaves its claims to the sync worker, whose
 * outbox rows committed with them; a rollback deletes them.
 */
static void
ArbiterXactCallback(XactEvent event, void *arg)
{
	if (nheld == 0)
		return;
	switch (event)
	{
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			DeleteHeldClaims(InvalidSubTransactionId);
			ForgetHeldClaims();
			break;
		case XACT_EVENT_PRE_COMMIT:
			RefuseLapsedClaims();
			break;
		case XACT_EVENT_PRE_PREPARE:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot PREPARE a transaction that claimed idempotency keys in DynamoDB"),
					 errdetail("A prepared transaction could be rolled back by another session, which could not delete the claims."),
					 errhint("Make the calls in a transaction that commits directly, or set idem.arbiter to 'local'.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			ForgetHeldClaims();
			break;
		default:
			break;
	}
}

/* At the rollback of a savepoint: delete the claims made under it. */
static void
ArbiterSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	if (nheld > 0 && event == SUBXACT_EVENT_ABORT_SUB)
		DeleteHeldClaims(mySubid);
}

/* Remember a claim before it is sent, so that a rollback deletes it. */
static void
HoldClaim(const char *item_id, const char *claim, text *key,
		  TimestampTz lease_end)
{
	if (!callbacks_registered)
	{
		arbiter_cxt = AllocSetContextCreate(TopMemoryContext, "idem arbiter",
											ALLOCSET_SMALL_SIZES);
		RegisterXactCallback(ArbiterXactCallback, NULL);
		RegisterSubXactCallback(ArbiterSubXactCallback, NULL);
		callbacks_registered = true;
	}
	if (nheld == maxheld)
	{
		int			newmax = Max(16, maxheld * 2);

		held = held == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(HeldClaim) * newmax) :
			repalloc(held, sizeof(HeldClaim) * newmax);
		maxheld = newmax;
	}
	held[nheld].subid = GetCurrentSubTransactionId();
	held[nheld].item_id = MemoryContextStrdup(arbiter_cxt, item_id);
	held[nheld].claim = MemoryContextStrdup(arbiter_cxt, claim);
	held[nheld].key = MemoryContextStrdup(arbiter_cxt, IdemKeyForMessage(key));
	held[nheld].lease_end = lease_end;
	nheld++;
}

/* Forget the latest claim: its PutItem wrote nothing (failed condition, never sent). */
static void
ReleaseLatestClaim(void)
{
	Assert(nheld > 0);
	nheld--;
}

/*
 * The start of the claim names of idempotent_call for owner in this
 * database of this running server: the system identifier, the server's
 * start (a copy of the cluster shares the identifier, never the start), the
 * database and the role.
 */
static char *
CallClaimPrefix(Oid owner)
{
	return psprintf(UINT64_FORMAT "/" INT64_FORMAT "/%u/%u/", GetSystemIdentifier(),
					(int64) PgStartTime, MyDatabaseId, owner);
}

/* A new claim name of idempotent_call: CallClaimPrefix and 64 random bits. */
static char *
NewClaim(Oid owner)
{
	uint64		r;

	if (!pg_strong_random(&r, sizeof(r)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random claim name")));
	return psprintf("%s%016llx", CallClaimPrefix(owner), (unsigned long long) r);
}

/*
 * Whether an INPROGRESS item is the orphan of an idempotent_call of (owner,
 * key) on this server that did not commit: a claim whose DeleteItem failed,
 * a PutItem that landed after its call was cancelled, or a backend that was
 * killed.  The caller holds the key lock of (owner, key) and found no
 * record of it, so no transaction here runs the key: the claim is dead, and
 * waiting for its lease would gain nothing.
 */
static bool
IsOwnOrphan(const IdemSyncRemote *remote, Oid owner)
{
	char	   *prefix;

	if (remote->pg_claim == NULL || remote->leased)
		return false;
	prefix = CallClaimPrefix(owner);
	return strncmp(remote->pg_claim, prefix, strlen(prefix)) == 0;
}

/*
 * The claim name of a leased key's token: the cluster's system identifier
 * and the token, so that the later states of the claim (complete, extend,
 * release, in other transactions) name it without storing it.
 */
char *
IdemArbiterLeaseClaim(int64 token)
{
	return psprintf(UINT64_FORMAT "/t" INT64_FORMAT, GetSystemIdentifier(),
					token);
}

/*
 * Claim (owner, key) in DynamoDB for a first call, or find the outcome
 * another party recorded.  token is idem.claim's fencing token (NULL for
 * idempotent_call); others may take the key over lease_usecs after the
 * PutItem that wins it if this call never completes it.  The lease counts
 * from that PutItem, not from the call: a call may wait longer than a lease
 * for another party before it wins the key.  result->lease_end tells when
 * it ends.  The caller holds the local key lock, so that one call per
 * cluster asks.
 */
void
IdemArbiterClaimKey(Oid owner, text *key, const int64 *token,
					int64 lease_usecs, TimestampTz expires_at,
					int wait_timeout_ms, IdemArbiterClaim *result)
{
	char	   *keystr = text_to_cstring(key);
	char	   *item_id;
	char	   *claim;
	char	   *role = GetUserNameFromId(owner, false);
	IdemWait	wait;
	IdemBackoff backoff = {POLL_FIRST_MS, POLL_MAX_MS};
	char	   *orphan = NULL;	/* an orphaned claim of ours to replace */

	RequireArbiter(key);
	if (database_name == NULL)
		database_name = MemoryContextStrdup(TopMemoryContext,
											get_database_name(MyDatabaseId));
	item_id = IdemSyncItemId(idem_dynamodb_key_prefix, keystr);
	claim = token ? IdemArbiterLeaseClaim(*token) : NewClaim(owner);
	IdemWaitStart(&wait, GetCurrentTimestamp(), wait_timeout_ms);
	memset(result, 0, sizeof(IdemArbiterClaim));

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		TimestampTz lease_end = now + lease_usecs;
		IdemDynamoResult res;
		IdemSyncRemote remote;

		/* held before it is sent: an interrupted PutItem may still land */
		HoldClaim(item_id, claim, key, lease_end);
		Request(key, "PutItem",
				IdemSyncPutClaimItemBody(idem_dynamodb_table, item_id, claim, orphan,
										 token, lease_end, Max(expires_at, lease_end), role,
										 database_name, now),
				&res);
		if (res.status == IDEM_DYNAMO_OK)
		{
			IdemStatsCount(IDEM_STAT_DYNAMODB_CLAIM);
			result->claim = claim;
			result->lease_end = lease_end;
			return;
		}
		if (res.status != IDEM_DYNAMO_CONDITION_FAILED)
		{
			if (!res.sent)
				ReleaseLatestClaim();
			ReportFault(key, "PutItem", &res);
		}
		ReleaseLatestClaim();

		Request(key, "GetItem", IdemSyncGetItemBody(idem_dynamodb_table, item_id),
				&res);
		if (res.status != IDEM_DYNAMO_OK)
			ReportFault(key, "GetItem", &res);
		IdemSyncReadItem(res.body, &remote);
		if (remote.found && remote.status != NULL &&
			strcmp(remote.status, "COMPLETED") == 0)
		{
			if (remote.has_data && remote.data == NULL)
			{
				IdemStatsCount(IDEM_STAT_MISMATCH);
				ereport(ERROR,
						(errcode(ERRCODE_IDEM_KEY_MISMATCH),
						 errmsg("idempotency key \"%s\" holds an outcome in DynamoDB that is not JSON",
								IdemKeyForMessage(key)),
						 errdetail("Item %s is COMPLETED, but its data holds a set or binary value.",
								   item_id),
						 errhint("Use another key, or replace the item's data with a JSON value.")));
			}
			if (remote.pg_role != NULL && strcmp(remote.pg_role, role) != 0)
			{
				IdemStatsCount(IDEM_STAT_MISMATCH);
				ereport(ERROR,
						(errcode(ERRCODE_IDEM_KEY_MISMATCH),
						 errmsg("idempotency key \"%s\" was recorded in DynamoDB by another role",
								IdemKeyForMessage(key)),
						 errdetail("Item %s holds the outcome of role \"%s\"; its outcome is not returned to role \"%s\".",
								   item_id, remote.pg_role, role),
						 errhint("In arbiter mode a key names one request across every cluster: give each role its own keys, or its own idem.dynamodb_key_prefix.")));
			}
			IdemStatsCount(IDEM_STAT_DYNAMODB_REPLAY);
			result->replay = true;
			result->outcome = remote.data ? remote.data :
				DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("null")));
			result->expires_at = remote.expiration;
			return;
		}

		/* Nobody runs the key if the item is a dead claim of ours: replace it. */
		if (token == NULL && remote.found && IsOwnOrphan(&remote, owner) &&
			(orphan == NULL || strcmp(orphan, remote.pg_claim) != 0))
		{
			orphan = remote.pg_claim;
			continue;
		}

		/* Someone runs the key (or it is gone since the PutItem: look again). */
		if (IdemWaitIsOver(&wait, now))
		{
			IdemStatsCount(IDEM_STAT_TIMEOUT);
			ereport(ERROR,
					(errcode(ERRCODE_IDEM_KEY_IN_USE),
					 errmsg("idempotency key \"%s\" is in use by another cluster or Lambda function",
							IdemKeyForMessage(key)),
					 errdetail("DynamoDB item %s is INPROGRESS and did not complete within %s (%d ms).",
							   item_id,
							   wait.by_lock_timeout ? "lock_timeout" : "idem.wait_timeout",
							   wait.timeout_ms),
					 errhint("Retry the call later: once the other party completes the key, the call returns its outcome.")));
		}
		if (remote.found)
		{
			IdemStatsWaitBegin();
			IdemBackoffSleep(&backoff, wait.deadline);
			IdemStatsWaitEnd();
		}
	}
}
