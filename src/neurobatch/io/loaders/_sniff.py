"""What a file's first bytes are, when they are not what its loader expected.

A CSV loader expects UTF-8 text and a Parquet loader Parquet's ``PAR1`` marks; a file that is
something else (UTF-16 text from Excel's "Unicode text", a binary file, a workbook, a gzip
stream without its ``.gz`` suffix) is named in one line by :func:`not_utf8_text` and
:func:`describe_bytes`, with a hint of what to do.
"""

from __future__ import annotations

import codecs
import re
from typing import NamedTuple

__all__ = ["Found", "describe_bytes", "not_utf8_text"]

_SAVE_AS_UTF8 = "save it again as UTF-8 (in Excel: 'CSV UTF-8')"

# the longer marks first: UTF-32's little-endian mark starts with UTF-16's
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)

_MAGIC = (
    (b"PAR1", "a Parquet file", "use format photometry-parquet"),
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx workbook?)", "export the sheet as CSV UTF-8"),
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "an OLE2 file (an Excel .xls workbook?)",
        "export the sheet as CSV UTF-8",
    ),
    (b"\x1f\x8b", "gzip-compressed data", "name a gzipped CSV '.csv.gz'"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file", "use format nwb for an NWB file"),
    (b"\x93NUMPY", "a NumPy .npy file", "use format npy"),
)

#: Control bytes that never appear in text (tab, line feed, carriage return and form feed do).
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0e-\x1f]")


class Found(NamedTuple):
    """What the bytes are, and what to do about it."""

    what: str
    """What was found, after "is": ``"UTF-16 text (it starts with a UTF-16 byte-order
    mark)"``."""
    hint: str
    """What to do, or ``""``."""


def _text_without_bom(head: bytes) -> Found | None:
    """UTF-16 text without a byte-order mark: ASCII characters with a NUL byte beside each."""
    pairs = len(head) // 2
    if pairs < 4:
        return None
    even, odd = head[0 : 2 * pairs : 2], head[1 : 2 * pairs : 2]
    for zeros, order in ((odd, "little"), (even, "big")):
        if zeros.count(0) >= 0.9 * pairs:
            return Found(f"UTF-16 text ({order}-endian, without a byte-order mark)", _SAVE_AS_UTF8)
    return None


def not_utf8_text(head: bytes) -> Found | None:
    """What the first bytes of a file are, when they are not the start of UTF-8 text.

    A UTF-8 byte-order mark is text. A multi-byte character cut at the end of ``head`` is
    text too (``head`` is a prefix of the file).

    Parameters
    ----------
    head : bytes
        The first bytes of the file (a few KiB are plenty).

    Returns
    -------
    Found or None
        None for UTF-8 text (or an empty ``head``); else what the bytes are: UTF-16 or
        UTF-32 text (by its byte-order mark, or by its NUL bytes), a known binary format
        (Parquet, a ZIP archive or an Excel workbook, gzip, HDF5, ``.npy``), binary data
        (a NUL or another control byte), or text in another encoding.

    Examples
    --------
    >>> not_utf8_text("time,signal\\n0,1\\n".encode("utf-8-sig")) is None
    True
    >>> not_utf8_text("time,signal\\n".encode("utf-16")).what
    'UTF-16 text (it starts with a UTF-16 byte-order mark)'
    >>> not_utf8_text(b"PAR1\\x15\\x04").what
    'a Parquet file'
    >>> not_utf8_text(b"\\x00\\x17\\xa0\\xff").what
    'binary data (byte 0x00 at offset 0)'
    >>> found = not_utf8_text("temps,r\\xe9ponse\\n".encode("latin-1"))
    >>> print(found.what, "->", found.hint)
    text that is not UTF-8 (byte 0xe9 at offset 7: Latin-1 or Windows-1252?) -> save it again as UTF-8 (in Excel: 'CSV UTF-8')
    """
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return Found(
                f"{encoding} text (it starts with a {encoding} byte-order mark)", _SAVE_AS_UTF8
            )
    for magic, what, hint in _MAGIC:
        if head.startswith(magic):
            return Found(what, hint)
    if 0 in head:
        without_bom = _text_without_bom(head)
        if without_bom is not None:
            return without_bom
    control = _CONTROL.search(head)
    if control is not None:
        return Found(
            f"binary data (byte 0x{head[control.start()]:02x} at offset {control.start()})", ""
        )
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as e:
        return Found(
            f"text that is not UTF-8 (byte 0x{head[e.start]:02x} at offset {e.start}: "
            "Latin-1 or Windows-1252?)",
            _SAVE_AS_UTF8,
        )
    return None


def describe_bytes(head: bytes) -> str:
    """What the first bytes of a file are, in a few words, whatever they are.

    Parameters
    ----------
    head : bytes
        The first bytes of the file.

    Returns
    -------
    str
        ``"an empty file"``, ``"UTF-8 text (it starts 'time,signal')"``, or what
        :func:`not_utf8_text` says.

    Examples
    --------
    >>> describe_bytes(b"")
    'an empty file'
    >>> describe_bytes(b"time,signal,isosbestic\\n0.0,1.0,0.5\\n")
    "UTF-8 text (it starts 'time,signal,isosbestic')"
    >>> describe_bytes("time\\n".encode("utf-16-be"))
    'UTF-16 text (big-endian, without a byte-order mark)'
    """
    if not head:
        return "an empty file"
    found = not_utf8_text(head)
    if found is not None:
        return found.what
    text = head.decode("utf-8", errors="ignore").removeprefix("\ufeff")
    first = text.strip().splitlines()[0] if text.strip() else ""
    shown = first if len(first) <= 40 else first[:37] + "..."
    return f"UTF-8 text (it starts {shown!r})" if shown else "blank text"
