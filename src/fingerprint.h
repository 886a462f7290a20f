/*-------------------------------------------------------------------------
 *
 * fingerprint.h
 *		The request fingerprint: a digest of a canonical encoding of a
 *		call's function and arguments.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_FINGERPRINT_H
#define IDEM_FINGERPRINT_H

#include "postgres.h"

#include "common/sha2.h"
#include "utils/jsonb.h"

/* How a value of a parameter type enters the fingerprint. */
typedef enum IdemArgEncoding
{
	IDEM_ARG_JSONB,				/* canonical encoding of the jsonb value */
	IDEM_ARG_IMAGE,				/* the value's bytes: equal values are equal bytes */
	IDEM_ARG_VIA_JSONB			/* canonical encoding of to_jsonb(value) */
} IdemArgEncoding;

/* What the fingerprint needs to know about a parameter type. */
typedef struct IdemArgType
{
	IdemArgEncoding encoding;
	int16		typlen;			/* IDEM_ARG_IMAGE */
	bool		typbyval;		/* IDEM_ARG_IMAGE */
} IdemArgType;

extern void IdemArgTypeOf(Oid type, IdemArgType *argtype);
extern void IdemDigestSignature(const char *signature,
								uint8 digest[PG_SHA256_DIGEST_LENGTH]);

/*
 * A fingerprint is computed between Begin and End with one call per
 * argument, in order; no user code may run in between, since the digest
 * context is shared by the backend.
 */
extern void IdemFingerprintBegin(const uint8 signature_digest[PG_SHA256_DIGEST_LENGTH]);
extern void IdemFingerprintNull(void);
extern void IdemFingerprintImage(const IdemArgType *argtype, Datum value);
extern void IdemFingerprintJsonb(Jsonb *value);
extern uint64 IdemFingerprintEnd(void);

#endif							/* IDEM_FINGERPRINT_H */
