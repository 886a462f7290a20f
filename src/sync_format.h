/*-------------------------------------------------------------------------
 *
 * sync_format.h
 *		The DynamoDB form of idem's outcomes: Powertools item ids, request
 *		bodies, and reading an item back.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_SYNC_FORMAT_H
#define IDEM_SYNC_FORMAT_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/jsonb.h"

extern char *IdemSyncItemId(const char *prefix, const char *key);
extern char *IdemSyncPutItemBody(const char *table, const char *id,
								 Jsonb *outcome, TimestampTz expires_at,
								 const char *role, const char *database,
								 TimestampTz now);
extern char *IdemSyncGetItemBody(const char *table, const char *id);
extern Jsonb *IdemSyncRemoteData(const char *response, bool *found,
								 char **status);

#endif							/* IDEM_SYNC_FORMAT_H */
