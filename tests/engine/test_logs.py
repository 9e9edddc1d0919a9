"""The run's log holds what happened up to a failure, and its one line, even on a full disk."""

from __future__ import annotations

import errno
import logging
import threading
from pathlib import Path

import fsspec
import pytest

from disks import small_disk
from neurobatch.engine.logs import run_log
from neurobatch.errors import StorageError
from neurobatch.io import files

logger = logging.getLogger("neurobatch.engine.test")


def _messages(text: str) -> list[str]:
    """Each line's message, after its time, level and logger."""
    return [line.split(": ", 1)[1] for line in text.splitlines()]


def test_a_full_disk_still_takes_the_last_lines_and_the_failure(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "256k") as disk:
        path = disk / "out" / "logs" / "run.log"
        with pytest.raises(StorageError), run_log(str(path)) as log:
            logger.info("item %s done", "experiment_001")
            with pytest.raises(OSError) as full, open(disk / "filler", "wb") as filler:
                while True:  # fill the disk
                    filler.write(b"x" * 4096)
                    filler.flush()
            assert full.value.errno == errno.ENOSPC
            for i in range(20):  # about 2 KiB: well within the reserve
                logger.warning("still logging %d on a full disk", i)
            files.write_text(str(disk / "out" / "run.json"), "{}")  # fails: the run stops
        messages = _messages(path.read_text())
        assert messages[0] == "item experiment_001 done"
        assert messages[1:21] == [f"still logging {i} on a full disk" for i in range(20)]
        assert messages[-1] == (
            f"the run stopped: no space left on device writing {disk}/out/run.json; "
            "free space or choose another output.url"
        )
        assert path.read_text() == log.text


def test_secrets_are_masked_and_an_object_store_gets_the_log_whole() -> None:
    url = "memory://run-log-doc/out/logs/run.log"
    with run_log(url, scrub=lambda text: text.replace("hunter2", "***")) as log:
        logger.info("password hunter2")
        logging.getLogger("neurobatch.elsewhere").info("from another module")
    text = fsspec.open(url, "r").open().read()
    assert _messages(text) == ["password ***", "from another module"]
    assert text == log.text


def test_records_of_other_threads_are_not_the_run_s(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    with run_log(str(path)):
        logger.info("the driver's")
        thread = threading.Thread(target=lambda: logger.info("an item's, on its thread"))
        thread.start()
        thread.join()
    assert _messages(path.read_text()) == ["the driver's"]
