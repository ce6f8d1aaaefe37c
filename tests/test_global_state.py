"""``train()`` and the getters leave the process as they found it: torch's settings, signal handlers, allocator."""

from __future__ import annotations

import ctypes
import signal
import sys
import warnings

import numpy as np
import pytest
import torch

import pengster
from pengster.model import JointVAE

PROBE_BYTES = 48 << 20
"""Above glibc's largest dynamic mmap threshold (32 MiB on 64-bit): served by mmap unless someone raised it."""


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):  # not glibc, or a glibc older than 2.33
        return None
    return libc


def _large_allocations_are_mapped(libc) -> bool:
    """Whether glibc serves a 48 MiB allocation with mmap (mallinfo2's mapped bytes grow while it is held)."""
    before = libc.mallinfo2().hblkhd
    probe = np.ones(PROBE_BYTES, dtype=np.uint8)
    mapped = libc.mallinfo2().hblkhd - before >= PROBE_BYTES
    del probe
    return mapped


def _validates_distribution_arguments() -> bool:
    try:
        torch.distributions.Normal(torch.tensor(0.0), torch.tensor(-1.0))
    except ValueError:
        return True
    return False


def _process_state() -> dict:
    state = {
        "num_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_enabled": torch.backends.cudnn.enabled,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "default_dtype": torch.get_default_dtype(),
        "grad_enabled": torch.is_grad_enabled(),
        "autocast_cpu": torch.is_autocast_enabled("cpu"),
        "validate_distribution_arguments": _validates_distribution_arguments(),
        "sigint": signal.getsignal(signal.SIGINT),
        "sigterm": signal.getsignal(signal.SIGTERM),
        "warning_filters": list(warnings.filters),
    }
    libc = _glibc()
    if libc is not None:
        state["large_allocations_mapped"] = _large_allocations_are_mapped(libc)
    return state


@pytest.mark.parametrize(
    "train_kwargs", [{"fast": True}, {"fast": False}, {"precision": "bf16-mixed"}], ids=["fast", "scvi", "bf16"]
)
def test_train_and_getters_leave_the_process_as_they_found_it(train_kwargs):
    mdata = pengster.data.synthetic_mosaic(n_cells={"multiome": 50, "cite": 40}, n_genes=30, n_peaks=40, seed=0)
    JointVAE.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}, batch_key="batch"
    )
    model = JointVAE(mdata, n_hidden=16, n_latent=4)
    before = _process_state()
    model.train(max_epochs=2, batch_size=32, accelerator="cpu", enable_progress_bar=False, **train_kwargs)
    model.get_latent_representation()
    model.predict(target="protein", source=["rna"], n_samples=2, return_std=True)
    model.get_normalized_expression(modality="atac")
    assert _process_state() == before


def test_the_probes_see_a_changed_setting():
    """The state above would notice a change (each probe reads the setting it names)."""
    before = _process_state()
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if previous != "high" else "highest")
    # a process started in the background already ignores SIGINT: change it to the other one
    handler = signal.signal(signal.SIGINT, signal.SIG_DFL if before["sigint"] == signal.SIG_IGN else signal.SIG_IGN)
    validate = _validates_distribution_arguments()
    torch.distributions.Distribution.set_default_validate_args(not validate)
    try:
        changed = _process_state()
    finally:
        torch.set_float32_matmul_precision(previous)
        signal.signal(signal.SIGINT, handler)
        torch.distributions.Distribution.set_default_validate_args(validate)
    assert {key for key in before if changed[key] != before[key]} == {
        "float32_matmul_precision",
        "cuda_matmul_allow_tf32",  # the same setting, as torch reports it for CUDA
        "sigint",
        "validate_distribution_arguments",
    }
    assert _process_state() == before
