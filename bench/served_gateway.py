"""The gateway as it runs in production: ``gatehouse-gateway serve`` in a process of its own.

A laptop never hosts the gateway, so a benchmark of the device side should not make the device
share one interpreter (and one GIL) with the server. ``served_gateway`` initialises a data
folder, loads the given resources straight into its SQLite store, issues one device
certificate, starts ``python -m sync.gateway.cli serve`` on a free loopback port, waits until
it answers over mutual TLS, and stops it on exit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy.atomic import atomic_write
from sync.gateway import datadir, pki
from sync.gateway.store.loader import load_resources
from sync.gateway.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ServedGateway:
    url: str
    server_pin: str  # base64 SPKI SHA-256, as a policy carries it
    device_cert: Path
    device_key: Path
    database: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(proc: subprocess.Popen[bytes], port: int, context: ssl.SSLContext) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway process did not start") from None
            time.sleep(0.1)


@contextlib.contextmanager
def served_gateway(
    tmp: Path, resources: Iterable[dict[str, Any]], *, device_id: str, site: str
) -> Iterator[ServedGateway]:
    data = tmp / "gateway"
    now = dt.datetime.now(dt.UTC)
    init = datadir.init_data_dir(data, now=now)
    store = SqliteStore(data / datadir.DATABASE)
    try:
        load_resources(store, resources)
        del resources  # the caller's copy is the only one left (a big heap slows every gc)
        store.set_device(device_id, site, "active")
    finally:
        store.close()
    ca_key = pki.load_key((data / datadir.CA_KEY).read_bytes())
    ca_cert = pki.load_cert((data / datadir.CA_CERT).read_bytes())
    key = pki.generate_key()
    cert = pki.sign_device_csr(
        ca_key, ca_cert, pki.make_csr(key), device_id=device_id, site=site, now=now
    )
    cert_path, key_path = tmp / "device.pem", tmp / "device.key"
    atomic_write(cert_path, pki.cert_to_pem(cert))
    atomic_write(key_path, pki.key_to_pem(key))

    port = _free_port()
    command = [sys.executable, "-m", "sync.gateway.cli", "serve", "--data", str(data)]
    log = (tmp / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        probe = ssl.create_default_context(cafile=str(data / datadir.CA_CERT))
        probe.load_cert_chain(str(cert_path), str(key_path))
        _wait_ready(proc, port, probe)
        yield ServedGateway(
            f"https://127.0.0.1:{port}",
            init.server_pin,
            cert_path,
            key_path,
            data / datadir.DATABASE,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
