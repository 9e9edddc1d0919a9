"""Worker processes from a plain script: refuse, in one line, a script that would run again
in each of them.

A ``LocalCluster`` of processes starts each worker with ``multiprocessing``'s *spawn*, which
imports the main script again in the new process. A script that runs its pipeline at the
top level, without ``if __name__ == "__main__":``, would start its run again in every
worker; Python stops that with a long traceback and distributed reports "Nanny failed to
start". :func:`check_main_guard` says so before any process starts. Notebooks, IPython,
``python -c`` and a package's ``__main__.py`` (``python -m neurobatch``) are not imported
again and are never refused; nor is the default ``cluster.kind: auto`` on a small batch
(workers in this process).
"""

from __future__ import annotations

import ast
import logging
import sys
from pathlib import Path
from types import FrameType

from neurobatch.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["check_main_guard"]


def _is_main_test(node: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either way round)."""
    if not isinstance(node, ast.Compare) or len(node.ops) != 1:
        return False
    if not isinstance(node.ops[0], ast.Eq):
        return False
    sides = [node.left, node.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    texts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return bool(names and texts)


def _guarded(source: str, line: int) -> bool:
    """Whether ``line`` of a module's source lies under ``if __name__ == "__main__":``."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        end = getattr(node, "end_lineno", None)
        if end is None or not node.lineno <= line <= end:  # type: ignore[attr-defined]
            continue
        if isinstance(node, ast.If) and _is_main_test(node.test):
            return True
    return False


def _main_frame() -> FrameType | None:
    """The frame running the main script's top level, if this call comes from it."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None:  # a notebook, IPython, python -c, an embedded interpreter
        return None
    # what multiprocessing's spawn does not import again (multiprocessing.spawn): a
    # package's __main__.py (python -m neurobatch), IPython's launch script
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None and (name == "__main__" or name.endswith(".__main__")):
        return None
    if name is None and Path(path).stem == "ipython":
        return None
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            return frame
        frame = frame.f_back
    return None


def check_main_guard() -> None:
    """Refuse to start worker processes from a script's unguarded top level.

    Raises
    ------
    neurobatch.errors.ConfigError
        In the main script's process when the call comes from its top level outside
        ``if __name__ == "__main__":``, and in a worker process that is importing the
        script again (which would start another run).

    Examples
    --------
    >>> check_main_guard()  # a doctest's session has no main script: nothing to refuse
    """
    main = sys.modules.get("__main__")
    if getattr(main, "__name__", "__main__") == "__mp_main__":
        raise ConfigError(
            "this process is a worker importing the main script again; guard the script's "
            'run with if __name__ == "__main__":'
        )
    frame = _main_frame()
    if frame is None:
        return
    path = Path(frame.f_code.co_filename)
    try:
        source = path.read_text()
    except OSError:
        logger.debug("cannot read %s: the main guard is not checked", path)
        return
    if _guarded(source, frame.f_lineno):
        return
    raise ConfigError(
        f"{path.name}, line {frame.f_lineno}: a cluster of worker processes imports this "
        'script again in each worker; put the run under if __name__ == "__main__": '
        "(or set the cluster's processes: false, for workers in this process)"
    )
