/*-------------------------------------------------------------------------
 *
 * errcodes.h
 *		idem's own SQLSTATEs.
 *
 * Class IK ("idempotency key"); the last three characters are the HTTP
 * status that the IETF Idempotency-Key draft gives the condition, so an HTTP
 * layer can map them directly.  The draft has no condition for a stale
 * fencing token; IK412 borrows 412 Precondition Failed, since the token is
 * a precondition of the write.  IK503 (Service Unavailable) is a DynamoDB
 * fault in arbiter mode: retryable, and nothing ran.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_ERRCODES_H
#define IDEM_ERRCODES_H

#include "postgres.h"

#define ERRCODE_IDEM_INVALID_KEY	MAKE_SQLSTATE('I','K','4','0','0')
#define ERRCODE_IDEM_KEY_IN_USE		MAKE_SQLSTATE('I','K','4','0','9')
#define ERRCODE_IDEM_STALE_TOKEN	MAKE_SQLSTATE('I','K','4','1','2')
#define ERRCODE_IDEM_KEY_MISMATCH	MAKE_SQLSTATE('I','K','4','2','2')
#define ERRCODE_IDEM_ARBITER_UNAVAILABLE	MAKE_SQLSTATE('I','K','5','0','3')
#define ERRCODE_IDEM_NESTED_CALL	MAKE_SQLSTATE('I','K','5','0','8')

#endif							/* IDEM_ERRCODES_H */
