/*-------------------------------------------------------------------------
 *
 * callsite.c
 *		Resolve, check and invoke the function that idempotent_call runs.
 *
 * What idempotent_call needs to know about fn (its kind, parameter types,
 * how to fingerprint each argument, how to turn its result into jsonb) comes
 * from the catalogs once per backend and function, in FnInfo entries that a
 * pg_proc or pg_type change invalidates; an FnInfo also holds fn's resolved
 * FmgrInfo.  Each call site of idempotent_call keeps an IdemCallSite in
 * fn_extra with its own copies of these, so a statement that calls
 * idempotent_call many times resolves fn once, and each execution of a
 * prepared statement costs one hash lookup and a copy of a few hundred
 * bytes, no catalog lookup beyond the EXECUTE check.
 *
 * Drivers send bind parameters without a type; PostgreSQL cannot pass such
 * a parameter as "any", so idem 1.1 adds an overload taking VARIADIC
 * idem.untyped[], a string-category type that function resolution prefers
 * for arguments of unknown type and that no typed value converts to.  Its
 * elements are read like untyped literals.
 *
 * Invoking fn also marks its (role, key) as running in this backend, so
 * that a nested call on the same key from inside fn is an error instead of
 * a second execution or a self-deadlock.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_coerce.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "callsite.h"
#include "errcodes.h"
#include "fingerprint.h"
#include "key.h"

/* How fn's result becomes the outcome. */
typedef enum ResultForm
{
	RESULT_JSONB,				/* already jsonb */
	RESULT_VOID,				/* JSON null */
	RESULT_VIA_JSONB			/* to_jsonb(result) */
} ResultForm;

/* Catalog facts about one parameter of fn. */
typedef struct FnParam
{
	Oid			type;
	IdemArgType fingerprint;	/* how its values enter the fingerprint */
	Oid			input_proc;		/* reads an untyped literal */
	Oid			input_ioparam;
} FnParam;

/* Catalog facts about fn apart from its parameters. */
typedef struct FnSummary
{
	bool		strict;
	ResultForm	result;
	Oid			rettype;
	uint8		signature_digest[PG_SHA256_DIGEST_LENGTH];	/* of the qualified signature */
	int			nargs;
} FnSummary;

/* Catalog facts about fn, cached per backend. */
typedef struct FnInfo
{
	Oid			fnoid;			/* hash key */
	FnSummary	fn;
	FmgrInfo	flinfo;			/* resolved once, never called: call sites copy it */
	FnParam		params[FUNC_MAX_ARGS];
} FnInfo;

/* One parameter at one call site. */
typedef struct CallArg
{
	FnParam		param;
	bool		literal;		/* passed as an untyped literal */
	FmgrInfo	input;			/* literal */
	FmgrInfo	to_jsonb;		/* IDEM_ARG_VIA_JSONB */
} CallArg;

/*
 * Everything here is copied out of the FnInfo, since an invalidation may
 * free FnInfo entries while a call is running.
 */
struct IdemCallSite
{
	Oid			fnoid;			/* InvalidOid until set up */
	MemoryContext switch_cxt;	/* made once the site switches to another fn */
	Oid			checked_role;	/* role whose EXECUTE right was checked */
	FnSummary	fn;
	FmgrInfo	flinfo;			/* calls fn */
	FmgrInfo	result_to_jsonb;	/* RESULT_VIA_JSONB */
	bool		untyped;		/* arguments come as VARIADIC idem.untyped[] */
	int			room;			/* length of args */
	CallArg		args[FLEXIBLE_ARRAY_MEMBER];
};

/* A key whose function is running in this backend, linked innermost first. */
typedef struct RunningKey
{
	Oid			owner;
	text	   *key;
	struct RunningKey *outer;
} RunningKey;

static HTAB *fn_infos = NULL;
static RunningKey *running_keys = NULL;

/*
 * Forget every cached FnInfo after a pg_proc or pg_type change, so that
 * entries of dropped functions do not pile up.
 */
static void
InvalidateFnInfos(Datum arg, int cacheid, uint32 hashvalue)
{
	HASH_SEQ_STATUS status;
	FnInfo	   *info;

	if (fn_infos == NULL)
		return;
	hash_seq_init(&status, fn_infos);
	while ((info = hash_seq_search(&status)) != NULL)
		(void) hash_search(fn_infos, &info->fnoid, HASH_REMOVE, NULL);
}

/* Describe fn for an error message. */
static char *
FnName(Oid fnoid)
{
	return format_procedure(fnoid);
}

/* Refuse a type that idempotent_call cannot pass or return. */
static void
CheckUsableType(Oid fnoid, Oid type, bool is_result)
{
	if (IsPolymorphicType(type) ||
		(get_typtype(type) == TYPTYPE_PSEUDO &&
		 !(is_result && (type == VOIDOID || type == RECORDOID))))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("idem.idempotent_call cannot run function %s", FnName(fnoid)),
				 errdetail(is_result ? "Its result type %s is a pseudo-type or polymorphic." :
						   "Its parameter type %s is a pseudo-type or polymorphic.",
						   format_type_be(type)),
				 errhint("Wrap it in a function with concrete parameter and result types.")));
}

/* Fill an FnInfo from the catalogs, refusing functions that cannot be run. */
static void
BuildFnInfo(FnInfo *info, Oid fnoid)
{
	HeapTuple	proctup;
	Form_pg_proc proc;
	char	   *signature;

	proctup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fnoid));
	if (!HeapTupleIsValid(proctup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", fnoid),
				 errhint("Name the function with its argument types, for example 'shop.place_order(jsonb)'.")));
	proc = (Form_pg_proc) GETSTRUCT(proctup);

	if (proc->prokind != PROKIND_FUNCTION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("idem.idempotent_call cannot run %s %s",
						proc->prokind == PROKIND_AGGREGATE ? "aggregate function" :
						proc->prokind == PROKIND_WINDOW ? "window function" : "procedure",
						FnName(fnoid)),
				 errdetail("Only plain functions can be run once per idempotency key."),
				 errhint("Wrap the work in a plain function and pass that.")));
	if (proc->proretset)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("idem.idempotent_call cannot run set-returning function %s",
						FnName(fnoid)),
				 errdetail("An idempotent call records one outcome per key."),
				 errhint("Wrap it in a function that aggregates the rows, for example with jsonb_agg.")));

	info->fnoid = fnoid;
	info->fn.strict = proc->proisstrict;
	info->fn.rettype = proc->prorettype;
	info->fn.nargs = proc->pronargs;
	CheckUsableType(fnoid, info->fn.rettype, true);
	if (info->fn.rettype == JSONBOID)
		info->fn.result = RESULT_JSONB;
	else if (info->fn.rettype == VOIDOID)
		info->fn.result = RESULT_VOID;
	else
		info->fn.result = RESULT_VIA_JSONB;

	for (int i = 0; i < info->fn.nargs; i++)
	{
		FnParam    *param = &info->params[i];

		param->type = proc->proargtypes.values[i];
		CheckUsableType(fnoid, param->type, false);
		getTypeInputInfo(param->type, &param->input_proc, &param->input_ioparam);
		IdemArgTypeOf(param->type, &param->fingerprint);
	}
	ReleaseSysCache(proctup);

	/* The qualified signature survives dump and restore; the OID does not. */
	signature = format_procedure_qualified(fnoid);
	IdemDigestSignature(signature, info->fn.signature_digest);
	pfree(signature);

	fmgr_info_cxt(fnoid, &info->flinfo, TopMemoryContext);
}

/* Return the cached FnInfo of fnoid, building it if needed. */
static FnInfo *
LookupFnInfo(Oid fnoid)
{
	FnInfo	   *info;
	bool		found;

	if (fn_infos == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(FnInfo);
		fn_infos = hash_create("idem function cache", 64, &ctl,
							   HASH_ELEM | HASH_BLOBS);
		CacheRegisterSyscacheCallback(PROCOID, InvalidateFnInfos, (Datum) 0);
		CacheRegisterSyscacheCallback(TYPEOID, InvalidateFnInfos, (Datum) 0);
	}

	info = hash_search(fn_infos, &fnoid, HASH_FIND, NULL);
	if (info == NULL)
	{
		FnInfo		built;

		/* only functions that can be run are cached: bad OIDs add nothing */
		BuildFnInfo(&built, fnoid);
		info = hash_search(fn_infos, &fnoid, HASH_ENTER, &found);
		*info = built;
	}
	return info;
}

/* Prepare an FmgrInfo that calls to_jsonb on a value of the given type. */
static void
InitToJsonb(FmgrInfo *finfo, Oid type, MemoryContext mcxt)
{
	MemoryContext oldcontext;

	fmgr_info_cxt(F_TO_JSONB, finfo, mcxt);
	/* to_jsonb learns its argument's type from the call expression */
	oldcontext = MemoryContextSwitchTo(mcxt);
	finfo->fn_expr = (Node *) makeFuncExpr(F_TO_JSONB, JSONBOID,
										   list_make1(makeNullConst(type, -1, InvalidOid)),
										   InvalidOid, InvalidOid,
										   COERCE_EXPLICIT_CALL);
	MemoryContextSwitchTo(oldcontext);
}

/*
 * Whether a VARIADIC array type is idem.untyped[], the arguments of the
 * overload that PostgreSQL picks when every argument is of unknown type
 * (literals, and the bind parameters that drivers send without a type).
 * The type is found by name in idem's schema, which a database still at
 * idem 1.0 does not have.
 */
static bool
IsUntypedArray(Oid arraytype)
{
	Oid			nspid = get_namespace_oid("idem", true);
	Oid			untyped;

	if (!OidIsValid(nspid))
		return false;
	untyped = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid,
							  CStringGetDatum("untyped"), ObjectIdGetDatum(nspid));
	return OidIsValid(untyped) && get_element_type(arraytype) == untyped;
}

/* The VARIADIC idem.untyped[] array of this call, which may not be null. */
static ArrayType *
UntypedArray(FunctionCallInfo fcinfo)
{
	/* only an explicit VARIADIC NULL gets here with a null array */
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("the VARIADIC array of idem.idempotent_call must not be null"),
				 errhint("Pass the arguments one by one.")));
	return PG_GETARG_ARRAYTYPE_P(2);
}

/* How many arguments the VARIADIC idem.untyped[] array of this call holds. */
static int
UntypedArgumentCount(FunctionCallInfo fcinfo)
{
	ArrayType  *array = UntypedArray(fcinfo);

	return ArrayGetNItems(ARR_NDIM(array), ARR_DIMS(array));
}

/*
 * Check the arguments given at this call site against fn's parameters: each
 * must be an untyped literal or of a type binary-coercible to the parameter.
 */
static void
CheckCallArguments(IdemCallSite *site, FunctionCallInfo fcinfo, Oid fnoid)
{
	int			given = PG_NARGS() - 2;

	site->untyped = false;
	if (get_fn_expr_variadic(fcinfo->flinfo))
	{
		if (!IsUntypedArray(get_fn_expr_argtype(fcinfo->flinfo, 2)))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("idem.idempotent_call does not take its arguments as a VARIADIC array"),
					 errhint("Pass the arguments of %s one by one.", FnName(fnoid))));
		site->untyped = true;
		given = UntypedArgumentCount(fcinfo);
	}
	if (given != site->fn.nargs)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function %s takes %d argument%s, but idem.idempotent_call was given %d",
						FnName(fnoid), site->fn.nargs,
						site->fn.nargs == 1 ? "" : "s", given),
				 errdetail("Parameter defaults are not applied by idem.idempotent_call."),
				 errhint("Pass exactly the arguments that %s declares.", FnName(fnoid))));

	if (site->untyped)
	{
		/* every untyped argument is read as a literal, whatever fn takes */
		for (int i = 0; i < given; i++)
			site->args[i].literal = true;
		return;
	}
	for (int i = 0; i < given; i++)
	{
		Oid			actual = get_fn_expr_argtype(fcinfo->flinfo, i + 2);
		Oid			declared = site->args[i].param.type;

		if (!OidIsValid(actual))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("could not determine the type of argument %d of idem.idempotent_call", i + 1),
					 errhint("Call idem.idempotent_call from SQL.")));
		site->args[i].literal = (actual == UNKNOWNOID && declared != UNKNOWNOID);
		if (!site->args[i].literal && actual != declared &&
			!IsBinaryCoercible(actual, declared))
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("argument %d of function %s must be of type %s, not %s",
							i + 1, FnName(fnoid), format_type_be(declared),
							format_type_be(actual)),
					 errhint("Cast the argument, for example value::%s.",
							 format_type_be(declared))));
	}
}

/*
 * Return the IdemCallSite of this idempotent_call call site for fnoid, checking
 * the caller's right to execute fn.
 */
IdemCallSite *
IdemGetCallSite(FunctionCallInfo fcinfo, Oid fnoid)
{
	IdemCallSite   *site = (IdemCallSite *) fcinfo->flinfo->fn_extra;
	MemoryContext mcxt = fcinfo->flinfo->fn_mcxt;
	Oid			role = GetUserId();

	if (site == NULL || site->fnoid != fnoid)
	{
		FnInfo	   *info = LookupFnInfo(fnoid);
		int			nargs = info->fn.nargs;
		MemoryContext cxt;

		/*
		 * A call site that switches between functions (fn taken from a
		 * column) frees what it kept for the previous one.
		 */
		if (site != NULL)
		{
			if (site->switch_cxt == NULL)
				site->switch_cxt = AllocSetContextCreate(mcxt, "idem call site",
														 ALLOCSET_SMALL_SIZES);
			else
				MemoryContextReset(site->switch_cxt);
		}
		if (site == NULL || site->room < nargs)
		{
			IdemCallSite   *old = site;

			site = MemoryContextAlloc(mcxt, offsetof(IdemCallSite, args) +
									  sizeof(CallArg) * Max(nargs, 1));
			site->room = Max(nargs, 1);
			site->switch_cxt = old != NULL ? old->switch_cxt : NULL;
			if (old != NULL)
				pfree(old);
			fcinfo->flinfo->fn_extra = site;
		}
		cxt = site->switch_cxt != NULL ? site->switch_cxt : mcxt;
		site->fnoid = InvalidOid;
		site->checked_role = InvalidOid;

		/* copy before any catalog access can process invalidations */
		site->fn = info->fn;
		fmgr_info_copy(&site->flinfo, &info->flinfo, cxt);
		for (int i = 0; i < nargs; i++)
			site->args[i].param = info->params[i];

		if (site->fn.result == RESULT_VIA_JSONB)
			InitToJsonb(&site->result_to_jsonb, site->fn.rettype, cxt);
		CheckCallArguments(site, fcinfo, fnoid);
		for (int i = 0; i < nargs; i++)
		{
			CallArg    *arg = &site->args[i];

			if (arg->literal)
				fmgr_info_cxt(arg->param.input_proc, &arg->input, cxt);
			if (arg->param.fingerprint.encoding == IDEM_ARG_VIA_JSONB)
				InitToJsonb(&arg->to_jsonb, arg->param.type, cxt);
		}
		site->fnoid = fnoid;
	}

	if (site->checked_role != role)
	{
#if PG_VERSION_NUM >= 160000
		AclResult	aclresult = object_aclcheck(ProcedureRelationId, fnoid, role, ACL_EXECUTE);
#else
		AclResult	aclresult = pg_proc_aclcheck(fnoid, role, ACL_EXECUTE);
#endif

		if (aclresult != ACLCHECK_OK)
			aclcheck_error(aclresult, OBJECT_FUNCTION, get_func_name(fnoid));
		InvokeFunctionExecuteHook(fnoid);
		site->checked_role = role;
	}
	return site;
}

/*
 * Read the elements of the VARIADIC idem.untyped[] array into values/nulls
 * through the input functions of fn's parameter types, exactly as untyped
 * literals are read, so that both give the same values and fingerprint.
 */
static void
ReadUntypedArguments(IdemCallSite *site, FunctionCallInfo fcinfo, Datum *values, bool *nulls)
{
	ArrayType  *array = UntypedArray(fcinfo);
	Datum	   *elems;
	bool	   *elemnulls;
	int			given;

	deconstruct_array(array, ARR_ELEMTYPE(array), -1, false, TYPALIGN_INT,
					  &elems, &elemnulls, &given);
	/* an explicit VARIADIC array may change its length between calls */
	if (given != site->fn.nargs)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function %s takes %d argument%s, but idem.idempotent_call was given %d",
						FnName(site->fnoid), site->fn.nargs,
						site->fn.nargs == 1 ? "" : "s", given),
				 errhint("Pass exactly the arguments that %s declares.", FnName(site->fnoid))));
	for (int i = 0; i < given; i++)
	{
		nulls[i] = elemnulls[i];
		values[i] = nulls[i] ? (Datum) 0 :
			InputFunctionCall(&site->args[i].input, TextDatumGetCString(elems[i]),
							  site->args[i].param.input_ioparam, -1);
	}
}

/*
 * Read the call's arguments into values/nulls, turning untyped literals into
 * values of fn's parameter types.
 */
void
IdemReadArguments(IdemCallSite *site, FunctionCallInfo fcinfo, Datum *values, bool *nulls)
{
	if (site->untyped)
	{
		ReadUntypedArguments(site, fcinfo, values, nulls);
		return;
	}
	for (int i = 0; i < site->fn.nargs; i++)
	{
		nulls[i] = PG_ARGISNULL(i + 2);
		values[i] = PG_GETARG_DATUM(i + 2);
		if (site->args[i].literal && !nulls[i])
			values[i] = InputFunctionCall(&site->args[i].input,
										  DatumGetCString(values[i]),
										  site->args[i].param.input_ioparam, -1);
	}
}

/*
 * The request fingerprint of a call: fn's identity and its arguments.
 * Arguments are turned into jsonb first, so that no user code (casts,
 * output functions) runs while the shared digest context is in use.
 */
uint64
IdemRequestFingerprint(IdemCallSite *site, Datum *values, bool *nulls)
{
	Datum		as_jsonb[FUNC_MAX_ARGS];

	for (int i = 0; i < site->fn.nargs; i++)
	{
		if (!nulls[i] && site->args[i].param.fingerprint.encoding == IDEM_ARG_VIA_JSONB)
			as_jsonb[i] = FunctionCall1(&site->args[i].to_jsonb, values[i]);
		else
			as_jsonb[i] = values[i];
	}

	IdemFingerprintBegin(site->fn.signature_digest);
	for (int i = 0; i < site->fn.nargs; i++)
	{
		if (nulls[i])
			IdemFingerprintNull();
		else if (site->args[i].param.fingerprint.encoding == IDEM_ARG_IMAGE)
			IdemFingerprintImage(&site->args[i].param.fingerprint, values[i]);
		else
			IdemFingerprintJsonb(DatumGetJsonbP(as_jsonb[i]));
	}
	return IdemFingerprintEnd();
}

/* Return the JSON null that stands for a NULL or void result. */
static Jsonb *
JsonNull(void)
{
	static Jsonb *json_null = NULL;

	if (json_null == NULL)
	{
		MemoryContext oldcontext = MemoryContextSwitchTo(TopMemoryContext);

		json_null = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("null")));
		MemoryContextSwitchTo(oldcontext);
	}
	return json_null;
}

/*
 * Run fn on the arguments with the given collation and return its result as
 * jsonb.
 */
static Jsonb *
CallFunction(IdemCallSite *site, Datum *values, bool *nulls, Oid collation)
{
	LOCAL_FCINFO(call, FUNC_MAX_ARGS);
	Datum		result;

	InitFunctionCallInfoData(*call, &site->flinfo, site->fn.nargs,
							 collation, NULL, NULL);
	for (int i = 0; i < site->fn.nargs; i++)
	{
		call->args[i].value = values[i];
		call->args[i].isnull = nulls[i];
		/* a strict function is not run on a NULL argument: its result is NULL */
		if (nulls[i] && site->fn.strict)
			return JsonNull();
	}

	result = FunctionCallInvoke(call);

	if (call->isnull || site->fn.result == RESULT_VOID)
		return JsonNull();
	if (site->fn.result == RESULT_JSONB)
		return DatumGetJsonbP(result);
	return DatumGetJsonbP(FunctionCall1(&site->result_to_jsonb, result));
}

/*
 * Run fn for (owner, key) and return its outcome.  While it runs, the key
 * is on the list of keys running in this backend, and a nested call on it
 * is refused: running fn again would be a second execution, and waiting for
 * our own key lock a self-deadlock.
 */
Jsonb *
IdemInvokeFunction(IdemCallSite *site, Datum *values, bool *nulls,
				   Oid collation, Oid owner, text *key)
{
	Jsonb	   *volatile outcome = NULL;
	RunningKey	running;

	for (RunningKey *other = running_keys; other != NULL; other = other->outer)
	{
		if (other->owner == owner &&
			VARSIZE_ANY_EXHDR(other->key) == VARSIZE_ANY_EXHDR(key) &&
			memcmp(VARDATA_ANY(other->key), VARDATA_ANY(key),
				   VARSIZE_ANY_EXHDR(key)) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_IDEM_NESTED_CALL),
					 errmsg("idempotent call with key \"%s\" is already running in this session",
							IdemKeyForMessage(key)),
					 errdetail("The function of this call called idem.idempotent_call again with the same key, which would run it a second time."),
					 errhint("Give the inner call a key of its own.")));
	}

	running.owner = owner;
	running.key = key;
	running.outer = running_keys;
	running_keys = &running;
	PG_TRY();
	{
		outcome = CallFunction(site, values, nulls, collation);
	}
	PG_FINALLY();
	{
		Assert(running_keys == &running);
		running_keys = running.outer;
	}
	PG_END_TRY();
	return outcome;
}
