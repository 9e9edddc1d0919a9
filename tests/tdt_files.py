"""A real TDT block folder, written to TDT's layout (TSQ headers, TEV data, Tbk notes), as
``tdt.read_block`` documents and reads it: for the TDT loader's tests and the pipelines that
mix TDT blocks with other sources."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

# tdt's constants (tdt/__init__.py)
EVTYPE_STRON = 0x101
EVTYPE_STREAM = 0x8101
EVTYPE_MARK = 0x8801
EVMARK_STARTBLOCK = 1
EVMARK_STOPBLOCK = 2
DFORM_FLOAT = 0
DFORM_DOUBLE = 4
TDT_FS = float(np.float32(1017.2526))  # a rate as TDT stores it: a float32
TDT_TICK = 195312.5  # tdt rounds epoc timestamps to this clock


def _code(name: str) -> int:
    """A store's 4-character name as the TSQ's little-endian uint32 code."""
    return int.from_bytes(name.encode("ascii"), "little")


def _tsq_header(
    *,
    size: int,
    evtype: int,
    code: int,
    channel: int = 0,
    sortcode: int = 0,
    timestamp: float = 0.0,
    offset: int = 0,
    strobe: float | None = None,
    dform: int = 0,
    fs: float = 0.0,
) -> bytes:
    """One 40-byte TSQ event header (TTank's tsqEventHeader).

    ``size`` (int32, in 4-byte words, the 10-word header included), ``type`` (int32),
    ``code`` (uint32), ``channel`` and ``sortcode`` (uint16), ``timestamp`` (float64,
    seconds since the epoch), ``ev_offset`` (uint64 byte offset into the TEV) or ``strobe``
    (float64 epoc value), ``format`` (int32) and ``frequency`` (float32).
    """
    head = struct.pack("<iiIHHd", size, evtype, code, channel, sortcode, timestamp)
    value = struct.pack("<Q", offset) if strobe is None else struct.pack("<d", strobe)
    return head + value + struct.pack("<if", dform, fs)


def write_tdt_block(
    folder: Path,
    *,
    streams: Mapping[str, NDArray[np.float32]],
    epocs: Mapping[str, NDArray[np.float64]],
    fs: float = TDT_FS,
    points: int = 256,
    start: float = 1_700_000_000.0,
    tank: str = "Tank",
) -> Path:
    """Write a TDT block folder that ``tdt.read_block`` reads.

    Files: ``<tank>_<block>.tsq`` (event headers: a file header, the start-of-block mark,
    the stream blocks of ``points`` float32 samples and the epoc onsets in time order, the
    end-of-block mark), ``.tev`` (the stream samples the headers point into), ``.Tbk``
    (block notes: one entry per store between ``[USERNOTEDELIMITER]`` marks) and ``.tnt``
    (the notes file: its version line, no notes).
    """
    folder.mkdir(parents=True)
    stem = folder / f"{tank}_{folder.name}"
    events: list[tuple[float, int, bytes]] = []  # (time, order, header)
    tev = bytearray()
    for k, (name, data) in enumerate(streams.items()):
        if data.size % points:
            raise ValueError("stream length must be a multiple of points")
        for b, block in enumerate(data.reshape(-1, points)):
            t = start + b * points / fs
            header = _tsq_header(
                size=10 + points,  # float32 samples: one word each
                evtype=EVTYPE_STREAM,
                code=_code(name),
                channel=1,
                timestamp=t,
                offset=len(tev),
                dform=DFORM_FLOAT,
                fs=fs,
            )
            tev += block.astype("<f4").tobytes()
            events.append((t, k, header))
    for name, onsets in epocs.items():
        for value, onset in enumerate(onsets, start=1):
            header = _tsq_header(
                size=10,
                evtype=EVTYPE_STRON,
                code=_code(name),
                channel=0x2020,  # the buddy epoc: "    " (none)
                sortcode=0x2020,
                timestamp=start + float(onset),
                strobe=float(value),
                dform=DFORM_DOUBLE,
            )
            events.append((start + float(onset), len(streams), header))
    events.sort(key=lambda e: (e[0], e[1]))
    duration = max(d.size for d in streams.values()) / fs
    mark = {"size": 10, "evtype": EVTYPE_MARK}
    tsq = [
        bytes(40),  # the file's own header record, not an event
        _tsq_header(**mark, code=EVMARK_STARTBLOCK, timestamp=start),
        *(header for _, _, header in events),
        _tsq_header(**mark, code=EVMARK_STOPBLOCK, timestamp=start + duration),
    ]
    stem.with_suffix(".tsq").write_bytes(b"".join(tsq))
    stem.with_suffix(".tev").write_bytes(bytes(tev))
    notes = "".join(
        f"NAME=StoreName;TYPE=L;VALUE={name};\n"
        f"NAME=HeadName;TYPE=L;VALUE={'Fi1r' if name in streams else 'Ep' + name};\n"
        "NAME=Enabled;TYPE=L;VALUE=1;\n"
        for name in [*streams, *epocs]
    )
    delimiter = "[USERNOTEDELIMITER]"
    stem.with_suffix(".Tbk").write_bytes(
        (delimiter + "block notes" + delimiter + notes + delimiter).encode("cp437")
    )
    stem.with_suffix(".tnt").write_text("1\n")
    return folder
