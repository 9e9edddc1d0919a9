"""Whether a real SLURM cluster can run a job here (the tests that need one skip otherwise)."""

from __future__ import annotations

import shutil
import subprocess

START = "deploy/slurm/start-local-slurm.sh"


def slurm_unavailable() -> str | None:
    """Why no SLURM job can run here, or None when a node is ready for one."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return f"SLURM is not installed (no sinfo/sbatch on PATH); start one with {START}"
    try:
        result = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        return f"SLURM is not responding (sinfo timed out after 20 s); (re)start it with {START}"
    if result.returncode != 0:
        error = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
        return f"SLURM is not responding (sinfo: {error}); start it with {START}"
    states = result.stdout.split()
    if not {"idle", "mixed"} & set(states):
        return f"no idle SLURM node (sinfo node states: {', '.join(states) or 'none'})"
    return None
