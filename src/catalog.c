/*-------------------------------------------------------------------------
 *
 * catalog.c
 *		Finding idem's own tables in the current database.
 *
 * idem's tables live in the schema idem, which CREATE EXTENSION makes and
 * which cannot be moved.  Looking them up by schema OID and name, rather
 * than through search_path, means no setting of the caller's can point idem
 * at a look-alike table.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "catalog.h"

/*
 * The OID of idem.<relname>; InvalidOid if it does not exist and missing_ok,
 * otherwise an error telling the user to create the extension.
 */
Oid
IdemTableOid(const char *relname, bool missing_ok)
{
	Oid			nspid = get_namespace_oid("idem", true);
	Oid			relid = OidIsValid(nspid) ? get_relname_relid(relname, nspid) : InvalidOid;

	if (!OidIsValid(relid) && !missing_ok)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("idem's table idem.%s does not exist", relname),
				 errhint("Run CREATE EXTENSION idem in this database, or ALTER EXTENSION idem UPDATE.")));
	return relid;
}

/* The role that owns a relation. */
Oid
IdemTableOwner(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}
