"""Training: scvi-tools' plan with the module's running statistics, callbacks, and the minibatch-size and LR rule."""

from ._callbacks import BestWeights, FiniteLossCheck, ResumableCheckpoint, StepSeed
from ._options import auto_batch_size, default_max_epochs, scaled_lr, training_length
from ._plan import JointTrainingPlan

__all__ = [
    "BestWeights",
    "FiniteLossCheck",
    "JointTrainingPlan",
    "ResumableCheckpoint",
    "StepSeed",
    "auto_batch_size",
    "default_max_epochs",
    "scaled_lr",
    "training_length",
]
