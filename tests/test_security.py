"""What a pipeline file, a sidecar or an input can make neurobatch do: nothing it does not say.

YAML is loaded safely, nothing from a file is evaluated, user code is imported only when the
file names it, and the cluster listens on loopback unless asked otherwise. (Pickles:
tests/io/test_loaders_pickle.py; secrets: tests/test_redact.py and the provenance tests;
item ids that would leave OUT: tests/test_bad_inputs.py.)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest

from neurobatch import synthetic
from neurobatch.cli import main
from neurobatch.config import LocalClusterConfig, load_config
from neurobatch.engine.cluster import connect
from neurobatch.engine.run import Pipeline
from neurobatch.errors import ConfigError


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A small photometry demo folder: 2 recordings and its pipeline file."""
    synthetic.write_photometry_batch(tmp_path / "data", n_items=2, duration_s=60.0, fs=50.0)
    return synthetic.demo_pipeline_file(tmp_path, "photometry")


def test_yaml_tags_that_build_python_objects_are_refused(demo: Path, tmp_path: Path) -> None:
    touched = tmp_path / "touched"
    text = demo.read_text().replace(
        "name: neurobatch-demo",
        f"name: !!python/object/apply:os.system ['touch {touched}']",
    )
    demo.write_text(text)
    with pytest.raises(ConfigError, match=r"pipeline\.yaml") as error:
        load_config(demo)
    assert len(str(error.value).splitlines()) == 1
    assert not touched.exists()


def test_a_sidecar_yaml_cannot_build_python_objects(demo: Path, tmp_path: Path) -> None:
    touched = tmp_path / "touched"
    second = tmp_path / "data" / "experiment_002.json"
    second.rename(second.with_suffix(".yaml"))  # JSON is YAML
    (tmp_path / "data" / "experiment_001.json").unlink()
    (tmp_path / "data" / "experiment_001.yaml").write_text(
        f"subject: !!python/object/apply:os.system ['touch {touched}']\n"
    )
    demo.write_text(demo.read_text().replace('"{stem}.json"', '"{stem}.yaml"'))
    config = load_config(demo)
    output = config.output.model_copy(update={"url": str(tmp_path / "out"), "dashboards": None})
    config = config.model_copy(
        update={"output": output, "cluster": LocalClusterConfig(n_workers=1)}
    )
    items = Pipeline(config).run(progress=False).items.set_index("item_id")
    assert items["status"].to_dict() == {"experiment_001": "failed", "experiment_002": "done"}
    error = items.loc["experiment_001", "error"]
    assert error.startswith(
        f"sidecar '{tmp_path / 'data' / 'experiment_001.yaml'}' is not valid YAML"
    )
    assert "could not determine a constructor" in error and "\n" not in error
    assert not touched.exists()


def test_templates_are_not_evaluated(demo: Path) -> None:
    # str.format would reach attributes through "{stem.__class__...}": only bare names pass
    text = demo.read_text().replace('"{stem}.json"', '"{stem.__class__.__mro__}.json"')
    demo.write_text(text)
    with pytest.raises(ConfigError, match=r"uses \{stem\.__class__\.__mro__\}; only"):
        load_config(demo)


def test_hooks_are_imported_only_when_the_file_names_them(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    imported = tmp_path / "imported"
    hook = f"from pathlib import Path\nPath({str(imported)!r}).touch()\n\n\ndef mark(ds):\n    return ds\n"
    # a module beside the pipeline file, and one on sys.path, that nobody names
    (tmp_path / "hooks.py").write_text(hook)
    (tmp_path / "neurobatch_hooks.py").write_text(hook)
    assert main(["validate", str(demo)]) == 0
    assert main(["discover", str(demo)]) == 0
    assert not imported.exists()
    named = demo.read_text() + f"hooks:\n  post_load: {tmp_path / 'hooks.py'}:mark\n"
    demo.write_text(named)
    assert main(["validate", str(demo)]) == 0
    assert imported.exists()
    assert "; hooks post_load found" in capsys.readouterr().out


@pytest.mark.parametrize("processes", [True, False], ids=["worker-processes", "in-process"])
def test_the_cluster_listens_on_loopback_by_default(processes: bool) -> None:
    """Every socket the cluster opens (scheduler, workers, dashboards) is on 127.0.0.1; an
    in-process cluster's scheduler and worker talk through memory and open none."""
    me = psutil.Process()

    def listening() -> set[tuple[str, int]]:
        return {
            (c.laddr.ip, c.laddr.port)
            for p in [me, *me.children(recursive=True)]
            for c in p.net_connections("inet")
            if c.status == psutil.CONN_LISTEN
        }

    before = listening()
    config = LocalClusterConfig(n_workers=1, memory_limit="1GiB", processes=processes)
    with connect(config) as client:
        opened = listening() - before
        info = client.scheduler_info()
        dashboard = urlparse(client.dashboard_link)
    assert {ip for ip, _ in opened} == {"127.0.0.1"}
    assert (dashboard.hostname, dashboard.port) in opened
    if processes:
        hosts = {urlparse(address).hostname for address in [info["address"], *info["workers"]]}
        assert hosts == {"127.0.0.1"}
    else:
        assert info["address"].startswith("inproc://")
