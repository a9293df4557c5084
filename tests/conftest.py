"""Shared test settings: deterministic torch on the CPU, paths to the shared reference data, and how
`make test` shares the tests between its two pytest-xdist workers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

SHARED = Path(os.environ.get("LBDN_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
VECTORS = SHARED / "vectors"
CIFAR_JPEG_ARCHIVE = SHARED / "datasets" / "cifar10-jpeg-train.tar.gz"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# The test of tests/test_cli.py that trains one paper experiment per item, each standing alone.
PAPER_COMMAND_TEST = "test_paper_command_runs"


def xdist_scope(nodeid: str) -> str:
    """The unit of work that `pytest -n 2 --dist loadgroup` (the Makefile) gives one worker.

    A test file, as with --dist loadfile: its tests run on one worker, in order, so its module
    fixtures (a trained run shared by its tests) are made once. Except the paper-command tests of
    tests/test_cli.py (minutes each, independent of each other): each is a unit of its own, so
    both workers share them.
    """
    path, _, name = nodeid.partition("::")
    return nodeid if name.startswith(PAPER_COMMAND_TEST + "[") else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:  # xdist.remote.Producer, a Scheduling
    """--dist loadgroup, with xdist_scope for the tests that carry no xdist_group mark.

    Not by marking every test xdist_group(<file>) in pytest_collection_modifyitems: xdist 3.8
    passes a mark to the scheduler by appending "@<group>" to the item's `_nodeid`, which pytest
    9.2 no longer reads (node ids are structured: pytest-dev/pytest-xdist#1386), so such marks
    group nothing there. The scheduler sees node ids only, and xdist_scope needs nothing else.
    """
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class FilesAndPaperCommands(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            group = super()._split_scope(nodeid)  # an xdist_group mark, where xdist could add it
            return group if group != nodeid else xdist_scope(nodeid)

    return FilesAndPaperCommands(config, log)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The paper-command tests first, the costliest first (after pytest's own reordering).

    xdist hands out units of work in collection order (the Makefile's --no-loadscope-reorder keeps
    it; by default xdist sends the units with the most tests first, and these single tests would
    start last), so none of the long ones starts when the rest of the suite is done.
    """
    heavy = [item for item in items if getattr(item, "originalname", None) == PAPER_COMMAND_TEST]
    if heavy:
        heavy.sort(key=lambda item: -item.callspec.params["command"].cost)  # stable: file order on ties
        chosen = set(heavy)
        items[:] = heavy + [item for item in items if item not in chosen]
