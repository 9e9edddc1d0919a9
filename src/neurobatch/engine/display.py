"""Where the run's progress bar can show: a terminal, or a Jupyter notebook with widgets.

rich draws its bar on a terminal, and in Jupyter as an ``ipywidgets`` output that it
updates in place; without ``ipywidgets`` it could only warn at every refresh, so there the
bar is off (the run's log still says what happened).
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["in_notebook", "progress_default"]


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (a notebook, JupyterLab, VS Code's).

    Examples
    --------
    >>> in_notebook()
    False
    """
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_default() -> bool:
    """Whether a run shows its progress bar when not told: on a terminal, and in a
    notebook where ``ipywidgets`` is installed.

    Examples
    --------
    >>> isinstance(progress_default(), bool)
    True
    """
    if sys.stderr.isatty():
        return True
    return in_notebook() and importlib.util.find_spec("ipywidgets") is not None
