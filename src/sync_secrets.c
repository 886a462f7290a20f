/*-------------------------------------------------------------------------
 *
 * sync_secrets.c
 *		Keeping the sync's AWS credentials out of sight: the show hook of
 *		the credential settings, and masking credentials in the server log.
 *
 * PostgreSQL itself logs the new value of a setting changed by a reload,
 * and log_statement may log an ALTER SYSTEM that sets one.  An emit_log_hook
 * therefore cuts every message that names a secret setting after its name,
 * and replaces the secrets themselves, from the settings and from the
 * server's environment, wherever else they appear.
 *
 * The settings are read through the addresses sync.c hands over, at the
 * time of each message, so that this file depends on nothing of the sync.
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

/* Cut a message after the name of a secret setting it mentions. */
static void
CutAfterSecretSetting(char **text, bool *cut)
{
	if (*text == NULL)
		return;
	for (size_t i = 0; i < lengthof(secret_settings); i++)
	{
		const char *hit = strstr(*text, secret_settings[i]);

		if (hit != NULL)
		{
			size_t		keep = (hit - *text) + strlen(secret_settings[i]);

			*text = psprintf("%.*s ... (value hidden by idem)", (int) keep, *text);
			*cut = true;
			return;
		}
	}
}

/* Keep AWS credentials out of the server log. */
static void
SyncEmitLogHook(ErrorData *edata)
{
	const char *secrets[5];
	bool		cut = false;

	secrets[0] = secret_access_key_var ? *secret_access_key_var : NULL;
	secrets[1] = session_token_var ? *session_token_var : NULL;
	secrets[2] = getenv("AWS_SECRET_ACCESS_KEY");
	secrets[3] = getenv("AWS_SESSION_TOKEN");
	secrets[4] = NULL;

	CutAfterSecretSetting(&edata->message, &cut);
	CutAfterSecretSetting(&edata->detail, &cut);
	CutAfterSecretSetting(&edata->context, &cut);
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
	/* The statement text is printed separately: hide it if it names one. */
	if (debug_query_string != NULL)
	{
		for (size_t i = 0; i < lengthof(secret_settings); i++)
			if (strstr(debug_query_string, secret_settings[i] + 5) != NULL)
				edata->hide_stmt = true;
	}
	if (cut)
		edata->hide_stmt = true;

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
