"""Fixtures shared by the sync tests: the transport tests' small PKI."""

from tests.sync.test_transport import pki  # noqa: F401  (a fixture, used by name)
