"""``gatehouse-gateway init`` then ``serve``: the served key matches the printed pin."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from policy.atomic import atomic_write
from sync.gateway import datadir, pki
from sync.gateway.cli import main
from sync.gateway.store.sqlite import SqliteStore
from sync.protocol.pins import spki_sha256_b64

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_presents_the_pinned_key_and_serves_an_enrolled_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "gw"
    assert main(["init", "--data", str(data)]) == 0
    current_pin = re.search(r"current: (\S+)", capsys.readouterr().out)
    assert current_pin is not None
    ca_key = pki.load_key((data / datadir.CA_KEY).read_bytes())
    ca_cert = pki.load_cert((data / datadir.CA_CERT).read_bytes())
    device_key = pki.generate_key()
    cert = pki.sign_device_csr(
        ca_key,
        ca_cert,
        pki.make_csr(device_key),
        device_id="dev-1",
        site="hmp-alpha",
        now=dt.datetime.now(dt.UTC),
    )
    atomic_write(tmp_path / "dev.pem", pki.cert_to_pem(cert))
    atomic_write(tmp_path / "dev.key", pki.key_to_pem(device_key))
    store = SqliteStore(data / datadir.DATABASE)
    store.set_device("dev-1", "hmp-alpha", "active")
    store.close()

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "sync.gateway.cli", "serve", "--data", str(data)]
    proc = subprocess.Popen(
        [*command, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        context = ssl.create_default_context(cafile=str(data / datadir.CA_CERT))
        context.load_cert_chain(str(tmp_path / "dev.pem"), str(tmp_path / "dev.key"))
        deadline = time.monotonic() + 20
        der = None
        while der is None:
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
                ):
                    der = tls.getpeercert(binary_form=True)
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert spki_sha256_b64(der) == current_pin.group(1)
        with requests.Session() as session:
            session.trust_env = False
            answer = session.get(
                f"https://127.0.0.1:{port}/fhir/metadata",
                verify=str(data / datadir.CA_CERT),
                cert=(str(tmp_path / "dev.pem"), str(tmp_path / "dev.key")),
                headers={"Connection": "close"},  # no idle keep-alive to wait for at shutdown
                timeout=10,
            )
            status, body = answer.status_code, answer.json()
        assert status == 200
        assert body["resourceType"] == "CapabilityStatement"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_serve_without_init_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--data", str(tmp_path / "empty")]) == 2
    assert "init" in capsys.readouterr().err
