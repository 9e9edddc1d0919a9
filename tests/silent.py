"""A TCP server on 127.0.0.1 that accepts every connection and never answers.

What an S3 or HTTP endpoint looks like when its service hangs behind a live socket: the
connection succeeds, the request is sent, and nothing ever comes back.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class SilentServer:
    """A listening socket and the connections it accepted (and keeps open, unanswered)."""

    port: int
    accepted: list[socket.socket] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        """Its URL, for an S3 ``endpoint_url`` or an HTTP request."""
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def silent_server() -> Iterator[SilentServer]:
    """Listen on a free port of 127.0.0.1, accept, and never answer, until the block ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = SilentServer(port=listener.getsockname()[1])

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # the listener was closed
                return
            server.accepted.append(connection)

    thread = threading.Thread(target=accept, name="silent-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()
        thread.join(timeout=5)
        for connection in server.accepted:
            connection.close()
