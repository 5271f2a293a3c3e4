"""Self-test of TLS 1.3: OpenSSL offers it and a handshake negotiates it, in memory.

Invariants:
- No socket is opened: client and server talk through memory BIOs.
- The throwaway certificate and key are generated for this run and written (atomically) only
  into the check's private work directory.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from typing import Final

from client.selftest.base import CheckFailed, Context

_TLS_HOST: Final = "self-test.invalid"


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


def check_tls13(ctx: Context) -> None:
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
