"""The training plan of :class:`~pengster.model.JointVAE`: scvi-tools' plan, with epoch metrics and fused Adam.

The metrics are summed on the device and logged once an epoch, in a way DDP can reduce.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities.data import extract_batch_size
from scvi.train import TrainingPlan

from pengster.nn._sparse import is_column_major


class JointTrainingPlan(TrainingPlan):
    """:class:`scvi.train.TrainingPlan` whose metrics are logged under ``no_grad`` instead of ``inference_mode``.

    scvi-tools 1.4 logs its metrics inside ``torch.inference_mode``, so Lightning's epoch accumulators become inference
    tensors; under DDP, the end-of-epoch reduction updates them in place outside inference mode and fails ("Inplace
    update to inference tensor outside InferenceMode"). ``no_grad`` keeps the same cost without that restriction.

    ``fused_optimizer=True`` (set by ``train(fast=True)``) builds Adam with ``fused=True``: the same update, one kernel
    per parameter instead of a dozen elementwise passes (about 5% of a CPU training step at 20k peaks).

    With scvi-tools' default ``on_step=False, on_epoch=True`` the metrics are summed on the device each step
    (:class:`EpochSums`) and logged at the end of the epoch, with the same values (see :meth:`training_step`).
    """

    def __init__(self, module, *, fused_optimizer: bool = False, **kwargs):
        super().__init__(module, **kwargs)
        self.fused_optimizer = fused_optimizer
        self._sums: dict[str, EpochSums] = {}

    @property
    def _epoch_logging(self) -> bool:
        """Whether the metrics are logged once an epoch (scvi-tools' default: ``on_step=False, on_epoch=True``)."""
        return bool(self.on_epoch) and not self.on_step

    def training_step(self, batch, batch_idx):
        """scvi-tools' training step; with epoch-level metrics, they are summed on the device and logged at its end.

        Lightning's ``self.log`` costs about half a millisecond of host time per call, and scvi-tools logs ten values
        a step: 5 ms of an 18 ms step with negligible compute (batch 32, one CPU thread), time a GPU waits for. The
        epoch values are the same: means weighted by the cells of each minibatch, over all ranks under DDP.
        """
        if not self._epoch_logging:
            return super().training_step(batch, batch_idx)
        if "kl_weight" in self.loss_kwargs:
            self.loss_kwargs.update({"kl_weight": self.kl_weight})
        _, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self._add("train", batch, loss_output)
        return loss_output.loss

    def validation_step(self, batch, batch_idx):
        """scvi-tools' validation step, its metrics logged at the end of the epoch (see :meth:`training_step`)."""
        if not self._epoch_logging:
            return super().validation_step(batch, batch_idx)
        _, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self._add("validation", batch, loss_output)

    def _add(self, mode: str, batch, loss_output) -> None:
        n_obs = loss_output.n_obs_minibatch
        with torch.no_grad():
            # the ELBO metrics as scvi-tools keeps them (torchmetrics objects, logged at the end of the epoch)
            (self.train_metrics if mode == "train" else self.val_metrics)[f"elbo_{mode}"].update(
                reconstruction_loss=loss_output.reconstruction_loss_sum,
                kl_local=loss_output.kl_local_sum,
                kl_global=loss_output.kl_global_sum,
                n_obs_minibatch=n_obs,
            )
            # Lightning weighs the loss by the length of the minibatch, the other metrics by n_obs_minibatch
            values = {f"{mode}_loss": (loss_output.loss, extract_batch_size(batch))}
            for key, value in (loss_output.extra_metrics or {}).items():
                if isinstance(value, torch.Tensor) and value.dim() == 0:
                    values[f"{key}_{mode}"] = (value, n_obs)
            self._sums.setdefault(mode, EpochSums()).add(values)

    def _log_epoch(self, mode: str) -> None:
        sums = self._sums.pop(mode, None)
        if sums is not None:
            means = sums.means(self.trainer.strategy.reduce if self.use_sync_dist else None)
            for name, value in means.items():
                # already the mean over all ranks; sync_dist (a mean of equal values) keeps Lightning from warning
                sync, bar = self.use_sync_dist, name == "train_loss"
                self.log(name, value, on_step=False, on_epoch=True, prog_bar=bar, sync_dist=sync)
            metrics = self.train_metrics if mode == "train" else self.val_metrics
            self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=self.use_sync_dist)
        if mode == "train" and "kl_weight" in self.loss_kwargs:
            self.log("kl_weight", self.kl_weight, on_step=False, on_epoch=True, sync_dist=self.use_sync_dist)

    def on_train_epoch_end(self) -> None:
        """Log the epoch's training metrics."""
        if self._epoch_logging:
            self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        """Log the epoch's validation metrics."""
        if self._epoch_logging:
            self._log_epoch("validation")

    def _optimizer_creator_fn(self, optimizer_cls):
        """Adam/AdamW as scvi-tools builds them; with ``fused_optimizer``, the fused kernel (one pass per tensor)."""
        if not self.fused_optimizer:
            return super()._optimizer_creator_fn(optimizer_cls)
        fused_cls = _transposing(optimizer_cls)
        return lambda params: fused_cls(params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, fused=True)

    def compute_and_log_metrics(self, loss_output, metrics, mode):
        """See :meth:`scvi.train.TrainingPlan.compute_and_log_metrics`."""
        with torch.no_grad():
            return TrainingPlan.compute_and_log_metrics.__wrapped__(self, loss_output, metrics, mode)


class EpochSums:
    """Weighted sums of a step's scalar metrics over an epoch: the sums on the device, the weights on the host.

    The same arithmetic as Lightning's mean reduction (``sum + value * weight``, then divided by the summed weights),
    so the epoch means are the same to the bit, with no host read and no host-to-device copy per step.
    """

    def __init__(self):
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None
        self.weights: list[float] = []

    def add(self, values: dict[str, tuple[torch.Tensor, float]]) -> None:
        """Add ``name -> (0-d tensor, weight)``; the names must be the same at every step."""
        if self.sums is None:
            self.names, self.weights = list(values), [0.0] * len(values)
        elif list(values) != self.names:
            raise ValueError(f"metrics {list(values)} logged after {self.names} in the same epoch")
        stacked = torch.stack([value.detach().float().reshape(()) * weight for value, weight in values.values()])
        self.sums = stacked if self.sums is None else self.sums + stacked
        self.weights = [total + weight for total, (_, weight) in zip(self.weights, values.values(), strict=True)]

    def means(self, reduce=None) -> dict[str, torch.Tensor]:
        """``name -> weighted mean``; ``reduce`` (a strategy's, summing over ranks) makes them global means."""
        sums, weights = self.sums, torch.tensor(self.weights, dtype=torch.float32, device=self.sums.device)
        if reduce is not None:
            sums, weights = reduce(sums.clone(), reduce_op="sum"), reduce(weights, reduce_op="sum")
        return dict(zip(self.names, sums / weights, strict=True))


class _Transposing:
    """Adam/AdamW that hands column-major tensors to its kernel as their contiguous transposes.

    The sparse encoders keep their first weights column-major (``nn._sparse.column_major_``); the fused kernel
    copies a non-contiguous parameter, its gradient and both moments to contiguous memory and back on every step
    (3x the time of the update at 20k peaks on CPU). Adam is elementwise, so updating ``W.T`` in place is the same
    update of ``W``.
    """

    def _init_group(self, group, params, grads, *state, **kwargs):
        result = super()._init_group(group, params, grads, *state, **kwargs)
        if not params:
            return result
        lists = [
            params,
            grads,
            # the moments (lists as long as params); not the step counters, nor flags such as older AdamW's amsgrad
            *(s for s in state if isinstance(s, list) and len(s) == len(params) and s[0].dim()),
        ]
        for index in range(len(params)):
            if all(is_column_major(values[index]) for values in lists):
                for values in lists:
                    values[index] = values[index].t()
        return result


class TransposingAdam(_Transposing, torch.optim.Adam):
    """:class:`torch.optim.Adam` with column-major tensors updated through their transposes (see ``_Transposing``)."""


class TransposingAdamW(_Transposing, torch.optim.AdamW):
    """:class:`torch.optim.AdamW` with column-major tensors updated through their transposes."""


def _transposing(optimizer_cls: type) -> type:
    """The transposing version of ``optimizer_cls``: module-level (picklable) for Adam and AdamW."""
    for transposing in (TransposingAdam, TransposingAdamW):
        if transposing.__bases__[1] is optimizer_cls:
            return transposing
    return type(optimizer_cls.__name__, (_Transposing, optimizer_cls), {"__module__": __name__})
