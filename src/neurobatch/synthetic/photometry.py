"""Two-channel fibre photometry recordings, and batches of them in PhoPro's CSV layout."""

from __future__ import annotations

import functools
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv
import scipy.signal
import xarray as xr

__all__ = ["EVENT_NAMES", "photometry_recording", "write_photometry_batch"]

#: The behavioural events of :func:`photometry_recording`, in column order.
EVENT_NAMES = ("trial_cue", "lever1", "lever2", "shock")


def photometry_recording(
    *,
    duration_s: float = 600.0,
    fs: float = 1000.0,
    seed: int = 0,
    mean_iti_s: float = 20.0,
    response_dff: float = 0.08,
) -> xr.Dataset:
    """Simulate one two-channel photometry recording with behavioural events.

    The isosbestic channel carries photobleaching (two exponentials), slow drift and
    motion artefacts; the signal channel is a scaled copy of the same baseline times
    ``1 + dF/F``, where dF/F holds calcium transients (fast rise, 0.4 s decay) after each
    lever press and spontaneously, plus independent shot noise on both channels.

    Events: ``trial_cue`` every ``mean_iti_s`` seconds on average (jittered); after about
    80 % of cues a ``lever1`` or ``lever2`` press 2-4 s later; a ``shock`` after 10 % of
    cues, 5 s later.

    Parameters
    ----------
    duration_s : float, default 600
        Length of the recording in seconds.
    fs : float, default 1000
        Sampling rate in Hz.
    seed : int, default 0
        Seed of the random generator.
    mean_iti_s : float, default 20
        Mean interval between trial cues, in seconds.
    response_dff : float, default 0.08
        Peak dF/F of a lever-press transient.

    Returns
    -------
    xarray.Dataset
        ``signal(time)`` and ``isosbestic(time)`` (float64), coordinate ``time`` in
        seconds; ``event_time(event)`` with coordinate ``event_name(event)``, sorted by
        time; ``true_dff(time)`` (the planted dF/F, for checks); metadata in ``attrs``.

    Examples
    --------
    >>> rec = photometry_recording(duration_s=600.0, fs=100.0, seed=1)
    >>> rec.sizes["time"], rec.attrs["sampling_rate"]
    (60000, 100.0)
    >>> sorted(set(rec.event_name.values.tolist()))
    ['lever1', 'lever2', 'shock', 'trial_cue']
    """
    rng = np.random.default_rng(seed)
    n = round(duration_s * fs)
    t = np.arange(n) / fs

    # behaviour
    cues = np.cumsum(rng.uniform(0.5, 1.5, size=int(duration_s / mean_iti_s) + 2) * mean_iti_s)
    cues = cues[cues < duration_s - 10.0]
    pressed = rng.random(cues.size) < 0.8
    which = rng.random(cues.size) < 0.5
    press_times = cues + rng.uniform(2.0, 4.0, size=cues.size)
    shocked = rng.random(cues.size) < 0.1
    events = {
        "trial_cue": cues,
        "lever1": press_times[pressed & which],
        "lever2": press_times[pressed & ~which],
        "shock": cues[shocked] + 5.0,
    }

    # calcium transients: lever-locked plus spontaneous
    spontaneous = np.sort(rng.uniform(0, duration_s, size=int(duration_s / 15)))
    onsets = np.concatenate([press_times[pressed], spontaneous])
    amplitudes = np.concatenate(
        [
            response_dff * rng.uniform(0.7, 1.3, size=int(pressed.sum())),
            0.3 * response_dff * rng.uniform(0.5, 1.5, size=spontaneous.size),
        ]
    )
    impulses = np.zeros(n)
    np.add.at(impulses, np.minimum((onsets * fs).astype(np.int64), n - 1), amplitudes)
    kernel_t = np.arange(int(3.0 * fs)) / fs
    kernel = (1 - np.exp(-kernel_t / 0.05)) * np.exp(-kernel_t / 0.4)
    kernel /= kernel.max()
    true_dff = scipy.signal.oaconvolve(impulses, kernel)[:n]

    # shared baseline: bleaching, drift, motion artefacts
    bleach = 1.0 + 0.25 * np.exp(-t / (0.4 * max(duration_s, 60.0))) + 0.08 * np.exp(-t / 30.0)
    drift = 0.01 * np.sin(2 * np.pi * t / max(duration_s, 1.0) + rng.uniform(0, 2 * np.pi))
    motion = np.zeros(n)
    for start in rng.uniform(0, duration_s, size=max(1, int(duration_s / 120))):
        i0 = int(start * fs)
        width = int(rng.uniform(0.2, 1.0) * fs)
        motion[i0 : i0 + width] -= rng.uniform(0.02, 0.06) * np.hanning(
            len(motion[i0 : i0 + width])
        )
    baseline = bleach + drift + motion

    isosbestic = 0.9 * baseline + 0.003 * rng.standard_normal(n)
    signal = 1.6 * baseline * (1 + true_dff) + 0.1 + 0.004 * rng.standard_normal(n)

    names = np.concatenate([np.full(v.size, k) for k, v in events.items()])
    times = np.concatenate(list(events.values()))
    order = np.argsort(times, kind="stable")
    return xr.Dataset(
        {
            "signal": ("time", signal),
            "isosbestic": ("time", isosbestic),
            "true_dff": ("time", true_dff),
            "event_time": ("event", times[order]),
        },
        coords={"time": t, "event_name": ("event", names[order].astype(str))},
        attrs={
            "sampling_rate": float(fs),
            "subject": f"mouse-{seed:03d}",
            "sex": "F" if seed % 2 else "M",
            "age": 60 + seed % 30,
            "session": f"session-{seed:03d}",
            "source": "neurobatch.synthetic.photometry_recording",
        },
    )


def write_photometry_batch(
    folder: str | Path,
    *,
    n_items: int = 8,
    duration_s: float = 600.0,
    fs: float = 1000.0,
    seed: int = 0,
    awkward: bool = True,
    processes: int = 1,
) -> list[Path]:
    """Write a batch of synthetic recordings in PhoPro's CSV layout, with JSON sidecars.

    Each ``experiment_NNN.csv`` holds a leading unnamed index column, ``time``, ``signal``,
    ``isosbestic`` and one 0/1 flag column per event of :data:`EVENT_NAMES` (the flag is 1 on
    the sample nearest each event); ``experiment_NNN.json`` beside it holds the subject,
    sex, age and session. Recording ``k`` is :func:`photometry_recording` with seed
    ``seed + k``.

    With ``awkward``, the batch holds what real batches hold: in the first recording a
    trial with both levers pressed (``lever2`` 0.5 s after a ``lever1`` press) and a cue 3 s
    before the end (its window runs past the recording); every third sidecar also has a
    ``notes`` entry that the others lack.

    Parameters
    ----------
    folder : str or pathlib.Path
        Where to write; created if missing.
    n_items : int, default 8
        Number of recordings.
    duration_s : float, default 600
        Length of each recording, seconds.
    fs : float, default 1000
        Sampling rate, Hz.
    seed : int, default 0
        Seed of the first recording.
    awkward : bool, default True
        Plant the awkward trials and the uneven sidecars described above.
    processes : int, default 1
        Write the recordings in this many processes at once (the files are the same).

    Returns
    -------
    list of pathlib.Path
        The CSV files, sorted.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     paths = write_photometry_batch(tmp, n_items=2, duration_s=60.0, fs=50.0)
    ...     header = paths[0].read_text().splitlines()[0]
    ...     sidecar = json.loads(paths[0].with_suffix(".json").read_text())
    >>> [p.name for p in paths]
    ['experiment_001.csv', 'experiment_002.csv']
    >>> header
    '"","time","signal","isosbestic","trial_cue","lever1","lever2","shock"'
    >>> sorted(sidecar)
    ['age', 'notes', 'session', 'sex', 'subject']
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write = functools.partial(
        _write_photometry_item, folder, duration_s=duration_s, fs=fs, seed=seed, awkward=awkward
    )
    if processes <= 1:
        return [write(k) for k in range(n_items)]
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with ProcessPoolExecutor(min(processes, n_items), mp_context=spawn) as pool:
        return list(pool.map(write, range(n_items)))


def _write_photometry_item(
    folder: Path, k: int, *, duration_s: float, fs: float, seed: int, awkward: bool
) -> Path:
    """Write recording ``k`` of :func:`write_photometry_batch` and its sidecar."""
    rec = photometry_recording(duration_s=duration_s, fs=fs, seed=seed + k)
    time = rec["time"].to_numpy()
    events = {
        name: rec["event_time"].to_numpy()[rec["event_name"].to_numpy() == name]
        for name in EVENT_NAMES
    }
    if awkward and k == 0:
        if events["lever1"].size:
            events["lever2"] = np.sort(np.append(events["lever2"], events["lever1"][0] + 0.5))
        events["trial_cue"] = np.append(events["trial_cue"], time[-1] - 3.0)
    columns: dict[str, pa.Array] = {
        "": pa.array(np.arange(time.size)),
        "time": pa.array(time),
        "signal": pa.array(rec["signal"].to_numpy()),
        "isosbestic": pa.array(rec["isosbestic"].to_numpy()),
    }
    for name, times in events.items():
        flags = np.zeros(time.size, dtype=np.int8)
        flags[np.clip(np.rint((times - time[0]) * fs).astype(np.int64), 0, time.size - 1)] = 1
        columns[name] = pa.array(flags)
    path = folder / f"experiment_{k + 1:03d}.csv"
    pyarrow.csv.write_csv(pa.table(columns), path)
    sidecar = {key: rec.attrs[key] for key in ("subject", "sex", "age", "session")}
    if awkward and k % 3 == 0:
        sidecar["notes"] = f"fibre re-seated before session {k + 1}"
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return path
