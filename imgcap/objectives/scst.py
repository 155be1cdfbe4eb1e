"""Self-critical sequence training (Rennie et al., CVPR 2017) with a CIDEr-D reward.

For each image, ``samples`` captions are drawn from the decoder (multinomial, ``temperature``)
with gradients; each is rewarded with CIDEr-D against the image's references, and the policy
gradient pushes up the log-probability of the samples that beat a baseline:

    loss = - sum_{i,t} (r_i - b_i) * log p(w_{i,t}) * mask_{i,t} / sum mask

``baseline: mean`` (default; the "new self-critical" variant) is the mean reward of the image's
other samples, ``baseline: greedy`` the reward of the image's greedy caption (decoded in eval
mode without gradients). The mask keeps each sample's tokens up to and including ``<end>``.

The reward is :class:`imgcap.objectives.reward.CiderDReward`, built once in ``setup``: CIDEr-D
with document frequencies from the training references, captions compared as the vocabulary
sees them (lower case, no punctuation). SCST starts from a cross-entropy checkpoint: ``init_from=``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from imgcap.decoders.decoding import greedy_decode, sample_captions
from imgcap.errors import ConfigError
from imgcap.objectives.base import Objective, ObjectiveContext, register_objective
from imgcap.objectives.reward import CiderDReward
from imgcap.settings import Settings, choice, integer, number

BASELINES = ("mean", "greedy")


@dataclass(frozen=True)
class SCSTSettings(Settings):
    """Self-critical training's settings (``model.objective.*``;
    ``conf/model/objective/scst.yaml``).

    samples: captions drawn per image (>= 2 with the mean baseline).
    baseline: ``mean`` (of the image's other samples) or ``greedy`` (its greedy caption).
    temperature: sampling temperature (1 samples the model's own distribution).
    max_len: longest sampled caption; None uses the model's ``max_len``.
    num_logged: how many sampled captions of the latest step are kept for the loggers.
    """

    config_key: ClassVar[str] = "model.objective"

    samples: int = integer(5)
    baseline: str = choice("mean", BASELINES)
    temperature: float = number(1.0)
    max_len: int | None = integer(None, optional=True)
    num_logged: int = integer(4, minimum=0)

    def check(self) -> None:
        if self.samples < (2 if self.baseline == "mean" else 1):
            raise ConfigError(
                f"model.objective.samples={self.samples}: the mean baseline needs at least 2 "
                "samples per image (the others' mean); use more samples or baseline=greedy"
            )


@register_objective("scst")
class SelfCritical(Objective):
    """Policy gradient on sampled captions, rewarded by CIDEr-D.

    Returns ``loss``, ``reward`` (mean CIDEr-D of the samples), ``baseline``, ``advantage``
    (their mean difference: 0 with the mean baseline) and ``sample_length``; the reward is also
    logged as an epoch mean (``train/reward_epoch``).

    Settings: :class:`SCSTSettings` (its fields by name, or ``settings=`` an instance).
    """

    settings_class = SCSTSettings

    def __init__(self, *args: Any, settings: SCSTSettings | None = None, **kwargs: Any) -> None:
        self.settings = settings = settings or SCSTSettings.from_args(*args, **kwargs)
        samples, baseline, temperature = settings.samples, settings.baseline, settings.temperature
        max_len, num_logged = settings.max_len, settings.num_logged
        self.epoch_means = ("reward",)
        self.logged_samples = None
        self.n = int(samples)
        self.baseline = baseline
        self.temperature = float(temperature)
        self.max_len = max_len
        self.num_logged = int(num_logged)
        self.reward: CiderDReward | None = None

    def setup(self, context: ObjectiveContext) -> None:
        if not context.train_references:
            raise ConfigError(
                "model/objective=scst needs the training references for CIDEr-D's document "
                "frequencies, and none were given (CaptioningModule(train_references=...))"
            )
        self.max_len = int(self.max_len or context.max_len)
        self.reward = CiderDReward(context.words, context.train_references, context.normalize)

    def words(self, tokens: Sequence[int]) -> str:
        """Token ids -> the caption as words, up to <end> (no specials)."""
        return self._reward().words(tokens)

    def rewards(self, token_rows: torch.Tensor | list, references: list[list[str]]) -> torch.Tensor:
        """CIDEr-D of each caption (rows of ids) against its references -> (N,) float32."""
        return self._reward()(token_rows, references)

    def _reward(self) -> CiderDReward:
        if self.reward is None:
            raise RuntimeError("SelfCritical.setup() must run before training (on_fit_start)")
        return self.reward

    def __call__(
        self,
        decoder: torch.nn.Module,
        features: torch.Tensor,
        batch: dict[str, Any],
        teacher_forcing_ratio: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        reward_of = self._reward()
        B, n, device = features.shape[0], self.n, features.device
        references = batch["references"]
        per_sample_refs = [refs for refs in references for _ in range(n)]

        sampled = sample_captions(
            decoder, features, n=n, max_len=self.max_len, temperature=self.temperature
        )
        reward = reward_of(sampled.tokens, per_sample_refs).to(device).view(B, n)
        if self.baseline == "mean":
            baseline = (reward.sum(1, keepdim=True) - reward) / (n - 1)
        else:
            was_training = decoder.training
            decoder.eval()
            with torch.no_grad():
                greedy = greedy_decode(decoder, features.detach(), max_len=self.max_len)
            decoder.train(was_training)
            baseline = reward_of(greedy.tokens, references).to(device).view(B, 1).expand(B, n)
        advantage = (reward - baseline).reshape(-1, 1)  # (B*n, 1), a constant for autograd

        mask = sampled.mask.to(sampled.log_probs.dtype)
        loss = -(advantage * sampled.log_probs * mask).sum() / mask.sum().clamp(min=1.0)
        self._keep_samples(batch, sampled.tokens, reward)
        return {
            "loss": loss,
            "reward": reward.mean(),
            "baseline": baseline.mean(),
            "advantage": advantage.mean(),
            "sample_length": mask.sum(1).mean(),
        }

    def _keep_samples(
        self, batch: dict[str, Any], tokens: torch.Tensor, reward: torch.Tensor
    ) -> None:
        """The first sample of the first images, for the caption-sample logger."""
        count = min(self.num_logged, reward.shape[0])
        ids = batch.get("image_ids") or [str(i) for i in range(reward.shape[0])]
        rows = tokens[:: self.n][:count].tolist()
        self.logged_samples = [
            {
                "image_id": ids[i],
                "sample": self.words(rows[i]),
                "reward": float(reward[i, 0]),
                "references": list(batch["references"][i]),
            }
            for i in range(count)
        ]
