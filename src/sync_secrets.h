/*-------------------------------------------------------------------------
 *
 * sync_secrets.h
 *		Keeping the sync's AWS credentials out of sight: SHOW and the log.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_SYNC_SECRETS_H
#define IDEM_SYNC_SECRETS_H

#include "postgres.h"

extern const char *IdemSyncShowSecret(void);
extern void IdemSyncInstallLogMask(char **secret_access_key,
								   char **session_token);

#endif							/* IDEM_SYNC_SECRETS_H */
