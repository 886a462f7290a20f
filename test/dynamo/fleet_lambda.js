#!/usr/bin/env node
/*
 * fleet_lambda.js
 *		One Lambda party of t/106_sync_arbiter_fleet.pl: a handler made
 *		idempotent by Powertools for AWS Lambda (TypeScript) on the test
 *		table, called for a planned list of keys, each call at its planned
 *		time, over several concurrent lanes.
 *
 * Usage: node fleet_lambda.js ENDPOINT TABLE KEY_PREFIX PARTY LANES PLAN
 *
 * PLAN is a file holding a JSON array of calls, [{"key": K, "at": EPOCH_MS},
 * ...]; call i goes to lane i % LANES, and a lane makes its calls in order,
 * none before its time.  The handler sleeps 30 ms, so that other parties' calls of the
 * key overlap it, and returns {"party": PARTY, "key": K, "run": "PARTY-N"},
 * N counting this process's executions.
 *
 * Powertools does not wait for a key another party holds: it fails the call
 * with IdempotencyAlreadyInProgressError.  Such a call is retried after
 * 50 to 150 ms, as Lambda would retry an invocation, for up to 60 seconds
 * from its first try; the retries are counted.  Any other error ends the
 * call and is reported.
 *
 * Prints one JSON line: {"party", "executions": [{"key", "run"}],
 * "results": [{"key", "outcome", "t_start", "t_end", "tries"}],
 * "errors": [{"key", "error", "message"}], "in_progress_retries"}, times in
 * epoch milliseconds.  Credentials come from AWS_ACCESS_KEY_ID and
 * AWS_SECRET_ACCESS_KEY, the region from AWS_REGION (default us-east-1).
 */
'use strict';

const fs = require('fs');
const { makeIdempotent, IdempotencyConfig } = require('@aws-lambda-powertools/idempotency');
const { DynamoDBPersistenceLayer } = require('@aws-lambda-powertools/idempotency/dynamodb');

const RETRY_FOR_MS = 60000;

/* Resolve after ms milliseconds. */
function sleep(ms)
{
	return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

async function main()
{
	const [endpoint, table, keyPrefix, party, lanesArg, planFile] = process.argv.slice(2);
	const lanes = Number(lanesArg);
	if (!endpoint || !table || !keyPrefix || !party || !(lanes >= 1) || !planFile)
		throw new Error('usage: fleet_lambda.js ENDPOINT TABLE KEY_PREFIX PARTY LANES PLAN');
	const plan = JSON.parse(fs.readFileSync(planFile, 'utf8'));

	const executions = [];
	const results = [];
	const errors = [];
	let inProgressRetries = 0;

	const persistenceStore = new DynamoDBPersistenceLayer({
		tableName: table,
		clientConfig: {
			endpoint: endpoint,
			region: process.env.AWS_REGION || 'us-east-1',
			credentials: {
				accessKeyId: process.env.AWS_ACCESS_KEY_ID,
				secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
			},
		},
	});
	/* No local cache: every call asks DynamoDB, as a fresh Lambda would. */
	const handler = makeIdempotent(async (event) => {
		const run = `${party}-${executions.length + 1}`;
		executions.push({ key: event.key, run: run });
		await sleep(30);
		return { party: party, key: event.key, run: run };
	}, {
		persistenceStore: persistenceStore,
		config: new IdempotencyConfig({
			eventKeyJmesPath: 'key',
			useLocalCache: false,
		}),
		keyPrefix: keyPrefix,
	});
	const context = {
		functionName: `idem-fleet-${party}`,
		getRemainingTimeInMillis: () => 30000,
	};

	/* One planned call, retried while another party holds the key. */
	async function call(key)
	{
		const tStart = Date.now();
		let tries = 0;
		for (;;)
		{
			tries++;
			try
			{
				const outcome = await handler({ key: key }, context);
				results.push({ key: key, outcome: outcome, t_start: tStart, t_end: Date.now(), tries: tries });
				return;
			}
			catch (e)
			{
				if (e.name === 'IdempotencyAlreadyInProgressError' && Date.now() - tStart < RETRY_FOR_MS)
				{
					inProgressRetries++;
					await sleep(50 + Math.random() * 100);
					continue;
				}
				errors.push({
					key: key,
					error: e.name,
					message: `${e.message}${e.cause ? ` (${e.cause.name}: ${e.cause.message})` : ''}`,
				});
				return;
			}
		}
	}

	/* The calls of one lane, each at its time. */
	async function lane(id)
	{
		for (let i = id; i < plan.length; i += lanes)
		{
			await sleep(plan[i].at - Date.now());
			await call(plan[i].key);
		}
	}

	await Promise.all(Array.from({ length: lanes }, (_, id) => lane(id)));
	process.stdout.write(JSON.stringify({
		party: party,
		executions: executions,
		results: results,
		errors: errors,
		in_progress_retries: inProgressRetries,
	}) + '\n');
	/* The SDK's keep-alive sockets would hold the process open. */
	process.exit(0);
}

main().catch((e) => {
	process.stderr.write(`${e.stack}\n`);
	process.exit(1);
});
