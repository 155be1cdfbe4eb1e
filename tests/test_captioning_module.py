"""The LightningModule: loss, optimizer groups, schedules, and the end-to-end gradient path."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from imgcap.data.annotations import load_annotations
from imgcap.data.transforms import eval_transform, load_image
from imgcap.vocab import Vocabulary
from tests.support.modules import small_module


def test_overfits_twenty_images_and_reproduces_their_captions(shapes_root):
    """Near-zero loss on 20 images, one caption each, and greedy decoding gives those captions
    back: the gradient reaches every part (encoder, attention, LSTM, output) end to end."""
    torch.manual_seed(0)
    ann = load_annotations(shapes_root)
    ids = sorted(ann.captions)[:20]
    captions = [ann.captions[i][0] for i in ids]
    vocab = Vocabulary.build(captions, min_word_freq=1)
    transform = eval_transform(32)
    images = torch.stack([transform(load_image(ann.image_dir / i)) for i in ids])  # (20, 3, 32, 32)
    tokens = pad_sequence([torch.tensor(vocab.encode(c)) for c in captions], batch_first=True)
    lengths = (tokens != 0).sum(1)

    model = small_module(vocab)
    optimizer = model.optimizer_factory(model.parameters())
    model.train()
    for _step in range(400):
        losses = model.compute_loss(model.encoder(images), tokens, lengths, ratio=1.0)
        if losses["xe"].item() < 0.02:
            break
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    assert losses["xe"].item() < 0.02, (
        f"cross-entropy still {losses['xe'].item():.3f} after {_step} steps"
    )

    model.eval()
    decoded, _ = model.caption_features(model.encoder(images), beam_size=1, max_len=20)
    expected = [vocab.decode(vocab.encode(c)) for c in captions]
    assert decoded == expected


def test_attention_penalty_counts_only_real_steps():
    vocab = Vocabulary(["a", "b"])
    model = small_module(vocab, objective={"name": "xe", "alpha_c": 1.0}).eval()
    features = torch.rand(2, 4, model.encoder.out_dim)
    captions = torch.tensor([[1, 4, 5, 2, 0, 0], [1, 4, 2, 0, 0, 0]])
    lengths = torch.tensor([4, 3])
    losses = model.compute_loss(features, captions, lengths, ratio=1.0)
    _, alphas = model.decoder(features, captions, lengths)
    mask = (captions[:, 1:] != 0).float().unsqueeze(-1)
    expected = ((1 - (alphas * mask).sum(1)) ** 2).mean()
    assert torch.allclose(losses["att_reg"], expected)
    assert torch.allclose(losses["loss"], losses["xe"] + losses["att_reg"])


def test_optimizer_groups_follow_the_encoder_mode():
    vocab = Vocabulary(["a"])
    trainable = small_module(vocab)
    optimizer = trainable.configure_optimizers()
    assert [g["lr"] for g in optimizer.param_groups] == [3e-3, 2e-3]

    frozen = small_module(
        vocab, encoder={"arch": "small_cnn", "weights": None, "fine_tune": "frozen", "lr": 1e-4}
    )
    optimizer = frozen.configure_optimizers()
    assert len(optimizer.param_groups) == 1  # no encoder group while frozen
    encoder_ids = {id(p) for p in frozen.encoder.parameters()}
    assert not encoder_ids & {id(p) for p in optimizer.param_groups[0]["params"]}


def test_teacher_forcing_schedule_decays_linearly():
    model = small_module(
        Vocabulary(["a"]),
        teacher_forcing_ratio=1.0,
        teacher_forcing_schedule={"end": 0.5, "epochs": 10},
    )

    class FakeTrainer:
        current_epoch = 0

    trainer = FakeTrainer()
    model.trainer = trainer  # current_epoch reads trainer.current_epoch
    ratios = []
    for epoch in (0, 5, 10, 20):
        trainer.current_epoch = epoch
        ratios.append(model.teacher_forcing_ratio())
    assert ratios == [1.0, 0.75, 0.5, 0.5]


def test_saved_checkpoint_needs_no_pretrained_weights(tmp_path):
    """A checkpoint of a model built from downloaded weights must rebuild offline."""
    model = small_module(Vocabulary(["a"]))
    checkpoint = {"hyper_parameters": dict(model.hparams)}
    checkpoint["hyper_parameters"]["encoder"] = {
        **model.hparams.encoder,
        "weights": "IMAGENET1K_V2",
    }
    model.on_save_checkpoint(checkpoint)
    assert checkpoint["hyper_parameters"]["encoder"]["weights"] is None
    assert model.hparams.encoder["fine_tune"] == "all"  # the live hyperparameters are untouched


def test_one_evaluation_step_serves_every_beam_size_and_the_captioner():
    """Validation, test and evaluate.py caption through ``caption_batch``: encode once, decode
    with each beam size, the same captions as decoding the features directly."""
    from imgcap.api.captioner import Captioner

    torch.manual_seed(0)
    vocab = Vocabulary.from_dict({"itos": ["<pad>", "<start>", "<end>", "<unk>", "a", "red"]})
    model = small_module(vocab).eval()
    images = torch.randn(3, 3, 32, 32)
    batch = {"images": images, "references": [["a red"]] * 3, "image_ids": ["x", "y", "z"]}
    decoded = model.caption_batch(batch, beam_sizes=[1, 2], max_len=5)
    features = model.encode(batch)
    for (captions, _), k in zip(decoded, [1, 2], strict=True):
        assert captions == model.caption_features(features, beam_size=k, max_len=5)[0]

    calls = []
    original = model.caption_batch
    model.caption_batch = lambda *a, **kw: calls.append(kw) or original(*a, **kw)
    split = Captioner(model, image_size=32, device="cpu").caption_batches(
        [batch], beam_sizes=[1, 2], max_len=5
    )
    assert calls == [{"beam_sizes": [1, 2], "max_len": 5}]
    assert split.hypotheses == {1: decoded[0][0], 2: decoded[1][0]}
    assert split.image_ids == ["x", "y", "z"] and split.references == batch["references"]
