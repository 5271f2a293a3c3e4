"""Issue 15 item 1: stateless gateway processes on one PostgreSQL (``serve --workers N``).

Real ``gatehouse-gateway serve`` processes (subprocesses, real mutual TLS on 127.0.0.1) on a
real PostgreSQL database. Two separate ``serve`` processes (as behind a TCP balancer) make
"issued by one process, honoured by the other" deterministic; ``--workers 2`` shares one
socket, serves a laptop's sync end to end and restarts a killed worker.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import secrets
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from sync.gateway import enrolment, pki, users
from sync.gateway.cli import main
from sync.gateway.store.loader import load_resources
from sync.gateway.store.postgres import PgStore
from sync.gateway.users import default_hasher
from tests.support.control import csr_pem
from tests.support.postgres import require_server
from tests.support.served_workers import ServedData, escrow_blob_for, serve, session
from tests.support.sync import (
    SITE,
    DeviceVault,
    seed_resources,
    sync_once,
    transport_config,
    write_consultations,
)

USER = "nurse.multi"
PASSWORD = "a long and memorable phrase"


@pytest.fixture
def dsn() -> str:
    return require_server().new_database("workers")


def _prepare(tmp_path: Path, dsn: str) -> tuple[ServedData, PgStore]:
    data = ServedData.create(tmp_path / "gw")
    store = PgStore(dsn)
    store.add_site(SITE, "HMP Brixton", dt.datetime.now(dt.UTC))
    return data, store


def _login(http: requests.Session, url: str, device_id: str, escrow: str, password: str) -> int:
    body = {"user_id": USER, "password": password, "escrow": escrow}
    return http.post(f"{url}/device/login", json=body, timeout=60).status_code


def test_issue15_tokens_and_throttles_are_shared_by_separate_processes(
    tmp_path: Path, dsn: str
) -> None:
    data, store = _prepare(tmp_path, dsn)
    device = data.device("dev-multi-1", SITE, tmp_path / "dev")
    store.set_device(device.device_id, SITE, "active")
    users.add_user(
        store,
        user_id=USER,
        role="clinician",
        site=SITE,
        password=PASSWORD,
        now=dt.datetime.now(dt.UTC),
        hasher=default_hasher(),  # the served gateway verifies at the production floor
    )
    with (
        serve(data, dsn, tmp_path / "one.log") as one,
        serve(data, dsn, tmp_path / "two.log") as two,
        session(data, device) as http,
    ):
        escrow = escrow_blob_for(data.path, device.device_id, b"k" * 32)
        # A bearer token issued by process one is honoured by process two.
        answer = http.post(
            f"{one.url}/device/login",
            json={"user_id": USER, "password": PASSWORD, "escrow": escrow},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        token = answer.json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        assert http.get(f"{two.url}/fhir/metadata", headers=bearer, timeout=30).status_code == 200
        forged = {"Authorization": f"Bearer {secrets.token_urlsafe(32)}"}
        assert http.get(f"{two.url}/fhir/metadata", headers=forged, timeout=30).status_code == 401

        # An enrolment token is single use across processes, even when both race for it.
        token_text, _ = enrolment.create_enrol_token(
            store, SITE, now=dt.datetime.now(dt.UTC), ttl=dt.timedelta(hours=1)
        )

        def enrol_at(url: str) -> requests.Response:
            body = {
                "token": token_text,
                "csr": csr_pem(pki.generate_key()),
                "audit_k0": base64.b64encode(os.urandom(32)).decode(),
            }
            with session(data, None) as anonymous:
                return anonymous.post(f"{url}/device/enrol", json=body, timeout=60)

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(enrol_at, [one.url, two.url]))
        codes = sorted(a.status_code for a in answers)
        assert codes == [200, 403], [a.text for a in answers]
        loser = next(a for a in answers if a.status_code == 403)
        assert loser.json()["error"] == "token_used"
        assert enrol_at(two.url).json()["error"] == "token_used"

        # The sign-in throttle is in the database: failures at one count at the other.
        for _ in range(5):  # LoginPolicy's default: 5 free failures per (user, laptop)
            assert _login(http, one.url, device.device_id, escrow, "wrong") == 401
        assert _login(http, two.url, device.device_id, escrow, PASSWORD) == 429
    store.close()


def test_issue15_workers_share_one_socket_sync_a_laptop_and_survive_a_killed_worker(
    tmp_path: Path, dsn: str
) -> None:
    data, store = _prepare(tmp_path, dsn)
    resources = seed_resources(patients=8, seed=15)
    load_resources(store, resources)
    device = data.device("dev-multi-2", SITE, tmp_path / "dev")
    store.set_device(device.device_id, SITE, "active")
    expected = sum(
        1
        for r in resources
        if r["resourceType"] != "Patient"
        or r.get("managingOrganization", {}).get("reference") == f"Organization/{SITE}"
    )
    with serve(data, dsn, tmp_path / "workers.log", workers=2) as served:
        pids = served.worker_pids()
        assert len(pids) == 2 and len(set(pids.values())) == 2
        vault_file = DeviceVault.create(tmp_path / "vault.db", device.device_id)
        config = transport_config(served.url, data.server_pin, (device.cert, device.key))
        with vault_file.open() as vault:
            first = sync_once(vault, config)
            assert first.ok and first.summary().pulled > 0
            held = vault.connection.execute("SELECT COUNT(*) FROM resources").fetchone()[0]
            assert 0 < held <= expected

            # Kill one worker outright: the other keeps serving at once.
            os.kill(pids[0], signal.SIGKILL)
            with session(data, device) as http:
                for _ in range(20):
                    answer = http.get(
                        f"{served.url}/fhir/metadata", headers={"Connection": "close"}, timeout=30
                    )
                    assert answer.status_code == 200
            # ... and the parent starts a new one in its slot.
            deadline = time.monotonic() + 60
            while served.worker_pids().get(0) == pids[0]:
                assert time.monotonic() < deadline, served.log_text()[-2000:]
                time.sleep(0.2)
            assert served.process.poll() is None

            # The laptop pushes a consultation and syncs again through the new pair.
            patients = [
                row[0]
                for row in vault.connection.execute(
                    "SELECT id FROM resources WHERE type = 'Patient' LIMIT 1"
                )
            ]
            write_consultations(vault, patients, 1, "after-kill")
            again = sync_once(vault, config)
            assert again.ok and again.summary().pushed >= 1
    store.close()


def test_issue15_several_workers_need_postgresql(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ServedData.create(tmp_path / "gw")
    assert main(["serve", "--data", str(data.path), "--workers", "2"]) == 2
    assert "workers_need_postgresql" in capsys.readouterr().err


def test_issue15_workers_times_pool_must_fit_max_connections(
    tmp_path: Path, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ServedData.create(tmp_path / "gw")
    # The test server allows 400 connections: 50 x 10 cannot fit.
    code = main(
        ["serve", "--data", str(data.path), "--database", dsn, "--workers", "50", "--port", "0"]
    )
    assert code == 2
    assert "pool_exceeds_max_connections" in capsys.readouterr().err


def test_issue15_the_shared_socket_gives_connections_tcp_nodelay() -> None:
    """Found by the scale benchmark: a socket made without proto=IPPROTO_TCP made asyncio skip
    TCP_NODELAY, and every answer waited ~40 ms for a delayed ACK (47 ms vs 3 ms a request)."""
    import asyncio
    import socket

    from sync.gateway.workers import bind_socket

    async def accepted_nodelay() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        listener = bind_socket("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(accepted_nodelay()) != 0
