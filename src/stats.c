/*-------------------------------------------------------------------------
 *
 * stats.c
 *		Counters of what idem does, for idem.stats, and the LOG lines of
 *		idem.log_events.
 *
 * The counters live in a shared hash table, one entry per (database,
 * role, target), where the target is the function of idempotent_call or
 * the lease API.  It exists only when idem is in shared_preload_libraries;
 * its size is fixed at start (idem.stats_max), and a new target arriving
 * at a full table evicts the entry with the fewest calls.  The postmaster
 * writes the entries to pg_stat/ at a clean shutdown and reads them back at
 * the next start, as pg_stat_statements does; a crash loses them.
 *
 * The hot path costs at most one shared hash lookup per call: an entry
 * point opens a frame in backend memory, events add to the frame where they
 * happen, and the frame is added to its entry, under the shared lock and
 * the entry's spinlock, when the call returns or its (sub)transaction
 * aborts.  The lookup is skipped when the entry is the one the backend
 * counted into last and no entry was evicted since.
 * Two events are known only at transaction end: a first run whose
 * transaction commits is an execution, one whose (sub)transaction aborts an
 * error; they wait in a short per-transaction list meanwhile.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "compat.h"
#include "key.h"
#include "stats.h"

#define STATS_FILE			PGSTAT_STAT_PERMANENT_DIRECTORY "/idem_stats.stat"
#define STATS_FILE_MAGIC	0x49445331	/* "IDS1" */
#define STATS_TRANCHE		"idem stats"
#define MAX_FRAMES			32	/* deeper nested calls are not counted */
#define KEY_MESSAGE_BYTES	512 /* IdemKeyForMessage: 100 chars and "..." */

/* Which API an entry counts. */
#define API_CALL	0
#define API_LEASE	1

/* The counters of an entry, in the order of the view's columns. */
typedef enum StatsColumn
{
	C_CALLS,
	C_EXECUTIONS,
	C_REPLAYS,
	C_REPLAYS_AFTER_WAIT,
	C_WAITS,
	C_TIMEOUTS,
	C_MISMATCHES,
	C_STALE_TOKENS,
	C_ERRORS,
	C_TAKEOVERS,
	C_RESUMPTIONS,
	C_RELEASES,
	C_DYNAMODB_CLAIMS,
	C_DYNAMODB_REPLAYS,
	C_DYNAMODB_FAILURES,
	C_DYNAMODB_REQUESTS,
	NCOUNTS
} StatsColumn;

/* Times of an entry, in milliseconds. */
typedef enum StatsTime
{
	T_TOTAL_WAIT,
	T_MAX_WAIT,
	T_TOTAL_DYNAMODB,
	T_MAX_DYNAMODB,
	NTIMES
} StatsTime;

/* The hash key of an entry; padding zeroed, since it is hashed as bytes. */
typedef struct StatsKey
{
	Oid			dbid;
	Oid			userid;
	Oid			fn;				/* InvalidOid for the lease API */
	int32		api;
} StatsKey;

typedef struct StatsCounters
{
	int64		counts[NCOUNTS];
	double		times[NTIMES];
} StatsCounters;

/* One entry of the shared hash table. */
typedef struct StatsEntry
{
	StatsKey	key;
	slock_t		mutex;			/* protects c and stats_reset */
	StatsCounters c;
	TimestampTz stats_reset;
} StatsEntry;

/* The shared state besides the hash table. */
typedef struct StatsShared
{
	LWLock	   *lock;			/* shared to count, exclusive to add/remove */
	uint64		evictions;		/* entries removed since start */
} StatsShared;

/* A running call of an entry point, in backend memory. */
typedef struct CallFrame
{
	bool		active;			/* counting; false: only balances the stack */
	StatsKey	key;
	SubTransactionId subid;
	bool		waited;
	TimestampTz wait_start;		/* 0 when not waiting */
	TimestampTz trip_start;		/* 0 when no DynamoDB request is out */
	StatsCounters c;
	bool		log;			/* keymsg is set */
	char		keymsg[KEY_MESSAGE_BYTES];
} CallFrame;

/* First runs waiting for their transaction's end. */
typedef struct PendingRun
{
	StatsKey	key;
	SubTransactionId subid;
	int64		count;
} PendingRun;

/* idem.log_events bits */
#define LOG_EXECUTIONS	0x01
#define LOG_REPLAYS		0x02
#define LOG_WAITS		0x04
#define LOG_CONFLICTS	0x08

/* Settings */
static bool idem_track = true;
static int	idem_stats_max = 1000;
static char *idem_log_events = NULL;
static int	log_mask = 0;

static StatsShared *stats_shared = NULL;
static HTAB *stats_hash = NULL;

/*
 * The entry this backend last counted into.  A backend counts into one
 * entry most of the time, so it skips the hash lookup while no entry has
 * been evicted since (an entry cannot move or go while it holds the lock).
 */
static StatsKey cached_key;
static StatsEntry *cached_entry = NULL;
static uint64 cached_evictions = 0;

static CallFrame frames[MAX_FRAMES];
static int	nframes = 0;		/* may exceed MAX_FRAMES: those are not kept */
static PendingRun *pending = NULL;
static int	npending = 0;
static int	maxpending = 0;
static bool callbacks_registered = false;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

PG_FUNCTION_INFO_V1(idem_stats_rows);
PG_FUNCTION_INFO_V1(idem_stats_reset);

/* Parse idem.log_events: "none" or a list of event classes. */
static bool
CheckLogEvents(char **newval, void **extra, GucSource source)
{
	char	   *raw = pstrdup(*newval);
	List	   *items;
	ListCell   *lc;
	int			mask = 0;
	int		   *result;

	if (!SplitIdentifierString(raw, ',', &items))
	{
		GUC_check_errdetail("List syntax is invalid.");
		return false;
	}
	foreach(lc, items)
	{
		char	   *item = (char *) lfirst(lc);

		if (pg_strcasecmp(item, "none") == 0 && list_length(items) == 1)
			mask = 0;
		else if (pg_strcasecmp(item, "executions") == 0)
			mask |= LOG_EXECUTIONS;
		else if (pg_strcasecmp(item, "replays") == 0)
			mask |= LOG_REPLAYS;
		else if (pg_strcasecmp(item, "waits") == 0)
			mask |= LOG_WAITS;
		else if (pg_strcasecmp(item, "conflicts") == 0)
			mask |= LOG_CONFLICTS;
		else if (pg_strcasecmp(item, "all") == 0 && list_length(items) == 1)
			mask = LOG_EXECUTIONS | LOG_REPLAYS | LOG_WAITS | LOG_CONFLICTS;
		else
		{
			GUC_check_errdetail("Unrecognized event class \"%s\": use none, all, or a list of executions, replays, waits and conflicts.",
								item);
			return false;
		}
	}
	list_free(items);
	pfree(raw);
	result = (int *) IdemGucMalloc(sizeof(int));
	if (result == NULL)
		return false;
	*result = mask;
	*extra = result;
	return true;
}

/* Take the parsed idem.log_events. */
static void
AssignLogEvents(const char *newval, void *extra)
{
	log_mask = *(int *) extra;
}

/* Size of the shared state and the hash table. */
static Size
StatsMemorySize(void)
{
	return add_size(MAXALIGN(sizeof(StatsShared)),
					hash_estimate_size(idem_stats_max, sizeof(StatsEntry)));
}

/* Ask for the shared memory and the lock. */
static void
StatsShmemRequest(void)
{
#if PG_VERSION_NUM >= 150000
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	RequestAddinShmemSpace(StatsMemorySize());
	RequestNamedLWLockTranche(STATS_TRANCHE, 1);
}

/*
 * Add an entry for key, evicting first the entry with the fewest calls
 * (the oldest stats_reset among equals) if the table is full.  The caller
 * holds the lock exclusively.
 */
static StatsEntry *
EnterEntry(const StatsKey *key)
{
	StatsEntry *entry;
	bool		found;

	entry = hash_search(stats_hash, key, HASH_FIND, NULL);
	if (entry != NULL)
		return entry;
	if (hash_get_num_entries(stats_hash) >= idem_stats_max)
	{
		HASH_SEQ_STATUS status;
		StatsEntry *e;
		StatsEntry *victim = NULL;

		hash_seq_init(&status, stats_hash);
		while ((e = hash_seq_search(&status)) != NULL)
		{
			if (victim == NULL ||
				e->c.counts[C_CALLS] < victim->c.counts[C_CALLS] ||
				(e->c.counts[C_CALLS] == victim->c.counts[C_CALLS] &&
				 e->stats_reset < victim->stats_reset))
				victim = e;
		}
		if (victim != NULL)
		{
			(void) hash_search(stats_hash, &victim->key, HASH_REMOVE, NULL);
			stats_shared->evictions++;
		}
	}
	entry = hash_search(stats_hash, key, HASH_ENTER_NULL, &found);
	if (entry != NULL && !found)
	{
		SpinLockInit(&entry->mutex);
		memset(&entry->c, 0, sizeof(StatsCounters));
		entry->stats_reset = GetCurrentTimestamp();
	}
	return entry;
}

/* Add counters to an entry; the caller holds the lock. */
static void
AddCounters(StatsEntry *entry, const StatsCounters *c)
{
	SpinLockAcquire(&entry->mutex);
	for (int i = 0; i < NCOUNTS; i++)
		entry->c.counts[i] += c->counts[i];
	entry->c.times[T_TOTAL_WAIT] += c->times[T_TOTAL_WAIT];
	entry->c.times[T_MAX_WAIT] = Max(entry->c.times[T_MAX_WAIT], c->times[T_MAX_WAIT]);
	entry->c.times[T_TOTAL_DYNAMODB] += c->times[T_TOTAL_DYNAMODB];
	entry->c.times[T_MAX_DYNAMODB] = Max(entry->c.times[T_MAX_DYNAMODB], c->times[T_MAX_DYNAMODB]);
	SpinLockRelease(&entry->mutex);
}

/*
 * Add counters to the entry of key, creating it if needed.  Never raises an
 * error: it runs during abort too.
 */
static void
Store(const StatsKey *key, const StatsCounters *c)
{
	StatsEntry *entry;

	if (stats_shared == NULL)
		return;
	LWLockAcquire(stats_shared->lock, LW_SHARED);
	if (cached_entry != NULL && cached_evictions == stats_shared->evictions &&
		cached_key.dbid == key->dbid && cached_key.userid == key->userid &&
		cached_key.fn == key->fn && cached_key.api == key->api)
		entry = cached_entry;
	else
	{
		entry = hash_search(stats_hash, key, HASH_FIND, NULL);
		if (entry == NULL)
		{
			LWLockRelease(stats_shared->lock);
			LWLockAcquire(stats_shared->lock, LW_EXCLUSIVE);
			entry = EnterEntry(key);
		}
		cached_entry = entry;
		cached_key = *key;
		cached_evictions = stats_shared->evictions;
	}
	if (entry != NULL)
		AddCounters(entry, c);
	LWLockRelease(stats_shared->lock);
}

/* Load the entries saved at the last clean shutdown, then delete the file. */
static void
LoadFile(void)
{
	FILE	   *file = AllocateFile(STATS_FILE, PG_BINARY_R);
	uint32		header[2];
	int32		count;

	if (file == NULL)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("could not read idem statistics file \"%s\": %m", STATS_FILE)));
		return;
	}
	if (fread(header, sizeof(header), 1, file) != 1 ||
		header[0] != STATS_FILE_MAGIC || header[1] != sizeof(StatsEntry) ||
		fread(&count, sizeof(count), 1, file) != 1)
	{
		ereport(LOG,
				(errmsg("ignoring idem statistics file \"%s\": not written by this version of idem",
						STATS_FILE)));
		count = 0;
	}
	for (int i = 0; i < count; i++)
	{
		StatsEntry saved;
		StatsEntry *entry;

		if (fread(&saved, sizeof(saved), 1, file) != 1)
		{
			ereport(LOG,
					(errmsg("idem statistics file \"%s\" is truncated", STATS_FILE)));
			break;
		}
		entry = EnterEntry(&saved.key);
		if (entry == NULL)
			break;
		entry->c = saved.c;
		entry->stats_reset = saved.stats_reset;
	}
	FreeFile(file);
	unlink(STATS_FILE);
}

/* At postmaster exit after a clean shutdown: save the entries. */
static void
SaveFile(int code, Datum arg)
{
	FILE	   *file;
	uint32		header[2] = {STATS_FILE_MAGIC, sizeof(StatsEntry)};
	int32		count;
	HASH_SEQ_STATUS status;
	StatsEntry *entry;

	/* a crash or an immediate stop saves nothing, as for pg_stat_statements */
	if (code != 0 || stats_shared == NULL)
		return;
	file = AllocateFile(STATS_FILE ".tmp", PG_BINARY_W);
	if (file == NULL)
		goto error;
	count = (int32) hash_get_num_entries(stats_hash);
	if (fwrite(header, sizeof(header), 1, file) != 1 ||
		fwrite(&count, sizeof(count), 1, file) != 1)
		goto error;
	hash_seq_init(&status, stats_hash);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (fwrite(entry, sizeof(StatsEntry), 1, file) != 1)
		{
			hash_seq_term(&status);
			goto error;
		}
	}
	if (FreeFile(file) != 0)
	{
		file = NULL;
		goto error;
	}
	(void) durable_rename(STATS_FILE ".tmp", STATS_FILE, LOG);
	return;

error:
	ereport(LOG,
			(errcode_for_file_access(),
			 errmsg("could not write idem statistics file \"%s\": %m", STATS_FILE ".tmp")));
	if (file != NULL)
		FreeFile(file);
	unlink(STATS_FILE ".tmp");
}

/* Find or create the shared state; the postmaster loads the saved file. */
static void
StatsShmemStartup(void)
{
	bool		found;
	HASHCTL		info;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	stats_shared = ShmemInitStruct("idem stats", sizeof(StatsShared), &found);
	if (!found)
	{
		stats_shared->lock = &(GetNamedLWLockTranche(STATS_TRANCHE))->lock;
		stats_shared->evictions = 0;
	}
	info.keysize = sizeof(StatsKey);
	info.entrysize = sizeof(StatsEntry);
	stats_hash = ShmemInitHash("idem stats hash", idem_stats_max, idem_stats_max,
							   &info, HASH_ELEM | HASH_BLOBS);
	LWLockRelease(AddinShmemInitLock);

	if (!IsUnderPostmaster)
		on_shmem_exit(SaveFile, (Datum) 0);
	if (!found)
		LoadFile();
}

/*
 * Define idem.track, idem.stats_max and idem.log_events and, when loaded at
 * server start, reserve the shared table.  Called from _PG_init.
 */
void
IdemStatsInit(void)
{
	DefineCustomBoolVariable("idem.track",
							 "Counts idem's calls and events in idem.stats.",
							 "Takes effect only when idem is in shared_preload_libraries.",
							 &idem_track, true,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("idem.log_events",
							   "Events of idem written to the server log, one line each, with the key.",
							   "none, all, or a list of executions, replays, waits, conflicts.  The lines quote idempotency keys, which may hold personal data.",
							   &idem_log_events, "none",
							   PGC_SUSET, GUC_LIST_INPUT,
							   CheckLogEvents, AssignLogEvents, NULL);

	/* a PGC_POSTMASTER setting cannot be defined after startup */
	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomIntVariable("idem.stats_max",
								"Most (database, role, target) entries idem.stats keeps.",
								"A new entry arriving at a full table evicts the entry with the fewest calls.",
								&idem_stats_max, 1000, 100, 1000000,
								PGC_POSTMASTER, 0, NULL, NULL, NULL);
#if PG_VERSION_NUM >= 150000
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = StatsShmemRequest;
#else
		/* before 15, requests are made from _PG_init itself */
		StatsShmemRequest();
#endif
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = StatsShmemStartup;
	}
}

/* Add a first run of key to the transaction's pending list. */
static void
AddPendingRun(const StatsKey *key)
{
	SubTransactionId subid = GetCurrentSubTransactionId();

	if (npending > 0 && pending[npending - 1].subid == subid &&
		memcmp(&pending[npending - 1].key, key, sizeof(StatsKey)) == 0)
	{
		pending[npending - 1].count++;
		return;
	}
	if (npending == maxpending)
	{
		int			newmax = Max(8, maxpending * 2);

		pending = pending == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(PendingRun) * newmax) :
			repalloc(pending, sizeof(PendingRun) * newmax);
		maxpending = newmax;
	}
	pending[npending].key = *key;
	pending[npending].subid = subid;
	pending[npending].count = 1;
	npending++;
}

/*
 * Store the pending runs of subtransaction from and those below it (all,
 * for InvalidSubTransactionId) as executions or as errors, and drop them.
 */
static void
SettlePendingRuns(SubTransactionId from, StatsColumn as)
{
	int			kept = 0;

	for (int i = 0; i < npending; i++)
	{
		StatsCounters c;

		if (pending[i].subid < from)
		{
			pending[kept++] = pending[i];
			continue;
		}
		memset(&c, 0, sizeof(c));
		c.counts[as] = pending[i].count;
		Store(&pending[i].key, &c);
	}
	npending = kept;
}

/* Close the frame's open wait, adding its time. */
static double
CloseWait(CallFrame *f)
{
	double		ms;

	ms = (double) (GetCurrentTimestamp() - f->wait_start) / 1000.0;
	f->wait_start = 0;
	f->waited = true;
	f->c.times[T_TOTAL_WAIT] += ms;
	return ms;
}

/* Store a frame that ends, by return or by abort. */
static void
StoreFrame(CallFrame *f)
{
	if (!f->active)
		return;
	if (f->wait_start != 0)
		(void) CloseWait(f);
	if (f->waited)
	{
		f->c.counts[C_WAITS] = 1;
		f->c.times[T_MAX_WAIT] = f->c.times[T_TOTAL_WAIT];
	}
	if (idem_track)
		Store(&f->key, &f->c);
}

/*
 * Store and drop the frames of subtransaction from and those below it (all,
 * for InvalidSubTransactionId); the calls they belong to were interrupted.
 */
static void
AbortFrames(SubTransactionId from)
{
	while (nframes > 0)
	{
		if (nframes <= MAX_FRAMES)
		{
			if (frames[nframes - 1].subid < from)
				break;
			StoreFrame(&frames[nframes - 1]);
		}
		nframes--;
	}
}

/* At transaction end: settle the first runs, close interrupted calls. */
static void
StatsXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			if (npending > 0)
				SettlePendingRuns(InvalidSubTransactionId, C_EXECUTIONS);
			nframes = 0;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			AbortFrames(InvalidSubTransactionId);
			if (npending > 0)
				SettlePendingRuns(InvalidSubTransactionId, C_ERRORS);
			nframes = 0;
			break;
		default:
			break;
	}
}

/* At a savepoint's rollback: its first runs are errors. */
static void
StatsSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					 SubTransactionId parentSubid, void *arg)
{
	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	AbortFrames(mySubid);
	if (npending > 0)
		SettlePendingRuns(mySubid, C_ERRORS);
}

/* The target of a frame, for LOG lines. */
static char *
TargetName(const CallFrame *f)
{
	if (f->key.api == API_LEASE)
		return pstrdup("the lease API");
	return format_procedure(f->key.fn);
}

/* Write the LOG line of an event of the current call. */
static void
LogEvent(const CallFrame *f, const char *what)
{
	char	   *role = GetUserNameFromId(f->key.userid, true);

	ereport(LOG,
			(errmsg("idem: idempotency key \"%s\" %s, role \"%s\", %s",
					f->keymsg, what, role ? role : "?", TargetName(f)),
			 errhidestmt(true)));
}

/*
 * Open the frame of an entry point's call: fn for idempotent_call, or
 * InvalidOid for the lease API.  IDEM_TARGET_CLAIM and _CALL count a call.
 */
void
IdemStatsBeginCall(IdemStatsTarget target, Oid fn, text *key)
{
	CallFrame  *f;

	if (!callbacks_registered)
	{
		RegisterXactCallback(StatsXactCallback, NULL);
		RegisterSubXactCallback(StatsSubXactCallback, NULL);
		callbacks_registered = true;
	}
	if (nframes++ >= MAX_FRAMES)
		return;
	f = &frames[nframes - 1];
	f->active = (idem_track && stats_shared != NULL) || log_mask != 0;
	if (!f->active)
		return;
	memset(&f->key, 0, sizeof(StatsKey));
	f->key.dbid = MyDatabaseId;
	f->key.userid = GetUserId();
	f->key.fn = target == IDEM_TARGET_CALL ? fn : InvalidOid;
	f->key.api = target == IDEM_TARGET_CALL ? API_CALL : API_LEASE;
	f->subid = GetCurrentSubTransactionId();
	f->waited = false;
	f->wait_start = 0;
	f->trip_start = 0;
	memset(&f->c, 0, sizeof(StatsCounters));
	f->c.counts[C_CALLS] = target != IDEM_TARGET_HOLDER ? 1 : 0;
	f->log = log_mask != 0;
	if (f->log)
		strlcpy(f->keymsg, IdemKeyForMessage(key), KEY_MESSAGE_BYTES);
}

/* Close the frame of the call that returns, adding it to its entry. */
void
IdemStatsEndCall(void)
{
	if (nframes == 0)
		return;
	if (nframes <= MAX_FRAMES)
		StoreFrame(&frames[nframes - 1]);
	nframes--;
}

/* The frame counting now, or NULL. */
static inline CallFrame *
CurrentFrame(void)
{
	if (nframes == 0 || nframes > MAX_FRAMES || !frames[nframes - 1].active)
		return NULL;
	return &frames[nframes - 1];
}

/* Count an event of the current call. */
void
IdemStatsCount(IdemStatsEvent event)
{
	CallFrame  *f = CurrentFrame();
	StatsColumn col;
	int			logbit = 0;
	const char *what = NULL;

	if (f == NULL)
		return;
	switch (event)
	{
		case IDEM_STAT_REPLAY:
			col = C_REPLAYS;
			if (f->waited || f->wait_start != 0)
				f->c.counts[C_REPLAYS_AFTER_WAIT]++;
			logbit = LOG_REPLAYS;
			what = "replayed";
			break;
		case IDEM_STAT_EXECUTION:
			if (idem_track && stats_shared != NULL)
				AddPendingRun(&f->key);
			if (f->log && (log_mask & LOG_EXECUTIONS))
				LogEvent(f, f->key.api == API_CALL ? "runs" : "completed");
			return;
		case IDEM_STAT_TIMEOUT:
			col = C_TIMEOUTS;
			logbit = LOG_CONFLICTS;
			what = "in use (IK409)";
			break;
		case IDEM_STAT_MISMATCH:
			col = C_MISMATCHES;
			logbit = LOG_CONFLICTS;
			what = "used for a different request (IK422)";
			break;
		case IDEM_STAT_STALE_TOKEN:
			col = C_STALE_TOKENS;
			logbit = LOG_CONFLICTS;
			what = "given a stale token (IK412)";
			break;
		case IDEM_STAT_TAKEOVER:
			col = C_TAKEOVERS;
			break;
		case IDEM_STAT_RESUMPTION:
			col = C_RESUMPTIONS;
			break;
		case IDEM_STAT_RELEASE:
			col = C_RELEASES;
			break;
		case IDEM_STAT_DYNAMODB_CLAIM:
			col = C_DYNAMODB_CLAIMS;
			break;
		case IDEM_STAT_DYNAMODB_REPLAY:
			col = C_DYNAMODB_REPLAYS;
			break;
		case IDEM_STAT_DYNAMODB_FAILURE:
			col = C_DYNAMODB_FAILURES;
			break;
		default:
			return;
	}
	f->c.counts[col]++;
	if (f->log && (log_mask & logbit))
		LogEvent(f, what);
}

/* The current call starts waiting for another writer or holder. */
void
IdemStatsWaitBegin(void)
{
	CallFrame  *f = CurrentFrame();

	if (f != NULL && f->wait_start == 0)
		f->wait_start = GetCurrentTimestamp();
}

/* The current call's wait ended: add its time. */
void
IdemStatsWaitEnd(void)
{
	CallFrame  *f = CurrentFrame();
	double		ms;

	if (f == NULL || f->wait_start == 0)
		return;
	ms = CloseWait(f);
	if (f->log && (log_mask & LOG_WAITS))
		LogEvent(f, psprintf("waited %.3f ms", ms));
}

/* The current call sends a DynamoDB request. */
void
IdemStatsRoundTripBegin(void)
{
	CallFrame  *f = CurrentFrame();

	if (f != NULL)
		f->trip_start = GetCurrentTimestamp();
}

/* The current call's DynamoDB request was answered: add its round trip. */
void
IdemStatsRoundTripEnd(void)
{
	CallFrame  *f = CurrentFrame();
	double		ms;

	if (f == NULL || f->trip_start == 0)
		return;
	ms = (double) (GetCurrentTimestamp() - f->trip_start) / 1000.0;
	f->trip_start = 0;
	f->c.counts[C_DYNAMODB_REQUESTS]++;
	f->c.times[T_TOTAL_DYNAMODB] += ms;
	f->c.times[T_MAX_DYNAMODB] = Max(f->c.times[T_MAX_DYNAMODB], ms);
}

/* Refuse to read or reset counters that are not collected. */
static void
RequireShared(void)
{
	if (stats_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idem statistics are not collected"),
				 errdetail("idem.stats needs shared memory, which idem reserves only when loaded at server start."),
				 errhint("Add idem to shared_preload_libraries and restart the server.")));
}

/*
 * idem.stats_rows(): the rows of idem.stats.  A role sees its own rows, or
 * every row with the privileges of pg_read_all_stats.
 */
Datum
idem_stats_rows(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			userid = GetUserId();
	bool		all = has_privs_of_role(userid, ROLE_PG_READ_ALL_STATS);
	HASH_SEQ_STATUS status;
	StatsEntry *entry;

	RequireShared();
	InitMaterializedSRF(fcinfo, 0);

	LWLockAcquire(stats_shared->lock, LW_SHARED);
	hash_seq_init(&status, stats_hash);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		Datum		values[4 + NCOUNTS + NTIMES + 1];
		bool		nulls[4 + NCOUNTS + NTIMES + 1] = {false};
		StatsCounters c;
		TimestampTz reset;
		int			n = 0;

		if (!all && entry->key.userid != userid)
			continue;
		SpinLockAcquire(&entry->mutex);
		c = entry->c;
		reset = entry->stats_reset;
		SpinLockRelease(&entry->mutex);

		values[n++] = ObjectIdGetDatum(entry->key.userid);
		values[n++] = ObjectIdGetDatum(entry->key.dbid);
		values[n++] = CStringGetTextDatum(entry->key.api == API_CALL ?
										  "idempotent_call" : "lease");
		nulls[n] = entry->key.api != API_CALL;
		values[n++] = ObjectIdGetDatum(entry->key.fn);
		/* the view's column order: counts, then each time after its count */
		for (int i = C_CALLS; i <= C_WAITS; i++)
			values[n++] = Int64GetDatum(c.counts[i]);
		values[n++] = Float8GetDatum(c.times[T_TOTAL_WAIT]);
		values[n++] = Float8GetDatum(c.times[T_MAX_WAIT]);
		for (int i = C_TIMEOUTS; i <= C_DYNAMODB_REQUESTS; i++)
			values[n++] = Int64GetDatum(c.counts[i]);
		values[n++] = Float8GetDatum(c.times[T_TOTAL_DYNAMODB]);
		values[n++] = Float8GetDatum(c.times[T_MAX_DYNAMODB]);
		values[n++] = TimestampTzGetDatum(reset);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(stats_shared->lock);
	return (Datum) 0;
}

/*
 * idem.stats_reset(): set every counter of every entry to zero, and its
 * stats_reset to now.  The entries stay, so a scraper sees the reset.
 */
Datum
idem_stats_reset(PG_FUNCTION_ARGS)
{
	HASH_SEQ_STATUS status;
	StatsEntry *entry;
	TimestampTz now = GetCurrentTimestamp();

	RequireShared();
	LWLockAcquire(stats_shared->lock, LW_SHARED);
	hash_seq_init(&status, stats_hash);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		SpinLockAcquire(&entry->mutex);
		memset(&entry->c, 0, sizeof(StatsCounters));
		entry->stats_reset = now;
		SpinLockRelease(&entry->mutex);
	}
	LWLockRelease(stats_shared->lock);
	PG_RETURN_VOID();
}
