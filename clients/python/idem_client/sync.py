"""`once` and `idempotent` on a synchronous psycopg connection, pool or connection factory."""

import contextlib
import functools
import inspect
import threading
import time

import psycopg
from psycopg.types.json import Jsonb

from . import _common as c
from .errors import KeyInFlight, StaleToken, translated

try:
    import psycopg_pool
except ImportError:  # psycopg_pool is optional
    psycopg_pool = None


class _Source:
    """Hands out connections: borrowed from a pool, made by a factory, or one shared connection."""

    def __init__(self, source):
        self.shared = False
        self.lock = contextlib.nullcontext()
        if psycopg_pool is not None and isinstance(source, psycopg_pool.ConnectionPool):
            self.acquire = source.connection
        elif isinstance(source, psycopg.Connection):
            # One connection serves every step: the heartbeat thread and the work take turns, each
            # with a whole transaction.
            self.shared = True
            self.lock = threading.RLock()
            self.acquire = lambda: contextlib.nullcontext(source)
        elif callable(source):
            self.acquire = lambda: contextlib.closing(source())
        else:
            raise TypeError("source must be a psycopg Connection, a ConnectionPool or a connection factory")

    def run(self, key, sql, params):
        """Run one statement in its own transaction and return its first row."""
        with self.lock, self.acquire() as conn, translated(key):
            with conn.transaction():
                return conn.execute(sql, params).fetchone()


def claim(source, key, request, lease, wait):
    """Claim the key, backing off outside any connection while it is in flight, for at most `wait` seconds."""
    deadline = time.monotonic() + wait
    delays = c.backoff_delays()
    req = None if request is None else Jsonb(request)
    while True:
        try:
            return source.run(key, c.CLAIM_SQL, (key, req, lease))
        except KeyInFlight as exc:
            pause = next(delays)
            if time.monotonic() + pause > deadline:
                exc.retry_after = 1
                raise
            time.sleep(pause)


class Step:
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

    @property
    def conn(self):
        """The connection whose open transaction `complete` joins: do the application's writes on it."""
        if self._conn is None:
            self._conn_cm = self._source.acquire()
            self._conn = self._conn_cm.__enter__()
            self._tx = self._conn.transaction()
            self._tx.__enter__()
        return self._conn

    def checkpoint(self, name, data=None):
        """Record a recovery point in its own transaction, so that it survives a crash of this process."""
        self._source.run(self.key, c.CHECKPOINT_SQL, (self.key, self.token, name, Jsonb(data)))

    def extend(self):
        """Renew the lease to now + lease."""
        return self._source.run(self.key, c.EXTEND_SQL, (self.key, self.token, self.lease))[0]

    def complete(self, outcome):
        """Record the outcome in the transaction of `conn` and commit it; returns it as retries will see it."""
        value = c.as_json(outcome)
        self._stop_heartbeat()
        conn = self.conn
        with translated(self.key):
            conn.execute(c.COMPLETE_SQL, (self.key, self.token, Jsonb(value)))
        tx, self._tx = self._tx, None
        tx.__exit__(None, None, None)
        self.completed = True
        self.outcome = value
        return value

    def _start_heartbeat(self):
        stop = threading.Event()

        def beat():
            while not stop.wait(self.lease / 3):
                if self._source.shared and self._tx is not None:
                    continue  # the shared connection is in the work's transaction
                try:
                    self.extend()
                except StaleToken as exc:
                    self.lost = exc
                    return
                except Exception:  # a failed beat is retried at the next third of the lease
                    continue

        thread = threading.Thread(target=beat, name=f"idem-heartbeat-{self.key}", daemon=True)
        thread.start()
        self._heartbeat = (stop, thread)

    def _stop_heartbeat(self):
        if self._heartbeat is not None:
            stop, thread = self._heartbeat
            self._heartbeat = None
            stop.set()
            thread.join()

    def _finish(self, exc):
        """Roll back the open transaction and give the key back unless it was completed."""
        self._stop_heartbeat()
        if self._tx is not None:
            tx, self._tx = self._tx, None
            # psycopg commits a transaction block left without an exception: name one, so it rolls back
            error = exc if exc is not None else RuntimeError("idem: the work ended without complete")
            with contextlib.suppress(Exception):
                tx.__exit__(type(error), error, None)
        if self._conn_cm is not None:
            cm, self._conn_cm, self._conn = self._conn_cm, None, None
            with contextlib.suppress(Exception):
                cm.__exit__(None, None, None)
        if not self.completed:
            with contextlib.suppress(Exception):
                self._source.run(self.key, c.RELEASE_SQL, (self.key, self.token))


@contextlib.contextmanager
def once(source, key, request=None, *, lease=30.0, wait=10.0, heartbeat=True):
    """Claim `key` for `request`; the block gets a Step: replay `step.outcome` if `step.replayed`, else do the
    work and call `step.complete(result)`. Any exception releases the key; so does leaving without complete."""
    src = _Source(source)
    row = claim(src, key, request, lease, wait)
    step = Step(src, key, row, lease)
    if step.replayed:
        yield step
        return
    if heartbeat:
        step._start_heartbeat()
    try:
        yield step
    except BaseException as exc:
        step._finish(exc)
        raise
    step._finish(None)
    if not step.completed:
        raise RuntimeError(f"the block of idempotency key {key!r} ended without step.complete(); key released")


def _key_and_request(fn, key, request, args, kwargs):
    """The key and request of one call of a decorated function."""
    bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    arguments = {k: v for k, v in bound.arguments.items() if k != "step"}
    if callable(key):
        k = key(*args, **kwargs)
    else:
        k = str(arguments[key])
    if request is None:
        req = c.as_json(arguments) if _jsonable(arguments) else None
    elif callable(request):
        req = request(*args, **kwargs)
    else:
        req = arguments[request]
    return k, req


def _jsonable(value):
    try:
        c.as_json(value)
        return True
    except (TypeError, ValueError):
        return False


def idempotent(source, *, key, request=None, lease=30.0, wait=10.0, heartbeat=True):
    """Decorator: the function runs once per key and every call gets its result (as JSON). `key` and
    `request` are callables of the call's arguments or names of an argument; `request` defaults to all
    arguments. A function with a parameter `step` gets the Step (recovery, checkpoint, conn)."""

    def decorate(fn):
        wants_step = "step" in inspect.signature(fn).parameters
        if inspect.iscoroutinefunction(fn):
            from .aio import aonce

            @functools.wraps(fn)
            async def async_wrapper(*args, **kwargs):
                k, req = _key_and_request(fn, key, request, args, kwargs)
                async with aonce(source, k, req, lease=lease, wait=wait, heartbeat=heartbeat) as step:
                    if step.replayed:
                        return step.outcome
                    if wants_step:
                        kwargs["step"] = step
                    return await step.complete(await fn(*args, **kwargs))

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            k, req = _key_and_request(fn, key, request, args, kwargs)
            with once(source, k, req, lease=lease, wait=wait, heartbeat=heartbeat) as step:
                if step.replayed:
                    return step.outcome
                if wants_step:
                    kwargs["step"] = step
                return step.complete(fn(*args, **kwargs))

        return wrapper

    return decorate
