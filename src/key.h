/*-------------------------------------------------------------------------
 *
 * key.h
 *		The idempotency key argument: its checks and its form in messages.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_KEY_H
#define IDEM_KEY_H

#include "postgres.h"

#include "fmgr.h"

extern text *IdemKeyArgument(FunctionCallInfo fcinfo, int argno, int max_chars);
extern char *IdemKeyForMessage(text *key);

#endif							/* IDEM_KEY_H */
