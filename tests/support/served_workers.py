"""``gatehouse-gateway serve`` as production runs it, in processes of its own, on PostgreSQL.

``ServedData`` is an initialised data folder (``datadir.init_data_dir``) whose CA signs device
certificates; ``serve`` starts ``python -m sync.gateway.cli serve --data … --database …
[--workers N]`` on a free loopback port with its log in a file, waits until it answers over
mutual TLS, and stops it (SIGTERM, then SIGKILL) on exit. Shared by the worker tests and
``bench/bench_scale.py``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from policy.atomic import atomic_write
from sync.gateway import datadir, pki
from sync.gateway.authority import load_authority
from sync.protocol.escrow import escrow_aad, seal
from sync.protocol.pins import spki_sha256_b64

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
WORKER_LINE = re.compile(r"worker (\d+) running as pid (\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class DeviceFiles:
    device_id: str
    site: str
    cert: Path
    key: Path


@dataclass
class ServedData:
    """An initialised gateway data folder and the pin of its server key."""

    path: Path
    server_pin: str

    @classmethod
    def create(cls, folder: Path) -> ServedData:
        init = datadir.init_data_dir(folder, now=dt.datetime.now(dt.UTC))
        return cls(folder, init.server_pin)

    @property
    def ca_file(self) -> Path:
        return self.path / datadir.CA_CERT

    def device(self, device_id: str, site: str, folder: Path) -> DeviceFiles:
        """A device certificate signed by this gateway's CA (register it in the store too)."""
        ca_key = pki.load_key((self.path / datadir.CA_KEY).read_bytes())
        ca_cert = pki.load_cert(self.ca_file.read_bytes())
        key = pki.generate_key()
        cert = pki.sign_device_csr(
            ca_key,
            ca_cert,
            pki.make_csr(key),
            device_id=device_id,
            site=site,
            now=dt.datetime.now(dt.UTC),
        )
        folder.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = folder / f"{device_id}.pem", folder / f"{device_id}.key"
        atomic_write(cert_path, pki.cert_to_pem(cert))
        atomic_write(key_path, pki.key_to_pem(key))
        return DeviceFiles(device_id, site, cert_path, key_path)


@dataclass
class ServedGateway:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def worker_pids(self) -> dict[int, int]:
        """The latest pid of each worker slot, from the supervisor's log."""
        return {int(m[1]): int(m[2]) for m in WORKER_LINE.finditer(self.log_text())}


def session(data: ServedData, device: DeviceFiles | None) -> requests.Session:
    """A plain HTTPS client of the gateway (mutual TLS when ``device`` is given)."""
    answer = requests.Session()
    answer.trust_env = False
    answer.verify = str(data.ca_file)
    if device is not None:
        answer.cert = (str(device.cert), str(device.key))
    return answer


def _ready(port: int, data: ServedData) -> bool:
    context = ssl.create_default_context(cafile=str(data.ca_file))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return False
    return der is not None and spki_sha256_b64(der) == data.server_pin


@contextlib.contextmanager
def serve(
    data: ServedData,
    dsn: str,
    log: Path,
    *,
    workers: int = 1,
    extra: Sequence[str] = (),
) -> Iterator[ServedGateway]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "sync.gateway.cli",
        "serve",
        "--data",
        str(data.path),
        "--database",
        dsn,
        "--port",
        str(port),
        "--workers",
        str(workers),
        *extra,
    ]
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    served = ServedGateway(f"https://127.0.0.1:{port}", port, proc, log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(port, data):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start:\n{served.log_text()[-2000:]}")
            time.sleep(0.2)
        if workers > 1:  # every worker has announced itself
            while len(served.worker_pids()) < workers:
                if time.monotonic() > deadline:
                    raise RuntimeError("not every worker started")
                time.sleep(0.1)
        yield served
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def pin_bytes(data: ServedData) -> bytes:
    return base64.b64decode(data.server_pin)


def escrow_blob_for(data: Path, device_id: str, dek: bytes) -> str:
    """A device's escrow slot blob sealed to this gateway's escrow key (what login sends)."""
    authority = load_authority(data)
    blob = seal(dek, authority.escrow_key.public_key(), escrow_aad(device_id))
    return base64.b64encode(blob).decode()
