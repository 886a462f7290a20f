/*-------------------------------------------------------------------------
 *
 * catalog.h
 *		Finding idem's own tables in the current database.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_CATALOG_H
#define IDEM_CATALOG_H

#include "postgres.h"

extern Oid	IdemTableOid(const char *relname, bool missing_ok);
extern Oid	IdemTableOwner(Oid relid);

#endif							/* IDEM_CATALOG_H */
