"""A storage endpoint that a test can take away: a TCP relay in front of the local S3 server.

While the relay is down nothing listens on its port, so new connections are refused, and
the connections it had open are cut, as when a storage endpoint's host or network goes
away. It can go down when told, or at the first request whose first line matches a
pattern (the first read of a commit record, say), for a given time or until told.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from types import TracebackType
from typing import Any, Self

_CHUNK = 64 * 2**10


class Endpoint:
    """Relays ``127.0.0.1:<port>`` to the server at ``target`` until it is taken down.

    Parameters
    ----------
    target : str
        The server's ``http://host:port``.
    """

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").rstrip("/").rsplit(":", 1)
        self.target = (host, int(port))
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._trigger: tuple[re.Pattern[bytes], float | None] | None = None
        self.outages = 0
        """How many times it went down."""
        self.refused_from: float | None = None
        """When the last outage began (``time.monotonic()``)."""
        probe = socket.create_server(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self.up()

    @property
    def url(self) -> str:
        """The endpoint URL to give to the S3 client."""
        return f"http://127.0.0.1:{self.port}"

    def options(self, s3_options: dict[str, Any]) -> dict[str, Any]:
        """``s3_options`` that reach the server through this relay, each request tried once
        by the client (its own retries would ride a short outage out before neurobatch's)."""
        client = s3_options["client_kwargs"] | {"endpoint_url": self.url}
        once = {"retries": {"max_attempts": 1, "mode": "standard"}}
        return s3_options | {"client_kwargs": client, "config_kwargs": once}

    def up(self) -> None:
        """Listen and relay again."""
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
            listener.settimeout(0.05)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self, seconds: float | None = None) -> None:
        """Refuse new connections and cut the open ones; up again after ``seconds``."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._open = self._open, set()
            self.outages += 1
            self.refused_from = time.monotonic()
        if listener is not None:
            listener.close()
        for connection in connections:
            _close(connection)
        if seconds is not None:
            timer = threading.Timer(seconds, self.up)
            timer.daemon = True
            timer.start()

    def down_at(self, request: bytes, *, seconds: float | None = None) -> None:
        """Go :meth:`down` at the first request whose first line matches the regex ``request``."""
        self._trigger = (re.compile(request), seconds)

    def close(self) -> None:
        """Stop relaying for good."""
        self._trigger = None
        self.down()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed: down
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    _close(client)
                    _close(server)
                    return
                self._open |= {client, server}
            threading.Thread(target=self._relay, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(server, client, False), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        try:
            while data := source.recv(_CHUNK):
                trigger = self._trigger if requests else None
                if trigger is not None and trigger[0].match(data.split(b"\r\n", 1)[0]):
                    self._trigger = None
                    self.down(trigger[1])
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)


def _close(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()
