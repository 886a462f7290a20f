/*-------------------------------------------------------------------------
 *
 * sync_worker.c
 *		The background worker that delivers idem.sync_outbox to DynamoDB.
 *
 * The worker sleeps on its latch until a commit that queued outcomes wakes
 * it, a retry falls due, or an answer arrives.  It takes due rows from the
 * outbox, keeps up to idem.dynamodb_parallelism conditional PutItems in
 * flight, and records each verdict in the outbox:
 *
 *	delivered	the PutItem succeeded, or its condition failed and the item
 *				there holds the same outcome (a redelivery after a crash),
 *				or, for a state of a leased key, the same or a newer state
 *				of the same record (this one was superseded)
 *	conflict	the condition failed and the item holds another outcome, or
 *				another system's state of the key
 *	failed		a permanent error; idem.sync_retry_failed() requeues it
 *	pending		a transient error; retried after an exponential backoff
 *				with jitter, without limit in time
 *
 * Which rows are on the wire lives only in this process: after a crash of
 * anything, the restarted worker sends every pending row again, and the
 * conditional write turns a second delivery of the same item into a no-op.
 *
 * The worker also deletes the arbiter claims of rolled-back calls, which
 * backends hand it through shared memory (sync.c): a conditional DeleteItem
 * each, retried after a transient error until the claim's lease ends, when
 * it would lapse anyway.  These live only in memory; a crash loses them,
 * and the claims then lapse at the end of their leases.
 *
 * Commits wake the worker; besides, while rows are pending it looks at the
 * outbox at least every SAFETY_POLL_MS, so that a row no wake-up announced
 * (one made due by hand, say) does not wait for the next retry of another.
 * An idle worker sleeps until it is woken.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "dynamodb.h"
#include "sync.h"
#include "sync_format.h"
#include "sync_outbox.h"
#include "sync_worker.h"

/* Bodies beyond this are not sent: DynamoDB items are at most 400 KB. */
#define MAX_REQUEST_BYTES	(4 * 1024 * 1024)

/* First retry delay; doubles with each attempt up to the maximum. */
#define RETRY_BASE_DELAY_MS 100
/* The longest retry delay of an arbiter claim's states (RetryDelayMs). */
#define ARBITER_RETRY_MAX_DELAY_MS 1000.0
/* The longest the worker sleeps without a look at the outbox. */
#define SAFETY_POLL_MS		5000
/* Claim deletes the worker holds at most; more wait in shared memory. */
#define MAX_CLAIM_DELETES	64

typedef enum JobPhase
{
	JOB_PUT,					/* conditional PutItem on the wire */
	JOB_GET,					/* GetItem after a failed condition */
	JOB_DELETE					/* DeleteItem of a rolled-back claim */
} JobPhase;

/* One outbox row being delivered. */
typedef struct SyncJob
{
	JobPhase	phase;			/* first, as in ClaimDeleteJob */
	int64		id;
	int			attempts;
	MemoryContext cxt;
	char	   *item_id;
	char	   *put_body;
	char	   *get_body;
	Jsonb	   *outcome;		/* NULL for an INPROGRESS lease state */
	char	   *role;			/* the row's owner, as written in pg_role */
	bool		leased;			/* a state of a leased key */
	int64		token;			/* leased: the fencing token */
	char	   *arbiter_claim;	/* arbiter mode: the claim; else NULL */
} SyncJob;

/* A claim of a rolled-back call to delete. */
typedef struct ClaimDeleteJob
{
	JobPhase	phase;			/* JOB_DELETE */
	bool		on_wire;
	int			attempts;
	TimestampTz next_attempt_at;
	IdemSyncClaimDelete claim;
} ClaimDeleteJob;

static ClaimDeleteJob claim_deletes[MAX_CLAIM_DELETES];
static int	nclaim_deletes = 0;

static SyncJob **jobs;			/* idem.dynamodb_parallelism slots */
static int	njobs = 0;
static int	maxjobs = 0;
static IdemDynamoClient *client = NULL;
static char *database_name = NULL;
static char *connected_database = NULL;	/* idem.dynamodb_database at start */
static IdemOutboxVerdict *verdicts;	/* what became of jobs, not yet written */
static int	nverdicts = 0;
static MemoryContext loop_cxt;

/* Start a transaction with a snapshot and an SPI connection. */
static void
BeginWork(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

/* Commit what BeginWork started. */
static void
EndWork(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* The ids of the rows on the wire. */
static int64 *
InFlightIds(void)
{
	int64	   *ids = palloc(sizeof(int64) * (njobs + 1));

	for (int i = 0; i < njobs; i++)
		ids[i] = jobs[i]->id;
	return ids;
}

/* Free a job and its slot. */
static void
DropJob(SyncJob *job)
{
	for (int i = 0; i < njobs; i++)
		if (jobs[i] == job)
		{
			jobs[i] = jobs[--njobs];
			break;
		}
	MemoryContextDelete(job->cxt);
}

/*
 * Exponential backoff with jitter: half fixed, half random.  A state of an
 * arbiter claim backs off at most ARBITER_RETRY_MAX_DELAY_MS: until it lands,
 * the claim's lease is all that keeps other parties from running the key, so
 * it goes out again soon after DynamoDB is back.
 */
static double
RetryDelayMs(int attempts, bool arbiter)
{
	double		d = RETRY_BASE_DELAY_MS * pow(2.0, Min(attempts, 30));

	d = Min(d, (double) idem_dynamodb_retry_max_delay);
	if (arbiter)
		d = Min(d, ARBITER_RETRY_MAX_DELAY_MS);
	return d / 2 + IdemRandomFraction() * d / 2;
}

/* Note what became of a job; the verdict is written by ApplyVerdicts. */
static void
AddVerdict(SyncJob *job, IdemOutboxVerdictKind kind, const char *error,
		   Jsonb *remote)
{
	IdemOutboxVerdict *v = &verdicts[nverdicts++];
	MemoryContext old = MemoryContextSwitchTo(loop_cxt);

	v->id = job->id;
	v->kind = kind;
	/* Count this attempt, as the row's attempts will once this is written. */
	v->retry_delay_ms = kind == IDEM_OUTBOX_RETRY ?
		RetryDelayMs(job->attempts + 1, job->arbiter_claim != NULL) : 0;
	v->error = error ? pstrdup(error) : NULL;
	v->remote = NULL;
	if (remote)
	{
		v->remote = palloc(VARSIZE(remote));
		memcpy(v->remote, remote, VARSIZE(remote));
	}
	MemoryContextSwitchTo(old);
	if (error && kind != IDEM_OUTBOX_DELIVERED)
		IdemSyncSetLastError(error);
	DropJob(job);
}

/*
 * Take due outbox rows into free slots and send their PutItems.  Returns
 * true if the slots filled up (more rows may be due), and sets *next_due to
 * when the earliest row not taken falls due (0 if none is waiting).
 */
static bool
FetchJobs(TimestampTz *next_due, bool *outbox_missing)
{
	int			want = maxjobs - njobs;
	int64	   *skip;
	int			nskip;
	IdemOutboxRow *rows;
	int			got;
	bool		full;
	TimestampTz now = GetCurrentTimestamp();

	*next_due = 0;
	*outbox_missing = false;
	if (want <= 0)
		return true;

	BeginWork("idem sync: reading the outbox");
	if (!IdemOutboxExists())
	{
		EndWork();
		*outbox_missing = true;
		return false;
	}
	/* The rows on the wire already: both reads below leave them out. */
	skip = InFlightIds();
	nskip = njobs;
	got = IdemOutboxFetchDue(skip, nskip, want, &rows);
	full = (got == want);

	for (int r = 0; r < got; r++)
	{
		IdemOutboxRow *row = &rows[r];
		SyncJob    *job;
		MemoryContext cxt;
		MemoryContext old;

		cxt = AllocSetContextCreate(TopMemoryContext, "idem sync job",
									ALLOCSET_SMALL_SIZES);
		old = MemoryContextSwitchTo(cxt);
		job = palloc0(sizeof(SyncJob));
		job->cxt = cxt;
		job->id = row->id;
		job->attempts = row->attempts;
		/* The row dies with the transaction; the job lives until its verdict. */
		if (row->outcome != NULL)
		{
			job->outcome = palloc(VARSIZE(row->outcome));
			memcpy(job->outcome, row->outcome, VARSIZE(row->outcome));
		}
		job->role = pstrdup(row->role);
		job->leased = row->leased;
		job->token = row->token;
		job->item_id = IdemSyncItemId(row->key_prefix, row->key);
		job->arbiter_claim = row->arbiter_claim ? pstrdup(row->arbiter_claim) : NULL;
		if (row->leased || row->arbiter_claim)
		{
			IdemSyncLease lease;

			lease.token = row->token;
			lease.version = row->id;
			lease.in_progress = row->in_progress;
			lease.in_progress_expiration = row->in_progress_expiration;
			if (row->arbiter_claim)
				job->put_body = IdemSyncPutArbiterItemBody(idem_dynamodb_table, job->item_id,
														   job->arbiter_claim,
														   row->leased ? &lease : NULL,
														   job->outcome, row->expires_at,
														   row->role, database_name, now);
			else
				job->put_body = IdemSyncPutLeaseItemBody(idem_dynamodb_table, job->item_id,
														 &lease, job->outcome,
														 row->expires_at, row->role,
														 database_name, now);
		}
		else
			job->put_body = IdemSyncPutItemBody(idem_dynamodb_table, job->item_id,
												job->outcome, row->expires_at,
												row->role, database_name, now);
		job->phase = JOB_PUT;
		MemoryContextSwitchTo(old);

		jobs[njobs++] = job;
		if (strlen(job->put_body) > MAX_REQUEST_BYTES)
		{
			AddVerdict(job, IDEM_OUTBOX_FAILED,
					   "the outcome is far larger than DynamoDB's 400 KB item limit", NULL);
			continue;
		}
		IdemDynamoSend(client, "PutItem", job->put_body, job);
		IdemSyncCountRequest();
	}

	if (!full)
		*next_due = IdemOutboxNextDue(skip, nskip);
	/* Nothing left to deliver: an old problem is no longer the state. */
	if (got == 0 && njobs == 0 && *next_due == 0 && IdemSyncHasLastError() &&
		IdemOutboxAllDelivered())
		IdemSyncClearLastError();
	EndWork();
	return full;
}

/* Write the collected verdicts to the outbox in one transaction. */
static void
ApplyVerdicts(void)
{
	if (nverdicts == 0)
		return;

	BeginWork("idem sync: recording deliveries");
	if (IdemOutboxExists())
		IdemOutboxRecordVerdicts(verdicts, nverdicts);
	EndWork();
	nverdicts = 0;
}

/*
 * Decide what the item read back after a failed condition means for a job.
 *
 * First, an item of the job's own record: for a state of an arbiter claim,
 * the item of that claim; for a state of a leased key, an item of the same
 * record (same database, role and, by the id, key).  It holds this state
 * or a newer one, so this one was delivered or superseded (the newest state
 * of a key wins, whatever order its rows were sent in); or an older one,
 * written between our PutItem and GetItem, so try again.
 *
 * Otherwise the item is another party's: while it is in progress an
 * outcome waits; the same outcome is a delivery; anything else is a
 * conflict.  A claim state of arbiter mode that finds another party's
 * item, in progress or not, lost its key when its lease ended: a conflict.
 */
static void
JudgeReadBack(SyncJob *job, IdemSyncRemote *remote)
{
	bool		in_progress;

	if (!remote->found)
	{
		AddVerdict(job, IDEM_OUTBOX_RETRY,
				   "the item that failed the write condition was gone when read back", NULL);
		return;
	}
	if (job->arbiter_claim != NULL &&
		remote->pg_claim != NULL && strcmp(remote->pg_claim, job->arbiter_claim) == 0)
	{
		if (job->leased && remote->leased && remote->pg_version >= job->id)
			AddVerdict(job, IDEM_OUTBOX_DELIVERED, NULL, NULL);
		else
			AddVerdict(job, IDEM_OUTBOX_RETRY,
					   "an older state of the claim was written while this one was", NULL);
		return;
	}
	if (job->arbiter_claim == NULL && job->leased && remote->leased &&
		remote->pg_database != NULL && strcmp(remote->pg_database, database_name) == 0 &&
		remote->pg_role != NULL && strcmp(remote->pg_role, job->role) == 0)
	{
		if (remote->pg_token > job->token ||
			(remote->pg_token == job->token && remote->pg_version >= job->id))
			AddVerdict(job, IDEM_OUTBOX_DELIVERED, NULL, NULL);
		else
			AddVerdict(job, IDEM_OUTBOX_RETRY,
					   "an older state of the key was written while this one was", NULL);
		return;
	}

	in_progress = remote->status != NULL && strcmp(remote->status, "INPROGRESS") == 0;
	if (job->arbiter_claim != NULL && job->outcome == NULL)
		AddVerdict(job, IDEM_OUTBOX_CONFLICT,
				   psprintf("item %s was taken over by another party after the claim's lease ended",
							job->item_id),
				   remote->data);
	else if (in_progress)
		AddVerdict(job, IDEM_OUTBOX_RETRY,
				   job->arbiter_claim != NULL ?
				   "another party holds the key in progress: the claim's lease ended before its outcome was delivered" :
				   "another system holds the key in progress",
				   remote->data);
	else if (job->outcome != NULL && remote->data != NULL &&
			 compareJsonbContainers(&remote->data->root, &job->outcome->root) == 0)
		AddVerdict(job, IDEM_OUTBOX_DELIVERED, NULL, NULL);
	else if (job->arbiter_claim != NULL)
		AddVerdict(job, IDEM_OUTBOX_CONFLICT,
				   psprintf("item %s holds another party's outcome: the claim's lease ended before its outcome was delivered",
							job->item_id),
				   remote->data);
	else if (job->outcome == NULL)
		AddVerdict(job, IDEM_OUTBOX_CONFLICT,
				   psprintf("item %s already holds an outcome of another system", job->item_id),
				   remote->data);
	else
		AddVerdict(job, IDEM_OUTBOX_CONFLICT,
				   psprintf("item %s already holds a different outcome", job->item_id),
				   remote->data);
}

/*
 * Decide what a DeleteItem answer means for a rolled-back claim: done when
 * the claim is gone (or was never there, or was replaced); after a
 * transient error, again later while its lease lasts.
 */
static void
HandleClaimDeleteResult(ClaimDeleteJob *del, IdemDynamoResult *res)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz retry_at;

	del->on_wire = false;
	del->attempts++;
	retry_at = now + (TimestampTz) (RetryDelayMs(del->attempts, true) * 1000);
	if (res->status == IDEM_DYNAMO_TRANSIENT && retry_at < del->claim.lease_end)
	{
		del->next_attempt_at = retry_at;
		return;
	}
	if (res->status != IDEM_DYNAMO_OK && res->status != IDEM_DYNAMO_CONDITION_FAILED)
	{
		ereport(LOG,
				(errmsg("idem DynamoDB sync could not delete the claim on item %s of a rolled-back call",
						del->claim.item_id),
				 errdetail_internal("%s", res->error ? res->error : "no answer"),
				 errhint("Other parties can run the key once the claim's lease ends.")));
		IdemSyncSetLastError(psprintf("could not delete the claim on item %s of a rolled-back call: %s",
									  del->claim.item_id, res->error ? res->error : "no answer"));
	}
	/* Done: mark it for removal by SendClaimDeletes. */
	del->claim.item_id[0] = '\0';
}

/*
 * Take the claim deletes queued in shared memory, drop the finished ones,
 * and send those due.  Returns when the next retry falls due (0: none).
 */
static TimestampTz
SendClaimDeletes(void)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = 0;
	int			kept = 0;

	for (int i = 0; i < nclaim_deletes; i++)
		if (claim_deletes[i].claim.item_id[0] != '\0')
		{
			if (kept != i)
				claim_deletes[kept] = claim_deletes[i];
			kept++;
		}
	nclaim_deletes = kept;
	{
		IdemSyncClaimDelete taken[MAX_CLAIM_DELETES];
		int			ntaken = IdemSyncTakeClaimDeletes(taken,
													  MAX_CLAIM_DELETES - nclaim_deletes,
													  nclaim_deletes);

		for (int i = 0; i < ntaken; i++)
		{
			ClaimDeleteJob *del = &claim_deletes[nclaim_deletes++];

			memset(del, 0, sizeof(ClaimDeleteJob));
			del->phase = JOB_DELETE;
			del->next_attempt_at = now;
			del->claim = taken[i];
		}
	}
	for (int i = 0; i < nclaim_deletes; i++)
	{
		ClaimDeleteJob *del = &claim_deletes[i];

		if (del->on_wire)
			continue;
		if (del->next_attempt_at > now)
		{
			if (next == 0 || del->next_attempt_at < next)
				next = del->next_attempt_at;
			continue;
		}
		IdemDynamoSend(client, "DeleteItem",
					   IdemSyncDeleteClaimBody(idem_dynamodb_table, del->claim.item_id,
											   del->claim.claim),
					   del);
		IdemSyncCountRequest();
		del->on_wire = true;
	}
	return next;
}

/* Decide what a PutItem or GetItem answer means for its job. */
static void
HandleResult(IdemDynamoResult *res)
{
	SyncJob    *job = (SyncJob *) res->private;

	if (job->phase == JOB_DELETE)
	{
		HandleClaimDeleteResult((ClaimDeleteJob *) res->private, res);
		return;
	}
	if (res->status == IDEM_DYNAMO_TRANSIENT)
	{
		AddVerdict(job, IDEM_OUTBOX_RETRY, res->error, NULL);
		return;
	}
	if (res->status == IDEM_DYNAMO_PERMANENT)
	{
		AddVerdict(job, IDEM_OUTBOX_FAILED, res->error, NULL);
		return;
	}

	if (job->phase == JOB_PUT)
	{
		if (res->status == IDEM_DYNAMO_OK)
			AddVerdict(job, IDEM_OUTBOX_DELIVERED, NULL, NULL);
		else
		{
			/* Someone holds the id: read what is there. */
			MemoryContext old = MemoryContextSwitchTo(job->cxt);

			job->get_body = IdemSyncGetItemBody(idem_dynamodb_table, job->item_id);
			MemoryContextSwitchTo(old);
			job->phase = JOB_GET;
			IdemDynamoSend(client, "GetItem", job->get_body, job);
			IdemSyncCountRequest();
		}
		return;
	}

	/* A GetItem answer after a failed condition. */
	if (res->status == IDEM_DYNAMO_OK)
	{
		IdemSyncRemote remote;

		IdemSyncReadItem(res->body, &remote);
		JudgeReadBack(job, &remote);
	}
	else
		AddVerdict(job, IDEM_OUTBOX_RETRY, "GetItem answered a failed condition", NULL);
}

/* Drop the client and forget the jobs on the wire (they stay pending). */
static void
ResetClient(void)
{
	if (client)
		IdemDynamoDestroy(client);
	client = NULL;
	while (njobs > 0)
		DropJob(jobs[0]);
	/* The claim deletes on the wire go out again with the next client. */
	for (int i = 0; i < nclaim_deletes; i++)
		claim_deletes[i].on_wire = false;
}

/* Build a client from the settings; NULL, with the reason recorded, if none. */
static IdemDynamoClient *
MakeClient(void)
{
	char	   *problem;
	IdemDynamoClient *made = IdemSyncConnect(idem_dynamodb_parallelism, &problem);

	if (made == NULL)
		IdemSyncSetLastError(problem);
	return made;
}

/* Main function of the sync worker. */
void
IdemSyncWorkerMain(Datum main_arg)
{
	bool		need_fetch = true;
	bool		more_waiting = false;
	bool		outbox_missing = false;
	TimestampTz next_due = 0;
	TimestampTz last_fetch_at = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	IdemSyncAttachWorker();

	connected_database = MemoryContextStrdup(TopMemoryContext, idem_dynamodb_database);
	BackgroundWorkerInitializeConnection(connected_database, NULL, 0);
	/* Resolve every name of the worker's queries in pg_catalog first. */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	StartTransactionCommand();
	database_name = MemoryContextStrdup(TopMemoryContext, get_database_name(MyDatabaseId));
	CommitTransactionCommand();

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "idem sync loop",
									 ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		IdemDynamoResult res;
		long		timeout;
		bool		woken;
		TimestampTz next_delete;
		TimestampTz wake_at;

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(loop_cxt);
		MemoryContextSwitchTo(loop_cxt);

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (strcmp(idem_dynamodb_database, connected_database) != 0)
			{
				/* Exit code 1: the postmaster starts a new worker for it. */
				ereport(LOG,
						(errmsg("idem DynamoDB sync worker restarting to connect to database \"%s\"",
								idem_dynamodb_database)));
				proc_exit(1);
			}
			ResetClient();
			need_fetch = true;
		}

		if (!IdemSyncEnabled() || outbox_missing)
		{
			/*
			 * Nothing to do until a reload or a commit sets the latch; a
			 * missing outbox is looked for again now and then, since
			 * CREATE EXTENSION wakes nobody.
			 */
			ResetClient();
			IdemSyncSetInFlight(0);
			(void) WaitLatch(MyLatch,
							 WL_LATCH_SET | WL_EXIT_ON_PM_DEATH |
							 (outbox_missing ? WL_TIMEOUT : 0),
							 SAFETY_POLL_MS, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			outbox_missing = false;
			need_fetch = true;
			continue;
		}

		if (client == NULL)
		{
			client = MakeClient();
			if (client == NULL)
			{
				(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1,
								 PG_WAIT_EXTENSION);
				ResetLatch(MyLatch);
				continue;
			}
			if (maxjobs != idem_dynamodb_parallelism)
			{
				maxjobs = idem_dynamodb_parallelism;
				jobs = MemoryContextAlloc(TopMemoryContext, sizeof(SyncJob *) * maxjobs);
				verdicts = MemoryContextAlloc(TopMemoryContext, sizeof(IdemOutboxVerdict) * maxjobs);
			}
		}

		if (next_due != 0 && GetCurrentTimestamp() >= next_due)
			need_fetch = true;
		/*
		 * The safety poll, while rows are pending: a row that no wake-up
		 * announced waits no longer than SAFETY_POLL_MS behind them.  An
		 * idle worker does not poll.
		 */
		if ((next_due != 0 || njobs > 0) &&
			TimestampDifferenceExceeds(last_fetch_at, GetCurrentTimestamp(),
									   SAFETY_POLL_MS))
			need_fetch = true;
		if ((need_fetch || more_waiting) && njobs < maxjobs)
		{
			need_fetch = false;
			last_fetch_at = GetCurrentTimestamp();
			more_waiting = FetchJobs(&next_due, &outbox_missing);
			if (outbox_missing)
			{
				IdemSyncSetLastError(psprintf("idem is not installed in database \"%s\" (idem.dynamodb_database)",
											  database_name));
				continue;
			}
			ApplyVerdicts();
		}

		next_delete = SendClaimDeletes();
		IdemSyncSetInFlight(njobs);

		wake_at = 0;
		if (next_due != 0 || njobs > 0)
			wake_at = TimestampTzPlusMilliseconds(last_fetch_at, SAFETY_POLL_MS);
		if (next_due != 0 && next_due < wake_at)
			wake_at = next_due;
		if (next_delete != 0 && (wake_at == 0 || next_delete < wake_at))
			wake_at = next_delete;
		timeout = -1;
		if (wake_at != 0)
		{
			long		secs;
			int			usecs;

			TimestampDifference(GetCurrentTimestamp(), wake_at, &secs, &usecs);
			timeout = secs * 1000 + usecs / 1000 + 1;
		}
		if (more_waiting && njobs < maxjobs)
			timeout = 0;

		woken = IdemDynamoWait(client, timeout, PG_WAIT_EXTENSION);
		if (woken)
			need_fetch = true;

		while (IdemDynamoNextResult(client, &res))
			HandleResult(&res);
		/* Freed slots and rescheduled retries call for a fresh look. */
		if (nverdicts > 0)
			need_fetch = true;
		ApplyVerdicts();
	}
}
