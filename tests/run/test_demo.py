"""The offline demo (`python train.py experiment=demo`, what `make demo` runs) meets its bar:
mostly correct, clearly image-dependent captions; SCST from its checkpoint raises CIDEr; the
Transformer decoder meets the same bar."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from imgcap.captioning_module import load_captioner
from imgcap.data.shapes import COLOURS, SHAPES
from imgcap.data.transforms import eval_transform, load_image
from imgcap.metrics import compute_caption_metrics
from imgcap.run import tasks
from tests.support.hydra_helpers import compose_config, compose_train


def word_accuracy(predictions: list[dict], truth: dict[str, list[dict]], vocabulary) -> float:
    """Fraction of images whose caption names exactly the true multiset of words of one kind
    (colours, or shape names)."""
    hits = 0
    for p in predictions:
        said = Counter(w for w in p["hypothesis"].split() if w in vocabulary)
        true = Counter(
            s[key] for s in truth[p["image"]] for key in ("colour", "shape") if s[key] in vocabulary
        )
        hits += said == true
    return hits / len(predictions)


@pytest.fixture
def demo_run(trained_demo) -> tuple[Path, Path]:
    """The cross-entropy demo, trained once per session (tests/conftest.py): (its root folder,
    its run folder)."""
    return trained_demo.root, trained_demo.run


@pytest.mark.slow
def test_demo_captions_are_correct_and_image_dependent(demo_run):
    tmp_path, run = demo_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/BLEU-4"] >= 0.80, metrics

    evaluation = compose_config(
        tmp_path / "eval",
        "evaluate",
        [f"ckpt={run / 'checkpoints' / 'best.ckpt'}", "num_workers=0", "meteor=false"],
    )
    tasks.evaluate(evaluation)
    predictions = json.loads((Path(evaluation.paths.output_dir) / "predictions.json").read_text())
    assert len(predictions) == 200
    assert metrics["test/BLEU-4"] == pytest.approx(
        json.loads((Path(evaluation.paths.output_dir) / "metrics.json").read_text())["test/BLEU-4"],
        abs=1e-9,
    )

    # The same captions scored against other images' references: a captioner that ignores the
    # image would score about as well as above.
    hypotheses = [p["hypothesis"] for p in predictions]
    references = [p["references"] for p in predictions]
    shuffled = references[7:] + references[:7]  # a rotation: no image keeps its own references
    shuffled_bleu4 = compute_caption_metrics(hypotheses, shuffled, meteor=False)["BLEU-4"]
    assert shuffled_bleu4 < 0.35, shuffled_bleu4

    truth = json.loads((tmp_path / "data" / "shapes" / "shapes.json").read_text())["images"]
    assert word_accuracy(predictions, truth, set(COLOURS)) >= 0.9
    assert word_accuracy(predictions, truth, set(SHAPES)) >= 0.9

    # Attention looks where the named shape is: for each colour word of a two-shape caption,
    # the share of attention on the image half (left/right) holding that shape.
    model, _ = load_captioner(run / "checkpoints" / "best.ckpt")
    transform = eval_transform(64)
    shares = []
    for p in predictions[:100]:
        shapes = truth[p["image"]]
        if len(shapes) != 2:
            continue
        image = transform(load_image(tmp_path / "data" / "shapes" / "Images" / p["image"]))
        captions, result = model.caption_features(model.encoder(image[None]))
        grid = result.alphas[0].reshape(-1, 4, 4)  # (L, rows, cols) over the 64 px image
        for position, word in enumerate(captions[0].split()):
            named = [s for s in shapes if s["colour"] == word]
            if len(named) == 1:
                columns = slice(0, 2) if named[0]["position"] == "left" else slice(2, 4)
                shares.append(grid[position, :, columns].sum().item())
    assert len(shares) > 50
    # An image-blind attention gives 0.5; the demo model measured 0.70 on 104 such words.
    assert sum(shares) / len(shares) > 0.6, sum(shares) / len(shares)


def epoch_means(run: Path, key: str) -> list[float]:
    """The per-epoch values of ``key`` from the run's CSV log, in epoch order."""
    with open(run / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(key)]
    return [float(r[key]) for r in sorted(rows, key=lambda r: int(r["epoch"]))]


@pytest.mark.slow
def test_scst_from_the_demo_checkpoint_raises_validation_cider_and_the_reward(demo_run):
    root, xe_run = demo_run
    start = json.loads((xe_run / "metrics.json").read_text())
    cfg = compose_config(
        root / "scst",
        "train",
        [
            "experiment=demo_scst",
            f"init_from={xe_run / 'checkpoints' / 'best.ckpt'}",
            f"data.root={root / 'data' / 'shapes'}",
            "callbacks.progress_bar=null",
        ],
    )
    tasks.train(cfg)
    run = Path(cfg.paths.output_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["init_from"] == str(xe_run / "checkpoints" / "best.ckpt")
    # best.ckpt of the demo is the epoch whose validation scores metrics.json holds
    assert metrics["val/CIDEr"] > start["val/CIDEr"] + 0.1, (start["val/CIDEr"], metrics)
    assert metrics["test/CIDEr"] > start["test/CIDEr"], (start["test/CIDEr"], metrics)
    rewards = epoch_means(run, "train/reward_epoch")
    assert len(rewards) == cfg.trainer.max_epochs and rewards[-1] > rewards[0], rewards
    samples = json.loads((run / "samples" / "train_epoch_000.json").read_text())
    assert samples and {"sample", "reward", "references"} <= set(samples[0])


@pytest.mark.slow
def test_transformer_decoder_meets_the_demo_bar(tmp_path):
    cfg = compose_train(
        tmp_path, ["experiment=demo", "model/decoder=transformer", "callbacks.progress_bar=null"]
    )
    tasks.train(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["test/BLEU-4"] >= 0.80, metrics
    model, _ = load_captioner(metrics["best_checkpoint"])
    assert type(model.decoder).__name__ == "TransformerDecoder"
