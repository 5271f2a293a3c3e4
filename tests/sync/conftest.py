"""Fixtures shared by the sync tests: the transport tests' small PKI."""

from tests.support.transport_pki import pki  # noqa: F401  (a fixture, used by name)
