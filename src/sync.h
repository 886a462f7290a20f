/*-------------------------------------------------------------------------
 *
 * sync.h
 *		idem's DynamoDB sync: its settings, its shared state, and waking
 *		its worker.
 *
 * The core calls IdemSyncInit() at the end of _PG_init() and
 * IdemOutboxRecord() (sync_outbox.h) after it writes the record of a first
 * execution; nothing else of the sync is meant for it.  The rest of this
 * header serves the other files of the sync.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_SYNC_H
#define IDEM_SYNC_H

#include "postgres.h"

#include "datatype/timestamp.h"

/* The idem.dynamodb_* settings */
extern char *idem_dynamodb_table;
extern char *idem_dynamodb_region;
extern char *idem_dynamodb_endpoint;
extern char *idem_dynamodb_key_prefix;
extern char *idem_dynamodb_database;
extern char *idem_dynamodb_access_key_id;
extern char *idem_dynamodb_secret_access_key;
extern char *idem_dynamodb_session_token;
extern int	idem_dynamodb_request_timeout;	/* milliseconds */
extern int	idem_dynamodb_parallelism;
extern int	idem_dynamodb_retry_max_delay;	/* milliseconds */

struct IdemDynamoClient;

/* Room for an item id and a claim name in the queue of claim deletes. */
#define IDEM_SYNC_ITEM_ID_LEN	512
#define IDEM_SYNC_CLAIM_LEN		128

/* A claim of a rolled-back call, for the worker to delete. */
typedef struct IdemSyncClaimDelete
{
	TimestampTz lease_end;		/* past it, the claim lapses by itself */
	char		item_id[IDEM_SYNC_ITEM_ID_LEN];
	char		claim[IDEM_SYNC_CLAIM_LEN];
} IdemSyncClaimDelete;

extern void IdemSyncInit(void);
extern bool IdemSyncEnabled(void);
extern bool IdemSyncWorkerRegistered(void);
extern struct IdemDynamoClient *IdemSyncConnect(int max_connections,
												char **problem);
extern void IdemSyncSetLastError(const char *msg);
extern void IdemSyncWakeWorkerAtCommit(void);
extern const char *IdemSyncSetupProblem(void);
extern void IdemSyncWarnSetup(void);
extern bool IdemSyncQueueClaimDelete(const char *item_id, const char *claim,
									 TimestampTz lease_end);

/* For the sync worker: its entry in the shared state. */
extern void IdemSyncAttachWorker(void);
extern void IdemSyncSetInFlight(int in_flight);
extern void IdemSyncCountRequest(void);
extern bool IdemSyncHasLastError(void);
extern void IdemSyncClearLastError(void);
extern int	IdemSyncTakeClaimDeletes(IdemSyncClaimDelete *out, int max,
									 int held);

#endif							/* IDEM_SYNC_H */
