/*-------------------------------------------------------------------------
 *
 * sync_worker.h
 *		The background worker that delivers idem.sync_outbox to DynamoDB.
 *
 * The postmaster finds IdemSyncWorkerMain by name in the library (sync.c
 * registers the worker), so it must stay exported under this name.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_SYNC_WORKER_H
#define IDEM_SYNC_WORKER_H

#include "postgres.h"

extern PGDLLEXPORT void IdemSyncWorkerMain(Datum main_arg);

#endif							/* IDEM_SYNC_WORKER_H */
