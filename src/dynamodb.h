/*-------------------------------------------------------------------------
 *
 * dynamodb.h
 *		A small DynamoDB client on the libcurl multi interface.
 *
 * The client knows nothing of idem's settings or of its sync: it gets an
 * endpoint, a region and credentials in an IdemDynamoConfig, sends signed
 * request bodies it is given, and sorts the answers.  Any process with a
 * latch can use it.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_DYNAMODB_H
#define IDEM_DYNAMODB_H

#include "postgres.h"

/* Longest error text of a result, terminating zero byte included. */
#define IDEM_DYNAMO_ERROR_MAX 512

/* What an answer means for the request that got it. */
typedef enum IdemDynamoStatus
{
	IDEM_DYNAMO_OK,				/* 200 */
	IDEM_DYNAMO_CONDITION_FAILED,	/* ConditionalCheckFailedException */
	IDEM_DYNAMO_TRANSIENT,		/* worth retrying later */
	IDEM_DYNAMO_PERMANENT		/* will fail again until someone fixes it */
} IdemDynamoStatus;

/* Where to send requests and how to sign them; copied by IdemDynamoCreate. */
typedef struct IdemDynamoConfig
{
	const char *endpoint;
	const char *region;
	const char *access_key_id;
	const char *secret_access_key;
	const char *session_token;	/* NULL or empty: none */
	int			timeout_ms;
	int			max_connections;
} IdemDynamoConfig;

/* The outcome of one request. */
typedef struct IdemDynamoResult
{
	void	   *private;		/* what IdemDynamoSend was given */
	IdemDynamoStatus status;
	long		http_status;	/* 0 when no answer came */
	bool		sent;			/* false: the request never left (no
								 * connection), so it cannot have landed */
	char	   *error;			/* palloc'd; NULL when status is IDEM_DYNAMO_OK */
	char	   *body;			/* palloc'd answer body */
} IdemDynamoResult;

typedef struct IdemDynamoClient IdemDynamoClient;

extern IdemDynamoClient *IdemDynamoCreate(const IdemDynamoConfig *config);
extern void IdemDynamoDestroy(IdemDynamoClient *client);
extern void IdemDynamoSend(IdemDynamoClient *client, const char *operation,
						   const char *body, void *private);
extern bool IdemDynamoWait(IdemDynamoClient *client, long timeout_ms,
						   uint32 wait_event);
extern bool IdemDynamoNextResult(IdemDynamoClient *client,
								 IdemDynamoResult *result);

#endif							/* IDEM_DYNAMODB_H */
