"""The library on a real cluster: once (sync), aonce (async) and @idempotent, without HTTP."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from conftest import record
from idem_client import (ArbiterUnavailable, KeyInFlight, Recovery, RequestMismatch, StaleToken, aonce,
                         idempotent, once)


@pytest.fixture
def pool(dsn):
    with ConnectionPool(dsn, min_size=1, max_size=4, kwargs={"prepare_threshold": None}) as p:
        yield p


def test_sync_first_call_and_replay(pool, key):
    runs = []
    with once(pool, key, {"sku": 2}) as step:
        assert not step.replayed and step.recovery is None
        runs.append(1)
        step.conn.execute("CREATE TEMP TABLE IF NOT EXISTS t (x int)")
        first = step.complete({"status": 201, "order": (1, 2)})
    assert first == {"status": 201, "order": [1, 2]}, "the first caller gets the value as JSON"
    with once(pool, key, {"sku": 2}) as step:
        assert step.replayed
        assert step.outcome == first
    assert runs == [1]
    assert record(pool.conninfo, key)[0] == "completed"


def test_sync_writes_commit_with_the_outcome(pool, key, dsn):
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS lib_orders (key text)")
    with pytest.raises(ValueError):
        with once(pool, key) as step:
            step.conn.execute("INSERT INTO lib_orders VALUES (%s)", (key,))
            raise ValueError("after the write, before complete")
    with once(pool, key) as step:
        assert not step.replayed, "the exception released the key"
        step.conn.execute("INSERT INTO lib_orders VALUES (%s)", (key,))
        step.complete("ok")
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT count(*) FROM lib_orders WHERE key = %s", (key,)).fetchone()[0] == 1


def test_leaving_without_complete_rolls_the_writes_back(pool, key, dsn, caplog):
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS lib_orders (key text)")
    with pytest.raises(RuntimeError, match="without step.complete"):
        with once(pool, key) as step:
            step.conn.execute("INSERT INTO lib_orders VALUES (%s)", (key,))

    async def left_early():
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as apool:
            with pytest.raises(RuntimeError, match="without step.complete"):
                async with aonce(apool, key + "-a") as astep:
                    conn = await astep.connection()
                    await conn.execute("INSERT INTO lib_orders VALUES (%s)", (key + "-a",))
    asyncio.run(left_early())
    with psycopg.connect(dsn) as c:
        n = c.execute("SELECT count(*) FROM lib_orders WHERE key IN (%s, %s)", (key, key + "-a")).fetchone()[0]
    assert n == 0, "the key was released, so the block's writes must not commit"
    returned_open = [r.getMessage() for r in caplog.records if "returned connection" in r.getMessage()]
    assert not returned_open, "the block's transaction was rolled back before its connection went back to the pool"
    assert record(pool.conninfo, key)[0] == "lapsed"


def test_sync_recovery_and_mismatch(pool, key):
    with pytest.raises(RuntimeError):
        with once(pool, key, {"a": 1}) as step:
            step.checkpoint("charged", {"charge": "ch_9"})
            raise RuntimeError("crash after the external call")
    with pytest.raises(RequestMismatch) as err:
        with once(pool, key, {"a": 2}):
            pass
    assert err.value.http_status == 422 and err.value.sqlstate == "IK422"
    with once(pool, key, {"a": 1}) as step:
        assert step.recovery == Recovery("charged", {"charge": "ch_9"})
        step.complete({"charge": step.recovery.data["charge"]})


def test_sync_stale_holder_refused(pool, key):
    with pytest.raises(StaleToken) as err:
        with once(pool, key, lease=0.3, heartbeat=False) as slow:
            time.sleep(1.0)
            with once(pool, key) as retry:
                assert not retry.replayed and retry.token > slow.token
                retry.complete("retry")
            slow.complete("slow")
    assert err.value.sqlstate == "IK412" and err.value.http_status == 409
    with once(pool, key) as step:
        assert step.outcome == "retry"


def test_sync_heartbeat_keeps_the_lease(pool, key):
    with once(pool, key, lease=1.5) as step:
        time.sleep(4.0)  # more than two leases
        with pytest.raises(KeyInFlight) as err:
            with once(pool, key, wait=0.3):
                pass
        assert err.value.http_status == 409 and err.value.retry_after == 1
        step.complete("kept")
    assert step.lost is None


def test_sync_small_pool_no_deadlock(dsn):
    """60 concurrent calls over 6 keys on a pool of 3: waiters back off outside the pool."""
    runs = {}
    lock = threading.Lock()
    prefix = f"np-{time.time_ns()}-"
    with ConnectionPool(dsn, min_size=1, max_size=3, timeout=30, kwargs={"prepare_threshold": None}) as p:

        @idempotent(p, key=lambda i: prefix + str(i % 6), request=lambda i: {"k": i % 6}, lease=5, wait=30)
        def work(i):
            with lock:
                runs[i % 6] = runs.get(i % 6, 0) + 1
            time.sleep(0.2)
            return {"k": i % 6, "ran": True}

        with ThreadPoolExecutor(20) as ex:
            results = list(ex.map(work, range(60)))
    assert runs == {k: 1 for k in range(6)}
    assert results == [{"k": i % 6, "ran": True} for i in range(60)]


def test_sync_decorator_with_step_and_factory(dsn, key):
    calls = []

    @idempotent(lambda: psycopg.connect(dsn), key="order_id")
    def handle(order_id, amount, step):
        calls.append(step.token)
        return {"order": order_id, "amount": amount}

    assert handle(key, 5) == {"order": key, "amount": 5}
    assert handle(key, 5) == {"order": key, "amount": 5}
    with pytest.raises(RequestMismatch):
        handle(key, 6)
    assert len(calls) == 1


def test_sync_through_pgbouncer(bouncer_dsn):
    """Transaction pooling: 40 calls over 4 keys through pgbouncer, one run per key."""
    runs = []
    prefix = f"pgb-{time.time_ns()}-"
    with ConnectionPool(bouncer_dsn, min_size=1, max_size=8, kwargs={"prepare_threshold": None}) as p:

        @idempotent(p, key=lambda i: prefix + str(i % 4), request=lambda i: None, lease=5, wait=30)
        def work(i):
            runs.append(i % 4)
            time.sleep(0.1)
            return i % 4

        with ThreadPoolExecutor(16) as ex:
            results = list(ex.map(work, range(40)))
    assert sorted(runs) == [0, 1, 2, 3]
    assert results == [i % 4 for i in range(40)]


def test_sync_arbiter_down_is_503(arbiter_dsn, key):
    with pytest.raises(ArbiterUnavailable) as err:
        with once(lambda: psycopg.connect(arbiter_dsn), key, {"n": 1}):
            pytest.fail("the block must not run")
    assert err.value.sqlstate == "IK503" and err.value.http_status == 503


def test_async_once(dsn, key):
    async def main():
        async with AsyncConnectionPool(dsn, min_size=1, max_size=3, kwargs={"prepare_threshold": None}) as p:
            async with aonce(p, key, {"a": 1}, lease=0.6) as step:
                assert not step.replayed
                await step.checkpoint("half", {"n": 1})
                await asyncio.sleep(2.0)  # the heartbeat task extends the lease
                conn = await step.connection()
                await conn.execute("SELECT 1")
                first = await step.complete({"done": (1,)})
            assert step.lost is None
            async with aonce(p, key, {"a": 1}) as again:
                assert again.replayed and again.outcome == first == {"done": [1]}
            with pytest.raises(RequestMismatch):
                async with aonce(p, key, {"a": 2}):
                    pass

    asyncio.run(main())


def test_async_release_recovery_and_stale(dsn, key):
    async def main():
        factory = lambda: psycopg.AsyncConnection.connect(dsn)  # noqa: E731
        with pytest.raises(KeyError):
            async with aonce(factory, key) as step:
                await step.checkpoint("charged", {"charge": "ch_a"})
                raise KeyError("boom")
        with pytest.raises(StaleToken):
            async with aonce(factory, key, lease=0.3, heartbeat=False) as slow:
                assert slow.recovery == Recovery("charged", {"charge": "ch_a"})
                await asyncio.sleep(1.0)
                async with aonce(factory, key) as retry:
                    assert retry.recovery == Recovery("charged", {"charge": "ch_a"})
                    await retry.complete("retry")
                await slow.checkpoint("late", None)

    asyncio.run(main())


def test_async_decorator(dsn, key):
    calls = []

    async def main():
        async with AsyncConnectionPool(dsn, min_size=1, max_size=4, kwargs={"prepare_threshold": None}) as p:

            @idempotent(p, key=lambda n: key, lease=5, wait=20)
            async def work(n):
                calls.append(n)
                await asyncio.sleep(0.3)
                return {"n": n}

            return await asyncio.gather(*(work(1) for _ in range(8)))

    assert asyncio.run(main()) == [{"n": 1}] * 8
    assert calls == [1]


def test_async_arbiter_down_is_503(arbiter_dsn, key):
    async def main():
        async with aonce(lambda: psycopg.AsyncConnection.connect(arbiter_dsn), key):
            pytest.fail("the block must not run")

    with pytest.raises(ArbiterUnavailable) as err:
        asyncio.run(main())
    assert err.value.http_status == 503


@pytest.mark.parametrize("autocommit", [True, False])
def test_sync_single_connection(dsn, key, autocommit):
    with psycopg.connect(dsn, autocommit=autocommit) as conn:
        with once(conn, key, {"n": 1}, lease=0.6) as step:
            step.checkpoint("half", 1)
            time.sleep(1.5)  # the heartbeat shares the connection
            step.conn.execute("SELECT 1")
            step.complete({"n": 1})
        assert step.lost is None
        with once(conn, key, {"n": 1}) as again:
            assert again.replayed and again.outcome == {"n": 1}
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


@pytest.mark.parametrize("autocommit", [True, False])
def test_async_single_connection(dsn, key, autocommit):
    async def main():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit) as conn:
            async with aonce(conn, key, lease=0.6) as step:
                await step.checkpoint("half", 1)
                await asyncio.sleep(1.5)
                await (await step.connection()).execute("SELECT 1")
                await step.complete([1])
            assert step.lost is None
            async with aonce(conn, key) as again:
                assert again.replayed and again.outcome == [1]

    asyncio.run(main())
