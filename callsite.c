/*-------------------------------------------------------------------------
 *
 * callsite.c
 *		Resolve, check and invoke the function that idempotent_call runs.
 *
 * What idempotent_call needs to know about fn (its kind, parameter types,
 * how to fingerprint each argument, how to turn its result into jsonb) comes
 * from the catalogs once per backend and function, in FnInfo entries that a
 * pg_proc or pg_type change invalidates; an FnInfo also holds fn's resolved
 * FmgrInfo.  Each call site of idempotent_call keeps a CallSite in fn_extra
 * with its own copies of these, so a statement that calls idempotent_call
 * many times resolves fn once, and each execution of a prepared statement
 * costs one hash lookup and a copy of a few hundred bytes, no catalog
 * lookup beyond the EXECUTE check.
 *
 * The request fingerprint is the first 64 bits of a SHA-256 digest of fn's
 * qualified signature and a canonical encoding of its arguments as values:
 * jsonb as its token stream with numbers normalised (so key order, white
 * space and trailing zeros do not matter), base types whose equal values are
 * equal bytes (btree "equalimage") as those bytes, everything else through
 * its to_jsonb form.  Hash functions made for hash tables do not do: they
 * map 1 and -1 (numeric), 1 and 4294967296 (bigint), {"a": "b"} and
 * ["a", "b"] (jsonb) to the same value, and a fingerprint collision replays
 * one request's outcome to another.
 *
 *-------------------------------------------------------------------------
 */
#include "idem.h"

#include "access/htup_details.h"
#include "access/nbtree.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_am.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_coerce.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/regproc.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

/* How an argument enters the request fingerprint. */
typedef enum ArgHash
{
	ARG_HASH_JSONB,				/* canonical encoding of the jsonb value */
	ARG_HASH_TYPE,				/* the value's bytes: equal values are equal bytes */
	ARG_HASH_VIA_JSONB			/* canonical encoding of to_jsonb(value) */
} ArgHash;

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
	ArgHash		hash;
	int16		typlen;			/* ARG_HASH_TYPE */
	bool		typbyval;		/* ARG_HASH_TYPE */
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
	FmgrInfo	hash;			/* ARG_HASH_VIA_JSONB: to_jsonb */
} CallArg;

/*
 * Everything here is copied out of the FnInfo, since an invalidation may
 * free FnInfo entries while a call is running.
 */
struct CallSite
{
	Oid			fnoid;			/* InvalidOid until set up */
	MemoryContext switch_cxt;	/* made once the site switches to another fn */
	Oid			checked_role;	/* role whose EXECUTE right was checked */
	FnSummary	fn;
	FmgrInfo	flinfo;			/* calls fn */
	FmgrInfo	result_to_jsonb;	/* RESULT_VIA_JSONB */
	int			room;			/* length of args */
	CallArg		args[FLEXIBLE_ARRAY_MEMBER];
};

static HTAB *fn_infos = NULL;

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

/*
 * Whether equal values of a type are always equal bytes, so that its values'
 * bytes can stand for them in the fingerprint: what the btree "equalimage"
 * support function of its default operator class says (for text-like types,
 * under the C collation, which the fingerprint uses).
 */
static bool
HasEqualImage(Oid type)
{
	Oid			opclass = GetDefaultOpClass(type, BTREE_AM_OID);
	Oid			opcintype;
	Oid			proc;

	if (!OidIsValid(opclass))
		return false;
	opcintype = get_opclass_input_type(opclass);
	proc = get_opfamily_proc(get_opclass_family(opclass), opcintype, opcintype,
							 BTEQUALIMAGE_PROC);
	return OidIsValid(proc) &&
		DatumGetBool(OidFunctionCall1Coll(proc, C_COLLATION_OID,
										  ObjectIdGetDatum(type)));
}

/* SHA-256 of a function's qualified signature, its part of every fingerprint. */
static void
DigestSignature(const char *signature, uint8 *digest)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) signature, strlen(signature)) < 0 ||
		pg_cryptohash_final(ctx, digest, PG_SHA256_DIGEST_LENGTH) < 0)
		elog(ERROR, "could not compute request fingerprint: %s",
			 pg_cryptohash_error(ctx));
	pg_cryptohash_free(ctx);
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
		get_typlenbyval(param->type, &param->typlen, &param->typbyval);
		if (param->type == JSONBOID)
			param->hash = ARG_HASH_JSONB;
		else if (get_typtype(param->type) == TYPTYPE_BASE && param->typlen != -2 &&
				 HasEqualImage(param->type))
			param->hash = ARG_HASH_TYPE;
		else
			param->hash = ARG_HASH_VIA_JSONB;
	}
	ReleaseSysCache(proctup);

	/* The qualified signature survives dump and restore; the OID does not. */
	signature = format_procedure_qualified(fnoid);
	DigestSignature(signature, info->fn.signature_digest);
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
 * Check the arguments given at this call site against fn's parameters: each
 * must be an untyped literal or of a type binary-coercible to the parameter.
 */
static void
CheckCallArguments(CallSite *site, FunctionCallInfo fcinfo, Oid fnoid)
{
	int			given = PG_NARGS() - 2;

	if (get_fn_expr_variadic(fcinfo->flinfo))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("idem.idempotent_call does not take its arguments as a VARIADIC array"),
				 errhint("Pass the arguments of %s one by one.", FnName(fnoid))));
	if (given != site->fn.nargs)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function %s takes %d argument%s, but idem.idempotent_call was given %d",
						FnName(fnoid), site->fn.nargs,
						site->fn.nargs == 1 ? "" : "s", given),
				 errdetail("Parameter defaults are not applied by idem.idempotent_call."),
				 errhint("Pass exactly the arguments that %s declares.", FnName(fnoid))));

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
 * Return the CallSite of this idempotent_call call site for fnoid, checking
 * the caller's right to execute fn.
 */
CallSite *
GetCallSite(FunctionCallInfo fcinfo, Oid fnoid)
{
	CallSite   *site = (CallSite *) fcinfo->flinfo->fn_extra;
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
			CallSite   *old = site;

			site = MemoryContextAlloc(mcxt, offsetof(CallSite, args) +
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
			if (arg->param.hash == ARG_HASH_VIA_JSONB)
				InitToJsonb(&arg->hash, arg->param.type, cxt);
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
 * Read the call's arguments into values/nulls, turning untyped literals into
 * values of fn's parameter types.
 */
void
ReadArguments(CallSite *site, FunctionCallInfo fcinfo, Datum *values, bool *nulls)
{
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

/* Feed bytes to the fingerprint's digest. */
static void
DigestBytes(pg_cryptohash_ctx *ctx, const void *data, size_t len)
{
	if (pg_cryptohash_update(ctx, (const uint8 *) data, len) < 0)
		elog(ERROR, "could not compute request fingerprint: %s",
			 pg_cryptohash_error(ctx));
}

/* Feed a tag byte and a length-prefixed byte string to the digest. */
static void
DigestItem(pg_cryptohash_ctx *ctx, char tag, const void *data, uint32 len)
{
	uint8		header[5];

	header[0] = (uint8) tag;
	header[1] = (uint8) (len >> 24);
	header[2] = (uint8) (len >> 16);
	header[3] = (uint8) (len >> 8);
	header[4] = (uint8) len;
	DigestBytes(ctx, header, sizeof(header));
	if (len > 0)
		DigestBytes(ctx, data, len);
}

/*
 * Feed a jsonb value to the digest as its token stream: structure, keys and
 * scalars, numbers in normalised form, so that values that jsonb equality
 * calls equal (1 and 1.0) give the same bytes and all others differ.
 */
static void
DigestJsonb(pg_cryptohash_ctx *ctx, Jsonb *jb)
{
	JsonbIterator *it = JsonbIteratorInit(&jb->root);
	JsonbValue	v;
	JsonbIteratorToken token;

	while ((token = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		char		tag = (char) ('0' + token);

		if (token == WJB_BEGIN_ARRAY)
			DigestItem(ctx, tag, v.val.array.rawScalar ? "s" : "a", 1);
		else if (token == WJB_KEY || token == WJB_VALUE || token == WJB_ELEM)
		{
			char	   *number;

			switch (v.type)
			{
				case jbvNull:
					DigestItem(ctx, tag, "n", 1);
					break;
				case jbvBool:
					DigestItem(ctx, tag, v.val.boolean ? "t" : "f", 1);
					break;
				case jbvString:
					DigestItem(ctx, tag, "\"", 1);
					DigestItem(ctx, 'S', v.val.string.val, v.val.string.len);
					break;
				case jbvNumeric:
					number = numeric_normalize(v.val.numeric);
					DigestItem(ctx, tag, "#", 1);
					DigestItem(ctx, 'N', number, strlen(number));
					pfree(number);
					break;
				default:
					elog(ERROR, "unexpected jsonb value type %d", (int) v.type);
			}
		}
		else
			DigestItem(ctx, tag, NULL, 0);
	}
}

/* Feed the bytes of a value of a type whose equal values are equal bytes. */
static void
DigestImage(pg_cryptohash_ctx *ctx, FnParam *param, Datum value)
{
	if (param->typbyval)
	{
		/* as a big-endian number, the same on every platform */
		uint64		number = (uint64) value;
		uint8		bytes[8];

		if (param->typlen < (int16) sizeof(uint64))
			number &= (UINT64CONST(1) << (8 * param->typlen)) - 1;
		for (int b = 0; b < 8; b++)
			bytes[b] = (uint8) (number >> (8 * (7 - b)));
		DigestItem(ctx, 'V', bytes, sizeof(bytes));
	}
	else if (param->typlen > 0)
		DigestItem(ctx, 'F', DatumGetPointer(value), param->typlen);
	else
	{
		struct varlena *detoasted = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(value));

		DigestItem(ctx, 'L', VARDATA_ANY(detoasted), VARSIZE_ANY_EXHDR(detoasted));
		if ((Pointer) detoasted != DatumGetPointer(value))
			pfree(detoasted);
	}
}

/*
 * Return the digest context the fingerprint is computed in: one per backend,
 * reinitialised for each fingerprint, since creating one looks up the
 * algorithm in OpenSSL each time.  It is registered with a resource owner
 * of its own that is never released, so that transaction ends leave it alone.
 */
static pg_cryptohash_ctx *
FingerprintDigest(void)
{
	static pg_cryptohash_ctx *digest_ctx = NULL;
	static ResourceOwner digest_owner = NULL;

	if (digest_ctx == NULL)
	{
		ResourceOwner saved_owner = CurrentResourceOwner;

		if (digest_owner == NULL)
			digest_owner = ResourceOwnerCreate(NULL, "idem fingerprint");
		CurrentResourceOwner = digest_owner;
		PG_TRY();
		{
			digest_ctx = pg_cryptohash_create(PG_SHA256);
		}
		PG_FINALLY();
		{
			CurrentResourceOwner = saved_owner;
		}
		PG_END_TRY();
	}
	if (pg_cryptohash_init(digest_ctx) < 0)
		elog(ERROR, "could not compute request fingerprint: %s",
			 pg_cryptohash_error(digest_ctx));
	return digest_ctx;
}

/*
 * Digest fn's identity and its arguments into the request fingerprint.
 * Arguments are turned into jsonb first, so that no user code (casts,
 * output functions) runs while the shared digest context is in use.
 */
uint64
RequestFingerprint(CallSite *site, Datum *values, bool *nulls)
{
	Datum		as_jsonb[FUNC_MAX_ARGS];
	pg_cryptohash_ctx *ctx;
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	uint64		hash = 0;

	for (int i = 0; i < site->fn.nargs; i++)
	{
		if (!nulls[i] && site->args[i].param.hash == ARG_HASH_VIA_JSONB)
			as_jsonb[i] = FunctionCall1(&site->args[i].hash, values[i]);
		else
			as_jsonb[i] = values[i];
	}

	ctx = FingerprintDigest();
	DigestItem(ctx, 'f', site->fn.signature_digest, PG_SHA256_DIGEST_LENGTH);
	for (int i = 0; i < site->fn.nargs; i++)
	{
		if (nulls[i])
			DigestItem(ctx, 'z', NULL, 0);
		else if (site->args[i].param.hash == ARG_HASH_TYPE)
			DigestImage(ctx, &site->args[i].param, values[i]);
		else
		{
			DigestItem(ctx, 'j', NULL, 0);
			DigestJsonb(ctx, DatumGetJsonbP(as_jsonb[i]));
		}
	}
	if (pg_cryptohash_final(ctx, digest, sizeof(digest)) < 0)
		elog(ERROR, "could not compute request fingerprint: %s",
			 pg_cryptohash_error(ctx));
	for (int b = 0; b < 8; b++)
		hash = (hash << 8) | digest[b];
	return hash;
}

/* Return the JSON null that stands for a NULL or void result. */
Jsonb *
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
 * Run fn on the arguments with the collation of the idempotent_call
 * expression, and return its result as jsonb.
 */
Jsonb *
InvokeFunction(CallSite *site, Datum *values, bool *nulls, Oid collation)
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
