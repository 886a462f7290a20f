/*-------------------------------------------------------------------------
 *
 * stats.h
 *		Counters of what idem does, per (database, role, target), for the
 *		view idem.stats, and the LOG lines of idem.log_events.
 *
 * A SQL entry point opens a call frame (IdemStatsBeginCall), the code it
 * reaches counts events into that frame where they happen
 * (IdemStatsCount, IdemStatsWaitBegin/End, IdemStatsRoundTripBegin/End),
 * and the frame is added to shared memory once, when the entry point
 * returns (IdemStatsEndCall) or its (sub)transaction aborts.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_STATS_H
#define IDEM_STATS_H

#include "fmgr.h"

/* What a call frame counts for: idempotent_call of fn, or the lease API. */
typedef enum IdemStatsTarget
{
	IDEM_TARGET_CALL,			/* idem.idempotent_call */
	IDEM_TARGET_CLAIM,			/* idem.claim: counts a call */
	IDEM_TARGET_HOLDER			/* complete, checkpoint, extend, release */
} IdemStatsTarget;

/* The events counted by IdemStatsCount. */
typedef enum IdemStatsEvent
{
	IDEM_STAT_REPLAY,			/* a recorded outcome returned */
	IDEM_STAT_EXECUTION,		/* fn runs / an outcome is completed: an
								 * execution at commit, an error at abort */
	IDEM_STAT_TIMEOUT,			/* IK409 */
	IDEM_STAT_MISMATCH,			/* IK422 */
	IDEM_STAT_STALE_TOKEN,		/* IK412 */
	IDEM_STAT_TAKEOVER,			/* a claim of a lapsed lease */
	IDEM_STAT_RESUMPTION,		/* a claim handed a recovery point */
	IDEM_STAT_RELEASE,			/* idem.release */
	IDEM_STAT_DYNAMODB_CLAIM,	/* arbiter mode: a PutItem claim won */
	IDEM_STAT_DYNAMODB_REPLAY,	/* arbiter mode: another party's item */
	IDEM_STAT_DYNAMODB_FAILURE, /* arbiter mode: IK503 */
	IDEM_STAT_NEVENTS
} IdemStatsEvent;

extern void IdemStatsInit(void);
extern void IdemStatsBeginCall(IdemStatsTarget target, Oid fn, text *key);
extern void IdemStatsEndCall(void);
extern void IdemStatsCount(IdemStatsEvent event);
extern void IdemStatsWaitBegin(void);
extern void IdemStatsWaitEnd(void);
extern void IdemStatsRoundTripBegin(void);
extern void IdemStatsRoundTripEnd(void);

#endif							/* IDEM_STATS_H */
