/*-------------------------------------------------------------------------
 *
 * compat.h
 *		The few server interfaces that differ between the PostgreSQL majors
 *		idem builds against (13 to 18); the libcurl version checks live in
 *		src/dynamodb.c, beside the calls they guard.
 *
 * Each difference is one macro or inline function named after what idem
 * needs, defined as the newest form of the interface on the majors that
 * have it, so that a build against PostgreSQL 15 compiles exactly the calls
 * it compiled before this file existed.  scripts/matrix.sh builds and tests
 * idem against 13, 17 and 18; 14 and 16 are covered by the same version
 * numbers but are not built here (no server headers for them are at hand).
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_COMPAT_H
#define IDEM_COMPAT_H

#include "postgres.h"

/* 16 moved the varlena macros (VARDATA_ANY, ...) out of postgres.h. */
#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

/* 14 renamed the predefined roles' constants. */
#if PG_VERSION_NUM < 140000
#define ROLE_PG_READ_ALL_STATS DEFAULT_ROLE_READ_ALL_STATS
#endif

/*
 * 14 added try_table_open; on idem.records, which is a table, the older
 * relation form answers the same.
 */
#if PG_VERSION_NUM < 140000
#define try_table_open(relid, lockmode) try_relation_open(relid, lockmode)
#endif

/* The calling process's number in the PGPROC array: 17 made it a global. */
#if PG_VERSION_NUM >= 170000
#define IdemMyProcNumber() ((int) MyProcNumber)
#else
#define IdemMyProcNumber() (MyProc->pgprocno)
#endif

/* A lexer over a NUL-free string: 17 takes the context to fill (NULL: new). */
#if PG_VERSION_NUM >= 170000
#define IdemJsonLexer(json, len) \
	makeJsonLexContextCstringLen(NULL, (json), (len), PG_UTF8, false)
#else
#define IdemJsonLexer(json, len) \
	makeJsonLexContextCstringLen((json), (len), PG_UTF8, false)
#endif

/*
 * A wait event set the caller frees itself.  From 17 a resource owner
 * tracks it, so that an error between creation and FreeWaitEventSet does
 * not leak its epoll descriptor; before 17 it lives in a memory context.
 */
#if PG_VERSION_NUM >= 170000
#define IdemCreateWaitEventSet(nevents) \
	CreateWaitEventSet(CurrentResourceOwner, (nevents))
#else
#define IdemCreateWaitEventSet(nevents) \
	CreateWaitEventSet(CurrentMemoryContext, (nevents))
#endif

/* Base64 of binary data: 18 takes it as uint8, before as char. */
#if PG_VERSION_NUM >= 180000
#define IdemBase64Encode(src, len, dst, dstlen) \
	pg_b64_encode((const uint8 *) (src), (len), (dst), (dstlen))
#else
#define IdemBase64Encode(src, len, dst, dstlen) \
	pg_b64_encode((const char *) (src), (len), (dst), (dstlen))
#endif

/* An index scan without instrumentation: 18 added that argument. */
#if PG_VERSION_NUM >= 180000
#define IdemIndexBeginScan(heap, index, snapshot, nkeys, norderbys) \
	index_beginscan((heap), (index), (snapshot), NULL, (nkeys), (norderbys))
#else
#define IdemIndexBeginScan(heap, index, snapshot, nkeys, norderbys) \
	index_beginscan((heap), (index), (snapshot), (nkeys), (norderbys))
#endif

/*
 * Try to take a transaction's lock without waiting; 18 can log the failure
 * (log_lock_failures), which idem leaves off: a busy key is not an event.
 */
#if PG_VERSION_NUM >= 180000
#define IdemConditionalXactLockTableWait(xid) \
	ConditionalXactLockTableWait((xid), false)
#else
#define IdemConditionalXactLockTableWait(xid) \
	ConditionalXactLockTableWait(xid)
#endif

/*
 * MD5 of a buffer into 16 bytes; false with *errstr set on failure.  Before
 * 15 the function had no error string: it failed only out of memory.
 */
#if PG_VERSION_NUM >= 150000
#define IdemMd5Binary(buf, len, digest, errstr) \
	pg_md5_binary((buf), (len), (digest), (errstr))
#else
#define IdemMd5Binary(buf, len, digest, errstr) \
	(*(errstr) = "out of memory", pg_md5_binary((buf), (len), (digest)))
#endif

/*
 * SHA-256 through pg_cryptohash, which came in 14.  13 has only its
 * pg_sha256 functions, which cannot fail; a context made here lives until
 * pg_cryptohash_free, like one made by 14's.
 */
#if PG_VERSION_NUM >= 140000
#include "common/cryptohash.h"
#else
#include "common/sha2.h"
#include "utils/memutils.h"

typedef pg_sha256_ctx pg_cryptohash_ctx;
typedef enum
{
	PG_SHA256
} pg_cryptohash_type;

/* A SHA-256 context that outlives transactions. */
static inline pg_cryptohash_ctx *
pg_cryptohash_create(pg_cryptohash_type type)
{
	return MemoryContextAlloc(TopMemoryContext, sizeof(pg_cryptohash_ctx));
}

/* Start a digest. */
static inline int
pg_cryptohash_init(pg_cryptohash_ctx *ctx)
{
	pg_sha256_init(ctx);
	return 0;
}

/* Feed len bytes to the digest. */
static inline int
pg_cryptohash_update(pg_cryptohash_ctx *ctx, const uint8 *data, size_t len)
{
	pg_sha256_update(ctx, data, len);
	return 0;
}

/* Finish the digest into dest, which holds PG_SHA256_DIGEST_LENGTH bytes. */
static inline int
pg_cryptohash_final(pg_cryptohash_ctx *ctx, uint8 *dest, size_t len)
{
	pg_sha256_final(ctx, dest);
	return 0;
}

/* Free a context. */
static inline void
pg_cryptohash_free(pg_cryptohash_ctx *ctx)
{
	pfree(ctx);
}
#endif

/* Why a pg_cryptohash call failed: 15 added the explanation. */
#if PG_VERSION_NUM >= 150000
#define IdemCryptohashError(ctx) pg_cryptohash_error(ctx)
#else
#define IdemCryptohashError(ctx) "out of memory or a library failure"
#endif

/*
 * Set up a set-returning function's result as a tuplestore of its declared
 * row type, as 15's InitMaterializedSRF(fcinfo, 0) does.
 */
#if PG_VERSION_NUM < 150000
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/tuplestore.h"

/* Make the tuplestore and the descriptor that rows are put in. */
static inline void
InitMaterializedSRF(FunctionCallInfo fcinfo, bits32 flags)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext old;
	TupleDesc	tupdesc;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		(rsinfo->allowedModes & SFRM_Materialize) == 0)
		elog(ERROR, "set-valued function called in a context that cannot accept a set");
	old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->setDesc = tupdesc;
	MemoryContextSwitchTo(old);
}
#endif

/*
 * Memory for a GUC check hook's extra, which the server frees: with free()
 * before 16, with guc_free() (memory of its own context) from 16, which
 * crashes on malloc'd memory.  NULL when out of memory.
 */
#if PG_VERSION_NUM >= 160000
#include "utils/guc.h"
#define IdemGucMalloc(size) guc_malloc(LOG, (size))
#else
#define IdemGucMalloc(size) malloc(size)
#endif

/* A uniform random number in [0, 1), for jitter; random() before 15. */
#if PG_VERSION_NUM >= 150000
#include "common/pg_prng.h"
#define IdemRandomFraction() pg_prng_double(&pg_global_prng_state)
#else
#define IdemRandomFraction() ((double) random() / ((double) MAX_RANDOM_VALUE + 1))
#endif

#endif							/* IDEM_COMPAT_H */
