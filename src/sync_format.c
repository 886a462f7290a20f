/*-------------------------------------------------------------------------
 *
 * sync_format.c
 *		The DynamoDB side of idem's sync: item ids, the AttributeValue form
 *		of outcomes, request bodies, and reading an item back; and the SQL
 *		functions that show them.
 *
 * Items follow the record format of Powertools for AWS Lambda (TypeScript)
 * idempotency, so that a Lambda function using the same key prefix and key
 * finds a PostgreSQL outcome and returns it without running its handler:
 *
 *	id			 <prefix>#<base64 of md5 of the key as a JSON string>
 *	status		 COMPLETED
 *	expiration	 the record's expiry, epoch seconds
 *	data		 the outcome as a native DynamoDB value
 *
 * plus pg_role and pg_database, which say where the item came from.
 *
 * The keys of idem.claim are written in the same format, with two more
 * attributes: pg_token, the claim's fencing token, and pg_version, the id
 * of the outbox row, which orders the states of one claim.  While the key
 * is held the item is INPROGRESS, without data, and in_progress_expiration
 * (epoch milliseconds) is the end of the lease, so that Powertools refuses
 * to run while the lease is live and takes the key over once it lapses; a
 * release writes a lease that ended at the release.  Once completed, the
 * item is COMPLETED with data, exactly like an item of idempotent_call.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "common/base64.h"
#include "common/jsonapi.h"
#include "common/md5.h"
#include "compat.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "sync.h"
#include "sync_format.h"

/* The condition under which Powertools itself may claim an id. */
#define CLAIM_CONDITION \
	"attribute_not_exists(#id) OR #expiration < :now OR " \
	"(#status = :inprogress AND attribute_exists(#in_progress_expiration) " \
	"AND #in_progress_expiration < :now_ms)"

/*
 * The condition of a leased key's state.  Anyone may write where Powertools
 * could claim, except over a lapsed lock of this same PostgreSQL record:
 * that lock is PostgreSQL's, and only a newer state of it (a higher token,
 * or the same token and a higher outbox id) may replace it.  Without the
 * exception, a claim or extend delivered after its own release would take
 * the key back until its old lease ran out.
 */
#define OURS \
	"attribute_exists(#pg_token) AND #pg_database = :pg_database AND #pg_role = :pg_role"
#define LEASE_CONDITION \
	"attribute_not_exists(#id) OR #expiration < :now OR " \
	"(#status = :inprogress AND attribute_exists(#in_progress_expiration) " \
	"AND #in_progress_expiration < :now_ms AND NOT (" OURS ")) OR " \
	"(" OURS " AND (#pg_token < :pg_token OR " \
	"(#pg_token = :pg_token AND #pg_version < :pg_version)))"

/*
 * The conditions of arbiter mode (arbiter.c), where the item of a key is
 * claimed before the call runs and every later state of that claim names
 * it in pg_claim.  A completion may land where Powertools could claim, or
 * over its own claim; a state of a leased key, in addition, only over an
 * older state of the same claim (pg_version orders them; the claim itself
 * is version 0), never over its own lapsed lock.
 */
#define ARBITER_CONDITION \
	CLAIM_CONDITION " OR #pg_claim = :pg_claim"
#define ARBITER_LEASE_CONDITION \
	"attribute_not_exists(#id) OR #expiration < :now OR " \
	"(#status = :inprogress AND attribute_exists(#in_progress_expiration) " \
	"AND #in_progress_expiration < :now_ms AND NOT (#pg_claim = :pg_claim)) OR " \
	"(#pg_claim = :pg_claim AND #pg_version < :pg_version)"

static bool AppendPlainJson(StringInfo buf, JsonbContainer *av);

PG_FUNCTION_INFO_V1(idem_sync_item_id);
PG_FUNCTION_INFO_V1(idem_sync_put_item_request);

/*
 * Derive the Powertools id of a key: the trimmed prefix, '#', and the base64
 * md5 of the key written as JavaScript's JSON.stringify writes a string.
 */
char *
IdemSyncItemId(const char *prefix, const char *key)
{
	StringInfoData json;
	StringInfoData id;
	uint8		digest[16];
	char		b64[32];
	const char *errstr = NULL;
	const char *start = prefix;
	const char *end = prefix + strlen(prefix);
	int			len;

	/* JSON.stringify and escape_json agree on every valid UTF-8 string. */
	initStringInfo(&json);
	escape_json(&json, key);
	if (!IdemMd5Binary(json.data, json.len, digest, &errstr))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute the MD5 hash of an idempotency key: %s",
						errstr)));
	len = IdemBase64Encode(digest, sizeof(digest), b64, sizeof(b64) - 1);
	if (len < 0)
		elog(ERROR, "could not encode an MD5 hash in base64");
	b64[len] = '\0';

	/* Powertools trims the prefix the way String.prototype.trim does. */
	while (start < end && isspace((unsigned char) *start))
		start++;
	while (end > start && isspace((unsigned char) end[-1]))
		end--;

	initStringInfo(&id);
	appendBinaryStringInfo(&id, start, end - start);
	appendStringInfoChar(&id, '#');
	appendStringInfoString(&id, b64);
	pfree(json.data);
	return id.data;
}

/* Append one jsonb scalar as a DynamoDB AttributeValue. */
static void
AppendScalarAttributeValue(StringInfo buf, JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			appendStringInfoString(buf, "{\"NULL\":true}");
			break;
		case jbvBool:
			appendStringInfoString(buf, v->val.boolean ? "{\"BOOL\":true}" : "{\"BOOL\":false}");
			break;
		case jbvString:
			{
				char	   *s = pnstrdup(v->val.string.val, v->val.string.len);

				appendStringInfoString(buf, "{\"S\":");
				escape_json(buf, s);
				appendStringInfoChar(buf, '}');
				pfree(s);
			}
			break;
		case jbvNumeric:
			{
				char	   *n = DatumGetCString(DirectFunctionCall1(numeric_out,
																	NumericGetDatum(v->val.numeric)));

				appendStringInfoString(buf, "{\"N\":\"");
				appendStringInfoString(buf, n);
				appendStringInfoString(buf, "\"}");
				pfree(n);
			}
			break;
		default:
			elog(ERROR, "unexpected jsonb value type %d", (int) v->type);
	}
}

/*
 * Append a jsonb document as a DynamoDB AttributeValue: object M, array L,
 * string S, number N, boolean BOOL, null NULL.
 */
static void
AppendAttributeValue(StringInfo buf, JsonbContainer *jc)
{
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	v;
	bool		first = true;
	bool		is_object = JsonContainerIsObject(jc);

	check_stack_depth();

	if (JsonContainerIsScalar(jc))
	{
		JsonbValue	scalar;

		if (!JsonbExtractScalar(jc, &scalar))
			elog(ERROR, "could not extract a jsonb scalar");
		AppendScalarAttributeValue(buf, &scalar);
		return;
	}

	appendStringInfoString(buf, is_object ? "{\"M\":{" : "{\"L\":[");
	it = JsonbIteratorInit(jc);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			char	   *k = pnstrdup(v.val.string.val, v.val.string.len);

			if (!first)
				appendStringInfoChar(buf, ',');
			first = false;
			escape_json(buf, k);
			appendStringInfoChar(buf, ':');
			pfree(k);
		}
		else if (tok == WJB_VALUE || tok == WJB_ELEM)
		{
			if (tok == WJB_ELEM)
			{
				if (!first)
					appendStringInfoChar(buf, ',');
				first = false;
			}
			if (v.type == jbvBinary)
				AppendAttributeValue(buf, v.val.binary.data);
			else
				AppendScalarAttributeValue(buf, &v);
		}
	}
	appendStringInfoString(buf, is_object ? "}}" : "]}");
}

/*
 * Unix time of a timestamp in units of 1/per_second seconds (1: seconds,
 * 1000: milliseconds), rounded down also before 1970.  DynamoDB items carry
 * epoch numbers; computing them in one place keeps the items the worker
 * sends and those idem.sync_put_item_request() shows alike.
 */
static int64
UnixEpoch(TimestampTz ts, int64 per_second)
{
	int64		unit = USECS_PER_SEC / per_second;
	int64		units = ts / unit;

	/* C division truncates toward zero: step down for earlier instants. */
	if (ts % unit < 0)
		units--;
	/* The epochs differ by whole seconds, so adding them after is exact. */
	return units + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * per_second;
}

/*
 * Open a PutItem body and its Item with the attributes every item has: id,
 * expiration, status, data (when there is an outcome), pg_role and
 * pg_database.  The caller adds more attributes and closes the Item.
 */
static void
AppendItemStart(StringInfo buf, const char *table, const char *id,
				const char *status, Jsonb *outcome, TimestampTz expires_at,
				const char *role, const char *database)
{
	appendStringInfoString(buf, "{\"TableName\":");
	escape_json(buf, table);
	appendStringInfoString(buf, ",\"Item\":{\"id\":{\"S\":");
	escape_json(buf, id);
	appendStringInfo(buf, "},\"expiration\":{\"N\":\"" INT64_FORMAT "\"}",
					 UnixEpoch(expires_at, 1));
	appendStringInfo(buf, ",\"status\":{\"S\":\"%s\"}", status);
	if (outcome != NULL)
	{
		appendStringInfoString(buf, ",\"data\":");
		AppendAttributeValue(buf, &outcome->root);
	}
	appendStringInfoString(buf, ",\"pg_role\":{\"S\":");
	escape_json(buf, role);
	appendStringInfoString(buf, "},\"pg_database\":{\"S\":");
	escape_json(buf, database);
	appendStringInfoChar(buf, '}');
}

/*
 * Append the attributes of a claim's state that are set: the end of its
 * in-progress lock, and the fencing token with the state's version.
 */
static void
AppendStateAttributes(StringInfo buf, const TimestampTz *in_progress_expiration,
					  const int64 *token, int64 version)
{
	if (in_progress_expiration != NULL)
		appendStringInfo(buf, ",\"in_progress_expiration\":{\"N\":\"" INT64_FORMAT "\"}",
						 UnixEpoch(*in_progress_expiration, 1000));
	if (token != NULL)
		appendStringInfo(buf, ",\"pg_token\":{\"N\":\"" INT64_FORMAT "\"}"
						 ",\"pg_version\":{\"N\":\"" INT64_FORMAT "\"}",
						 *token, version);
}

/*
 * What a write condition names beyond Powertools' own attributes (id,
 * expiration, status, in_progress_expiration): each one set is bound as
 * #pg_x and :pg_x.  DynamoDB refuses names and values a condition does not
 * use, so a condition binds exactly those it names.
 */
typedef struct WriteCondition
{
	const char *expression;
	const char *claim;			/* pg_claim */
	const int64 *token;			/* pg_token */
	const int64 *version;		/* pg_version */
	const char *role;			/* pg_role */
	const char *database;		/* pg_database */
} WriteCondition;

/* Append ,"name":{"S":value} for a string value. */
static void
AppendStringValue(StringInfo buf, const char *name, const char *value)
{
	appendStringInfo(buf, ",\"%s\":{\"S\":", name);
	escape_json(buf, value);
	appendStringInfoChar(buf, '}');
}

/*
 * Close an Item, append the write condition cond with its names and
 * values, and close the body: the one builder of every conditional write.
 */
static void
AppendWriteCondition(StringInfo buf, const WriteCondition *cond, TimestampTz now)
{
	appendStringInfo(buf, "},\"ConditionExpression\":\"%s\"", cond->expression);
	appendStringInfoString(buf, ",\"ExpressionAttributeNames\":{\"#id\":\"id\","
						   "\"#expiration\":\"expiration\",\"#status\":\"status\","
						   "\"#in_progress_expiration\":\"in_progress_expiration\"");
	if (cond->claim != NULL)
		appendStringInfoString(buf, ",\"#pg_claim\":\"pg_claim\"");
	if (cond->token != NULL)
		appendStringInfoString(buf, ",\"#pg_token\":\"pg_token\"");
	if (cond->version != NULL)
		appendStringInfoString(buf, ",\"#pg_version\":\"pg_version\"");
	if (cond->role != NULL)
		appendStringInfoString(buf, ",\"#pg_role\":\"pg_role\"");
	if (cond->database != NULL)
		appendStringInfoString(buf, ",\"#pg_database\":\"pg_database\"");
	appendStringInfo(buf, "},\"ExpressionAttributeValues\":{\":now\":{\"N\":\"" INT64_FORMAT "\"},"
					 "\":now_ms\":{\"N\":\"" INT64_FORMAT "\"},"
					 "\":inprogress\":{\"S\":\"INPROGRESS\"}",
					 UnixEpoch(now, 1), UnixEpoch(now, 1000));
	if (cond->token != NULL)
		appendStringInfo(buf, ",\":pg_token\":{\"N\":\"" INT64_FORMAT "\"}", *cond->token);
	if (cond->version != NULL)
		appendStringInfo(buf, ",\":pg_version\":{\"N\":\"" INT64_FORMAT "\"}", *cond->version);
	if (cond->claim != NULL)
		AppendStringValue(buf, ":pg_claim", cond->claim);
	if (cond->role != NULL)
		AppendStringValue(buf, ":pg_role", cond->role);
	if (cond->database != NULL)
		AppendStringValue(buf, ":pg_database", cond->database);
	appendStringInfoString(buf, "}}");
}

/*
 * Build the body of the conditional PutItem that writes an outcome: the
 * item may only be written where Powertools could claim the id itself.
 */
char *
IdemSyncPutItemBody(const char *table, const char *id, Jsonb *outcome,
					TimestampTz expires_at, const char *role,
					const char *database, TimestampTz now)
{
	StringInfoData buf;
	WriteCondition cond = {.expression = CLAIM_CONDITION};

	initStringInfo(&buf);
	AppendItemStart(&buf, table, id, "COMPLETED", outcome, expires_at, role,
					database);
	AppendWriteCondition(&buf, &cond, now);
	return buf.data;
}

/* Append the pg_claim attribute of an item. */
static void
AppendClaimAttribute(StringInfo buf, const char *claim)
{
	appendStringInfoString(buf, ",\"pg_claim\":{\"S\":");
	escape_json(buf, claim);
	appendStringInfoChar(buf, '}');
}

/*
 * Build the body of the conditional PutItem with which arbiter mode claims
 * a key before its call runs: an INPROGRESS item, written only where
 * Powertools itself could claim, holding the claim until
 * in_progress_expiration; or, if replaces is not NULL, also over the item
 * of that dead claim.  token is the fencing token of idem.claim, NULL for
 * idempotent_call; a leased key's claim is version 0 of its states.
 */
char *
IdemSyncPutClaimItemBody(const char *table, const char *id, const char *claim,
						 const char *replaces, const int64 *token,
						 TimestampTz in_progress_expiration,
						 TimestampTz expires_at, const char *role,
						 const char *database, TimestampTz now)
{
	StringInfoData buf;
	WriteCondition cond = {.expression = CLAIM_CONDITION};

	initStringInfo(&buf);
	AppendItemStart(&buf, table, id, "INPROGRESS", NULL, expires_at, role,
					database);
	AppendStateAttributes(&buf, &in_progress_expiration, token, 0);
	AppendClaimAttribute(&buf, claim);
	if (replaces != NULL)
	{
		cond.expression = ARBITER_CONDITION;
		cond.claim = replaces;
	}
	AppendWriteCondition(&buf, &cond, now);
	return buf.data;
}

/*
 * Build the body of the conditional PutItem that the sync worker sends for
 * a state of an arbiter claim: the outcome of idempotent_call (lease NULL),
 * or a state of a leased key, each replacing only what ARBITER_CONDITION or
 * ARBITER_LEASE_CONDITION allows.
 */
char *
IdemSyncPutArbiterItemBody(const char *table, const char *id, const char *claim,
						   const IdemSyncLease *lease, Jsonb *outcome,
						   TimestampTz expires_at, const char *role,
						   const char *database, TimestampTz now)
{
	StringInfoData buf;
	bool		in_progress = lease != NULL && lease->in_progress;
	WriteCondition cond = {0};

	Assert(in_progress == (outcome == NULL));
	initStringInfo(&buf);
	AppendItemStart(&buf, table, id, in_progress ? "INPROGRESS" : "COMPLETED",
					outcome, expires_at, role, database);
	AppendStateAttributes(&buf, in_progress ? &lease->in_progress_expiration : NULL,
						  lease ? &lease->token : NULL, lease ? lease->version : 0);
	AppendClaimAttribute(&buf, claim);
	cond.expression = lease ? ARBITER_LEASE_CONDITION : ARBITER_CONDITION;
	cond.claim = claim;
	cond.version = lease ? &lease->version : NULL;
	AppendWriteCondition(&buf, &cond, now);
	return buf.data;
}

/* Build the body of a DeleteItem that removes an item only while claim holds it. */
char *
IdemSyncDeleteClaimBody(const char *table, const char *id, const char *claim)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"TableName\":");
	escape_json(&buf, table);
	appendStringInfoString(&buf, ",\"Key\":{\"id\":{\"S\":");
	escape_json(&buf, id);
	appendStringInfoString(&buf, "}},\"ConditionExpression\":\"#pg_claim = :pg_claim\","
						   "\"ExpressionAttributeNames\":{\"#pg_claim\":\"pg_claim\"},"
						   "\"ExpressionAttributeValues\":{\":pg_claim\":{\"S\":");
	escape_json(&buf, claim);
	appendStringInfoString(&buf, "}}}");
	return buf.data;
}

/*
 * Build the body of the conditional PutItem that writes one state of a
 * leased key: INPROGRESS until lease->in_progress_expiration, or COMPLETED
 * with outcome.  The item carries the token and version of the state, and
 * replaces only an item Powertools could claim or an older state of the
 * same record (LEASE_CONDITION).
 */
char *
IdemSyncPutLeaseItemBody(const char *table, const char *id,
						 const IdemSyncLease *lease, Jsonb *outcome,
						 TimestampTz expires_at, const char *role,
						 const char *database, TimestampTz now)
{
	StringInfoData buf;
	WriteCondition cond = {0};

	Assert(lease->in_progress == (outcome == NULL));
	initStringInfo(&buf);
	AppendItemStart(&buf, table, id,
					lease->in_progress ? "INPROGRESS" : "COMPLETED",
					outcome, expires_at, role, database);
	AppendStateAttributes(&buf, lease->in_progress ? &lease->in_progress_expiration : NULL,
						  &lease->token, lease->version);
	cond.expression = LEASE_CONDITION;
	cond.token = &lease->token;
	cond.version = &lease->version;
	cond.role = role;
	cond.database = database;
	AppendWriteCondition(&buf, &cond, now);
	return buf.data;
}

/* Build the body of a strongly consistent GetItem of one id. */
char *
IdemSyncGetItemBody(const char *table, const char *id)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"TableName\":");
	escape_json(&buf, table);
	appendStringInfoString(&buf, ",\"Key\":{\"id\":{\"S\":");
	escape_json(&buf, id);
	appendStringInfoString(&buf, "}},\"ConsistentRead\":true}");
	return buf.data;
}

/* Return the only key and value of a one-key AttributeValue object. */
static bool
AttributeValueParts(JsonbContainer *av, char **type, JsonbValue *value)
{
	JsonbIterator *it;
	JsonbValue	v;
	int			nkeys = 0;

	if (!JsonContainerIsObject(av))
		return false;
	it = JsonbIteratorInit(av);
	if (JsonbIteratorNext(&it, &v, true) != WJB_BEGIN_OBJECT)
		return false;
	while (true)
	{
		JsonbIteratorToken tok = JsonbIteratorNext(&it, &v, true);

		if (tok == WJB_END_OBJECT || tok == WJB_DONE)
			break;
		if (tok == WJB_KEY)
		{
			nkeys++;
			*type = pnstrdup(v.val.string.val, v.val.string.len);
		}
		else if (tok == WJB_VALUE)
			*value = v;
	}
	return nkeys == 1;
}

/*
 * Append the plain JSON form of a DynamoDB AttributeValue; false if it holds
 * something an outcome cannot contain (sets, binary).
 */
static bool
AppendPlainJson(StringInfo buf, JsonbContainer *av)
{
	char	   *type;
	JsonbValue	v;

	if (!AttributeValueParts(av, &type, &v))
		return false;

	if (strcmp(type, "S") == 0 && v.type == jbvString)
	{
		char	   *s = pnstrdup(v.val.string.val, v.val.string.len);

		escape_json(buf, s);
	}
	else if (strcmp(type, "N") == 0 && v.type == jbvString)
	{
		char	   *s = pnstrdup(v.val.string.val, v.val.string.len);
		Datum		num;

		/* Normalize through numeric so that 1.0 and 1 read the same. */
		num = DirectFunctionCall3(numeric_in, CStringGetDatum(s),
								  ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
		appendStringInfoString(buf, DatumGetCString(DirectFunctionCall1(numeric_out, num)));
	}
	else if (strcmp(type, "BOOL") == 0 && v.type == jbvBool)
		appendStringInfoString(buf, v.val.boolean ? "true" : "false");
	else if (strcmp(type, "NULL") == 0)
		appendStringInfoString(buf, "null");
	else if (strcmp(type, "M") == 0 && v.type == jbvBinary &&
			 JsonContainerIsObject(v.val.binary.data))
	{
		JsonbIterator *it = JsonbIteratorInit(v.val.binary.data);
		JsonbValue	e;
		JsonbIteratorToken tok;
		bool		first = true;

		appendStringInfoChar(buf, '{');
		while ((tok = JsonbIteratorNext(&it, &e, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
			{
				char	   *k = pnstrdup(e.val.string.val, e.val.string.len);

				if (!first)
					appendStringInfoChar(buf, ',');
				first = false;
				escape_json(buf, k);
				appendStringInfoChar(buf, ':');
			}
			else if (tok == WJB_VALUE)
			{
				if (e.type != jbvBinary || !AppendPlainJson(buf, e.val.binary.data))
					return false;
			}
		}
		appendStringInfoChar(buf, '}');
	}
	else if (strcmp(type, "L") == 0 && v.type == jbvBinary &&
			 JsonContainerIsArray(v.val.binary.data))
	{
		JsonbIterator *it = JsonbIteratorInit(v.val.binary.data);
		JsonbValue	e;
		JsonbIteratorToken tok;
		bool		first = true;

		appendStringInfoChar(buf, '[');
		while ((tok = JsonbIteratorNext(&it, &e, true)) != WJB_DONE)
		{
			if (tok == WJB_ELEM)
			{
				if (!first)
					appendStringInfoChar(buf, ',');
				first = false;
				if (e.type != jbvBinary || !AppendPlainJson(buf, e.val.binary.data))
					return false;
			}
		}
		appendStringInfoChar(buf, ']');
	}
	else
		return false;
	return true;
}

/* The text of an S attribute of an item, or NULL. */
static char *
ItemString(JsonbContainer *item, const char *name)
{
	JsonbValue *av = getKeyJsonValueFromContainer(item, name, strlen(name), NULL);
	char	   *type;
	JsonbValue	v;

	if (av != NULL && av->type == jbvBinary &&
		AttributeValueParts(av->val.binary.data, &type, &v) &&
		strcmp(type, "S") == 0 && v.type == jbvString)
		return pnstrdup(v.val.string.val, v.val.string.len);
	return NULL;
}

/* Read an N attribute of an item holding an int8 into *result. */
static bool
ItemInt64(JsonbContainer *item, const char *name, int64 *result)
{
	JsonbValue *av = getKeyJsonValueFromContainer(item, name, strlen(name), NULL);
	char	   *type;
	JsonbValue	v;
	char	   *s;
	char	   *end;

	if (av == NULL || av->type != jbvBinary ||
		!AttributeValueParts(av->val.binary.data, &type, &v) ||
		strcmp(type, "N") != 0 || v.type != jbvString)
		return false;
	s = pnstrdup(v.val.string.val, v.val.string.len);
	/* strtoll, not strtoi64: that one is new in PostgreSQL 15. */
	errno = 0;
	*result = (int64) strtoll(s, &end, 10);
	return errno == 0 && end != s && *end == '\0';
}

/*
 * Read the item of a GetItem answer: whether there was one, its status,
 * its data as jsonb (NULL when missing or not representable as JSON), and
 * the marks of a leased key written by PostgreSQL.  A broken answer reads
 * as no item rather than raising an error.
 */
void
IdemSyncReadItem(const char *response, IdemSyncRemote *remote)
{
	JsonLexContext *lex;
	Jsonb	   *doc;
	JsonbValue *item;
	JsonbValue *data;
	StringInfoData buf;
	char	   *copy = pstrdup(response);
	int64		epoch;

	memset(remote, 0, sizeof(IdemSyncRemote));

	/* Check the syntax first: a broken answer must not raise an error. */
	lex = IdemJsonLexer(copy, strlen(copy));
	if (pg_parse_json(lex, &nullSemAction) != JSON_SUCCESS)
		return;

	doc = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(copy)));
	if (!JB_ROOT_IS_OBJECT(doc))
		return;
	item = getKeyJsonValueFromContainer(&doc->root, "Item", 4, NULL);
	if (item == NULL || item->type != jbvBinary ||
		!JsonContainerIsObject(item->val.binary.data))
		return;
	remote->found = true;
	remote->status = ItemString(item->val.binary.data, "status");
	remote->pg_role = ItemString(item->val.binary.data, "pg_role");
	remote->pg_database = ItemString(item->val.binary.data, "pg_database");
	remote->pg_claim = ItemString(item->val.binary.data, "pg_claim");
	if (ItemInt64(item->val.binary.data, "expiration", &epoch) &&
		epoch > 0 && epoch < INT64CONST(100000000000))
		remote->expiration = (epoch - (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY) *
			USECS_PER_SEC;
	remote->leased = ItemInt64(item->val.binary.data, "pg_token", &remote->pg_token) &&
		ItemInt64(item->val.binary.data, "pg_version", &remote->pg_version);

	data = getKeyJsonValueFromContainer(item->val.binary.data, "data", 4, NULL);
	if (data == NULL || data->type != jbvBinary)
		return;
	remote->has_data = true;
	initStringInfo(&buf);
	if (AppendPlainJson(&buf, data->val.binary.data))
		remote->data = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
														  CStringGetDatum(buf.data)));
}

/* SQL: the Powertools id of a key under a prefix. */
Datum
idem_sync_item_id(PG_FUNCTION_ARGS)
{
	char	   *prefix = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *key = text_to_cstring(PG_GETARG_TEXT_PP(1));

	PG_RETURN_TEXT_P(cstring_to_text(IdemSyncItemId(prefix, key)));
}

/* SQL: the PutItem request the worker would send for an outcome, as jsonb. */
Datum
idem_sync_put_item_request(PG_FUNCTION_ARGS)
{
	char	   *prefix = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Jsonb	   *outcome = PG_GETARG_JSONB_P(2);
	TimestampTz expires_at = PG_GETARG_TIMESTAMPTZ(3);
	char	   *body;
	char	   *dbname = get_database_name(MyDatabaseId);

	body = IdemSyncPutItemBody(IdemSyncEnabled() ? idem_dynamodb_table : "unset",
							   IdemSyncItemId(prefix, key), outcome, expires_at,
							   GetUserNameFromId(GetUserId(), false),
							   dbname ? dbname : "", GetCurrentTimestamp());
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(body)));
}
