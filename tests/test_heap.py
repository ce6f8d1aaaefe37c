"""Large CPU arrays stay in the heap while JointVAE trains on the CPU (pengster.model._heap), and only then."""

from __future__ import annotations

import ctypes
import sys

import lightning.pytorch as pl
import pytest
import torch

from pengster.data import synthetic_mosaic
from pengster.model import JointVAE
from pengster.model._heap import USER_SETTINGS, heap_arrays

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

MB = 1 << 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _mapped_bytes() -> int:
    """Bytes glibc holds in separate mmaps (mallinfo2's hblkhd)."""
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc < 2.33 has no mallinfo2")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2().hblkhd


def _mapped_by_a_64mb_array() -> int:
    before = _mapped_bytes()
    array = torch.ones(16 * MB)  # 64 MB
    grown = _mapped_bytes() - before
    del array
    return grown


def test_heap_arrays_keeps_64mb_arrays_off_mmap_and_restores_the_thresholds():
    with heap_arrays(True):
        assert _mapped_by_a_64mb_array() == 0
    # afterwards the ceiling of glibc's dynamic threshold (32 MiB) applies again
    assert _mapped_by_a_64mb_array() >= 64 * MB
    with heap_arrays(False):
        assert _mapped_by_a_64mb_array() >= 64 * MB


@pytest.mark.parametrize("setting", [USER_SETTINGS[0], "GLIBC_TUNABLES"])
def test_heap_arrays_leaves_a_users_malloc_settings_alone(monkeypatch, setting):
    value = "glibc.malloc.mmap_threshold=33554432" if setting == "GLIBC_TUNABLES" else "33554432"
    monkeypatch.setenv(setting, value)
    with heap_arrays(True):
        assert _mapped_by_a_64mb_array() >= 64 * MB


class _Probe(pl.Callback):
    def __init__(self):
        self.mapped = []

    def on_train_batch_end(self, *args) -> None:
        self.mapped.append(_mapped_by_a_64mb_array())


@pytest.mark.parametrize("fast", [True, False])
def test_cpu_training_uses_the_heap_only_on_the_fast_path(fast):
    mdata = synthetic_mosaic(n_cells={"multiome": 60, "cite": 60}, n_genes=30, n_peaks=40, n_proteins=8, seed=0)
    JointVAE.setup_mudata(mdata, modalities={"rna": "rna", "atac": "atac", "protein": "prot"}, batch_key="batch")
    model = JointVAE(mdata, n_latent=4, n_hidden=16)
    probe = _Probe()
    model.train(max_epochs=1, batch_size=32, fast=fast, accelerator="cpu", callbacks=[probe], enable_progress_bar=False)
    assert probe.mapped
    assert all((grown == 0) == fast for grown in probe.mapped)
    assert _mapped_by_a_64mb_array() >= 64 * MB
