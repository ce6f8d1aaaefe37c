"""Training: scvi-tools' plan with the module's running statistics, callbacks, and the training defaults."""

from ._callbacks import (
    LAST_CHECKPOINT,
    LAST_MODEL,
    FiniteLossCheck,
    ResumableCheckpoint,
    StepSeed,
    training_callbacks,
    training_guard,
)
from ._options import BASE_LR, auto_batch_size, check_precision, scaled_lr, training_options
from ._plan import JointTrainingPlan

__all__ = [
    "BASE_LR",
    "LAST_CHECKPOINT",
    "LAST_MODEL",
    "FiniteLossCheck",
    "JointTrainingPlan",
    "ResumableCheckpoint",
    "StepSeed",
    "auto_batch_size",
    "check_precision",
    "scaled_lr",
    "training_callbacks",
    "training_guard",
    "training_options",
]
