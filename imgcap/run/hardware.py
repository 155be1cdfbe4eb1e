"""Settings that follow the machine: mixed-precision flavour and the config resolver for it.

``conf/trainer/default.yaml`` says ``precision: ${imgcap.precision:${.accelerator}}``; the
resolver is registered by :func:`register_resolvers` (called by ``imgcap.run.tasks`` on import).
"""

from __future__ import annotations

import torch


def precision_for(accelerator: str = "auto") -> str:
    """Lightning precision for a Trainer ``accelerator``: ``bf16-mixed`` on GPUs with bfloat16
    support (Ampere and later: float32's range, no loss scaling), ``16-mixed`` on older GPUs,
    ``32-true`` on CPUs and anything else (other accelerators: set trainer.precision)."""
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if not gpu or not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def register_resolvers() -> None:
    """Make ``${imgcap.precision:<accelerator>}`` usable in configs (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("imgcap.precision"):
        OmegaConf.register_new_resolver("imgcap.precision", precision_for)


def use_tensor_cores_for_float32() -> None:
    """On CUDA, let float32 matmuls and convolutions use TF32 tensor cores (about 10 bits of
    mantissa: what mixed precision leaves in float32 does not need more, and the speed-up on
    Ampere and later is several-fold)."""
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
