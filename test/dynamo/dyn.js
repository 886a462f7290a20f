#!/usr/bin/env node
/*
 * dyn.js
 *		Small signed DynamoDB client for idem's tests: create a table, scan,
 *		get or put items, and compute Powertools idempotency ids.
 *
 * Usage:
 *	node dyn.js ENDPOINT create-table TABLE
 *	node dyn.js ENDPOINT scan TABLE          one item per line, AttributeValue JSON
 *	node dyn.js ENDPOINT get TABLE ID        the item or {} if absent
 *	node dyn.js ENDPOINT put TABLE ITEMJSON  unconditional PutItem
 *	node dyn.js - powertools-id PREFIX       keys as JSON strings on stdin, one
 *	                                         a line; prints the id Powertools'
 *	                                         own code derives for each
 * Credentials come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
 * AWS_SESSION_TOKEN; the region from AWS_REGION (default us-east-1).
 * DYN_TAMPER spoils a request after signing, to check that the proxy
 * notices: unsigned-header (adds X-Amz-Meta-Extra), bad-signature (flips
 * a digit of the signature), body (changes a byte of the body).
 */
'use strict';

const http = require('http');
const aws4 = require('aws4');

const region = process.env.AWS_REGION || 'us-east-1';

/* Send one signed DynamoDB request and resolve with the parsed answer. */
function call(endpoint, op, payload)
{
	const u = new URL(endpoint);
	const body = JSON.stringify(payload);
	const req = aws4.sign({
		host: u.host,
		path: '/',
		method: 'POST',
		service: 'dynamodb',
		region: region,
		headers: {
			'Content-Type': 'application/x-amz-json-1.0',
			'X-Amz-Target': `DynamoDB_20120810.${op}`,
		},
		body: body,
	}, {
		accessKeyId: process.env.AWS_ACCESS_KEY_ID,
		secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
		sessionToken: process.env.AWS_SESSION_TOKEN || undefined,
	});
	let sent = body;
	if (process.env.DYN_TAMPER === 'unsigned-header')
		req.headers['X-Amz-Meta-Extra'] = 'not signed';
	else if (process.env.DYN_TAMPER === 'bad-signature')
		req.headers.Authorization = req.headers.Authorization.replace(/Signature=(.)/,
			(m, c) => 'Signature=' + (c === '0' ? '1' : '0'));
	else if (process.env.DYN_TAMPER === 'body')
		sent = body.slice(0, -2) + ' ' + body.slice(-1);
	return new Promise((resolve, reject) => {
		const r = http.request({
			host: u.hostname, port: u.port, method: 'POST', path: '/',
			headers: req.headers,
		}, (res) => {
			let data = '';
			res.on('data', (c) => { data += c; });
			res.on('end', () => {
				const parsed = data ? JSON.parse(data) : {};
				if (res.statusCode !== 200)
					reject(new Error(`${op}: HTTP ${res.statusCode} ${data}`));
				else
					resolve(parsed);
			});
		});
		r.on('error', reject);
		r.end(sent);
	});
}

/* Print every item of a table, following LastEvaluatedKey. */
async function scan(endpoint, table)
{
	let start;
	do
	{
		const page = await call(endpoint, 'Scan', Object.assign({ TableName: table },
			start ? { ExclusiveStartKey: start } : {}));
		for (const item of page.Items)
			process.stdout.write(JSON.stringify(item) + '\n');
		start = page.LastEvaluatedKey;
	} while (start);
}

/* Print the Powertools id of each key read from stdin, using Powertools itself. */
async function powertoolsIds(prefix)
{
	const { DynamoDBPersistenceLayer } =
		require('@aws-lambda-powertools/idempotency/dynamodb');
	const { IdempotencyConfig } = require('@aws-lambda-powertools/idempotency');
	const layer = new DynamoDBPersistenceLayer({ tableName: 'unused' });
	layer.configure({
		config: new IdempotencyConfig({ eventKeyJmesPath: 'key' }),
		keyPrefix: prefix,
	});
	let input = '';
	for await (const c of process.stdin)
		input += c;
	for (const line of input.split('\n'))
	{
		if (line === '')
			continue;
		const key = JSON.parse(line);
		process.stdout.write(layer.getHashedIdempotencyKey({ key: key }) + '\n');
	}
}

async function main()
{
	const [endpoint, cmd, ...rest] = process.argv.slice(2);
	if (cmd === 'create-table')
		await call(endpoint, 'CreateTable', {
			TableName: rest[0],
			AttributeDefinitions: [{ AttributeName: 'id', AttributeType: 'S' }],
			KeySchema: [{ AttributeName: 'id', KeyType: 'HASH' }],
			BillingMode: 'PAY_PER_REQUEST',
		});
	else if (cmd === 'scan')
		await scan(endpoint, rest[0]);
	else if (cmd === 'get')
	{
		const r = await call(endpoint, 'GetItem', {
			TableName: rest[0], Key: { id: { S: rest[1] } }, ConsistentRead: true,
		});
		process.stdout.write(JSON.stringify(r.Item || {}) + '\n');
	}
	else if (cmd === 'put')
		await call(endpoint, 'PutItem', { TableName: rest[0], Item: JSON.parse(rest[1]) });
	else if (cmd === 'powertools-id')
		await powertoolsIds(rest[0]);
	else
		throw new Error(`unknown command ${cmd}`);
}

main().catch((e) => {
	process.stderr.write(`${e.message}\n`);
	process.exit(1);
});
