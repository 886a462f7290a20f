/*-------------------------------------------------------------------------
 *
 * sync.h
 *		The interface between idem's core and its DynamoDB sync.
 *
 * The core calls SyncInit() at the end of _PG_init() and
 * SyncRecordOutcome() after it writes the record of a first execution.
 * Everything else about the sync (outbox, background worker, HTTP client,
 * item format) stays behind these two functions.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_SYNC_H
#define IDEM_SYNC_H

#include "postgres.h"

#include "utils/jsonb.h"
#include "utils/timestamp.h"

extern void SyncInit(void);
extern void SyncRecordOutcome(Oid owner, text *key, Jsonb *outcome,
							  TimestampTz expires_at);

#endif							/* IDEM_SYNC_H */
