"""A profile of a few training steps for ``speed.py --trace DIR``: where a step's time goes, and its host reads.

Steps ``first`` to ``last`` (batch indices) of the second epoch run under :mod:`torch.profiler` (CPU, and CUDA
kernels on a GPU). Written to ``DIR``:

- ``<name>.trace.json``: the Chrome trace (chrome://tracing or https://ui.perfetto.dev): gaps in the GPU row are
  time the GPU waited for the host;
- ``<name>.txt``: the operators by self time, and on a GPU every synchronising call of those steps
  (``torch.cuda.set_sync_debug_mode("warn")``), with the line that made it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch


class StepTrace(pl.Callback):
    """Profile training steps ``first`` to ``last`` of epoch 1 into ``folder`` as ``name``."""

    def __init__(self, folder: str | Path, name: str, first: int = 5, last: int = 15):
        self.folder, self.name, self.first, self.last = Path(folder), name, first, last
        self._profile = None
        self._warnings = None
        self._caught: list[warnings.WarningMessage] = []

    def _active(self, trainer) -> bool:
        return trainer.current_epoch == 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        """Start the profile (and on a GPU, the sync warnings) at batch ``first`` of epoch 1."""
        if not (self._active(trainer) and batch_idx == self.first):
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize()
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        self._profile = torch.profiler.profile(activities=activities, with_stack=True)
        self._profile.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        """Stop at batch ``last`` and write the trace and the summary."""
        if self._profile is None or batch_idx != self.last:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("default")
            self._warnings.__exit__(None, None, None)
        self._profile.__exit__(None, None, None)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._profile.export_chrome_trace(str(self.folder / f"{self.name}.trace.json"))
        key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        table = self._profile.key_averages().table(sort_by=key, row_limit=40)
        n_steps = self.last - self.first + 1
        syncs = [f"{w.filename}:{w.lineno}: {w.message}" for w in self._caught if "synchroniz" in str(w.message)]
        lines = [f"{n_steps} training steps (batches {self.first}-{self.last} of epoch 1)", table]
        lines += [f"{len(syncs)} synchronising calls ({len(syncs) / n_steps:.1f} a step):", *syncs]
        (self.folder / f"{self.name}.txt").write_text("\n".join(lines) + "\n")
        self._profile = None
