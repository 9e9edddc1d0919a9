"""The arguments models of the acquisition formats (Doric, Neurophotometrics, pyPhotometry, NWB).

These loaders read what a photometry rig writes and return the same Recording as the column
formats: ``signal(time)``, ``isosbestic(time)``, events. Their arguments name the rig's own
channels (a Doric channel, a Neurophotometrics region and LED, a pyPhotometry analog input,
an NWB fiber photometry series or excitation wavelength) and where the events come from
(digital inputs as rising edges, a separate event file, or the NWB file's event tables).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from neurobatch.config.arguments import LoaderArguments

__all__ = [
    "AcquisitionArguments",
    "DoricArguments",
    "NWBEventSource",
    "NWBPhotometryArguments",
    "NeurophotometricsArguments",
    "PyPhotometryArguments",
]


def _event_mapping(value: Any) -> Any:
    """A list of channels names each event after its channel; a mapping is kept."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {value: value}
    if isinstance(value, list | tuple):
        return {str(channel): channel for channel in value}
    return value


def _check_event_names(names: list[str]) -> None:
    for name in names:
        if not name.strip():
            raise ValueError("an event name is empty")
        if "/" in name:
            raise ValueError(
                f"event name {name!r} has a '/', which output tables (h5ad) cannot hold; "
                f"give a mapping of event names to channels instead, e.g. {{ttl: {name!r}}}"
            )


def _check_distinct(
    names: tuple[str, str], signal: object, isosbestic: object, what: str = "channel"
) -> None:
    """Refuse a signal and an isosbestic read from the same source (``names``: their fields)."""
    if isosbestic is not None and isosbestic == signal:
        raise ValueError(
            f"{names[0]} and {names[1]} are both {signal!r}; each needs its own {what}"
        )


class AcquisitionArguments(LoaderArguments):
    """Arguments every acquisition-system format takes, besides those of every loader.

    Examples
    --------
    >>> AcquisitionArguments().max_sampling_deviation
    0.5
    """

    max_sampling_deviation: float | None = Field(
        0.5,
        gt=0,
        description=(
            "Largest relative deviation of a sampling interval from the median interval "
            "before the input is rejected (dropped frames: trial windows would be "
            "misplaced); null = never rejected, only the sampling_tolerance warning."
        ),
    )


class DoricArguments(AcquisitionArguments):
    """Arguments of the ``doric`` loader: Doric ``.doric`` files (HDF5) and Doric CSV exports.

    A channel is named by its path in the file, or by any tail of that path after a ``/``:
    in the V6 layout ``AIN01xAOUT01-LockIn`` (the lock-in group
    ``DataAcquisition/FPConsole/Signals/Series0001/AIN01xAOUT01-LockIn``, whose ``Values``
    are read), ``AnalogIn/AIN01``, ``DigitalIO/DIO01`` or just ``DIO01``; in the older layout
    the channel's group under ``Traces/Console`` (``AIn-1 - Dem (AOut-1)``, ``DI--O-1``); in
    a CSV export the column (``AIn-1 - Dem (AOut-1)``, ``DI/O-1``, or
    ``AIN01xAOUT01-LockIn`` for ``AIN01xAOUT01-LockIn/Values``). A name that fits several
    channels is an error naming them.

    Examples
    --------
    >>> args = DoricArguments(signal_channel="AIN01xAOUT02-LockIn",
    ...                       isosbestic_channel="AIN01xAOUT01-LockIn",
    ...                       event_channels={"cue": "DIO01", "lever": "DIO02"})
    >>> args.event_names(), args.event_threshold
    (['cue', 'lever'], 0.5)
    >>> DoricArguments(signal_channel="AIn-1 - Raw", isosbestic_channel=None,
    ...                event_channels=["DIO01"]).event_channels
    {'DIO01': 'DIO01'}
    """

    signal_channel: str = Field(description="The channel of the signal (see the class notes).")
    isosbestic_channel: str | None = Field(
        description="The channel of the isosbestic control; null = single-channel."
    )
    event_channels: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Digital (or TTL) channels whose rising edges are events: a mapping of event "
            "name to channel, or a list of channels (each event named as its channel)."
        ),
    )
    event_threshold: float = Field(
        0.5,
        allow_inf_nan=False,
        description=(
            "A digital channel is high where its value is above this; an event is a sample "
            "that is high after one that is not (a rising edge)."
        ),
    )

    @field_validator("event_channels", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        return _event_mapping(value)

    @model_validator(mode="after")
    def _check(self) -> DoricArguments:
        _check_event_names(list(self.event_channels))
        _check_distinct(
            ("signal_channel", "isosbestic_channel"), self.signal_channel, self.isosbestic_channel
        )
        return self

    def event_names(self) -> list[str]:
        """The event names this loader provides: the keys of ``event_channels``.

        Returns
        -------
        list of str
            Event names, in order.

        Examples
        --------
        >>> DoricArguments(signal_channel="a", isosbestic_channel=None,
        ...                event_channels={"cue": "DIO01"}).event_names()
        ['cue']
        """
        return list(self.event_channels)


class NeurophotometricsArguments(AcquisitionArguments):
    """Arguments of the ``neurophotometrics`` loader: Neurophotometrics (FP3001/FP3002) CSV.

    The signal is column ``region + color`` (``Region0G``) on the frames lit by
    ``signal_led``, the isosbestic channel the same column on the frames lit by
    ``isosbestic_led``. Events come from a separate event file (Bonsai's CSV of timestamps,
    optionally with a state column), named by the template ``events_file``.

    Examples
    --------
    >>> args = NeurophotometricsArguments(region=1, events_file="{stem}_ttl.csv",
    ...                                   event_states={"cue": 1, "ttl": "*"})
    >>> args.column(), args.event_states, args.event_names()
    ('Region1G', {'cue': '1', 'ttl': '*'}, ['cue', 'ttl'])
    """

    region: str = Field(
        "Region0",
        description="The region (fiber): 'Region0', 'Region1', ... or its number.",
    )
    color: Literal["G", "R"] = Field(
        "G", description="The emission colour of the region's column: G (green) or R (red)."
    )
    signal_led: Literal[415, 470, 560] = Field(
        470, description="Excitation LED (nm) of the signal frames: 415, 470 or 560."
    )
    isosbestic_led: Literal[415, 470, 560] | None = Field(
        415, description="Excitation LED (nm) of the isosbestic frames; null = single-channel."
    )
    time_col: str | None = Field(
        None,
        description=(
            "Column of frame times; null = the first of Timestamp, SystemTimestamp and "
            "ComputerTimestamp the file has."
        ),
    )
    time_unit: Literal["auto", "s", "ms", "us", "ns"] = Field(
        "auto",
        description="Unit of the time column; auto = ms for ComputerTimestamp, else s.",
    )
    led_col: str | None = Field(
        None, description="Column of the LED states; null = LedState, or Flags in older files."
    )
    events_file: str | None = Field(
        None,
        description=(
            "The event (TTL) file, a template with {stem}, {name} and {parent}, relative to "
            "the input's folder; null = no events."
        ),
    )
    event_states: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Event name -> the value of the event file's state column whose rows are that "
            "event ('*' = every row, for a file without a state column)."
        ),
    )
    events_time_col: str | None = Field(
        None, description="Column of the event file's times (by header); null = its first."
    )
    events_state_col: str | None = Field(
        None, description="Column of the event file's states (by header); null = its second."
    )
    events_clock: str | None = Field(
        None,
        description=(
            "Column of the data file whose clock the event times are on (e.g. "
            "ComputerTimestamp), when not the time column's: event times are mapped to the "
            "time column's clock by linear interpolation between frames; null = the same."
        ),
    )

    @field_validator("region", mode="before")
    @classmethod
    def _region(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return f"Region{value}"
        if isinstance(value, str) and value.strip().isdigit():
            return f"Region{value.strip()}"
        return value

    @field_validator("events_file")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        # the same template as a sidecar's: {stem}, {name}, {parent}
        return LoaderArguments._check_template(value)

    @field_validator("event_states", mode="before")
    @classmethod
    def _states(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            return value
        # a state as YAML gives it: 1, true, "Lever"; compared with the file's text later
        return {
            name: ("True" if state else "False") if isinstance(state, bool) else str(state)
            for name, state in value.items()
        }

    @model_validator(mode="after")
    def _check(self) -> NeurophotometricsArguments:
        _check_event_names(list(self.event_states))
        if self.isosbestic_led is not None and self.isosbestic_led == self.signal_led:
            raise ValueError(
                f"signal_led and isosbestic_led are both {self.signal_led} nm; each channel "
                "needs its own LED"
            )
        if self.event_states and self.events_file is None:
            raise ValueError("event_states names events, but events_file (the event file) is null")
        if self.events_file is not None and not self.event_states:
            raise ValueError(
                "events_file is set, but event_states names no event; e.g. {ttl: '*'} for "
                "every row, or {cue: 1} for the rows whose state is 1"
            )
        return self

    def column(self) -> str:
        """The data column read: ``region + color``.

        Returns
        -------
        str
            E.g. ``"Region0G"``.

        Examples
        --------
        >>> NeurophotometricsArguments(region="Region2", color="R").column()
        'Region2R'
        """
        return self.region + self.color

    def event_names(self) -> list[str]:
        """The event names this loader provides: the keys of ``event_states``.

        Returns
        -------
        list of str
            Event names, in order.

        Examples
        --------
        >>> NeurophotometricsArguments(events_file="{stem}_ttl.csv",
        ...                            event_states={"ttl": "*"}).event_names()
        ['ttl']
        """
        return list(self.event_states)


class PyPhotometryArguments(AcquisitionArguments):
    """Arguments of the ``pyphotometry`` loader: pyPhotometry ``.ppd`` files.

    Channels are named as pyPhotometry's ``import_ppd`` names them: ``analog_1``,
    ``analog_2`` (and ``analog_3`` in the 3-excitation mode), ``digital_1``, ``digital_2``.

    Examples
    --------
    >>> args = PyPhotometryArguments(event_channels={"cue": "digital_1"})
    >>> args.signal_channel, args.isosbestic_channel, args.event_names()
    ('analog_1', 'analog_2', ['cue'])
    """

    signal_channel: str = Field(
        "analog_1", pattern=r"^analog_[1-9]$", description="The analog input of the signal."
    )
    isosbestic_channel: str | None = Field(
        "analog_2",
        pattern=r"^analog_[1-9]$",
        description="The analog input of the isosbestic control; null = single-channel.",
    )
    event_channels: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Digital inputs whose rising edges are events: a mapping of event name to input "
            "(digital_1, digital_2), or a list of inputs (each event named as its input)."
        ),
    )

    @field_validator("event_channels", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        return _event_mapping(value)

    @model_validator(mode="after")
    def _check(self) -> PyPhotometryArguments:
        _check_event_names(list(self.event_channels))
        for name, channel in self.event_channels.items():
            if not channel.startswith("digital_") or not channel[8:].isdigit():
                raise ValueError(
                    f"event {name!r}: {channel!r} is not a digital input; expected "
                    "digital_1 or digital_2"
                )
        _check_distinct(
            ("signal_channel", "isosbestic_channel"),
            self.signal_channel,
            self.isosbestic_channel,
            "analog input",
        )
        return self

    def event_names(self) -> list[str]:
        """The event names this loader provides: the keys of ``event_channels``.

        Returns
        -------
        list of str
            Event names, in order.

        Examples
        --------
        >>> PyPhotometryArguments(event_channels=["digital_2"]).event_names()
        ['digital_2']
        """
        return list(self.event_channels)


class NWBEventSource(BaseModel):
    """Where one event of an NWB file comes from: an object's times, optionally only the rows
    (or samples) whose label equals a value.

    The object is a ``TimeIntervals`` table (``trials``, ``epochs`` or one of the file's
    interval tables: the ``start_time`` of its rows), an ``EventsTable`` (NWB's or
    ndx-events': the ``timestamp`` of its rows) or a ``TimeSeries`` with timestamps (an
    ``AnnotationSeries``, ndx-events' ``Events``: its timestamps). ``column`` and
    ``equals`` keep the rows of a table whose ``column`` holds ``equals`` (a trial type, an
    event label); for a series, ``equals`` keeps the samples whose data equal it (an
    annotation's text).

    Examples
    --------
    >>> NWBEventSource(source="trials", column="trial_type", equals="cue").time_column is None
    True
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(
        min_length=1, description="The table or series, by name or by its path in the file."
    )
    column: str | None = Field(
        None, description="A table's label column whose value selects the rows; null = all rows."
    )
    equals: str | int | float | bool | None = Field(
        None,
        description=(
            "The label value of the rows (table) or samples (series) that are this event; "
            "null = all of them."
        ),
    )
    time_column: str | None = Field(
        None,
        description=(
            "A table's column of event times; null = timestamp (EventsTable) or start_time "
            "(TimeIntervals)."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> NWBEventSource:
        if self.column is not None and self.equals is None:
            raise ValueError(
                f"column {self.column!r} is named but not the value its rows must hold; "
                "set equals (e.g. equals: cue)"
            )
        return self


def _event_sources(value: Any) -> Any:
    """A list of objects names each event after its object; a mapping's text values are
    objects, and its mappings event sources."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {value: {"source": value}}
    if isinstance(value, list | tuple):
        return {str(name): {"source": name} for name in value}
    if isinstance(value, dict):
        return {
            name: {"source": spec} if isinstance(spec, str) else spec
            for name, spec in value.items()
        }
    return value


class NWBPhotometryArguments(AcquisitionArguments):
    """Arguments of the ``nwb-photometry`` loader: NWB files with ndx-fiber-photometry series.

    The signal and the isosbestic control are each a ``FiberPhotometryResponseSeries``
    named by its name or its path in the file (``raw_465``,
    ``acquisition/raw_465``), or an excitation wavelength in nanometres (``465``): the
    channel whose ``FiberPhotometryTable`` row has the nearest excitation wavelength, within
    ``wavelength_tolerance_nm``. A channel is one series, or one column of a 2-D series (its
    columns are the rows of its ``fiber_photometry_table_region``). When several fibres fit,
    ``fiber`` picks one: its location or its optical fibre (the ``OpticalFiber`` device of
    its ``FiberPhotometryTable`` rows). Series in
    ``acquisition`` are preferred to processed ones for a wavelength.

    Examples
    --------
    >>> args = NWBPhotometryArguments(signal=465, isosbestic=405,
    ...                               events={"cue": {"source": "trials", "column": "kind",
    ...                                               "equals": "cue"}, "lick": "licks"})
    >>> args.signal, args.isosbestic, args.event_names()
    (465.0, 405.0, ['cue', 'lick'])
    >>> NWBPhotometryArguments(signal="raw_465", isosbestic=None, events=["trials"]).events
    {'trials': NWBEventSource(source='trials', column=None, equals=None, time_column=None)}
    """

    signal: float | str = Field(
        description=(
            "The signal: a FiberPhotometryResponseSeries (name or path) or an excitation "
            "wavelength in nm."
        )
    )
    isosbestic: float | str | None = Field(
        description=(
            "The isosbestic control: a series (name or path) or an excitation wavelength in "
            "nm; null = single-channel."
        )
    )
    wavelength_tolerance_nm: float = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description="How far a channel's excitation wavelength may be from the one asked for.",
    )
    fiber: str | None = Field(
        None,
        description=(
            "When several fibres fit: the fibre's location or its optical fibre (the device "
            "named in its FiberPhotometryTable rows); null = the only one."
        ),
    )
    events: dict[str, NWBEventSource] = Field(
        default_factory=dict,
        description=(
            "Event name -> where its times are: an object's name or path (a TimeIntervals's "
            "start_time, an EventsTable's timestamp, a series' timestamps), or a mapping with "
            "source, column and equals for the rows of one label; a list of objects names "
            "each event after its object."
        ),
    )

    @field_validator("signal", "isosbestic", mode="before")
    @classmethod
    def _wavelength(cls, value: Any) -> Any:
        # a YAML number is a wavelength (a bool goes on, and fails the range of wavelengths)
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("events", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        return _event_sources(value)

    @model_validator(mode="after")
    def _check(self) -> NWBPhotometryArguments:
        _check_event_names(list(self.events))
        for role, value in (("signal", self.signal), ("isosbestic", self.isosbestic)):
            if isinstance(value, float) and not 100.0 <= value <= 2000.0:
                raise ValueError(
                    f"{role}: {value:g} nm is not an excitation wavelength; expected one "
                    "between 100 and 2000 nm, or a series name"
                )
        _check_distinct(("signal", "isosbestic"), self.signal, self.isosbestic)
        return self

    def event_names(self) -> list[str]:
        """The event names this loader provides: the keys of ``events``.

        Returns
        -------
        list of str
            Event names, in order.

        Examples
        --------
        >>> NWBPhotometryArguments(signal=470, isosbestic=None,
        ...                        events=["trials", "licks"]).event_names()
        ['trials', 'licks']
        """
        return list(self.events)
