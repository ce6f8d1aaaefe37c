"""Large CPU arrays stay in the heap while JointVAE trains on the CPU (pengster.model._heap), and only then.

Each check runs in a fresh process: glibc's thresholds are set once per process (by the environment at start, or by
``mallopt``), and what a test process's heap already holds decides where an array comes from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pengster.model import _heap

MB = 1 << 20

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

_LOAD = """
import importlib.util, json, sys
sys.path.insert(0, {tests!r})
import _malloc
from _malloc import MB, heap_holds_a_64mb_array, large_arrays_are_mapped
if not _malloc.has_mallinfo2():
    print(json.dumps("no mallinfo2")); sys.exit()  # glibc < 2.33, or not glibc
spec = importlib.util.spec_from_file_location("_heap", {heap!r})  # alone, without the package's imports
_heap = importlib.util.module_from_spec(spec); spec.loader.exec_module(_heap)
large_mapped = lambda: large_arrays_are_mapped(_heap.TRAINING_THRESHOLD)
"""


def _observe(script: str, **env: str):
    """Run ``script`` (after _LOAD) in a fresh one-thread process; what it printed as JSON."""
    load = _LOAD.format(tests=str(Path(__file__).parent), heap=_heap.__file__)
    inherited = {k: v for k, v in os.environ.items() if k not in _heap.USER_SETTINGS and k != "GLIBC_TUNABLES"}
    env = {**inherited, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(load) + textwrap.dedent(script)],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    observed = json.loads(done.stdout.decode().splitlines()[-1])
    if observed == "no mallinfo2":
        pytest.skip("no mallinfo2 (glibc < 2.33, or not glibc)")
    return observed


@pytest.fixture(scope="module")
def glibc_takes_the_threshold() -> None:
    """Skip where glibc refuses a mmap threshold above 32 MiB (older releases): heap_arrays then changes nothing."""
    if not _observe("print(json.dumps(_heap._glibc().mallopt(_heap.M_MMAP_THRESHOLD, _heap.TRAINING_THRESHOLD)))"):
        pytest.skip("this glibc refuses a mmap threshold above 32 MiB")


@pytest.mark.usefixtures("glibc_takes_the_threshold")
def test_heap_arrays_keeps_64mb_arrays_off_mmap_and_restores_the_thresholds():
    observed = _observe("""
        import torch
        seen = {}
        with _heap.heap_arrays(True):
            seen["inside: heap holds 64 MB"] = heap_holds_a_64mb_array()
            seen["inside: large mapped"] = large_mapped()
            held = torch.ones(32 * MB)  # 128 MB from the heap ...
            pinned = torch.ones(MB)  # ... below memory still in use: a free chunk trimming cannot hand back
            del held
        seen["after: large mapped"] = large_mapped()  # glibc's dynamic ceiling (32 MiB) again
        with _heap.heap_arrays(False):
            seen["disabled: large mapped"] = large_mapped()
        print(json.dumps(seen))
    """)
    assert observed == {
        "inside: heap holds 64 MB": True,
        "inside: large mapped": False,
        "after: large mapped": True,
        "disabled: large mapped": True,
    }


@pytest.mark.usefixtures("glibc_takes_the_threshold")
def test_heap_arrays_ignores_other_malloc_tunables():
    observed = _observe(
        """
        with _heap.heap_arrays(True):
            print(json.dumps([heap_holds_a_64mb_array(), large_mapped()]))
        """,
        GLIBC_TUNABLES="glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0",
    )
    assert observed == [True, False]


class _OldGlibc:
    """mallopt as glibc did before it took thresholds above HEAP_MAX_SIZE / 2 (32 MiB); every call recorded."""

    def __init__(self):
        self.calls = []

    def mallopt(self, option: int, value: int) -> int:
        self.calls.append(("mallopt", option, value))
        return int(value <= 32 * MB)

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


def test_heap_arrays_changes_nothing_where_glibc_refuses_the_threshold(monkeypatch):
    libc = _OldGlibc()
    monkeypatch.setattr(_heap, "_glibc", lambda: libc)
    monkeypatch.setattr(_heap, "_user_tuned", lambda: False)
    with _heap.heap_arrays(True):
        pass
    assert libc.calls == [("mallopt", _heap.M_MMAP_THRESHOLD, _heap.TRAINING_THRESHOLD)]  # refused, nothing else


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("MALLOC_MMAP_THRESHOLD_", "33554432"),
        ("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=33554432"),
    ],
)
def test_heap_arrays_leaves_a_users_malloc_settings_alone(setting, value):
    assert setting == "GLIBC_TUNABLES" or setting in _heap.USER_SETTINGS
    observed = _observe(
        """
        with _heap.heap_arrays(True):
            print(json.dumps(large_mapped()))
        """,
        **{setting: value},
    )
    assert observed is True


@pytest.mark.usefixtures("glibc_takes_the_threshold")
def test_cpu_training_uses_the_heap_only_on_the_fast_path():
    observed = _observe("""
        import lightning.pytorch as pl
        import torch
        from pengster.data import synthetic_mosaic
        from pengster.model import JointVAE

        class Probe(pl.Callback):
            def __init__(self):
                self.mapped = []

            def on_train_batch_end(self, *args):
                self.mapped.append(large_mapped())

        torch.set_num_threads(1)
        mdata = synthetic_mosaic(n_cells={"multiome": 60, "cite": 60}, n_genes=30, n_peaks=40, n_proteins=8, seed=0)
        modalities = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}
        JointVAE.setup_mudata(mdata, modalities=modalities, batch_key="batch")
        seen = {}
        for fast in (False, True):
            probe = Probe()
            model = JointVAE(mdata, n_latent=4, n_hidden=16)
            model.train(max_epochs=1, batch_size=32, fast=fast, accelerator="cpu", callbacks=[probe],
                        enable_progress_bar=False)
            seen[f"fast={fast}: during"] = probe.mapped
            seen[f"fast={fast}: after"] = large_mapped()
        print(json.dumps(seen))
    """)
    steps = len(observed["fast=True: during"])
    assert steps >= 2
    assert observed == {
        "fast=False: during": [True] * steps,
        "fast=False: after": True,
        "fast=True: during": [False] * steps,
        "fast=True: after": True,
    }
