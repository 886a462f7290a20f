/*-------------------------------------------------------------------------
 *
 * arbiter.h
 *		Arbiter mode: first calls claim their key in DynamoDB, so that the
 *		PostgreSQL clusters and Powertools Lambda handlers sharing a table
 *		run each key once between them.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_ARBITER_H
#define IDEM_ARBITER_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/jsonb.h"

/* Values of idem.arbiter */
typedef enum IdemArbiterMode
{
	IDEM_ARBITER_LOCAL,			/* the key table alone decides */
	IDEM_ARBITER_DYNAMODB		/* a conditional PutItem decides */
} IdemArbiterMode;

extern int	idem_arbiter;

/* What DynamoDB decided for a key. */
typedef struct IdemArbiterClaim
{
	bool		replay;			/* another party recorded an outcome */
	char	   *claim;			/* !replay: our claim, for the outbox row */
	Jsonb	   *outcome;		/* replay: that outcome */
	TimestampTz expires_at;		/* replay: when the item expires; 0 unknown */
	TimestampTz lease_end;		/* !replay: when our claim's lease ends */
} IdemArbiterClaim;

extern void IdemArbiterInit(void);
extern void IdemArbiterClaimKey(Oid owner, text *key, const int64 *token,
								int64 lease_usecs, TimestampTz expires_at,
								int wait_timeout_ms, IdemArbiterClaim *result);
extern char *IdemArbiterLeaseClaim(int64 token);

#endif							/* IDEM_ARBITER_H */
