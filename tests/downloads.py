"""A download of the raw cache killed midway: a fetch in a process of its own, SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from neurobatch.io.cache import cache_path

# fetches argv[1] into the cache argv[2] with the options argv[3], in blocks of argv[4] bytes
FETCH = """
import json, sys
from neurobatch.io.cache import fetch_file
url, cache, options, block = sys.argv[1:5]
fetch_file(url, cache, storage_options=json.loads(options), block_size=int(block))
"""


def killed_midway(url: str, cache: Path, options: dict[str, Any], *, block: int) -> int:
    """Start fetching ``url`` into ``cache`` in blocks of ``block`` bytes in a process of its
    own, SIGKILL it once its ``.part`` holds four blocks; the part's size then."""
    part = Path(cache_path(str(cache), url) + ".part")
    process = subprocess.Popen(
        [sys.executable, "-c", FETCH, url, str(cache), json.dumps(options), str(block)]
    )
    deadline = time.monotonic() + 60
    try:
        while not (part.exists() and part.stat().st_size >= 4 * block):
            assert process.poll() is None, "the fetch ended before it could be killed"
            assert time.monotonic() < deadline, "the fetch wrote nothing in 60 s"
            time.sleep(0.002)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    return part.stat().st_size
