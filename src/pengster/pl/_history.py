"""Training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from matplotlib.axes import Axes


def training_history(
    model: object | Mapping[str, pd.DataFrame],
    *,
    keys: Sequence[str] = ("train_loss", "validation_loss"),
    from_epoch: int = 0,
    ax: Axes | None = None,
) -> Axes:
    """Plot per-epoch curves of a trained model's ``history``.

    Parameters
    ----------
    model
        A trained model (anything with a ``history`` attribute, e.g. :class:`~pengster.model.JointVAE`), or its
        ``history`` itself: a mapping of key to a one-column DataFrame indexed by epoch.
    keys
        The history keys to draw, e.g. ``("train_loss", "validation_loss")`` or
        ``("contrastive_train", "contrastive_validation")``. Keys missing from the history are skipped.
    from_epoch
        First epoch to draw; the first epochs' loss is often so large that it flattens the rest of the curve.
    ax
        Axes to draw on; a new figure when None.

    Returns
    -------
    The Axes, one line per key found, labelled with the key.

    Raises
    ------
    KeyError
        When the history has none of ``keys``.
    """
    import matplotlib.pyplot as plt

    history = model if isinstance(model, Mapping) else model.history
    found = [key for key in keys if key in history]
    if not found:
        raise KeyError(f"the model's history has none of {list(keys)}; its keys are {sorted(history)}.")
    ax = ax if ax is not None else plt.subplots(figsize=(4.5, 3.2))[1]
    for key in found:
        frame = history[key]
        frame = frame.loc[frame.index >= from_epoch]
        ax.plot(frame.index.to_numpy(), frame.iloc[:, 0].to_numpy(dtype=float), label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss" if all("loss" in key for key in found) else "value")
    ax.legend(frameon=False)
    return ax
