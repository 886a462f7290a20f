/*-------------------------------------------------------------------------
 *
 * fingerprint.c
 *		The request fingerprint: a digest of a canonical encoding of a
 *		call's function and arguments.
 *
 * The fingerprint stored with a record tells a retry of the request from a
 * different request under the same key.  It is the first 64 bits of a
 * SHA-256 digest of fn's qualified signature and a canonical encoding of its
 * arguments as values: jsonb as its token stream with numbers normalised (so
 * key order, white space and trailing zeros do not matter), base types whose
 * equal values are equal bytes (btree "equalimage") as those bytes, anything
 * else through its to_jsonb form.  Hash functions made for hash tables do not
 * do: they map 1 and -1 (numeric), 1 and 4294967296 (bigint), {"a": "b"} and
 * ["a", "b"] (jsonb) to the same value, and a fingerprint collision replays
 * one request's outcome to another.
 *
 * With OpenSSL the digest goes through its SHA256_Init/Update/Final on a
 * context of plain memory.  pg_cryptohash_init looks SHA-256 up by name on
 * every call, and OpenSSL 3's EVP frees and allocates its context on every
 * init; either cost more per call than hashing a whole request.  OpenSSL 3
 * deprecates these functions but still provides them; a build of it without
 * deprecated functions gets pg_cryptohash.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

/* before any OpenSSL header: 13's common/sha2.h includes one */
#ifdef USE_OPENSSL
#define OPENSSL_SUPPRESS_DEPRECATED
#endif

#include "access/nbtree.h"
#include "catalog/pg_am.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
#include "utils/resowner.h"

#include "compat.h"
#include "fingerprint.h"

#ifdef USE_OPENSSL
#include <openssl/opensslconf.h>
#ifndef OPENSSL_NO_DEPRECATED_3_0
#include <openssl/sha.h>
#define DIGEST_WITH_OPENSSL_SHA256
#endif
#endif

/* The digest being computed, between Begin and End. */
#ifdef DIGEST_WITH_OPENSSL_SHA256
static SHA256_CTX digest_ctx;
#else
static pg_cryptohash_ctx *digest_ctx = NULL;
#endif

/*
 * Bytes not yet fed to the digest.  A fingerprint is dozens of items of a
 * few bytes each, and every update is a call into OpenSSL, so they
 * are gathered here and fed in one go; the digest is the same.
 */
#define DIGEST_BUFFER_SIZE	1024
static uint8 digest_buffer[DIGEST_BUFFER_SIZE];
static size_t digest_buffered = 0;

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

/* Decide how values of a parameter type enter the fingerprint. */
void
IdemArgTypeOf(Oid type, IdemArgType *argtype)
{
	get_typlenbyval(type, &argtype->typlen, &argtype->typbyval);
	if (type == JSONBOID)
		argtype->encoding = IDEM_ARG_JSONB;
	else if (get_typtype(type) == TYPTYPE_BASE && argtype->typlen != -2 &&
			 HasEqualImage(type))
		argtype->encoding = IDEM_ARG_IMAGE;
	else
		argtype->encoding = IDEM_ARG_VIA_JSONB;
}

/* SHA-256 of a function's qualified signature, its part of every fingerprint. */
void
IdemDigestSignature(const char *signature, uint8 digest[PG_SHA256_DIGEST_LENGTH])
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) signature, strlen(signature)) < 0 ||
		pg_cryptohash_final(ctx, digest, PG_SHA256_DIGEST_LENGTH) < 0)
		elog(ERROR, "could not compute request fingerprint: %s",
			 IdemCryptohashError(ctx));
	pg_cryptohash_free(ctx);
}

#ifdef DIGEST_WITH_OPENSSL_SHA256

/* Report a failure of OpenSSL's digest functions. */
static void
DigestFailed(void)
{
	elog(ERROR, "could not compute request fingerprint: OpenSSL SHA-256 failure");
}

/* Start a digest. */
static void
DigestStart(void)
{
	if (SHA256_Init(&digest_ctx) != 1)
		DigestFailed();
}

/* Feed len bytes at data to the digest itself. */
static void
DigestUpdate(const uint8 *data, size_t len)
{
	if (SHA256_Update(&digest_ctx, data, len) != 1)
		DigestFailed();
}

/* Finish the digest. */
static void
DigestFinish(uint8 digest[PG_SHA256_DIGEST_LENGTH])
{
	if (SHA256_Final(digest, &digest_ctx) != 1)
		DigestFailed();
}

#else							/* !DIGEST_WITH_OPENSSL_SHA256 */

/*
 * Make the backend's digest context on first use, since making one costs
 * more than a fingerprint, and start a digest.  The context is registered
 * with a resource owner of its own that is never released, so that
 * transaction ends leave it alone.
 */
static void
DigestStart(void)
{
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
			 IdemCryptohashError(digest_ctx));
}

/* Feed len bytes at data to the digest itself. */
static void
DigestUpdate(const uint8 *data, size_t len)
{
	if (pg_cryptohash_update(digest_ctx, data, len) < 0)
		elog(ERROR, "could not compute request fingerprint: %s",
			 IdemCryptohashError(digest_ctx));
}

/* Finish the digest. */
static void
DigestFinish(uint8 digest[PG_SHA256_DIGEST_LENGTH])
{
	if (pg_cryptohash_final(digest_ctx, digest, PG_SHA256_DIGEST_LENGTH) < 0)
		elog(ERROR, "could not compute request fingerprint: %s",
			 IdemCryptohashError(digest_ctx));
}

#endif							/* DIGEST_WITH_OPENSSL_SHA256 */

/* Feed the buffered bytes to the digest. */
static void
DigestFlush(void)
{
	if (digest_buffered > 0)
	{
		size_t		len = digest_buffered;

		digest_buffered = 0;
		DigestUpdate(digest_buffer, len);
	}
}

/* Add bytes to the digest, through the buffer unless they would fill it. */
static void
DigestBytes(const void *data, size_t len)
{
	if (digest_buffered + len > DIGEST_BUFFER_SIZE)
	{
		DigestFlush();
		if (len > DIGEST_BUFFER_SIZE)
		{
			DigestUpdate((const uint8 *) data, len);
			return;
		}
	}
	memcpy(digest_buffer + digest_buffered, data, len);
	digest_buffered += len;
}

/* Feed a tag byte and a length-prefixed byte string to the digest. */
static void
DigestItem(char tag, const void *data, uint32 len)
{
	uint8		header[5];

	header[0] = (uint8) tag;
	header[1] = (uint8) (len >> 24);
	header[2] = (uint8) (len >> 16);
	header[3] = (uint8) (len >> 8);
	header[4] = (uint8) len;
	DigestBytes(header, sizeof(header));
	if (len > 0)
		DigestBytes(data, len);
}

/* Start a fingerprint. */
void
IdemFingerprintBegin(const uint8 signature_digest[PG_SHA256_DIGEST_LENGTH])
{
	DigestStart();
	/* what an earlier fingerprint left behind when it failed */
	digest_buffered = 0;
	DigestItem('f', signature_digest, PG_SHA256_DIGEST_LENGTH);
}

/* Add a NULL argument. */
void
IdemFingerprintNull(void)
{
	DigestItem('z', NULL, 0);
}

/* Add the bytes of a value of a type whose equal values are equal bytes. */
void
IdemFingerprintImage(const IdemArgType *argtype, Datum value)
{
	if (argtype->typbyval)
	{
		/* as a big-endian number, the same on every platform */
		uint64		number = (uint64) value;
		uint8		bytes[8];

		if (argtype->typlen < (int16) sizeof(uint64))
			number &= (UINT64CONST(1) << (8 * argtype->typlen)) - 1;
		for (int b = 0; b < 8; b++)
			bytes[b] = (uint8) (number >> (8 * (7 - b)));
		DigestItem('V', bytes, sizeof(bytes));
	}
	else if (argtype->typlen > 0)
		DigestItem('F', DatumGetPointer(value), argtype->typlen);
	else
	{
		struct varlena *detoasted = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(value));

		DigestItem('L', VARDATA_ANY(detoasted), VARSIZE_ANY_EXHDR(detoasted));
		if ((Pointer) detoasted != DatumGetPointer(value))
			pfree(detoasted);
	}
}

/*
 * Add a jsonb value as its token stream: structure, keys and scalars,
 * numbers in normalised form, so that values that jsonb equality calls equal
 * (1 and 1.0) give the same bytes and all others differ.
 */
void
IdemFingerprintJsonb(Jsonb *value)
{
	JsonbIterator *it = JsonbIteratorInit(&value->root);
	JsonbValue	v;
	JsonbIteratorToken token;

	DigestItem('j', NULL, 0);
	while ((token = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		char		tag = (char) ('0' + token);

		if (token == WJB_BEGIN_ARRAY)
			DigestItem(tag, v.val.array.rawScalar ? "s" : "a", 1);
		else if (token == WJB_KEY || token == WJB_VALUE || token == WJB_ELEM)
		{
			char	   *number;

			switch (v.type)
			{
				case jbvNull:
					DigestItem(tag, "n", 1);
					break;
				case jbvBool:
					DigestItem(tag, v.val.boolean ? "t" : "f", 1);
					break;
				case jbvString:
					DigestItem(tag, "\"", 1);
					DigestItem('S', v.val.string.val, v.val.string.len);
					break;
				case jbvNumeric:
					number = numeric_normalize(v.val.numeric);
					DigestItem(tag, "#", 1);
					DigestItem('N', number, strlen(number));
					pfree(number);
					break;
				default:
					elog(ERROR, "unexpected jsonb value type %d", (int) v.type);
			}
		}
		else
			DigestItem(tag, NULL, 0);
	}
}

/* Finish the fingerprint: the first 64 bits of the digest. */
uint64
IdemFingerprintEnd(void)
{
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	uint64		hash = 0;

	DigestFlush();
	DigestFinish(digest);
	for (int b = 0; b < 8; b++)
		hash = (hash << 8) | digest[b];
	return hash;
}
