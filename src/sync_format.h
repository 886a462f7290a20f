/*-------------------------------------------------------------------------
 *
 * sync_format.h
 *		The DynamoDB form of idem's outcomes and leased keys: Powertools
 *		item ids, request bodies, and reading an item back.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_SYNC_FORMAT_H
#define IDEM_SYNC_FORMAT_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/jsonb.h"

/* What tells one state of a leased key from another (sync_format.c). */
typedef struct IdemSyncLease
{
	int64		token;			/* the claim's fencing token */
	int64		version;		/* the outbox row's id */
	bool		in_progress;	/* INPROGRESS; else COMPLETED */
	TimestampTz in_progress_expiration; /* in_progress: the lease's end */
} IdemSyncLease;

/* An item read back after a failed write condition. */
typedef struct IdemSyncRemote
{
	bool		found;			/* false: no item (or no readable answer) */
	char	   *status;			/* NULL: none */
	Jsonb	   *data;			/* NULL: none, or not representable as JSON */
	bool		leased;			/* has pg_token and pg_version */
	int64		pg_token;
	int64		pg_version;
	char	   *pg_role;		/* NULL: none */
	char	   *pg_database;	/* NULL: none */
	char	   *pg_claim;		/* NULL: none; the arbiter claim it holds */
	TimestampTz expiration;		/* 0: none */
	bool		has_data;		/* a data attribute exists (data may still
								 * be NULL if it is not JSON) */
} IdemSyncRemote;

extern char *IdemSyncItemId(const char *prefix, const char *key);
extern char *IdemSyncPutItemBody(const char *table, const char *id,
								 Jsonb *outcome, TimestampTz expires_at,
								 const char *role, const char *database,
								 TimestampTz now);
extern char *IdemSyncPutLeaseItemBody(const char *table, const char *id,
									  const IdemSyncLease *lease,
									  Jsonb *outcome, TimestampTz expires_at,
									  const char *role, const char *database,
									  TimestampTz now);
extern char *IdemSyncPutArbiterItemBody(const char *table, const char *id,
										const char *claim,
										const IdemSyncLease *lease,
										Jsonb *outcome,
										TimestampTz expires_at,
										const char *role,
										const char *database,
										TimestampTz now);
extern char *IdemSyncPutClaimItemBody(const char *table, const char *id,
									  const char *claim, const char *replaces,
									  const int64 *token,
									  TimestampTz in_progress_expiration,
									  TimestampTz expires_at,
									  const char *role, const char *database,
									  TimestampTz now);
extern char *IdemSyncDeleteClaimBody(const char *table, const char *id,
									 const char *claim);
extern char *IdemSyncGetItemBody(const char *table, const char *id);
extern void IdemSyncReadItem(const char *response, IdemSyncRemote *remote);

#endif							/* IDEM_SYNC_FORMAT_H */
