"""``neurobatch.__version__``: the installed distribution's version, which hatch-vcs computed."""

from __future__ import annotations

import importlib.metadata

from packaging.version import Version

import neurobatch


def test_version_is_the_installed_distributions() -> None:
    assert "__version__" in neurobatch.__all__
    assert neurobatch.__version__ == importlib.metadata.version("neurobatch")
    # PEP 440, and not the "0.0.0+unknown" of a source tree that was never installed
    assert Version(neurobatch.__version__) >= Version("0.1.0")
