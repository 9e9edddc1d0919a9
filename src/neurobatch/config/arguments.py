"""The arguments models of the loader formats that read into memory, and their base models.

Every loader format has a pydantic arguments model (``extra="forbid"``, frozen) with
``event_names()``: the events the loader provides. :class:`LoaderArguments` holds what every
format takes (sidecar metadata, downsampling, sampling checks), :class:`ColumnArguments` the
columns of the column formats, and :class:`LazyLoaderArguments` (in
:mod:`neurobatch.config.lazy_arguments`) what the lazy formats share.
"""

from __future__ import annotations

import string
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "PLAUSIBLE_RATES_HZ",
    "TIME_UNITS",
    "ColumnArguments",
    "LoaderArguments",
    "PhotometryCSVArguments",
    "PhotometryParquetArguments",
    "TDTArguments",
]

_TEMPLATE_FIELDS = ("stem", "name", "parent")
_SIDECAR_SUFFIXES = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}

#: The units a time column may be in, with how many of each make a second.
TIME_UNITS: dict[str, float] = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}

#: The sampling rates (Hz, ``(low, high)``) a recording of each kind may have; an item whose
#: rate is outside fails at ingest (``loader.plausible_rate_hz`` sets other bounds).
#: Photometry rigs sample at 10 Hz to ~20 kHz per channel (Neurophotometrics 10-160 Hz,
#: pyPhotometry up to 1 kHz, TDT's ~1017 Hz, Doric up to 12 kHz): 5 Hz to 100 kHz takes
#: them all, and fails a 1 kHz or slower recording whose time column is in milliseconds
#: (read as 1 Hz or less). Extracellular recordings: 20-50 kHz raw, 1-2.5 kHz LFP; 100 Hz to
#: 1 MHz takes those and fails a rate given in kHz (30 for 30 kHz).
PLAUSIBLE_RATES_HZ: dict[str, tuple[float, float]] = {
    "photometry": (5.0, 1e5),
    "ephys": (100.0, 1e6),
}


class LoaderArguments(BaseModel):
    """Arguments every loader format takes (sidecar metadata, downsampling, checks).

    Subclasses add the format's own arguments and override :meth:`event_names`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str | None = Field(
        None,
        description="Suffix of the item id when one input has several jobs (set by discovery).",
    )
    annotation: str | None = Field(
        None,
        description=(
            "Sidecar metadata file, a template with {stem}, {name} and {parent}, relative to "
            "the input's folder (inside the folder for a folder input); null = none."
        ),
    )
    annotation_format: Literal["auto", "json", "yaml"] = Field(
        "auto", description="Sidecar format; auto = from the suffix (.json, .yaml, .yml)."
    )
    annotation_key: str | None = Field(
        None, description="Select this top-level key of the sidecar (PhoPro's parent_key)."
    )
    downsample: int | None = Field(
        None, ge=1, description="Downsampling factor (PhoPro's); null or 1 = none."
    )
    downsample_method: Literal["resample", "mean"] = Field(
        "resample",
        description=(
            "resample: scipy.signal.resample_poly (Kaiser window, beta 5) on a regular grid; "
            "mean: block means, trailing partial block dropped (PhoPro's downsample_signal)."
        ),
    )
    sampling_tolerance: float = Field(
        0.01,
        gt=0,
        description=(
            "Largest relative deviation of a sampling interval from the median interval "
            "before a NonUniformSamplingWarning."
        ),
    )
    plausible_rate_hz: tuple[float, float] | None = Field(
        None,
        description=(
            "Sampling rates in Hz, [low, high], that ingest accepts (before downsampling); "
            "null = the recording's kind's: photometry 5 Hz to 100 kHz, ephys 100 Hz to "
            "1 MHz. Set it for a recording outside them on purpose (a 1 Hz circadian "
            "photometry recording)."
        ),
    )

    @field_validator("annotation")
    @classmethod
    def _check_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("the sidecar template is empty; use null for no sidecar")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as e:
            raise ValueError(f"sidecar template {value!r} is malformed: {e}") from None
        unknown = [f for f in fields if f not in _TEMPLATE_FIELDS]
        if unknown:
            raise ValueError(
                f"sidecar template {value!r} uses {{{unknown[0]}}}; only "
                + ", ".join("{" + f + "}" for f in _TEMPLATE_FIELDS)
                + " are known"
            )
        return value

    @field_validator("plausible_rate_hz")
    @classmethod
    def _check_bounds(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] < value[1] < float("inf"):
            raise ValueError(f"expected [low, high] in Hz with 0 < low < high, got {list(value)!r}")
        return value

    @model_validator(mode="after")
    def _check_annotation_format(self) -> LoaderArguments:
        if self.annotation is not None and self.annotation_format == "auto":
            example = self.annotation.format(stem="x", name="x.csv", parent="p")
            if PurePosixPath(example).suffix.lower() not in _SIDECAR_SUFFIXES:
                raise ValueError(
                    f"cannot tell the format of sidecar {self.annotation!r} from its suffix; "
                    "name a .json, .yaml or .yml file or set annotation_format to json or yaml"
                )
        return self

    def event_names(self) -> list[str]:
        """The event names this loader provides (every one it is asked for).

        Returns
        -------
        list of str
            Event names, in the order the arguments give them.

        Examples
        --------
        >>> LoaderArguments().event_names()
        []
        """
        return []


class ColumnArguments(LoaderArguments):
    """Arguments of column formats (CSV, Parquet): PhoPro's ``CSVLoader`` columns."""

    time_col: str = Field("time", description="Column of sample times, in time_unit.")
    time_unit: Literal["s", "ms", "us", "ns"] = Field(
        "s",
        description=(
            "Unit of the time column: s, ms, us or ns; times (and event times) are converted "
            "to seconds."
        ),
    )
    signal_col: str = Field("signal", description="Column of the signal channel.")
    isosbestic_col: str | None = Field(
        "isosbestic",
        description=(
            "Column of the isosbestic channel; null = a single-channel recording. A named "
            "column the file lacks fails the item (PhoPro reads the file as single-channel)."
        ),
    )
    event_cols: list[str] = Field(
        default_factory=list,
        description="Columns of per-sample event flags (boolean or 0/1); one event per column.",
    )
    max_sampling_deviation: float | None = Field(
        0.5,
        gt=0,
        description=(
            "Largest relative deviation of a sampling interval from the median interval "
            "before the input is rejected (a gap or a burst of samples: trial windows would "
            "be misplaced); null = never rejected, only the sampling_tolerance warning."
        ),
    )

    @field_validator("event_cols", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        # PhoPro takes one name, a list of names or None
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return value

    @model_validator(mode="after")
    def _distinct_columns(self) -> ColumnArguments:
        roles = [("time_col", self.time_col), ("signal_col", self.signal_col)]
        if self.isosbestic_col is not None:
            roles.append(("isosbestic_col", self.isosbestic_col))
        roles += [("event_cols", name) for name in self.event_cols]
        seen: dict[str, str] = {}
        for role, name in roles:
            if name in seen:
                raise ValueError(
                    f"column {name!r} is named twice (as {seen[name]} and as {role}); "
                    "each column has one role"
                )
            seen[name] = role
        return self

    def event_names(self) -> list[str]:
        """The event names this loader provides: ``event_cols``.

        Returns
        -------
        list of str
            The event columns, in order.

        Examples
        --------
        >>> ColumnArguments(event_cols=["cue", "lever"]).event_names()
        ['cue', 'lever']
        """
        return list(self.event_cols)

    def columns(self) -> list[str]:
        """Every column the loader reads, in role order (time, signal, isosbestic, events).

        Returns
        -------
        list of str
            Column names.

        Examples
        --------
        >>> ColumnArguments(isosbestic_col=None, event_cols=["cue"]).columns()
        ['time', 'signal', 'cue']
        """
        iso = [] if self.isosbestic_col is None else [self.isosbestic_col]
        return [self.time_col, self.signal_col, *iso, *self.event_cols]


class PhotometryCSVArguments(ColumnArguments):
    """Arguments of the ``photometry-csv`` loader (PhoPro's ``CSVLoader``).

    Attributes
    ----------
    time_col, signal_col : str
        Columns of the sample times and of the signal.
    time_unit : {"s", "ms", "us", "ns"}, default "s"
        Unit of the time column; times are converted to seconds.
    isosbestic_col : str or None
        Column of the isosbestic channel; None reads a single-channel recording (a named
        column the file lacks is an error).
    event_cols : list of str
        Columns of per-sample event flags.
    max_sampling_deviation : float or None, default 0.5
        Largest relative deviation of a sampling interval from the median interval before
        the file is rejected (a gap or a burst would misplace trial windows); None only
        warns (beyond ``sampling_tolerance``).
    label, annotation, annotation_format, annotation_key, downsample, downsample_method,
    sampling_tolerance, plausible_rate_hz
        As every loader (see :class:`~neurobatch.io.loaders.LoaderArguments`).

    Examples
    --------
    >>> args = PhotometryCSVArguments(event_cols=["trial_cue", "lever1"],
    ...                               annotation="{stem}.json")
    >>> args.event_names(), args.columns()
    (['trial_cue', 'lever1'], ['time', 'signal', 'isosbestic', 'trial_cue', 'lever1'])
    """


class PhotometryParquetArguments(ColumnArguments):
    """Arguments of the ``photometry-parquet`` loader: those of ``photometry-csv``.

    Examples
    --------
    >>> PhotometryParquetArguments(event_cols="cue").event_names()
    ['cue']
    """


class TDTArguments(LoaderArguments):
    """Arguments of the ``tdt`` loader (PhoPro's ``TDTLoader``).

    ``annotation_key`` defaults to ``"{box}"``: the sidecar's entry for this box, as PhoPro
    reads it (``{box}`` is replaced by the box); null reads the whole sidecar.

    Examples
    --------
    >>> args = TDTArguments(box="A", signal_label="_465", isosbestic_label="_405",
    ...                     event_labels=["Cue", "Lev"])
    >>> args.event_names(), args.stream_names()
    (['Cue', 'Lev'], ['_465A', '_405A'])
    """

    box: str = Field(description="The box identifier, appended to stream and epoc labels.")
    signal_label: str = Field(description="Stream label of the signal, e.g. '_465'.")
    isosbestic_label: str | None = Field(
        description="Stream label of the isosbestic channel, e.g. '_405'; null = single-channel."
    )
    event_labels: list[str] = Field(
        default_factory=list, description="Epoc labels to read (store 'box + label')."
    )
    annotation_key: str | None = Field(
        "{box}",
        description="Select this top-level key of the sidecar ({box} = the box); null = all.",
    )

    def event_names(self) -> list[str]:
        """The event names this loader provides: ``event_labels``.

        Returns
        -------
        list of str
            The event labels, in order.

        Examples
        --------
        >>> TDTArguments(box="A", signal_label="_465", isosbestic_label=None,
        ...              event_labels=["Cue"]).event_names()
        ['Cue']
        """
        return list(self.event_labels)

    def stream_names(self) -> list[str]:
        """The stream stores read: signal, then isosbestic when there is one.

        Returns
        -------
        list of str
            Store names as ``tdt`` gives them (``label + box``).

        Examples
        --------
        >>> TDTArguments(box="B", signal_label="_465", isosbestic_label=None).stream_names()
        ['_465B']
        """
        labels = [self.signal_label]
        if self.isosbestic_label is not None:
            labels.append(self.isosbestic_label)
        return [label + self.box for label in labels]
