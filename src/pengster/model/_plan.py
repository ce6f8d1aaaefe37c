"""The training plan of :class:`~pengster.model.JointVAE`: scvi-tools' plan, with metrics that DDP can reduce."""

from __future__ import annotations

import torch
from scvi.train import TrainingPlan


class JointTrainingPlan(TrainingPlan):
    """:class:`scvi.train.TrainingPlan` whose metrics are logged under ``no_grad`` instead of ``inference_mode``.

    scvi-tools 1.4 logs its metrics inside ``torch.inference_mode``, so Lightning's epoch accumulators become inference
    tensors; under DDP, the end-of-epoch reduction updates them in place outside inference mode and fails ("Inplace
    update to inference tensor outside InferenceMode"). ``no_grad`` keeps the same cost without that restriction.
    """

    def compute_and_log_metrics(self, loss_output, metrics, mode):
        """See :meth:`scvi.train.TrainingPlan.compute_and_log_metrics`."""
        with torch.no_grad():
            return TrainingPlan.compute_and_log_metrics.__wrapped__(self, loss_output, metrics, mode)
