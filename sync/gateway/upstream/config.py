"""``gatehouse-gateway upstream set``: where the upstream FHIR server is and how to reach it.

The configuration lives in the data folder under ``upstream/``: ``config.json`` (the base URL,
the poll interval, the token URL and client id: no secret) and copies of what IT gave: the CA
(``ca.pem``), the client certificate and key (``client.pem``, ``client.key``) and the SMART
Backend Services signing key (``smart-key.jwk``).

Invariants:
- Every file is written with ``policy.atomic.atomic_write`` (0600 before any byte) in a 0700
  folder; ``config.json`` is written last, so its presence marks a complete configuration, and
  a secret the new configuration no longer names is removed.
- ``set`` replaces the whole configuration and checks everything before writing anything: the
  base URL is ``https://host[:port][/any/path]`` without credentials, query or fragment; the CA
  file holds at least one PEM certificate (it is the ONLY trust anchor: the system store and
  ``REQUESTS_CA_BUNDLE`` are never used, NW-2); a certificate and key are given together and
  match; a token URL, client id and JWK are given together and the JWK is an RS384 or ES384
  private key; at least one way of authenticating (certificate or token) is configured; a
  Bulk Data file origin (``--bulk-origin``) is ``https://host[:port]`` only, not the base's.
- Nothing here prints or logs key material.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from cryptography import x509

from policy.atomic import atomic_write
from sync.gateway.upstream import jwk
from sync.gateway.upstream.errors import UpstreamError

FOLDER = "upstream"
CONFIG = "config.json"
CA = "ca.pem"
CLIENT_CERT = "client.pem"
CLIENT_KEY = "client.key"
SIGNING_KEY = "smart-key.jwk"
SECRETS = (CA, CLIENT_CERT, CLIENT_KEY, SIGNING_KEY)
DEFAULT_POLL_S = 300
MIN_POLL_S = 5
MAX_POLL_S = 86_400
FORMAT = "gatehouse-upstream/1"


@dataclass(frozen=True)
class UpstreamConfig:
    """A complete upstream configuration; file paths point into the data folder."""

    base: str  # no trailing slash
    poll_s: int
    ca_file: Path
    cert_file: Path | None
    key_file: Path | None
    token_url: str | None
    client_id: str | None
    jwk_file: Path | None
    # Origins (``https://host:port``) IT allows Bulk Data files to be read from besides the
    # base URL's (a storage host); same CA, TLS rules and client certificate, never the token.
    bulk_origins: tuple[str, ...] = ()

    @property
    def uses_token(self) -> bool:
        return self.token_url is not None

    def to_json(self) -> dict[str, Any]:
        """What ``upstream status --json`` shows: no secret, only which ones are configured."""
        return {
            "base": self.base,
            "poll_seconds": self.poll_s,
            "client_certificate": self.cert_file is not None,
            "token_url": self.token_url,
            "client_id": self.client_id,
            "bulk_origins": list(self.bulk_origins),
        }


def folder(data: Path) -> Path:
    return data / FOLDER


def check_https_url(url: str, *, what: str) -> str:
    """``url`` without a trailing slash, if it is ``https://host[:port][/path]`` and nothing
    more; else ``UpstreamError(f"bad_{what}_url")``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UpstreamError(f"bad_{what}_url") from None
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or parts.query
        or parts.fragment
        or (port is not None and not 0 < port < 65536)
    ):
        raise UpstreamError(f"bad_{what}_url")
    return url.rstrip("/")


def origin_text(url: str) -> str:
    """``https://host:port`` (host lower case, port explicit) of a URL already checked."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{parts.port or 443}"


def check_bulk_origin(url: str, base: str) -> str:
    """An origin for Bulk Data files: ``https://host[:port]`` and nothing more, not the base's
    own; else ``UpstreamError("bad_bulk_origin")``."""
    try:
        checked = check_https_url(url, what="bulk_origin")
    except UpstreamError:
        raise UpstreamError("bad_bulk_origin") from None
    if urlsplit(checked).path not in ("", "/") or origin_text(checked) == origin_text(base):
        raise UpstreamError("bad_bulk_origin")
    return origin_text(checked)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        raise UpstreamError("unreadable_file", os.path.basename(path)) from None


def _check_ca(pem: bytes) -> None:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise UpstreamError("bad_ca_file") from None
    if not certificates:
        raise UpstreamError("bad_ca_file")


def _check_pair(cert: str, key: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError, ValueError, TypeError):
        raise UpstreamError("bad_client_certificate") from None


def set_upstream(
    data: Path,
    *,
    base: str,
    ca: str | None,
    cert: str | None = None,
    key: str | None = None,
    token_url: str | None = None,
    client_id: str | None = None,
    jwk_path: str | None = None,
    poll_s: int = DEFAULT_POLL_S,
    bulk_origins: tuple[str, ...] = (),
) -> UpstreamConfig:
    """Check everything, then copy the secrets into ``data/upstream`` and write the config."""
    base = check_https_url(base, what="base")
    origins = tuple(sorted({check_bulk_origin(o, base) for o in bulk_origins}))
    if ca is None:
        raise UpstreamError("ca_required")
    if not MIN_POLL_S <= poll_s <= MAX_POLL_S:
        raise UpstreamError("bad_poll")
    if (cert is None) != (key is None):
        raise UpstreamError("certificate_and_key_together")
    smart = (token_url, client_id, jwk_path)
    if any(v is not None for v in smart) and not all(v is not None for v in smart):
        raise UpstreamError("token_settings_together")
    if cert is None and token_url is None:
        raise UpstreamError("upstream_unauthenticated")
    files: dict[str, bytes] = {CA: _read(ca)}
    _check_ca(files[CA])
    if cert is not None and key is not None:
        _check_pair(cert, key)
        files[CLIENT_CERT], files[CLIENT_KEY] = _read(cert), _read(key)
    if token_url is not None and jwk_path is not None and client_id is not None:
        token_url = check_https_url(token_url, what="token")
        if not client_id or not client_id.isprintable() or len(client_id) > 200:
            raise UpstreamError("bad_client_id")
        files[SIGNING_KEY] = _read(jwk_path)
        jwk.load_signing_key(files[SIGNING_KEY])
    where = folder(data)
    where.mkdir(mode=0o700, exist_ok=True)
    where.chmod(0o700)
    for name, content in files.items():
        atomic_write(where / name, content)
    for name in SECRETS:
        if name not in files:
            (where / name).unlink(missing_ok=True)
    document = {
        "format": FORMAT,
        "base": base,
        "poll_seconds": poll_s,
        "token_url": token_url,
        "client_id": client_id,
        "bulk_origins": list(origins),
    }
    atomic_write(where / CONFIG, orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return load_config(data)


def load_config(data: Path) -> UpstreamConfig:
    """The stored configuration; ``UpstreamError("not_configured")`` when there is none."""
    where = folder(data)
    try:
        document = orjson.loads((where / CONFIG).read_bytes())
    except FileNotFoundError:
        raise UpstreamError("not_configured") from None
    except (OSError, orjson.JSONDecodeError):
        raise UpstreamError("bad_configuration") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise UpstreamError("bad_configuration")
    has_cert = (where / CLIENT_CERT).exists()
    token_url = document.get("token_url")
    return UpstreamConfig(
        base=str(document["base"]),
        poll_s=int(document["poll_seconds"]),
        ca_file=where / CA,
        cert_file=where / CLIENT_CERT if has_cert else None,
        key_file=where / CLIENT_KEY if has_cert else None,
        token_url=str(token_url) if token_url else None,
        client_id=str(document["client_id"]) if token_url else None,
        jwk_file=where / SIGNING_KEY if token_url else None,
        bulk_origins=_origins(document.get("bulk_origins")),
    )


def _origins(value: Any) -> tuple[str, ...]:
    """The stored Bulk Data file origins (absent in a configuration from before them)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(o, str) for o in value):
        raise UpstreamError("bad_configuration")
    return tuple(value)
