/*-------------------------------------------------------------------------
 *
 * callsite.h
 *		Resolve, check and invoke the function that idempotent_call runs.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_CALLSITE_H
#define IDEM_CALLSITE_H

#include "postgres.h"

#include "fmgr.h"
#include "utils/jsonb.h"

/*
 * A resolved call of fn: everything idempotent_call needs to check the
 * arguments, fingerprint the request, invoke fn and turn its result into
 * jsonb.  Lives in fn_extra of the idempotent_call call site, so it is built
 * once per call site and query execution.
 */
typedef struct IdemCallSite IdemCallSite;

extern IdemCallSite *IdemGetCallSite(FunctionCallInfo fcinfo, Oid fnoid);
extern void IdemReadArguments(IdemCallSite *site, FunctionCallInfo fcinfo,
							  Datum *values, bool *nulls);
extern uint64 IdemRequestFingerprint(IdemCallSite *site, Datum *values,
									 bool *nulls);
extern Jsonb *IdemInvokeFunction(IdemCallSite *site, Datum *values, bool *nulls,
								 Oid collation, Oid owner, text *key);

#endif							/* IDEM_CALLSITE_H */
