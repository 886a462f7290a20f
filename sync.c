/*-------------------------------------------------------------------------
 *
 * sync.c
 *		idem's DynamoDB sync as backends see it: settings, shared memory,
 *		the outbox row written with each first execution, and the wake-up
 *		of the sync worker at commit.
 *
 * SyncRecordOutcome() inserts a row into idem.sync_outbox in the caller's
 * transaction, so the request to sync commits or vanishes with the outcome.
 * A transaction callback sets the worker's latch once the transaction has
 * committed; the worker never polls.  With idem.dynamodb_table empty the
 * sync is off and SyncRecordOutcome() returns at once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <dlfcn.h>
#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "sync.h"
#include "sync_internal.h"

/* Settings */
char	   *sync_table = NULL;
char	   *sync_region = NULL;
char	   *sync_endpoint = NULL;
char	   *sync_key_prefix = NULL;
char	   *sync_database = NULL;
char	   *sync_access_key_id = NULL;
char	   *sync_secret_access_key = NULL;
char	   *sync_session_token = NULL;
int			sync_request_timeout = 5000;
int			sync_parallelism = 32;
int			sync_retry_max_delay = 60000;

SyncShared *sync_shared = NULL;

static bool wake_at_commit = false;
static bool xact_callback_registered = false;
static SPIPlanPtr insert_plan = NULL;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static emit_log_hook_type prev_emit_log_hook = NULL;

/* The settings whose values never go to the server log. */
static const char *const secret_settings[] = {
	"idem.dynamodb_access_key_id",
	"idem.dynamodb_secret_access_key",
	"idem.dynamodb_session_token",
};

PG_FUNCTION_INFO_V1(sync_worker_state);
PG_FUNCTION_INFO_V1(sync_wakeup);
PG_FUNCTION_INFO_V1(sync_item_id);
PG_FUNCTION_INFO_V1(sync_put_item_request);

/* Hide a credential from SHOW, current_setting() and pg_settings. */
static const char *
ShowSecret(void)
{
	return "********";
}

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

/* Replace every occurrence of secret in *text by a mask. */
static void
MaskSecret(char **text, const char *secret)
{
	StringInfoData out;
	const char *p;
	const char *hit;
	size_t		len;

	if (*text == NULL || secret == NULL || strlen(secret) < 4)
		return;
	if (strstr(*text, secret) == NULL)
		return;
	len = strlen(secret);
	initStringInfo(&out);
	for (p = *text; (hit = strstr(p, secret)) != NULL; p = hit + len)
	{
		appendBinaryStringInfo(&out, p, hit - p);
		appendStringInfoString(&out, "********");
	}
	appendStringInfoString(&out, p);
	*text = out.data;
}

/* Cut a message after the name of a secret setting it mentions. */
static void
CutAfterSecretSetting(char **text, bool *cut)
{
	if (*text == NULL)
		return;
	for (size_t i = 0; i < lengthof(secret_settings); i++)
	{
		const char *hit = strstr(*text, secret_settings[i]);

		if (hit != NULL)
		{
			size_t		keep = (hit - *text) + strlen(secret_settings[i]);

			*text = psprintf("%.*s ... (value hidden by idem)", (int) keep, *text);
			*cut = true;
			return;
		}
	}
}

/*
 * Keep AWS credentials out of the server log: PostgreSQL itself logs the
 * new value of a setting changed by a reload, and log_statement may log an
 * ALTER SYSTEM that sets one.
 */
static void
SyncEmitLogHook(ErrorData *edata)
{
	const char *secrets[5];
	bool		cut = false;

	secrets[0] = sync_secret_access_key;
	secrets[1] = sync_session_token;
	secrets[2] = getenv("AWS_SECRET_ACCESS_KEY");
	secrets[3] = getenv("AWS_SESSION_TOKEN");
	secrets[4] = NULL;

	CutAfterSecretSetting(&edata->message, &cut);
	CutAfterSecretSetting(&edata->detail, &cut);
	CutAfterSecretSetting(&edata->context, &cut);
	for (int i = 0; secrets[i] != NULL || i < 4; i++)
	{
		if (secrets[i] == NULL)
			continue;
		MaskSecret(&edata->message, secrets[i]);
		MaskSecret(&edata->detail, secrets[i]);
		MaskSecret(&edata->detail_log, secrets[i]);
		MaskSecret(&edata->hint, secrets[i]);
		MaskSecret(&edata->context, secrets[i]);
		MaskSecret(&edata->internalquery, secrets[i]);
	}
	/* The statement text is printed separately: hide it if it names one. */
	if (debug_query_string != NULL)
	{
		for (size_t i = 0; i < lengthof(secret_settings); i++)
			if (strstr(debug_query_string, secret_settings[i] + 5) != NULL)
				edata->hide_stmt = true;
	}
	if (cut)
		edata->hide_stmt = true;

	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
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
 * The file this code was loaded from, so that the worker loads the same one
 * even when shared_preload_libraries names it by path; "idem" if unknown.
 */
static const char *
OwnLibraryPath(void)
{
	Dl_info		info;

	if (dladdr((void *) SyncInit, &info) != 0 && info.dli_fname != NULL &&
		info.dli_fname[0] == '/' && strlen(info.dli_fname) < BGW_MAXLEN)
		return info.dli_fname;
	return "idem";
}

/*
 * Define the idem.dynamodb_* settings and, when loaded at server start,
 * reserve shared memory and register the sync worker.
 */
void
SyncInit(void)
{
	DefineCustomStringVariable("idem.dynamodb_table",
							   "DynamoDB table that receives idem's outcomes; empty turns the sync off.",
							   NULL, &sync_table, "",
							   PGC_SIGHUP, 0, CheckTable, NULL, NULL);
	DefineCustomStringVariable("idem.dynamodb_region",
							   "AWS region of the DynamoDB table; empty means AWS_REGION, AWS_DEFAULT_REGION or us-east-1.",
							   NULL, &sync_region, "",
							   PGC_SIGHUP, 0, CheckRegion, NULL, NULL);
	DefineCustomStringVariable("idem.dynamodb_endpoint",
							   "DynamoDB endpoint URL; empty means https://dynamodb.<region>.amazonaws.com.",
							   NULL, &sync_endpoint, "",
							   PGC_SIGHUP, 0, CheckEndpoint, NULL, NULL);
	DefineCustomStringVariable("idem.dynamodb_key_prefix",
							   "Powertools key prefix of the items idem writes, captured when an outcome is recorded.",
							   "Set it per role or database to match the Lambda function's keyPrefix.",
							   &sync_key_prefix, "idem",
							   PGC_SUSET, 0, NULL, NULL, NULL);
	/* SIGHUP, not POSTMASTER: idem may also be loaded after startup. */
	DefineCustomStringVariable("idem.dynamodb_database",
							   "Database whose idem.sync_outbox the sync worker delivers.",
							   "After a change, the worker restarts to connect to the new database.",
							   &sync_database, "postgres",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("idem.dynamodb_access_key_id",
							   "AWS access key id for DynamoDB; empty means AWS_ACCESS_KEY_ID.",
							   NULL, &sync_access_key_id, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, ShowSecret);
	DefineCustomStringVariable("idem.dynamodb_secret_access_key",
							   "AWS secret access key for DynamoDB; empty means AWS_SECRET_ACCESS_KEY.",
							   NULL, &sync_secret_access_key, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, ShowSecret);
	DefineCustomStringVariable("idem.dynamodb_session_token",
							   "AWS session token for DynamoDB; empty means AWS_SESSION_TOKEN.",
							   NULL, &sync_session_token, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, ShowSecret);
	DefineCustomIntVariable("idem.dynamodb_request_timeout",
							"Time limit of one DynamoDB request.",
							NULL, &sync_request_timeout, 5000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("idem.dynamodb_parallelism",
							"Most DynamoDB requests the sync worker keeps in flight.",
							NULL, &sync_parallelism, 32, 1, 1024,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("idem.dynamodb_retry_max_delay",
							"Longest pause between two attempts to deliver an outcome.",
							NULL, &sync_retry_max_delay, 60000, 10, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = SyncEmitLogHook;

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
		strlcpy(worker.bgw_function_name, "SyncWorkerMain", BGW_MAXLEN);
		strlcpy(worker.bgw_name, "idem DynamoDB sync", BGW_MAXLEN);
		strlcpy(worker.bgw_type, "idem DynamoDB sync", BGW_MAXLEN);
		RegisterBackgroundWorker(&worker);
	}
}

/* Whether a DynamoDB table is configured. */
bool
SyncEnabled(void)
{
	return sync_table != NULL && sync_table[0] != '\0';
}

/* Record the latest delivery problem where idem.sync_status shows it. */
void
SyncSetLastError(const char *msg)
{
	if (sync_shared == NULL)
		return;
	SpinLockAcquire(&sync_shared->mutex);
	strlcpy(sync_shared->last_error, msg, SYNC_LAST_ERROR_LEN);
	sync_shared->last_error_at = GetCurrentTimestamp();
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
static void
WakeWorkerAtCommit(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(SyncXactCallback, NULL);
		xact_callback_registered = true;
	}
	wake_at_commit = true;
}

/* Find idem.sync_outbox and its owner. */
static Oid
OutboxOwner(void)
{
	Oid			nsp = get_namespace_oid("idem", false);
	Oid			relid = get_relname_relid("sync_outbox", nsp);
	HeapTuple	tup;
	Oid			owner;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table idem.sync_outbox does not exist"),
				 errhint("Update the idem extension, or set idem.dynamodb_table to '' to turn the sync off.")));
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Queue an outcome for DynamoDB in the caller's transaction; nothing but a
 * check when the sync is off.
 */
void
SyncRecordOutcome(Oid owner, text *key, Jsonb *outcome, TimestampTz expires_at)
{
	Oid			save_userid;
	int			save_sec_context;
	Datum		values[5];
	int			ret;

	if (!SyncEnabled())
		return;

	/* The caller has no right on the outbox: write it as its owner. */
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(OutboxOwner(),
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (insert_plan == NULL)
	{
		Oid			argtypes[5] = {OIDOID, TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID};
		SPIPlanPtr	plan;

		plan = SPI_prepare("INSERT INTO idem.sync_outbox "
						   "(owner, key, key_prefix, outcome, expires_at) "
						   "VALUES ($1, $2, $3, $4, $5)", 5, argtypes);
		if (plan == NULL)
			elog(ERROR, "could not prepare the outbox insert: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		insert_plan = plan;
	}
	values[0] = ObjectIdGetDatum(owner);
	values[1] = PointerGetDatum(key);
	values[2] = CStringGetTextDatum(sync_key_prefix ? sync_key_prefix : "");
	values[3] = JsonbPGetDatum(outcome);
	values[4] = TimestampTzGetDatum(expires_at);
	ret = SPI_execute_plan(insert_plan, values, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not queue an outcome for DynamoDB: %s",
			 SPI_result_code_string(ret));
	SPI_finish();

	SetUserIdAndSecContext(save_userid, save_sec_context);
	WakeWorkerAtCommit();
}

/* SQL: the sync worker's process id, requests in flight and last error. */
Datum
sync_worker_state(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};
	SyncShared	copy;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	if (sync_shared == NULL)
	{
		for (int i = 0; i < 5; i++)
			nulls[i] = true;
		PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
	}

	SpinLockAcquire(&sync_shared->mutex);
	memcpy(&copy, sync_shared, sizeof(SyncShared));
	SpinLockRelease(&sync_shared->mutex);

	values[0] = Int32GetDatum(copy.worker_pid);
	nulls[0] = copy.worker_pgprocno < 0;
	values[1] = Int32GetDatum(copy.in_flight);
	values[2] = Int64GetDatum((int64) copy.requests_sent);
	values[3] = CStringGetTextDatum(copy.last_error);
	nulls[3] = copy.last_error[0] == '\0';
	values[4] = TimestampTzGetDatum(copy.last_error_at);
	nulls[4] = copy.last_error_at == 0;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* SQL: wake the sync worker when the current transaction commits. */
Datum
sync_wakeup(PG_FUNCTION_ARGS)
{
	WakeWorkerAtCommit();
	PG_RETURN_VOID();
}

/* SQL: the Powertools id of a key under a prefix. */
Datum
sync_item_id(PG_FUNCTION_ARGS)
{
	char	   *prefix = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *key = text_to_cstring(PG_GETARG_TEXT_PP(1));

	PG_RETURN_TEXT_P(cstring_to_text(SyncItemId(prefix, key)));
}

/* SQL: the PutItem request the worker would send for an outcome, as jsonb. */
Datum
sync_put_item_request(PG_FUNCTION_ARGS)
{
	char	   *prefix = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Jsonb	   *outcome = PG_GETARG_JSONB_P(2);
	TimestampTz expires_at = PG_GETARG_TIMESTAMPTZ(3);
	char	   *body;
	char	   *dbname = get_database_name(MyDatabaseId);
	int64		expiration;

	expiration = (int64) floor((double) expires_at / USECS_PER_SEC) +
		(int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY;
	body = SyncPutItemBody(SyncEnabled() ? sync_table : "unset",
						   SyncItemId(prefix, key), outcome, expiration,
						   GetUserNameFromId(GetUserId(), false),
						   dbname ? dbname : "", GetCurrentTimestamp());
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(body)));
}
