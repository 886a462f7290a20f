/*-------------------------------------------------------------------------
 *
 * sync.c
 *		idem's DynamoDB sync as backends see it: settings, shared memory,
 *		the registration of the sync worker, and its wake-up at commit.
 *
 * A backend that queues an outcome in the outbox (sync_outbox.c) asks for
 * a wake-up; a transaction callback sets the worker's latch once the
 * transaction has committed.  A prepared transaction's rows become visible
 * at COMMIT PREPARED, which may run in any session: a utility hook wakes
 * the worker after every COMMIT PREPARED.  While rows are pending, the
 * worker also looks at the outbox every few seconds on its own
 * (sync_worker.c).  With idem.dynamodb_table
 * empty the sync is off.
 *
 * The shared state holds what idem.sync_status shows of the worker: its
 * process, the requests it has on the wire and the latest delivery problem.
 * It also holds the queue of arbiter claims to delete: a rollback cannot
 * wait for DynamoDB while it aborts, and its outbox rows vanish with it, so
 * it hands each claim to the worker through shared memory instead.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <dlfcn.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "dynamodb.h"
#include "sync.h"
#include "sync_secrets.h"

#define SYNC_LAST_ERROR_LEN 512

/*
 * Claims of rolled-back calls waiting for the worker to delete them.  A
 * full queue costs nothing but time: the claims it cannot take lapse at
 * the end of their leases.
 */
#define CLAIM_DELETE_SLOTS	256

/* State of the sync worker that backends can see, in shared memory. */
typedef struct SyncShared
{
	slock_t		mutex;
	int			worker_pgprocno;	/* -1 when no worker runs */
	pid_t		worker_pid;
	int			in_flight;		/* requests on the wire right now */
	uint64		requests_sent;	/* since the server started */
	TimestampTz last_error_at;
	char		last_error[SYNC_LAST_ERROR_LEN];
	int			deletes_held;	/* claim deletes the worker has taken */
	int			delete_first;	/* ring of claim deletes: oldest slot */
	int			delete_count;	/* ... and how many are queued */
	IdemSyncClaimDelete deletes[CLAIM_DELETE_SLOTS];
} SyncShared;

/* Settings */
char	   *idem_dynamodb_table = NULL;
char	   *idem_dynamodb_region = NULL;
char	   *idem_dynamodb_endpoint = NULL;
char	   *idem_dynamodb_key_prefix = NULL;
char	   *idem_dynamodb_database = NULL;
char	   *idem_dynamodb_access_key_id = NULL;
char	   *idem_dynamodb_secret_access_key = NULL;
char	   *idem_dynamodb_session_token = NULL;
int			idem_dynamodb_request_timeout = 5000;
int			idem_dynamodb_parallelism = 32;
int			idem_dynamodb_retry_max_delay = 60000;

static SyncShared *sync_shared = NULL;

static bool wake_at_commit = false;
static bool xact_callback_registered = false;
static bool setup_warned = false;
static char *session_database = NULL;

static ProcessUtility_hook_type prev_process_utility_hook = NULL;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

PG_FUNCTION_INFO_V1(idem_sync_worker_state);
PG_FUNCTION_INFO_V1(idem_sync_worker_state_1_1);
PG_FUNCTION_INFO_V1(idem_sync_wakeup);

static void WakeWorker(void);

/* Accept only table names DynamoDB accepts (or empty: sync off). */
static bool
CheckTable(char **newval, void **extra, GucSource source)
{
	size_t		len = strlen(*newval);

	if (len == 0)
		return true;
	if (len < 3 || len > 255 ||
		strspn(*newval, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != len)
	{
		GUC_check_errdetail("A DynamoDB table name has 3 to 255 characters among a-z, A-Z, 0-9, '_', '-' and '.'.");
		return false;
	}
	return true;
}

/* Accept only region names that cannot break the endpoint or the signature. */
static bool
CheckRegion(char **newval, void **extra, GucSource source)
{
	size_t		len = strlen(*newval);

	if (strspn(*newval, "abcdefghijklmnopqrstuvwxyz0123456789-") != len)
	{
		GUC_check_errdetail("A region name such as \"eu-west-1\" has only lower-case letters, digits and '-'.");
		return false;
	}
	return true;
}

/* Accept only http and https endpoint URLs (or empty: derived from region). */
static bool
CheckEndpoint(char **newval, void **extra, GucSource source)
{
	if ((*newval)[0] == '\0' ||
		strncmp(*newval, "http://", 7) == 0 ||
		strncmp(*newval, "https://", 8) == 0)
		return true;
	GUC_check_errdetail("The endpoint must be an http:// or https:// URL.");
	return false;
}

/* Size of the shared state. */
static Size
SyncShmemSize(void)
{
	return MAXALIGN(sizeof(SyncShared));
}

#if PG_VERSION_NUM >= 150000
/* Ask for the shared state's memory (PostgreSQL 15 and later). */
static void
SyncShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(SyncShmemSize());
}
#endif

/* Find or create the shared state. */
static void
SyncShmemStartup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	sync_shared = ShmemInitStruct("idem DynamoDB sync", SyncShmemSize(), &found);
	if (!found)
	{
		memset(sync_shared, 0, sizeof(SyncShared));
		SpinLockInit(&sync_shared->mutex);
		sync_shared->worker_pgprocno = -1;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Wake the sync worker after COMMIT PREPARED: the rows of the prepared
 * transaction become visible then, and no transaction callback of the
 * session that queued them runs any more.
 */
#if PG_VERSION_NUM >= 140000
static void
SyncProcessUtility(PlannedStmt *pstmt, const char *queryString,
				   bool readOnlyTree, ProcessUtilityContext context,
				   ParamListInfo params, QueryEnvironment *queryEnv,
				   DestReceiver *dest, QueryCompletion *qc)
#else
static void
SyncProcessUtility(PlannedStmt *pstmt, const char *queryString,
				   ProcessUtilityContext context,
				   ParamListInfo params, QueryEnvironment *queryEnv,
				   DestReceiver *dest, QueryCompletion *qc)
#endif
{
	Node	   *parsetree = pstmt->utilityStmt;

	/* 14 added readOnlyTree */
	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, queryString,
#if PG_VERSION_NUM >= 140000
								  readOnlyTree,
#endif
								  context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString,
#if PG_VERSION_NUM >= 140000
								readOnlyTree,
#endif
								context, params, queryEnv, dest, qc);
	/* COMMIT PREPARED runs outside a transaction block: it has committed. */
	if (IsA(parsetree, TransactionStmt) &&
		((TransactionStmt *) parsetree)->kind == TRANS_STMT_COMMIT_PREPARED)
		WakeWorker();
}

/*
 * The file this code was loaded from, so that the worker loads the same one
 * even when shared_preload_libraries names it by path; "idem" if unknown.
 */
static const char *
OwnLibraryPath(void)
{
	Dl_info		info;

	if (dladdr((void *) IdemSyncInit, &info) != 0 && info.dli_fname != NULL &&
		info.dli_fname[0] == '/' && strlen(info.dli_fname) < BGW_MAXLEN)
		return info.dli_fname;
	return "idem";
}

/*
 * Define the idem.dynamodb_* settings, keep the credentials out of the log
 * and, when loaded at server start, reserve shared memory and register the
 * sync worker.
 */
void
IdemSyncInit(void)
{
	DefineCustomStringVariable("idem.dynamodb_table",
							   "DynamoDB table that receives idem's outcomes; empty turns the sync off.",
							   NULL, &idem_dynamodb_table, "",
							   PGC_SIGHUP, 0, CheckTable, NULL, NULL);
	DefineCustomStringVariable("idem.dynamodb_region",
							   "AWS region of the DynamoDB table; empty means AWS_REGION, AWS_DEFAULT_REGION or us-east-1.",
							   NULL, &idem_dynamodb_region, "",
							   PGC_SIGHUP, 0, CheckRegion, NULL, NULL);
	DefineCustomStringVariable("idem.dynamodb_endpoint",
							   "DynamoDB endpoint URL; empty means https://dynamodb.<region>.amazonaws.com.",
							   NULL, &idem_dynamodb_endpoint, "",
							   PGC_SIGHUP, 0, CheckEndpoint, NULL, NULL);
	DefineCustomStringVariable("idem.dynamodb_key_prefix",
							   "Powertools key prefix of the items idem writes, captured when an outcome is recorded.",
							   "Set it per role or database to match the Lambda function's keyPrefix.",
							   &idem_dynamodb_key_prefix, "idem",
							   PGC_SUSET, 0, NULL, NULL, NULL);
	/* SIGHUP, not POSTMASTER: idem may also be loaded after startup. */
	DefineCustomStringVariable("idem.dynamodb_database",
							   "Database whose idem.sync_outbox the sync worker delivers.",
							   "After a change, the worker restarts to connect to the new database.",
							   &idem_dynamodb_database, "postgres",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("idem.dynamodb_access_key_id",
							   "AWS access key id for DynamoDB; empty means AWS_ACCESS_KEY_ID.",
							   NULL, &idem_dynamodb_access_key_id, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, IdemSyncShowSecret);
	DefineCustomStringVariable("idem.dynamodb_secret_access_key",
							   "AWS secret access key for DynamoDB; empty means AWS_SECRET_ACCESS_KEY.",
							   NULL, &idem_dynamodb_secret_access_key, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, IdemSyncShowSecret);
	DefineCustomStringVariable("idem.dynamodb_session_token",
							   "AWS session token for DynamoDB; empty means AWS_SESSION_TOKEN.",
							   NULL, &idem_dynamodb_session_token, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, IdemSyncShowSecret);
	DefineCustomIntVariable("idem.dynamodb_request_timeout",
							"Time limit of one DynamoDB request.",
							NULL, &idem_dynamodb_request_timeout, 5000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("idem.dynamodb_parallelism",
							"Most DynamoDB requests the sync worker keeps in flight.",
							NULL, &idem_dynamodb_parallelism, 32, 1, 1024,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("idem.dynamodb_retry_max_delay",
							"Longest pause between two attempts to deliver an outcome.",
							NULL, &idem_dynamodb_retry_max_delay, 60000, 10, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

	IdemSyncInstallLogMask(&idem_dynamodb_secret_access_key,
						   &idem_dynamodb_session_token);

	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = SyncProcessUtility;

	if (process_shared_preload_libraries_in_progress)
	{
		BackgroundWorker worker;

#if PG_VERSION_NUM >= 150000
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = SyncShmemRequest;
#else
		RequestAddinShmemSpace(SyncShmemSize());
#endif
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = SyncShmemStartup;

		memset(&worker, 0, sizeof(worker));
		worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
		worker.bgw_restart_time = 2;
		strlcpy(worker.bgw_library_name, OwnLibraryPath(), BGW_MAXLEN);
		/* Found by name in the library: see sync_worker.h. */
		strlcpy(worker.bgw_function_name, "IdemSyncWorkerMain", BGW_MAXLEN);
		strlcpy(worker.bgw_name, "idem DynamoDB sync", BGW_MAXLEN);
		strlcpy(worker.bgw_type, "idem DynamoDB sync", BGW_MAXLEN);
		RegisterBackgroundWorker(&worker);
	}
}

/*
 * Build a DynamoDB client from the idem.dynamodb_* settings and the
 * server's AWS environment, for up to max_connections connections; NULL,
 * with *problem saying why, when no credentials are set.
 */
IdemDynamoClient *
IdemSyncConnect(int max_connections, char **problem)
{
	IdemDynamoConfig config;
	const char *region = idem_dynamodb_region;

	if (region == NULL || region[0] == '\0')
		region = getenv("AWS_REGION");
	if (region == NULL || region[0] == '\0')
		region = getenv("AWS_DEFAULT_REGION");
	if (region == NULL || region[0] == '\0')
		region = "us-east-1";
	if (idem_dynamodb_endpoint && idem_dynamodb_endpoint[0] != '\0')
		config.endpoint = idem_dynamodb_endpoint;
	else
		config.endpoint = psprintf("https://dynamodb.%s.amazonaws.com", region);

	config.region = region;
	config.access_key_id = idem_dynamodb_access_key_id[0] ? idem_dynamodb_access_key_id : getenv("AWS_ACCESS_KEY_ID");
	config.secret_access_key = idem_dynamodb_secret_access_key[0] ? idem_dynamodb_secret_access_key : getenv("AWS_SECRET_ACCESS_KEY");
	config.session_token = idem_dynamodb_session_token[0] ? idem_dynamodb_session_token : getenv("AWS_SESSION_TOKEN");
	config.timeout_ms = idem_dynamodb_request_timeout;
	config.max_connections = max_connections;

	if (config.access_key_id == NULL || config.access_key_id[0] == '\0' ||
		config.secret_access_key == NULL || config.secret_access_key[0] == '\0')
	{
		*problem = "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
			"in the server's environment, or idem.dynamodb_access_key_id and "
			"idem.dynamodb_secret_access_key";
		return NULL;
	}
	*problem = NULL;
	return IdemDynamoCreate(&config);
}

/* Whether idem was loaded at server start, so that the sync worker runs. */
bool
IdemSyncWorkerRegistered(void)
{
	return sync_shared != NULL;
}

/* Whether a DynamoDB table is configured. */
bool
IdemSyncEnabled(void)
{
	return idem_dynamodb_table != NULL && idem_dynamodb_table[0] != '\0';
}

/* The name of the current database, looked up once per session. */
static const char *
SessionDatabase(void)
{
	if (session_database == NULL)
	{
		char	   *name = get_database_name(MyDatabaseId);

		session_database = MemoryContextStrdup(TopMemoryContext, name ? name : "");
	}
	return session_database;
}

/*
 * Why the outbox of this database would never be delivered although the
 * sync is on, or NULL if nothing stands in the way.  Call it in a
 * transaction.
 */
const char *
IdemSyncSetupProblem(void)
{
	if (!IdemSyncEnabled())
		return NULL;
	if (!IdemSyncWorkerRegistered())
		return "idem is not in shared_preload_libraries, so no sync worker runs";
	if (strcmp(SessionDatabase(), idem_dynamodb_database) != 0)
		return psprintf("the sync worker delivers the outbox of database \"%s\" (idem.dynamodb_database), not of this one",
						idem_dynamodb_database);
	return NULL;
}

/*
 * Warn once per session that what is queued here will not be delivered,
 * when idem.dynamodb_table is set but the rest of the set-up is missing.
 */
void
IdemSyncWarnSetup(void)
{
	const char *problem;

	if (setup_warned)
		return;
	problem = IdemSyncSetupProblem();
	if (problem == NULL)
		return;
	setup_warned = true;
	ereport(WARNING,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("idempotency outcomes queued in this database are not delivered to DynamoDB"),
			 errdetail_internal("idem.dynamodb_table is set, but %s.", problem),
			 errhint("Add idem to shared_preload_libraries and set idem.dynamodb_database to the database that records outcomes, or set idem.dynamodb_table to '' to turn the sync off.  idem.sync_status shows the problem.")));
}

/* Record the latest delivery problem where idem.sync_status shows it. */
void
IdemSyncSetLastError(const char *msg)
{
	if (sync_shared == NULL)
		return;
	SpinLockAcquire(&sync_shared->mutex);
	strlcpy(sync_shared->last_error, msg, SYNC_LAST_ERROR_LEN);
	sync_shared->last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&sync_shared->mutex);
}

/* Whether a delivery problem is on record. */
bool
IdemSyncHasLastError(void)
{
	bool		has;

	if (sync_shared == NULL)
		return false;
	SpinLockAcquire(&sync_shared->mutex);
	has = sync_shared->last_error[0] != '\0';
	SpinLockRelease(&sync_shared->mutex);
	return has;
}

/* Forget the latest delivery problem: everything queued was delivered since. */
void
IdemSyncClearLastError(void)
{
	if (sync_shared == NULL)
		return;
	SpinLockAcquire(&sync_shared->mutex);
	sync_shared->last_error[0] = '\0';
	sync_shared->last_error_at = 0;
	SpinLockRelease(&sync_shared->mutex);
}

/*
 * Hand the worker the claim of a rolled-back call, to delete from DynamoDB
 * while claim still holds the item, and wake it.  Runs during abort: it
 * neither waits nor raises an error, and returns false when the claim could
 * not be queued (no worker, a name too long, a full queue); the claim then
 * lapses at lease_end.
 */
bool
IdemSyncQueueClaimDelete(const char *item_id, const char *claim,
						 TimestampTz lease_end)
{
	IdemSyncClaimDelete *slot;
	bool		queued = false;

	if (sync_shared == NULL ||
		strlen(item_id) >= IDEM_SYNC_ITEM_ID_LEN ||
		strlen(claim) >= IDEM_SYNC_CLAIM_LEN)
		return false;
	SpinLockAcquire(&sync_shared->mutex);
	if (sync_shared->delete_count < CLAIM_DELETE_SLOTS)
	{
		slot = &sync_shared->deletes[(sync_shared->delete_first +
									  sync_shared->delete_count) % CLAIM_DELETE_SLOTS];
		strcpy(slot->item_id, item_id);
		strcpy(slot->claim, claim);
		slot->lease_end = lease_end;
		sync_shared->delete_count++;
		queued = true;
	}
	SpinLockRelease(&sync_shared->mutex);
	if (queued)
		WakeWorker();
	return queued;
}

/*
 * For the worker: take up to max queued claim deletes into out; returns
 * how many.  held says how many the worker will hold after this, for
 * idem.sync_status.
 */
int
IdemSyncTakeClaimDeletes(IdemSyncClaimDelete *out, int max, int held)
{
	int			n;

	SpinLockAcquire(&sync_shared->mutex);
	n = Min(max, sync_shared->delete_count);
	for (int i = 0; i < n; i++)
	{
		memcpy(&out[i], &sync_shared->deletes[sync_shared->delete_first],
			   sizeof(IdemSyncClaimDelete));
		sync_shared->delete_first = (sync_shared->delete_first + 1) % CLAIM_DELETE_SLOTS;
	}
	sync_shared->delete_count -= n;
	sync_shared->deletes_held = held + n;
	SpinLockRelease(&sync_shared->mutex);
	return n;
}

/* Forget the worker in shared memory when it exits. */
static void
SyncWorkerDetach(int code, Datum arg)
{
	SpinLockAcquire(&sync_shared->mutex);
	sync_shared->worker_pgprocno = -1;
	sync_shared->worker_pid = 0;
	sync_shared->in_flight = 0;
	/* The deletes it held are lost: those claims lapse at their lease end. */
	sync_shared->deletes_held = 0;
	SpinLockRelease(&sync_shared->mutex);
}

/*
 * Make the calling process the sync worker that commits wake, until it
 * exits; an error if idem was not loaded at server start.
 */
void
IdemSyncAttachWorker(void)
{
	if (sync_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idem's shared memory is not set up"),
				 errhint("Add idem to shared_preload_libraries.")));

	SpinLockAcquire(&sync_shared->mutex);
	sync_shared->worker_pgprocno = IdemMyProcNumber();
	sync_shared->worker_pid = MyProcPid;
	SpinLockRelease(&sync_shared->mutex);
	before_shmem_exit(SyncWorkerDetach, 0);
}

/* Publish how many requests the worker has on the wire. */
void
IdemSyncSetInFlight(int in_flight)
{
	SpinLockAcquire(&sync_shared->mutex);
	sync_shared->in_flight = in_flight;
	SpinLockRelease(&sync_shared->mutex);
}

/* Count a request as sent, for idem.sync_status. */
void
IdemSyncCountRequest(void)
{
	SpinLockAcquire(&sync_shared->mutex);
	sync_shared->requests_sent++;
	SpinLockRelease(&sync_shared->mutex);
}

/* Set the sync worker's latch, if a worker runs. */
static void
WakeWorker(void)
{
	int			procno;

	if (sync_shared == NULL)
		return;
	SpinLockAcquire(&sync_shared->mutex);
	procno = sync_shared->worker_pgprocno;
	SpinLockRelease(&sync_shared->mutex);
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/* Wake the worker once a transaction that queued outcomes has committed. */
static void
SyncXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit)
				WakeWorker();
			wake_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			wake_at_commit = false;
			break;
		default:
			break;
	}
}

/* Ask for a wake-up of the worker when the current transaction commits. */
void
IdemSyncWakeWorkerAtCommit(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(SyncXactCallback, NULL);
		xact_callback_registered = true;
	}
	wake_at_commit = true;
}

/*
 * The row of idem.sync_worker_state(): the five columns of version 1.0,
 * then, when the result type has them (1.1), the claim deletes waiting and
 * the set-up problem.
 */
static Datum
WorkerState(FunctionCallInfo fcinfo)
{
	TupleDesc	tupdesc;
	Datum		values[7];
	bool		nulls[7];
	SyncShared *copy;
	const char *problem;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (tupdesc->natts != 5 && tupdesc->natts != 7)
		elog(ERROR, "idem.sync_worker_state() must return 5 or 7 columns");
	memset(nulls, true, sizeof(nulls));
	problem = IdemSyncSetupProblem();
	values[6] = problem ? CStringGetTextDatum(problem) : (Datum) 0;
	nulls[6] = problem == NULL;

	if (sync_shared != NULL)
	{
		copy = palloc(offsetof(SyncShared, deletes));
		SpinLockAcquire(&sync_shared->mutex);
		memcpy(copy, sync_shared, offsetof(SyncShared, deletes));
		SpinLockRelease(&sync_shared->mutex);

		values[0] = Int32GetDatum(copy->worker_pid);
		nulls[0] = copy->worker_pgprocno < 0;
		values[1] = Int32GetDatum(copy->in_flight);
		nulls[1] = false;
		values[2] = Int64GetDatum((int64) copy->requests_sent);
		nulls[2] = false;
		values[3] = CStringGetTextDatum(copy->last_error);
		nulls[3] = copy->last_error[0] == '\0';
		values[4] = TimestampTzGetDatum(copy->last_error_at);
		nulls[4] = copy->last_error_at == 0;
		values[5] = Int32GetDatum(copy->delete_count + copy->deletes_held);
		nulls[5] = false;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* SQL 1.0: the sync worker's process id, requests in flight and last error. */
Datum
idem_sync_worker_state(PG_FUNCTION_ARGS)
{
	return WorkerState(fcinfo);
}

/* SQL 1.1: the same, with the claim deletes waiting and the set-up problem. */
Datum
idem_sync_worker_state_1_1(PG_FUNCTION_ARGS)
{
	return WorkerState(fcinfo);
}

/* SQL: wake the sync worker when the current transaction commits. */
Datum
idem_sync_wakeup(PG_FUNCTION_ARGS)
{
	IdemSyncWakeWorkerAtCommit();
	PG_RETURN_VOID();
}
