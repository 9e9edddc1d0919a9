"""NWB fiber photometry files as the tests write them, with pynwb and ndx-fiber-photometry.

A file holds what ndx-fiber-photometry's README shows: the devices (an optical fibre with
its insertion, one excitation source per wavelength, a photodetector), the indicator, a
``FiberPhotometryTable`` with one row per fibre and excitation wavelength, the
``FiberPhotometry`` lab metadata, and the recordings as ``FiberPhotometryResponseSeries`` in
acquisition: one per wavelength, or one 2-D series whose columns are the table's rows.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from ndx_fiber_photometry import (  # type: ignore[import-untyped]
    FiberPhotometry,
    FiberPhotometryIndicators,
    FiberPhotometryResponseSeries,
    FiberPhotometryTable,
)
from ndx_ophys_devices import (  # type: ignore[import-untyped]
    ExcitationSource,
    FiberInsertion,
    Indicator,
    OpticalFiber,
    Photodetector,
)
from numpy.typing import NDArray
from pynwb import NWBHDF5IO, NWBFile  # type: ignore[import-untyped]
from pynwb.file import Subject  # type: ignore[import-untyped]

START = dt.datetime(2024, 5, 6, 10, 0, tzinfo=dt.UTC)
CONVERSION = 0.5


def new_file(identifier: str = "fp-1", *, subject: str = "m7") -> NWBFile:
    return NWBFile(
        session_description="fiber photometry, lever task",
        identifier=identifier,
        session_start_time=START,
        subject=Subject(
            subject_id=subject, species="Mus musculus", sex="F", age="P90D", description="mouse"
        ),
    )


def add_table(
    nwbfile: NWBFile, rows: Sequence[tuple[str, float]], *, indicator: str = "GCaMP6f"
) -> FiberPhotometryTable:
    """The devices, the indicator and a FiberPhotometryTable of (location, wavelength) rows."""
    label = Indicator(name="indicator", label=indicator, description="green calcium indicator")
    detector = Photodetector(name="photodetector", description="photoreceiver")
    nwbfile.add_device(detector)
    fibers: dict[str, Any] = {}
    sources: dict[float, Any] = {}
    table = FiberPhotometryTable(name="fiber_photometry_table", description="fibres and light")
    for location, wavelength in rows:
        if location not in fibers:
            fibers[location] = OpticalFiber(
                name=f"fiber_{location}",
                description=f"fibre in {location}",
                fiber_insertion=FiberInsertion(name="fiber_insertion", depth_in_mm=4.0),
            )
            nwbfile.add_device(fibers[location])
        if wavelength not in sources:
            sources[wavelength] = ExcitationSource(
                name=f"led_{wavelength:g}", description=f"{wavelength:g} nm LED"
            )
            nwbfile.add_device(sources[wavelength])
        table.add_row(
            location=location,
            excitation_wavelength_in_nm=wavelength,
            emission_wavelength_in_nm=525.0,
            indicator=label,
            optical_fiber=fibers[location],
            excitation_source=sources[wavelength],
            photodetector=detector,
        )
    nwbfile.add_lab_meta_data(
        FiberPhotometry(
            name="fiber_photometry",
            fiber_photometry_table=table,
            fiber_photometry_indicators=FiberPhotometryIndicators(indicators=[label]),
        )
    )
    return table


def response_series(
    table: FiberPhotometryTable,
    name: str,
    data: NDArray[Any],
    rows: list[int],
    *,
    time: NDArray[np.float64] | None = None,
    rate: float | None = None,
    conversion: float = 1.0,
) -> FiberPhotometryResponseSeries:
    region = table.create_fiber_photometry_table_region(region=rows, description="channels")
    timing: dict[str, Any] = {"timestamps": time}
    if rate is not None:  # sampled at a rate from the first time
        timing = {"rate": rate, "starting_time": 0.0 if time is None else float(time[0])}
    return FiberPhotometryResponseSeries(
        name=name,
        description="demodulated fluorescence",
        data=data,
        unit="V",
        conversion=conversion,
        fiber_photometry_table_region=region,
        **timing,
    )


def add_trials(nwbfile: NWBFile, cues: NDArray[np.float64], presses: NDArray[np.float64]) -> None:
    """The trials table: one row per cue and per lever press, labelled in column ``kind``."""
    nwbfile.add_trial_column(name="kind", description="what started the interval")
    rows = sorted([(t, "cue") for t in cues] + [(t, "lever") for t in presses])
    for start, kind in rows:
        nwbfile.add_trial(start_time=float(start), stop_time=float(start) + 0.5, kind=kind)


def write(path: Path, nwbfile: NWBFile) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


def per_wavelength_file(
    path: Path,
    time: NDArray[np.float64],
    channels: Mapping[float, NDArray[np.float64]],
    events: Mapping[str, NDArray[np.float64]],
    *,
    identifier: str = "fp-1",
    rate: float | None = None,
) -> Path:
    """One fibre (VTA), one FiberPhotometryResponseSeries per wavelength (``raw_<nm>``),
    stored as ``values / CONVERSION``; the trials table labels the events in ``kind``."""
    nwbfile = new_file(identifier)
    table = add_table(nwbfile, [("VTA", wavelength) for wavelength in channels])
    for row, (wavelength, values) in enumerate(channels.items()):
        nwbfile.add_acquisition(
            response_series(
                table,
                f"raw_{wavelength:g}",
                values / CONVERSION,
                [row],
                time=time,
                rate=rate,
                conversion=CONVERSION,
            )
        )
    add_trials(nwbfile, events["cue"], events["lever"])
    return write(path, nwbfile)


_NDX_EVENTS_FILE = """
import datetime as dt, sys, warnings
from pynwb import NWBHDF5IO, NWBFile
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # its EventsTable is core since NWB 2.9
    import ndx_events
f = NWBFile(session_description="d", identifier="i",
            session_start_time=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
with NWBHDF5IO(sys.argv[1], "w") as io:
    io.write(f)
"""


def cache_ndx_events(path: Path) -> None:
    """Cache ndx-events 0.4's schema in a file, as pynwb does when it was imported.

    The file is written by another process: importing ndx-events here would put its schema
    in every file this process writes after (pynwb's global type map).
    """
    donor = path.with_name(path.stem + "-ndx-events.nwb")
    subprocess.run([sys.executable, "-c", _NDX_EVENTS_FILE, str(donor)], check=True)
    with h5py.File(donor, "r") as source, h5py.File(path, "r+") as target:
        source.copy(source["specifications/ndx-events"], target["specifications"])
    donor.unlink()
