#!/usr/bin/env node
/*
 * proxy.js
 *		A SigV4-verifying HTTP proxy in front of dynalite, for idem's tests.
 *
 * dynalite only checks the shape of the Authorization header.  This proxy
 * recomputes the AWS Signature Version 4 of every request with aws4 and
 * answers like DynamoDB does (400, InvalidSignatureException and friends)
 * when the signature is wrong, when a header the protocol requires is not
 * signed, when an x-amz-* header travels unsigned, or when the configured
 * session token is missing.  Requests that pass are forwarded to dynalite.
 *
 * A second port takes commands that inject faults:
 *		GET /fault?mode=500&count=N       the next N requests get HTTP 500
 *		GET /fault?mode=throttle&count=N  ... get 400 ThrottlingException
 *		GET /fault?mode=slow&count=N&ms=M ... are answered after M ms
 *		GET /fault?mode=reset&count=N     ... have their connection destroyed
 *		GET /fault?mode=ok                stop injecting faults
 *		GET /stats                        counters as JSON
 *
 * Usage: node proxy.js --port P --control-port C --target http://127.0.0.1:D
 *		  --access-key-id K --secret-access-key S [--session-token T]
 *		  [--region R]
 * Everything listens on 127.0.0.1 only.
 */
'use strict';

const http = require('http');
const crypto = require('crypto');
const aws4 = require('aws4');

function parseArgs(argv)
{
	const opts = {};
	for (let i = 2; i < argv.length; i += 2)
	{
		if (!argv[i].startsWith('--') || i + 1 >= argv.length)
			throw new Error(`bad argument ${argv[i]}`);
		opts[argv[i].slice(2)] = argv[i + 1];
	}
	return opts;
}

const opts = parseArgs(process.argv);
const port = Number(opts.port);
const controlPort = Number(opts['control-port']);
const target = new URL(opts.target);
const region = opts.region || 'us-east-1';
const creds = {
	accessKeyId: opts['access-key-id'],
	secretAccessKey: opts['secret-access-key'],
	sessionToken: opts['session-token'] || undefined,
};

const stats = {
	connections: 0,
	requests: 0,
	forwarded: 0,
	rejected: 0,
	injected: 0,
	lastRejection: null,
	targets: {},
};
let fault = { mode: 'ok', count: 0, ms: 0 };

const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

/* Answer the way DynamoDB answers a client error. */
function sendError(res, status, type, message)
{
	const body = JSON.stringify({
		__type: `com.amazon.coral.service#${type}`,
		message: message,
	});
	res.writeHead(status, {
		'Content-Type': 'application/x-amz-json-1.0',
		'Content-Length': Buffer.byteLength(body),
	});
	res.end(body);
}

/* Check one request's signature; returns null when valid, else [type, message]. */
function verify(req, body)
{
	const auth = req.headers.authorization;
	if (!auth)
		return ['MissingAuthenticationTokenException', 'Request is missing Authentication Token'];
	const m = /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([a-z0-9;\-]+), ?Signature=([0-9a-f]{64})$/.exec(auth);
	if (!m)
		return ['IncompleteSignatureException', 'malformed Authorization header'];
	const [, keyId, date, scopeRegion, scopeService, signedList, signature] = m;
	if (keyId !== creds.accessKeyId)
		return ['UnrecognizedClientException', 'The security token included in the request is invalid.'];
	if (scopeRegion !== region || scopeService !== 'dynamodb')
		return ['InvalidSignatureException', `credential scope ${scopeRegion}/${scopeService} is not ${region}/dynamodb`];

	const signed = signedList.split(';');
	for (const h of signed)
		if (req.headers[h] === undefined)
			return ['InvalidSignatureException', `signed header ${h} is not in the request`];
	for (const h of ['host', 'x-amz-date', 'x-amz-target', 'content-type'])
		if (!signed.includes(h))
			return ['InvalidSignatureException', `header ${h} is not signed`];
	for (const h of Object.keys(req.headers))
		if (h.startsWith('x-amz-') && !signed.includes(h))
			return ['InvalidSignatureException', `header ${h} is present but not signed`];
	if (creds.sessionToken !== undefined)
	{
		if (req.headers['x-amz-security-token'] === undefined)
			return ['UnrecognizedClientException', 'The security token included in the request is missing.'];
		if (req.headers['x-amz-security-token'] !== creds.sessionToken)
			return ['UnrecognizedClientException', 'The security token included in the request is invalid.'];
	}
	const amzDate = req.headers['x-amz-date'];
	if (!/^\d{8}T\d{6}Z$/.test(amzDate) || amzDate.slice(0, 8) !== date)
		return ['IncompleteSignatureException', `bad X-Amz-Date ${amzDate}`];
	const when = Date.UTC(+amzDate.slice(0, 4), +amzDate.slice(4, 6) - 1, +amzDate.slice(6, 8),
						  +amzDate.slice(9, 11), +amzDate.slice(11, 13), +amzDate.slice(13, 15));
	if (Math.abs(Date.now() - when) > 15 * 60 * 1000)
		return ['InvalidSignatureException', 'Signature expired'];

	/* Recompute over exactly the headers the client says it signed. */
	const headers = {};
	const include = {};
	for (const h of signed)
	{
		headers[h] = req.headers[h];
		include[h] = true;
	}
	const request = {
		method: req.method,
		host: req.headers.host,
		path: req.url,
		headers: headers,
		body: body,
		service: 'dynamodb',
		region: region,
		doNotModifyHeaders: true,
		extraHeadersToInclude: include,
	};
	const signer = new aws4.RequestSigner(request, creds);
	signer.datetime = amzDate;
	const expected = signer.signature();
	if (signer.signedHeaders() !== signedList)
		return ['InvalidSignatureException', `signed header list ${signedList} differs from ${signer.signedHeaders()}`];
	if (!crypto.timingSafeEqual(Buffer.from(expected), Buffer.from(signature)))
		return ['InvalidSignatureException', 'The request signature we calculated does not match the signature you provided.'];
	return null;
}

/* Pass a verified request on to dynalite and its answer back. */
function forward(req, res, body)
{
	const headers = Object.assign({}, req.headers);
	headers.host = target.host;
	const up = http.request({
		host: target.hostname,
		port: target.port,
		method: req.method,
		path: req.url,
		headers: headers,
		agent: agent,
	}, (ures) => {
		res.writeHead(ures.statusCode, ures.headers);
		ures.pipe(res);
	});
	up.on('error', (e) => sendError(res, 500, 'InternalServerError', `upstream: ${e.message}`));
	up.end(body);
}

/* Take one request from a client: inject a fault, reject it, or forward it. */
function handle(req, res, body)
{
	stats.requests++;
	const t = req.headers['x-amz-target'] || '';
	stats.targets[t] = (stats.targets[t] || 0) + 1;
	const why = verify(req, body);
	if (why)
	{
		stats.rejected++;
		stats.lastRejection = why.join(': ');
		const status = why[0] === 'MissingAuthenticationTokenException' ? 403 : 400;
		sendError(res, status, why[0], why[1]);
		return;
	}
	if (fault.mode !== 'ok' && fault.count > 0)
	{
		fault.count--;
		stats.injected++;
		const mode = fault.mode;
		if (fault.count === 0)
			fault = { mode: 'ok', count: 0, ms: 0 };
		if (mode === '500')
			return sendError(res, 500, 'InternalServerError', 'injected internal error');
		if (mode === 'throttle')
			return sendError(res, 400, 'ThrottlingException', 'Rate of requests exceeds the allowed throughput.');
		if (mode === 'reset')
			return req.socket.destroy();
		if (mode === 'slow')
			return setTimeout(() => forward(req, res, body), fault.ms || 5000);
	}
	stats.forwarded++;
	forward(req, res, body);
}

const server = http.createServer((req, res) => {
	const chunks = [];
	req.on('data', (c) => chunks.push(c));
	req.on('end', () => handle(req, res, Buffer.concat(chunks).toString('utf8')));
});
server.on('connection', () => { stats.connections++; });
server.keepAliveTimeout = 60000;
server.listen(port, '127.0.0.1', () => console.log(`proxy listening at http://127.0.0.1:${port}`));

const control = http.createServer((req, res) => {
	const u = new URL(req.url, 'http://127.0.0.1');
	if (u.pathname === '/fault')
	{
		fault = {
			mode: u.searchParams.get('mode') || 'ok',
			count: Number(u.searchParams.get('count') || 1000000000),
			ms: Number(u.searchParams.get('ms') || 0),
		};
		res.end(JSON.stringify(fault));
	}
	else if (u.pathname === '/stats')
		res.end(JSON.stringify(stats));
	else
	{
		res.statusCode = 404;
		res.end('not found');
	}
});
control.listen(controlPort, '127.0.0.1');
