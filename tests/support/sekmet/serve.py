"""Run sekmet-fhir (a third-party FHIR R4 server, Apache-2.0, pinned in requirements.txt) for
Gatehouse's tests, at ``https://127.0.0.1:PORT/fhir`` with TLS 1.3 and verified client
certificates.

This file runs under the server's OWN virtual environment (``tests/support/sekmet/.venv``,
made by ``make sekmet``), never the project's: sekmet's dependencies (fhir.resources, pydantic,
FastAPI...) must not leak into Gatehouse. Started by ``tests/support/sekmet_server.py``.

Nothing here adds FHIR behaviour: it builds sekmet's own app (``sekmet.main.create_app``, what
``uvicorn --factory sekmet.main:app_factory`` serves) with settings for a test (a temporary
data folder, no simulator reacting to writes, no traffic log, no server-side auth beyond the
TLS client certificate) and serves it with uvicorn. The listening socket is bound first so
sekmet's ``base_url`` (which its bulk manifests and links carry) names the real port. Prints
one line ``READY <port>`` when listening; exits when its stdin closes (the test process died).

Usage: python serve.py --cert server.pem --key server.key --ca ca.pem --data DIR
       [--validation strict|warn|off]
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
import threading


def _watch_stdin() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--validation", default="strict")
    args = parser.parse_args()

    import uvicorn
    from sekmet.config import Settings, set_settings
    from sekmet.main import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings.model_validate(
        {
            "base_url": f"https://127.0.0.1:{port}/fhir",
            "host": "127.0.0.1",
            "port": port,
            "data_dir": args.data,
            "simulator": {"enabled": False, "delay_seconds": 0.5},
            "validation": {"inbound": args.validation},
            "log_inbound": False,
            "own_private_key_path": os.path.join(args.data, "sekmet_private.pem"),
        }
    )
    set_settings(settings)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        ssl_certfile=args.cert,
        ssl_keyfile=args.key,
        ssl_ca_certs=args.ca,
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    config.load()
    assert config.ssl is not None
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
    server = uvicorn.Server(config)
    threading.Thread(target=_watch_stdin, daemon=True).start()
    config.callback_notify = None

    original = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original(sockets=sockets)
        print(f"READY {port}", flush=True)

    server.startup = startup  # type: ignore[method-assign]
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
