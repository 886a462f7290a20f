/*-------------------------------------------------------------------------
 *
 * sync_internal.h
 *		Declarations shared by the files of idem's DynamoDB sync.
 *
 * sync.c owns the settings, the shared memory and the outbox writes made by
 * backends; sync_format.c turns outcomes into DynamoDB requests and reads
 * items back; dynamodb.c is the libcurl multi client; sync_worker.c is the
 * background worker that delivers the outbox.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_SYNC_INTERNAL_H
#define IDEM_SYNC_INTERNAL_H

#include "postgres.h"

#include "storage/spin.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/* Settings, defined in sync.c */
extern char *sync_table;
extern char *sync_region;
extern char *sync_endpoint;
extern char *sync_key_prefix;
extern char *sync_database;
extern char *sync_access_key_id;
extern char *sync_secret_access_key;
extern char *sync_session_token;
extern int	sync_request_timeout;	/* milliseconds */
extern int	sync_parallelism;
extern int	sync_retry_max_delay;	/* milliseconds */

#define SYNC_LAST_ERROR_LEN 512

/* State of the sync worker that backends can see, in shared memory. */
typedef struct SyncShared
{
	slock_t		mutex;
	int			worker_pgprocno;	/* -1 when no worker runs */
	pid_t		worker_pid;
	int			in_flight;		/* requests on the wire right now */
	uint64		requests_sent;	/* since the server started */
	TimestampTz last_error_at;
	char		last_error[SYNC_LAST_ERROR_LEN];
} SyncShared;

extern SyncShared *sync_shared;

/* sync.c */
extern void SyncSetLastError(const char *msg);
extern bool SyncEnabled(void);

/* sync_format.c */
extern char *SyncItemId(const char *prefix, const char *key);
extern void SyncAppendAttributeValue(StringInfo buf, JsonbContainer *jc);
extern char *SyncPutItemBody(const char *table, const char *id, Jsonb *outcome,
							 int64 expiration, const char *role,
							 const char *database, TimestampTz now);
extern char *SyncGetItemBody(const char *table, const char *id);
extern Jsonb *SyncRemoteData(const char *response, bool *found, char **status);

/* dynamodb.c */
typedef enum DynamoStatus
{
	DYNAMO_OK,					/* 200 */
	DYNAMO_CONDITION_FAILED,	/* ConditionalCheckFailedException */
	DYNAMO_TRANSIENT,			/* worth retrying later */
	DYNAMO_PERMANENT			/* will fail again until someone fixes it */
} DynamoStatus;

typedef struct DynamoConfig
{
	const char *endpoint;
	const char *region;
	const char *access_key_id;
	const char *secret_access_key;
	const char *session_token;	/* NULL or empty: none */
	int			timeout_ms;
	int			max_connections;
} DynamoConfig;

typedef struct DynamoResult
{
	void	   *private;		/* what DynamoSend was given */
	DynamoStatus status;
	long		http_status;	/* 0 when no answer came */
	char	   *error;			/* palloc'd; NULL when status is DYNAMO_OK */
	char	   *body;			/* palloc'd answer body */
} DynamoResult;

typedef struct DynamoClient DynamoClient;

extern DynamoClient *DynamoCreate(const DynamoConfig *config);
extern void DynamoDestroy(DynamoClient *client);
extern void DynamoSend(DynamoClient *client, const char *operation,
					   const char *body, void *private);
extern int	DynamoInFlight(DynamoClient *client);
extern bool DynamoWait(DynamoClient *client, long timeout_ms, uint32 wait_event);
extern bool DynamoNextResult(DynamoClient *client, DynamoResult *result);

/* sync_worker.c */
extern PGDLLEXPORT void SyncWorkerMain(Datum main_arg);

#endif							/* IDEM_SYNC_INTERNAL_H */
