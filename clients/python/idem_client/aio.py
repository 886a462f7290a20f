"""`aonce` on an asyncio psycopg connection, pool or connection factory."""

import asyncio
import contextlib
import time

import psycopg
from psycopg.types.json import Jsonb

from . import _common as c
from .errors import KeyInFlight, StaleToken, translated

try:
    import psycopg_pool
except ImportError:  # psycopg_pool is optional
    psycopg_pool = None


class _AsyncSource:
    """Hands out async connections: borrowed from a pool, made by a factory, or one shared connection."""

    def __init__(self, source):
        self.shared = False
        self.lock = None
        if psycopg_pool is not None and isinstance(source, psycopg_pool.AsyncConnectionPool):
            self.acquire = source.connection
        elif isinstance(source, psycopg.AsyncConnection):
            # One connection serves every step: the heartbeat task and the work take turns, each with
            # a whole transaction.
            self.shared = True
            self.lock = asyncio.Lock()
            self.acquire = lambda: contextlib.nullcontext(source)
        elif callable(source):
            self.acquire = lambda: _closing(source)
        else:
            raise TypeError("source must be a psycopg AsyncConnection, an AsyncConnectionPool"
                            " or an async connection factory")

    async def run(self, key, sql, params):
        """Run one statement in its own transaction and return its first row."""
        if self.lock is not None:
            async with self.lock:
                return await self._run(key, sql, params)
        return await self._run(key, sql, params)

    async def _run(self, key, sql, params):
        async with self.acquire() as conn:
            with translated(key):
                async with conn.transaction():
                    cur = await conn.execute(sql, params)
                    return await cur.fetchone()


@contextlib.asynccontextmanager
async def _closing(factory):
    conn = await factory()
    try:
        yield conn
    finally:
        await conn.close()


async def _retry_in_use(wait, attempt):
    """Await `attempt()` again while it finds the key in use (IK409), pausing with backoff and holding
    nothing in between, for at most `wait` seconds; then its KeyInFlight goes out with retry_after = 1."""
    deadline = time.monotonic() + wait
    delays = c.backoff_delays()
    while True:
        try:
            return await attempt()
        except KeyInFlight as exc:
            pause = next(delays)
            if time.monotonic() + pause > deadline:
                exc.retry_after = 1
                raise
            await asyncio.sleep(pause)


async def aclaim(source, key, request, lease, wait):
    """Claim the key, backing off outside any connection while it is in flight, for at most `wait` seconds."""
    req = None if request is None else Jsonb(request)
    return await _retry_in_use(wait, lambda: source.run(key, c.CLAIM_SQL, (key, req, lease)))


async def aclaim_held(source, key, request, lease, wait):
    """Mode 'transaction': claim the key in a transaction that stays open on a connection of its own.

    Returns (row, held): `held` is (connection context, connection, transaction) when the claim runs,
    None when it replays (that transaction is ended first).  A key in flight is retried as by `aclaim`,
    holding no connection between attempts."""
    if source.shared:
        raise TypeError("mode 'transaction' needs a pool or a connection factory: it keeps a connection"
                        " for the whole of the work")
    req = None if request is None else Jsonb(request)

    async def attempt():
        cm = source.acquire()
        conn = await cm.__aenter__()
        tx = conn.transaction()
        try:
            with translated(key):
                await tx.__aenter__()
                cur = await conn.execute(c.CLAIM_HELD_SQL, (str(max(1, round(lease * 1000))), key, req, lease))
                row = await cur.fetchone()
        except BaseException as exc:
            # Give the connection back before any pause, so that the holder can finish on it.
            with contextlib.suppress(Exception):
                await tx.__aexit__(type(exc), exc, None)
            with contextlib.suppress(Exception):
                await cm.__aexit__(None, None, None)
            raise
        return row, (cm, conn, tx)

    row, held = await _retry_in_use(wait, attempt)
    if row[0] == "replay":
        cm, _, tx = held
        await tx.__aexit__(None, None, None)
        await cm.__aexit__(None, None, None)
        return row, None
    return row, held


class AsyncStep:
    """What the work gets: the claim, its recovery, checkpoints, and the transaction complete joins."""

    def __init__(self, source, key, row, lease):
        self._source = source
        self.key = key
        self.token = row[1]
        self.replayed = row[0] == "replay"
        self.outcome = row[2] if self.replayed else None
        self.recovery = None if self.replayed else c.recovery_of(row)
        self.lease = lease
        self.completed = self.replayed
        self.lost = None
        self._conn_cm = None
        self._conn = None
        self._tx = None
        self._heartbeat = None

    async def connection(self):
        """The connection whose open transaction `complete` joins: do the application's writes on it."""
        if self._conn is None:
            self._conn_cm = self._source.acquire()
            self._conn = await self._conn_cm.__aenter__()
            self._tx = self._conn.transaction()
            await self._tx.__aenter__()
        return self._conn

    async def checkpoint(self, name, data=None):
        """Record a recovery point in its own transaction, so that it survives a crash of this process."""
        await self._source.run(self.key, c.CHECKPOINT_SQL, (self.key, self.token, name, Jsonb(data)))

    async def extend(self):
        """Renew the lease to now + lease."""
        return (await self._source.run(self.key, c.EXTEND_SQL, (self.key, self.token, self.lease)))[0]

    async def complete(self, outcome):
        """Record the outcome in the transaction of `connection()` and commit it; returns it as retries see it."""
        value = c.as_json(outcome)
        await self._stop_heartbeat()
        conn = await self.connection()
        with translated(self.key):
            await conn.execute(c.COMPLETE_SQL, (self.key, self.token, Jsonb(value)))
        tx, self._tx = self._tx, None
        await tx.__aexit__(None, None, None)
        self.completed = True
        self.outcome = value
        return value

    def _start_heartbeat(self):
        """Beat every third of the lease until stopped, or until a beat finds the claim lost (`lost`)."""
        async def beat():
            while True:
                await asyncio.sleep(self.lease / 3)
                try:
                    await self._beat()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.lost = exc
                    return

        self._heartbeat = asyncio.ensure_future(beat())

    async def _beat(self):
        """Renew the lease; raises only when the claim is lost (StaleToken)."""
        if self._source.shared and self._tx is not None:
            return  # the shared connection is in the work's transaction
        try:
            await self.extend()
        except StaleToken:
            raise
        except Exception:  # a failed beat is retried at the next third of the lease
            return

    async def _stop_heartbeat(self):
        if self._heartbeat is not None:
            task, self._heartbeat = self._heartbeat, None
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _finish(self, exc):
        """Roll back the open transaction and give the key back unless it was completed."""
        await self._end_transaction(exc)
        if not self.completed:
            with contextlib.suppress(Exception):
                await self._source.run(self.key, c.RELEASE_SQL, (self.key, self.token))

    async def _end_transaction(self, exc):
        """Stop the heartbeat, roll back whatever is still open and give the connection back."""
        await self._stop_heartbeat()
        if self._tx is not None:
            tx, self._tx = self._tx, None
            # psycopg commits a transaction block left without an exception: name one, so it rolls back
            error = exc if exc is not None else RuntimeError("idem: the work ended without complete")
            with contextlib.suppress(Exception):
                await tx.__aexit__(type(error), error, None)
        if self._conn_cm is not None:
            cm, self._conn_cm, self._conn = self._conn_cm, None, None
            with contextlib.suppress(Exception):
                await cm.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def aonce(source, key, request=None, *, lease=30.0, wait=10.0, heartbeat=True):
    """The async `once`: claim, then the block replays `step.outcome` or works and awaits
    `step.complete(result)`. Any exception releases the key; so does leaving without complete."""
    src = source if isinstance(source, _AsyncSource) else _AsyncSource(source)
    row = await aclaim(src, key, request, lease, wait)
    step = AsyncStep(src, key, row, lease)
    if step.replayed:
        yield step
        return
    if heartbeat:
        step._start_heartbeat()
    try:
        yield step
    except BaseException as exc:
        await step._finish(exc)
        raise
    await step._finish(None)
    if not step.completed:
        raise RuntimeError(f"the block of idempotency key {key!r} ended without step.complete(); key released")


class HeldAsyncStep(AsyncStep):
    """Mode 'transaction': the claim, the work's writes on `connection()` and the outcome in one
    transaction, committed by `complete`; any other end rolls all of it back, the claim included."""

    def __init__(self, source, key, row, lease, held):
        super().__init__(source, key, row, lease)
        self._conn_cm, self._conn, self._tx = held

    async def checkpoint(self, name, data=None):
        """Not in mode 'transaction': nothing commits before `complete`, so a crash would roll it back."""
        raise RuntimeError("idem: checkpoint needs mode 'lease' (in mode 'transaction' nothing commits"
                           " before complete, so a crash would roll the checkpoint back)")

    async def _beat(self):
        """Reset the server's idle timer of the held transaction; raises when the connection is gone,
        since complete would fail on it too."""
        await self._conn.execute("SELECT 1")

    async def _finish(self, exc):
        """Roll back whatever is still open: the claim goes with it, so there is nothing to release."""
        await self._end_transaction(exc)
