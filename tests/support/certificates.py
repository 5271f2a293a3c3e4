"""Certificates with a chosen expiry, for the admin panel's expiry warnings."""

from __future__ import annotations

import datetime as dt

from sync.gateway import pki


def certificate_pem(not_after: dt.datetime) -> bytes:
    """A device certificate (from a throwaway device CA) that expires at ``not_after``."""
    issued = not_after - dt.timedelta(days=pki.DEVICE_CERT_DAYS)
    ca_key, ca_cert = pki.create_ca(now=issued)
    key = pki.generate_key()
    csr = pki.make_csr(key)
    cert = pki.sign_device_csr(
        ca_key, ca_cert, csr, device_id="dev-test-0001", site="hmp-brixton", now=issued
    )
    return pki.cert_to_pem(cert)
