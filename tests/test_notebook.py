"""The tutorial notebook (``docs/phopro-batch-tutorial.ipynb``) runs, and says what it says.

It is executed by nbclient in a kernel of this interpreter (a kernel spec written for the
test, so that no kernel installed for the user is picked instead), in a temporary folder.
PhoPro runs in it side by side: the cells tagged ``comparison``, ``hooks`` and ``bounds``
must show the same trials as PhoPro's where PhoPro kept the experiment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "docs" / "phopro-batch-tutorial.ipynb"
KERNEL = "neurobatch-test"


def _text(cell: Any) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("notebook")
    jupyter = folder / "jupyter"
    write_kernel_spec(jupyter / "kernels" / KERNEL)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(jupyter))
        # the kernel runs in the notebook's folder: a relative PYTHONPATH would not follow
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        patch.setenv("PYTHONPATH", os.pathsep.join(os.path.abspath(p) for p in paths if p))
        notebook = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]
        client = NotebookClient(
            notebook,
            kernel_name=KERNEL,
            timeout=300,
            resources={"metadata": {"path": str(folder)}},
        )
        client.execute()
    return {tag: _text(cell) for cell in notebook.cells for tag in cell.metadata.get("tags", [])}


def test_same_trials_as_phopro_but_one_experiment(executed: dict[str, str]) -> None:
    table = executed["comparison"]
    assert "same relative times: True" in table
    rows = {line.split()[1]: line.split()[2:] for line in table.splitlines() if ".csv" in line}
    # PhoPro drops experiment_001 whole for one double lever press; neurobatch one trial
    assert rows["experiment_001.csv"][1] == "0"
    assert int(rows["experiment_001.csv"][0]) > 40
    assert [rows[f"experiment_00{n}.csv"][2] for n in (2, 3)] == ["True", "True"]


def test_hooks_and_bounds(executed: dict[str, str]) -> None:
    assert "mouse-003_experiment_001" in executed["hooks"]
    assert "small_reward" in executed["hooks"] or "large_reward" in executed["hooks"]
    assert "160 timepoints" in executed["bounds"]


def test_a_notebook_shows_the_progress_widget(tmp_path: Path) -> None:
    """In a Jupyter kernel a run's bar is on by default, where ipywidgets is installed."""
    jupyter = tmp_path / "jupyter"
    write_kernel_spec(jupyter / "kernels" / KERNEL)
    cell = nbformat.v4.new_code_cell(  # type: ignore[no-untyped-call]
        "import importlib.util\n"
        "from neurobatch.engine.display import in_notebook, progress_default\n"
        "widgets = importlib.util.find_spec('ipywidgets') is not None\n"
        "print(in_notebook(), progress_default() == widgets)"
    )
    notebook = nbformat.v4.new_notebook(cells=[cell])  # type: ignore[no-untyped-call]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(jupyter))
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        patch.setenv("PYTHONPATH", os.pathsep.join(os.path.abspath(p) for p in paths if p))
        NotebookClient(notebook, kernel_name=KERNEL, timeout=120).execute()
    assert _text(notebook.cells[0]).strip() == "True True"
