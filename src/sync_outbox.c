/*-------------------------------------------------------------------------
 *
 * sync_outbox.c
 *		idem.sync_outbox, the queue of outcomes to deliver to DynamoDB: the
 *		only C code that reads or writes it.
 *
 * IdemOutboxRecord() inserts a row in the caller's transaction, so the
 * request to sync commits or vanishes with the outcome, and asks for the
 * worker to be woken at commit.  IdemOutboxRecordLease() does the same for
 * each change of a leased key (claim, extend, release, complete): the row
 * carries the holder's fencing token, so that the worker can let the newest
 * state of a key win whatever order its rows reach DynamoDB in.  The sync worker takes due rows and
 * records each verdict with the other functions; they run in the worker's
 * transaction and SPI connection, so that it decides what one transaction
 * covers.
 *
 * Rows move from pending to delivered, failed or conflict; a retry stays
 * pending with a later next_attempt_at.  Verdicts change only rows still
 * pending: a row a user changed while its request was on the wire keeps
 * the user's change.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "key.h"
#include "sync.h"
#include "sync_outbox.h"

/*
 * The outbox's statements, prepared once per process: the sync worker runs
 * them for every batch, and parsing and planning them each time cost more
 * CPU than the deliveries themselves.
 */
static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr fetch_plan = NULL;
static SPIPlanPtr next_due_plan = NULL;
static SPIPlanPtr retry_plan = NULL;
static SPIPlanPtr failed_plan = NULL;
static SPIPlanPtr conflict_plan = NULL;
static SPIPlanPtr delivered_plan = NULL;
static SPIPlanPtr all_delivered_plan = NULL;

/* The statement sql, prepared and kept in *plan the first time. */
static SPIPlanPtr
KeptPlan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	made = SPI_prepare(sql, nargs, argtypes);

		if (made == NULL)
			elog(ERROR, "could not prepare \"%s\": %s", sql,
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(made);
		*plan = made;
	}
	return *plan;
}

/* Find idem.sync_outbox and its owner. */
static Oid
OutboxOwner(void)
{
	Oid			relid = IdemTableOid("sync_outbox", true);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table idem.sync_outbox does not exist"),
				 errhint("Update the idem extension, or set idem.dynamodb_table to '' to turn the sync off.")));
	return IdemTableOwner(relid);
}

/*
 * Insert one outbox row as the outbox's owner and ask for the worker to be
 * woken at commit.  outcome, token and in_progress_expiration may be NULL
 * (the table's CHECK says which combinations make sense).
 */
static void
OutboxInsert(Oid owner, text *key, Jsonb *outcome, TimestampTz expires_at,
			 const int64 *token, const char *status,
			 const TimestampTz *in_progress_expiration,
			 const char *arbiter_claim)
{
	Oid			save_userid;
	int			save_sec_context;
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Oid			insert_argtypes[9] = {OIDOID, TEXTOID, TEXTOID, JSONBOID,
	TIMESTAMPTZOID, INT8OID, TEXTOID, TIMESTAMPTZOID, TEXTOID};
	int			ret;

	/* The caller has no right on the outbox: write it as its owner. */
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(OutboxOwner(),
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	values[0] = ObjectIdGetDatum(owner);
	values[1] = PointerGetDatum(key);
	values[2] = CStringGetTextDatum(idem_dynamodb_key_prefix ? idem_dynamodb_key_prefix : "");
	values[3] = outcome ? JsonbPGetDatum(outcome) : (Datum) 0;
	nulls[3] = outcome ? ' ' : 'n';
	values[4] = TimestampTzGetDatum(expires_at);
	values[5] = token ? Int64GetDatum(*token) : (Datum) 0;
	nulls[5] = token ? ' ' : 'n';
	values[6] = CStringGetTextDatum(status);
	values[7] = in_progress_expiration ?
		TimestampTzGetDatum(*in_progress_expiration) : (Datum) 0;
	nulls[7] = in_progress_expiration ? ' ' : 'n';
	values[8] = arbiter_claim ? CStringGetTextDatum(arbiter_claim) : (Datum) 0;
	nulls[8] = arbiter_claim ? ' ' : 'n';
	ret = SPI_execute_plan(KeptPlan(&insert_plan,
									"INSERT INTO idem.sync_outbox "
									"(owner, key, key_prefix, outcome, expires_at, "
									" token, status, in_progress_expiration, arbiter_claim) "
									"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
									9, insert_argtypes),
						   values, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not queue an outcome for DynamoDB: %s",
			 SPI_result_code_string(ret));
	SPI_finish();

	SetUserIdAndSecContext(save_userid, save_sec_context);
	IdemSyncWakeWorkerAtCommit();
	IdemSyncWarnSetup();
}

/*
 * Refuse an outcome the sync could not store, before it is queued: a row
 * that could never be delivered would fail for good and, in arbiter mode,
 * leave its claim INPROGRESS until the lease ends.  The size counted is
 * that of the JSON text, which the item's data is close to.
 */
void
IdemOutboxCheckOutcome(text *key, Jsonb *outcome)
{
	size_t		bytes;

	/*
	 * Skip the conversion when the outcome is far below the limit: as JSON
	 * text a character takes at most 6 bytes (\u0001), and a number that
	 * DynamoDB accepts (up to 1E+125) fewer than 16 per byte stored.
	 */
	if ((size_t) VARSIZE(outcome) * 16 <= IDEM_SYNC_MAX_OUTCOME_BYTES)
		return;
	bytes = strlen(JsonbToCString(NULL, &outcome->root, VARSIZE(outcome)));
	if (bytes > IDEM_SYNC_MAX_OUTCOME_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("outcome for idempotency key \"%s\" is too large for the DynamoDB sync",
						IdemKeyForMessage(key)),
				 errdetail("The outcome is %zu bytes as JSON text; a DynamoDB item holds at most %d.",
						   bytes, IDEM_SYNC_MAX_OUTCOME_BYTES),
				 errhint("Record a smaller outcome, for example a reference to where the full result is stored.")));
}

/*
 * Queue an outcome for DynamoDB in the caller's transaction; nothing but a
 * check when the sync is off.
 */
void
IdemOutboxRecord(Oid owner, text *key, Jsonb *outcome, TimestampTz expires_at,
				 const char *arbiter_claim)
{
	if (!IdemSyncEnabled())
		return;
	IdemOutboxCheckOutcome(key, outcome);
	OutboxInsert(owner, key, outcome, expires_at, NULL, "COMPLETED", NULL,
				 arbiter_claim);
}

/*
 * Queue a state of a leased key (idem.claim and friends) for DynamoDB in
 * the caller's transaction; nothing but a check when the sync is off.
 * With outcome NULL the key is held until lease_expires_at and becomes an
 * INPROGRESS item (a release passes the current time, so that the lease
 * has lapsed by the time anyone reads the item); with an outcome it is
 * COMPLETED.  The token orders this row against the key's other lease rows.
 */
void
IdemOutboxRecordLease(Oid owner, text *key, int64 token, Jsonb *outcome,
					  TimestampTz lease_expires_at, TimestampTz expires_at,
					  const char *arbiter_claim)
{
	if (!IdemSyncEnabled())
		return;

	/*
	 * A lease end of -infinity means "released": the item must show a lease
	 * that has already lapsed, and an epoch number of -infinity would not.
	 */
	if (TIMESTAMP_IS_NOBEGIN(lease_expires_at))
		lease_expires_at = GetCurrentTimestamp();
	if (outcome != NULL)
	{
		IdemOutboxCheckOutcome(key, outcome);
		OutboxInsert(owner, key, outcome, expires_at, &token, "COMPLETED",
					 NULL, arbiter_claim);
	}
	else
		OutboxInsert(owner, key, NULL, expires_at, &token, "INPROGRESS",
					 &lease_expires_at, arbiter_claim);
}

/* Whether this database has idem's outbox (inside a transaction). */
bool
IdemOutboxExists(void)
{
	return OidIsValid(IdemTableOid("sync_outbox", true));
}

/*
 * Whether every row of the outbox is delivered: none pending, failed or in
 * conflict.  Reads the whole outbox; the worker asks only while a delivery
 * problem is on record.
 */
bool
IdemOutboxAllDelivered(void)
{
	int			ret;
	bool		isnull;

	ret = SPI_execute_plan(KeptPlan(&all_delivered_plan,
									"SELECT NOT EXISTS (SELECT FROM idem.sync_outbox o "
									"WHERE o.state OPERATOR(pg_catalog.<>) 'delivered')",
									0, NULL),
						   NULL, NULL, true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		return false;
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
									  &isnull));
}

/* Row ids as an int8[] datum. */
static Datum
IdArray(const int64 *ids, int nids)
{
	Datum	   *elems = palloc(sizeof(Datum) * (nids + 1));

	for (int i = 0; i < nids; i++)
		elems[i] = Int64GetDatum(ids[i]);
	return PointerGetDatum(construct_array(elems, nids, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * Read up to limit pending rows that are due, earliest first, leaving out
 * the ids in skip (those on the wire).  Returns how many were read; *rows
 * lives in the current memory context, which SPI_finish frees.
 */
int
IdemOutboxFetchDue(const int64 *skip, int nskip, int limit,
				   IdemOutboxRow **rows)
{
	Datum		args[2];
	Oid			argtypes[2] = {INT8ARRAYOID, INT4OID};
	int			ret;
	uint64		got;
	IdemOutboxRow *out;

	args[0] = IdArray(skip, nskip);
	args[1] = Int32GetDatum(limit);
	ret = SPI_execute_plan(KeptPlan(&fetch_plan,
									"SELECT o.id, o.attempts, o.key_prefix, o.key, o.outcome, "
									"  o.expires_at, "
									"  pg_catalog.pg_get_userbyid(o.owner)::text, "
									"  o.token, o.status = 'INPROGRESS', o.in_progress_expiration, "
									"  o.arbiter_claim "
									"FROM idem.sync_outbox o "
									"WHERE o.state = 'pending' "
									"  AND o.next_attempt_at <= pg_catalog.clock_timestamp() "
									"  AND o.id <> ALL ($1) "
									"ORDER BY o.next_attempt_at, o.id LIMIT $2",
									2, argtypes),
						   args, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read idem.sync_outbox: %s", SPI_result_code_string(ret));
	got = SPI_processed;

	out = palloc0(sizeof(IdemOutboxRow) * (got + 1));
	for (uint64 r = 0; r < got; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		d;

		out[r].id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		out[r].attempts = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		out[r].key_prefix = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
		out[r].key = TextDatumGetCString(SPI_getbinval(tup, desc, 4, &isnull));
		d = SPI_getbinval(tup, desc, 5, &isnull);
		out[r].outcome = isnull ? NULL : DatumGetJsonbP(d);
		out[r].expires_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 6, &isnull));
		out[r].role = TextDatumGetCString(SPI_getbinval(tup, desc, 7, &isnull));
		d = SPI_getbinval(tup, desc, 8, &isnull);
		out[r].leased = !isnull;
		out[r].token = isnull ? 0 : DatumGetInt64(d);
		out[r].in_progress = DatumGetBool(SPI_getbinval(tup, desc, 9, &isnull));
		d = SPI_getbinval(tup, desc, 10, &isnull);
		out[r].in_progress_expiration = isnull ? 0 : DatumGetTimestampTz(d);
		d = SPI_getbinval(tup, desc, 11, &isnull);
		out[r].arbiter_claim = isnull ? NULL : TextDatumGetCString(d);
	}
	*rows = out;
	return (int) got;
}

/*
 * When the earliest pending row not in skip falls due; 0 if there is none
 * (or it cannot be read: the worker looks again at its next wake-up).
 */
TimestampTz
IdemOutboxNextDue(const int64 *skip, int nskip)
{
	Datum		args[1];
	Oid			argtypes[1] = {INT8ARRAYOID};
	int			ret;

	args[0] = IdArray(skip, nskip);
	ret = SPI_execute_plan(KeptPlan(&next_due_plan,
									"SELECT pg_catalog.min(o.next_attempt_at) "
									"FROM idem.sync_outbox o "
									"WHERE o.state = 'pending' AND o.id <> ALL ($1)",
									1, argtypes),
						   args, NULL, true, 0);
	if (ret == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			return DatumGetTimestampTz(d);
	}
	return 0;
}

/* Write verdicts to the outbox; the delivered ones in one statement. */
void
IdemOutboxRecordVerdicts(const IdemOutboxVerdict *verdicts, int nverdicts)
{
	int64	   *delivered;
	int			ndelivered = 0;
	Oid			argtypes[4] = {INT8OID, TEXTOID, FLOAT8OID, JSONBOID};

	delivered = palloc(sizeof(int64) * (nverdicts + 1));
	for (int i = 0; i < nverdicts; i++)
	{
		const IdemOutboxVerdict *v = &verdicts[i];
		Datum		args[4];
		char		nulls[4] = {' ', ' ', ' ', ' '};
		SPIPlanPtr	plan = NULL;
		int			ret;

		args[0] = Int64GetDatum(v->id);
		args[1] = v->error ? CStringGetTextDatum(v->error) : (Datum) 0;
		nulls[1] = v->error ? ' ' : 'n';
		args[2] = Float8GetDatum(0);
		args[3] = v->remote ? JsonbPGetDatum(v->remote) : (Datum) 0;
		nulls[3] = v->remote ? ' ' : 'n';

		switch (v->kind)
		{
			case IDEM_OUTBOX_DELIVERED:
				delivered[ndelivered++] = v->id;
				continue;
			case IDEM_OUTBOX_RETRY:
				args[2] = Float8GetDatum(v->retry_delay_ms);
				plan = KeptPlan(&retry_plan,
								"UPDATE idem.sync_outbox SET attempts = attempts + 1, last_error = $2, "
								"next_attempt_at = pg_catalog.clock_timestamp() + $3 * interval '1 millisecond', "
								"remote_outcome = $4 WHERE id = $1 AND state = 'pending'",
								4, argtypes);
				break;
			case IDEM_OUTBOX_FAILED:
				plan = KeptPlan(&failed_plan,
								"UPDATE idem.sync_outbox SET attempts = attempts + 1, last_error = $2, "
								"state = 'failed', remote_outcome = $4 "
								"WHERE id = $1 AND state = 'pending' AND $3 IS NOT NULL",
								4, argtypes);
				break;
			case IDEM_OUTBOX_CONFLICT:
				plan = KeptPlan(&conflict_plan,
								"UPDATE idem.sync_outbox SET attempts = attempts + 1, last_error = $2, "
								"state = 'conflict', remote_outcome = $4 "
								"WHERE id = $1 AND state = 'pending' AND $3 IS NOT NULL",
								4, argtypes);
				break;
		}
		ret = SPI_execute_plan(plan, args, nulls, false, 0);
		if (ret != SPI_OK_UPDATE)
			elog(ERROR, "could not update idem.sync_outbox: %s", SPI_result_code_string(ret));
	}
	if (ndelivered > 0)
	{
		Oid			arrtype[1] = {INT8ARRAYOID};
		Datum		arr[1];
		int			ret;

		arr[0] = IdArray(delivered, ndelivered);
		ret = SPI_execute_plan(KeptPlan(&delivered_plan,
										"UPDATE idem.sync_outbox SET state = 'delivered', "
										"attempts = attempts + 1, last_error = NULL, "
										"delivered_at = pg_catalog.clock_timestamp() "
										"WHERE id = ANY ($1) AND state = 'pending'",
										1, arrtype),
							   arr, NULL, false, 0);
		if (ret != SPI_OK_UPDATE)
			elog(ERROR, "could not update idem.sync_outbox: %s", SPI_result_code_string(ret));
	}
}
