/*-------------------------------------------------------------------------
 *
 * sync_secrets.c
 *		Keeping the sync's AWS credentials out of sight: the show hook of
 *		the credential settings, and masking credentials in the server log.
 *
 * PostgreSQL itself logs the new value of a setting changed by a reload,
 * and log_statement may log an ALTER SYSTEM that sets one.  An emit_log_hook
 * therefore masks what can hold a secret: the value written after the name
 * of a secret setting ("changed to", "=", "TO", or set_config's comma), and
 * the secrets themselves, from the settings and from the server's
 * environment, wherever else they appear.  Anything else is left as it is:
 * the hook sees the messages clients get too, such as the error of a SHOW
 * that a role may not run.
 *
 * The settings are read through the addresses sync.c hands over, at the
 * time of each message, so that this file depends on nothing of the sync.
 *
 * Copyright (c) 2026, the idem developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "tcop/tcopprot.h"

#include "sync_secrets.h"

/* The settings whose values never go to the server log. */
static const char *const secret_settings[] = {
	"idem.dynamodb_access_key_id",
	"idem.dynamodb_secret_access_key",
	"idem.dynamodb_session_token",
};

/* The variables of the secret settings, set by IdemSyncInstallLogMask. */
static char **secret_access_key_var = NULL;
static char **session_token_var = NULL;

static emit_log_hook_type prev_emit_log_hook = NULL;

/* Hide a credential from SHOW, current_setting() and pg_settings. */
const char *
IdemSyncShowSecret(void)
{
	return "********";
}

/* Replace every occurrence of secret in *text by a mask. */
static void
MaskSecret(char **text, const char *secret)
{
	StringInfoData out;
	const char *p;
	const char *hit;
	size_t		len;

	if (*text == NULL || secret == NULL || strlen(secret) < 4)
		return;
	if (strstr(*text, secret) == NULL)
		return;
	len = strlen(secret);
	initStringInfo(&out);
	for (p = *text; (hit = strstr(p, secret)) != NULL; p = hit + len)
	{
		appendBinaryStringInfo(&out, p, hit - p);
		appendStringInfoString(&out, "********");
	}
	appendStringInfoString(&out, p);
	*text = out.data;
}

/*
 * The end of the value that starts at p: a quoted literal ('...' with ''
 * inside, E'...', "..."), or a bare word.  A value that is not closed, or
 * dollar-quoted, runs to the end of the text.
 */
static const char *
ValueEnd(const char *p)
{
	if ((*p == 'E' || *p == 'e') && p[1] == '\'')
		p++;
	if (*p == '\'' || *p == '"')
	{
		char		quote = *p++;

		for (; *p != '\0'; p++)
		{
			if (*p == '\\' && p[1] != '\0')
				p++;
			else if (*p == quote && p[1] == quote)
				p++;
			else if (*p == quote)
				return p + 1;
		}
		return p;
	}
	if (*p == '$')
		return p + strlen(p);
	while (*p != '\0' && !isspace((unsigned char) *p) &&
		   *p != ';' && *p != ',' && *p != ')')
		p++;
	return p;
}

/*
 * Where the value of the setting whose name ends at p starts, if the text
 * goes on to give one; NULL otherwise.  *closing says the value is the
 * rest of the text up to its last double quote (PostgreSQL's "parameter
 * "..." changed to "..."").
 */
static const char *
ValueStart(const char *p, bool *closing)
{
	*closing = false;
	if (*p == '"' || *p == '\'')
		p++;
	if (strncmp(p, " changed to \"", 13) == 0)
	{
		*closing = true;
		return p + 13;
	}
	while (isspace((unsigned char) *p))
		p++;
	if (*p == '=' || *p == ',')
		p++;
	else if (pg_strncasecmp(p, "to", 2) == 0 &&
			 (isspace((unsigned char) p[2]) || p[2] == '\'' || p[2] == '"'))
		p += 2;
	else
		return NULL;
	while (isspace((unsigned char) *p))
		p++;
	return p;
}

/*
 * Mask the values given to secret settings in *text; returns whether
 * anything was masked.  Text that only names a setting stays as it is.
 */
static bool
MaskSettingValues(char **text)
{
	bool		masked = false;

	if (*text == NULL)
		return false;
	for (size_t i = 0; i < lengthof(secret_settings); i++)
	{
		/* Without "idem.": also idem."dynamodb_..." and the like. */
		const char *name = secret_settings[i] + strlen("idem.");
		size_t		from = 0;
		const char *hit;

		while ((hit = strstr(*text + from, name)) != NULL)
		{
			const char *name_end = hit + strlen(name);
			bool		closing;
			const char *start = ValueStart(name_end, &closing);
			const char *end;
			StringInfoData out;

			if (start == NULL)
			{
				from = name_end - *text;
				continue;
			}
			end = closing ? strrchr(start, '"') : ValueEnd(start);
			if (end == NULL || end < start)
				end = start + strlen(start);
			initStringInfo(&out);
			appendBinaryStringInfo(&out, *text, start - *text);
			appendStringInfoString(&out, "********");
			from = out.len;
			appendStringInfoString(&out, end);
			*text = out.data;
			masked = true;
		}
	}
	return masked;
}

/* Keep AWS credentials out of the server log. */
static void
SyncEmitLogHook(ErrorData *edata)
{
	const char *secrets[5];

	secrets[0] = secret_access_key_var ? *secret_access_key_var : NULL;
	secrets[1] = session_token_var ? *session_token_var : NULL;
	secrets[2] = getenv("AWS_SECRET_ACCESS_KEY");
	secrets[3] = getenv("AWS_SESSION_TOKEN");
	secrets[4] = NULL;

	MaskSettingValues(&edata->message);
	MaskSettingValues(&edata->detail);
	MaskSettingValues(&edata->detail_log);
	MaskSettingValues(&edata->hint);
	MaskSettingValues(&edata->context);
	MaskSettingValues(&edata->internalquery);
	for (int i = 0; secrets[i] != NULL || i < 4; i++)
	{
		if (secrets[i] == NULL)
			continue;
		MaskSecret(&edata->message, secrets[i]);
		MaskSecret(&edata->detail, secrets[i]);
		MaskSecret(&edata->detail_log, secrets[i]);
		MaskSecret(&edata->hint, secrets[i]);
		MaskSecret(&edata->context, secrets[i]);
		MaskSecret(&edata->internalquery, secrets[i]);
	}
	/* The statement text is printed separately: hide it if it sets one. */
	if (debug_query_string != NULL && !edata->hide_stmt)
	{
		char	   *stmt = (char *) debug_query_string;

		if (MaskSettingValues(&stmt))
			edata->hide_stmt = true;
	}

	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/*
 * Install the log hook; the arguments are the variables of the settings
 * idem.dynamodb_secret_access_key and idem.dynamodb_session_token, read
 * anew for each message since a reload may change them.
 */
void
IdemSyncInstallLogMask(char **secret_access_key, char **session_token)
{
	secret_access_key_var = secret_access_key;
	session_token_var = session_token;
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = SyncEmitLogHook;
}
