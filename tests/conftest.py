from __future__ import annotations

import os
from pathlib import Path

import mudata as md
import pytest
import scvi
import torch

# one thread: on 2-core CI machines torch's default threading can be many times slower
torch.set_num_threads(1)
md.set_options(pull_on_update=False)
scvi.settings.dl_num_workers = 0


@pytest.fixture(autouse=True)
def _seed():
    scvi.settings.seed = 0


def pytest_runtest_setup(item):
    """One torch thread again before each test's fixtures (of any scope) are set up.

    scanpy's numba-backed neighbour search resets torch's thread count, and the bit-exactness tests compare runs in
    this process with runs in subprocesses that use one thread.
    """
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data (../shared/data); tests that need it skip when PENGSTER_DATA_DIR is unset."""
    value = os.environ.get("PENGSTER_DATA_DIR")
    if not value or not Path(value).is_dir():
        pytest.skip("PENGSTER_DATA_DIR is not set to the real data folder")
    return Path(value)


@pytest.fixture
def bench(monkeypatch):
    """The benchmark modules (``benchmarks/`` is not part of the package): ``bench.accuracy``, ``.tune``, ``.tasks``."""
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from benchmarks import _tasks, accuracy, tune

    return SimpleNamespace(accuracy=accuracy, tune=tune, tasks=_tasks)
