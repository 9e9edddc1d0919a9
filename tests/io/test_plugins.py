"""Loader plugins: formats of other packages, declared in the entry-point group
``neurobatch.loaders``.

Each test installs distributions as an installer lays them out (the modules, and
``<name>-<version>.dist-info`` with ``METADATA`` and ``entry_points.txt``) into a folder put
on ``sys.path`` and ``PYTHONPATH``: importlib.metadata finds them there, in this process and
in worker processes alike. The worked example is the real file under ``docs/examples/``,
declared as its own ``pyproject.toml`` declares it.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from neurobatch.config import dump_config, plugins, validate_config
from neurobatch.config import loaders as config_loaders
from neurobatch.engine.run import Pipeline
from neurobatch.errors import ConfigError, InputError
from neurobatch.io.discover import discover
from neurobatch.io.loaders import LOADERS, check_inputs, load_recording
from pipeline_files import minimal

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "acme-photometry"
CODES = {"trial_cue": 1, "lever": 2}


def install(site: Path, name: str, modules: dict[str, str], entry_points: dict[str, str]) -> None:
    """Lay a distribution out in ``site`` as pip installs one."""
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)
    info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    lines = [f"{key} = {value}" for key, value in entry_points.items()]
    (info / "entry_points.txt").write_text("[neurobatch.loaders]\n" + "\n".join(lines) + "\n")


def forget_plugins(folder: Path) -> None:
    """Make this process forget the plugins it imported, as a new worker process knows none."""
    for fmt in list(config_loaders._LOADER_MODELS):
        if fmt not in config_loaders._BUILTIN_FORMATS:
            model = config_loaders._LOADER_MODELS.pop(fmt)
            vars(config_loaders).pop(model.__name__, None)
    config_loaders._plugin_adapters.clear()
    plugins._loaded.clear()
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(folder)):
            del sys.modules[name]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder of installed distributions, on sys.path and PYTHONPATH for this test only."""
    folder = tmp_path / "site-packages"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))
    yield folder
    forget_plugins(folder)


@pytest.fixture
def acme(site: Path) -> Path:
    """The worked example, installed as its pyproject.toml declares it."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    shutil.copy(EXAMPLE / "acme_photometry.py", site)
    install(site, project["name"], {}, project["entry-points"]["neurobatch.loaders"])
    return site


def _recording(n: int = 3000, fs: float = 100.0, seed: int = 0) -> dict[str, Any]:
    """A two-channel recording with events at rows at least two apart (TTL pulses)."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(np.arange(0, n, 2), size=40, replace=False))
    names = rng.choice(list(CODES), size=rows.size)
    return {
        "ms": (np.arange(n) * 1000 / fs).astype(np.int64),
        "F470": 1.6 + 0.01 * rng.standard_normal(n),
        "F405": 0.9 + 0.01 * rng.standard_normal(n),
        "events": {name: rows[names == name] for name in CODES},
    }


def write_acme(path: Path, rec: dict[str, Any], rig: str = "acme-fp2") -> Path:
    """The rig's layout: a preamble, ';'-separated columns, ms times, TTL codes."""
    ttl = np.zeros(rec["ms"].size, dtype=np.int64)
    for name, rows in rec["events"].items():
        ttl[rows] = CODES[name]
    frame = pd.DataFrame({"timestamp_ms": rec["ms"], "F470": rec["F470"], "F405": rec["F405"]})
    frame["TTL"] = ttl
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write(f"# rig: {rig}\n# operator: J. Doe\n")
        frame.to_csv(f, sep=";", index=False, float_format="%.17g")
    return path


def write_phopro(path: Path, rec: dict[str, Any]) -> Path:
    """The same recording in PhoPro's layout, read by the built-in photometry-csv."""
    frame = pd.DataFrame({"time": rec["ms"], "signal": rec["F470"], "isosbestic": rec["F405"]})
    for name, rows in rec["events"].items():
        frame[name] = np.isin(np.arange(rec["ms"].size), rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.17g")
    return path


ACME_LOADER = {"format": "acme-csv", "ttl_codes": CODES}
PHOPRO_LOADER = {"format": "photometry-csv", "time_unit": "ms", "event_cols": list(CODES)}


def test_the_worked_example_reads_what_the_builtin_reads(acme: Path, tmp_path: Path) -> None:
    rec = _recording()
    ours = load_recording(
        str(write_acme(tmp_path / "m1.csv", rec)), {"ttl_codes": CODES}, format="acme-csv"
    )
    reference = load_recording(
        str(write_phopro(tmp_path / "ref.csv", rec)), PHOPRO_LOADER, format="photometry-csv"
    )
    for name in ("time", "signal", "isosbestic", "event_time", "event_name"):
        np.testing.assert_array_equal(ours[name].values, reference[name].values)
    assert ours.attrs["sampling_rate"] == reference.attrs["sampling_rate"]
    assert ours.attrs["rig"] == "acme-fp2" and ours.attrs["operator"] == "J. Doe"
    # the loader arguments every format takes work in a plugin too
    (tmp_path / "m1.json").write_text(json.dumps({"subject": "m17"}))
    halved = load_recording(
        str(tmp_path / "m1.csv"),
        {"ttl_codes": CODES, "annotation": "{stem}.json", "downsample": 2},
        format="acme-csv",
    )
    assert halved.attrs["subject"] == "m17" and halved.sizes["time"] == rec["ms"].size // 2
    one = load_recording(str(tmp_path / "m1.csv"), {"isosbestic_col": None}, format="acme-csv")
    assert "isosbestic" not in one and one.sizes["event"] == 0
    with pytest.raises(InputError, match=r"has no column 'F45' \(isosbestic_col; did you mean"):
        load_recording(str(tmp_path / "m1.csv"), {"isosbestic_col": "F45"}, format="acme-csv")


def test_a_plugin_validates_as_a_builtin_does(acme: Path, tmp_path: Path) -> None:
    trials = {"align_to": "trial_cue", "bounds_s": [-1, 1]}
    config = validate_config(minimal(loader=ACME_LOADER, trials=trials), source="p.yaml")
    assert type(config.loader).__name__ == "PluginAcmeCsvLoader"
    assert type(config.loader).__mro__[1].__name__ == "AcmeArguments"
    assert config.loader.event_names() == ["trial_cue", "lever"]  # type: ignore[attr-defined]
    # it travels as the built-ins' do: as JSON, and pickled to the workers
    assert validate_config(json.loads(json.dumps(dump_config(config)))) == config
    assert pickle.loads(pickle.dumps(config)) == config
    pickled = pickle.dumps(config)
    forget_plugins(acme)
    again = pickle.loads(pickled)  # the model is rebuilt from the entry point, by its name
    assert type(again.loader).__name__ == "PluginAcmeCsvLoader"
    assert dump_config(again) == dump_config(config)
    cases = [
        (
            {**ACME_LOADER, "ttl_code": {}},
            (
                r"^p\.yaml: loader\.ttl_code: unknown argument of loader format 'acme-csv'; did "
                r"you mean 'ttl_codes'\?$"
            ),
        ),
        (
            {"format": "acme-cvs"},
            (
                r"^p\.yaml: loader\.format: unknown loader format 'acme-cvs'; did you mean "
                r"'acme-csv'\? \(known formats: 'acme-csv', 'doric', "
            ),
        ),
        (
            {**ACME_LOADER, "ttl_codes": {"cue": "one"}},
            r"^p\.yaml: loader\.ttl_codes\.cue: input should be a valid integer",
        ),
    ]
    for loader, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate_config(minimal(loader=loader), source="p.yaml")
    with pytest.raises(
        ConfigError,
        match=r"trials\.align_to: unknown event 'trial_cu'; did you mean 'trial_cue'\? \(the "
        r"loader provides 'trial_cue', 'lever'\)",
    ):
        validate_config(minimal(loader=ACME_LOADER, trials={**trials, "align_to": "trial_cu"}))
    with pytest.raises(ConfigError, match=r"format 'acme-csv' reads files; set target: file"):
        validate_config(minimal(input={"url": "data", "target": "folder"}, loader=ACME_LOADER))


def test_discover_and_validate_check_a_plugins_inputs(acme: Path, tmp_path: Path) -> None:
    for i in range(3):
        write_acme(tmp_path / "data" / f"m{i}.csv", _recording(seed=i))
    loader = {**ACME_LOADER, "signal_col": "F47O"}
    manifest = discover({"url": str(tmp_path / "data"), "pattern": "*.csv"}, loader)
    assert list(manifest["format"]) == ["acme-csv"] * 3
    lines = check_inputs(manifest)
    assert len(lines) == 3
    assert lines[0] == (
        f"'{tmp_path / 'data' / 'm0.csv'}' has no column 'F47O' (signal_col; did you mean "
        "'F470'?); its columns: 'timestamp_ms', 'F470', 'F405', 'TTL'"
    )
    assert check_inputs(discover({"url": str(tmp_path / "data")}, ACME_LOADER)) == []


def test_a_pipeline_runs_a_plugin_on_worker_processes(acme: Path, tmp_path: Path) -> None:
    """Workers started with the plugin's folder on their path import it themselves."""
    for i in range(2):
        rec = _recording(n=6000, seed=i)
        write_acme(tmp_path / "acme" / f"m{i}.csv", rec)
        write_phopro(tmp_path / "phopro" / f"m{i}.csv", rec)

    def config(kind: str, loader: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": kind,
            "input": {"url": str(tmp_path / kind), "pattern": "*.csv"},
            "loader": loader,
            "preprocess": {"fit": "ols", "correction": "dff"},
            "trials": {"align_to": "trial_cue", "bounds_s": [-1.0, 2.0]},
            "output": {"url": str(tmp_path / f"out-{kind}"), "formats": ["zarr"]},
        }

    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        # the worker's own process imports the plugin (not something sent from here)
        assert client.run(lambda: "acme_photometry" in sys.modules) == {
            address: False for address in client.scheduler_info()["workers"]
        }
        ours = Pipeline(config("acme", ACME_LOADER)).run(client=client, progress=False)
        reference = Pipeline(config("phopro", PHOPRO_LOADER)).run(client=client, progress=False)
        assert set(client.run(lambda: "acme_photometry" in sys.modules).values()) == {True}
    assert ours.n_failed == reference.n_failed == 0 and ours.n_done == reference.n_done == 2
    with (
        xr.open_zarr(tmp_path / "out-acme" / "trials.zarr") as a,
        xr.open_zarr(tmp_path / "out-phopro" / "trials.zarr") as b,
    ):
        assert a.sizes["trial"] == b.sizes["trial"] > 0
        np.testing.assert_array_equal(a["dff"].values, b["dff"].values)


def test_a_broken_plugin_is_one_line_and_harms_no_other_format(site: Path, tmp_path: Path) -> None:
    install(
        site,
        "broken-lab",
        {
            "broken_lab": "import numpyy\n",
            "odd_lab": "def load(url, arguments):\n    return None\n",
            "typo_lab": (
                "from neurobatch.io.loaders import LoaderArguments, LoaderPlugin\n"
                "loader = LoaderPlugin(LoaderArguments, print, target='files')\n"
            ),
        },
        {
            "broken-csv": "broken_lab:loader",
            "odd-csv": "odd_lab:load",
            "typo-csv": "typo_lab:loader",
        },
    )
    expected = {
        "broken-csv": (
            "loader plugin 'broken-csv' (entry point 'broken-csv = broken_lab:loader' of "
            "broken-lab 0.1.0) failed to import: ModuleNotFoundError: No module named 'numpyy'"
        ),
        "odd-csv": (
            "loader plugin 'odd-csv' (entry point 'odd-csv = odd_lab:load' of broken-lab "
            "0.1.0) names a 'function'; expected a neurobatch.io.loaders.LoaderPlugin("
            "arguments=..., load=...)"
        ),
        "typo-csv": (
            "loader plugin 'typo-csv' (entry point 'typo-csv = typo_lab:loader' of broken-lab "
            "0.1.0) failed to import: TypeError: LoaderPlugin.target must be 'file' or "
            "'folder', got 'files'"
        ),
    }
    for fmt, line in expected.items():
        with pytest.raises(ConfigError) as error:
            validate_config(minimal(loader={"format": fmt}), source="p.yaml")
        assert str(error.value) == f"p.yaml: loader.format: {line}"
        with pytest.raises(ConfigError) as error:
            load_recording(str(tmp_path / "x.csv"), {}, format=fmt)
        assert str(error.value) == line
    # installed but unused, they cost nothing: a built-in pipeline validates, and an unknown
    # format lists them without importing them
    assert validate_config(minimal()).loader.format == "photometry-csv"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"did you mean 'odd-csv'\? \(known: 'photometry-csv'"):
        load_recording(str(tmp_path / "x.csv"), {}, format="odd_csv")
    assert list(LOADERS)[-3:] == ["broken-csv", "odd-csv", "typo-csv"]


def test_a_plugin_returning_another_shape_fails_its_item_in_one_line(
    site: Path, tmp_path: Path
) -> None:
    install(
        site,
        "shapes-lab",
        {
            "shapes_lab": (
                "import xarray as xr\n"
                "from neurobatch.io.loaders import LoaderArguments, LoaderPlugin\n"
                "def flat(url, arguments, *, storage_options=None):\n"
                "    return xr.Dataset({'signal': (('time', 'fibre'), [[1.0]])})\n"
                "def listed(url, arguments, *, storage_options=None):\n"
                "    return [1.0]\n"
                "flat_loader = LoaderPlugin(LoaderArguments, flat)\n"
                "list_loader = LoaderPlugin(LoaderArguments, listed, kind='ephys')\n"
            )
        },
        {"flat": "shapes_lab:flat_loader", "listed": "shapes_lab:list_loader"},
    )
    with pytest.raises(InputError) as error:
        load_recording("m.csv", {}, format="flat")
    assert str(error.value) == (
        "'m.csv': loader format 'flat' returned a Dataset without signal('time',) (('time', "
        "'fibre')); a 'time' coordinate; event_time(event) with coordinate event_name; "
        "attrs['sampling_rate'] (its variables: signal); expected a photometry recording (see "
        "neurobatch.io.loaders.LoaderPlugin)"
    )
    with pytest.raises(InputError, match=r"^'m\.csv': loader format 'listed' returned a list; "):
        load_recording("m.csv", {}, format="listed")


def test_a_plugin_of_a_builtins_name_is_ignored(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    install(site, "shadow-lab", {"shadow_lab": "raise ImportError\n"}, {"tdt": "shadow_lab:x"})
    with caplog.at_level(logging.WARNING, logger="neurobatch.config.loaders"):
        assert list(LOADERS).count("tdt") == 1
    assert LOADERS["tdt"].load.__module__ == "neurobatch.io.loaders.tdt"
    assert "declares loader format 'tdt' in group 'neurobatch.loaders', which is a built-in" in (
        caplog.text
    )
