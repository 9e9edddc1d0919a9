"""``neurobatch view OUT``: an interactive viewer of an output folder, served by Bokeh.

A Bokeh server runs inside neurobatch's process, bound to 127.0.0.1 only, and every
request (the page, its scripts, the websocket) must carry a random token: the ``token``
query argument of the URL printed at start, which the page's answer also sets as a
same-site, HTTP-only cookie for the requests the page makes itself. Any other request gets
403.

Photometry outputs: pick an item to see its processed trace with its events, and its
trials as a heatmap and as mean ± SEM grouped by the trial type or by any obs column.
Traces are reduced on the server to a min/max envelope of :data:`VIEW_POINTS` points of
the visible window (:func:`neurobatch.plots.envelope`): zooming in asks for a finer one,
so an hour at 1 kHz never travels to the browser whole. Filter outputs: pick a channel of
the filtered recording, drawn the same way. STA outputs: pick a unit and scrub its
spike-triggered average over the lags.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

import numpy as np
import numpy.typing as npt
import xarray as xr

from neurobatch.engine.layout import OutputLayout
from neurobatch.engine.provenance_summary import read_processing
from neurobatch.engine.report import pipeline_of, read_items
from neurobatch.errors import InputError, InputNotFoundError

__all__ = ["VIEW_POINTS", "Viewer", "serve"]

logger = logging.getLogger(__name__)

#: Points of a trace sent to the browser per view (min/max envelope of half as many bins).
VIEW_POINTS = 2000
_COOKIE = "neurobatch_view_token"
_OPEN = ("done", "skipped", "carried")


# --------------------------------------------------------------------------------------------
# the data side: what the page shows, as NumPy arrays
# --------------------------------------------------------------------------------------------


@dataclass
class _Output:
    """The output folder: its items, its kind and its pipeline's trial settings."""

    layout: OutputLayout
    items: list[str]
    kind: str
    pipeline: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, layout: OutputLayout) -> _Output:
        table = read_items(layout)
        items = [
            str(i) for i, s in zip(table["item_id"], table["status"], strict=True) if s in _OPEN
        ]
        if not items:
            raise InputNotFoundError(f"no item of {layout.url} is done: nothing to show")
        processing = read_processing(layout.processing, storage_options=layout.storage_options)
        pipeline = pipeline_of(processing)
        kind = str(pipeline.get("kind", "photometry"))
        if kind not in ("photometry", "filter", "sta"):
            raise InputError(
                f"{layout.url} holds the output of a {kind} pipeline; the viewer shows "
                "photometry, filter and sta outputs (neurobatch report OUT shows any)"
            )
        return cls(layout, items, kind, pipeline)

    def stage(self, item: str, stage: str) -> xr.Dataset | None:
        from neurobatch.io.trials_store import open_trials
        from neurobatch.io.zarr import open_dataset

        url, so = self.layout.stage(item, stage), self.layout.storage_options
        try:
            if stage == "trials":
                return open_trials(url, storage_options=so)
            return open_dataset(url, storage_options=so)
        except FileNotFoundError:
            return None


def _window(
    time: npt.NDArray[np.float64], values: Any, start: float | None, end: float | None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The min/max envelope of ``values`` over ``[start, end]``, about VIEW_POINTS points."""
    from neurobatch.plots import envelope

    lo = 0 if start is None else int(np.searchsorted(time, start, side="left"))
    hi = time.size if end is None else int(np.searchsorted(time, end, side="right"))
    lo, hi = max(0, lo - 1), min(time.size, hi + 1)
    if hi - lo < 2:
        return time[lo:hi], np.asarray(values[lo:hi], float), np.asarray(values[lo:hi], float)
    return envelope(time[lo:hi], values[lo:hi], VIEW_POINTS // 2)


def _group_lines(
    matrix: npt.NDArray[np.float64], rel_time: npt.NDArray[np.float64], labels: Any
) -> dict[str, list[Any]]:
    """Mean ± SEM per group as Bokeh ``multi_line``/``patches`` columns."""
    from neurobatch.plots.photometry import _mean_sem, _trial_groups

    columns: dict[str, list[Any]] = {"xs": [], "ys": [], "band_x": [], "band_y": []}
    columns.update(label=[], color=[])
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    for i, (group, mask) in enumerate(_trial_groups(matrix.shape[0], labels)):
        mean, sem = _mean_sem(matrix[mask])
        keep = np.isfinite(mean)
        t, m = rel_time[keep], mean[keep]
        s = np.where(np.isfinite(sem[keep]), sem[keep], 0.0)
        columns["xs"].append(t)
        columns["ys"].append(m)
        columns["band_x"].append(np.concatenate([t, t[::-1]]))
        columns["band_y"].append(np.concatenate([m - s, (m + s)[::-1]]))
        columns["label"].append(f"{group} (n={int(mask.sum())})")
        columns["color"].append(palette[i % len(palette)])
    return columns


# --------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------


class Viewer:
    """One browser session's page over an output folder (a Bokeh document).

    Parameters
    ----------
    output : _Output
        The output folder read once by :func:`serve`.
    """

    def __init__(self, output: _Output) -> None:
        self.output = output
        self.time: npt.NDArray[np.float64] = np.empty(0)
        self.values: Any = np.empty(0)
        self.trials: xr.Dataset | None = None
        self.sta: xr.Dataset | None = None

    def build(self, doc: Any) -> None:
        """Fill the Bokeh document ``doc`` (the session's page)."""
        from bokeh.layouts import column, row
        from bokeh.models import Div, Select

        title = Div(text=f"<h2>neurobatch: {self.output.layout.url}</h2>", name="heading")
        picker = Select(
            title="item", value=self.output.items[0], options=self.output.items, name="item"
        )
        if self.output.kind == "sta":
            body = self._sta_page(picker)
        elif self.output.kind == "filter":
            body = self._filter_page(picker)
        else:
            body = self._photometry_page(picker)
        doc.add_root(column(title, row(picker), body, sizing_mode="stretch_width"))
        doc.title = "neurobatch view"

    # photometry -----------------------------------------------------------------------------

    def _trace_plot(self) -> tuple[Any, Any, Any]:
        """The trace figure, its source and the event markers' source (named for tests).

        The figure has an explicit x range: a zoom sets it, and the server sends the window
        again at its resolution (a DataRange1d would follow the data sent instead).
        """
        from bokeh.models import ColumnDataSource, Range1d
        from bokeh.plotting import figure

        trace = ColumnDataSource({"t": [], "lo": [], "hi": []}, name="trace-source")
        events = ColumnDataSource({"t": [], "event": [], "color": []}, name="event-source")
        p_trace = figure(
            height=300,
            sizing_mode="stretch_width",
            name="trace",
            x_axis_label="time (s)",
            x_range=Range1d(0.0, 1.0),
        )
        band = [
            p_trace.varea("t", "lo", "hi", source=trace, color="#1f77b4", alpha=0.6),
            p_trace.line("t", "hi", source=trace, color="#1f77b4", line_width=1),
            p_trace.line("t", "lo", source=trace, color="#1f77b4", line_width=1),
        ]
        p_trace.y_range.renderers = band  # the event markers span their own 0-1 range
        p_trace.extra_y_ranges = {"events": Range1d(0, 1)}

        def zoomed(attr: str, old: Any, new: Any) -> None:
            if self.time.size:
                start, end = p_trace.x_range.start, p_trace.x_range.end
                t, lo, hi = _window(self.time, self.values, start, end)
                trace.data = {"t": t, "lo": lo, "hi": hi}

        p_trace.x_range.on_change("end", zoomed)
        return p_trace, trace, events

    def _show_trace(self, p_trace: Any, trace: Any, time: Any, values: Any, title: str) -> None:
        """Show ``values`` over ``time`` whole, as an envelope of VIEW_POINTS points."""
        self.time, self.values = np.asarray(time, dtype=np.float64), values
        t, lo, hi = _window(self.time, self.values, None, None)
        trace.data = {"t": t, "lo": lo, "hi": hi}
        if self.time.size > 1:
            p_trace.x_range.update(start=float(self.time[0]), end=float(self.time[-1]))
        p_trace.title.text = f"{title} ({self.time.size:,} samples)"

    # filter -------------------------------------------------------------------------------

    def _filter_page(self, picker: Any) -> Any:
        from bokeh.layouts import column
        from bokeh.models import Select

        p_trace, trace, _ = self._trace_plot()
        channel = Select(title="channel", value="", options=[], name="channel")
        filtered: dict[str, xr.Dataset] = {}

        def show_channel() -> None:
            ds = filtered.get("item")
            if ds is None or not channel.value:
                return
            labels = [str(c) for c in ds["channel"].values]
            values = ds["traces"].isel(channel=labels.index(channel.value)).data
            self._show_trace(
                p_trace,
                trace,
                ds["time"].values,
                values,
                f"{picker.value}: filtered channel {channel.value}",
            )
            p_trace.yaxis.axis_label = str(ds["traces"].attrs.get("units", "filtered"))

        def show_item(item: str) -> None:
            ds = self.output.stage(item, "filter")
            if ds is None:
                return
            filtered["item"] = ds
            labels = [str(c) for c in ds["channel"].values]
            channel.options = labels
            if channel.value not in labels:
                channel.value = labels[0]  # show_channel runs on the change
            else:
                show_channel()

        picker.on_change("value", lambda attr, old, new: show_item(new))
        channel.on_change("value", lambda attr, old, new: show_channel())
        show_item(picker.value)
        return column(channel, p_trace, sizing_mode="stretch_width")

    # photometry -----------------------------------------------------------------------------

    def _photometry_page(self, picker: Any) -> Any:
        from bokeh.layouts import column
        from bokeh.models import ColumnDataSource, LinearColorMapper, Select
        from bokeh.plotting import figure

        heat = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []}, name="heat")
        means = ColumnDataSource(
            {"xs": [], "ys": [], "band_x": [], "band_y": [], "label": [], "color": []},
            name="means-source",
        )
        p_trace, trace, events = self._trace_plot()
        p_trace.segment(
            "t",
            0,
            "t",
            1,
            source=events,
            color="color",
            line_width=1,
            alpha=0.8,
            legend_field="event",
            y_range_name="events",
        )
        mapper = LinearColorMapper(palette="RdBu11", low=-1, high=1)
        p_heat = figure(
            height=280,
            sizing_mode="stretch_width",
            name="heatmap",
            x_axis_label="time from alignment (s)",
            y_axis_label="trial",
            title="trials",
        )
        p_heat.image("image", x="x", y="y", dw="dw", dh="dh", source=heat, color_mapper=mapper)
        p_mean = figure(
            height=280,
            sizing_mode="stretch_width",
            name="means",
            x_axis_label="time from alignment (s)",
            title="mean ± SEM",
        )
        p_mean.patches("band_x", "band_y", source=means, color="color", alpha=0.25)
        p_mean.multi_line("xs", "ys", source=means, color="color", legend_field="label")
        group = Select(
            title="group trials by", value="trial type", options=["trial type"], name="group"
        )

        def show_item(item: str) -> None:
            processed = self.output.stage(item, "preprocess")
            if processed is None:
                return
            variable = str(processed.attrs.get("processed_variable", "dff"))
            self._show_trace(
                p_trace,
                trace,
                processed["time"].values,
                processed[variable].data,
                f"{item}: {variable}",
            )
            p_trace.yaxis.axis_label = variable
            if "event_time" in processed.variables:
                names = np.asarray(processed["event_name"].values).astype(str)
                palette = ["#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
                order = {n: palette[i % len(palette)] for i, n in enumerate(dict.fromkeys(names))}
                events.data = {
                    "t": np.asarray(processed["event_time"].values, dtype=np.float64),
                    "event": names,
                    "color": [order[n] for n in names],
                }
            else:
                events.data = {"t": [], "event": [], "color": []}
            self.trials = self.output.stage(item, "trials")
            columns = ["trial type"]
            if self.trials is not None:
                columns += [str(c) for c, v in self.trials.coords.items() if v.dims == ("trial",)]
            group.options = columns
            if group.value not in columns:
                group.value = "trial type"
            show_trials(variable)

        def show_trials(variable: str | None = None) -> None:
            trials = self.trials
            if trials is None or trials.sizes.get("trial", 0) == 0:
                heat.data = {"image": [], "x": [], "y": [], "dw": [], "dh": []}
                means.data = {k: [] for k in means.data}
                return
            name = variable or str(trials.attrs.get("processed_variable", "dff"))
            if name not in trials.data_vars:
                name = str(next(iter(trials.data_vars)))
            matrix = np.asarray(trials[name].transpose("trial", "rel_time").values, float)
            rel_time = np.asarray(trials["rel_time"].values, dtype=np.float64)
            from neurobatch.plots.photometry import _bin_mean, _colour_limit

            limit = _colour_limit(matrix)
            mapper.low, mapper.high = -limit, limit
            n = matrix.shape[0]
            heat.data = {
                "image": [_bin_mean(matrix, VIEW_POINTS // 2)],
                "x": [rel_time[0]],
                "y": [0.5],
                "dw": [rel_time[-1] - rel_time[0]],
                "dh": [n],
            }
            p_heat.y_range.flipped = True
            means.data = _group_lines(matrix, rel_time, self._labels(trials, group.value))
            p_mean.title.text = f"mean ± SEM by {group.value}"
            p_mean.yaxis.axis_label = name

        picker.on_change("value", lambda attr, old, new: show_item(new))
        group.on_change("value", lambda attr, old, new: show_trials())
        show_item(picker.value)
        return column(p_trace, group, p_heat, p_mean, sizing_mode="stretch_width")

    def _labels(self, trials: xr.Dataset, grouping: str) -> Any:
        from neurobatch.engine.report import _trial_types

        obs = {
            str(k): np.asarray(v.values) for k, v in trials.coords.items() if v.dims == ("trial",)
        }
        if grouping == "trial type":
            return _trial_types(obs, self.output.pipeline)
        return obs[grouping]

    # sta ----------------------------------------------------------------------------------

    def _sta_page(self, picker: Any) -> Any:
        from bokeh.layouts import column
        from bokeh.models import ColumnDataSource, LinearColorMapper, Select, Slider
        from bokeh.plotting import figure

        image = ColumnDataSource({"image": [], "dw": [], "dh": []}, name="sta-source")
        mapper = LinearColorMapper(palette="RdBu11", low=-1, high=1)
        unit = Select(title="unit", value="", options=[], name="unit")
        lag = Slider(
            title="lag (frames before the spike)", start=0, end=1, value=0, step=1, name="lag"
        )
        plot = figure(height=420, width=420, name="sta", match_aspect=True, title="STA")
        plot.image("image", x=0, y=0, dw="dw", dh="dh", source=image, color_mapper=mapper)

        def draw() -> None:
            sta = self.sta
            if sta is None or not unit.value:
                return
            units = [str(u) for u in sta["unit"].values]
            frame = np.asarray(
                sta["sta"].isel(unit=units.index(unit.value), lag=int(lag.value)).values, float
            )
            whole = np.asarray(sta["sta"].isel(unit=units.index(unit.value)).values, float)
            finite = np.abs(whole[np.isfinite(whole)])
            limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
            mapper.low, mapper.high = -limit, limit
            ny, nx = frame.shape
            image.data = {"image": [frame[::-1]], "dw": [nx], "dh": [ny]}
            plot.title.text = f"unit {unit.value}, lag {int(lag.value)} (±{limit:.2g})"

        def show_item(item: str) -> None:
            self.sta = self.output.stage(item, "sta")
            if self.sta is None:
                return
            units = [str(u) for u in self.sta["unit"].values]
            unit.options = units
            lag.end = max(1, int(self.sta.sizes["lag"]) - 1)
            lag.value = 0
            if unit.value not in units:
                unit.value = units[0]
            draw()

        picker.on_change("value", lambda attr, old, new: show_item(new))
        unit.on_change("value", lambda attr, old, new: draw())
        lag.on_change("value", lambda attr, old, new: draw())
        show_item(picker.value)
        return column(unit, lag, plot)


# --------------------------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------------------------


def _guard(app: Any, token: str) -> None:
    """Make the Tornado ``app`` answer 403 to any request without ``token``.

    The token is the ``token`` query argument or the cookie the page's answer sets.
    """
    import tornado.web

    class Forbidden(tornado.web.RequestHandler):
        def prepare(self) -> None:
            raise tornado.web.HTTPError(403, reason="missing or wrong neurobatch view token")

    class SetCookie(tornado.web.OutputTransform):
        def __init__(self, request: Any) -> None:
            self.grant = _given(request, query_only=True)

        def transform_first_chunk(
            self, status_code: int, headers: Any, chunk: bytes, finishing: bool
        ) -> tuple[int, Any, bytes]:
            if self.grant:
                headers.add("Set-Cookie", f"{_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict")
            return status_code, headers, chunk

    def _given(request: Any, *, query_only: bool = False) -> bool:
        offered = [v.decode() for v in request.query_arguments.get("token", [])]
        if not query_only:
            cookies = SimpleCookie(request.headers.get("Cookie", ""))
            if _COOKIE in cookies:
                offered.append(cookies[_COOKIE].value)
        return any(secrets.compare_digest(v, token) for v in offered)

    find: Callable[..., Any] = app.find_handler

    def find_handler(request: Any, **kwargs: Any) -> Any:
        if _given(request):
            return find(request, **kwargs)
        logger.warning("view: refused %s %s (no token)", request.method, request.path)
        return app.get_handler_delegate(request, Forbidden)

    app.find_handler = find_handler
    app.transforms.append(SetCookie)


@dataclass
class Served:
    """A running viewer: its URL (with the token), and how to stop it."""

    url: str
    token: str
    port: int
    server: Any

    def stop(self) -> None:
        """Stop the server and its IO loop."""
        self.server.stop()
        self.server.io_loop.stop()


def start(url: str, *, storage_options: Mapping[str, Any] | None = None, port: int = 0) -> Served:
    """Start the viewer of the output folder ``url`` on 127.0.0.1, not yet serving.

    Parameters
    ----------
    url : str
        The output folder of a run, any fsspec URL.
    storage_options : mapping, optional
        fsspec options to reach ``url``.
    port : int, default 0
        The port; 0 for a free one.

    Returns
    -------
    Served
        The URL to open (``http://127.0.0.1:<port>/?token=<token>``) and the server; call
        ``served.server.io_loop.start()`` to serve.

    Raises
    ------
    InputNotFoundError
        If ``url`` holds no ``items.parquet`` or no item is done.
    """
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server

    layout = OutputLayout(str(url).rstrip("/"), dict(storage_options or {}))
    output = _Output.read(layout)
    token = secrets.token_urlsafe(24)
    if port == 0:  # a free port, so that the websocket's allowed origin can name it
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
    server = Server(
        {"/": Application(FunctionHandler(lambda doc: Viewer(output).build(doc)))},
        address="127.0.0.1",
        port=port,
        allow_websocket_origin=[f"127.0.0.1:{port}"],
        num_procs=1,
    )
    server.start()
    bound = int(server.port or port)
    _guard(server._tornado, token)
    return Served(f"http://127.0.0.1:{bound}/?token={token}", token, bound, server)


def serve(url: str, *, storage_options: Mapping[str, Any] | None = None, port: int = 0) -> None:
    """Serve the viewer of the output folder ``url`` until interrupted (Ctrl-C).

    Prints the URL to open, with its token. See :func:`start`.

    Parameters
    ----------
    url : str
        The output folder of a run, any fsspec URL.
    storage_options : mapping, optional
        fsspec options to reach ``url``.
    port : int, default 0
        The port; 0 for a free one.
    """
    served = start(url, storage_options=storage_options, port=port)
    print(f"neurobatch view: open {served.url}  (Ctrl-C to stop)", flush=True)
    try:
        served.server.io_loop.start()
    except KeyboardInterrupt:
        pass
    finally:
        served.server.stop()
