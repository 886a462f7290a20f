/*-------------------------------------------------------------------------
 *
 * lease.h
 *		Claims with a lease, for work done outside the database.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_LEASE_H
#define IDEM_LEASE_H

#include "postgres.h"

#include "utils/jsonb.h"
#include "utils/timestamp.h"

/* The longest lease a claim or an extend may ask for. */
#define IDEM_MAX_LEASE_USECS	(24 * USECS_PER_HOUR)

/* The core settings the lease functions follow. */
typedef struct IdemLeaseSettings
{
	int			ttl_s;			/* idem.ttl */
	int			wait_timeout_ms;	/* idem.wait_timeout */
} IdemLeaseSettings;

/* What idem.claim returns. */
typedef struct IdemClaim
{
	bool		replay;			/* true: outcome is recorded, nothing to do */
	int64		token;			/* run: the fencing token of this holder */
	Jsonb	   *outcome;		/* replay */
	text	   *recovery_point; /* run: an earlier holder's checkpoint, or NULL */
	Jsonb	   *recovery_data;
} IdemClaim;

extern int64 IdemLeaseUsecs(Interval *lease, text *key);
extern void IdemLeaseRequireToken(bool isnull, text *key);
extern void IdemLeaseClaim(Oid owner, text *key, Jsonb *request, int64 lease_usecs,
						   const IdemLeaseSettings *settings, IdemClaim *claim);
extern void IdemLeaseComplete(Oid owner, text *key, int64 token, Jsonb *outcome,
							  const IdemLeaseSettings *settings);
extern void IdemLeaseCheckpoint(Oid owner, text *key, int64 token, text *point,
								Jsonb *data, const IdemLeaseSettings *settings);
extern TimestampTz IdemLeaseExtend(Oid owner, text *key, int64 token,
								   int64 lease_usecs,
								   const IdemLeaseSettings *settings);
extern void IdemLeaseRelease(Oid owner, text *key, int64 token,
							 const IdemLeaseSettings *settings);

#endif							/* IDEM_LEASE_H */
