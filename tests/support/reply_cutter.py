"""A TCP relay that loses one reply after the server committed (CR-2): the server did the
work, the device never hears. Used against our gateway and against third-party servers."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class ReplyCutter:
    """A TCP relay on 127.0.0.1. While ``armed``, the first server→client bytes that arrive
    once ``committed()`` holds are NOT relayed: the client's side is closed instead (the server
    did the work, the device never hears). Then it disarms itself and relays faithfully."""

    def __init__(self, upstream_port: int, committed: Callable[[], bool]) -> None:
        self._upstream = upstream_port
        self._committed = committed
        self.armed = False
        self.cut = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._upstream))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if to_client and self.armed and self._committed():
                    self.armed = False
                    self.cut += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._stop = True
        self._listener.close()
