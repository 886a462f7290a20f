"""The ASGI middleware under FastAPI and a real uvicorn server on 127.0.0.1."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from conftest import record


def post(server, key, body, path="/charges", headers=None, timeout=30):
    h = dict(headers or {})
    if key is not None:
        h["Idempotency-Key"] = '"' + key + '"'
    return httpx.post(server.url + path, json=body, headers=h, timeout=timeout)


def orders(dsn, key):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM orders WHERE key = %s", (key,)).fetchone()[0]


def test_first_call_and_replay(server, provider, dsn, key):
    before = provider.calls
    first = post(server, key, {"amount": 2500, "currency": "eur"})
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = post(server, key, {"currency": "eur", "amount": 2500})  # the same JSON, keys in another order
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["content-type"] == first.headers["content-type"]
    assert provider.calls == before + 1
    assert orders(dsn, key) == 1


def test_concurrent_retries_run_once(server, provider, dsn, key):
    before = provider.calls
    with ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda _: post(server, key, {"amount": 7}, headers={"X-Test-Delay": "1"}), range(8)))
    assert [r.status_code for r in rs] == [201] * 8, [r.text for r in rs]
    assert len({r.content for r in rs}) == 1, "every caller gets the same body"
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in rs) == 7
    assert provider.calls == before + 1
    assert orders(dsn, key) == 1


def test_same_key_other_body_is_422(server, key):
    assert post(server, key, {"amount": 1}).status_code == 201
    r = post(server, key, {"amount": 2})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"


def test_missing_or_malformed_key_is_400(server, key):
    r = post(server, None, {"amount": 1})
    assert r.status_code == 400
    assert "missing" in r.json()["title"]
    bare = httpx.post(server.url + "/charges", json={"amount": 1}, headers={"Idempotency-Key": key})
    assert bare.status_code == 400, "a key that is not a structured-field string"
    assert post(server, None, {}, path="/optional").status_code == 200, "a route where the key is optional"


def test_handler_that_raises_releases_the_key(server, provider, dsn, key):
    before = provider.calls
    r = post(server, key, {"amount": 3}, headers={"X-Test-Fail": "1"})
    assert r.status_code == 500
    assert record(dsn, key)[0] == "lapsed", "released at once"
    r5 = post(server, key, {"amount": 3}, headers={"X-Test-Status": "502"})
    assert r5.status_code == 502 and "idempotent-replayed" not in r5.headers
    assert record(dsn, key)[0] == "lapsed", "a 5xx response releases too"
    r6 = post(server, key, {"amount": 3}, headers={"X-Test-Status-After-Write": "503"})
    assert r6.status_code == 503 and record(dsn, key)[0] == "lapsed"
    assert orders(dsn, key) == 0, "the writes of a route that answered 5xx roll back with the released key"
    ok = post(server, key, {"amount": 3})
    assert ok.status_code == 201 and "idempotent-replayed" not in ok.headers, "the retry runs"
    assert ok.json()["charge"] == f"ch_{before + 1}", "and resumes from the checkpoint"
    assert provider.calls == before + 1
    assert orders(dsn, key) == 1


def test_sigkill_after_the_external_call(start_server, provider, dsn, key):
    first = start_server(dsn, lease=2.0)
    before = provider.calls
    hung = {}
    t = threading.Thread(target=lambda: hung.setdefault("r", _swallow(
        lambda: post(first, key, {"amount": 9}, headers={"X-Test-Hang": "1"}, timeout=60))))
    t.start()
    deadline = time.monotonic() + 30
    while (record(dsn, key) or (None, None, None))[2] != "charged":
        assert time.monotonic() < deadline, "the checkpoint never came"
        time.sleep(0.05)
    assert provider.calls == before + 1
    first.kill()
    t.join()
    second = start_server(dsn, lease=2.0)
    r = post(second, key, {"amount": 9})
    assert r.status_code == 201, r.text
    assert r.json()["charge"] == f"ch_{before + 1}", "the retry reuses the checkpointed charge"
    assert provider.calls == before + 1, "one external effect"
    assert orders(dsn, key) == 1
    replay = post(second, key, {"amount": 9})
    assert replay.content == r.content and replay.headers["idempotent-replayed"] == "true"


def wait_for(dsn, key, status):
    """Wait until the key's record has this status."""
    deadline = time.monotonic() + 20
    while (record(dsn, key) or (None,))[0] != status:
        assert time.monotonic() < deadline, f"{key} never became {status}"
        time.sleep(0.05)


def _swallow(fn):
    try:
        return fn()
    except httpx.TransportError as exc:
        return exc


def test_slow_handler_kept_alive_past_two_leases(server, provider, dsn, key):
    """/slow has a lease of 1.5 s; the handler takes 4.5 s. A retry at 3.5 s must not take the key over."""
    before = provider.calls
    with ThreadPoolExecutor(2) as ex:
        slow = ex.submit(post, server, key, {"amount": 4}, "/slow", {"X-Test-Delay": "4.5"})
        wait_for(dsn, key, "claimed")
        time.sleep(3.5)
        assert record(dsn, key)[0] == "claimed", "the lease is still live past two leases"
        retry = ex.submit(post, server, key, {"amount": 4}, "/slow")
        first, second = slow.result(), retry.result()
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    assert second.status_code == 201 and second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert provider.calls == before + 1


def test_in_flight_past_the_wait_is_409(server, dsn, key):
    with ThreadPoolExecutor(2) as ex:
        slow = ex.submit(post, server, key, {"amount": 5}, "/charges", {"X-Test-Delay": "8"})
        wait_for(dsn, key, "claimed")
        r = post(server, key, {"amount": 5})
        assert r.status_code == 409 and r.headers["retry-after"] == "1"
        assert slow.result().status_code == 201


def test_through_pgbouncer(start_server, bouncer_dsn, dsn, provider, key):
    server = start_server(bouncer_dsn)
    before = provider.calls
    with ThreadPoolExecutor(6) as ex:
        rs = list(ex.map(lambda _: post(server, key, {"amount": 6}, headers={"X-Test-Delay": "0.5"}), range(6)))
    assert [r.status_code for r in rs] == [201] * 6
    assert len({r.content for r in rs}) == 1
    assert provider.calls == before + 1
    assert orders(dsn, key) == 1


def test_arbiter_down_is_503(start_server, arbiter_dsn, provider, key):
    server = start_server(arbiter_dsn)
    before = provider.calls
    r = post(server, key, {"amount": 1})
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert "DynamoDB" in r.json()["title"]
    assert provider.calls == before


def test_stale_holder_refused(server, provider, dsn, key):
    """/stale has a lease of 0.5 s and no heartbeat: a retry takes the key over from a slow handler,
    whose complete is then refused (IK412, answered 409) and whose writes roll back."""
    before = provider.calls
    with ThreadPoolExecutor(2) as ex:
        slow = ex.submit(post, server, key, {"amount": 8}, "/stale", {"X-Test-Delay": "4"})
        deadline = time.monotonic() + 20
        while (record(dsn, key) or (None, None, None))[2] != "charged":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)
        retry = post(server, key, {"amount": 8}, "/stale")
        first = slow.result()
    assert retry.status_code == 201 and "idempotent-replayed" not in retry.headers, "the retry took over"
    assert first.status_code == 409
    assert "does not hold" in first.json()["title"]
    assert provider.calls == before + 1, "the retry resumed from the checkpoint"
    assert orders(dsn, key) == 1, "the stale holder's order rolled back"
    replay = post(server, key, {"amount": 8}, "/stale")
    assert replay.content == retry.content


def test_invalid_key_is_400(server):
    r = post(server, "x" * 300, {"amount": 1})
    assert r.status_code == 400
    assert "too long" in r.json()["title"]
    assert post(server, "", {"amount": 1}).status_code == 400
