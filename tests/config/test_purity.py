"""The configuration imports nothing of neurobatch but its errors and chunking (DESIGN.md:
Layout)."""

from __future__ import annotations

import subprocess
import sys


def test_config_imports_only_errors_and_chunking() -> None:
    probe = (
        "import neurobatch.config, sys; "
        "print(','.join(sorted(m for m in sys.modules if m.startswith('neurobatch'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    imported = set(result.stdout.strip().split(","))
    others = {m for m in imported if not m.startswith("neurobatch.config")}
    expected = {"neurobatch", "neurobatch.errors", "neurobatch.chunking"}
    assert others == expected, f"config imported: {sorted(others)}"
