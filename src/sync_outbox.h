/*-------------------------------------------------------------------------
 *
 * sync_outbox.h
 *		idem.sync_outbox, the queue of outcomes to deliver to DynamoDB.
 *
 * The core queues outcomes with IdemOutboxRecord(); the sync worker reads
 * due rows and writes back what became of them with the other functions,
 * which run inside the caller's transaction and SPI connection.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_SYNC_OUTBOX_H
#define IDEM_SYNC_OUTBOX_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/jsonb.h"

/* A pending outbox row that is due for delivery. */
typedef struct IdemOutboxRow
{
	int64		id;
	int			attempts;
	char	   *key_prefix;
	char	   *key;
	Jsonb	   *outcome;
	TimestampTz expires_at;
	char	   *role;			/* name of the row's owner */
} IdemOutboxRow;

/* What became of a delivery. */
typedef enum IdemOutboxVerdictKind
{
	IDEM_OUTBOX_DELIVERED,		/* the item holds the outcome */
	IDEM_OUTBOX_RETRY,			/* a transient failure: try again later */
	IDEM_OUTBOX_FAILED,			/* a permanent failure */
	IDEM_OUTBOX_CONFLICT		/* the item holds another outcome */
} IdemOutboxVerdictKind;

/* A verdict on one row, to be written to the outbox. */
typedef struct IdemOutboxVerdict
{
	int64		id;
	IdemOutboxVerdictKind kind;
	char	   *error;			/* NULL: none */
	Jsonb	   *remote;			/* the item's outcome, or NULL */
	double		retry_delay_ms; /* IDEM_OUTBOX_RETRY: pause before the next */
} IdemOutboxVerdict;

extern void IdemOutboxRecord(Oid owner, text *key, Jsonb *outcome,
							 TimestampTz expires_at);
extern bool IdemOutboxExists(void);
extern int	IdemOutboxFetchDue(const int64 *skip, int nskip, int limit,
							   IdemOutboxRow **rows);
extern TimestampTz IdemOutboxNextDue(const int64 *skip, int nskip);
extern void IdemOutboxRecordVerdicts(const IdemOutboxVerdict *verdicts,
									 int nverdicts);

#endif							/* IDEM_SYNC_OUTBOX_H */
