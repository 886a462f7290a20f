/*-------------------------------------------------------------------------
 *
 * idem.h
 *		Declarations shared by the files of the idem extension.
 *
 * idem runs a function once per idempotency key and replays its recorded
 * outcome.  idem.c owns the SQL entry points and the call protocol;
 * callsite.c resolves and checks the called function; keytable.c reads and
 * writes idem.records; keylock.c serialises first calls on one key.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_H
#define IDEM_H

#include "postgres.h"

#include "access/genam.h"
#include "access/htup.h"
#include "access/skey.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "storage/itemptr.h"
#include "storage/lock.h"
#include "utils/relcache.h"
#include "utils/snapshot.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/*
 * SQLSTATEs of class IK ("idempotency key"); the last three characters are
 * the HTTP status that the IETF Idempotency-Key draft gives the condition.
 */
#define ERRCODE_IDEM_INVALID_KEY	MAKE_SQLSTATE('I','K','4','0','0')
#define ERRCODE_IDEM_KEY_IN_USE		MAKE_SQLSTATE('I','K','4','0','9')
#define ERRCODE_IDEM_KEY_MISMATCH	MAKE_SQLSTATE('I','K','4','2','2')
#define ERRCODE_IDEM_NESTED_CALL	MAKE_SQLSTATE('I','K','5','0','8')

/* GUCs, defined in idem.c */
extern int	idem_ttl;			/* seconds */
extern int	idem_wait_timeout;	/* milliseconds; 0 = do not wait */
extern int	idem_max_key_length;	/* characters */

/*
 * A resolved call of fn: everything idempotent_call needs to check the
 * arguments, fingerprint the request, invoke fn and turn its result into
 * jsonb.  Lives in fn_extra of the idempotent_call call site, so it is built
 * once per call site and query execution.
 */
typedef struct CallSite CallSite;

extern CallSite *GetCallSite(FunctionCallInfo fcinfo, Oid fnoid);
extern void ReadArguments(CallSite *site, FunctionCallInfo fcinfo,
						  Datum *values, bool *nulls);
extern uint64 RequestFingerprint(CallSite *site, Datum *values, bool *nulls);
extern Jsonb *InvokeFunction(CallSite *site, Datum *values, bool *nulls,
							 Oid collation);
extern Jsonb *JsonNull(void);

/* What a probe of idem.records found for a (role, key). */
typedef enum RecordState
{
	RECORD_ABSENT,				/* no record */
	RECORD_LIVE,				/* a committed (or our own) unexpired record */
	RECORD_EXPIRED,				/* a record past its expiry: counts as absent */
	RECORD_BUSY					/* another transaction is writing this key */
} RecordState;

typedef struct RecordProbe
{
	RecordState state;
	TransactionId busy_xid;		/* RECORD_BUSY: the transaction to wait for */
	ItemPointerData tid;		/* RECORD_LIVE, RECORD_EXPIRED: the row */
	uint64		request_hash;	/* RECORD_LIVE: the recorded fingerprint */
	Jsonb	   *outcome;		/* RECORD_LIVE: the recorded outcome */
} RecordProbe;

/*
 * The key table as one call uses it: opened once, probed once or twice
 * through one scan, written at most once.
 */
typedef struct KeyTable
{
	Relation	heap;
	Relation	index;			/* the primary key, (key, owner) */
	IndexScanDesc scan;			/* the probe's scan; NULL before a probe */
	TupleTableSlot *slot;
	SnapshotData dirty;			/* sees uncommitted rows and their writers */
	ScanKeyData scankeys[2];
} KeyTable;

extern void OpenKeyTable(KeyTable *table, Oid owner, text *key);
extern void ProbeRecord(KeyTable *table, text *key, TimestampTz now,
						RecordProbe *probe);
extern void EndProbes(KeyTable *table);
extern void WriteRecord(KeyTable *table, Oid owner, text *key,
						uint64 request_hash, Jsonb *outcome,
						TimestampTz created_at, TimestampTz expires_at,
						ItemPointer expired_tid);
extern void CloseKeyTable(KeyTable *table);

/* A key whose function is running in this backend, linked innermost first. */
typedef struct RunningKey
{
	Oid			owner;
	text	   *key;
	struct RunningKey *outer;
} RunningKey;

/* keylock.c */
extern void LockKey(LOCKTAG *tag, Oid owner, text *key, TimestampTz deadline);
extern void UnlockKey(const LOCKTAG *tag);
extern void WaitForWriter(TransactionId xid, text *key, TimestampTz deadline);
extern void EnterKey(RunningKey *running, Oid owner, text *key);
extern void LeaveKey(RunningKey *running);

/* Error helpers, idem.c */
extern char *KeyForMessage(text *key);

#endif							/* IDEM_H */
