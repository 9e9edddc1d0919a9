"""Another user's attempts to run code on a Dask cluster: a script, run as that user.

    python foreign_client.py TARGET_DIR MODE,MODE NAME=ADDRESS [NAME=ADDRESS ...]

For each address (a scheduler named ``scheduler``, any other name a worker or a nanny) and
each mode, it tries to make the cluster create ``TARGET_DIR/<name>-<mode>``: through
``Client(address).run`` for a scheduler, through the ``run`` handler that workers and
nannies serve for a worker or a nanny. Modes:

- ``tcp``: plain TCP, no credentials (a ``tls://`` address is tried as ``tcp://``);
- ``tls-without-certificate``: TLS that accepts any server and presents no certificate;
- ``tls-own-certificate``: the same, presenting a self-signed certificate of its own.

It prints one JSON object: its user id and, per attempt, ``"ran"`` or ``"refused: ..."``.
All attempts run at once, each given 3 s to connect.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import tempfile
from typing import Any

TIMEOUT_S = 3


def touch(path: str) -> None:
    """What the attacker wants run: create a file where only the cluster's owner can."""
    with open(path, "w") as file:
        file.write("written by code another user sent\n")


def _context(mode: str) -> ssl.SSLContext | None:
    """The client side's TLS context of a mode (None for plain TCP)."""
    if mode == "tcp":
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # accept whatever the server presents
    if mode == "tls-own-certificate":
        from distributed.security import Security

        own = Security.temporary()
        with tempfile.TemporaryDirectory() as folder:
            cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
            with open(cert, "w") as file:
                file.write(own.tls_client_cert)
            with open(key, "w") as file:
                file.write(own.tls_client_key)
            context.load_cert_chain(cert, key)
    return context


async def _attempt(name: str, address: str, mode: str, target: str) -> str:
    from distributed import Client
    from distributed.core import rpc
    from distributed.protocol.pickle import dumps
    from distributed.security import Security

    context = _context(mode)
    if context is None:
        address = address.replace("tls://", "tcp://", 1)
    path = os.path.join(target, f"{name}-{mode}")

    class Foreign(Security):
        """Connection arguments of the mode, whatever the configuration says."""

        def get_connection_args(self, role: str) -> dict[str, Any]:
            return {"ssl_context": context, "require_encryption": False, "extra_conn_args": {}}

    try:
        if name == "scheduler":
            async with Client(
                address, asynchronous=True, timeout=TIMEOUT_S, security=Foreign()
            ) as client:
                await client.run(touch, path)
        else:
            arguments = {"ssl_context": context} if context is not None else {}
            async with rpc(address, timeout=TIMEOUT_S, connection_args=arguments) as server:
                answer = await server.run(function=dumps(touch), args=dumps((path,)))
                if answer.get("status") != "OK":
                    return f"refused: the {name} answered {answer}"
    except Exception as error:  # noqa: BLE001 - every failure is an answer here
        return f"refused: {type(error).__name__}: {error}"
    return "ran"


async def _main(target: str, modes: list[str], addresses: dict[str, str]) -> dict[str, Any]:
    names = [(name, mode) for name in addresses for mode in modes]
    answers = await asyncio.gather(
        *(_attempt(name, addresses[name], mode, target) for name, mode in names)
    )
    return {
        "uid": os.getuid(),
        "attempts": {
            f"{name}-{mode}": answer for (name, mode), answer in zip(names, answers, strict=True)
        },
    }


if __name__ == "__main__":
    target, modes, *pairs = sys.argv[1:]
    addresses = dict(pair.split("=", 1) for pair in pairs)
    print(json.dumps(asyncio.run(_main(target, modes.split(","), addresses))))
