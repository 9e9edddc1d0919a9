"""Write a suite's results: JSON, a Markdown table and PNG plots, under ``benchmarks/results/``.

A suite's ``run_suite`` returns ``{"suite", "settings", "cases", "targets", "series"}``
(see ``benchmarks/__main__.py``); :func:`write` adds nothing to it but writes

- ``<suite>[-quick].json``: the dict as it is (with ``machine`` and ``command``);
- ``<suite>[-quick].md``: the settings, a table of the cases and one of the targets;
- ``<suite>[-quick].png``: one subplot per series (lines for numeric x, bars otherwise).

:func:`write_all` writes ``all[-quick].md`` with every suite's tables.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


# --- the machine ------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The checkout's short commit, with ``+changes`` when tracked files differ from it
    (results files aside: a run of several suites rewrites them as it goes)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git(
            "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}{'+changes' if dirty else ''}"


def machine() -> dict[str, Any]:
    """The machine and software a run is taken on."""
    import psutil

    try:
        from importlib.metadata import version

        neurobatch_version = version("neurobatch")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        neurobatch_version = "unknown"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "neurobatch": neurobatch_version,
        "commit": _git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


# --- Markdown ---------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        magnitude = abs(value)
        if magnitude >= 1e5:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.0f}"
        if magnitude >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def _value(target: dict[str, Any]) -> str:
    return f"{_fmt(target['value'])} {target['unit']}".strip()


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def title(result: dict[str, Any]) -> str:
    """``filter (quick)`` and the like."""
    return f"{result['suite']}{' (quick)' if result.get('quick') else ''}"


def markdown(result: dict[str, Any], *, level: int = 2) -> str:
    """The settings, the cases table and the targets table of one suite's result."""
    hashes = "#" * level
    lines = [f"{hashes} Benchmark: {title(result)}", ""]
    if "error" in result:
        lines += [f"**Failed**: {result['error']}", ""]
        return "\n".join(lines)
    info = result.get("machine", {})
    if info:
        lines.append(
            f"Machine: {info.get('cpu')}, {info.get('usable_cores')} of {info.get('cores')} "
            f"cores usable, {info.get('memory_gib')} GiB; Python {info.get('python')}, "
            f"neurobatch {info.get('neurobatch')} ({info.get('commit')}); {info.get('date')}."
        )
    if result.get("command"):
        lines.append(
            f"Command: `{result['command']}`"
            + (f" ({result['wall_s']:.0f} s)" if "wall_s" in result else "")
        )
    lines.append("")
    settings = result.get("settings", {})
    if settings:
        lines += ["Settings: " + "; ".join(f"{k} {_fmt(v)}" for k, v in settings.items()), ""]
    cases = result.get("cases", [])
    if cases:
        extra: list[str] = []
        for case in cases:
            extra += [k for k in case if k not in ("name", "seconds", "peak_mb", *extra)]
        header = ["case", "seconds", "peak MB", *extra]
        rows = [
            [case["name"], case.get("seconds"), case.get("peak_mb"), *(case.get(k) for k in extra)]
            for case in cases
        ]
        lines += [f"{hashes}# Cases", "", *_table(header, rows), ""]
    targets = result.get("targets", [])
    if targets:
        rows = [
            [
                t["name"],
                _value(t),
                t["target"],
                "met" if t["met"] else "**missed**",
                t.get("why", ""),
            ]
            for t in targets
        ]
        lines += [
            f"{hashes}# Targets",
            "",
            *_table(["target", "value", "goal", "", "why / note"], rows),
            "",
        ]
    notes = result.get("notes", [])
    if notes:
        lines += [f"{hashes}# Notes", "", *(f"- {note}" for note in notes), ""]
    return "\n".join(lines)


# --- plots ------------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> bool:
    """One subplot per series: lines over a numeric x, grouped bars over labels. False if none."""
    series = result.get("series", [])
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(series)
    columns = min(n, 3)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    for ax, s in zip(axes.flat, series, strict=False):
        x = list(s["x"])
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in x)
        lines = s["lines"]
        if numeric:
            for label, y in lines.items():
                ax.plot(x, [math.nan if v is None else v for v in y], marker="o", label=label)
            if s.get("log_x"):
                ax.set_xscale("log")
            elif len(x) <= 8:
                ax.set_xticks(x)
            if s.get("log_y"):
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)
        else:
            width = 0.8 / max(1, len(lines))
            for i, (label, y) in enumerate(lines.items()):
                positions = [j + (i - (len(lines) - 1) / 2) * width for j in range(len(x))]
                ax.bar(positions, [0 if v is None else v for v in y], width, label=label)
            ax.set_xticks(range(len(x)), [str(v) for v in x], rotation=15, ha="right")
            if s.get("log_y"):
                ax.set_yscale("log")
        ax.set_title(s["name"], fontsize=10)
        ax.set_xlabel(s.get("x_label", ""))
        ax.set_ylabel(s.get("y_label", ""))
        ax.grid(alpha=0.3)
        if len(lines) > 1 or not numeric:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    info = result.get("machine", {})
    fig.suptitle(
        f"neurobatch benchmark: {title(result)} — {info.get('cpu', '')}, "
        f"{info.get('usable_cores', '?')} cores",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- files ------------------------------------------------------------------------------------


def stem(suite: str, quick: bool) -> str:
    return f"{suite}-quick" if quick else suite


def write(result: dict[str, Any], *, results: Path = RESULTS) -> list[Path]:
    """Write the suite's JSON, Markdown and PNG; return their paths."""
    results.mkdir(parents=True, exist_ok=True)
    name = stem(result["suite"], bool(result.get("quick")))
    paths = [results / f"{name}.json", results / f"{name}.md"]
    paths[0].write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    paths[1].write_text(markdown(result) + "\n")
    png = results / f"{name}.png"
    if plot(result, png):
        paths.append(png)
    return paths


def write_all(
    outcomes: Sequence[dict[str, Any]], *, quick: bool, command: str, results: Path = RESULTS
) -> Path:
    """Write ``all[-quick].md``: a summary of every target, then each suite's tables."""
    results.mkdir(parents=True, exist_ok=True)
    lines = [f"# neurobatch benchmarks{' (quick)' if quick else ''}", ""]
    info = next((o["machine"] for o in outcomes if "machine" in o), machine())
    lines += [
        (
            f"Machine: {info.get('cpu')}, {info.get('usable_cores')} of {info.get('cores')} cores "
            f"usable, {info.get('memory_gib')} GiB; Python {info.get('python')}, neurobatch "
            f"{info.get('neurobatch')} ({info.get('commit')}); {info.get('date')}."
        ),
        f"Command: `{command}`",
        "",
    ]
    summary = []
    for outcome in outcomes:
        if "error" in outcome:
            summary.append([outcome["suite"], "(suite failed)", "", "", "**failed**"])
        for t in outcome.get("targets", []):
            summary.append(
                [
                    outcome["suite"],
                    t["name"],
                    _value(t),
                    t["target"],
                    "met" if t["met"] else "**missed**",
                ]
            )
    lines += ["## Targets", "", *_table(["suite", "target", "value", "goal", ""], summary), ""]
    for outcome in outcomes:
        lines += [markdown(outcome, level=2), ""]
    path = results / f"{stem('all', quick)}.md"
    path.write_text("\n".join(lines))
    return path


def _json_default(value: Any) -> Any:
    """NumPy scalars and arrays, paths: as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def command_line() -> str:
    """The command that was run, as typed (``python -m benchmarks ...``)."""
    return "python -m benchmarks " + " ".join(sys.argv[1:])
