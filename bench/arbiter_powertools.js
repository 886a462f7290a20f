#!/usr/bin/env node
/*
 * arbiter_powertools.js
 *		The Powertools side of bench/arbiter: a handler made idempotent by
 *		Powertools for AWS Lambda (TypeScript), with a DynamoDB persistence
 *		layer on the benchmark's table, called by C concurrent loops, and
 *		timed call by call.
 *
 * Usage:
 *	node arbiter_powertools.js --endpoint URL --table T --prefix P
 *	     --mode first|seed|replay --clients C [--seconds S] [--keys N] [--run R]
 *
 *	first   every call has a new key (pw-f-R-<lane>-<n>) for S seconds
 *	seed    records keys pw-r-1 .. pw-r-N (first calls), C at a time
 *	replay  every call has a key drawn at random from pw-r-1 .. pw-r-N, all
 *	        completed beforehand by seed, for S seconds
 *
 * Prints one JSON line: calls, errors (and the first one's message), how
 * often the handler ran, seconds, calls per second and the median and p99
 * latency of a call in ms.  The exit status is 0 even when calls failed:
 * the caller judges the counts.  Credentials come from AWS_ACCESS_KEY_ID and
 * AWS_SECRET_ACCESS_KEY, the region from AWS_REGION (default us-east-1).
 * The modules are test/dynamo's (sh test/dynamo/install.sh).
 */
'use strict';

const path = require('path');
const { createRequire } = require('module');

/* Resolve the packages as test/dynamo's own scripts do, from its node_modules. */
const harness = createRequire(path.join(__dirname, '..', 'test', 'dynamo', 'package.json'));
const { makeIdempotent, IdempotencyConfig } = harness('@aws-lambda-powertools/idempotency');
const { DynamoDBPersistenceLayer } = harness('@aws-lambda-powertools/idempotency/dynamodb');

function parseArgs(argv)
{
	const opts = { seconds: 10, keys: 0, run: 0 };
	for (let i = 0; i < argv.length; i += 2)
	{
		const name = argv[i];
		const value = argv[i + 1];
		if (!name.startsWith('--') || value === undefined)
			throw new Error(`bad argument ${name}`);
		opts[name.slice(2)] = value;
	}
	for (const n of ['clients', 'seconds', 'keys', 'run'])
		opts[n] = Number(opts[n]);
	for (const n of ['endpoint', 'table', 'prefix', 'mode'])
		if (!opts[n])
			throw new Error(`--${n} is required`);
	if (!['first', 'seed', 'replay'].includes(opts.mode))
		throw new Error(`unknown mode ${opts.mode}`);
	if (!(opts.clients >= 1))
		throw new Error('--clients must be at least 1');
	if (opts.mode !== 'first' && !(opts.keys >= 1))
		throw new Error('--keys must be at least 1 for seed and replay');
	return opts;
}

/* The value at fraction p of sorted latencies (nearest rank), in ms. */
function percentile(sorted, p)
{
	if (sorted.length === 0)
		return null;
	const rank = Math.max(1, Math.ceil(p * sorted.length));
	return sorted[rank - 1];
}

async function main()
{
	const opts = parseArgs(process.argv.slice(2));
	let ran = 0;
	const persistenceStore = new DynamoDBPersistenceLayer({
		tableName: opts.table,
		clientConfig: {
			endpoint: opts.endpoint,
			region: process.env.AWS_REGION || 'us-east-1',
			credentials: {
				accessKeyId: process.env.AWS_ACCESS_KEY_ID,
				secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
			},
		},
	});
	/*
	 * The same trivial work as the SQL function on idem's side.  No local
	 * cache: every call asks DynamoDB, as a fresh Lambda instance would, and
	 * as idem asks DynamoDB for every key it has not recorded itself.  The
	 * record lives 24 hours, idem.ttl's default.
	 */
	const handler = makeIdempotent(async (event) => {
		ran++;
		return { ok: true, key: event.key };
	}, {
		persistenceStore: persistenceStore,
		config: new IdempotencyConfig({
			eventKeyJmesPath: 'key',
			useLocalCache: false,
			expiresAfterSeconds: 86400,
		}),
		keyPrefix: opts.prefix,
	});
	const context = {
		functionName: 'idem-arbiter-bench',
		getRemainingTimeInMillis: () => 30000,
	};

	let errors = 0;
	let firstError = null;
	let nextSeed = 0;
	const latencies = [];

	/* One call with key; false when it failed (counted, never thrown). */
	async function call(key, timed)
	{
		const t0 = process.hrtime.bigint();
		try
		{
			await handler({ key: key }, context);
		}
		catch (e)
		{
			errors++;
			if (firstError === null)
				firstError = `${e.name}: ${e.message}${e.cause ? ` (${e.cause.name}: ${e.cause.message})` : ''}`;
			return false;
		}
		if (timed)
			latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
		return true;
	}

	function randomRecordedKey()
	{
		return `pw-r-${1 + Math.floor(Math.random() * opts.keys)}`;
	}

	/*
	 * One untimed call per lane first, so that the SDK's lazy set-up (the
	 * credential chain, the agent and its connections) stays out of the
	 * measurement, as pgbench leaves its connections out of its tps.
	 */
	if (opts.mode !== 'seed')
	{
		const before = ran;
		await Promise.all(Array.from({ length: opts.clients }, (_, lane) =>
			call(opts.mode === 'first' ? `pw-w-${opts.run}-${lane}` : randomRecordedKey(), false)));
		ran = before;
	}

	let calls = 0;
	const start = process.hrtime.bigint();
	const deadline = start + BigInt(Math.round(opts.seconds * 1e9));

	async function lane(id)
	{
		let n = 0;
		if (opts.mode === 'seed')
		{
			while (nextSeed < opts.keys)
			{
				const k = ++nextSeed;
				if (await call(`pw-r-${k}`, true))
					calls++;
			}
			return;
		}
		while (process.hrtime.bigint() < deadline)
		{
			const key = opts.mode === 'first' ? `pw-f-${opts.run}-${id}-${++n}` : randomRecordedKey();
			if (await call(key, true))
				calls++;
		}
	}
	await Promise.all(Array.from({ length: opts.clients }, (_, id) => lane(id)));
	const seconds = Number(process.hrtime.bigint() - start) / 1e9;

	const sorted = Float64Array.from(latencies).sort();
	process.stdout.write(JSON.stringify({
		mode: opts.mode,
		clients: opts.clients,
		calls: calls,
		errors: errors,
		first_error: firstError,
		ran: ran,
		seconds: seconds,
		per_second: calls / seconds,
		p50_ms: percentile(sorted, 0.5),
		p99_ms: percentile(sorted, 0.99),
	}) + '\n');
	/* The SDK's keep-alive sockets would hold the process open. */
	process.exit(0);
}

main().catch((e) => {
	process.stderr.write(`${e.stack}\n`);
	process.exit(1);
});
