#!/usr/bin/env node
/*
 * powertools_e2e.js
 *		Run a handler made idempotent by Powertools for AWS Lambda
 *		(TypeScript) against the test DynamoDB table, and report whether the
 *		handler ran and what the call returned.
 *
 * Usage: node powertools_e2e.js ENDPOINT TABLE KEY_PREFIX KEY [--report-errors]
 * Prints {"ran": bool, "result": ...} on stdout.  With --report-errors, an
 * error of Powertools' own (IdempotencyAlreadyInProgressError and the like)
 * is printed as {"ran": bool, "error": NAME, "message": ...} instead of
 * failing the run; other errors still fail it.
 */
'use strict';

const { makeIdempotent, IdempotencyConfig } = require('@aws-lambda-powertools/idempotency');
const { DynamoDBPersistenceLayer } = require('@aws-lambda-powertools/idempotency/dynamodb');

async function main()
{
	const [endpoint, table, keyPrefix, key, flag] = process.argv.slice(2);
	const reportErrors = flag === '--report-errors';
	let ran = false;
	const persistenceStore = new DynamoDBPersistenceLayer({
		tableName: table,
		clientConfig: {
			endpoint: endpoint,
			region: process.env.AWS_REGION || 'us-east-1',
			credentials: {
				accessKeyId: process.env.AWS_ACCESS_KEY_ID,
				secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
				sessionToken: process.env.AWS_SESSION_TOKEN || undefined,
			},
		},
	});
	const handler = makeIdempotent(async (event) => {
		ran = true;
		return { from: 'lambda', key: event.key };
	}, {
		persistenceStore: persistenceStore,
		config: new IdempotencyConfig({ eventKeyJmesPath: 'key' }),
		keyPrefix: keyPrefix,
	});
	const context = {
		functionName: 'idem-e2e',
		getRemainingTimeInMillis: () => 30000,
	};
	let result;
	try
	{
		result = await handler({ key: key }, context);
	}
	catch (e)
	{
		if (!reportErrors || !/^Idempotency/.test(e.name || ''))
			throw e;
		process.stdout.write(JSON.stringify({ ran: ran, error: e.name, message: e.message }) + '\n');
		return;
	}
	process.stdout.write(JSON.stringify({ ran: ran, result: result }) + '\n');
}

main().catch((e) => {
	process.stderr.write(`${e.stack}\n`);
	process.exit(1);
});
