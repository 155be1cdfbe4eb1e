"""Training callbacks, one concern per module (each has its entry in ``conf/callbacks/``)."""

from imgcap.callbacks.safety import (
    FiniteGuard,
    InterruptCheckpoint,
    RngState,
    RunConfigInCheckpoint,
    nonfinite_parameters,
)
from imgcap.callbacks.samples import CaptionSampleLogger, to_display_image
from imgcap.callbacks.schedule import EncoderFineTuning, ValidateAfterLastEpoch

__all__ = [
    "CaptionSampleLogger",
    "EncoderFineTuning",
    "FiniteGuard",
    "InterruptCheckpoint",
    "RngState",
    "RunConfigInCheckpoint",
    "ValidateAfterLastEpoch",
    "nonfinite_parameters",
    "to_display_image",
]
