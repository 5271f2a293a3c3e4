"""A tiny raw TLS 1.3 HTTP/1.1 server for transport tests.

It records every application byte it receives after the handshake, so a test can prove that a
refused connection never carried a request byte. Answers come from a handler function; a
handler that raises ``DropConnection`` closes the connection without answering.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


class DropConnection(Exception):
    """Raised by a handler: close the connection without an answer (a reply lost in transit)."""


Handler = Callable[[str, str, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]


@dataclass
class RawTlsServer:
    context: ssl.SSLContext
    handler: Handler
    received: bytearray = field(default_factory=bytearray)
    handshakes: int = 0
    connections: int = 0
    finished: int = 0  # connections whose serving thread has ended (closed, either side)
    peer_subjects: list[str] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    def serve(self) -> Iterator[RawTlsServer]:
        listener = socket.create_server(("127.0.0.1", self.port))  # 0: any free port
        self.port = listener.getsockname()[1]
        listener.settimeout(0.2)
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                try:
                    raw, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                threading.Thread(target=self._connection, args=(raw,), daemon=True).start()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(2)
            listener.close()

    def wait_finished(self, count: int, timeout_s: float = 10.0) -> None:
        """Until ``count`` connections have been served to their end (what they sent is all
        in ``received``)."""
        deadline = time.monotonic() + timeout_s
        while self.finished < count:
            assert time.monotonic() < deadline, f"{self.finished} of {count} connections ended"
            time.sleep(0.01)

    def _connection(self, raw: socket.socket) -> None:
        try:
            self._serve_connection(raw)
        finally:
            self.finished += 1

    def _serve_connection(self, raw: socket.socket) -> None:
        self.connections += 1
        raw.settimeout(5)
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        self.handshakes += 1
        cert = conn.getpeercert()
        if cert:
            subject = dict(x[0] for x in cert.get("subject", ()))
            self.peer_subjects.append(str(subject.get("commonName", "")))
        buffer = b""
        with contextlib.closing(conn):
            while True:
                try:
                    chunk = conn.recv(65536)
                except (ssl.SSLError, OSError):
                    return
                if not chunk:
                    return
                self.received += chunk
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    head, rest = buffer.split(b"\r\n\r\n", 1)
                    lines = head.decode("latin-1").split("\r\n")
                    method, path, _ = lines[0].split(" ", 2)
                    headers = {}
                    for line in lines[1:]:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    length = int(headers.get("content-length", "0"))
                    while len(rest) < length:
                        more = conn.recv(65536)
                        if not more:
                            return
                        self.received += more
                        rest += more
                    body, buffer = rest[:length], rest[length:]
                    self.requests.append((method, path, headers))
                    try:
                        status, out_headers, payload = self.handler(method, path, headers, body)
                    except DropConnection:
                        return
                    out_headers = {"Content-Length": str(len(payload)), **out_headers}
                    head_out = f"HTTP/1.1 {status} X\r\n" + "".join(
                        f"{k}: {v}\r\n" for k, v in out_headers.items()
                    )
                    try:
                        conn.sendall(head_out.encode("latin-1") + b"\r\n" + payload)
                    except OSError:
                        return


def server_context(
    cert: Path, key: Path, client_ca: Path | None, *, tls12_only: bool = False
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if tls12_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(client_ca))
    return context
