"""The ASGI middleware's mode 'transaction': the claim, the handler's writes and the response in one
transaction on one pooled connection (route /tx of tests/app.py, with a 60 s lease)."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from conftest import record
from idem_client import KeyInFlight
from idem_client.aio import _AsyncSource, aclaim_held
from test_http import post


def orders(dsn, key):
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM orders WHERE key = %s ORDER BY id", (key,))]


def test_write_and_response_commit_together(server, dsn, key):
    first = post(server, key, {"amount": 3}, path="/tx")
    assert first.status_code == 201, first.text
    assert orders(dsn, key) == [first.json()["order"]]
    assert record(dsn, key)[0] == "completed"
    again = post(server, key, {"amount": 3}, path="/tx")
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert orders(dsn, key) == [first.json()["order"]]


@pytest.mark.parametrize("how", [{"x-test-fail": "1"}, {"x-test-status": "502"}, {"x-test-checkpoint": "1"}])
def test_an_end_without_complete_leaves_neither_write_nor_claim(server, dsn, key, how):
    # A handler that raises, answers 5xx, or checkpoints (refused in this mode) after its write.
    failed = post(server, key, {"amount": 4}, path="/tx", headers=how)
    assert failed.status_code >= 500
    assert orders(dsn, key) == []
    assert record(dsn, key) is None, "the claim was rolled back with the write"
    # Under a 60 s lease, only a rolled-back claim lets the retry run at once.
    retry = post(server, key, {"amount": 4}, path="/tx")
    assert retry.status_code == 201, retry.text
    assert "idempotent-replayed" not in retry.headers
    assert len(orders(dsn, key)) == 1


def test_concurrent_retries_run_once(server, dsn, key):
    with ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda _: post(server, key, {"amount": 5}, path="/tx", headers={"x-test-delay": "0.5"}),
                         range(8)))
    assert [r.status_code for r in rs] == [201] * 8, [r.text for r in rs]
    assert len({r.content for r in rs}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in rs) == 7
    assert len(orders(dsn, key)) == 1


def test_slow_handler_kept_alive_past_two_leases(server, dsn, key):
    # Lease 1 s: without the heartbeat's queries the server would end the idle transaction after 1 s.
    r = post(server, key, {"amount": 7}, path="/tx-short", headers={"x-test-delay": "2.6"})
    assert r.status_code == 201, r.text
    assert len(orders(dsn, key)) == 1


def test_holder_idle_for_a_lease_loses_the_key(server, dsn, key):
    with ThreadPoolExecutor(1) as ex:
        stalled = ex.submit(post, server, key, {"amount": 8}, "/tx-short",
                            {"x-test-stall": "1", "x-test-delay": "4"})
        time.sleep(0.3)
        # Only the server ending the idle transaction lets this run (not replay) while the first sleeps.
        taken = post(server, key, {"amount": 8}, path="/tx-short")
        assert taken.status_code == 201, taken.text
        assert "idempotent-replayed" not in taken.headers
        assert stalled.result().status_code >= 500
    assert orders(dsn, key) == [taken.json()["order"]]
    again = post(server, key, {"amount": 8}, path="/tx-short")
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == taken.content


def test_sigkill_before_commit_leaves_nothing(start_server, dsn, key):
    srv = start_server(dsn)
    with ThreadPoolExecutor(1) as ex:
        pending = ex.submit(post, srv, key, {"amount": 6}, "/tx", {"x-test-delay": "30"})
        deadline = time.monotonic() + 10
        while not orders_in_flight(dsn):
            assert time.monotonic() < deadline, "the handler never paused after its write"
            time.sleep(0.05)
        srv.kill()
        with pytest.raises(Exception):
            pending.result()
    fresh = start_server(dsn)
    retry = post(fresh, key, {"amount": 6}, path="/tx")
    assert retry.status_code == 201, retry.text
    assert "idempotent-replayed" not in retry.headers
    assert orders(dsn, key) == [retry.json()["order"]]


def orders_in_flight(dsn):
    """Whether some session sits in a transaction that claimed a key (the handler's pause)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'"
                            " AND datname = current_database()").fetchone()[0] > 0


def test_one_shared_connection_is_refused(dsn):
    async def attempt():
        conn = await psycopg.AsyncConnection.connect(dsn)
        try:
            with pytest.raises(TypeError):
                await aclaim_held(_AsyncSource(conn), "shared-connection", None, 5, 1)
        finally:
            await conn.close()

    asyncio.run(attempt())


def test_held_claim_sets_no_wait_and_the_idle_timeout_for_its_transaction_only(dsn, key):
    # The claim's one statement sets both (its lease, 2.5 s, in milliseconds); a second claim of the held
    # key is refused at once; the settings end with the transaction.
    async def attempt():
        source = _AsyncSource(lambda: psycopg.AsyncConnection.connect(dsn))
        row, held = await aclaim_held(source, key, None, 2.5, 1)
        cm, conn, tx = held
        try:
            assert row[0] == "run"
            started = time.monotonic()
            with pytest.raises(KeyInFlight):
                await aclaim_held(source, key, None, 2.5, 0)
            assert time.monotonic() - started < 1
            cur = await conn.execute("SELECT current_setting('idem.wait_timeout'),"
                                     " current_setting('idle_in_transaction_session_timeout')")
            assert await cur.fetchone() == ("0", "2500ms")
        finally:
            error = RuntimeError("roll back")
            await tx.__aexit__(type(error), error, None)
        cur = await conn.execute("SELECT current_setting('idle_in_transaction_session_timeout')")
        assert (await cur.fetchone())[0] == "0"
        await cm.__aexit__(None, None, None)

    asyncio.run(attempt())
