"""The arguments models of the lazy loader formats (raw binary, SpikeGLX, NWB, arrays, pickle).

The lazy loaders read nothing up front but headers and metadata; their arguments describe
what to read (and, for headerless files, the layout) and never ask for downsampling.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from neurobatch.config.arguments import LoaderArguments

__all__ = [
    "LazyLoaderArguments",
    "NWBArguments",
    "NpyArguments",
    "RGCPickleArguments",
    "RawBinaryArguments",
    "SpikeGLXArguments",
    "ZarrArguments",
]

_DIMS: dict[str, tuple[str, ...]] = {"traces": ("time", "channel"), "frames": ("frame", "y", "x")}


class LazyLoaderArguments(LoaderArguments):
    """Arguments of the lazy loaders: the common ones, without downsampling.

    The lazy loaders read nothing up front, so they do not downsample (``downsample`` must be
    null or 1); ``annotation`` (sidecar metadata) and ``sampling_tolerance`` (for timestamps
    read from a file) work as for every loader.

    Examples
    --------
    >>> LazyLoaderArguments(annotation="{stem}.json").event_names()
    []
    >>> from pydantic import ValidationError
    >>> try:
    ...     LazyLoaderArguments(downsample=4)
    ... except ValidationError as e:
    ...     print(e.errors()[0]["loc"], e.errors()[0]["msg"])
    ('downsample',) Value error, the lazy loaders (raw binary, NWB, arrays, pickle) do not downsample; leave downsample unset and resample after loading
    """

    @field_validator("downsample")
    @classmethod
    def _no_downsampling(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError(
                "the lazy loaders (raw binary, NWB, arrays, pickle) do not downsample; "
                "leave downsample unset and resample after loading"
            )
        return value


def _numeric_dtype(value: Any) -> str:
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise ValueError(
            f"{value!r} is not a NumPy dtype; expected e.g. 'int16', '<i2' or 'float32'"
        ) from None
    if dtype.kind not in "iuf":
        raise ValueError(
            f"dtype {value!r} ({dtype}) is not an integer or float type; expected e.g. "
            "'int16', 'uint16' or 'float32'"
        )
    return str(dtype.str)


class RawBinaryArguments(LazyLoaderArguments):
    """Arguments of the ``raw-binary`` loader: the layout of a headerless interleaved file.

    Examples
    --------
    >>> args = RawBinaryArguments(n_channels=4, dtype="int16", sampling_rate=30000)
    >>> args.dtype, args.offset, args.gain_uv
    ('<i2', 0, None)
    """

    n_channels: int = Field(ge=1, description="Channels interleaved in each sample.")
    dtype: str = Field(
        description="Stored type of one value, a NumPy dtype ('int16', '<i2', 'float32', ...)."
    )
    sampling_rate: float = Field(gt=0, allow_inf_nan=False, description="Samples per second.")
    offset: int = Field(0, ge=0, description="Bytes of header before the first sample.")
    gain_uv: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Microvolts per stored unit, when known."
    )
    channel_names: list[str] | None = Field(
        None, description="Names of the channels (coordinate 'channel'); null = 0, 1, 2, ..."
    )
    t0: float = Field(0.0, allow_inf_nan=False, description="Time of the first sample (s).")

    @field_validator("dtype", mode="before")
    @classmethod
    def _check_dtype(cls, value: Any) -> str:
        return _numeric_dtype(value)

    @model_validator(mode="after")
    def _check_names(self) -> RawBinaryArguments:
        names = self.channel_names
        if names is not None:
            if len(names) != self.n_channels:
                raise ValueError(
                    f"channel_names has {len(names)} names for n_channels={self.n_channels}"
                )
            if len(set(names)) != len(names):
                raise ValueError("channel_names repeats a name; each channel needs its own")
        return self


class SpikeGLXArguments(LazyLoaderArguments):
    """Arguments of the ``spikeglx`` loader.

    Examples
    --------
    >>> SpikeGLXArguments().include_digital, SpikeGLXArguments().time_origin
    (False, 'file')
    """

    include_digital: bool = Field(
        False,
        description=(
            "Keep the digital channels (imec/obx sync word, NI-DAQ and obx digital words); "
            "by default traces hold the analog channels only."
        ),
    )
    time_origin: Literal["file", "stream"] = Field(
        "file",
        description=(
            "file: time 0 is the file's first sample; stream: firstSample / rate, the time "
            "since the stream started (to align files of one run)."
        ),
    )


class NWBArguments(LazyLoaderArguments):
    """Arguments of the ``nwb`` loader: which objects of the file to read.

    ``electrical_series`` and ``image_series`` take an object's name (``"raw"``) or its path
    in the file (``"processing/ecephys/LFP/lfp"``); ``"auto"`` picks the only one of its
    type (preferring ``acquisition`` for an ``ElectricalSeries``, ``stimulus`` for an
    ``ImageSeries``) and reads none when the file has none; null reads none.

    Examples
    --------
    >>> args = NWBArguments(events=["licks", "reward"])
    >>> args.electrical_series, args.units, args.event_names()
    ('auto', 'auto', ['licks', 'reward'])
    """

    electrical_series: str | None = Field(
        "auto", description="The ElectricalSeries to read as traces: a name, a path, auto or null."
    )
    image_series: str | None = Field(
        "auto", description="The ImageSeries to read as frames: a name, a path, auto or null."
    )
    units: bool | Literal["auto"] = Field(
        "auto",
        description="Read the Units table's spike times: true, false, or auto (when present).",
    )
    events: list[str] = Field(
        default_factory=list,
        description=(
            "TimeSeries or event tables (EventsTable, TimeIntervals) whose times are events, "
            "by name or path; each event is named as given here."
        ),
    )
    image_dims: Literal["xy", "yx"] = Field(
        "xy",
        description=(
            "Axis order of the ImageSeries after the frame axis: xy (the NWB layout, "
            "(frame, x, y)) or yx (files written as (frame, y, x))."
        ),
    )

    def event_names(self) -> list[str]:
        """The event names this loader provides: ``events``.

        Returns
        -------
        list of str
            The names, in order.

        Examples
        --------
        >>> NWBArguments(events=["cue"]).event_names()
        ['cue']
        """
        return list(self.events)


class NpyArguments(LazyLoaderArguments):
    """Arguments of the ``npy`` loader.

    Examples
    --------
    >>> NpyArguments(kind="traces", sampling_rate=1000.0, dims=["channel", "time"]).dims
    ['channel', 'time']
    >>> NpyArguments(kind="frames", fps=60.0).stored_dims(3)
    ('frame', 'y', 'x')
    """

    kind: Literal["traces", "frames"] = Field(
        description="traces: an ephys recording (time, channel); frames: a movie (frame, y, x)."
    )
    sampling_rate: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Samples per second (traces)."
    )
    fps: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Frames per second (frames)."
    )
    dims: list[str] | None = Field(
        None,
        description=(
            "Names of the stored axes, in order: a permutation of time, channel (a 1-D array "
            "is one channel: [time]) or of frame, y, x; null = that order."
        ),
    )
    t0: float = Field(0.0, allow_inf_nan=False, description="Time of the first sample (traces).")
    gain_uv: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Microvolts per stored unit (traces)."
    )
    channel_names: list[str] | None = Field(
        None, description="Names of the channels (traces); null = 0, 1, 2, ..."
    )
    stimulus_onset: float = Field(
        0.0, allow_inf_nan=False, description="Time of the first frame (frames), in seconds."
    )
    pixel_size: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Size of one pixel (frames), when known."
    )

    @model_validator(mode="after")
    def _check_kind(self) -> NpyArguments:
        if self.kind == "traces":
            if self.sampling_rate is None:
                raise ValueError("kind 'traces' needs sampling_rate")
            wrong = [
                name
                for name, value in (
                    ("fps", self.fps),
                    ("pixel_size", self.pixel_size),
                    ("stimulus_onset", self.stimulus_onset or None),
                )
                if value is not None
            ]
        else:
            if self.fps is None:
                raise ValueError("kind 'frames' needs fps")
            wrong = [
                name
                for name, value in (
                    ("sampling_rate", self.sampling_rate),
                    ("gain_uv", self.gain_uv),
                    ("channel_names", self.channel_names),
                    ("t0", self.t0 or None),
                )
                if value is not None
            ]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} do(es) not apply to kind {self.kind!r}")
        if self.dims is not None:
            expected = _DIMS[self.kind]
            allowed = [set(expected)] + ([{"time"}] if self.kind == "traces" else [])
            if len(set(self.dims)) != len(self.dims) or set(self.dims) not in allowed:
                raise ValueError(
                    f"dims {self.dims} is not an order of {', '.join(expected)}"
                    + (" (or [time] for one channel)" if self.kind == "traces" else "")
                )
        if self.channel_names is not None and len(set(self.channel_names)) != len(
            self.channel_names
        ):
            raise ValueError("channel_names repeats a name; each channel needs its own")
        return self

    def stored_dims(self, ndim: int) -> tuple[str, ...]:
        """The stored axes' names for an array of ``ndim`` dimensions.

        Parameters
        ----------
        ndim : int
            The array's number of dimensions.

        Returns
        -------
        tuple of str
            ``dims``, or the kind's default order (``("time",)`` for 1-D traces).

        Examples
        --------
        >>> NpyArguments(kind="traces", sampling_rate=1.0).stored_dims(1)
        ('time',)
        """
        if self.dims is not None:
            return tuple(self.dims)
        if self.kind == "traces" and ndim == 1:
            return ("time",)
        return _DIMS[self.kind]


class ZarrArguments(LazyLoaderArguments):
    """Arguments of the ``zarr`` loader.

    Examples
    --------
    >>> ZarrArguments(rename={"data": "traces"}, sampling_rate=30000.0).kind
    'auto'
    """

    kind: Literal["auto", "traces", "frames"] = Field(
        "auto",
        description=(
            "What the store must hold: traces (a recording), frames (a movie), or auto "
            "(either or both, at least one)."
        ),
    )
    group: str | None = Field(None, description="The group inside the store; null = root.")
    rename: dict[str, str] = Field(
        default_factory=dict,
        description="Names in the store -> expected names (e.g. {data: traces, t: time}).",
    )
    sampling_rate: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Samples per second, when the store says neither it nor time.",
    )
    fps: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Frames per second, when the store says neither it nor frame_time.",
    )
    stimulus_onset: float | None = Field(
        None, allow_inf_nan=False, description="Time of the first frame, when not in the store."
    )

    def event_names(self) -> list[str]:
        """The events this loader provides: unknown before the store is read (none).

        Returns
        -------
        list of str
            Always empty: the store's ``event_name`` values are known only when read.

        Examples
        --------
        >>> ZarrArguments().event_names()
        []
        """
        return []


class RGCPickleArguments(LazyLoaderArguments):
    """Arguments of the ``rgc-pickle`` loader.

    Examples
    --------
    >>> args = RGCPickleArguments(allow_pickle=True, session=1)
    >>> args.movie_dims, args.stimulation
    (['x', 'y', 'frame'], None)
    """

    allow_pickle: bool = Field(
        False,
        description=(
            "Read the pickle. Unpickling runs code the file names: set true only for files "
            "you trust; without it the file is refused."
        ),
    )
    session: int | None = Field(
        None, ge=0, description="Which session of a list of sessions; null = the only one."
    )
    stimulation: int | None = Field(
        None,
        ge=0,
        description="Which entry of a session's 'stimulations'; null = the only one.",
    )
    movie_dims: list[str] = Field(
        default_factory=lambda: ["x", "y", "frame"],
        description="Axes of 'movie' as stored: the legacy layout is [x, y, frame].",
    )

    @field_validator("movie_dims")
    @classmethod
    def _check_dims(cls, value: list[str]) -> list[str]:
        if sorted(value) != ["frame", "x", "y"]:
            raise ValueError(f"movie_dims {value} is not an order of frame, x, y")
        return value
