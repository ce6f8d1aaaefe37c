"""The training plan of :class:`~pengster.model.JointVAE`: scvi-tools' plan, plus the module's running statistics."""

from __future__ import annotations

import torch
from scvi.train import TrainingPlan


class JointTrainingPlan(TrainingPlan):
    """scvi-tools' ``TrainingPlan`` whose training step also updates the module's running statistics.

    The module's ``inference``, ``generative`` and ``loss`` change no buffer; after each training step's forward pass
    :meth:`~pengster.module.JointVAEModule.update_running_statistics` folds the minibatch into the running mean of
    the ATAC cell factor and the cell-factor regression (not for a query model, which keeps the reference's).

    The validation loss is the loss at the full KL weight, whatever the warm-up has reached: epochs during and after
    the warm-up then compare, and early stopping and the kept best epoch follow the objective itself.

    The metrics are logged under ``no_grad`` instead of scvi-tools' ``inference_mode``: Lightning's epoch accumulators
    would become inference tensors, which DDP's end-of-epoch reduction cannot update ("Inplace update to inference
    tensor outside InferenceMode").
    """

    def training_step(self, batch, batch_idx):
        """scvi-tools' training step, then the update of the running statistics."""
        if "kl_weight" in self.loss_kwargs:
            self.loss_kwargs.update({"kl_weight": self.kl_weight})
            self.log("kl_weight", self.kl_weight, on_step=True, on_epoch=False)
        inference_outputs, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        if not self.module.freeze_running_stats:
            self.module.update_running_statistics(inference_outputs)
        self.log(
            "train_loss", loss_output.loss, on_step=self.on_step, on_epoch=self.on_epoch, prog_bar=True,
            sync_dist=self.use_sync_dist,
        )  # fmt: skip
        if self.on_step:
            self.trainer.logger.log_metrics({"train_loss_step": loss_output.loss}, step=self.global_step)
        self.compute_and_log_metrics(loss_output, self.train_metrics, "train")
        return loss_output.loss

    def validation_step(self, batch, batch_idx):
        """scvi-tools' validation step, with the loss at the full KL weight."""
        during_training = self.loss_kwargs
        if "kl_weight" in during_training:
            self.loss_kwargs = {**during_training, "kl_weight": torch.tensor(self.max_kl_weight, device=self.device)}
        try:
            return super().validation_step(batch, batch_idx)
        finally:
            self.loss_kwargs = during_training

    def compute_and_log_metrics(self, loss_output, metrics, mode):
        """scvi-tools' ``compute_and_log_metrics``, under ``no_grad``."""
        with torch.no_grad():
            return TrainingPlan.compute_and_log_metrics.__wrapped__(self, loss_output, metrics, mode)
