/*-------------------------------------------------------------------------
 *
 * keytable.c
 *		Read and write idem.records, the key table.
 *
 * idem reaches its table through the heap and index access methods rather
 * than SQL: no plan to prepare, no search_path to resolve, no privilege on
 * the table needed by the caller, and a probe that sees uncommitted rows.
 * The probe uses a dirty snapshot, as unique-index checks do, so that a
 * record another transaction is still writing is found and waited for
 * instead of being missed.
 *
 * A call opens the table and its primary key once (IdemKeyTableOpen), probes
 * through one index scan that a second probe rescans, and writes through
 * the same relations; locks are kept to the end of the transaction, as the
 * executor keeps them.  Rows are written with simple_heap_insert plus an
 * entry in every index of the table; the unique index enforces one record
 * per (role, key).  A row of idem.claim changes in place as its holders
 * come and go (IdemKeyTableUpdate), so it keeps one index entry per key.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_collation.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "storage/lmgr.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "catalog.h"
#include "compat.h"
#include "key.h"
#include "keytable.h"

/* Columns of idem.records, in table order. */
enum
{
	COL_REQUEST_HASH,
	COL_CREATED_AT,
	COL_EXPIRES_AT,
	COL_TOKEN,
	COL_LEASE_EXPIRES_AT,
	COL_OWNER,
	COL_KEY,
	COL_OUTCOME,
	COL_RECOVERY_POINT,
	COL_RECOVERY_DATA,
	RECORD_COLUMNS
};

/* OIDs of idem.records and its primary key, resolved once per backend. */
static Oid	records_relid = InvalidOid;
static Oid	records_pkey = InvalidOid;
static bool callback_registered = false;

/* Forget the resolved OIDs when the key table's relcache entry goes. */
static void
InvalidateKeyTable(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == records_relid)
	{
		records_relid = InvalidOid;
		records_pkey = InvalidOid;
	}
}

/* Find idem.records and check that it is the table idem created. */
static void
ResolveKeyTable(void)
{
	Oid			relid;
	Relation	rel;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(InvalidateKeyTable, (Datum) 0);
		callback_registered = true;
	}

	relid = IdemTableOid("records", true);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("idem's key table idem.records does not exist"),
				 errhint("Run CREATE EXTENSION idem in this database.")));

	rel = table_open(relid, AccessShareLock);
	if (rel->rd_rel->relkind != RELKIND_RELATION ||
		rel->rd_rel->relam != HEAP_TABLE_AM_OID ||
		RelationGetDescr(rel)->natts != RECORD_COLUMNS)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("idem.records is not the table that idem created"),
				 errhint("Drop and re-create the extension.")));
	(void) RelationGetIndexList(rel);
	if (!OidIsValid(rel->rd_pkindex))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("idem.records has lost its primary key"),
				 errhint("Drop and re-create the extension.")));
	records_pkey = rel->rd_pkindex;
	/* keep the lock: the key table is opened again right away */
	table_close(rel, NoLock);

	/* the probe's scan keys are built for exactly these columns */
	rel = index_open(records_pkey, AccessShareLock);
	if (rel->rd_index->indnkeyatts != 2 ||
		rel->rd_index->indkey.values[0] != COL_KEY + 1 ||
		rel->rd_index->indkey.values[1] != COL_OWNER + 1)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("the primary key of idem.records is not the one idem created"),
				 errhint("Drop and re-create the extension.")));
	index_close(rel, NoLock);
	records_relid = relid;
}

/*
 * Open the key table for one call on (owner, key): the heap, its primary key
 * and the scan keys of the probe.  Locks are kept to the end of the
 * transaction, as the executor keeps them, so that a second call in the
 * same transaction finds them already held.
 */
void
IdemKeyTableOpen(IdemKeyTable *table, Oid owner, text *key)
{
	/*
	 * Taking the table's lock processes invalidations, which reset the OIDs
	 * resolved before if the table or its primary key changed meanwhile (a
	 * REINDEX CONCURRENTLY builds a new index): read them once it is held.
	 * Holding it, the primary key found stays until the end of the
	 * transaction.
	 */
	for (;;)
	{
		if (!OidIsValid(records_relid))
			ResolveKeyTable();
		table->heap = try_table_open(records_relid, AccessShareLock);
		if (table->heap != NULL && OidIsValid(records_pkey))
			break;
		if (table->heap != NULL)
			table_close(table->heap, NoLock);
		records_relid = InvalidOid;
	}
	table->index = index_open(records_pkey, AccessShareLock);
	table->scan = NULL;
	table->slot = NULL;

	ScanKeyEntryInitialize(&table->scankeys[0], 0, 1, BTEqualStrategyNumber,
						   InvalidOid, table->index->rd_indcollation[0],
						   F_TEXTEQ, PointerGetDatum(key));
	ScanKeyInit(&table->scankeys[1], 2, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(owner));
}

/*
 * End the probe scan, dropping its buffer pins, so that nothing is pinned
 * while fn runs.
 */
void
IdemKeyTableEndProbes(IdemKeyTable *table)
{
	if (table->scan != NULL)
	{
		index_endscan(table->scan);
		ExecDropSingleTupleTableSlot(table->slot);
		table->scan = NULL;
		table->slot = NULL;
	}
}

/* Close the key table opened by IdemKeyTableOpen; its locks stay held. */
void
IdemKeyTableClose(IdemKeyTable *table)
{
	IdemKeyTableEndProbes(table);
	index_close(table->index, NoLock);
	table_close(table->heap, NoLock);
}

/*
 * Fill in a probe from an unexpired row: a recorded outcome is LIVE, a row
 * without one is a claim of idem.claim, whose lease and recovery point the
 * lease functions need as well, and whether this transaction wrote it.
 */
static void
ReadRecord(TupleTableSlot *slot, TransactionId xmin, IdemRecordProbe *probe)
{
	IdemRecord *record = &probe->record;
	Datum		value;
	bool		isnull;

	record->request_hash = (uint64) DatumGetInt64(slot_getattr(slot, COL_REQUEST_HASH + 1, &isnull));
	value = slot_getattr(slot, COL_TOKEN + 1, &isnull);
	record->token = isnull ? 0 : DatumGetInt64(value);
	value = slot_getattr(slot, COL_OUTCOME + 1, &isnull);
	if (!isnull)
	{
		probe->state = IDEM_RECORD_LIVE;
		record->outcome = DatumGetJsonbPCopy(value);
		return;
	}

	probe->state = IDEM_RECORD_CLAIMED;
	probe->own = TransactionIdIsCurrentTransactionId(xmin);
	record->outcome = NULL;
	record->created_at = DatumGetTimestampTz(slot_getattr(slot, COL_CREATED_AT + 1, &isnull));
	record->expires_at = DatumGetTimestampTz(slot_getattr(slot, COL_EXPIRES_AT + 1, &isnull));
	value = slot_getattr(slot, COL_LEASE_EXPIRES_AT + 1, &isnull);
	record->lease_expires_at = isnull ? DT_NOBEGIN : DatumGetTimestampTz(value);
	value = slot_getattr(slot, COL_RECOVERY_POINT + 1, &isnull);
	record->recovery_point = isnull ? NULL : DatumGetTextPCopy(value);
	value = slot_getattr(slot, COL_RECOVERY_DATA + 1, &isnull);
	record->recovery_data = isnull ? NULL : DatumGetJsonbPCopy(value);
}

/*
 * Probe the key table for the call's (owner, key): report a live record
 * with its fingerprint and outcome, a claim, an expired record, none, or the transaction
 * that is writing one right now.  A second probe of the same call reuses the
 * scan of the first.
 *
 * Under REPEATABLE READ and SERIALIZABLE, a record committed after the
 * transaction's snapshot was taken is a serialization failure: the
 * transaction can neither replay an outcome it must not see nor run fn.
 */
void
IdemKeyTableProbe(IdemKeyTable *table, text *key, TimestampTz now, IdemRecordProbe *probe)
{
	TupleTableSlot *slot;

	if (table->scan == NULL)
	{
		InitDirtySnapshot(table->dirty);
		table->slot = table_slot_create(table->heap, NULL);
		table->scan = IdemIndexBeginScan(table->heap, table->index, &table->dirty, 2, 0);
	}
	slot = table->slot;
	index_rescan(table->scan, table->scankeys, 2, NULL, 0);

	probe->state = IDEM_RECORD_ABSENT;
	/* the unique index admits at most one row that is not dead */
	if (index_getnext_slot(table->scan, ForwardScanDirection, slot))
	{
		TransactionId writer = TransactionIdIsValid(table->dirty.xmin) ?
			table->dirty.xmin : table->dirty.xmax;

		if (TransactionIdIsValid(writer))
		{
			probe->state = IDEM_RECORD_BUSY;
			probe->busy_xid = writer;
		}
		else
		{
			bool		isnull;
			HeapTuple	tuple = ExecFetchSlotHeapTuple(slot, false, NULL);
			TransactionId xmin = HeapTupleHeaderGetXmin(tuple->t_data);

			if (IsolationUsesXactSnapshot() &&
				!TransactionIdIsCurrentTransactionId(xmin) &&
				XidInMVCCSnapshot(xmin, ActiveSnapshotSet() ?
								  GetActiveSnapshot() : GetTransactionSnapshot()))
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access due to a concurrent idempotent call with key \"%s\"",
								IdemKeyForMessage(key)),
						 errdetail("Another transaction recorded an outcome for this key after this transaction's snapshot was taken."),
						 errhint("Retry the transaction: the retry returns the recorded outcome.")));

			probe->tid = slot->tts_tid;
			if (DatumGetTimestampTz(slot_getattr(slot, COL_EXPIRES_AT + 1, &isnull)) <= now)
				probe->state = IDEM_RECORD_EXPIRED;
			else
				ReadRecord(slot, xmin, probe);
		}
		ExecClearTuple(slot);
	}
}

/*
 * Delete the expired record that a new one replaces.  A purge may have
 * deleted it meanwhile, which is just as good.
 */
static void
DeleteExpiredRecord(Relation heap, ItemPointer tid)
{
	TM_FailureData tmfd;
	TM_Result	result;

	/* the row may be this very command's: heap_delete refuses those */
	CommandCounterIncrement();
	result = heap_delete(heap, tid, GetCurrentCommandId(true), InvalidSnapshot,
						 true, &tmfd, false);
	if (result != TM_Ok && result != TM_Deleted && result != TM_Updated)
		elog(ERROR, "could not delete expired idempotency record: result %d",
			 (int) result);
}

/* Add the index entries of a new record row to every index of the table. */
static void
InsertIndexEntries(Relation heap, HeapTuple tuple)
{
	List	   *indexes = RelationGetIndexList(heap);
	TupleTableSlot *slot;
	ListCell   *lc;

	slot = MakeSingleTupleTableSlot(RelationGetDescr(heap), &TTSOpsHeapTuple);
	ExecStoreHeapTuple(tuple, slot, false);

	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), RowExclusiveLock);
		IndexInfo  *indexinfo = BuildIndexInfo(index);
		Datum		values[INDEX_MAX_KEYS];
		bool		isnull[INDEX_MAX_KEYS];

		if (indexinfo->ii_ReadyForInserts)
		{
			if (indexinfo->ii_Expressions != NIL || indexinfo->ii_Predicate != NIL ||
				indexinfo->ii_ExclusionOps != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("idem cannot maintain index \"%s\" on idem.records",
								RelationGetRelationName(index)),
						 errdetail("Expression, partial and exclusion indexes on idem.records are not supported."),
						 errhint("Drop the index, or replace it with one on plain columns.")));
			FormIndexDatum(indexinfo, slot, NULL, values, isnull);
			index_insert(index, values, isnull, &tuple->t_self, heap,
						 indexinfo->ii_Unique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
#if PG_VERSION_NUM >= 140000
						 false,
#endif
						 indexinfo);
		}
		index_close(index, NoLock);
	}

	ExecDropSingleTupleTableSlot(slot);
	list_free(indexes);
}

/* Form the heap tuple of a record row. */
static HeapTuple
FormRecordTuple(Relation heap, Oid owner, text *key, const IdemRecord *record)
{
	Datum		values[RECORD_COLUMNS];
	bool		nulls[RECORD_COLUMNS] = {false};

	values[COL_REQUEST_HASH] = Int64GetDatum((int64) record->request_hash);
	values[COL_CREATED_AT] = TimestampTzGetDatum(record->created_at);
	values[COL_EXPIRES_AT] = TimestampTzGetDatum(record->expires_at);
	values[COL_TOKEN] = Int64GetDatum(record->token);
	nulls[COL_TOKEN] = record->token == 0;
	values[COL_LEASE_EXPIRES_AT] = TimestampTzGetDatum(record->lease_expires_at);
	nulls[COL_LEASE_EXPIRES_AT] = record->token == 0;
	values[COL_OWNER] = ObjectIdGetDatum(owner);
	values[COL_KEY] = PointerGetDatum(key);
	values[COL_OUTCOME] = PointerGetDatum(record->outcome);
	nulls[COL_OUTCOME] = record->outcome == NULL;
	values[COL_RECOVERY_POINT] = PointerGetDatum(record->recovery_point);
	nulls[COL_RECOVERY_POINT] = record->recovery_point == NULL;
	values[COL_RECOVERY_DATA] = PointerGetDatum(record->recovery_data);
	nulls[COL_RECOVERY_DATA] = record->recovery_data == NULL;
	return heap_form_tuple(RelationGetDescr(heap), values, nulls);
}

/*
 * Write the record of a first call or a first claim, replacing the expired
 * record at expired_tid if there is one.  The row is part of the caller's
 * transaction: it commits or vanishes with fn's effects.
 */
void
IdemKeyTableWrite(IdemKeyTable *table, Oid owner, text *key,
				  const IdemRecord *record, ItemPointer expired_tid)
{
	Relation	heap = table->heap;
	HeapTuple	tuple;

	LockRelationOid(RelationGetRelid(heap), RowExclusiveLock);

	if (expired_tid != NULL)
		DeleteExpiredRecord(heap, expired_tid);

	tuple = FormRecordTuple(heap, owner, key, record);
	simple_heap_insert(heap, tuple);
	InsertIndexEntries(heap, tuple);

	heap_freetuple(tuple);
}

/* heap_update with a wait for concurrent updaters, under either signature. */
static TM_Result
UpdateRecordTuple(Relation heap, ItemPointer tid, HeapTuple tuple)
{
	TM_FailureData tmfd;
	LockTupleMode lockmode;
#if PG_VERSION_NUM >= 160000
	TU_UpdateIndexes update_indexes;

	return heap_update(heap, tid, tuple, GetCurrentCommandId(true), InvalidSnapshot,
					   true, &tmfd, &lockmode, &update_indexes);
#else
	return heap_update(heap, tid, tuple, GetCurrentCommandId(true), InvalidSnapshot,
					   true, &tmfd, &lockmode);
#endif
}

/*
 * Replace the claim row at tid with a new version: a new holder, a
 * checkpoint, a longer lease, a release or the outcome.  The caller holds
 * the key lock and has probed the row after taking it, so no one else
 * writes it; a purge can only have deleted it if it expired meanwhile.
 */
void
IdemKeyTableUpdate(IdemKeyTable *table, Oid owner, text *key,
				   ItemPointer tid, const IdemRecord *record)
{
	Relation	heap = table->heap;
	HeapTuple	tuple;
	TM_Result	result;

	LockRelationOid(RelationGetRelid(heap), RowExclusiveLock);
	tuple = FormRecordTuple(heap, owner, key, record);
	/* the row may be this very command's (two lease calls in one query) */
	CommandCounterIncrement();
	result = UpdateRecordTuple(heap, tid, tuple);
	if (result == TM_Deleted || result == TM_Updated)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not update the claim of idempotency key \"%s\"",
						IdemKeyForMessage(key)),
				 errdetail("The record was purged or changed while this transaction wrote it."),
				 errhint("Retry: the retry finds the record as it is now.")));
	if (result != TM_Ok)
		elog(ERROR, "could not update idempotency record: result %d", (int) result);

	/* a HOT update shares the old version's index entries */
	if (!HeapTupleIsHeapOnly(tuple))
		InsertIndexEntries(heap, tuple);
	heap_freetuple(tuple);
}
