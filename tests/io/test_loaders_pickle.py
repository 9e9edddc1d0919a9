"""Tests of the ``rgc-pickle`` loader: the legacy retinal-ganglion STA pickle.

Files are pickled in the legacy layout (``ret1_data.pkl``: a list of sessions, each with its
``stimulations``, each with a movie stored ``(x, y, frame)``, ``fps``, ``pixel_size``,
``stimulus_onset`` and per-unit ``spikes``), and the loaded values compared with the arrays
they were pickled from. Without ``allow_pickle`` the loader must refuse before opening the
file: a pickle that would create a file when unpickled proves it was not.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import fsspec
import numpy as np
import pytest
from numpy.typing import NDArray

from conftest import raise_if_dask_computes
from neurobatch.errors import ConfigError, InputError, InputNotFoundError
from neurobatch.io.loaders import RGCPickleArguments, load_recording, load_rgc_pickle

FPS = 59.9815
ONSET = 0.996


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def legacy_movie(seed: int, n_frames: int = 30) -> NDArray[np.float64]:
    """A binary checkerboard movie in the legacy layout (x, y, frame)."""
    rng = np.random.default_rng(seed)
    return rng.choice([-1.0, 1.0], size=(8, 6, n_frames))


def legacy_spikes(seed: int) -> list[NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    return [np.sort(rng.uniform(0, 2, size=k)) for k in (12, 0, 5)]


def stimulation(seed: int) -> dict[str, Any]:
    movie = legacy_movie(seed)
    return {
        "fps": FPS,
        "movie": movie,
        "n_frames": movie.shape[2],
        "pixel_size": 6.0,
        "stim_height": 480,
        "stim_width": 640,
        "stimulus_onset": ONSET,
        "x_block_size": 80,
        "y_block_size": 80,
        "spikes": legacy_spikes(seed),
    }


def sessions() -> list[dict[str, Any]]:
    return [
        {
            "subject_name": "KO (chx10)",
            "session_date": "2008-06-06",
            "sample_number": 3,
            "stimulations": [stimulation(0), stimulation(1)],
        },
        {
            "subject_name": "KO (pax6)",
            "session_date": "2008-05-16",
            "sample_number": 1,
            "stimulations": [stimulation(2)],
        },
    ]


def dump(path: Path | str, content: Any) -> str:
    with fsspec.open(str(path), "wb") as handle:
        pickle.dump(content, handle)
    return str(path)


@pytest.fixture
def memory_root() -> Iterator[str]:
    fs = fsspec.filesystem("memory")
    root = f"/pickle-tests-{np.random.default_rng().integers(1 << 60)}"
    fs.mkdir(root)
    try:
        yield f"memory://{root}"
    finally:
        fs.rm(root, recursive=True)


def test_legacy_layout(tmp_path: Path, memory_root: str) -> None:
    for url in (str(tmp_path / "ret1_data.pkl"), f"{memory_root}/ret1_data.pkl"):
        dump(url, sessions())
        arguments = {"allow_pickle": True, "session": 0, "stimulation": 1}
        with raise_if_dask_computes():
            ds = load_rgc_pickle(url, arguments, chunk_memory=8 * 6 * 8 * 4)
        assert isinstance(ds.frames.data, da.Array)
        assert isinstance(ds.spike_time.data, da.Array)
        assert ds.frames.dims == ("frame", "y", "x")
        assert ds.frames.data.chunks == ((4,) * 7 + (2,), (6,), (8,))
        expected = legacy_movie(1)
        with dask.config.set(scheduler="threads"):
            # frame N of the legacy movie is movie[:, :, N]; its rows are y, its columns x
            np.testing.assert_array_equal(ds.frames.values, expected.transpose(2, 1, 0))
            np.testing.assert_array_equal(ds.frames.values[7], expected[:, :, 7].T)
            spikes = legacy_spikes(1)
            np.testing.assert_array_equal(ds.spike_time.values, np.concatenate(spikes))
        np.testing.assert_array_equal(ds.frame_time.values, ONSET + np.arange(30) / FPS)
        assert ds.unit.values.tolist() == [0] * 12 + [2] * 5
        assert ds.unit_ids.values.tolist() == [0, 1, 2]  # unit 1 has no spikes, and is listed
        assert ds.attrs["fps"] == FPS
        assert ds.attrs["stimulus_onset"] == ONSET
        assert ds.attrs["pixel_size"] == 6.0
        assert ds.attrs["n_frames"] == 30
        assert ds.attrs["x_block_size"] == 80
        assert ds.attrs["stim_width"] == 640
        assert ds.attrs["subject_name"] == "KO (chx10)"
        assert ds.attrs["session_date"] == "2008-06-06"
        assert ds.attrs["sample_number"] == 3
        assert ds.attrs["source"] == url


def test_one_session_or_one_stimulation(tmp_path: Path) -> None:
    session = sessions()[1]
    url = dump(tmp_path / "session.pkl", session)
    ds = load_rgc_pickle(url, {"allow_pickle": True})
    np.testing.assert_array_equal(ds.frames.values, legacy_movie(2).transpose(2, 1, 0))
    assert ds.attrs["subject_name"] == "KO (pax6)"
    # a bare stimulation dict, spikes by unit id, the movie already (frame, y, x)
    bare = stimulation(3)
    bare["movie"] = bare["movie"].transpose(2, 1, 0)
    bare["spikes"] = {"cell_a": np.array([1.0, 1.5]), "cell_b": np.array([1.25])}
    del bare["pixel_size"]
    url = dump(tmp_path / "bare.pkl", bare)
    ds = load_rgc_pickle(url, {"allow_pickle": True, "movie_dims": ["frame", "y", "x"]})
    np.testing.assert_array_equal(ds.frames.values, bare["movie"])
    assert ds.unit.values.tolist() == ["cell_a", "cell_a", "cell_b"]
    assert ds.unit_ids.values.tolist() == ["cell_a", "cell_b"]
    assert "pixel_size" not in ds.attrs
    assert "subject_name" not in ds.attrs


def test_refused_without_allow_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    url = str(tmp_path / "trap.pkl")
    Path(url).write_bytes(pickle.dumps(Payload()))
    for arguments in ({}, {"allow_pickle": False}):
        with pytest.raises(ConfigError) as e:
            load_rgc_pickle(url, arguments)
        assert one_line(e) == (
            f"refusing to unpickle {url!r}: unpickling runs code from the file; set "
            "loader.allow_pickle: true only for files you trust"
        )
        with pytest.raises(ConfigError, match=r"refusing to unpickle"):
            load_recording(url, arguments, format="rgc-pickle")
    assert not marker.exists()
    # refused before anything is opened: a missing file gives the same refusal
    with pytest.raises(ConfigError, match=r"refusing to unpickle '.*missing\.pkl'"):
        load_rgc_pickle(str(tmp_path / "missing.pkl"), {})


def test_bad_layouts(tmp_path: Path) -> None:
    allow = {"allow_pickle": True}

    def check(content: Any, arguments: dict[str, Any], message: str) -> None:
        url = dump(tmp_path / "bad.pkl", content)
        with pytest.raises(InputError, match=message) as e:
            load_rgc_pickle(url, {**allow, **arguments})
        assert url in one_line(e)

    check(sessions(), {}, r"holds 2 sessions; pick one with loader\.session \(0 to 1\)")
    check(sessions(), {"session": 5}, r"holds 2 sessions; loader\.session=5 is out of range")
    check(sessions(), {"session": 0}, r"holds 2 stimulations; pick one with loader\.stimulation")
    check([], {}, r"holds no sessions")
    check(stimulation(0), {"session": 0}, r"holds one dict, not a list of sessions; unset")
    check(
        stimulation(0), {"stimulation": 1}, r"holds one stimulation .*; unset loader\.stimulation"
    )
    check(42, {}, r"holds a int; expected the legacy layout")
    no_spikes = {k: v for k, v in stimulation(0).items() if k not in ("spikes", "fps")}
    check(no_spikes, {}, r"the stimulation has no 'fps', 'spikes'; its keys: 'movie', ")
    check({**stimulation(0), "movie": np.zeros((3, 3))}, {}, r"'movie' is a 2-D array of float64")
    check({**stimulation(0), "fps": 0}, {}, r"'fps' is 0; expected a positive number")
    check({**stimulation(0), "stimulus_onset": "soon"}, {}, r"'stimulus_onset' is 'soon'")
    check({**stimulation(0), "n_frames": 31}, {}, r"'n_frames' is 31 but 'movie' has 30 frames")
    check({**stimulation(0), "spikes": [np.array([1.0, np.nan])]}, {}, r"unit 0 hold NaN or inf")
    check({**stimulation(0), "spikes": 3.0}, {}, r"'spikes' is a float; expected a list")

    (tmp_path / "text.pkl").write_text("not a pickle")
    with pytest.raises(InputError, match=r"cannot unpickle '.*text\.pkl': ") as e:
        load_rgc_pickle(str(tmp_path / "text.pkl"), allow)
    one_line(e)
    with pytest.raises(InputNotFoundError, match=r"input '.*none\.pkl' does not exist"):
        load_rgc_pickle(str(tmp_path / "none.pkl"), allow)


def test_arguments() -> None:
    assert RGCPickleArguments().allow_pickle is False
    with pytest.raises(
        ConfigError, match=r"allow_pickles: unknown argument; did you mean 'allow_pickle'\?"
    ):
        load_recording("x.pkl", {"allow_pickles": True}, format="rgc-pickle")
    with pytest.raises(
        ConfigError, match=r"movie_dims: Value error, movie_dims \['x', 'y'\] is not an order"
    ):
        load_recording("x.pkl", {"movie_dims": ["x", "y"]}, format="rgc-pickle")
