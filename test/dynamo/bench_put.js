#!/usr/bin/env node
/*
 * bench_put.js
 *		A plain parallel DynamoDB client for idem's sync benchmark: sends the
 *		PutItem bodies of a file (one JSON request a line) with N requests in
 *		flight over keep-alive connections, signed with aws4, and prints the
 *		rate the endpoint accepted them at.
 *
 * Usage: node bench_put.js ENDPOINT TABLE PARALLELISM FILE
 */
'use strict';

const fs = require('fs');
const http = require('http');
const aws4 = require('aws4');

const [endpoint, table, parallelism, file] = process.argv.slice(2);
const u = new URL(endpoint);
const agent = new http.Agent({ keepAlive: true, maxSockets: Number(parallelism) });
const creds = {
	accessKeyId: process.env.AWS_ACCESS_KEY_ID,
	secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
};
const bodies = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l !== '').map((l) => {
	const req = JSON.parse(l);
	req.TableName = table;
	return JSON.stringify(req);
});

/* Send one signed PutItem; resolves with the HTTP status. */
function put(body)
{
	const opts = aws4.sign({
		host: u.host, path: '/', method: 'POST', service: 'dynamodb',
		region: process.env.AWS_REGION || 'us-east-1',
		headers: {
			'Content-Type': 'application/x-amz-json-1.0',
			'X-Amz-Target': 'DynamoDB_20120810.PutItem',
		},
		body: body,
	}, creds);
	return new Promise((resolve, reject) => {
		const r = http.request({
			host: u.hostname, port: u.port, method: 'POST', path: '/',
			headers: opts.headers, agent: agent,
		}, (res) => {
			res.resume();
			res.on('end', () => resolve(res.statusCode));
		});
		r.on('error', reject);
		r.end(body);
	});
}

async function main()
{
	let next = 0;
	let ok = 0;
	const start = process.hrtime.bigint();
	async function lane()
	{
		while (next < bodies.length)
		{
			const status = await put(bodies[next++]);
			if (status === 200)
				ok++;
		}
	}
	await Promise.all(Array.from({ length: Number(parallelism) }, lane));
	const secs = Number(process.hrtime.bigint() - start) / 1e9;
	process.stdout.write(JSON.stringify({ sent: bodies.length, ok: ok, seconds: secs, per_second: ok / secs }) + '\n');
}

main().catch((e) => {
	process.stderr.write(`${e.stack}\n`);
	process.exit(1);
});
