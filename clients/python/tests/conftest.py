"""Fixtures: the servers test.sh started (through environment variables), a fake payment provider that
counts its calls, and uvicorn servers running tests/app.py on 127.0.0.1."""

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import httpx
import psycopg
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run clients/python/test.sh")
    return value


@pytest.fixture(scope="session")
def dsn():
    return _env("IDEM_TEST_DSN")


@pytest.fixture(scope="session")
def bouncer_dsn():
    return _env("IDEM_TEST_BOUNCER_DSN")


@pytest.fixture(scope="session")
def arbiter_dsn():
    return _env("IDEM_TEST_ARBITER_DSN")


@pytest.fixture
def key():
    """A key no other test uses."""
    return "k-" + uuid.uuid4().hex


class Provider:
    """A fake payment provider: POST /charges answers a new charge id and counts the call."""

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with provider.lock:
                    provider.calls += 1
                    n = provider.calls
                body = json.dumps({"id": f"ch_{n}"}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="session")
def provider():
    p = Provider()
    yield p
    p.server.shutdown()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A uvicorn process serving tests/app.py."""

    def __init__(self, app_dsn, provider_url, lease=2.0):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, IDEM_APP_DSN=app_dsn, IDEM_APP_PROVIDER=provider_url, IDEM_APP_LEASE=str(lease),
                   PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE]))
        self.proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1",
                                      "--port", str(self.port), "--log-level", "warning"], env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.url + "/health", timeout=1)
                return
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start")
                time.sleep(0.1)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def start_server(provider):
    servers = []

    def start(app_dsn, lease=2.0):
        s = Server(app_dsn, provider.url, lease)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def server(start_server, dsn):
    return start_server(dsn)


def record(dsn, key):
    """The key's row of idem.my_records."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT status, token, recovery_point, recovery_data FROM idem.my_records"
                            " WHERE key = %s", (key,)).fetchone()
