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
 *				there holds the same outcome (a redelivery after a crash)
 *	conflict	the condition failed and the item holds another outcome
 *	failed		a permanent error; idem.sync_retry_failed() requeues it
 *	pending		a transient error; retried after an exponential backoff
 *				with jitter, without limit in time
 *
 * Which rows are on the wire lives only in this process: after a crash of
 * anything, the restarted worker sends every pending row again, and the
 * conditional write turns a second delivery of the same item into a no-op.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "sync_internal.h"

/* Bodies beyond this are not sent: DynamoDB items are at most 400 KB. */
#define MAX_REQUEST_BYTES	(4 * 1024 * 1024)

/* First retry delay; doubles with each attempt up to the maximum. */
#define RETRY_BASE_DELAY_MS 100

typedef enum JobPhase
{
	JOB_PUT,					/* conditional PutItem on the wire */
	JOB_GET						/* GetItem after a failed condition */
} JobPhase;

/* One outbox row being delivered. */
typedef struct SyncJob
{
	int64		id;
	int			attempts;
	JobPhase	phase;
	MemoryContext cxt;
	char	   *item_id;
	char	   *put_body;
	char	   *get_body;
	Jsonb	   *outcome;
} SyncJob;

typedef enum VerdictKind
{
	VERDICT_DELIVERED,
	VERDICT_RETRY,
	VERDICT_FAILED,
	VERDICT_CONFLICT
} VerdictKind;

/* What became of one job, to be written to the outbox. */
typedef struct Verdict
{
	int64		id;
	VerdictKind kind;
	int			attempts;
	char	   *error;
	Jsonb	   *remote;
} Verdict;

static SyncJob **jobs;			/* sync_parallelism slots */
static int	njobs = 0;
static int	maxjobs = 0;
static DynamoClient *client = NULL;
static char *database_name = NULL;
static char *connected_database = NULL;	/* idem.dynamodb_database at start */
static Verdict *verdicts;
static int	nverdicts = 0;
static MemoryContext loop_cxt;

/* Forget the worker in shared memory when it exits. */
static void
SyncWorkerDetach(int code, Datum arg)
{
	SpinLockAcquire(&sync_shared->mutex);
	sync_shared->worker_pgprocno = -1;
	sync_shared->worker_pid = 0;
	sync_shared->in_flight = 0;
	SpinLockRelease(&sync_shared->mutex);
}

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

/* Whether this database has idem's outbox (inside a transaction). */
static bool
OutboxExists(void)
{
	Oid			nsp = get_namespace_oid("idem", true);

	return OidIsValid(nsp) && OidIsValid(get_relname_relid("sync_outbox", nsp));
}

/* The ids of the rows on the wire, as an int8[] datum. */
static Datum
InFlightIds(void)
{
	Datum	   *ids = palloc(sizeof(Datum) * (njobs + 1));

	for (int i = 0; i < njobs; i++)
		ids[i] = Int64GetDatum(jobs[i]->id);
	return PointerGetDatum(construct_array(ids, njobs, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
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

/* Note what became of a job; the verdict is written by ApplyVerdicts. */
static void
AddVerdict(SyncJob *job, VerdictKind kind, const char *error, Jsonb *remote)
{
	Verdict    *v = &verdicts[nverdicts++];
	MemoryContext old = MemoryContextSwitchTo(loop_cxt);

	v->id = job->id;
	v->kind = kind;
	v->attempts = job->attempts + 1;
	v->error = error ? pstrdup(error) : NULL;
	v->remote = NULL;
	if (remote)
	{
		v->remote = palloc(VARSIZE(remote));
		memcpy(v->remote, remote, VARSIZE(remote));
	}
	MemoryContextSwitchTo(old);
	if (error && kind != VERDICT_DELIVERED)
		SyncSetLastError(error);
	DropJob(job);
}

/* Exponential backoff with jitter: half fixed, half random. */
static double
RetryDelayMs(int attempts)
{
	double		d = RETRY_BASE_DELAY_MS * pow(2.0, Min(attempts, 30));

	d = Min(d, (double) sync_retry_max_delay);
	return d / 2 + pg_prng_double(&pg_global_prng_state) * d / 2;
}

/* Count a request as sent, for idem.sync_status. */
static void
CountRequest(void)
{
	SpinLockAcquire(&sync_shared->mutex);
	sync_shared->requests_sent++;
	SpinLockRelease(&sync_shared->mutex);
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
	Datum		args[2];
	Oid			argtypes[2] = {INT8ARRAYOID, INT4OID};
	int			ret;
	uint64		got;
	bool		full;
	TimestampTz now = GetCurrentTimestamp();

	*next_due = 0;
	*outbox_missing = false;
	if (want <= 0)
		return true;

	BeginWork("idem sync: reading the outbox");
	if (!OutboxExists())
	{
		EndWork();
		*outbox_missing = true;
		return false;
	}
	args[0] = InFlightIds();
	args[1] = Int32GetDatum(want);
	ret = SPI_execute_with_args("SELECT o.id, o.attempts, o.key_prefix, o.key, o.outcome, "
								"  pg_catalog.floor(pg_catalog.date_part('epoch', o.expires_at))::int8, "
								"  pg_catalog.pg_get_userbyid(o.owner)::text "
								"FROM idem.sync_outbox o "
								"WHERE o.state = 'pending' "
								"  AND o.next_attempt_at <= pg_catalog.clock_timestamp() "
								"  AND o.id <> ALL ($1) "
								"ORDER BY o.next_attempt_at, o.id LIMIT $2",
								2, argtypes, args, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read idem.sync_outbox: %s", SPI_result_code_string(ret));
	got = SPI_processed;
	full = (got == (uint64) want);

	for (uint64 r = 0; r < got; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		SyncJob    *job;
		MemoryContext cxt;
		MemoryContext old;
		char	   *prefix;
		char	   *key;
		int64		expiration;
		char	   *role;

		cxt = AllocSetContextCreate(TopMemoryContext, "idem sync job",
									ALLOCSET_SMALL_SIZES);
		old = MemoryContextSwitchTo(cxt);
		job = palloc0(sizeof(SyncJob));
		job->cxt = cxt;
		job->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		job->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		prefix = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
		key = TextDatumGetCString(SPI_getbinval(tup, desc, 4, &isnull));
		job->outcome = DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 5, &isnull));
		expiration = DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull));
		role = TextDatumGetCString(SPI_getbinval(tup, desc, 7, &isnull));
		job->item_id = SyncItemId(prefix, key);
		job->put_body = SyncPutItemBody(sync_table, job->item_id, job->outcome,
										expiration, role, database_name, now);
		job->phase = JOB_PUT;
		MemoryContextSwitchTo(old);

		jobs[njobs++] = job;
		if (strlen(job->put_body) > MAX_REQUEST_BYTES)
		{
			AddVerdict(job, VERDICT_FAILED,
					   "the outcome is far larger than DynamoDB's 400 KB item limit", NULL);
			continue;
		}
		DynamoSend(client, "PutItem", job->put_body, job);
		CountRequest();
	}

	if (!full)
	{
		ret = SPI_execute_with_args("SELECT pg_catalog.min(o.next_attempt_at) "
									"FROM idem.sync_outbox o "
									"WHERE o.state = 'pending' AND o.id <> ALL ($1)",
									1, argtypes, args, NULL, true, 0);
		if (ret == SPI_OK_SELECT && SPI_processed == 1)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			if (!isnull)
				*next_due = DatumGetTimestampTz(d);
		}
	}
	EndWork();
	return full;
}

/* Write the collected verdicts to the outbox in one transaction. */
static void
ApplyVerdicts(void)
{
	Datum	   *delivered;
	int			ndelivered = 0;
	Oid			argtypes[4] = {INT8OID, TEXTOID, FLOAT8OID, JSONBOID};

	if (nverdicts == 0)
		return;

	BeginWork("idem sync: recording deliveries");
	if (!OutboxExists())
	{
		EndWork();
		nverdicts = 0;
		return;
	}
	delivered = palloc(sizeof(Datum) * nverdicts);
	for (int i = 0; i < nverdicts; i++)
	{
		Verdict    *v = &verdicts[i];
		Datum		args[4];
		char		nulls[4] = {' ', ' ', ' ', ' '};
		const char *sql = NULL;
		int			ret;

		args[0] = Int64GetDatum(v->id);
		args[1] = v->error ? CStringGetTextDatum(v->error) : (Datum) 0;
		nulls[1] = v->error ? ' ' : 'n';
		args[2] = Float8GetDatum(0);
		args[3] = v->remote ? JsonbPGetDatum(v->remote) : (Datum) 0;
		nulls[3] = v->remote ? ' ' : 'n';

		switch (v->kind)
		{
			case VERDICT_DELIVERED:
				delivered[ndelivered++] = Int64GetDatum(v->id);
				continue;
			case VERDICT_RETRY:
				args[2] = Float8GetDatum(RetryDelayMs(v->attempts));
				sql = "UPDATE idem.sync_outbox SET attempts = attempts + 1, last_error = $2, "
					"next_attempt_at = pg_catalog.clock_timestamp() + $3 * interval '1 millisecond', "
					"remote_outcome = $4 WHERE id = $1 AND state = 'pending'";
				break;
			case VERDICT_FAILED:
				sql = "UPDATE idem.sync_outbox SET attempts = attempts + 1, last_error = $2, "
					"state = 'failed', remote_outcome = $4 "
					"WHERE id = $1 AND state = 'pending' AND $3 IS NOT NULL";
				break;
			case VERDICT_CONFLICT:
				sql = "UPDATE idem.sync_outbox SET attempts = attempts + 1, last_error = $2, "
					"state = 'conflict', remote_outcome = $4 "
					"WHERE id = $1 AND state = 'pending' AND $3 IS NOT NULL";
				break;
		}
		ret = SPI_execute_with_args(sql, 4, argtypes, args, nulls, false, 0);
		if (ret != SPI_OK_UPDATE)
			elog(ERROR, "could not update idem.sync_outbox: %s", SPI_result_code_string(ret));
	}
	if (ndelivered > 0)
	{
		Oid			arrtype[1] = {INT8ARRAYOID};
		Datum		arr[1];
		int			ret;

		arr[0] = PointerGetDatum(construct_array(delivered, ndelivered, INT8OID, 8,
												 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		ret = SPI_execute_with_args("UPDATE idem.sync_outbox SET state = 'delivered', "
									"attempts = attempts + 1, last_error = NULL, "
									"delivered_at = pg_catalog.clock_timestamp() "
									"WHERE id = ANY ($1) AND state = 'pending'",
									1, arrtype, arr, NULL, false, 0);
		if (ret != SPI_OK_UPDATE)
			elog(ERROR, "could not update idem.sync_outbox: %s", SPI_result_code_string(ret));
	}
	EndWork();
	nverdicts = 0;
}

/* Decide what a PutItem or GetItem answer means for its job. */
static void
HandleResult(DynamoResult *res)
{
	SyncJob    *job = (SyncJob *) res->private;

	if (res->status == DYNAMO_TRANSIENT)
	{
		AddVerdict(job, VERDICT_RETRY, res->error, NULL);
		return;
	}
	if (res->status == DYNAMO_PERMANENT)
	{
		AddVerdict(job, VERDICT_FAILED, res->error, NULL);
		return;
	}

	if (job->phase == JOB_PUT)
	{
		if (res->status == DYNAMO_OK)
			AddVerdict(job, VERDICT_DELIVERED, NULL, NULL);
		else
		{
			/* Someone holds the id: read what is there. */
			MemoryContext old = MemoryContextSwitchTo(job->cxt);

			job->get_body = SyncGetItemBody(sync_table, job->item_id);
			MemoryContextSwitchTo(old);
			job->phase = JOB_GET;
			DynamoSend(client, "GetItem", job->get_body, job);
			CountRequest();
		}
		return;
	}

	/* A GetItem answer after a failed condition. */
	if (res->status == DYNAMO_OK)
	{
		bool		found;
		char	   *status;
		Jsonb	   *remote = SyncRemoteData(res->body, &found, &status);

		if (!found)
			AddVerdict(job, VERDICT_RETRY,
					   "the item that failed the write condition was gone when read back", NULL);
		else if (status != NULL && strcmp(status, "INPROGRESS") == 0)
			AddVerdict(job, VERDICT_RETRY,
					   "another system holds the key in progress", remote);
		else if (remote != NULL &&
				 compareJsonbContainers(&remote->root, &job->outcome->root) == 0)
			AddVerdict(job, VERDICT_DELIVERED, NULL, NULL);
		else
			AddVerdict(job, VERDICT_CONFLICT,
					   psprintf("item %s already holds a different outcome", job->item_id),
					   remote);
	}
	else
		AddVerdict(job, VERDICT_RETRY, "GetItem answered a failed condition", NULL);
}

/* Drop the client and forget the jobs on the wire (they stay pending). */
static void
ResetClient(void)
{
	if (client)
		DynamoDestroy(client);
	client = NULL;
	while (njobs > 0)
		DropJob(jobs[0]);
}

/*
 * Build a client from the settings and the server's AWS environment; NULL,
 * with the reason recorded, when credentials are missing.
 */
static DynamoClient *
MakeClient(void)
{
	DynamoConfig config;
	const char *region = sync_region;
	char	   *endpoint;

	if (region == NULL || region[0] == '\0')
		region = getenv("AWS_REGION");
	if (region == NULL || region[0] == '\0')
		region = getenv("AWS_DEFAULT_REGION");
	if (region == NULL || region[0] == '\0')
		region = "us-east-1";
	if (sync_endpoint && sync_endpoint[0] != '\0')
		endpoint = sync_endpoint;
	else
		endpoint = psprintf("https://dynamodb.%s.amazonaws.com", region);

	config.endpoint = endpoint;
	config.region = region;
	config.access_key_id = sync_access_key_id[0] ? sync_access_key_id : getenv("AWS_ACCESS_KEY_ID");
	config.secret_access_key = sync_secret_access_key[0] ? sync_secret_access_key : getenv("AWS_SECRET_ACCESS_KEY");
	config.session_token = sync_session_token[0] ? sync_session_token : getenv("AWS_SESSION_TOKEN");
	config.timeout_ms = sync_request_timeout;
	config.max_connections = sync_parallelism;

	if (config.access_key_id == NULL || config.access_key_id[0] == '\0' ||
		config.secret_access_key == NULL || config.secret_access_key[0] == '\0')
	{
		SyncSetLastError("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
						 "in the server's environment, or idem.dynamodb_access_key_id and "
						 "idem.dynamodb_secret_access_key");
		return NULL;
	}
	return DynamoCreate(&config);
}

/* Main function of the sync worker. */
void
SyncWorkerMain(Datum main_arg)
{
	bool		need_fetch = true;
	bool		more_waiting = false;
	bool		outbox_missing = false;
	TimestampTz next_due = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	if (sync_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idem's shared memory is not set up"),
				 errhint("Add idem to shared_preload_libraries.")));

	SpinLockAcquire(&sync_shared->mutex);
	sync_shared->worker_pgprocno = MyProc->pgprocno;
	sync_shared->worker_pid = MyProcPid;
	SpinLockRelease(&sync_shared->mutex);
	before_shmem_exit(SyncWorkerDetach, 0);

	connected_database = MemoryContextStrdup(TopMemoryContext, sync_database);
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
		DynamoResult res;
		long		timeout = -1;
		bool		woken;

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(loop_cxt);
		MemoryContextSwitchTo(loop_cxt);

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (strcmp(sync_database, connected_database) != 0)
			{
				/* Exit code 1: the postmaster starts a new worker for it. */
				ereport(LOG,
						(errmsg("idem DynamoDB sync worker restarting to connect to database \"%s\"",
								sync_database)));
				proc_exit(1);
			}
			ResetClient();
			need_fetch = true;
		}

		if (!SyncEnabled() || outbox_missing)
		{
			/* Nothing to do until a reload or a commit sets the latch. */
			ResetClient();
			SpinLockAcquire(&sync_shared->mutex);
			sync_shared->in_flight = 0;
			SpinLockRelease(&sync_shared->mutex);
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1,
							 PG_WAIT_EXTENSION);
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
			if (maxjobs != sync_parallelism)
			{
				maxjobs = sync_parallelism;
				jobs = MemoryContextAlloc(TopMemoryContext, sizeof(SyncJob *) * maxjobs);
				verdicts = MemoryContextAlloc(TopMemoryContext, sizeof(Verdict) * maxjobs);
			}
		}

		if (next_due != 0 && GetCurrentTimestamp() >= next_due)
			need_fetch = true;
		if ((need_fetch || more_waiting) && njobs < maxjobs)
		{
			need_fetch = false;
			more_waiting = FetchJobs(&next_due, &outbox_missing);
			if (outbox_missing)
			{
				SyncSetLastError(psprintf("idem is not installed in database \"%s\" (idem.dynamodb_database)",
										  database_name));
				continue;
			}
			ApplyVerdicts();
		}

		SpinLockAcquire(&sync_shared->mutex);
		sync_shared->in_flight = njobs;
		SpinLockRelease(&sync_shared->mutex);

		if (next_due != 0)
		{
			long		secs;
			int			usecs;

			TimestampDifference(GetCurrentTimestamp(), next_due, &secs, &usecs);
			timeout = secs * 1000 + usecs / 1000 + 1;
		}
		if (more_waiting && njobs < maxjobs)
			timeout = 0;

		woken = DynamoWait(client, timeout, PG_WAIT_EXTENSION);
		if (woken)
			need_fetch = true;

		while (DynamoNextResult(client, &res))
			HandleResult(&res);
		/* Freed slots and rescheduled retries call for a fresh look. */
		if (nverdicts > 0)
			need_fetch = true;
		ApplyVerdicts();
	}
}
