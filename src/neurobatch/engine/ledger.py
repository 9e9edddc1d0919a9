"""Which stages of an item are done: parameter hashes chained through the stages.

An item's stage is done when its output's commit marker carries the stage's *key*: a hash
of the input's fingerprint, the stage's parameters, the key of the stage before it and the
neurobatch version. Changing trial settings changes only the trials key, so the
preprocessed signal is reused; changing the filter changes the preprocess key and with it
the trials key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

__all__ = ["stage_key"]


def stage_key(stage: str, parameters: Mapping[str, Any], *, upstream: str) -> str:
    """The key a stage's committed output must carry to count as done.

    Parameters
    ----------
    stage : str
        The stage's name.
    parameters : mapping
        Everything the stage's result depends on besides its input (JSON-serialisable).
    upstream : str
        The key of the stage's input: the input's fingerprint for the first stage, the
        previous stage's key after that.

    Returns
    -------
    str
        A 16-hex-digit hash.

    Examples
    --------
    >>> a = stage_key("trials", {"bounds_s": [-8, 8]}, upstream="abc")
    >>> a == stage_key("trials", {"bounds_s": [-8, 8]}, upstream="abc")
    True
    >>> a == stage_key("trials", {"bounds_s": [-5, 5]}, upstream="abc")
    False
    """
    payload = json.dumps(
        {
            "stage": stage,
            "parameters": parameters,
            "upstream": upstream,
            "neurobatch": version("neurobatch"),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
