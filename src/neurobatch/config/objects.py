"""User functions: named as ``"module:function"`` or ``"path/to/file.py:function"`` (imported
only when used), or, from Python, the function itself (:data:`CallableRef`)."""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import logging
import os
import re
import site
import sys
import sysconfig
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import AfterValidator, Discriminator, PlainSerializer, Tag, WithJsonSchema

from neurobatch.config.base import _suggest
from neurobatch.errors import ConfigError

__all__ = [
    "CallableRef",
    "ObjectRef",
    "UserFunction",
    "by_value",
    "import_object",
    "object_name",
    "resolve_object",
    "split_object_ref",
]

logger = logging.getLogger(__name__)

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*")


def split_object_ref(ref: str) -> tuple[str, str, bool]:
    """Split a ``"module:function"`` or ``"path/file.py:function"`` reference.

    Parameters
    ----------
    ref : str
        The reference. The part before the last ``:`` is a dotted module name or the path of
        a ``.py`` file; the part after it is a dotted attribute path (``Class.method``).

    Returns
    -------
    target : str
        The module name or file path.
    attribute : str
        The dotted attribute path inside it.
    is_file : bool
        Whether ``target`` is a file path.

    Raises
    ------
    ValueError
        If ``ref`` does not have that shape.

    Examples
    --------
    >>> split_object_ref("mylab.hooks:build_id")
    ('mylab.hooks', 'build_id', False)
    >>> split_object_ref("hooks/resolve.py:loader_for")
    ('hooks/resolve.py', 'loader_for', True)
    >>> split_object_ref("build_id")
    Traceback (most recent call last):
    ...
    ValueError: expected 'module:function' or 'path/to/file.py:function', got 'build_id'
    """
    expected = f"expected 'module:function' or 'path/to/file.py:function', got {ref!r}"
    target, sep, attribute = ref.rpartition(":")
    if not sep or not target or _DOTTED.fullmatch(attribute) is None:
        raise ValueError(expected)
    is_file = target.endswith(".py")
    if not is_file and _DOTTED.fullmatch(target) is None:
        raise ValueError(expected)
    return target, attribute, is_file


def _check_object_ref(value: str) -> str:
    split_object_ref(value)
    return value


ObjectRef = Annotated[
    str,
    AfterValidator(_check_object_ref),
    WithJsonSchema({"type": "string", "pattern": r"^.+:[A-Za-z_][A-Za-z0-9_.]*$"}),
]
"""A ``"module:function"`` or ``"path/to/file.py:function"`` string, checked but not imported."""


def object_name(value: Any) -> str:
    """A reference's text, or ``module:qualname`` for a function given from Python.

    Parameters
    ----------
    value : str or callable
        A ``"module:function"`` reference or the function itself.

    Returns
    -------
    str
        What records and messages show (a lambda is ``module:<lambda>``).

    Examples
    --------
    >>> import os.path
    >>> object_name(os.path.join), object_name("mylab.hooks:build_id")
    ('posixpath:join', 'mylab.hooks:build_id')
    """
    if isinstance(value, str):
        return value
    module = getattr(value, "__module__", None) or type(value).__module__
    qualname = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"{module}:{qualname}"


def _installed_roots() -> tuple[str, ...]:
    """Folders whose modules every worker of the same environment imports: the standard
    library and site-packages."""
    roots = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(site.getsitepackages())
    return tuple(os.path.join(os.path.realpath(root), "") for root in roots)


def _by_reference(module: types.ModuleType | None) -> bool:
    """Whether a module's functions may pickle by name: one installed in the environment."""
    if module is None:
        return False
    path = getattr(module, "__file__", None)
    if path is None:
        return module.__name__ in sys.builtin_module_names
    return os.path.realpath(str(path)).startswith(_installed_roots())


class UserFunction:
    """A function given from Python, called as itself and pickled by value.

    A script's, a notebook's or a test's functions (and lambdas) cannot be imported by a
    Dask worker in another process or on another machine: cloudpickle ships their code
    (with their module's, unless that module is installed in the environment). The
    pickle is made once per function. ``inspect.signature`` and ``inspect.getsource`` see
    the function itself (``__wrapped__``).

    Parameters
    ----------
    function : callable
        The function.

    Examples
    --------
    >>> import pickle
    >>> square = by_value(lambda x: x * x)
    >>> pickle.loads(pickle.dumps(square))(3), square.__name__
    (9, '<lambda>')
    """

    __wrapped__: Callable[..., Any]

    def __init__(self, function: Callable[..., Any]) -> None:
        functools.update_wrapper(self, function)
        self._payload: bytes | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<{object_name(self)}>"

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        if self._payload is None:
            import cloudpickle

            function = self.__wrapped__
            module = sys.modules.get(getattr(function, "__module__", "") or "")
            by_value = module is not None and not _by_reference(module)
            if by_value:
                try:
                    cloudpickle.register_pickle_by_value(module)
                except ValueError:  # not importable by its name: cloudpickle decides
                    by_value = False
            try:
                self._payload = cloudpickle.dumps(function)
            finally:
                if by_value:
                    cloudpickle.unregister_pickle_by_value(module)
        return _load_function, (self._payload,)


def _load_function(payload: bytes) -> UserFunction:
    import cloudpickle

    return UserFunction(cloudpickle.loads(payload))


def by_value(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` as a :class:`UserFunction` (itself when it already is one).

    Parameters
    ----------
    function : callable
        A function given from Python.

    Returns
    -------
    UserFunction
    """
    return function if isinstance(function, UserFunction) else UserFunction(function)


def _ref_tag(value: Any) -> str:
    return "@function" if callable(value) and not isinstance(value, str) else "@reference"


CallableRef = Annotated[
    Union[  # noqa: UP007
        Annotated[ObjectRef, Tag("@reference")],
        Annotated[Callable[..., Any], AfterValidator(by_value), Tag("@function")],
    ],
    Discriminator(_ref_tag),
    PlainSerializer(object_name, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^.+:[A-Za-z_][A-Za-z0-9_.]*$"}),
]
"""A :data:`ObjectRef`, or from Python the function itself (a :class:`UserFunction`: sent to
the workers by value; dumped as its ``module:qualname``)."""


def resolve_object(value: Any) -> Any:
    """The function a :data:`CallableRef` holds: imported for a reference.

    Parameters
    ----------
    value : str or callable
        The reference or the function.

    Returns
    -------
    object

    Raises
    ------
    ConfigError
        If a reference cannot be imported (:func:`import_object`).

    Examples
    --------
    >>> resolve_object(len) is len, resolve_object("os.path:join").__name__
    (True, 'join')
    """
    return import_object(value) if isinstance(value, str) else value


def _file_module(path: Path, ref: str) -> types.ModuleType:
    key = hashlib.blake2b(str(path).encode(), digest_size=6).hexdigest()
    stem = re.sub(r"\W", "_", path.stem)
    name = f"neurobatch_user_{stem}_{key}"
    if not path.is_file():
        raise ConfigError(f"cannot import {ref!r}: file {str(path)!r} not found")
    # imported again when the file changed: a long-lived session (a notebook) sees an edit
    info = path.stat()
    stamp = (info.st_mtime_ns, info.st_size)
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__neurobatch_stamp__", None) == stamp:
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {ref!r}: {str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    module.__neurobatch_stamp__ = stamp  # type: ignore[attr-defined]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ConfigError(f"cannot import {ref!r}: {type(e).__name__}: {e}") from e
    try:
        import cloudpickle

        # workers cannot import a module loaded from a file path: send its functions by value
        cloudpickle.register_pickle_by_value(module)
    except (ImportError, ValueError):  # pragma: no cover - cloudpickle comes with distributed
        logger.debug("cloudpickle unavailable: %s pickles by reference", name)
    return module


def import_object(ref: str, *, base_dir: str | os.PathLike[str] | None = None) -> Any:
    """Import the object a ``"module:function"`` or ``"path/to/file.py:function"`` names.

    Parameters
    ----------
    ref : str
        The reference; the attribute part may be dotted (``Class.method``).
    base_dir : str or os.PathLike, optional
        The folder a relative file path is relative to (default: the working directory).
        :func:`load_config` already makes the references in a pipeline file absolute.

    Returns
    -------
    object
        The named object. A file is imported once per process, as a module named after
        its path, and its functions pickle by value (so Dask workers need not import it).

    Raises
    ------
    ConfigError
        If the reference is malformed, the module or file cannot be imported, or the
        attribute does not exist.

    Examples
    --------
    >>> import_object("os.path:join")("a", "b") == __import__("os").path.join("a", "b")
    True
    >>> import_object("os.path:jion")
    Traceback (most recent call last):
    ...
    neurobatch.errors.ConfigError: cannot import 'os.path:jion': module 'posixpath' has no attribute 'jion'; did you mean 'join'?
    """
    try:
        target, attribute, is_file = split_object_ref(ref)
    except ValueError as e:
        raise ConfigError(f"cannot import {ref!r}: {e}") from None
    module: types.ModuleType
    if is_file:
        path = Path(os.path.expanduser(target))
        if not path.is_absolute():
            path = Path(base_dir if base_dir is not None else os.getcwd()) / path
        module = _file_module(path.resolve(), ref)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ConfigError(f"cannot import {ref!r}: {type(e).__name__}: {e}") from e
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = (
                f"module {obj.__name__!r}"
                if isinstance(obj, types.ModuleType)
                else (f"{type(obj).__name__} {getattr(obj, '__qualname__', obj)!r}")
            )
            message = f"cannot import {ref!r}: {owner} has no attribute {part!r}"
            public = [n for n in dir(obj) if not n.startswith("_")]
            suggestion = _suggest(part, public)
            if suggestion:
                message += f"; did you mean {suggestion!r}?"
            raise ConfigError(message) from None
    return obj
