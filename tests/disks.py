"""A small disk of its own for a test: a tmpfs of a few MB that fills up for real.

Mounting needs privileges (root, or CAP_SYS_ADMIN): where they are missing the test is
skipped, with the reason.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(*arguments: str) -> None:
    subprocess.run(["mount", *arguments], check=True, capture_output=True, text=True)


@contextmanager
def small_disk(folder: Path, size: str = "4m") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``mount``'s ``size=`` option) at ``folder`` for the block.

    Yields
    ------
    pathlib.Path
        The mount point; unmounted after the block (lazily, if something still holds it).
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", None) or error
        pytest.skip(f"cannot mount a tmpfs at {folder} (needs root): {detail}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


def resize(folder: Path, size: str) -> None:
    """Give the mounted tmpfs at ``folder`` another size (at least what it holds)."""
    _mount("-o", f"remount,size={size}", str(folder))


def used_bytes(folder: Path) -> int:
    """Bytes the filesystem at ``folder`` has in use."""
    stats = os.statvfs(folder)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize
