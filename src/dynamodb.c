/*-------------------------------------------------------------------------
 *
 * dynamodb.c
 *		A small DynamoDB client on the libcurl multi interface, for idem's
 *		sync.
 *
 * Many requests travel at once over keep-alive connections that the multi
 * handle pools.  Requests are signed by libcurl (CURLOPT_AWS_SIGV4).  The
 * caller waits in IdemDynamoWait(), which sleeps on the process latch and
 * on libcurl's sockets together, so whoever sets the latch wakes the caller
 * even while transfers are pending.  Answers are classified into success,
 * failed condition, transient and permanent failures.
 *
 * This file is a leaf: everything it needs comes in its IdemDynamoConfig,
 * so that any process with a latch can use it, not only the sync worker.
 *
 * libcurl allocates with malloc: nothing libcurl owns is palloc'd, and no
 * libcurl callback can raise a PostgreSQL error.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "dynamodb.h"

/* SigV4 signing (CURLOPT_AWS_SIGV4) came in libcurl 7.75.0. */
#if LIBCURL_VERSION_NUM < 0x074b00
#error "idem needs libcurl 7.75.0 or later"
#endif

/* One request on the wire. */
typedef struct DynamoRequest
{
	CURL	   *easy;
	void	   *private;
	struct curl_slist *headers;
	char	   *response;		/* malloc'd */
	size_t		response_len;
	bool		response_oom;
	char		errbuf[CURL_ERROR_SIZE];
	struct DynamoRequest *prev;	/* the client's list of open requests */
	struct DynamoRequest *next;
} DynamoRequest;

/* A socket libcurl wants watched, and for what. */
typedef struct DynamoSocket
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN, _OUT or _INOUT */
} DynamoSocket;

struct IdemDynamoClient
{
	CURLM	   *multi;
	char	   *url;
	char	   *userpwd;
	char	   *sigv4;
	char	   *token_header;
	int			timeout_ms;
	DynamoRequest *requests;	/* open requests, for IdemDynamoDestroy */
	long		timer_ms;		/* libcurl's timer; -1 when none */
	TimestampTz timer_set_at;
	DynamoSocket *sockets;
	int			nsockets;
	int			maxsockets;
	MemoryContext cxt;
};

static bool curl_initialized = false;

/* Collect an answer body in malloc'd memory; never raises an error. */
static size_t
DynamoWriteCallback(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	DynamoRequest *req = (DynamoRequest *) userdata;
	size_t		n = size * nmemb;
	char	   *grown;

	if (req->response_len + n > 16 * 1024 * 1024)
	{
		req->response_oom = true;
		return 0;
	}
	grown = realloc(req->response, req->response_len + n + 1);
	if (grown == NULL)
	{
		req->response_oom = true;
		return 0;
	}
	req->response = grown;
	memcpy(req->response + req->response_len, ptr, n);
	req->response_len += n;
	req->response[req->response_len] = '\0';
	return n;
}

/* Note which sockets libcurl wants watched; never raises an error. */
static int
DynamoSocketCallback(CURL *easy, curl_socket_t fd, int what, void *userp,
					 void *socketp)
{
	IdemDynamoClient *client = (IdemDynamoClient *) userp;
	int			i;

	for (i = 0; i < client->nsockets; i++)
		if (client->sockets[i].fd == fd)
			break;

	if (what == CURL_POLL_REMOVE)
	{
		if (i < client->nsockets)
			client->sockets[i] = client->sockets[--client->nsockets];
		return 0;
	}
	if (i == client->nsockets)
	{
		if (client->nsockets == client->maxsockets)
		{
			int			newmax = client->maxsockets * 2;
			DynamoSocket *grown = realloc(client->sockets,
										  newmax * sizeof(DynamoSocket));

			if (grown == NULL)
				return -1;
			client->sockets = grown;
			client->maxsockets = newmax;
		}
		client->sockets[client->nsockets++].fd = fd;
	}
	client->sockets[i].what = what;
	return 0;
}

/* Remember when libcurl wants to be called for its time-outs. */
static int
DynamoTimerCallback(CURLM *multi, long timeout_ms, void *userp)
{
	IdemDynamoClient *client = (IdemDynamoClient *) userp;

	client->timer_ms = timeout_ms;
	client->timer_set_at = GetCurrentTimestamp();
	return 0;
}

/* Create a client for one endpoint and set of credentials. */
IdemDynamoClient *
IdemDynamoCreate(const IdemDynamoConfig *config)
{
	IdemDynamoClient *client;
	MemoryContext cxt;

	if (!curl_initialized)
	{
		if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
			ereport(ERROR,
					(errcode(ERRCODE_SYSTEM_ERROR),
					 errmsg("could not initialize libcurl")));
		curl_initialized = true;
	}

	cxt = AllocSetContextCreate(TopMemoryContext, "idem DynamoDB client",
								ALLOCSET_SMALL_SIZES);
	client = MemoryContextAllocZero(cxt, sizeof(IdemDynamoClient));
	client->cxt = cxt;
	client->url = MemoryContextStrdup(cxt, config->endpoint);
	client->userpwd = MemoryContextStrdup(cxt, psprintf("%s:%s",
														config->access_key_id,
														config->secret_access_key));
	client->sigv4 = MemoryContextStrdup(cxt, psprintf("aws:amz:%s:dynamodb",
													  config->region));
	if (config->session_token && config->session_token[0] != '\0')
		client->token_header = MemoryContextStrdup(cxt,
												   psprintf("X-Amz-Security-Token: %s",
															config->session_token));
	client->timeout_ms = config->timeout_ms;
	client->timer_ms = -1;
	client->maxsockets = 16;
	client->sockets = malloc(client->maxsockets * sizeof(DynamoSocket));
	client->multi = curl_multi_init();
	if (client->sockets == NULL || client->multi == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl multi handle")));

	curl_multi_setopt(client->multi, CURLMOPT_SOCKETFUNCTION, DynamoSocketCallback);
	curl_multi_setopt(client->multi, CURLMOPT_SOCKETDATA, client);
	curl_multi_setopt(client->multi, CURLMOPT_TIMERFUNCTION, DynamoTimerCallback);
	curl_multi_setopt(client->multi, CURLMOPT_TIMERDATA, client);
	curl_multi_setopt(client->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long) config->max_connections);
	curl_multi_setopt(client->multi, CURLMOPT_MAXCONNECTS, (long) config->max_connections);
	return client;
}

/* Unlink a request from its client and free what libcurl allocated for it. */
static void
FreeRequest(IdemDynamoClient *client, DynamoRequest *req)
{
	if (req->prev)
		req->prev->next = req->next;
	else
		client->requests = req->next;
	if (req->next)
		req->next->prev = req->prev;
	curl_multi_remove_handle(client->multi, req->easy);
	curl_easy_cleanup(req->easy);
	curl_slist_free_all(req->headers);
	free(req->response);
	free(req);
}

/* Abort every transfer and free the client. */
void
IdemDynamoDestroy(IdemDynamoClient *client)
{
	while (client->requests)
		FreeRequest(client, client->requests);
	curl_multi_cleanup(client->multi);
	free(client->sockets);
	MemoryContextDelete(client->cxt);
}

/* Start one signed DynamoDB request; body must live until its result. */
void
IdemDynamoSend(IdemDynamoClient *client, const char *operation,
			   const char *body, void *private)
{
	DynamoRequest *req;
	CURL	   *easy;
	char		target[128];

	req = calloc(1, sizeof(DynamoRequest));
	easy = curl_easy_init();
	if (req == NULL || easy == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl handle")));
	req->easy = easy;
	req->private = private;

	snprintf(target, sizeof(target), "X-Amz-Target: DynamoDB_20120810.%s", operation);
	req->headers = curl_slist_append(req->headers, "Content-Type: application/x-amz-json-1.0");
	req->headers = curl_slist_append(req->headers, target);
	/*
	 * No Expect header of our own: libcurl 7.88 signs an "Expect:" line that
	 * it then leaves out of the request, which breaks the signature.
	 */
	if (client->token_header)
		req->headers = curl_slist_append(req->headers, client->token_header);

	curl_easy_setopt(easy, CURLOPT_URL, client->url);
	/* the string form came in libcurl 7.85, which deprecated the bit mask */
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, req->headers);
	curl_easy_setopt(easy, CURLOPT_POST, 1L);
	/* The body goes through POSTFIELDS: SigV4 hashes exactly this payload. */
	curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long) strlen(body));
	curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(easy, CURLOPT_AWS_SIGV4, client->sigv4);
	curl_easy_setopt(easy, CURLOPT_USERPWD, client->userpwd);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) client->timeout_ms);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) Min(client->timeout_ms, 10000));
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, DynamoWriteCallback);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, req);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, req->errbuf);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, req);

	if (curl_multi_add_handle(client->multi, easy) != CURLM_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not add a request to the libcurl multi handle")));
	req->next = client->requests;
	if (client->requests)
		client->requests->prev = req;
	client->requests = req;
}

/*
 * Sleep until the latch is set, a socket is ready, libcurl's timer fires or
 * timeout_ms passes (-1: no limit), then let libcurl do its work.  Returns
 * true if the latch was set (and resets it).
 */
bool
IdemDynamoWait(IdemDynamoClient *client, long timeout_ms, uint32 wait_event)
{
	WaitEventSet *set;
	WaitEvent  *events;
	int			nevents;
	int			n;
	bool		latch_set = false;
	bool		socket_ready = false;
	long		wait_ms = timeout_ms;
	int			running;

	/* How long until libcurl's own timer fires? */
	if (client->timer_ms >= 0)
	{
		long		elapsed;
		long		left;

		elapsed = (long) ((GetCurrentTimestamp() - client->timer_set_at) / 1000);
		left = Max(client->timer_ms - elapsed, 0);
		if (wait_ms < 0 || left < wait_ms)
			wait_ms = left;
	}

	nevents = 2 + client->nsockets;
	set = IdemCreateWaitEventSet(nevents);
	AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	for (int i = 0; i < client->nsockets; i++)
	{
		uint32		ev = 0;

		if (client->sockets[i].what & CURL_POLL_IN)
			ev |= WL_SOCKET_READABLE;
		if (client->sockets[i].what & CURL_POLL_OUT)
			ev |= WL_SOCKET_WRITEABLE;
		if (ev != 0)
			AddWaitEventToSet(set, ev, client->sockets[i].fd, NULL, NULL);
	}

	events = palloc(sizeof(WaitEvent) * nevents);
	n = WaitEventSetWait(set, wait_ms, events, nevents, wait_event);

	for (int i = 0; i < n; i++)
	{
		if (events[i].events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			latch_set = true;
		}
		else if (events[i].events & WL_SOCKET_MASK)
		{
			int			flags = 0;

			if (events[i].events & WL_SOCKET_READABLE)
				flags |= CURL_CSELECT_IN;
			if (events[i].events & WL_SOCKET_WRITEABLE)
				flags |= CURL_CSELECT_OUT;
			curl_multi_socket_action(client->multi, events[i].fd, flags, &running);
			socket_ready = true;
		}
	}
	FreeWaitEventSet(set);
	pfree(events);

	/* Let libcurl handle its time-outs whenever nothing else drove it. */
	if (!socket_ready && client->timer_ms >= 0)
	{
		long		elapsed = (long) ((GetCurrentTimestamp() - client->timer_set_at) / 1000);

		if (elapsed >= client->timer_ms)
		{
			client->timer_ms = -1;
			curl_multi_socket_action(client->multi, CURL_SOCKET_TIMEOUT, 0, &running);
		}
	}
	return latch_set;
}

/* Find the value of a string member in a DynamoDB error body. */
static char *
ErrorBodyField(const char *body, const char *field)
{
	const char *p;
	StringInfoData out;

	if (body == NULL)
		return NULL;
	p = strstr(body, field);
	if (p == NULL)
		return NULL;
	p += strlen(field);
	while (*p == ' ' || *p == ':')
		p++;
	if (*p != '"')
		return NULL;
	p++;
	initStringInfo(&out);
	while (*p && *p != '"')
	{
		if (*p == '\\' && p[1])
			p++;
		appendStringInfoChar(&out, *p++);
	}
	return out.data;
}

/* Sort an answer into success, failed condition, transient or permanent. */
static void
ClassifyAnswer(IdemDynamoResult *result, CURLcode rc, DynamoRequest *req)
{
	char	   *type;
	char	   *message;
	const char *shorttype;

	if (rc != CURLE_OK)
	{
		result->status = IDEM_DYNAMO_TRANSIENT;
		result->error = psprintf("HTTP request failed: %s",
								 req->errbuf[0] ? req->errbuf : curl_easy_strerror(rc));
		return;
	}
	if (result->http_status == 200)
	{
		result->status = IDEM_DYNAMO_OK;
		return;
	}

	type = ErrorBodyField(result->body, "\"__type\"");
	message = ErrorBodyField(result->body, "\"message\"");
	if (message == NULL)
		message = ErrorBodyField(result->body, "\"Message\"");
	shorttype = type ? (strchr(type, '#') ? strchr(type, '#') + 1 : type) : "";

	if (result->http_status >= 500 || result->http_status == 429)
		result->status = IDEM_DYNAMO_TRANSIENT;
	else if (strcmp(shorttype, "ConditionalCheckFailedException") == 0)
		result->status = IDEM_DYNAMO_CONDITION_FAILED;
	else if (strcmp(shorttype, "ThrottlingException") == 0 ||
			 strcmp(shorttype, "ProvisionedThroughputExceededException") == 0 ||
			 strcmp(shorttype, "RequestLimitExceeded") == 0 ||
			 strcmp(shorttype, "LimitExceededException") == 0 ||
			 strcmp(shorttype, "TransactionConflictException") == 0 ||
			 strcmp(shorttype, "InternalServerError") == 0 ||
			 strcmp(shorttype, "ServiceUnavailable") == 0)
		result->status = IDEM_DYNAMO_TRANSIENT;
	else
		result->status = IDEM_DYNAMO_PERMANENT;

	result->error = psprintf("DynamoDB answered HTTP %ld %s%s%s",
							 result->http_status,
							 shorttype[0] ? shorttype : "(no error type)",
							 message ? ": " : "",
							 message ? message : "");
	if (strlen(result->error) > IDEM_DYNAMO_ERROR_MAX - 1)
		result->error[IDEM_DYNAMO_ERROR_MAX - 1] = '\0';
}

/* Take the next finished request's result, if any; false when none. */
bool
IdemDynamoNextResult(IdemDynamoClient *client, IdemDynamoResult *result)
{
	CURLMsg    *msg;
	int			left;
	DynamoRequest *req;
	CURLcode	rc;
	long		request_size;

	do
	{
		msg = curl_multi_info_read(client->multi, &left);
		if (msg == NULL)
			return false;
	} while (msg->msg != CURLMSG_DONE);

	rc = msg->data.result;
	curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &req);

	memset(result, 0, sizeof(IdemDynamoResult));
	result->private = req->private;
	curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &result->http_status);
	if (curl_easy_getinfo(msg->easy_handle, CURLINFO_REQUEST_SIZE, &request_size) != CURLE_OK)
		request_size = 1;
	result->sent = request_size > 0;
	result->body = pstrdup(req->response ? req->response : "");
	if (req->response_oom && rc == CURLE_OK)
		rc = CURLE_WRITE_ERROR;
	ClassifyAnswer(result, rc, req);

	FreeRequest(client, req);
	return true;
}
