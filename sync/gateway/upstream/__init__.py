"""The gateway's upstream connection (issue 14): the health board's FHIR R4 server, the system
of record, behind one pinned TLS connection.

Modules: ``errors`` (``UpstreamError``), ``config`` (``upstream set``: the configuration and
the secrets copied into the data folder), ``jwk`` (the SMART Backend Services signing key and
its JWT assertions), ``tokens`` (client-credentials access tokens, cached until expiry),
``connection`` (the only module here that opens connections: TLS 1.3 where offered, never
below 1.2, the CA pinned to IT's file), ``capabilities`` (the upstream's ``metadata`` and what
the gateway does per capability), ``state`` (what the last pass found, for ``upstream
status``), ``passes`` (one ``upstream sync`` pass), ``cli`` (``gatehouse-gateway upstream``).
"""
