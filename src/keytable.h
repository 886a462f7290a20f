/*-------------------------------------------------------------------------
 *
 * keytable.h
 *		Read and write idem.records, the key table.
 *
 * Copyright (c) 2026, the idem developers
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
	IDEM_RECORD_LIVE,			/* a committed (or our own) unexpired outcome */
	IDEM_RECORD_CLAIMED,		/* an unexpired claim of idem.claim, no outcome */
	IDEM_RECORD_EXPIRED,		/* a record past its expiry: counts as absent */
	IDEM_RECORD_BUSY			/* another transaction is writing this key */
} IdemRecordState;

/* The columns of one row of idem.records but its (owner, key). */
typedef struct IdemRecord
{
	uint64		request_hash;
	TimestampTz created_at;
	TimestampTz expires_at;
	int64		token;			/* 0: written by idempotent_call, no lease */
	TimestampTz lease_expires_at;	/* token != 0; DT_NOBEGIN once released */
	Jsonb	   *outcome;		/* NULL while claimed */
	text	   *recovery_point; /* NULL: no checkpoint */
	Jsonb	   *recovery_data;	/* NULL: none given */
} IdemRecord;

/*
 * What a probe found.  LIVE fills request_hash, token and outcome of record;
 * CLAIMED fills every field of record, and own.
 */
typedef struct IdemRecordProbe
{
	IdemRecordState state;
	TransactionId busy_xid;		/* BUSY: the transaction to wait for */
	ItemPointerData tid;		/* LIVE, CLAIMED, EXPIRED: the row */
	bool		own;			/* CLAIMED: this transaction wrote the row */
	IdemRecord	record;			/* LIVE, CLAIMED */
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
							  const IdemRecord *record, ItemPointer expired_tid);
extern void IdemKeyTableUpdate(IdemKeyTable *table, Oid owner, text *key,
							   ItemPointer tid, const IdemRecord *record);
extern void IdemKeyTableClose(IdemKeyTable *table);

#endif							/* IDEM_KEYTABLE_H */
