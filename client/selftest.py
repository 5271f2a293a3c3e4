"""``gatehouse --self-test``: prove this installation can do its security work, offline.

Invariants:
- Runs offscreen and without a gateway or network: every check uses a private temporary
  directory (removed afterwards), keys generated at run time and in-memory TLS; no key material
  is committed or printed, and nothing outside the temp directory is written.
- Importing this module imports no Qt: the Qt check imports the UI shim (``client.ui.qt``)
  lazily, so a broken Qt is reported as a failure line, not an import crash. Before any Qt
  object exists, the requested platform plugin must be present on disk, because Qt aborts the
  process (not an exception) when it cannot load one.
- A check passes only by positive evidence: SQLCipher reports 4.x, ``cipher_memory_security``
  reads back 1, the database file does not start with ``SQLite format 3`` and contains no
  plaintext canary, the wrong key is refused; Argon2id reproduces a known answer at the
  product's floor parameters; a policy signed with a fresh Ed25519 key verifies and a tampered
  or foreign-signed copy is refused; TLS 1.3 is negotiated in memory; FTS5 answers a match;
  the keyring resolution never picks a forbidden backend; a QWidget is shown on the platform.
- Every check failure is one :class:`Failure` with a stable ``reason`` code; an unexpected
  exception inside a check is a failure too (``unexpected_error``, exception type only).
- ``main()`` prints exactly one line ``self-test ok (N checks)`` on stdout and returns 0, or one
  ``FAIL`` line per failure and returns 1. Notes and warnings (which keyring backend, none in a
  headless build) go to stderr and never change the exit code.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import secrets
import ssl
import sys
import tempfile
from collections.abc import Callable, Collection, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

# The DB-API module that must be SQLCipher. A name (not an import) so a test can point it at
# plain sqlite3 and watch the self-test fail.
SQLCIPHER_MODULE: Final[str] = "sqlcipher3"
SQLCIPHER_MAJOR: Final = "4"
_PLAINTEXT_HEADER: Final = b"SQLite format 3\x00"

# Argon2id known answer at the product floor (m=64 MiB, t=3, p=4; client.core.kdf.FLOOR).
ARGON2_KAT_PASSWORD: Final = b"gatehouse self-test"
ARGON2_KAT_SALT: Final = b"gatehouse-selftest-salt"
ARGON2_KAT_HEX: Final = "71f337c11bc334f911950953c2257afb29e72c9995c9600f648f95a6d199daf7"

SELFTEST_SITE: Final = "self-test"
SELFTEST_DEVICE: Final = "self-test"
_TLS_HOST: Final = "self-test.invalid"

# Modules that must never be importable from the frozen laptop bundle.
FORBIDDEN_IN_BUNDLE: Final = (
    "sync.gateway",
    "starlette",
    "uvicorn",
    "psycopg",
    "tests",
    "tkinter",
    "policy.cli",
)
# keyring backends from outside the keyring package (keyrings.alt and friends) are never used.
FORBIDDEN_KEYRING_PREFIXES: Final = ("keyrings",)

# The Qt application is kept for the life of the process: deleting and re-creating a
# QApplication in one process is not supported by PySide6.
_qt_application: Any = None


@dataclass(frozen=True)
class Failure:
    """One failed check: ``check`` name, stable ``reason`` code, a short safe ``detail``."""

    check: str
    reason: str
    detail: str

    def line(self) -> str:
        return f"FAIL {self.check}: {self.reason}: {self.detail}"


@dataclass
class SelfTestReport:
    """Everything a run found: failures decide the exit code; notes and warnings do not."""

    checks: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class CheckFailed(Exception):
    """Raised inside a check; becomes a :class:`Failure` with this ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _Context:
    """What a check may use: the clock, a private temp dir, and places to put notes."""

    def __init__(self, now: datetime, workdir: Path, report: SelfTestReport) -> None:
        self.now = now
        self.workdir = workdir
        self.report = report

    def note(self, text: str) -> None:
        self.report.notes.append(text)

    def warn(self, text: str) -> None:
        self.report.warnings.append(text)


# -- SQLCipher and FTS5 ---------------------------------------------------------------------


def _sqlcipher() -> Any:
    try:
        return importlib.import_module(SQLCIPHER_MODULE)
    except ImportError:
        raise CheckFailed(
            "sqlcipher_missing", f"module {SQLCIPHER_MODULE} cannot be imported"
        ) from None


def _keyed_connection(module: Any, path: Path, key: bytes) -> Any:
    connection = module.connect(str(path), isolation_level=None)
    connection.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    connection.execute("PRAGMA cipher_memory_security = ON")
    return connection


def check_sqlcipher(ctx: _Context) -> None:
    module = _sqlcipher()
    probe = module.connect(":memory:")
    try:
        row = probe.execute("PRAGMA cipher_version").fetchone()
    finally:
        probe.close()
    if row is None:
        raise CheckFailed("sqlcipher_missing", f"{SQLCIPHER_MODULE} is not SQLCipher")
    version = str(row[0])
    if version.split(".")[0] != SQLCIPHER_MAJOR:
        raise CheckFailed("sqlcipher_version", f"SQLCipher {version}, need {SQLCIPHER_MAJOR}.x")
    ctx.note(f"SQLCipher {version}")

    key = secrets.token_bytes(32)
    canary = "gatehouse-canary-" + secrets.token_hex(8)
    path = ctx.workdir / "selftest.db"
    connection = _keyed_connection(module, path, key)
    try:
        memory = connection.execute("PRAGMA cipher_memory_security").fetchone()
        if memory is None or str(memory[0]) != "1":
            raise CheckFailed("sqlcipher_memory_security", "cipher_memory_security is not on")
        connection.execute("CREATE TABLE t (v TEXT)")
        connection.execute("INSERT INTO t VALUES (?)", (canary,))
    finally:
        connection.close()
    raw = path.read_bytes()
    if raw.startswith(_PLAINTEXT_HEADER) or canary.encode() in raw:
        raise CheckFailed("sqlcipher_plaintext", "the database file is not encrypted")
    connection = _keyed_connection(module, path, key)
    try:
        if connection.execute("SELECT v FROM t").fetchone() != (canary,):
            raise CheckFailed("sqlcipher_round_trip", "the row did not read back")
    finally:
        connection.close()
    connection = _keyed_connection(module, path, secrets.token_bytes(32))
    try:
        with contextlib.suppress(module.Error):  # SQLCipher < 4.6 has no log level: it logs
            connection.execute("PRAGMA cipher_log_level = NONE")
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except module.DatabaseError:
        pass
    else:
        raise CheckFailed("sqlcipher_wrong_key_opened", "a wrong key opened the database")
    finally:
        connection.close()


def check_fts5(ctx: _Context) -> None:
    module = _sqlcipher()
    connection = _keyed_connection(module, ctx.workdir / "fts5.db", secrets.token_bytes(32))
    try:
        try:
            connection.execute("CREATE VIRTUAL TABLE f USING fts5(body)")
        except module.Error:
            raise CheckFailed("fts5_missing", "FTS5 is not compiled in") from None
        connection.execute("INSERT INTO f VALUES ('asthma inhaler review')")
        hits = connection.execute("SELECT count(*) FROM f WHERE f MATCH 'inhal*'").fetchone()
        if hits != (1,):
            raise CheckFailed("fts5_broken", "an FTS5 prefix query found nothing")
    finally:
        connection.close()


# -- Argon2id -------------------------------------------------------------------------------


def check_argon2id(ctx: _Context) -> None:
    try:
        from client.core.kdf import FLOOR, derive
    except ImportError as exc:
        raise CheckFailed(
            "argon2_missing", f"cannot import the KDF ({type(exc).__name__})"
        ) from None
    derived = derive(ARGON2_KAT_PASSWORD, ARGON2_KAT_SALT, FLOOR)
    if derived.hex() != ARGON2_KAT_HEX:
        raise CheckFailed("argon2_wrong_answer", "Argon2id does not reproduce the known answer")
    ctx.note(f"Argon2id m={FLOOR.memory_kib} KiB t={FLOOR.iterations} p={FLOOR.parallelism}")


# -- signed policy --------------------------------------------------------------------------


def check_signed_policy(ctx: _Context) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from policy.jws import sign
    from policy.model import build_payload
    from policy.schema import defaults
    from policy.verify import PolicyRefused, TrustConfig, verify_policy

    signer = Ed25519PrivateKey.generate()
    stranger = Ed25519PrivateKey.generate()
    trust = TrustConfig.from_keys([signer.public_key()])
    payload = build_payload(
        version=1,
        site=SELFTEST_SITE,
        issued_at=ctx.now,
        not_before=ctx.now - timedelta(minutes=5),
        expires_at=ctx.now + timedelta(days=1),
        settings=defaults(),
    )
    document = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    envelope = sign(document, [signer])

    def verify(candidate: bytes) -> Any:
        return verify_policy(
            candidate,
            trust,
            now=ctx.now,
            installed_version=None,
            site=SELFTEST_SITE,
            device_id=SELFTEST_DEVICE,
        )

    try:
        policy = verify(envelope)
    except PolicyRefused as exc:
        raise CheckFailed(
            "policy_refused", f"a correctly signed policy was refused ({exc.reason})"
        ) from None
    if policy.version != 1 or policy.site != SELFTEST_SITE:
        raise CheckFailed("policy_wrong_content", "the verified policy has the wrong content")

    tampered = json.loads(envelope)
    tampered_doc = dict(payload, version=2)
    from policy.jws import b64url_encode

    tampered["payload"] = b64url_encode(json.dumps(tampered_doc, sort_keys=True).encode())
    forged = sign(document, [stranger])
    for name, candidate in (
        ("tampered", json.dumps(tampered).encode()),
        ("foreign-signed", forged),
    ):
        try:
            verify(candidate)
        except PolicyRefused:
            continue
        raise CheckFailed("policy_forgery_accepted", f"a {name} policy was accepted")


# -- TLS 1.3 --------------------------------------------------------------------------------


def _self_signed_pem() -> tuple[bytes, bytes]:
    """A throwaway certificate valid around OpenSSL's clock (the OS clock), not ``ctx.now``:
    this proves TLS works, it decides nothing, and OpenSSL checks validity against the OS."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _TLS_HOST)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(_TLS_HOST)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _handshake(client: ssl.SSLObject, server: ssl.SSLObject, bios: list[ssl.MemoryBIO]) -> None:
    client_in, client_out, server_in, server_out = bios
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, tls in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    tls.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            server_in.write(client_out.read())
            client_in.write(server_out.read())
        if all(done.values()):
            return
    raise CheckFailed("tls13_handshake", "the in-memory TLS handshake did not complete")


def check_tls13(ctx: _Context) -> None:
    if not ssl.HAS_TLSv1_3:
        raise CheckFailed("tls13_missing", f"{ssl.OPENSSL_VERSION} has no TLS 1.3")
    from policy.atomic import atomic_write

    cert_pem, key_pem = _self_signed_pem()
    cert_file, key_file = ctx.workdir / "tls-cert.pem", ctx.workdir / "tls-key.pem"
    atomic_write(cert_file, cert_pem)
    atomic_write(key_file, key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    client_ctx.load_verify_locations(cadata=cert_pem.decode("ascii"))
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname=_TLS_HOST)
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    try:
        _handshake(client, server, bios)
    except ssl.SSLError as exc:
        raise CheckFailed("tls13_handshake", f"handshake failed ({exc.reason})") from None
    if client.version() != "TLSv1.3":
        raise CheckFailed("tls13_not_negotiated", f"negotiated {client.version()}")
    cipher = client.cipher()
    ctx.note(f"TLS 1.3 ({ssl.OPENSSL_VERSION}, {cipher[0] if cipher else 'no cipher'})")


# -- keyring --------------------------------------------------------------------------------


def _module_is_forbidden(module_name: str) -> bool:
    return any(
        module_name == prefix or module_name.startswith(prefix + ".")
        for prefix in FORBIDDEN_KEYRING_PREFIXES
    )


def check_keyring(ctx: _Context) -> None:
    with contextlib.suppress(ImportError, ValueError):
        if importlib.util.find_spec("keyrings.alt") is not None:
            raise CheckFailed("keyring_forbidden_installed", "keyrings.alt is importable")
    from keyring.backend import get_all_keyring

    from client.core.device_keyring import (
        DeviceKeyring,
        KeyringUnavailable,
        backend_class_path,
    )

    viable = [backend_class_path(b) for b in get_all_keyring()]
    forbidden = [path for path in viable if _module_is_forbidden(path)]
    if forbidden:
        raise CheckFailed("keyring_forbidden_backend", f"viable: {', '.join(forbidden)}")
    try:
        device_keyring = DeviceKeyring(SELFTEST_DEVICE)
    except KeyringUnavailable:
        ctx.warn(
            "keyring: no allowed backend is available here (found: "
            f"{', '.join(viable) or 'none'}); provisioning needs the OS keyring "
            "(Secret Service, Windows Credential Locker or macOS Keychain)"
        )
        return
    if device_keyring.is_weak:
        raise CheckFailed("keyring_weak_backend", device_keyring.backend_name)
    ctx.note(f"keyring backend: {device_keyring.backend_name}")


# -- bundle contents ------------------------------------------------------------------------


def check_bundle_contents(ctx: _Context, *, frozen: bool | None = None) -> None:
    """In the frozen bundle, gateway, admin and test code must not be importable."""
    if frozen is None:
        frozen = bool(getattr(sys, "frozen", False))
    if not frozen:
        ctx.note("not a frozen bundle: bundle contents not checked")
        return
    present = []
    for name in FORBIDDEN_IN_BUNDLE:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            present.append(name)
    if present:
        raise CheckFailed("bundle_forbidden_module", ", ".join(present))


# -- Qt -------------------------------------------------------------------------------------


def prepare_qt_environment(env: MutableMapping[str, str]) -> None:
    """Use the offscreen platform when none is chosen and there is no display."""
    if env.get("QT_QPA_PLATFORM"):
        return
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY") and sys.platform == "linux":
        env["QT_QPA_PLATFORM"] = "offscreen"


def _platform_plugin_present(plugin_dirs: list[str], platform_name: str) -> bool:
    for directory in plugin_dirs:
        platforms = Path(directory) / "platforms"
        for candidate in platforms.glob(f"*q{platform_name}.*"):
            if candidate.stem in (f"q{platform_name}", f"libq{platform_name}"):
                return True
    return False


def check_qt(ctx: _Context) -> None:
    global _qt_application
    prepare_qt_environment(os.environ)
    try:
        from client.ui import qt
    except ImportError as exc:
        raise CheckFailed("qt_import", f"the Qt shim cannot be imported ({exc.name})") from None
    requested = os.environ.get("QT_QPA_PLATFORM", "").split(":")[0]
    app = qt.QApplication.instance()
    if app is None:
        if requested and not _platform_plugin_present(
            list(qt.QApplication.libraryPaths()), requested
        ):
            raise CheckFailed("qt_platform_plugin_missing", f"no '{requested}' platform plugin")
        app = qt.QApplication([sys.argv[0] if sys.argv else "gatehouse"])
        _qt_application = app
    elif not isinstance(app, qt.QApplication):
        raise CheckFailed("qt_no_widgets", "a non-widget Qt application is already running")
    widget = qt.QWidget()
    try:
        widget.setWindowTitle("Gatehouse self-test")
        widget.resize(320, 200)
        widget.show()
        app.processEvents()
        if not widget.isVisible() or widget.windowHandle() is None:
            raise CheckFailed("qt_window", "a window could not be shown")
        ctx.note(f"Qt platform '{qt.QGuiApplication.platformName()}'")
    finally:
        widget.close()
        widget.deleteLater()
        app.processEvents()


# -- running --------------------------------------------------------------------------------

CHECKS: Final[dict[str, Callable[[_Context], None]]] = {
    "sqlcipher": check_sqlcipher,
    "fts5": check_fts5,
    "argon2id": check_argon2id,
    "signed_policy": check_signed_policy,
    "tls13": check_tls13,
    "keyring": check_keyring,
    "bundle": check_bundle_contents,
    "qt": check_qt,
}


@contextlib.contextmanager
def _private_workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="gatehouse-selftest-") as name:
        os.chmod(name, 0o700)
        yield Path(name)


def run_checks(
    *, now: datetime | None = None, only: Collection[str] | None = None
) -> SelfTestReport:
    """Run the checks (all, or those named in ``only``) and collect the report."""
    now = now if now is not None else datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    report = SelfTestReport()
    with _private_workdir() as workdir:
        for name, check in CHECKS.items():
            if only is not None and name not in only:
                continue
            report.checks.append(name)
            try:
                check(_Context(now, workdir, report))
            except CheckFailed as exc:
                report.failures.append(Failure(name, exc.reason, exc.detail))
            except Exception as exc:
                report.failures.append(Failure(name, "unexpected_error", type(exc).__name__))
    return report


def run_self_test(
    *, now: datetime | None = None, only: Collection[str] | None = None
) -> list[Failure]:
    """Every failure of the self-test; an empty list means this installation is sound."""
    return run_checks(now=now, only=only).failures


def main() -> int:
    """``gatehouse --self-test``: exit 0 with one ok line, or 1 with one line per failure."""
    report = run_checks()
    for text in report.notes:
        print(f"note: {text}", file=sys.stderr)
    for text in report.warnings:
        print(f"warning: {text}", file=sys.stderr)
    if report.ok:
        print(f"self-test ok ({len(report.checks)} checks)")
        return 0
    for failure in report.failures:
        print(failure.line())
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
