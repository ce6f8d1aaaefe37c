"""Lightning callbacks that make JointVAE training reliable.

Reproducible epochs, a stop on a non-finite loss that names the modality and the minibatch, resumable checkpoints,
and a clean KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from scvi.train import SaveCheckpoint

from pengster._constants import REGISTRY_KEYS
from pengster.module._alignment import contrastive_loss
from pengster.nn._sparse import is_column_major

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"
"""Lightning checkpoint (weights, optimizer, epoch, callbacks) written each epoch; pass it as ``ckpt_path``."""

LAST_MODEL = "last_model"
"""A JointVAE folder (:meth:`~pengster.model.JointVAE.save` format) of the same epoch, for ``JointVAE.load``."""


def largest_magnitudes(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each tensor's largest magnitude (NaN or inf iff some entry is; an L2 norm would overflow from 1e19).

    One pass per tensor, in storage order: on CPU ``torch.linalg.vector_norm(g, inf)`` took 15 ms on a 20000 x 256
    gradient (and 10 ms for ``aminmax`` over its transpose), ``aminmax`` over the contiguous storage 1.4 ms.
    """
    extremes = [torch.aminmax(_storage_order(t)) if t.numel() else (t.new_zeros(()),) * 2 for t in tensors]
    lows, highs = zip(*extremes, strict=True)
    return torch.maximum(torch.stack(lows).abs(), torch.stack(highs).abs())


def _storage_order(tensor: torch.Tensor) -> torch.Tensor:
    if is_column_major(tensor):
        return tensor.t()  # the column-major encoder weights' gradients
    return tensor


def step_seed(base_seed: int, epoch: int, batch_index: int, rank: int = 0) -> int:
    """The torch seed of one training step: a function of the run's seed, the epoch, the minibatch and the rank."""
    state = np.random.SeedSequence([base_seed, epoch, batch_index, rank]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class StepSeed(Callback):
    """Reseed torch before every training minibatch from ``(seed, epoch, minibatch)``.

    Dropout and the reparameterisation noise of a step then do not depend on what ran before it (Lightning draws
    from the global generator when it builds data iterators, at places that differ between a fresh and a resumed
    run), so training resumed from a checkpoint repeats, bit for bit on CPU, what the uninterrupted run did.

    Parameters
    ----------
    seed
        The run's seed (``scvi.settings.seed``); stored in checkpoints, so a resumed run keeps it.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        """Give the device loader its epoch (Lightning does this only for a DataLoader's sampler)."""
        loader = trainer.train_dataloader
        if callable(getattr(loader, "set_epoch", None)):
            loader.set_epoch(trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Seed torch (the CPU and every initialised GPU; all devices elsewhere) for this step."""
        seed = step_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank)
        if getattr(getattr(pl_module, "device", None), "type", None) not in ("cpu", "cuda"):
            torch.manual_seed(seed)
            return
        # the generators torch.manual_seed seeds for a CPU or CUDA run, without its per-call cost (0.2 ms of host time
        # a step: on a process without CUDA it formats a stack trace for CUDA's lazy initialisation every call)
        torch.default_generator.manual_seed(seed)
        if torch.cuda.is_initialized():
            torch.cuda.manual_seed_all(seed)

    def state_dict(self) -> dict:
        """The seed, saved with a checkpoint."""
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict) -> None:
        """Keep the checkpointed run's seed."""
        if int(state_dict["seed"]) != self.seed:
            warnings.warn(
                f"resuming a run trained with seed {state_dict['seed']}, but scvi.settings.seed is {self.seed}; the "
                f"epochs keep seed {state_dict['seed']}, but the train/validation split follows the current seed. "
                f"Set scvi.settings.seed = {state_dict['seed']} to repeat the run exactly.",
                UserWarning,
                stacklevel=2,
            )
        self.seed = int(state_dict["seed"])


class _HostFlag:
    """A device boolean on its way to the host: the copy is queued now and read later.

    On a GPU the value is copied into pinned memory behind the work queued so far on its device's stream, and reading
    it waits for that copy only, not for the work queued after it (``bool(tensor)`` would wait for the whole queue).
    Elsewhere the tensor itself is read.
    """

    def __init__(self, flag: torch.Tensor):
        self._event = None
        self._value = flag
        if flag.device.type == "cuda":
            with torch.cuda.device(flag.device):
                self._value = torch.empty(flag.shape, dtype=flag.dtype, pin_memory=True)
                self._value.copy_(flag, non_blocking=True)
                self._event = torch.cuda.Event()
                self._event.record(torch.cuda.current_stream(flag.device))

    def __bool__(self) -> bool:
        if self._event is not None:
            self._event.synchronize()
        return bool(self._value)


@dataclasses.dataclass
class _Step:
    """An optimizer step left to check: whether it is finite (on its way to the host), and what names its faults."""

    bad: _HostFlag
    checked: torch.Tensor  # the gradients' largest magnitudes, then the loss of each minibatch
    names: list[str]  # the gradients' parameter names
    minibatches: list[tuple[Mapping[str, torch.Tensor], int]]  # (minibatch, index) of each loss, in order
    epoch: int
    global_step: int

    def where(self, position: int | None = None) -> str:
        """'epoch e, step s (training minibatch i)', of one minibatch or of them all."""
        indices = [index for _, index in self.minibatches]
        if position is not None:
            indices = indices[position : position + 1]
        where = f"epoch {self.epoch}, step {self.global_step}"
        if not indices:
            return where
        which = f"minibatch {indices[0]}" if len(indices) == 1 else f"minibatches {indices[0]}-{indices[-1]}"
        return f"{where} (training {which})"


class FiniteLossCheck(Callback):
    """Stop training with :class:`FloatingPointError` when a loss or gradient is NaN or infinite.

    The loss and the gradients are checked together before the optimizer step, so the weights are never updated
    with a non-finite loss. With a fused optimizer (``train(fast=True)``), nothing waits for the check: the
    optimizer's kernel skips the update of a non-finite step on the device (its ``found_inf`` flag, as with a
    gradient scaler), the buffers the step's forward pass changed (batch-norm statistics) are put back on the device,
    and the flag is read on the host at the next step, the next validation or the end of the epoch, so a GPU's queue
    never drains for it (the minibatch is kept until then, to diagnose it). Otherwise the flag is read at once (one
    device-to-host copy a step). The error names the minibatch (epoch, step), the batch categories of its cells, and
    which part is non-finite: a modality's encoder or reconstruction, the KL term, the contrastive term, or the
    model's parameters.

    Parameters
    ----------
    batch_categories
        The batch category of each batch code (the ``batch_key`` values).
    """

    def __init__(self, batch_categories: Sequence[str]):
        self.batch_categories = [str(category) for category in batch_categories]
        self._module = None
        self._pending: _Step | None = None
        # the minibatches and losses since the last optimizer step (several with accumulate_grad_batches)
        self._minibatches: list[tuple[Mapping[str, torch.Tensor], int]] = []
        self._losses: list[torch.Tensor] = []
        self._start = (0, 0)  # epoch and global step of the first of them
        # the module's buffers (batch-norm statistics, running factors) before an optimizer step's minibatches; one
        # copy serves a step checked later too: a bad step's changes are put back on the device before the next starts
        self._buffers: list[torch.Tensor] = []
        self._saved: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Remember the minibatch and, before an optimizer step's first one, the module's buffers."""
        self._module = pl_module.module
        accumulate = max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1))
        if batch_idx % accumulate and self._minibatches:
            self._minibatches.append((batch, batch_idx))
            return
        self._minibatches, self._losses = [(batch, batch_idx)], []
        self._start = (trainer.current_epoch, trainer.global_step)
        buffers = list(pl_module.module.buffers())
        saved = self._saved
        if [(b.shape, b.dtype, b.device) for b in buffers] == [(b.shape, b.dtype, b.device) for b in saved] and buffers:
            torch._foreach_copy_(saved, buffers)  # one copy, no GPU sync
        else:
            saved = [b.detach().clone() for b in buffers]
        self._buffers, self._saved = buffers, saved

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        """Keep the loss, to check it with the gradients before the optimizer step."""
        self._losses.append(loss.detach().float().reshape(()))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Keep a non-finite loss or gradient from the weights; raise for it now, or at the next step."""
        named = [(name, p.grad) for name, p in pl_module.module.named_parameters() if p.grad is not None]
        checked = [largest_magnitudes([g for _, g in named])] if named else []
        checked += [loss.reshape(1) for loss in self._losses]
        if not checked:
            return
        checked = torch.cat(checked)
        bad = ~torch.isfinite(checked).all()
        epoch, global_step = self._start
        minibatches = self._minibatches[-len(self._losses) :] if self._losses else self._minibatches
        step = _Step(_HostFlag(bad), checked, [n for n, _ in named], minibatches, epoch, global_step)
        self._losses = []
        fused = isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and optimizer.defaults.get("fused")
        if not fused:
            self._settle(step)
            return
        optimizer.found_inf = bad.float()  # the fused kernel leaves weights, moments and step count as they are
        # the buffers go back on the device, so nothing (a checkpoint) sees the step's statistics; written through
        # .data, which keeps their version counters (batch norm's kernel does not count its own updates either, and
        # the checks cached on a buffer's version, such as nn._fused._all_ones on the mask tables, stay valid)
        with torch.no_grad():
            for buffer, saved in zip(self._buffers, self._saved, strict=True):
                torch.where(bad, saved, buffer.data, out=buffer.data)
        previous, self._pending = self._pending, step
        if previous is not None:
            self._settle(previous)

    def on_validation_start(self, trainer, pl_module) -> None:
        """Check the last training step before the validation loss is computed."""
        self._settle_pending()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Check the last training step of the epoch (before checkpoints and learning-rate schedules)."""
        self._settle_pending()

    def on_train_end(self, trainer, pl_module) -> None:
        """Check the last training step."""
        self._settle_pending()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Training stopped for another reason: still say whether the step before it was skipped as non-finite."""
        step, self._pending = self._pending, None
        if step is not None and step.bad:
            self._restore()
            warnings.warn(
                f"JointVAE training: the optimizer step at {step.where()} had a non-finite loss or gradients and was "
                f"skipped before training stopped ({type(exception).__name__}).",
                RuntimeWarning,
                stacklevel=2,
            )

    def _settle_pending(self) -> None:
        step, self._pending = self._pending, None
        if step is not None:
            self._settle(step)

    def _restore(self) -> None:
        if self._buffers and self._saved:
            with torch.no_grad():
                torch._foreach_copy_(self._buffers, self._saved)

    def _settle(self, step: _Step) -> None:
        """Raise if the step was not finite, after putting back the buffers its forward passes had changed."""
        if not step.bad:
            return
        self._pending = None
        self._restore()
        values = step.checked.cpu()
        losses = values[len(step.names) :]
        bad_losses = [position for position, loss in enumerate(losses.tolist()) if not np.isfinite(loss)]
        if bad_losses:
            first = bad_losses[0]
            batch = step.minibatches[first][0]
            parts = diagnose(self._module, batch)
            raise FloatingPointError(
                f"JointVAE training stopped: the loss is {losses[first].item()} at {step.where(first)}; "
                f"{self._cells_phrase(batch)}. Non-finite, from where it starts: "
                f"{'; '.join(parts) or 'the total only (terms were finite recomputed)'}. Check those cells' counts, "
                "or lower the learning rate (plan_kwargs={'lr': 1e-4}). The weights and running statistics are those "
                "before this minibatch; the model is not marked trained."
            )
        bad = [name for name, value in zip(step.names, values.tolist(), strict=False) if not np.isfinite(value)]
        batch = step.minibatches[-1][0] if step.minibatches else None
        raise FloatingPointError(
            f"JointVAE training stopped: non-finite gradients at {step.where()} in {_modules_phrase(bad)} "
            f"({len(bad)} tensors, e.g. {bad[:3]}); {self._cells_phrase(batch)}. Lower the learning rate "
            "(plan_kwargs={'lr': 1e-4}) or check the counts of that modality. The weights and running statistics are "
            "those before this minibatch."
        )

    def _cells_phrase(self, batch: Mapping[str, torch.Tensor] | None) -> str:
        if batch is None:
            return "no minibatch recorded"
        codes = batch[REGISTRY_KEYS.BATCH].view(-1).long().cpu().numpy()
        values, counts = np.unique(codes, return_counts=True)
        names = [self.batch_categories[v] if v < len(self.batch_categories) else str(v) for v in values]
        return "its cells come from batch " + ", ".join(
            f"{n!r} ({c} cells)" for n, c in zip(names, counts, strict=True)
        )


def _modules_phrase(names: Sequence[str]) -> str:
    """'the protein decoder' etc. from parameter names such as ``decoders.protein.px.weight``."""
    kinds = {"encoders": "encoder", "decoders": "decoder", "projection_heads": "contrastive head"}
    phrases = []
    for name in names:
        head, _, rest = name.partition(".")
        modality = rest.partition(".")[0]
        phrase = f"the {modality} {kinds[head]}" if head in kinds else f"the parameter {head}"
        if phrase not in phrases:
            phrases.append(phrase)
    return ", ".join(phrases)


@torch.no_grad()
def diagnose(module, tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Recompute one minibatch's loss terms and name those that are not finite (cell counts per modality)."""
    parts = []
    bad_parameters = [name for name, p in module.named_parameters() if not torch.isfinite(p).all()]
    if bad_parameters:
        parts.append(f"parameters of {_modules_phrase(bad_parameters)} (e.g. {bad_parameters[:2]})")
    was_training = module.training
    validate = torch.distributions.Distribution._validate_args
    # let NaN flow through the distributions, to see where it starts instead of where it is first rejected
    torch.distributions.Distribution.set_default_validate_args(False)
    module.eval()
    try:
        inference, generative = module.forward(tensors, compute_loss=False)
        has = inference["has"]
        for modality, (mean, variance) in inference["experts"].items():
            rows = has[modality] > 0
            bad = ~(torch.isfinite(mean) & torch.isfinite(variance)).all(-1) & rows
            if bad.any():
                parts.append(f"the {modality!r} encoder, for {int(bad.sum())} cells")
        panel = tensors[REGISTRY_KEYS.PANEL].long().to(module.device)
        for modality, output in generative["px"].items():
            if output is None:
                continue
            _, cell, _ = generative["pairs"][modality]
            target = tensors[REGISTRY_KEYS.counts(modality)].to(module.device)[cell].float()
            if modality == "atac" and module.decoders["atac"].likelihood == "bernoulli":
                target = (target > 0).float()
            log_prob = output[0].log_prob(target) * module.feature_mask(modality, panel[cell])
            bad_cells = torch.unique(cell[~torch.isfinite(log_prob).all(-1)])
            if bad_cells.numel():
                parts.append(f"the {modality!r} reconstruction, for {bad_cells.numel()} cells")
        qz = inference["qz"]
        if not (torch.isfinite(qz.loc).all() and torch.isfinite(qz.scale).all()):
            parts.append("the KL term (posterior)")
        if not torch.isfinite(contrastive_loss(module, inference["experts"], has)):
            parts.append("the contrastive term")
    except Exception as error:  # noqa: BLE001 - the diagnosis must never hide the original problem
        parts.append(f"(the diagnosis itself failed: {type(error).__name__}: {error})")
    finally:
        module.train(was_training)
        torch.distributions.Distribution.set_default_validate_args(validate)
    return parts


class ResumableCheckpoint(SaveCheckpoint):
    """Each epoch, atomically write ``last.ckpt`` (resume with ``ckpt_path``) and ``last_model/`` (``JointVAE.load``).

    ``last.ckpt`` is Lightning's full state: weights, optimizer, learning-rate schedule, epoch, early stopping and
    the run's seed. A process killed at any moment leaves the previous epoch's files complete.

    Parameters
    ----------
    dirpath
        Folder of the checkpoint files.
    """

    def __init__(self, dirpath: str | os.PathLike):
        super().__init__(dirpath=str(dirpath), filename="last", monitor=None, save_top_k=0)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        """Also write the epoch's model in the JointVAE save format."""
        model = trainer._model
        was_trained, was_training = model.is_trained_, model.module.training
        model.module.eval()
        model.is_trained_ = True
        try:
            model.save(str(Path(self.dirpath) / LAST_MODEL), overwrite=True)
        finally:
            model.is_trained_ = was_trained
            model.module.train(was_training)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Write the checkpoint of this epoch (after validation and early stopping have updated their state)."""
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        folder = Path(self.dirpath)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / LAST_CHECKPOINT
        staging = folder / f".{LAST_CHECKPOINT}.{os.getpid()}.tmp"
        trainer.save_checkpoint(str(staging))
        os.replace(staging, final)
        self.last_model_path = str(final)

    def on_validation_end(self, trainer, pl_module) -> None:
        """Checkpoints are written at the end of the training epoch only."""

    def on_train_batch_end(self, *args, **kwargs) -> None:
        """No per-step checkpoints."""


def training_callbacks(model, checkpoint_dir: str | os.PathLike | None, callbacks: Sequence | None) -> list:
    """The user's callbacks plus pengster's: epoch seeding, the finite-loss check and, with a folder, checkpoints."""
    from scvi import settings

    batches = model.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH).categorical_mapping
    added = [
        StepSeed(settings.seed if settings.seed is not None else torch.initial_seed() % 2**63),
        FiniteLossCheck(list(batches)),
    ]
    if checkpoint_dir is not None:
        added.append(ResumableCheckpoint(checkpoint_dir))
    return [*(callbacks or []), *added]


@contextlib.contextmanager
def training_guard(checkpoint_dir: str | os.PathLike | None) -> Iterator[None]:
    """Turn what escapes from Lightning into errors that say what happened.

    - Lightning answers Ctrl-C with ``sys.exit(1)`` and leaves SIGINT ignored (a dead Ctrl-C in a notebook): raise
      KeyboardInterrupt instead, and restore the handler. The model keeps the weights it had when interrupted.
    - torch.distributions' argument checks are off while training: each is a device-to-host copy (a GPU sync, 14 per
      step), and NaN parameters reach the loss, where :class:`FiniteLossCheck` stops training before the update and
      names where the NaN starts.
    """
    on_main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if on_main_thread else None
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    except SystemExit as error:
        if not isinstance(error.__context__, KeyboardInterrupt):
            raise
        where = (
            f"resume from {str(Path(checkpoint_dir) / LAST_CHECKPOINT)!r} with model.train(..., "
            f"checkpoint_dir={str(checkpoint_dir)!r}, ckpt_path=<that file>)"
            if checkpoint_dir is not None
            else "pass checkpoint_dir=... to model.train to be able to resume"
        )
        raise KeyboardInterrupt(f"JointVAE training interrupted; the model is not marked trained; {where}.") from None
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
        if on_main_thread and handler is not None:
            signal.signal(signal.SIGINT, handler)
