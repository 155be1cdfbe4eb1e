"""Self-critical sequence training: rewards, baselines, the policy gradient, the module wiring."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader

from imgcap.captioning_module import CaptioningModule
from imgcap.decoders import AttentionLSTMDecoder, greedy_decode
from imgcap.errors import ConfigError
from imgcap.metrics.cider_d import CiderD
from imgcap.objectives import ObjectiveContext, SelfCritical, build_objective
from imgcap.tokens import END_ID, START_ID
from imgcap.vocab import normalize_caption
from tests.support.trainers import quiet_cpu_trainer

WORDS = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "blue", "circle", "square", "big"]
REFS = {0: ["a red circle", "a big red circle"], 1: ["a blue square", "a big blue square"]}
CORPUS = [REFS[0], REFS[1], ["a red square"], ["a blue circle"]]


def _context(**kw) -> ObjectiveContext:
    return ObjectiveContext(words=WORDS, normalize=normalize_caption, train_references=CORPUS, **kw)


def _objective(**settings) -> SelfCritical:
    objective = build_objective({"name": "scst", **settings})
    objective.setup(_context(max_len=6))
    return objective


def _batch(B: int = 8, C: int = 8, seed: int = 0) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(seed)
    which = torch.arange(B) % 2
    features = torch.randn(B, 4, C, generator=g) * 0.1 + (which * 2 - 1).view(B, 1, 1).float()
    return features, {
        "references": [list(REFS[w]) for w in which.tolist()],
        "image_ids": [f"img{i}" for i in range(B)],
    }


def test_rewards_are_cider_d_of_the_decoded_words_against_the_corpus():
    objective = _objective()
    rows = [[4, 5, 7, END_ID, 0], [4, 6, 8, END_ID, 0], [START_ID, 9, 9, 9, 9]]
    refs = [REFS[0], REFS[0], REFS[0]]
    rewards = objective.rewards(rows, refs)
    expected = CiderD(CORPUS).scores(["a red circle", "a blue square", "big big big big"], refs)
    assert torch.allclose(rewards, torch.as_tensor(expected, dtype=torch.float32))
    # "a" is in every corpus image (idf 0): a caption sharing only "a" earns nothing
    assert rewards[0] > 1.0 and rewards[1] == 0 and 0 < rewards[2] < 0.5


def test_mean_baseline_needs_two_samples_and_unknown_baselines_are_refused():
    with pytest.raises(ConfigError, match="model.objective.samples=1"):
        build_objective({"name": "scst", "samples": 1})
    with pytest.raises(ConfigError, match="model.objective.baseline"):
        build_objective({"name": "scst", "baseline": "critic"})
    build_objective({"name": "scst", "samples": 1, "baseline": "greedy"})  # fine


def test_setup_without_training_references_is_one_clear_error():
    objective = build_objective({"name": "scst"})
    with pytest.raises(ConfigError, match="training references"):
        objective.setup(ObjectiveContext(words=WORDS, normalize=normalize_caption))


@pytest.mark.parametrize("baseline", ["mean", "greedy"])
def test_baselines_and_logged_values(baseline):
    torch.manual_seed(0)
    decoder = AttentionLSTMDecoder(len(WORDS), 8, embed_dim=8, decoder_dim=8, attention_dim=8)
    objective = _objective(samples=4, baseline=baseline)
    features, batch = _batch()
    out = objective(decoder, features, batch)
    assert set(out) == {"loss", "reward", "baseline", "advantage", "sample_length"}
    assert out["loss"].requires_grad and torch.isfinite(out["loss"])
    if baseline == "mean":  # the others' mean: advantages of an image sum to zero
        assert out["advantage"].abs() < 1e-5
        assert torch.isclose(out["baseline"], out["reward"], atol=1e-5)
    else:  # the greedy caption's reward, decoded in eval mode and back to training mode after
        assert decoder.training
        greedy = greedy_decode(decoder.eval(), features, max_len=6)
        refs = [[" ".join(normalize_caption(r)) for r in rs] for rs in batch["references"]]
        expected = objective.rewards(greedy.tokens, refs).mean()
        assert torch.isclose(out["baseline"], expected, atol=1e-5)
    assert len(objective.logged_samples) == 4 and set(objective.logged_samples[0]) == {
        "image_id",
        "sample",
        "reward",
        "references",
    }


def test_policy_gradient_raises_the_mean_reward():
    """A tiny decoder trained by SCST alone (no cross-entropy) learns to say what the
    references say: the mean reward of its samples rises."""
    torch.manual_seed(0)
    decoder = AttentionLSTMDecoder(
        len(WORDS), 8, embed_dim=16, decoder_dim=16, attention_dim=8, dropout=0.0
    )
    objective = _objective(samples=5)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    features, batch = _batch()
    rewards = []
    for _ in range(60):
        out = objective(decoder, features, batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        rewards.append(out["reward"].item())
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert last > first + 1.0, (first, last)


def test_module_trains_with_scst_and_logs_reward_baseline_advantage(tmp_path):
    torch.manual_seed(0)
    model = CaptioningModule(
        vocab=WORDS,
        encoder={"arch": "small_cnn", "weights": None, "fine_tune": "all", "width": 8},
        decoder={"name": "lstm_attention", "attention_dim": 8, "embed_dim": 8, "decoder_dim": 8},
        objective={"name": "scst", "samples": 3},
        encoded_size=2,
        meteor=False,
        max_len=6,
        optimizer=partial(torch.optim.Adam, lr=1e-3),
        train_references=CORPUS,  # given when built, as the run does from the data
    )

    class References(L.LightningDataModule):
        def train_dataloader(self):
            features, batch = _batch()
            return DataLoader([{"features": features, **batch}], batch_size=None)

    trainer = quiet_cpu_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=References())
    logged = trainer.callback_metrics
    for key in ("train/loss", "train/reward", "train/baseline", "train/advantage"):
        assert key in logged and torch.isfinite(logged[key])
