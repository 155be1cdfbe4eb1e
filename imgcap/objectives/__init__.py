"""Training objectives: plain functions of decoder outputs (torch only, no Lightning)."""

from imgcap.objectives.xe import xe_attention_loss

__all__ = ["xe_attention_loss"]
