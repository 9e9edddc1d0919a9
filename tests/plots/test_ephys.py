"""Figures of the `filter` pipeline: raw versus filtered traces.

The input is real: a synthetic recording filtered with scipy. The figure is read back as an
image and checked for what it must show.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import scipy.signal
import xarray as xr

from neurobatch.errors import InputError
from neurobatch.plots import trace_snippet
from neurobatch.synthetic import ephys_recording

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FS = 20_000.0


def _png(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    image = np.asarray(matplotlib.image.imread(io.BytesIO(data)))
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return image[..., :3]


def _coloured(image: np.ndarray) -> tuple[int, int]:
    """Pixels clearly red and clearly blue: the diverging colormap's two ends."""
    r, b = image[..., 0], image[..., 2]
    return int(np.sum(r - b > 0.25)), int(np.sum(b - r > 0.25))


# --------------------------------------------------------------------------------------------
# trace_snippet
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recordings() -> tuple[xr.Dataset, xr.Dataset]:
    """A raw synthetic recording (lazy, int16) and its band-pass, in µV."""
    recording, _ = ephys_recording(n_channels=16, duration_s=1.0, fs=FS, seed=3)
    sos = scipy.signal.butter(3, (300.0, 6000.0), "bandpass", fs=FS, output="sos")
    uv = recording.traces.values * recording.attrs["gain_uv"]
    filtered = recording.assign(
        traces=recording.traces.copy(data=scipy.signal.sosfiltfilt(sos, uv, axis=0)).assign_attrs(
            units="uV"
        )
    )
    return recording, filtered


def test_trace_snippet_draws_raw_and_filtered(
    recordings: tuple[xr.Dataset, xr.Dataset], tmp_path: Path
) -> None:
    raw, filtered = recordings
    path = tmp_path / "snippet.png"
    trace_snippet(raw, filtered, str(path), channels=[0, 5, 10, 15], seconds=(0.2, 0.4))
    image = _png(path)
    assert image.shape[1] > image.shape[0] > 200
    # black raw traces on the left, blue filtered ones on the right
    left, right = image[:, : image.shape[1] // 2], image[:, image.shape[1] // 2 :]
    assert np.sum(left.max(axis=2) < 0.2) > 500
    assert _coloured(right)[1] > 500


def test_trace_snippet_defaults_and_long_windows(
    recordings: tuple[xr.Dataset, xr.Dataset], tmp_path: Path
) -> None:
    raw, filtered = recordings
    trace_snippet(raw, filtered, str(tmp_path / "default.png"))  # 8 channels, first 0.2 s
    trace_snippet(raw, filtered.traces, str(tmp_path / "all.svg"), seconds=(0.0, 1.0))
    assert _png(tmp_path / "default.png").std() > 0.05
    assert (tmp_path / "all.svg").read_bytes().startswith(b"<?xml")


def test_trace_snippet_refuses_bad_windows_and_channels(
    recordings: tuple[xr.Dataset, xr.Dataset], tmp_path: Path
) -> None:
    raw, filtered = recordings
    path = str(tmp_path / "snippet.png")
    with pytest.raises(InputError, match=r"seconds=\(5\.0, 6\.0\) selects no sample of raw"):
        trace_snippet(raw, filtered, path, seconds=(5.0, 6.0))
    with pytest.raises(ValueError, match=r"seconds must be \(start, stop\) with start < stop"):
        trace_snippet(raw, filtered, path, seconds=(0.4, 0.2))
    with pytest.raises(InputError, match=r"channels \[99\] are not in raw"):
        trace_snippet(raw, filtered, path, channels=[1, 99])
    with pytest.raises(InputError, match=r"filtered has no variable 'traces'"):
        trace_snippet(raw, filtered.rename(traces="signal"), path)
