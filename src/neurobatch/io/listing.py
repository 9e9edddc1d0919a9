"""Listing an input folder: symbolic links followed, loops cut, output folders left out.

:func:`list_entries` lists what a search (``pattern``, ``recursive``) matches under a folder,
as ``{relative path: info}``. Local folders are walked by :func:`walk_local`, which follows
symbolic links to files and folders (fsspec's local listing does not: a linked file was
silently not an input); remote stores are listed by fsspec. Either way a folder that holds
a neurobatch output (:func:`output_marker`) is left out with a warning: an output folder
inside an input folder must not become input.

Guarantees of :func:`walk_local`:

* every file and folder is listed once, under the first path that reaches it: the real
  paths first (in sorted order), then paths through symbolic links (in sorted order);
* a link to a folder that contains the link (an ancestor, the input folder, or above it)
  is a loop: it is not followed, and a warning names the link and its target;
* a link whose target is missing is skipped with a warning;
* a folder holding a neurobatch output is left out, with a warning when the search would
  have gone into it (at DEBUG when it only lies beside the inputs);
* a file's ``size`` and ``mtime`` are its target's, so that its fingerprint follows the
  target's content.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import stat
from collections import deque
from collections.abc import Collection, Mapping
from typing import Any

from fsspec.utils import glob_translate

from neurobatch.io.lock import LOCK_NAME

__all__ = ["OUTPUT_MARKERS", "list_entries", "output_marker", "ready_flag_path", "walk_local"]

logger = logging.getLogger(__name__)

#: Files only a neurobatch output folder holds: its lock, and the lock's guard file (left in
#: place on local disks after the first run).
OUTPUT_MARKERS = (LOCK_NAME, f"{LOCK_NAME}.guard")

#: What every run writes, together: the manifest (``engine.layout.MANIFEST``) and the logs
#: folder (io does not import the engine; a test checks that the names agree).
OUTPUT_FILES = ("manifest.parquet", "logs")

Info = dict[str, Any]
Identity = tuple[int, int]  # (device, inode)


def output_marker(names: Collection[str]) -> str | None:
    """Whether a folder with these entries is a neurobatch output folder, and why.

    Parameters
    ----------
    names : collection of str
        The names of the folder's entries (files and folders).

    Returns
    -------
    str or None
        What marks it (``".neurobatch-lock.json"``, its ``.guard``, or
        ``"manifest.parquet and logs"``), or None.

    Examples
    --------
    >>> output_marker({"a.csv", ".neurobatch-lock.json.guard"})
    '.neurobatch-lock.json.guard'
    >>> output_marker({"manifest.parquet", "logs", "items"})
    'manifest.parquet and logs'
    >>> output_marker({"manifest.parquet", "a.csv"}) is None
    True
    """
    for marker in OUTPUT_MARKERS:
        if marker in names:
            return marker
    if all(name in names for name in OUTPUT_FILES):
        return " and ".join(OUTPUT_FILES)
    return None


def _local_marker(path: str) -> str | None:
    present = {
        name
        for name in (*OUTPUT_MARKERS, *OUTPUT_FILES)
        if os.path.lexists(os.path.join(path, name))
    }
    return output_marker(present)


def _skip_output(path: str, marker: str, *, searched: bool) -> None:
    """Say that an output folder is left out: a warning when the search would have taken
    it or looked inside it, else (an output folder beside the inputs) only at DEBUG."""
    logger.log(
        logging.WARNING if searched else logging.DEBUG,
        "%s is a neurobatch output folder (it holds %s): not listed as input; keep output "
        "folders outside input folders",
        path,
        marker,
    )


def _info(path: str, st: os.stat_result, *, link: bool) -> Info:
    if stat.S_ISDIR(st.st_mode):
        kind = "directory"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    else:
        kind = "other"
    return {
        "name": path,
        "size": st.st_size,
        "type": kind,
        "mtime": st.st_mtime,
        "islink": link,
    }


def _depth(relative: str) -> int:
    return relative.count("/") + 1


class _Walk:
    """One walk of a local folder (see :func:`walk_local`)."""

    def __init__(self, root: str, maxdepth: int | None, hidden: bool, folders: bool) -> None:
        self.base = root.rstrip("/") or "/"
        self.maxdepth, self.hidden, self.wants_folders = maxdepth, hidden, folders
        self.entries: dict[str, Info] = {}
        self.seen: dict[Identity, str] = {}  # where each file and folder is listed
        # a folder to scan: relative path, path, reached through a link, the identities of
        # the folders on the way to it (itself included)
        self.folders: deque[tuple[str, str, bool, frozenset[Identity]]] = deque()
        self.links: list[tuple[str, str, frozenset[Identity]]] = []
        start = os.stat(self.base)
        top = (start.st_dev, start.st_ino)
        self.seen[top] = ""
        self.folders.append(("", self.base, False, frozenset([top])))

    def run(self) -> dict[str, Info]:
        while self.folders or self.links:
            while self.folders:
                self._scan(*self.folders.popleft())
            # then the links found so far, in order; the folders they lead to are walked next
            pending, self.links = sorted(self.links, key=lambda link: link[0]), []
            for relative, path, way in pending:
                self._follow(relative, path, way)
        return dict(sorted(self.entries.items()))

    def _path(self, relative: str) -> str:
        return f"{self.base.rstrip('/')}/{relative}"

    def _scan(self, folder: str, path: str, through_link: bool, way: frozenset[Identity]) -> None:
        with os.scandir(path) as listing:
            children = sorted(listing, key=lambda entry: entry.name)
        for child in children:
            if not self.hidden and child.name.startswith("."):
                continue
            relative = f"{folder}/{child.name}" if folder else child.name
            if child.is_symlink():
                self.links.append((relative, self._path(relative), way))
                continue
            st = child.stat(follow_symlinks=False)
            identity = (st.st_dev, st.st_ino)
            if stat.S_ISDIR(st.st_mode):
                if identity not in self.seen:
                    self._add_folder(relative, st, link=through_link, way=way)
            elif through_link and identity in self.seen:
                earlier = self.seen[identity]
                logger.info("%s: the same file as %r, listed once", self._path(relative), earlier)
            else:
                # real paths are all listed (hard links too); a link's only when new
                self.seen.setdefault(identity, relative)
                self.entries[relative] = _info(self._path(relative), st, link=through_link)

    def _add_folder(
        self, relative: str, st: os.stat_result, *, link: bool, way: frozenset[Identity]
    ) -> None:
        path = self._path(relative)
        marker = _local_marker(path)
        inside = self.maxdepth is None or _depth(relative) < self.maxdepth
        if marker is not None:
            _skip_output(path, marker, searched=inside or self.wants_folders)
            return
        identity = (st.st_dev, st.st_ino)
        self.seen[identity] = relative
        self.entries[relative] = _info(path, st, link=link)
        if inside:
            self.folders.append((relative, path, link, way | {identity}))

    def _follow(self, relative: str, path: str, way: frozenset[Identity]) -> None:
        """One symbolic link: listed (a file, or a folder to walk) or skipped, and why."""
        try:
            st = os.stat(path)
        except OSError as e:
            logger.warning(
                "%s is a symbolic link to %s, which cannot be reached (%s): skipped",
                path,
                os.readlink(path),
                e.strerror or type(e).__name__,
            )
            return
        identity = (st.st_dev, st.st_ino)
        earlier = self.seen.get(identity)
        if stat.S_ISDIR(st.st_mode):
            # a loop: the target is a folder on the way to the link, or holds the link
            target = os.path.realpath(path)
            here = os.path.realpath(os.path.dirname(path))
            if identity in way or here == target or here.startswith(target.rstrip("/") + "/"):
                logger.warning(
                    "%s is a symbolic link to %s, a folder that contains it (a loop): not followed",
                    path,
                    target,
                )
            elif earlier is not None:
                logger.debug("%s: the same folder as %r, listed once", path, earlier)
            else:
                self._add_folder(relative, st, link=True, way=way)
        elif earlier is not None:
            logger.info("%s: the same file as %r, listed once", path, earlier)
        else:
            self.seen[identity] = relative
            self.entries[relative] = _info(path, st, link=True)


def walk_local(
    root: str, *, maxdepth: int | None = None, hidden: bool = True, folders: bool = False
) -> dict[str, Info]:
    """Every entry under a local folder, symbolic links followed, as ``{relative: info}``.

    Parameters
    ----------
    root : str
        The folder (itself a symbolic link or not), ``/``-separated.
    maxdepth : int, optional
        List entries at most this deep (1: the folder's own entries); None for any depth.
    hidden : bool, default True
        Also list entries whose name starts with ``.`` (and what is inside them).
    folders : bool, default False
        The search is for folders: a neurobatch output folder left out at ``maxdepth`` is
        warned about (else only the ones the walk would have gone into are).

    Returns
    -------
    dict of str to dict
        Relative path (``/``-separated) -> ``{"name", "size", "type", "mtime",
        "islink"}`` (``name`` is ``root/relative``; ``type`` is ``"file"``,
        ``"directory"`` or ``"other"``; ``islink`` says a symbolic link reached it). Sorted
        by relative path. Folders holding a neurobatch output are left out (see
        :func:`output_marker`), as is everything in them.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> top = pathlib.Path(tempfile.mkdtemp())
    >>> (top / "data").mkdir(); (top / "elsewhere").mkdir()
    >>> _ = (top / "elsewhere" / "a.csv").write_text("time,signal\\n")
    >>> (top / "data" / "a.csv").symlink_to(top / "elsewhere" / "a.csv")
    >>> (top / "data" / "more").symlink_to(top / "elsewhere")
    >>> (top / "data" / "loop").symlink_to(top / "data")
    >>> sorted(walk_local(str(top / "data")))
    ['a.csv', 'more']
    """
    return _Walk(root, maxdepth, hidden, folders).run()


def _matcher(pattern: str | None, recursive: bool) -> tuple[re.Pattern[str] | None, int | None]:
    """The regex relative paths must match (None: any), and how deep to list."""
    if pattern is None:
        return None, None if recursive else 1
    if recursive:
        return re.compile(glob_translate("**/" + pattern)), None
    parts = pattern.split("/")
    return re.compile(glob_translate(pattern)), None if "**" in parts else len(parts)


def _remote_entries(fs: Any, root: str, depth: int | None, folders: bool) -> dict[str, Info]:
    """The store's listing, relative, without folders that hold a neurobatch output."""
    prefix = root.rstrip("/") + "/"
    # a folder's own entries say whether it holds an output: list them too
    maxdepth = depth + 1 if depth is not None and folders else depth
    listed: Mapping[str, Info] = fs.find(root, maxdepth=maxdepth, withdirs=True, detail=True)
    relative = {
        name.rstrip("/")[len(prefix) :]: info
        for name, info in listed.items()
        if name.rstrip("/").startswith(prefix)
    }
    children: dict[str, set[str]] = {}
    for path in relative:
        parent, _, name = path.rpartition("/")
        children.setdefault(parent, set()).add(name)
    outputs = []
    for folder, names in sorted(children.items()):
        marker = output_marker(names)
        if folder and marker is not None:
            searched = folders or depth is None or _depth(folder) < depth
            _skip_output(prefix + folder, marker, searched=searched)
            outputs.append(folder + "/")
    return {
        path: info
        for path, info in relative.items()
        if not any((path + "/").startswith(output) for output in outputs)
    }


def list_entries(
    fs: Any,
    root: str,
    *,
    pattern: str | None,
    recursive: bool,
    local: bool,
    hidden: bool = True,
    folders: bool = False,
    ready_flag: str | None = None,
) -> dict[str, Info]:
    """What a search matches under a folder, as ``{relative path: info}``, sorted.

    With ``ready_flag``, the folder is listed deep enough to see each match's flag in the
    same listing (no request per match), and matches without it are left out, counted in
    one line at INFO.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The folder's filesystem.
    root : str
        The folder, as ``fs`` names it.
    pattern : str or None
        A glob relative to ``root`` (``*`` within a name, ``**`` across folders); None
        matches every entry.
    recursive : bool
        Match at any depth (``root/**/pattern``); else the pattern's own depth (1 for
        None).
    local : bool
        ``root`` is on the local disk: walked by :func:`walk_local` (links followed).
    hidden : bool, default True
        Whether to look inside hidden folders (the local walk skips them otherwise).
    folders : bool, default False
        The search is for folders: a remote store is listed one level deeper, so that a
        matched folder that holds a neurobatch output is recognised (and warned about).
    ready_flag : str, optional
        A relative path that must exist for a match of the searched type to be kept: inside
        a matched folder (``folders``) or beside a matched file; leading ``..`` go up from
        there, within ``root``.

    Returns
    -------
    dict of str to dict
        Relative path -> fsspec-style info (``name``, ``size``, ``type``, ...), for files
        and folders that match.

    Examples
    --------
    >>> import fsspec
    >>> fs = fsspec.filesystem("memory")
    >>> for name in ["a.csv", "sub/b.csv", "old-run/manifest.parquet", "old-run/logs/run.log",
    ...              "old-run/c.csv"]:
    ...     fs.pipe(f"/listing-doc/{name}", b"x")
    >>> sorted(list_entries(fs, "/listing-doc", pattern="*.csv", recursive=True, local=False))
    ['a.csv', 'sub/b.csv']
    >>> fs.pipe("/listing-doc/sub/done.flag", b"")
    >>> sorted(list_entries(fs, "/listing-doc", pattern="*.csv", recursive=True, local=False,
    ...                     ready_flag="done.flag"))
    ['sub/b.csv']
    """
    regex, depth = _matcher(pattern, recursive)
    # a flag lies this much deeper than the match it marks: inside it, or beside it (or, with
    # leading "..", in a folder above it)
    parts = [] if ready_flag is None else ready_flag.split("/")
    deeper = max(0, len(parts) - 2 * parts.count("..") - (0 if folders else 1))
    listed = None if depth is None else depth + deeper
    if local:
        flag_hidden = any(part.startswith(".") and part != ".." for part in parts)
        entries = walk_local(root, maxdepth=listed, hidden=hidden or flag_hidden, folders=folders)
    else:
        entries = _remote_entries(fs, root, listed, folders)
    matched = {
        path: info
        for path, info in sorted(entries.items())
        if (depth is None or _depth(path) <= depth) and (regex is None or regex.match(path))
    }
    if ready_flag is None:
        return matched
    searched = "directory" if folders else "file"
    unready = [
        path
        for path, info in matched.items()
        if info.get("type") == searched
        and ready_flag_path(path, ready_flag, folder=folders) not in entries
    ]
    if unready:
        logger.info(
            "%d input(s) under %s without their ready flag %r (such as %r): left out until it "
            "is written",
            len(unready),
            root,
            ready_flag,
            unready[0],
        )
    left_out = set(unready)
    return {path: info for path, info in matched.items() if path not in left_out}


def ready_flag_path(path: str, ready_flag: str, *, folder: bool) -> str:
    """Where the ready flag of an input lies: inside it (a folder) or beside it (a file).

    Parameters
    ----------
    path : str
        The input, ``/``-separated (relative to the listed folder, or absolute).
    ready_flag : str
        ``input.ready_flag``: a relative path; leading ``..`` go up.
    folder : bool
        Whether the input is a folder.

    Returns
    -------
    str
        The flag's path, normalised.

    Examples
    --------
    >>> ready_flag_path("s1/raw_photometry_data/a.csv", "../raw_session.flag", folder=False)
    's1/raw_session.flag'
    >>> ready_flag_path("s1", "raw_session.flag", folder=True)
    's1/raw_session.flag'
    """
    base = path if folder else path.rpartition("/")[0]
    return posixpath.normpath(f"{base}/{ready_flag}" if base else ready_flag)
