"""``OUT/report.html``: one self-contained page of a batch (``neurobatch report OUT``).

The page holds the run's items (status, reason, fit R², trials), the trials' mean ± SEM
grouped by trial type and by every obs column with few values, the resource plot, the
pipeline file, and one collapsible section per item with its figures. Figures are PNGs
embedded as ``data:`` URIs and the style sheet and the few lines of script are inline: the
file references nothing outside itself, so it can be mailed, archived or opened offline.

Its size and its cost stay bounded for thousands of items: every item gets a row of the
table, but only the first ``max_items`` get a section with figures. Those come from what
the run drew (``output.dashboards``); with ``draw=True`` (the ``report`` command) an item
whose figures were not drawn gets them drawn from its stores by its kind's own figures
(photometry dashboards, STA grids and STRFs, the filter's snippet). The combined trials are reduced to group means one stored chunk at a time.
A run writes the page at its end with ``draw=False`` (:func:`report_after_run`).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import numpy.typing as npt
import pandas as pd
import xarray as xr

from neurobatch.chunking import TRIALS_BATCH_MEMORY
from neurobatch.engine.layout import ITEMS_TABLE, OutputLayout
from neurobatch.engine.provenance_summary import read_processing
from neurobatch.engine.results import combined_trials_url
from neurobatch.errors import InputNotFoundError
from neurobatch.io import files

__all__ = ["report_after_run", "write_report"]

logger = logging.getLogger(__name__)

#: Obs columns with at most this many distinct values get a grouped mean ± SEM.
MAX_GROUPS = 12
#: At most this many groupings are drawn (the trial type first, then obs columns in order).
MAX_GROUPINGS = 5
#: Columns that are never a grouping: they identify or time a trial.
_NOT_GROUPS = ("trial_num", "start_time", "stop_time", "rel_time")
_FIGURE_SUFFIXES = (".png", ".svg")
_MIME = {".png": "image/png", ".svg": "image/svg+xml"}

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;font-size:13px}th,td{padding:2px 8px;text-align:left}
th{background:#eee;position:sticky;top:0}tr:nth-child(even){background:#fafafa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.done{color:#176317}.failed{color:#a11}.skipped,.carried{color:#666}
.scroll{max-height:28em;overflow:auto;border:1px solid #ddd}
img{max-width:100%;height:auto;display:block;margin:.4em 0}
details{border:1px solid #ddd;margin:.3em 0;padding:.2em .6em}
summary{cursor:pointer;font-weight:600}pre{background:#f6f6f6;padding:.6em;overflow:auto}
.note{color:#555}.error{color:#a11;white-space:pre-wrap}
"""

_SCRIPT = """
document.getElementById('group-by').addEventListener('change', function (e) {
  document.querySelectorAll('.grouping').forEach(function (f) {
    f.hidden = f.dataset.group !== e.target.value;
  });
});
"""


def _read(url: str, storage_options: Mapping[str, Any]) -> bytes:
    with fsspec.open(url, "rb", **dict(storage_options)) as file:
        return bytes(file.read())


def _img(data: bytes, mime: str, alt: str, css_id: str = "") -> str:
    encoded = base64.b64encode(data).decode("ascii")
    ident = f' id="{html.escape(css_id)}"' if css_id else ""
    return f'<img{ident} alt="{html.escape(alt)}" src="data:{mime};base64,{encoded}">'


def _figure_img(fig: Any, alt: str, css_id: str = "") -> str:
    from neurobatch.plots._common import _render

    return _img(_render(fig, "png"), "image/png", alt, css_id)


# --------------------------------------------------------------------------------------------
# what the page is made of
# --------------------------------------------------------------------------------------------


@dataclass
class _Sources:
    """What the page reads from OUT: the tables, the record and the pipeline file."""

    layout: OutputLayout
    items: pd.DataFrame
    run: Mapping[str, Any]
    processing: Any
    pipeline: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, layout: OutputLayout) -> _Sources:
        items = read_items(layout)
        try:
            run = json.loads(_read(layout.run_record, layout.storage_options))
        except FileNotFoundError:
            run = {}
        processing = read_processing(layout.processing, storage_options=layout.storage_options)
        return cls(layout, items, run, processing, pipeline_of(processing))


def read_items(layout: OutputLayout) -> pd.DataFrame:
    """The items table of an output folder, or an error for people when there is none."""
    try:
        return pd.read_parquet(
            layout.combined(ITEMS_TABLE), storage_options=dict(layout.storage_options)
        )
    except FileNotFoundError as error:
        raise InputNotFoundError(
            f"no {ITEMS_TABLE} in {layout.url}; expected the output folder of a neurobatch run"
        ) from error


def pipeline_of(processing: Any) -> dict[str, Any]:
    """The last run's validated pipeline file, as its processing record keeps it."""
    pipelines = list(processing.pipelines or []) if processing is not None else []
    return dict(pipelines[-1].parameters or {}) if pipelines else {}


def _trial_types(obs: Mapping[str, npt.NDArray[Any]], pipeline: Mapping[str, Any]) -> Any:
    from neurobatch.plots import trial_labels

    trials = pipeline.get("trials") or {}
    align = trials.get("align_to", "")
    center_on = [c for c in trials.get("center_on") or [] if c in obs]
    return trial_labels(obs, center_on=center_on, align_to=align if isinstance(align, str) else "")


def _groupings(
    obs: Mapping[str, npt.NDArray[Any]], pipeline: Mapping[str, Any]
) -> dict[str, npt.NDArray[np.str_]]:
    """The trial type, then each obs column (not a float offset) with 2..MAX_GROUPS values.

    ``item_id`` comes first; a column that splits the trials exactly as an earlier one
    does (``experiment_id`` or ``source`` beside ``item_id``) is left out.
    """
    groupings: dict[str, npt.NDArray[np.str_]] = {"trial type": _trial_types(obs, pipeline)}
    partitions = {tuple(pd.factorize(groupings["trial type"])[0])}
    order = sorted(obs, key=lambda name: name != "item_id")  # the item first, then in order
    for name in order:
        values = obs[name]
        if len(groupings) >= MAX_GROUPINGS:
            break
        if name in _NOT_GROUPS or values.dtype.kind == "f":
            continue
        text = values.astype(str)
        codes = tuple(pd.factorize(text)[0])
        if 1 < len(set(text.tolist())) <= MAX_GROUPS and codes not in partitions:
            groupings[name] = text
            partitions.add(codes)
    return groupings


def _group_stats(
    data: Any, groupings: Mapping[str, npt.NDArray[np.str_]]
) -> dict[str, dict[str, tuple[Any, Any, int]]]:
    """Mean, SEM and count per group of every grouping, a bounded block of trials at a time."""
    n_time = int(data.shape[1])
    sums = {g: {} for g in groupings}  # type: dict[str, dict[str, npt.NDArray[np.float64]]]
    for start, block in _blocks(data):
        values = np.asarray(block, dtype=np.float64)
        finite = np.isfinite(values)
        zeroed = np.where(finite, values, 0.0)
        for grouping, labels in groupings.items():
            block_labels = labels[start : start + values.shape[0]]
            for label in np.unique(block_labels):
                rows = block_labels == label
                acc = sums[grouping].setdefault(str(label), np.zeros((3, n_time)))
                acc[0] += finite[rows].sum(axis=0)
                acc[1] += zeroed[rows].sum(axis=0)
                acc[2] += (zeroed[rows] ** 2).sum(axis=0)
    stats: dict[str, dict[str, tuple[Any, Any, int]]] = {}
    for grouping, groups in sums.items():
        stats[grouping] = {}
        for label in sorted(groups):
            count, total, squares = groups[label]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(count > 0, total / count, np.nan)
                var = np.where(count > 1, (squares - count * mean**2) / (count - 1), np.nan)
                sem = np.sqrt(np.maximum(var, 0.0) / count)
            n = int((groupings[grouping] == label).sum())
            stats[grouping][label] = (mean, sem, n)
    return stats


def _blocks(data: Any) -> Iterator[tuple[int, Any]]:
    """Blocks of trials of a dask array and where each starts, each computed on its own and
    of at most :data:`~neurobatch.chunking.TRIALS_BATCH_MEMORY` as float64 (the combined
    store opens in blocks of tens of thousands of trials: hundreds of MB in float64)."""
    rows = max(1, TRIALS_BATCH_MEMORY // (8 * max(1, int(data.shape[1]))))
    for start in range(0, int(data.shape[0]), rows):
        yield start, data[start : start + rows].compute(scheduler="synchronous")


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return html.escape(str(value))


def _reason(error: Any) -> str:
    if not isinstance(error, str) or not error:
        return ""
    first = error.strip().splitlines()[0]
    return first if len(first) <= 240 else first[:239] + "…"


def _items_table(items: pd.DataFrame, linked: set[str]) -> str:
    rows = []
    for row in items.itertuples(index=False):
        item = str(row.item_id)
        name = html.escape(item)
        cell = f'<a href="#item-{name}">{name}</a>' if item in linked else name
        status = html.escape(str(getattr(row, "status", "")))
        rows.append(
            f'<tr><td>{cell}</td><td class="{status}">{status}</td>'
            f'<td class="num">{_fmt(getattr(row, "n_trials", None), ".0f")}</td>'
            f'<td class="num">{_fmt(getattr(row, "fit_r_squared", None), ".3f")}</td>'
            f"<td>{html.escape(_reason(getattr(row, 'error', None)))}</td></tr>"
        )
    return (
        '<div class="scroll"><table id="items"><thead><tr><th>item</th><th>status</th>'
        "<th>trials</th><th>fit R²</th><th>reason</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )


def _trials_section(layout: OutputLayout, pipeline: Mapping[str, Any]) -> str:
    from neurobatch.io.trials_store import open_trials
    from neurobatch.plots.photometry import _group_means

    try:
        trials = open_trials(combined_trials_url(layout), storage_options=layout.storage_options)
    except FileNotFoundError:
        return '<p class="note">No combined trials in this output.</p>'
    variable = str(trials.attrs.get("processed_variable", next(iter(trials.data_vars), "")))
    if variable not in trials.data_vars or trials.sizes.get("trial", 0) == 0:
        return '<p class="note">No trials.</p>'
    obs = {
        str(name): np.asarray(c.values) for name, c in trials.coords.items() if c.dims == ("trial",)
    }
    groupings = _groupings(obs, pipeline)
    stats = _group_stats(trials[variable].transpose("trial", "rel_time").data, groupings)
    rel_time = np.asarray(trials["rel_time"].values, dtype=np.float64)
    options, figures = [], []
    for i, (grouping, groups) in enumerate(stats.items()):
        name = html.escape(grouping)
        options.append(f'<option value="{name}">{name}</option>')
        fig = _group_means(
            rel_time,
            groups,
            variable=variable,
            group_name=grouping,
            title=f"all items: {trials.sizes['trial']} trials by {grouping}",
        )
        hidden = " hidden" if i else ""
        figures.append(
            f'<div class="grouping" data-group="{name}"{hidden}>'
            f"{_figure_img(fig, f'{variable} mean ± SEM by {grouping}')}</div>"
        )
    return (
        f'<p><label>group by <select id="group-by">{"".join(options)}</select></label></p>'
        + "".join(figures)
    )


def _drawn_figures(layout: OutputLayout) -> dict[str, list[str]]:
    """The figures the runs drew, by file name (``dashboards/<item><suffix>.<fmt>``)."""
    folder = layout.path("dashboards")
    fs, path = fsspec.core.url_to_fs(folder, **dict(layout.storage_options))
    try:
        names = sorted(fs.ls(path, detail=False))
    except FileNotFoundError:
        return {}
    found: dict[str, list[str]] = {}
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if base.endswith(_FIGURE_SUFFIXES):
            found.setdefault(base, []).append(layout.path("dashboards", base))
    return found


def _item_figures(
    item: str, drawn: Mapping[str, list[str]], layout: OutputLayout
) -> Iterator[tuple[bytes, str, str]]:
    """The item's drawn figures: bytes, MIME type and file name, in file-name order."""
    prefix = f"{item}."
    for base, urls in drawn.items():
        # <item>.<fmt> or <item><suffix>.<fmt>, the suffix one dotted word (.sta, .strf)
        if base.startswith(prefix) and base[len(prefix) :].count(".") <= 1:
            suffix = "." + base.rsplit(".", 1)[-1]
            yield (
                _read(urls[0], layout.storage_options),
                _MIME[suffix],
                base,
            )


def _draw_item(item: str, experiment_id: str, layout: OutputLayout, config: Any) -> list[str]:
    """The item's figures drawn from its stores by its kind's own ``figures``, as ``<img>``s.

    The figures are written to a scratch folder in memory and read back. Stages are opened
    as stored (a ``post_load`` hook of the run is not applied); the filter's raw snippet
    reads the input when the run kept no copy of it.
    """
    from neurobatch.engine.ledger import read_records
    from neurobatch.engine.stages import KINDS
    from neurobatch.engine.stages.base import FigureContext
    from neurobatch.io.trials_store import open_trials
    from neurobatch.io.zarr import open_dataset

    kind = KINDS[config.kind]
    if kind.figures is None:
        return []
    so = layout.storage_options
    names = [stage.name for stage in kind.stages]
    records = {stage: record for (_, stage), record in read_records(layout, [item], names).items()}

    def open_stage(stage: str) -> xr.Dataset | None:
        url = layout.stage(item, stage)
        try:
            if stage == "trials":
                return open_trials(url, storage_options=so)
            return open_dataset(url, storage_options=so)
        except FileNotFoundError:
            return None

    scratch = f"memory://neurobatch-report-{secrets.token_hex(8)}"
    output = config.output.model_copy(update={"dashboards": "png", "storage_options": {}})
    kind.figures(
        FigureContext(
            open=open_stage,
            path=lambda suffix: f"{scratch}/{item}{suffix}.png",
            records=records,
            config=config.model_copy(update={"output": output}),
            experiment_id=experiment_id,
        )
    )
    memory = fsspec.filesystem("memory")
    try:
        paths = sorted(memory.ls(scratch, detail=False))
        return [
            _img(memory.cat_file(path), "image/png", f"{path.rsplit('/', 1)[-1]} of {item}")
            for path in paths
        ]
    finally:
        memory.rm(scratch, recursive=True)


def _item_section(
    row: Any,
    drawn: Mapping[str, list[str]],
    layout: OutputLayout,
    config: Any,
) -> str:
    """The item's collapsible section; ``config`` (the run's pipeline) to draw, or None."""
    item = str(row.item_id)
    status = str(getattr(row, "status", ""))
    parts = []
    reason = getattr(row, "error", None)
    if isinstance(reason, str) and reason:
        parts.append(f'<p class="error">{html.escape(reason)}</p>')
    images = [
        _img(data, mime, f"{name} of {item}")
        for data, mime, name in _item_figures(item, drawn, layout)
    ]
    if not images and config is not None and status in ("done", "skipped", "carried"):
        try:
            images = _draw_item(item, str(getattr(row, "experiment_id", item)), layout, config)
        except (OSError, ValueError, KeyError) as error:
            parts.append(
                f'<p class="note">figures could not be drawn: {html.escape(str(error))}</p>'
            )
    if not images and status != "failed":
        parts.append('<p class="note">no figure drawn for this item (output.dashboards).</p>')
    parts.extend(images)
    name = html.escape(item)
    return (
        f'<details id="item-{name}"><summary>{name} <span class="{html.escape(status)}">'
        f"{html.escape(status)}</span></summary>{''.join(parts)}</details>"
    )


def _config(pipeline: Mapping[str, Any]) -> Any:
    """The run's pipeline as a validated model, or None (then nothing is drawn)."""
    from pydantic import ValidationError

    from neurobatch.config import PipelineConfig

    try:
        return PipelineConfig.model_validate(dict(pipeline))
    except ValidationError as error:
        logger.warning("report: cannot draw figures, the recorded pipeline is not valid: %s", error)
        return None


def _resources_section(processing: Any) -> str:
    from neurobatch.plots.provenance import _resource_usage

    if processing is None or not processing.data_processes:
        return '<p class="note">No processing record.</p>'
    return _figure_img(_resource_usage(processing), "CPU and RAM per stage")


def _pipeline_section(pipeline: Mapping[str, Any]) -> str:
    import yaml

    if not pipeline:
        return '<p class="note">The processing record names no pipeline file.</p>'
    text = yaml.safe_dump(dict(pipeline), sort_keys=False, default_flow_style=None)
    return f'<pre id="pipeline">{html.escape(text)}</pre>'


# --------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------


def write_report(
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    max_items: int = 50,
    draw: bool = True,
) -> str:
    """Write ``OUT/report.html``, one self-contained page of the batch in ``url``.

    Sections: a summary of the last run; the items table (every item: status, the one-line
    reason of a failure, trials, fit R²); the trials of every item, mean ± SEM grouped by
    trial type (the ``center_on`` event a trial is centred on, else its alignment event)
    or by any obs column with at most :data:`MAX_GROUPS` values, chosen from a menu; the
    CPU and RAM of each stage; the pipeline file; and one collapsible section per item,
    for the first ``max_items`` items, with the figures the run drew (dashboards: the
    filtered channels, dF/F with events, trial heatmap and mean ± SEM per trial type; STA
    grids and STRFs; the filter's raw-versus-filtered snippet) or, with ``draw``, drawn
    from the item's stores when the run drew none. Figures are embedded PNGs (SVGs drawn by
    the run stay SVG), so the file references nothing outside itself.

    Parameters
    ----------
    url : str
        The output folder of a run, any fsspec URL.
    storage_options : mapping, optional
        fsspec options to reach ``url``.
    max_items : int, default 50
        Items that get a section with figures (every item gets a row of the table).
    draw : bool, default True
        Draw the figures of an item whose run drew none, as its kind draws them.

    Returns
    -------
    str
        The URL of the page written.

    Raises
    ------
    InputNotFoundError
        If ``url`` holds no ``items.parquet`` (not the output of a run).
    ValueError
        If ``max_items`` is negative.

    Examples
    --------
    >>> import pandas as pd
    >>> from neurobatch.engine.layout import OutputLayout
    >>> out = OutputLayout("memory://docs/report-out")
    >>> pd.DataFrame({"item_id": ["a", "b"], "status": ["done", "failed"],
    ...               "error": [None, "InputError: no column 'signal'"],
    ...               "n_trials": [12, 0], "fit_r_squared": [0.93, None]}).to_parquet(
    ...     out.combined("items.parquet"))
    >>> write_report(out.url)
    'memory://docs/report-out/report.html'
    >>> page = fsspec.filesystem("memory").cat_file("/docs/report-out/report.html").decode()
    >>> "no column &#x27;signal&#x27;" in page, "http" in page
    (True, False)
    """
    if max_items < 0:
        raise ValueError(f"report: max_items must be 0 or more, got {max_items}.")
    started = time.perf_counter()
    layout = OutputLayout(str(url).rstrip("/"), dict(storage_options or {}))
    sources = _Sources.read(layout)
    items, run, pipeline = sources.items, sources.run, sources.pipeline
    shown = items.head(max_items)
    drawn = _drawn_figures(layout)
    config = _config(pipeline) if draw and pipeline else None
    sections = [_item_section(row, drawn, layout, config) for row in shown.itertuples(index=False)]
    counts = items["status"].value_counts().to_dict() if "status" in items else {}
    status_line = ", ".join(f"{n} {html.escape(str(s))}" for s, n in counts.items())
    name = html.escape(str(pipeline.get("name") or run.get("name") or layout.url))
    facts = [
        f"{len(items)} item(s): {status_line}",
        f"{_fmt(run.get('n_trials'), 'd')} trials" if run.get("n_trials") is not None else "",
        f"run {html.escape(str(run.get('run', '')))}" if run.get("run") else "",
        f"{_fmt(run.get('seconds'), '.1f')} s" if run.get("seconds") is not None else "",
        f"neurobatch {html.escape(str(run.get('neurobatch', '')))}"
        if run.get("neurobatch")
        else "",
    ]
    more = (
        f'<p class="note">Figures of the first {len(shown)} of {len(items)} items; '
        f"<code>neurobatch report OUT --items N</code> for more, or "
        f"<code>neurobatch view OUT</code>.</p>"
        if len(items) > len(shown)
        else ""
    )
    page = "".join(
        [
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
            f"<title>neurobatch report: {name}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{name}</h1><p>{' · '.join(f for f in facts if f)}</p>",
            f"<h2>Items</h2>{_items_table(items, set(shown['item_id'].astype(str)))}",
            f"<h2>Trials</h2>{_trials_section(layout, pipeline)}",
            f"<h2>Resources</h2>{_resources_section(sources.processing)}",
            f"<h2>Pipeline file</h2>{_pipeline_section(pipeline)}",
            f"<h2>Items, one by one</h2>{more}{''.join(sections)}",
            f"<script>{_SCRIPT}</script></body></html>",
        ]
    )
    target = layout.report
    files.write_text(target, page, storage_options=layout.storage_options)
    logger.info(
        "report %s: %d items (%d with figures), %d bytes, %.2f s",
        target,
        len(items),
        len(shown),
        len(page),
        time.perf_counter() - started,
    )
    return target


def report_after_run(layout: OutputLayout) -> None:
    """Write the run's ``report.html`` without drawing; a failure is logged, not raised.

    Parameters
    ----------
    layout : OutputLayout
        The run's output folder.
    """
    try:
        write_report(layout.url, storage_options=layout.storage_options, draw=False)
    except Exception as error:  # noqa: BLE001 - the run's outputs are complete without it
        logger.warning("could not write the report of %s: %s", layout.url, error)
