/*-------------------------------------------------------------------------
 *
 * keytable.h
 *		Read and write idem.records, the key table.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_KEYTABLE_H
#define IDEM_KEYTABLE_H

#include "postgres.h"

#include "access/genam.h"
#include "access/skey.h"
#include "executor/tuptable.h"
#include "storage/itemptr.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"
#include "utils/snapshot.h"
#include "utils/timestamp.h"

/* What a probe of idem.records found for a (role, key). */
typedef enum IdemRecordState
{
	IDEM_RECORD_ABSENT,			/* no record */
	IDEM_RECORD_LIVE,			/* a committed (or our own) unexpired record */
	IDEM_RECORD_EXPIRED,		/* a record past its expiry: counts as absent */
	IDEM_RECORD_BUSY			/* another transaction is writing this key */
} IdemRecordState;

typedef struct IdemRecordProbe
{
	IdemRecordState state;
	TransactionId busy_xid;		/* BUSY: the transaction to wait for */
	ItemPointerData tid;		/* LIVE, EXPIRED: the row */
	uint64		request_hash;	/* LIVE: the recorded fingerprint */
	Jsonb	   *outcome;		/* LIVE: the recorded outcome */
} IdemRecordProbe;

/*
 * The key table as one call uses it: opened once, probed once or twice
 * through one scan, written at most once.
 */
typedef struct IdemKeyTable
{
	Relation	heap;
	Relation	index;			/* the primary key, (key, owner) */
	IndexScanDesc scan;			/* the probe's scan; NULL before a probe */
	TupleTableSlot *slot;
	SnapshotData dirty;			/* sees uncommitted rows and their writers */
	ScanKeyData scankeys[2];
} IdemKeyTable;

extern void IdemKeyTableOpen(IdemKeyTable *table, Oid owner, text *key);
extern void IdemKeyTableProbe(IdemKeyTable *table, text *key, TimestampTz now,
							  IdemRecordProbe *probe);
extern void IdemKeyTableEndProbes(IdemKeyTable *table);
extern void IdemKeyTableWrite(IdemKeyTable *table, Oid owner, text *key,
							  uint64 request_hash, Jsonb *outcome,
							  TimestampTz created_at, TimestampTz expires_at,
							  ItemPointer expired_tid);
extern void IdemKeyTableClose(IdemKeyTable *table);

#endif							/* IDEM_KEYTABLE_H */
