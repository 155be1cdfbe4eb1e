"""Image encoder: a CNN backbone whose last feature map becomes a grid of region vectors.

``ImageEncoder`` maps images ``(B, 3, H, W)`` to features ``(B, P, C)`` where
``P = encoded_size ** 2`` grid cells (row-major) and ``C = encoder.out_dim``. Input images are
expected normalised the way the backbone's weights were trained (ImageNet mean/std for
torchvision weights); that is the data pipeline's job.

Backbones:
  - torchvision ResNets (``resnet18/34/50/101/152``) without avgpool/fc; C = 512 or 2048.
  - ``small_cnn``: four stride-2 conv+BN+ReLU blocks, trained from scratch. It exists so the
    offline demo and the tests run in seconds on a CPU at 64 px; it is not a captioning baseline.

Fine-tuning (``fine_tune``): ``"frozen"`` (no gradients; BatchNorm always in eval mode),
``"all"``, or an int ``k``: the last ``k`` stages (``layer4``, ``layer3``, ...) train while the
rest stays frozen, with the frozen part's BatchNorm kept in eval mode.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from imgcap.errors import ConfigError

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
ARCHS = (*RESNETS, "small_cnn")
FineTune = str | int


class ImageEncoder(nn.Module):
    """Backbone + adaptive average pooling to a fixed grid.

    Attributes:
        arch, weights, encoded_size: how it was built (see ``config``).
        out_dim: C, the feature size of each grid cell.
        num_pixels: P = encoded_size ** 2.
        stages: names of the backbone children that ``fine_tune=k`` counts from the end.
        fine_tune: the current mode (``"frozen"``, ``"all"`` or an int).
    """

    def __init__(
        self,
        arch: str,
        backbone: nn.Sequential,
        out_dim: int,
        stages: list[str],
        encoded_size: int = 14,
        weights: str | None = None,
        fine_tune: FineTune = "frozen",
        extra_config: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.arch = arch
        self.weights = weights
        self.encoded_size = encoded_size
        self.out_dim = out_dim
        self.num_pixels = encoded_size**2
        self.stages = list(stages)
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(encoded_size)
        self._extra_config = dict(extra_config or {})
        self.fine_tune: FineTune = "frozen"
        self.set_fine_tune(fine_tune)

    @property
    def config(self) -> dict[str, Any]:
        """What determines the output for a given image: use it in feature-cache keys.

        With ``weights=None`` the weights are a random init, so equal configs only mean equal
        features under the same seed.
        """
        return {
            "arch": self.arch,
            "weights": self.weights,
            "encoded_size": self.encoded_size,
            **self._extra_config,
        }

    def cache_key(self) -> dict[str, Any]:
        """``config`` plus, for random-init weights, a digest of the actual weights: two random
        inits (another seed) share a config but not their features."""
        key = dict(self.config)
        if self.weights is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            key["weights_sha256"] = digest.hexdigest()[:16]
        return key

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) float -> features (B, P, C), grid cells in row-major order."""
        assert images.dim() == 4 and images.shape[1] == 3, (
            f"expected images (B, 3, H, W), got {tuple(images.shape)}"
        )
        x = self.backbone(images)  # (B, C, h, w)
        x = self.pool(x)  # (B, C, S, S)
        return x.flatten(2).transpose(1, 2)  # (B, P, C)

    # ---- fine-tuning -------------------------------------------------------------------------

    def set_fine_tune(self, mode: FineTune) -> None:
        """Switch between ``"frozen"``, ``"all"`` and ``k`` trainable final stages.

        Safe to call mid-training (an unfreezing schedule does): the optimizer must then be given
        the newly trainable parameters, see ``trainable_parameters()``.
        """
        mode = _parse_fine_tune(mode, len(self.stages), self.arch)
        trainable = self._trainable_children(mode)
        for name, child in self.backbone.named_children():
            child.requires_grad_(name in trainable)
        self.fine_tune = mode
        self.train(self.training)  # re-apply the BatchNorm rule for the new frozen set

    def _trainable_children(self, mode: FineTune) -> set[str]:
        if mode == "all":
            return {name for name, _ in self.backbone.named_children()}
        if mode == "frozen":
            return set()
        return set(self.stages[len(self.stages) - int(mode) :])

    @property
    def is_frozen(self) -> bool:
        """True when no encoder parameter receives gradients."""
        return not any(p.requires_grad for p in self.parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that currently require gradients (for the optimizer's encoder group)."""
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> ImageEncoder:
        """Like ``nn.Module.train``, but BatchNorm layers in frozen parts stay in eval mode:
        their running statistics were estimated on the pretraining data and updating them from
        small caption batches would shift features the frozen weights no longer adapt to."""
        super().train(mode)
        if mode:
            trainable = self._trainable_children(self.fine_tune)
            for name, child in self.backbone.named_children():
                if name not in trainable:
                    for m in child.modules():
                        if isinstance(m, _BatchNorm):
                            m.eval()
        return self

    # ---- weights -----------------------------------------------------------------------------

    def load_backbone_file(self, path: str | os.PathLike) -> None:
        """Load a local state_dict: a full torchvision model (``fc.*`` keys are dropped), a bare
        backbone, or an ``ImageEncoder`` state_dict. Backbone keys must match exactly."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"encoder weights file not found: {path}; pass an existing .pth/.pt state_dict, "
                "a torchvision weights name such as IMAGENET1K_V2, or null for random init"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unreadable file is the same user problem
            raise ConfigError(
                f"encoder weights file {path} could not be read as a PyTorch state_dict "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            ) from err
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise ConfigError(
                f"encoder weights file {path} holds a {type(state).__name__}, "
                "expected a state_dict (dict of parameter name -> tensor)"
            )
        state = _backbone_keys(state)
        expected = self.backbone.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or wrong_shape:
            raise ConfigError(
                f"encoder weights file {path} does not match arch {self.arch!r}: "
                f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
                f"{unexpected[:3]}, {len(wrong_shape)} shape mismatches {wrong_shape[:3]}"
            )
        self.backbone.load_state_dict(state, strict=True)


def _backbone_keys(state: dict[str, Any]) -> dict[str, Any]:
    """Normalise key names to the backbone's: drop the classifier, strip wrapper prefixes."""
    for prefix in ("module.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _parse_fine_tune(mode: FineTune, num_stages: int, arch: str) -> FineTune:
    if isinstance(mode, str) and mode.strip().lstrip("-").isdigit():
        mode = int(mode)
    if isinstance(mode, bool) or not isinstance(mode, str | int):
        raise ConfigError(f"encoder fine_tune must be 'frozen', 'all' or an int, got {mode!r}")
    if isinstance(mode, str):
        if mode not in ("frozen", "all"):
            raise ConfigError(f"encoder fine_tune must be 'frozen', 'all' or an int, got {mode!r}")
        return mode
    if not 0 <= mode <= num_stages:
        raise ConfigError(
            f"encoder fine_tune={mode} is out of range for {arch}: use 0..{num_stages} "
            "(the number of final stages to train), 'frozen' or 'all'"
        )
    return "frozen" if mode == 0 else mode


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # bias is redundant before BatchNorm
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _small_cnn(width: int) -> tuple[nn.Sequential, int, list[str]]:
    channels = [3, 32, 64, 128, width]
    blocks = OrderedDict(
        (f"block{i + 1}", _conv_block(channels[i], channels[i + 1])) for i in range(4)
    )
    return nn.Sequential(blocks), width, list(blocks)


def _resnet(arch: str) -> tuple[nn.Sequential, int, list[str]]:
    model = torchvision.models.get_model(arch, weights=None)
    # keep torchvision's child names so its state_dicts load key for key
    children = OrderedDict(
        (name, child) for name, child in model.named_children() if name not in ("avgpool", "fc")
    )
    return nn.Sequential(children), model.fc.in_features, ["layer1", "layer2", "layer3", "layer4"]


def _looks_like_path(weights: str) -> bool:
    return (
        "/" in weights
        or os.sep in weights
        or weights.endswith((".pth", ".pt", ".bin"))
        or os.path.exists(weights)
    )


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _load_torchvision_weights(encoder: ImageEncoder, arch: str, name: str) -> None:
    """Resolve a torchvision weights enum name and download (or read from the torch hub cache)."""
    enum = torchvision.models.get_model_weights(arch)
    try:
        weights = enum[name]
    except KeyError:
        raise ConfigError(
            f"unknown torchvision weights {name!r} for {arch}: choose one of "
            f"{list(enum.__members__)}, a local .pth file path, or null"
        ) from None
    try:
        state = weights.get_state_dict(progress=True)
    except Exception as err:  # URLError, hash mismatch, proxy errors: all mean "not available"
        raise ConfigError(
            f"encoder weights {arch}/{name} could not be downloaded ({type(err).__name__}: "
            f"{err}); on an offline machine pass a local .pth file path as weights, or null"
        ) from err
    encoder.backbone.load_state_dict(_backbone_keys(state), strict=True)


def build_encoder(
    arch: str = "resnet50",
    weights: str | None = None,
    encoded_size: int = 14,
    fine_tune: FineTune = "frozen",
    **kwargs: Any,
) -> ImageEncoder:
    """Build an ``ImageEncoder``.

    Args:
        arch: one of ``resnet18/34/50/101/152`` or ``small_cnn``.
        weights: ``None`` (random init), a torchvision weights name (``"IMAGENET1K_V2"``,
            ``"IMAGENET1K_V1"``, ``"DEFAULT"``; downloaded to the torch hub cache), or a path to
            a local ``.pth``/``.pt`` state_dict.
        encoded_size: side S of the output grid; P = S * S.
        fine_tune: ``"frozen"``, ``"all"`` or an int k (last k stages trainable).
        **kwargs: ``width`` (int, default 256) for ``small_cnn``; nothing for ResNets.
    """
    if arch not in ARCHS:
        raise ConfigError(f"unknown encoder arch {arch!r}: choose one of {list(ARCHS)}")
    if not isinstance(encoded_size, int) or encoded_size < 1:
        raise ConfigError(f"encoder encoded_size must be a positive int, got {encoded_size!r}")
    extra: dict[str, Any] = {}
    if arch == "small_cnn":
        width = kwargs.pop("width", 256)
        backbone, out_dim, stages = _small_cnn(int(width))
        extra["width"] = int(width)
    else:
        backbone, out_dim, stages = _resnet(arch)
    if kwargs:
        raise ConfigError(f"unexpected encoder options for {arch}: {sorted(kwargs)}")

    is_file = weights is not None and _looks_like_path(str(weights))
    if is_file:
        extra["weights_sha256"] = None  # filled below, once the file is known to exist
    encoder = ImageEncoder(
        arch, backbone, out_dim, stages, encoded_size, weights, fine_tune, extra_config=extra
    )
    if weights is None:
        return encoder
    weights = str(weights)
    if is_file:
        encoder.load_backbone_file(weights)
        # the same path can hold different weights over time: key caches on the content
        encoder._extra_config["weights_sha256"] = _file_digest(weights)
    elif arch == "small_cnn":
        raise ConfigError(
            f"small_cnn has no pretrained weights named {weights!r}: use null or a local file path"
        )
    else:
        _load_torchvision_weights(encoder, arch, weights)
    return encoder
