"""Lightning callbacks that make JointVAE training reliable.

Reproducible epochs, a stop on a non-finite loss that names the modality and the minibatch, resumable checkpoints,
and a clean KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
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
from pengster.module._constants import MODULE_KEYS

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"
"""Lightning checkpoint (weights, optimizer, epoch, callbacks) written each epoch; pass it as ``ckpt_path``."""

LAST_MODEL = "last_model"
"""A JointVAE folder (:meth:`~pengster.model.JointVAE.save` format) of the same epoch, for ``JointVAE.load``."""


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
        """Seed torch for this step."""
        torch.manual_seed(step_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))

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


class FiniteLossCheck(Callback):
    """Stop training with :class:`FloatingPointError` at the first NaN or infinite loss or gradient, before the update.

    The loss is checked before its backward pass and the gradients before the optimizer step (one device read each),
    so the optimizer never applies a non-finite step. The module's buffers that the step's forward passes changed
    (batch-norm and running statistics) are put back as they were before it. The error names the minibatch (epoch,
    step), the batch categories of its cells, and where the non-finite values start: a modality's encoder or
    reconstruction, the KL term, the contrastive term, or the model's parameters.

    Parameters
    ----------
    batch_categories
        The batch category of each batch code (the ``batch_key`` values).
    """

    def __init__(self, batch_categories: Sequence[str]):
        self.batch_categories = [str(category) for category in batch_categories]
        # the minibatches since the last optimizer step (several with accumulate_grad_batches), and where it started
        self._minibatches: list[tuple[Mapping[str, torch.Tensor], int]] = []
        self._start = (0, 0)
        self._buffers: list[torch.Tensor] = []
        self._saved: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Remember the minibatch and, before an optimizer step's first one, the module's buffers."""
        accumulate = max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1))
        if batch_idx % accumulate and self._minibatches:
            self._minibatches.append((batch, batch_idx))
            return
        self._minibatches = [(batch, batch_idx)]
        self._start = (trainer.current_epoch, trainer.global_step)
        self._buffers = list(pl_module.module.buffers())
        self._saved = [buffer.detach().clone() for buffer in self._buffers]

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        """Raise for a non-finite loss, naming its minibatch and where the non-finite values start."""
        if bool(torch.isfinite(loss.detach()).all()):
            return
        self._restore()
        batch, index = self._minibatches[-1]
        parts = diagnose(pl_module.module, batch)
        raise FloatingPointError(
            f"JointVAE training stopped: the loss is {loss.detach().float().item()} at {self._where([index])}; "
            f"{self._cells_phrase(batch)}. Non-finite, from where it starts: "
            f"{'; '.join(parts) or 'the total only (terms were finite recomputed)'}. Check those cells' counts, "
            "or lower the learning rate (plan_kwargs={'lr': 1e-4}). The weights and running statistics are those "
            "before this minibatch; the model is not marked trained."
        )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Raise for non-finite gradients, naming the parameters, before the optimizer applies them."""
        named = [(name, p.grad) for name, p in pl_module.module.named_parameters() if p.grad is not None]
        if not named:
            return
        finite = torch.stack([torch.isfinite(grad).all() for _, grad in named]).tolist()
        if all(finite):
            return
        self._restore()
        bad = [name for (name, _), ok in zip(named, finite, strict=True) if not ok]
        batch = self._minibatches[-1][0] if self._minibatches else None
        raise FloatingPointError(
            f"JointVAE training stopped: non-finite gradients at {self._where([i for _, i in self._minibatches])} in "
            f"{_modules_phrase(bad)} ({len(bad)} tensors, e.g. {bad[:3]}); {self._cells_phrase(batch)}. Lower the "
            "learning rate (plan_kwargs={'lr': 1e-4}) or check the counts of that modality. The weights and running "
            "statistics are those before this minibatch."
        )

    def _restore(self) -> None:
        with torch.no_grad():
            for buffer, saved in zip(self._buffers, self._saved, strict=True):
                buffer.copy_(saved)

    def _where(self, indices: Sequence[int]) -> str:
        """'epoch e, step s (training minibatch i)'."""
        epoch, global_step = self._start
        where = f"epoch {epoch}, step {global_step}"
        if not indices:
            return where
        which = f"minibatch {indices[0]}" if len(indices) == 1 else f"minibatches {indices[0]}-{indices[-1]}"
        return f"{where} (training {which})"

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
    """'the protein decoder' etc. from parameter names such as ``heads.protein.mixing.weight``.

    A modality head is its decoder, but for the encoding parts it holds (ATAC's ``cell_factor_encoder``).
    """
    kinds = {"encoders": "encoder", "heads": "decoder", "projection_heads": "contrastive head"}
    phrases = []
    for name in names:
        head, _, rest = name.partition(".")
        modality, _, part = rest.partition(".")
        kind = "cell-factor encoder" if head == "heads" and part.startswith("cell_factor_encoder") else kinds.get(head)
        phrase = f"the {modality} {kind}" if kind else f"the parameter {head}"
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
    module.eval()
    try:
        with warnings.catch_warnings():
            # scvi-tools' likelihoods warn of counts outside their support: the counts being diagnosed
            warnings.simplefilter("ignore", UserWarning)
            inference, generative = module.forward(tensors, compute_loss=False)
            has = inference[MODULE_KEYS.HAS]
            for modality, (mean, variance) in inference[MODULE_KEYS.EXPERTS].items():
                rows = has[modality] > 0
                bad = ~(torch.isfinite(mean) & torch.isfinite(variance)).all(-1) & rows
                if bad.any():
                    parts.append(f"the {modality!r} encoder, for {int(bad.sum())} cells")
            panel = tensors[REGISTRY_KEYS.PANEL].long().to(module.device)
            for modality, output in generative[MODULE_KEYS.PX].items():
                if output is None:
                    continue
                _, cell, _ = generative[MODULE_KEYS.PAIRS][modality]
                target = tensors[REGISTRY_KEYS.counts(modality)].to(module.device)[cell].float()
                # in eval mode every pair is decoded together on every feature
                log_prob = output[0].px.log_prob(target) * module.feature_mask(modality, panel[cell])
                bad_cells = torch.unique(cell[~torch.isfinite(log_prob).all(-1)])
                if bad_cells.numel():
                    parts.append(f"the {modality!r} reconstruction, for {bad_cells.numel()} cells")
            qz = inference[MODULE_KEYS.QZ]
            if not (torch.isfinite(qz.loc).all() and torch.isfinite(qz.scale).all()):
                parts.append("the KL term (posterior)")
            if not torch.isfinite(contrastive_loss(module, inference[MODULE_KEYS.EXPERTS], has)):
                parts.append("the contrastive term")
    except Exception as error:  # noqa: BLE001 - the diagnosis must never hide the original problem
        parts.append(f"(the diagnosis itself failed: {type(error).__name__}: {error})")
    finally:
        module.train(was_training)
    return parts


class BestWeights(Callback):
    """Keep a copy of the weights of the epoch with the lowest validation loss, and put them back when training ends.

    Early stopping ends training ``patience`` epochs after the best epoch; those epochs are a test of the weights,
    not an improvement of them. The copy lives on the training device (no transfer to the host) and in the state of
    ``last.ckpt``, so a resumed run restores the same epoch.

    Parameters
    ----------
    monitor
        The logged metric that decides (lower is better).
    """

    def __init__(self, monitor: str = "validation_loss"):
        self.monitor = monitor
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        """Copy the weights when this epoch's validation loss is the lowest so far."""
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        value = float(value)
        if np.isfinite(value) and (self.best is None or value < self.best):
            self.best, self.best_epoch = value, trainer.current_epoch
            self.weights = {key: tensor.detach().clone() for key, tensor in pl_module.module.state_dict().items()}

    def on_train_end(self, trainer, pl_module) -> None:
        """Load the best epoch's weights into the module."""
        if self.weights is not None and self.best_epoch != trainer.current_epoch:
            pl_module.module.load_state_dict(self.weights)
            logger.info("JointVAE.train: kept the weights of epoch %d (lowest validation loss).", self.best_epoch + 1)
        self.weights = None

    def state_dict(self) -> dict:
        """Best value, epoch and weights, for ``last.ckpt``."""
        return {"best": self.best, "best_epoch": self.best_epoch, "weights": self.weights}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.best, self.best_epoch, self.weights = state_dict["best"], state_dict["best_epoch"], state_dict["weights"]


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


def training_callbacks(
    model, checkpoint_dir: str | os.PathLike | None, callbacks: Sequence | None, *, keep_best: str | None = None
) -> list:
    """The user's callbacks plus pengster's: epoch seeding, the finite-loss check, checkpoints and the best weights.

    Checkpoints are written with a ``checkpoint_dir``; with ``keep_best`` (a metric), the weights of its lowest epoch
    are kept (:class:`BestWeights`).
    """
    from scvi import settings

    batches = model.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH).categorical_mapping
    added = [
        StepSeed(settings.seed if settings.seed is not None else torch.initial_seed() % 2**63),
        FiniteLossCheck(list(batches)),
    ]
    if keep_best is not None:
        added.append(BestWeights(keep_best))
    if checkpoint_dir is not None:
        added.append(ResumableCheckpoint(checkpoint_dir))
    return [*(callbacks or []), *added]


@contextlib.contextmanager
def training_guard(checkpoint_dir: str | os.PathLike | None) -> Iterator[None]:
    """Turn Lightning's answer to Ctrl-C into a KeyboardInterrupt that says how to resume.

    Lightning answers Ctrl-C with ``sys.exit(1)`` and leaves SIGINT ignored (a dead Ctrl-C in a notebook): the
    handler the process had before training is put back. The model keeps the weights it had when interrupted.
    """
    on_main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if on_main_thread else None
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
        if on_main_thread and handler is not None:
            signal.signal(signal.SIGINT, handler)
