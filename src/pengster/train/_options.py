"""Training options of :meth:`pengster.model.JointVAE.train`: device loader, batch size and LR rule, precision."""

from __future__ import annotations

import math

BASE_BATCH_SIZE = 256
"""Minibatch size of small datasets, and the size the learning rate rule is relative to."""
MAX_AUTO_BATCH_SIZE = 2048
CELLS_PER_BASE_BATCH = 25_000
"""Up to this many cells, minibatches of :data:`BASE_BATCH_SIZE` (about 100 steps an epoch); each doubling above
doubles the minibatch, up to :data:`MAX_AUTO_BATCH_SIZE`."""
BASE_LR = 3e-3
"""Adam learning rate at :data:`BASE_BATCH_SIZE` and for any explicit ``batch_size``: chosen on a validation split
of the benchmark's training cells (``benchmarks/results/tune.md``; scvi-tools' 1e-3 underfits in 100 epochs)."""


def auto_batch_size(n_cells: int) -> int:
    """Minibatch size for ``n_cells`` training cells: 256 up to 25k cells, then doubling with the data, at most 2048.

    Large atlases need large minibatches to keep a GPU busy (the per-step overhead of the training loop is fixed);
    small data keeps 256 so that an epoch still takes about 100 steps.
    """
    doublings = max(0, round(math.log2(max(n_cells, 1) / CELLS_PER_BASE_BATCH)))
    return int(min(MAX_AUTO_BATCH_SIZE, BASE_BATCH_SIZE * 2**doublings))


def scaled_lr(batch_size: int) -> float:
    """Adam learning rate for ``batch_size``: square-root scaling from 3e-3 at 256 :cite:p:`malladi2022sde`.

    The square-root rule keeps the variance of an Adam update constant when the minibatch grows; below 256
    ``BASE_LR`` is kept.
    """
    return BASE_LR * math.sqrt(max(batch_size, BASE_BATCH_SIZE) / BASE_BATCH_SIZE)


KL_WARMUP_STEPS = 125
"""Optimizer steps over which the KL weight rises from 0 to 1 (at most a quarter of the training's steps)."""
PATIENCE_EPOCHS = 20
PATIENCE_STEPS = 250
"""Early stopping waits this many epochs or optimizer steps, whichever is longer, for a lower validation loss."""


def default_max_epochs(n_cells: int, n_train_cells: int | None = None, batch_size: int | None = None) -> int:
    """The cap on epochs when ``max_epochs`` is not given: scvi-tools' heuristic, 400 up to 20k cells, fewer above.

    The cap is generous on purpose: early stopping on the validation loss decides when training ends, and the weights
    of the epoch with the lowest validation loss are kept (:func:`training_length`). ``n_train_cells`` and
    ``batch_size`` are accepted for the signature of earlier releases and not used.
    """
    # scvi-tools' heuristic, written out: its function lives in a private module
    return max(1, min(round(20_000 / max(n_cells, 1) * 400), 400))


def training_length(max_epochs: int, n_train_cells: int, batch_size: int) -> tuple[int, int]:
    """KL warm-up steps and early-stopping patience (epochs) for a training of ``max_epochs`` epochs.

    The rule was chosen on validation splits of training cells only (``benchmarks/results/training_length.md``):
    what a stochastic-gradient fit reaches depends on its optimizer steps, and the steps a data set needs grow with
    it, so no step budget serves a 1,000-cell and a 30,000-cell set alike. Instead the KL weight rises over
    ``KL_WARMUP_STEPS`` steps (a quarter of the training when that is shorter), the validation loss is measured
    at the full KL weight (so that epochs before and after the warm-up compare), training stops after
    ``PATIENCE_EPOCHS`` epochs or ``PATIENCE_STEPS`` steps, whichever is longer, without a lower validation
    loss, and the weights of the lowest validation loss are restored.
    """
    steps_per_epoch = max(1, math.ceil(n_train_cells / max(batch_size, 1)))
    warmup = max(1, min(KL_WARMUP_STEPS, max_epochs * steps_per_epoch // 4))
    patience = max(PATIENCE_EPOCHS, math.ceil(PATIENCE_STEPS / steps_per_epoch))
    return warmup, patience


PRECISIONS = (None, 32, "32", "32-true", "bf16-mixed", "bf16")
"""Lightning ``precision`` values :meth:`~pengster.model.JointVAE.train` accepts: float32 or bf16 autocast."""


def check_precision(precision, plugins=None) -> None:
    """Raise for a Lightning precision that pengster does not train with (float16, float64, ``*-true``).

    ``precision`` is ``Trainer(precision=...)``; ``plugins`` may hold a Lightning precision plugin instead.
    """
    from lightning.pytorch.plugins import MixedPrecision, Precision

    values = [precision]
    for plugin in plugins if isinstance(plugins, list | tuple) else [plugins]:
        if isinstance(plugin, Precision):
            # the plain plugin is float32; any other is accepted only as bf16 autocast
            plain = type(plugin) is Precision
            name = f"{type(plugin).__name__}({getattr(plugin, 'precision', '')!r})"
            values.append(None if plain else plugin.precision if type(plugin) is MixedPrecision else name)
    for value in values:
        if type(value) in (type(None), int, str) and value in PRECISIONS:
            continue
        raise ValueError(
            f"JointVAE.train(precision={value!r}): pengster trains in float32 (the default) or with "
            "precision='bf16-mixed' (bf16 autocast: the layers run in bf16, the likelihoods and the loss in float32). "
            "float16 needs loss scaling and '*-true' precisions cast the weights and the counts, which pengster does "
            "not support; pass precision='bf16-mixed' or leave it unset (and no precision plugin in plugins=)."
        )


def training_options(
    *,
    n_cells: int,
    batch_size: int | None,
    fast: bool,
    data_on_device: bool | None,
    chunk_cells: int,
    binary_keys: tuple[str, ...],
    plan_kwargs: dict,
    trainer_kwargs: dict,
) -> tuple[int, dict, dict]:
    """Fill in batch size, learning rate, loader and precision; return ``(batch_size, plan_kwargs, trainer_kwargs)``.

    Nothing the caller set explicitly is overridden.
    """
    check_precision(trainer_kwargs.get("precision"), trainer_kwargs.get("plugins"))
    plan_kwargs = dict(plan_kwargs)
    if batch_size is None:
        batch_size = auto_batch_size(n_cells) if fast else BASE_BATCH_SIZE
        # the LR rule goes with the automatic minibatch; an explicit batch_size keeps the base learning rate
        if fast:
            plan_kwargs.setdefault("lr", scaled_lr(batch_size))
    plan_kwargs.setdefault("lr", BASE_LR)
    trainer_kwargs = dict(trainer_kwargs)
    if fast:
        splitter = dict(trainer_kwargs.pop("datasplitter_kwargs", None) or {})
        loader = {"resident": data_on_device, "chunk_cells": chunk_cells, "binary_keys": binary_keys}
        splitter.setdefault("device_loader", loader)
        trainer_kwargs["datasplitter_kwargs"] = splitter
    return batch_size, plan_kwargs, trainer_kwargs
