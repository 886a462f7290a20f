/*-------------------------------------------------------------------------
 *
 * sync_outbox.h
 *		idem.sync_outbox, the queue of outcomes to deliver to DynamoDB.
 *
 * The core queues outcomes with IdemOutboxRecord(), and the states of
 * leased keys with IdemOutboxRecordLease(); the sync worker reads
 * due rows and writes back what became of them with the other functions,
 * which run inside the caller's transaction and SPI connection.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_SYNC_OUTBOX_H
#define IDEM_SYNC_OUTBOX_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/jsonb.h"

/*
 * The largest outcome the sync takes, as JSON text: a DynamoDB item holds
 * at most 400 KB, and the item needs room for its other attributes.
 */
#define IDEM_SYNC_MAX_OUTCOME_BYTES	(400 * 1000)

/*
 * A pending outbox row that is due for delivery.  Rows of idempotent_call
 * carry an outcome and no token; rows of idem.claim and its friends carry
 * their fencing token, and either an outcome (COMPLETED) or the lease's end
 * (INPROGRESS).
 */
typedef struct IdemOutboxRow
{
	int64		id;
	int			attempts;
	char	   *key_prefix;
	char	   *key;
	Jsonb	   *outcome;		/* NULL when in_progress */
	TimestampTz expires_at;
	char	   *role;			/* name of the row's owner */
	bool		leased;			/* a lease row: token is set */
	int64		token;
	bool		in_progress;	/* status INPROGRESS rather than COMPLETED */
	TimestampTz in_progress_expiration; /* in_progress: the lease's end */
	char	   *arbiter_claim;	/* arbiter mode: the claim; else NULL */
} IdemOutboxRow;

/* What became of a delivery. */
typedef enum IdemOutboxVerdictKind
{
	IDEM_OUTBOX_DELIVERED,		/* the item holds the outcome (or, for a
								 * lease row, a newer state of the key) */
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
							 TimestampTz expires_at, const char *arbiter_claim);
extern void IdemOutboxRecordLease(Oid owner, text *key, int64 token,
								  Jsonb *outcome, TimestampTz lease_expires_at,
								  TimestampTz expires_at,
								  const char *arbiter_claim);
extern void IdemOutboxCheckOutcome(text *key, Jsonb *outcome);
extern bool IdemOutboxExists(void);
extern bool IdemOutboxAllDelivered(void);
extern int	IdemOutboxFetchDue(const int64 *skip, int nskip, int limit,
							   IdemOutboxRow **rows);
extern TimestampTz IdemOutboxNextDue(const int64 *skip, int nskip);
extern void IdemOutboxRecordVerdicts(const IdemOutboxVerdict *verdicts,
									 int nverdicts);

#endif							/* IDEM_SYNC_OUTBOX_H */
