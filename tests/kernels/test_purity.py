"""The kernels are pure NumPy/SciPy: importing every kernel module never imports dask."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import neurobatch.kernels


def test_kernels_never_import_dask_or_io() -> None:
    modules = [m.name for m in pkgutil.iter_modules(neurobatch.kernels.__path__)]
    assert {"filters", "fitting", "correction", "trials", "sta"} <= set(modules)
    imports = "; ".join(f"import neurobatch.kernels.{name}" for name in modules)
    probe = (
        f"import sys; {imports}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'dask', 'distributed', 'xarray', 'zarr', 'fsspec'} "
        "or m.startswith(('neurobatch.engine', 'neurobatch.io')))"
        "; print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"kernels imported: {result.stdout.strip()}"
