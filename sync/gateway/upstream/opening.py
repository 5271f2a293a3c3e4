"""``open_connection(config)``: the upstream connection with its token source, if any.

Invariant: the token request goes through the same connection (same pinned CA, same TLS
floor, same origin rule) as every FHIR request, never through another client.
"""

from __future__ import annotations

from sync.gateway.upstream import jwk
from sync.gateway.upstream.config import UpstreamConfig
from sync.gateway.upstream.connection import Response, UpstreamConnection
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.tokens import TokenSource


def open_connection(config: UpstreamConfig) -> UpstreamConnection:
    connection = UpstreamConnection(config)
    if config.token_url is not None and config.client_id is not None:
        if config.jwk_file is None:
            raise UpstreamError("bad_configuration", "the signing key")
        try:
            key = jwk.load_signing_key(config.jwk_file.read_bytes())
        except OSError:
            connection.close()
            raise UpstreamError("bad_configuration", "the signing key") from None

        def post(url: str, body: bytes, headers: dict[str, str]) -> Response:
            return connection.send("POST", url, body=body, headers=headers, idempotent=False)

        connection.tokens = TokenSource(
            token_url=config.token_url, client_id=config.client_id, key=key, post=post
        )
    return connection
