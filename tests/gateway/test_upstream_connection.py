"""Issue 14, part 1-2: the gateway's upstream connection, configuration and capabilities,
against a real third-party FHIR server (Medplum, TLS 1.3 + client certificates), a SMART
Backend Services token endpoint verified with PyJWT, and raw TLS servers of older versions."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.gateway import datadir
from sync.gateway.store.sqlite import SqliteStore
from sync.gateway.upstream import config as upstream_config
from sync.gateway.upstream.capabilities import read_capabilities
from sync.gateway.upstream.config import load_config, set_upstream
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.opening import open_connection
from sync.gateway.upstream.passes import run_pass
from sync.gateway.upstream.state import load_state
from sync.gateway.upstream.worker import UpstreamWorker
from tests.support.medplum_server import MedplumServer
from tests.support.postgres import require_server
from tests.support.smart_server import SmartServer, running_smart
from tests.support.tls import PkiFiles, make_test_pki
from tests.support.tls_server import RawTlsServer, server_context
from tests.support.upstream import (
    capability_statement,
    configure_with_certificate,
    gateway_cli,
    gateway_data,
    metadata_handler,
    signing_jwk,
    write_jwk,
)


def _configure_medplum(data: Path, medplum: MedplumServer, **extra: Any) -> None:
    creds = medplum.pki.device("gateway-upstream", "upstream")
    set_upstream(
        data,
        base=medplum.base,
        ca=str(medplum.pki.ca_path),
        cert=str(creds.cert_path),
        key=str(creds.key_path),
        **extra,
    )


def test_upstream_set_keeps_secrets_0600_and_status_shows_none(
    tmp_path: Path, medplum: MedplumServer, capsys: pytest.CaptureFixture[str]
) -> None:
    data = gateway_data(tmp_path)
    creds = medplum.pki.device("gateway-upstream", "upstream")
    private, _ = signing_jwk("ES384")
    jwk_file = write_jwk(tmp_path / "key.jwk", private)
    code = gateway_cli(
        "upstream", "set", "--data", str(data), "--base", medplum.base + "/",
        "--ca", str(medplum.pki.ca_path), "--cert", str(creds.cert_path),
        "--key", str(creds.key_path), "--token-url", "https://127.0.0.1:1/token",
        "--client-id", "gatehouse-gw", "--jwk", str(jwk_file), "--poll", "60",
    )  # fmt: skip
    assert code == 0
    folder = data / "upstream"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("config.json", "ca.pem", "client.pem", "client.key", "smart-key.jwk"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    config = load_config(data)
    assert config.base == medplum.base  # any path kept, trailing slash dropped
    assert config.poll_s == 60 and config.client_id == "gatehouse-gw"
    capsys.readouterr()
    assert gateway_cli("upstream", "status", "--data", str(data), "--json") == 0
    shown = capsys.readouterr().out
    status = orjson.loads(shown)
    assert status["configuration"]["base"] == medplum.base
    assert "PRIVATE KEY" not in shown and private["d"] not in shown
    assert (folder / "config.json").read_bytes().find(private["d"].encode()) == -1


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--base", "http://127.0.0.1/fhir"], "bad_base_url"),
        (["--base", "https://user:pw@127.0.0.1/fhir"], "bad_base_url"),
        (["--base", "https://127.0.0.1/fhir?x=1"], "bad_base_url"),
        (["--base", "https://127.0.0.1/fhir", "--no-ca"], "ca_required"),
        (["--base", "https://127.0.0.1/fhir", "--no-auth"], "upstream_unauthenticated"),
        (["--base", "https://127.0.0.1/fhir", "--cert-only"], "certificate_and_key_together"),
        (["--base", "https://127.0.0.1/fhir", "--poll", "1"], "bad_poll"),
    ],
)
def test_upstream_set_refuses_bad_settings_before_writing(
    tmp_path: Path, argv: list[str], reason: str
) -> None:
    data = gateway_data(tmp_path)
    pki = make_test_pki(tmp_path / "pki")
    creds = pki.device("gw", "upstream")
    kwargs: dict[str, Any] = {
        "base": argv[1],
        "ca": None if "--no-ca" in argv else str(pki.ca_path),
        "cert": None if "--no-auth" in argv else str(creds.cert_path),
        "key": None if "--no-auth" in argv or "--cert-only" in argv else str(creds.key_path),
    }
    if "--poll" in argv:
        kwargs["poll_s"] = 1
    with pytest.raises(UpstreamError) as refused:
        set_upstream(data, **kwargs)
    assert refused.value.reason == reason
    assert not (data / "upstream" / "config.json").exists()


def test_upstream_sync_reads_medplum_capabilities_over_tls13(
    tmp_path: Path, medplum: MedplumServer, capsys: pytest.CaptureFixture[str]
) -> None:
    data = gateway_data(tmp_path)
    _configure_medplum(data, medplum)
    assert gateway_cli("upstream", "sync", "--data", str(data)) == 0
    assert gateway_cli("upstream", "status", "--data", str(data), "--json") == 0
    status = orjson.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert status["last_outcome"] == "ok"
    assert set(status["tls"].values()) == {"TLSv1.3"}
    capabilities = status["capabilities"]
    assert capabilities["software"].startswith("Medplum")
    # What Medplum's in-memory router does not offer, and the gateway's path instead.
    assert "bulk-export:Group" in capabilities["missing"]
    assert "Observation:history-type" in capabilities["missing"]
    assert "transaction" not in capabilities["missing"]
    assert "DocumentReference:conditional-create" not in capabilities["missing"]
    assert "DocumentReference:if-match" not in capabilities["missing"]
    assert gateway_cli("upstream", "status", "--data", str(data)) == 0
    words = capsys.readouterr().out
    assert "MISSING  bulk-export:Group" in words
    assert "paged search per type and patient" in words
    assert "TLSv1.3" in words


def test_nw2_upstream_wrong_ca_is_refused_whatever_the_environment(
    tmp_path: Path, medplum: MedplumServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CA IT gave is the only trust anchor: a server from another CA is refused even when
    REQUESTS_CA_BUNDLE, SSL_CERT_FILE and CURL_CA_BUNDLE name the server's real CA."""
    data = gateway_data(tmp_path)
    other = make_test_pki(tmp_path / "other")
    creds = medplum.pki.device("gateway-upstream", "upstream")
    set_upstream(
        data,
        base=medplum.base,
        ca=str(other.ca_path),
        cert=str(creds.cert_path),
        key=str(creds.key_path),
    )
    hostile = {
        name: str(medplum.pki.ca_path)
        for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")
    }
    run = subprocess.run(
        [sys.executable, "-m", "sync.gateway.cli", "upstream", "sync", "--data", str(data)],
        env={**os.environ, **hostile, "HTTPS_PROXY": "http://127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2
    assert "(upstream_tls)" in run.stderr and "Traceback" not in run.stderr
    state = _last_pass(data)
    assert state["last_outcome"] == "failed" and state["last_reason"] == "upstream_tls"


def _last_pass(data: Path) -> dict[str, Any]:
    """What ``upstream status`` shows of the last pass (kept in the data folder's database)."""
    store = SqliteStore(data / datadir.DATABASE)
    try:
        return load_state(data, store)
    finally:
        store.close()


def test_every_gateway_process_of_a_cluster_shows_the_last_upstream_pass(
    tmp_path: Path, medplum: MedplumServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two hosts, each with its own data folder, on one PostgreSQL: the pass one of them ran
    is what ``upstream status`` shows on the other."""
    url = require_server().new_database()
    first, second = gateway_data(tmp_path / "a"), gateway_data(tmp_path / "b")
    for data in (first, second):
        _configure_medplum(data, medplum)
    assert gateway_cli("upstream", "sync", "--data", str(first), "--database", url) == 0
    capsys.readouterr()
    status_there = ("upstream", "status", "--data", str(second), "--database", url, "--json")
    assert gateway_cli(*status_there) == 0
    status = orjson.loads(capsys.readouterr().out)
    assert status["last_outcome"] == "ok" and status["last_success"]
    assert status["capabilities"]["software"].startswith("Medplum")


@contextlib.contextmanager
def _raw_upstream(context: ssl.SSLContext) -> Iterator[RawTlsServer]:
    yield from RawTlsServer(context, metadata_handler).serve()


def _configure_raw(data: Path, pki: PkiFiles, port: int) -> None:
    configure_with_certificate(data, pki, f"https://127.0.0.1:{port}/some/deep/fhir")


def test_upstream_accepts_tls12_where_the_server_offers_no_more(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "raw-pki")
    context = server_context(pki.server_cert_path, pki.server_key_path, None, tls12_only=True)
    with _raw_upstream(context) as server:
        data = gateway_data(tmp_path)
        _configure_raw(data, pki, server.port)
        result = run_pass(data)
    assert set(result.tls.values()) == {"TLSv1.2"}
    assert server.requests[0][1] == "/some/deep/fhir/metadata"  # the base's path is kept


def _tls11_context(pki: PkiFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.load_cert_chain(str(pki.server_cert_path), str(pki.server_key_path))
    return context


def test_upstream_refuses_a_server_below_tls12(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "raw-pki")
    context = _tls11_context(pki)
    with _raw_upstream(context) as server:
        # The server really speaks TLS 1.1 (a client that allows it gets through) …
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE
        probe.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            probe.minimum_version = ssl.TLSVersion.TLSv1_1
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
                with probe.wrap_socket(raw) as tls:
                    spoken = tls.version()
        except ssl.SSLError:
            pytest.skip("this OpenSSL build cannot speak TLS 1.1 at all")
        assert spoken == "TLSv1.1"
        # … and the gateway refuses it.
        data = gateway_data(tmp_path)
        _configure_raw(data, pki, server.port)
        with pytest.raises(UpstreamError) as refused:
            run_pass(data)
    assert refused.value.reason == "upstream_tls"
    assert not [r for r in server.requests if r[1].endswith("/metadata")]


def test_upstream_never_follows_a_redirect_nor_another_origin(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "raw-pki")
    context = server_context(pki.server_cert_path, pki.server_key_path, None)

    def redirect(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        return 302, {"Location": "https://127.0.0.1:9/elsewhere"}, b""

    for server in RawTlsServer(context, redirect).serve():
        data = gateway_data(tmp_path)
        _configure_raw(data, pki, server.port)
        with pytest.raises(UpstreamError) as refused:
            run_pass(data)
        assert refused.value.reason == "upstream_redirect"
        with open_connection(load_config(data)) as connection:
            with pytest.raises(UpstreamError) as elsewhere:
                connection.get("https://127.0.0.1:9/fhir/Patient")
        assert elsewhere.value.reason == "origin_refused"


@contextlib.contextmanager
def _smart(
    tmp_path: Path, medplum: MedplumServer, alg: str, lifetime_s: int = 300
) -> Iterator[tuple[Path, SmartServer, dict[str, Any]]]:
    private, public = signing_jwk(alg)
    with running_smart(
        medplum.pki,
        client_id="gatehouse-gw",
        public_jwk=public,
        upstream_base=medplum.base,
        upstream_session=medplum.session(),
        lifetime_s=lifetime_s,
    ) as smart:
        data = gateway_data(tmp_path)
        set_upstream(
            data,
            base=smart.base,
            ca=str(medplum.pki.ca_path),
            token_url=smart.token_url,
            client_id="gatehouse-gw",
            jwk_path=str(write_jwk(tmp_path / "key.jwk", private)),
        )
        yield data, smart, private


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_smart_backend_services_token_is_verified_and_cached(
    tmp_path: Path, medplum: MedplumServer, alg: str
) -> None:
    with _smart(tmp_path, medplum, alg) as (data, smart, _):
        result = run_pass(data)
        assert result.capabilities is not None
        assert result.capabilities.profile.software.startswith("Medplum")
        assert smart.refusals == []
        assert len(smart.issued) == 1
        with open_connection(load_config(data)) as connection:
            for _ in range(3):
                assert connection.get("Patient?_count=1").status == 200
            assert connection.tokens is not None and connection.tokens.requests == 1
        assert len(smart.issued) == 2  # one per connection, then cached
        assert set(smart.bearers_seen[-3:]) == {smart.issued[-1]}


def test_smart_token_is_renewed_at_expiry_and_after_a_401(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    with _smart(tmp_path, medplum, "ES384", lifetime_s=2) as (data, smart, _):
        with open_connection(load_config(data)) as connection:
            tokens = connection.tokens
            assert tokens is not None
            assert connection.get("metadata").status == 200
            assert connection.get("metadata").status == 200
            assert tokens.requests == 1
            time.sleep(2.0)  # past the renewal point (lifetime less a tenth)
            assert connection.get("metadata").status == 200
            assert tokens.requests == 2
            smart.expiry[smart.issued[-1]] = 0.0  # the server forgets the token early
            assert connection.get("metadata").status == 200
            assert tokens.requests == 3
    assert smart.refusals == []


def test_smart_token_refused_for_an_unknown_key(tmp_path: Path, medplum: MedplumServer) -> None:
    with _smart(tmp_path, medplum, "RS384") as (data, smart, _):
        other, _ = signing_jwk("RS384")  # same kid, another key: the signature fails
        cfg = load_config(data)
        assert cfg.jwk_file is not None
        write_jwk(cfg.jwk_file, other)
        with pytest.raises(UpstreamError) as refused:
            run_pass(data)
    assert refused.value.reason == "token_refused"
    assert smart.refusals == ["InvalidSignatureError"]
    assert smart.relayed == []
    assert load_state(data)["last_reason"] == "token_refused"


def test_bulk_export_is_read_from_the_group_operations() -> None:
    offered = read_capabilities(
        capability_statement(
            resource=[
                {
                    "type": "Group",
                    "operation": [
                        {
                            "name": "export",
                            "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
                            "group-export",
                        }
                    ],
                }
            ]
        )
    )
    assert offered.group_export and "bulk-export:Group" not in offered.missing()
    assert not read_capabilities(capability_statement()).group_export


def test_serve_worker_runs_the_pass_on_the_poll_interval(
    tmp_path: Path, medplum: MedplumServer
) -> None:
    data = gateway_data(tmp_path)
    _configure_medplum(data, medplum)
    worker = UpstreamWorker(data, None, 0.2)
    worker.start()
    try:
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)
        while worker.passes < 3 and dt.datetime.now(dt.UTC) < deadline:
            worker._stop.wait(0.1)
    finally:
        worker.stop()
    assert worker.passes >= 3
    assert load_state(data)["last_outcome"] == "ok"


def test_upstream_commands_on_an_uninitialised_folder_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gateway_cli("upstream", "status", "--data", str(tmp_path)) == 2
    assert "not initialised" in capsys.readouterr().err
    data = gateway_data(tmp_path)
    assert gateway_cli("upstream", "sync", "--data", str(data)) == 2
    assert "(not_configured)" in capsys.readouterr().err
    assert upstream_config.folder(data) == data / "upstream"
