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
 * This file also defines the GUCs and the error helpers the others share.
 *
 *-------------------------------------------------------------------------
 */
#include "idem.h"

#include <limits.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_collation.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "sync.h"

PG_MODULE_MAGIC;

int			idem_ttl = 86400;
int			idem_wait_timeout = 10000;
int			idem_max_key_length = 255;

/* Longest key a message quotes in full, in characters. */
#define KEY_MESSAGE_CHARS	100

/* What the session's last idempotent_call did: -1 none or failed, 0 ran fn, 1 replayed. */
static int	last_call_state = -1;

PG_FUNCTION_INFO_V1(idempotent_call);
PG_FUNCTION_INFO_V1(last_call_replayed);

void		_PG_init(void);

/* Define idem's GUCs. */
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
	SyncInit();
#if PG_VERSION_NUM >= 150000
	MarkGUCPrefixReserved("idem");
#else
	EmitWarningsOnPlaceholders("idem");
#endif
}

/* Quote a key for an error message, shortening a long one. */
char *
KeyForMessage(text *key)
{
	const char *bytes = VARDATA_ANY(key);
	int			len = VARSIZE_ANY_EXHDR(key);
	int			cut;

	if (len <= KEY_MESSAGE_CHARS)
		return pnstrdup(bytes, len);
	cut = pg_mbcharcliplen(bytes, len, KEY_MESSAGE_CHARS);
	return psprintf("%.*s...", cut, bytes);
}

/* Return the key argument, refusing a NULL, empty or overlong one. */
static text *
CheckKey(FunctionCallInfo fcinfo)
{
	text	   *key;
	int			bytes;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_IDEM_INVALID_KEY),
				 errmsg("idempotency key must not be null"),
				 errdetail("The key is what tells a retry of a request from a new request."),
				 errhint("Pass the key the client sent with the request, such as its Idempotency-Key header.")));
	key = PG_GETARG_TEXT_PP(0);
	bytes = VARSIZE_ANY_EXHDR(key);
	if (bytes == 0)
		ereport(ERROR,
				(errcode(ERRCODE_IDEM_INVALID_KEY),
				 errmsg("idempotency key must not be empty"),
				 errdetail("The key is what tells a retry of a request from a new request."),
				 errhint("Pass the key the client sent with the request, such as its Idempotency-Key header.")));
	/* a key has at most as many characters as bytes */
	if (bytes > idem_max_key_length)
	{
		int			chars = pg_mbstrlen_with_len(VARDATA_ANY(key), bytes);

		if (chars > idem_max_key_length)
			ereport(ERROR,
					(errcode(ERRCODE_IDEM_INVALID_KEY),
					 errmsg("idempotency key \"%s\" is too long", KeyForMessage(key)),
					 errdetail("The key has %d characters; idem.max_key_length is %d.",
							   chars, idem_max_key_length),
					 errhint("Use a shorter key, such as a UUID.")));
	}
	return key;
}

/* Refuse a first call where its record could not be written. */
static void
CheckWritable(text *key)
{
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot run the first call with idempotency key \"%s\" in a read-only transaction",
						KeyForMessage(key)),
				 errdetail("No outcome is recorded for this key, so the function would run and its outcome would have to be written."),
				 RecoveryInProgress() ?
				 errhint("Send first calls to the primary server; a standby can only replay recorded outcomes.") :
				 errhint("Run the call in a read-write transaction.")));
}

/* Run fn with the key marked as running, so a nested call on it fails. */
static Jsonb *
RunFunction(CallSite *site, Datum *values, bool *nulls, Oid collation,
			Oid owner, text *key)
{
	Jsonb	   *volatile outcome = NULL;
	RunningKey	running;

	EnterKey(&running, owner, key);
	PG_TRY();
	{
		outcome = InvokeFunction(site, values, nulls, collation);
	}
	PG_FINALLY();
	{
		LeaveKey(&running);
	}
	PG_END_TRY();
	return outcome;
}

/*
 * idem.idempotent_call(key text, fn regprocedure, VARIADIC args "any")
 *
 * Returns fn's recorded outcome for (current_user, key), running fn and
 * recording the outcome only if there is none.
 */
Datum
idempotent_call(PG_FUNCTION_ARGS)
{
	text	   *key;
	CallSite   *site;
	Datum		values[FUNC_MAX_ARGS];
	bool		nulls[FUNC_MAX_ARGS];
	uint64		request_hash;
	Oid			owner = GetUserId();
	KeyTable	table;
	RecordProbe probe;
	TimestampTz now;
	TimestampTz deadline = 0;
	TimestampTz expires_at;
	bool		locked = false;
	LOCKTAG		keylock;
	Jsonb	   *outcome;

	last_call_state = -1;
	key = CheckKey(fcinfo);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("function of idempotent call with key \"%s\" must not be null",
						KeyForMessage(key)),
				 errdetail("idem.idempotent_call needs the function to run on the first call."),
				 errhint("Name the function with its argument types, for example 'shop.place_order(jsonb)'.")));
	site = GetCallSite(fcinfo, PG_GETARG_OID(1));
	ReadArguments(site, fcinfo, values, nulls);
	request_hash = RequestFingerprint(site, values, nulls);

	OpenKeyTable(&table, owner, key);
	for (;;)
	{
		now = GetCurrentTimestamp();
		ProbeRecord(&table, key, now, &probe);
		if (probe.state == RECORD_LIVE)
			break;
		if (deadline == 0)
			deadline = TimestampTzPlusMilliseconds(now, idem_wait_timeout);
		if (probe.state == RECORD_BUSY)
		{
			/* pin nothing while waiting */
			EndProbes(&table);
			WaitForWriter(probe.busy_xid, key, deadline);
		}
		else if (locked)
			break;
		else
		{
			CheckWritable(key);
			/* an expired row keeps its index page pinned; the lock may wait */
			if (probe.state == RECORD_EXPIRED)
				EndProbes(&table);
			LockKey(&keylock, owner, key, deadline);
			locked = true;
		}
	}

	if (probe.state == RECORD_LIVE)
	{
		CloseKeyTable(&table);
		if (locked)
			UnlockKey(&keylock);
		if (probe.request_hash != request_hash)
			ereport(ERROR,
					(errcode(ERRCODE_IDEM_KEY_MISMATCH),
					 errmsg("idempotency key \"%s\" was already used for a different request",
							KeyForMessage(key)),
					 errdetail("The outcome recorded for this key came from a call with another function or other arguments."),
					 errhint("Use a new key for a new request; repeat the original request to get its outcome.")));
		last_call_state = 1;
		PG_RETURN_JSONB_P(probe.outcome);
	}

	EndProbes(&table);
	outcome = RunFunction(site, values, nulls,
						  OidIsValid(PG_GET_COLLATION()) ? PG_GET_COLLATION() : DEFAULT_COLLATION_OID,
						  owner, key);
	/* read idem.ttl after fn, so that a SET LOCAL in fn applies as well */
	now = GetCurrentTimestamp();
	expires_at = now + (TimestampTz) idem_ttl * USECS_PER_SEC;
	WriteRecord(&table, owner, key, request_hash, outcome, now, expires_at,
				probe.state == RECORD_EXPIRED ? &probe.tid : NULL);
	CloseKeyTable(&table);
	SyncRecordOutcome(owner, key, outcome, expires_at);
	UnlockKey(&keylock);
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
last_call_replayed(PG_FUNCTION_ARGS)
{
	if (last_call_state < 0)
		PG_RETURN_NULL();
	PG_RETURN_BOOL(last_call_state == 1);
}
