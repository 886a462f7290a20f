"""ASGI middleware for the Idempotency-Key header (IETF draft -07) on idem's lease API.

A request with a key is claimed with its fingerprint (method, path and the body as canonical JSON, which
idem compares as jsonb).  The first one runs the application, whose handler finds the claim in
`request.state.idem` (an AsyncStep: recovery, checkpoint, and `connection()` whose transaction the stored
response commits with).  2xx and 4xx responses are recorded and replayed with `Idempotent-Replayed: true`;
5xx responses and exceptions roll that transaction back and release the key, so that a retry runs again.

`mode="transaction"` (per middleware or per route) is for handlers whose work is all in PostgreSQL: the
claim, the handler's writes on `connection()` and the response commit in one transaction on one pooled
connection, and any other end rolls the claim back with the writes.  The default, "lease", commits the
claim first, for handlers that call other services and checkpoint.
"""

import base64
import hashlib
import json
import re

from .aio import AsyncStep, HeldAsyncStep, _AsyncSource, aclaim, aclaim_held
from .errors import IdemError

_SF_STRING = re.compile(r'^"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"$')
DEFAULT_METHODS = frozenset({"POST", "PATCH"})
DEFAULT_REPLAY_HEADERS = ("content-type", "location")


def parse_key(value):
    """The key of an Idempotency-Key header value, a structured-field string (RFC 8941), or None."""
    m = _SF_STRING.match(value.strip(" "))
    if m is None:
        return None
    return re.sub(r'\\(["\\])', r"\1", m.group(1))


def fingerprint(method, path, body):
    """The request idem compares: method, path and the body as JSON (or its digest when not JSON)."""
    try:
        parsed = json.loads(body) if body else None
    except (UnicodeDecodeError, ValueError):
        return {"method": method, "path": path, "body_sha256": hashlib.sha256(body).hexdigest()}
    return {"method": method, "path": path, "body": parsed}


def _checked_mode(mode):
    """The mode, refused at setup unless it is one the middleware knows."""
    if mode not in ("lease", "transaction"):
        raise ValueError(f"mode must be 'lease' or 'transaction', not {mode!r}")
    return mode


class RouteOptions:
    """How one route uses idempotency keys."""

    def __init__(self, enabled=True, required=True, release_on_5xx=True, lease=None, wait=None, heartbeat=True,
                 mode=None):
        self.mode = None if mode is None else _checked_mode(mode)
        self.enabled = enabled
        self.heartbeat = heartbeat
        self.required = required
        self.release_on_5xx = release_on_5xx
        self.lease = lease
        self.wait = wait


class IdempotencyMiddleware:
    """Wraps an ASGI app. `source`: an AsyncConnectionPool, AsyncConnection or async connection factory.
    `routes(scope)` may return RouteOptions per request (None: the defaults, for `methods` only).
    `key_prefix(scope)` adds client-specific attributes to the key, so clients never share results."""

    def __init__(self, app, source, *, lease=30.0, wait=5.0, methods=DEFAULT_METHODS,
                 replay_headers=DEFAULT_REPLAY_HEADERS, required=True, routes=None, key_prefix=None,
                 header="idempotency-key", mode="lease"):
        self.mode = _checked_mode(mode)
        self.app = app
        self.source = _AsyncSource(source)
        self.lease = lease
        self.wait = wait
        self.methods = frozenset(methods)
        self.replay_headers = tuple(h.lower() for h in replay_headers)
        self.required = required
        self.routes = routes
        self.key_prefix = key_prefix
        self.header = header.lower().encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        opts = self.routes(scope) if self.routes else None
        if opts is None:
            opts = RouteOptions(enabled=scope["method"] in self.methods, required=self.required)
        if not opts.enabled:
            return await self.app(scope, receive, send)
        raw = [v.decode("latin-1") for k, v in scope["headers"] if k == self.header]
        if not raw:
            if opts.required:
                return await _problem(send, 400, "missing Idempotency-Key header")
            return await self.app(scope, receive, send)
        key = parse_key(raw[0]) if len(raw) == 1 else None
        if not key:
            return await _problem(send, 400, "Idempotency-Key must be one non-empty structured-field string")
        if self.key_prefix:
            key = self.key_prefix(scope) + key
        body = await _read_body(receive)
        request = fingerprint(scope["method"], scope["path"], body)
        lease = opts.lease or self.lease
        held = None
        try:
            if (opts.mode or self.mode) == "transaction":
                row, held = await aclaim_held(self.source, key, request, lease, opts.wait or self.wait)
            else:
                row = await aclaim(self.source, key, request, lease, opts.wait or self.wait)
        except IdemError as exc:
            return await _error(send, exc)
        step = HeldAsyncStep(self.source, key, row, lease, held) if held else AsyncStep(self.source, key, row, lease)
        if step.replayed:
            return await self._replay(send, step.outcome)
        await self._run(scope, send, step, body, opts)

    async def _run(self, scope, send, step, body, opts):
        if opts.heartbeat:
            step._start_heartbeat()
        scope = dict(scope)
        scope["state"] = dict(scope.get("state") or {}, idem=step)
        sent = False

        async def receive_body():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        response = {"status": 500, "headers": [], "body": bytearray()}

        async def capture(message):
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["headers"] = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                response["body"] += message.get("body", b"")

        try:
            await self.app(scope, receive_body, capture)
        except BaseException as exc:
            await step._finish(exc)
            raise
        status = response["status"]
        if status >= 500 and opts.release_on_5xx:
            await step._finish(None)
            return await _send(send, status, response["headers"], bytes(response["body"]))
        outcome = {"status": status, "headers": self._chosen(response["headers"]),
                   **_encode_body(bytes(response["body"]))}
        try:
            await step.complete(outcome)
        except BaseException as exc:
            await step._finish(exc)
            if isinstance(exc, IdemError):
                return await _error(send, exc)
            raise
        await step._finish(None)
        await _send(send, status, response["headers"], bytes(response["body"]))

    def _chosen(self, headers):
        return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers
                if k.decode("latin-1").lower() in self.replay_headers]

    async def _replay(self, send, outcome):
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in outcome.get("headers", [])]
        headers.append((b"idempotent-replayed", b"true"))
        await _send(send, outcome["status"], headers, _decode_body(outcome))


def _encode_body(body):
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(body).decode("ascii")}


def _decode_body(outcome):
    if "body_base64" in outcome:
        return base64.b64decode(outcome["body_base64"])
    return outcome.get("body", "").encode("utf-8")


async def _read_body(receive):
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send(send, status, headers, body):
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _problem(send, status, title, extra_headers=()):
    body = json.dumps({"title": title, "status": status}, sort_keys=True).encode()
    await _send(send, status, [(b"content-type", b"application/problem+json"), *extra_headers], body)


async def _error(send, exc):
    extra = []
    if exc.http_status in (409, 503):
        extra.append((b"retry-after", str(exc.retry_after or 1).encode()))
    await _problem(send, exc.http_status, str(exc), extra)
