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


DEFAULT_STEPS = 500
"""Optimizer steps the default ``max_epochs`` aims at (see :func:`default_max_epochs`)."""
MIN_DEFAULT_EPOCHS = 20


def default_max_epochs(n_cells: int, n_train_cells: int, batch_size: int) -> int:
    """Epochs for about 500 optimizer steps (``DEFAULT_STEPS``): at least 20, at most scvi-tools' heuristic.

    What a stochastic-gradient fit reaches depends on its number of steps more than on its passes over the data. On
    a validation split of SNARE-seq2's training nuclei (``benchmarks/results/training_length.md``) the cross-modal
    predictions peak after 300-450 steps, where the validation loss is lowest, and decline after (by a tenth at
    1,000 steps); the benchmark's BMMC trainings, on which the learning rate was chosen, run 200-400 steps. Larger
    data get at least 20 epochs, and early stopping on the validation loss can end training sooner. scvi-tools'
    heuristic (400 epochs up to 20k cells, ``400 * 20k / n_cells`` above) is the upper bound, so tiny data train at
    most 400 epochs and atlases no longer than scvi-tools would train them.
    """
    steps_per_epoch = max(1, math.ceil(n_train_cells / max(batch_size, 1)))
    by_steps = max(MIN_DEFAULT_EPOCHS, math.ceil(DEFAULT_STEPS / steps_per_epoch))
    # scvi-tools' heuristic, written out: its function lives in a private module
    heuristic = max(1, min(round(20_000 / max(n_cells, 1) * 400), 400))
    return min(by_steps, heuristic)


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
