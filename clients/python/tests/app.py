"""The FastAPI service the tests run under uvicorn: it charges a card through a fake provider (which
counts its calls) and records an order, through IdempotencyMiddleware on an AsyncConnectionPool."""

import asyncio
import os

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool

from idem_client.asgi import IdempotencyMiddleware, RouteOptions

DSN = os.environ["IDEM_APP_DSN"]
PROVIDER = os.environ["IDEM_APP_PROVIDER"]
LEASE = float(os.environ.get("IDEM_APP_LEASE", "2"))

pool = AsyncConnectionPool(DSN, open=False, min_size=1, max_size=int(os.environ.get("IDEM_APP_POOL", "4")),
                           kwargs={"prepare_threshold": None})
app = FastAPI()


def routes(scope):
    """POST routes need a key; /slow has a short lease, so only the heartbeat keeps it; /stale has a
    short lease and no heartbeat."""
    if scope["method"] != "POST":
        return RouteOptions(enabled=False)
    if scope["path"] == "/optional":
        return RouteOptions(required=False)
    if scope["path"] == "/stale":
        return RouteOptions(lease=0.5, heartbeat=False)
    if scope["path"] == "/slow":
        return RouteOptions(lease=1.5, wait=10.0)
    if scope["path"] == "/tx":
        # A 60 s lease: a retry that runs at once shows the claim was rolled back, not left to lapse.
        return RouteOptions(mode="transaction", lease=60.0, wait=10.0)
    if scope["path"] == "/tx-short":
        return RouteOptions(mode="transaction", lease=1.0, wait=10.0)
    return None


app.add_middleware(IdempotencyMiddleware, source=pool, lease=LEASE, wait=6.0, routes=routes)


@app.on_event("startup")
async def startup():
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS orders"
                           " (id serial PRIMARY KEY, key text, charge text, amount int)")


@app.on_event("shutdown")
async def shutdown():
    await pool.close()


async def charge(request: Request, body):
    """Charge through the provider unless an earlier holder's checkpoint says it already did."""
    step = request.state.idem
    if step.recovery is not None and step.recovery.point == "charged":
        return step.recovery.data["charge"]
    async with httpx.AsyncClient() as client:
        r = await client.post(PROVIDER + "/charges", json=body)
    charge_id = r.json()["id"]
    await step.checkpoint("charged", {"charge": charge_id})
    return charge_id


async def handle(request: Request):
    body = await request.json()
    step = request.state.idem
    charge_id = await charge(request, body)
    if request.headers.get("x-test-fail"):
        raise RuntimeError("the handler failed after the charge")
    if request.headers.get("x-test-status"):
        return JSONResponse({"error": "upstream"}, status_code=int(request.headers["x-test-status"]))
    if request.headers.get("x-test-hang"):
        await asyncio.sleep(3600)
    await asyncio.sleep(float(request.headers.get("x-test-delay", "0")))
    conn = await step.connection()
    cur = await conn.execute("INSERT INTO orders (key, charge, amount) VALUES (%s, %s, %s) RETURNING id",
                             (step.key, charge_id, body.get("amount")))
    order = (await cur.fetchone())[0]
    if request.headers.get("x-test-status-after-write"):
        return JSONResponse({"error": "upstream"}, status_code=int(request.headers["x-test-status-after-write"]))
    return JSONResponse({"order": order, "charge": charge_id, "amount": body.get("amount")}, status_code=201,
                        headers={"location": f"/orders/{order}"})


@app.post("/charges")
async def charges(request: Request):
    return await handle(request)


@app.post("/slow")
async def slow(request: Request):
    return await handle(request)


@app.post("/stale")
async def stale(request: Request):
    return await handle(request)


@app.post("/optional")
async def optional(request: Request):
    return JSONResponse({"ok": True})


@app.post("/tx-short")
@app.post("/tx")
async def tx(request: Request):
    """Mode 'transaction': an order written on the step's connection, in the claim's transaction."""
    body = await request.json()
    step = request.state.idem
    conn = await step.connection()
    cur = await conn.execute("INSERT INTO orders (key, charge, amount) VALUES (%s, 'none', %s) RETURNING id",
                             (step.key, body.get("amount")))
    order = (await cur.fetchone())[0]
    if request.headers.get("x-test-stall"):
        await step._stop_heartbeat()  # the transaction sits idle from here on
    await asyncio.sleep(float(request.headers.get("x-test-delay", "0")))
    if request.headers.get("x-test-checkpoint"):
        await step.checkpoint("after-write", {"order": order})
    if request.headers.get("x-test-fail"):
        raise RuntimeError("the handler failed after its write")
    if request.headers.get("x-test-status"):
        return JSONResponse({"error": "upstream"}, status_code=int(request.headers["x-test-status"]))
    return JSONResponse({"order": order, "amount": body.get("amount")}, status_code=201)
