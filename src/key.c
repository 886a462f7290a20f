/*-------------------------------------------------------------------------
 *
 * key.c
 *		The idempotency key argument: its checks and its form in messages.
 *
 * A key is what tells a retry of a request from a new request, so a NULL or
 * empty one is refused rather than treated as a value, and its length is
 * bounded by idem.max_key_length.  Messages quote the key so that an
 * operator can find the request; a long key is shortened, since keys may
 * be megabytes of hostile input.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "mb/pg_wchar.h"

#include "compat.h"
#include "errcodes.h"
#include "key.h"

/* Longest key a message quotes in full, in characters. */
#define KEY_MESSAGE_CHARS	100

/* Quote a key for an error message, shortening a long one. */
char *
IdemKeyForMessage(text *key)
{
	const char *bytes = VARDATA_ANY(key);
	int			len = VARSIZE_ANY_EXHDR(key);
	int			cut;

	if (len <= KEY_MESSAGE_CHARS)
		return pnstrdup(bytes, len);
	cut = pg_mbcharcliplen(bytes, len, KEY_MESSAGE_CHARS);
	return psprintf("%.*s...", cut, bytes);
}

/*
 * Return the key passed as argument argno, refusing a NULL, empty or
 * overlong one (longer than max_chars characters).
 */
text *
IdemKeyArgument(FunctionCallInfo fcinfo, int argno, int max_chars)
{
	text	   *key;
	int			bytes;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_IDEM_INVALID_KEY),
				 errmsg("idempotency key must not be null"),
				 errdetail("The key is what tells a retry of a request from a new request."),
				 errhint("Pass the key the client sent with the request, such as its Idempotency-Key header.")));
	key = PG_GETARG_TEXT_PP(argno);
	bytes = VARSIZE_ANY_EXHDR(key);
	if (bytes == 0)
		ereport(ERROR,
				(errcode(ERRCODE_IDEM_INVALID_KEY),
				 errmsg("idempotency key must not be empty"),
				 errdetail("The key is what tells a retry of a request from a new request."),
				 errhint("Pass the key the client sent with the request, such as its Idempotency-Key header.")));
	/* a key has at most as many characters as bytes */
	if (bytes > max_chars)
	{
		int			chars = pg_mbstrlen_with_len(VARDATA_ANY(key), bytes);

		if (chars > max_chars)
			ereport(ERROR,
					(errcode(ERRCODE_IDEM_INVALID_KEY),
					 errmsg("idempotency key \"%s\" is too long", IdemKeyForMessage(key)),
					 errdetail("The key has %d characters; idem.max_key_length is %d.",
							   chars, max_chars),
					 errhint("Use a shorter key, such as a UUID.")));
	}
	return key;
}
