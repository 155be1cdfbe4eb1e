"""The Python API (`Captioner`) and the scripts built on it: caption.py's overlays show the crop
the model saw, unreadable images are skipped, evaluate.py writes COCO files that pycocotools
and pycocoevalcap score to the numbers in metrics.json."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcap import Captioner
from imgcap.api.captioner import Caption
from imgcap.data.transforms import eval_transform
from imgcap.errors import ConfigError, DataError
from imgcap.run import tasks
from tests.support.hydra_helpers import compose_config, compose_train
from tests.support.runs import TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny model trained one epoch with validation every 5 epochs: the run still validates
    after its last epoch, so it has a best checkpoint. Returns the run directory."""
    tmp = tmp_path_factory.mktemp("captioner")
    cfg = compose_train(
        tmp, [*TINY, "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=5", "logger=csv"]
    )
    objective = tasks.train(cfg)
    assert isinstance(objective, float)  # the sweep objective exists after one epoch
    return Path(cfg.paths.output_dir)


@pytest.fixture()
def photos(tmp_path) -> list[Path]:
    """Two non-square photos: a wide one with a red left half, a tall one."""
    wide = np.zeros((40, 100, 3), np.uint8)
    wide[:, :50] = (255, 0, 0)
    wide[:, 50:] = (0, 0, 255)
    tall = np.full((90, 30, 3), 200, np.uint8)
    tall[:45] = (0, 255, 0)
    paths = [tmp_path / "wide.png", tmp_path / "tall.png"]
    Image.fromarray(wide).save(paths[0])
    Image.fromarray(tall).save(paths[1])
    return paths


def test_short_run_validates_after_its_last_epoch(trained):
    assert (trained / "checkpoints" / "best.ckpt").is_file()
    assert list((trained / "samples").glob("epoch_000.json"))
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["best_epoch"] == 0 and "val/CIDEr" in metrics
    # How the scores were made.
    assert metrics["split_source"] == "official" and metrics["split_sizes"]["test"] == 6
    assert metrics["beam_size"] == 1 and metrics["length_penalty"] == 1.0
    assert metrics["scoring"]["tokenizer"] in ("stanford-ptb-java", "python-ptb-imitation")
    assert metrics["scoring"]["meteor"] is False  # switched off in TINY


def test_captioner_round_trip(trained, photos):
    cap = Captioner.from_checkpoint(trained / "checkpoints" / "best.ckpt", device="cpu")
    assert cap.image_size == 32 and cap.device == torch.device("cpu")
    pil = Image.open(photos[1])
    captions = cap([photos[0], pil], beam_size=3)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    # Batched equals one at a time, paths equal PIL images.
    assert captions == [cap(photos[0], beam_size=3)[0], cap([pil], beam_size=3)[0]]
    assert cap(photos, beam_size=3, batch_size=1) == cap([str(p) for p in photos], beam_size=3)

    detailed = cap(photos, beam_size=3, attention=True)
    for c, text in zip(detailed, captions, strict=True):
        assert isinstance(c, Caption) and c.caption == text and c.words == text.split()
        assert c.attention.shape == (len(c.words), 2, 2)  # encoded_size=2 in TINY
        if c.words:
            assert torch.allclose(c.attention.sum(dim=(1, 2)), torch.ones(len(c.words)), atol=1e-5)
        assert c.image.size == (32, 32)


def test_the_crop_returned_is_what_the_model_saw(trained, photos):
    cap = Captioner.from_checkpoint(trained / "checkpoints" / "best.ckpt", device="cpu")
    seen = []
    cap.model.encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    results = cap(photos, attention=True)
    pixels = seen[0]  # (2, 3, 32, 32)
    for i, (result, path) in enumerate(zip(results, photos, strict=True)):
        shown = _normalise(result.image)
        assert torch.allclose(shown, pixels[i], atol=1e-6)
        # ... and it is the evaluation transform used in training and for the feature cache.
        assert torch.allclose(eval_transform(32)(Image.open(path).convert("RGB")), pixels[i])


def _normalise(image: Image.Image) -> torch.Tensor:
    return eval_transform(image.size[0])(image)  # a square S x S crop maps onto itself


def test_caption_overlays_show_the_crop_the_model_saw(trained, photos, tmp_path, monkeypatch):
    import imgcap.api.visualize

    drawn = []
    original = imgcap.api.visualize.attention_overlay

    def spy(image, words, alphas, path=None, **kwargs):
        drawn.append(image)
        return original(image, words, alphas, path=path, **kwargs)

    monkeypatch.setattr(imgcap.api.visualize, "attention_overlay", spy)
    cap = Captioner.from_checkpoint(trained / "checkpoints" / "best.ckpt", device="cpu")
    seen = []
    monkeypatch.setattr(Captioner, "from_checkpoint", classmethod(lambda cls, *a, **k: cap))
    cap.model.encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    cfg = compose_config(
        tmp_path,
        "caption",
        [f"ckpt={trained / 'checkpoints' / 'best.ckpt'}", f"images=[{photos[0]},{photos[1]}]"],
    )
    cfg.attention = True
    results = tasks.caption(cfg)
    with_words = [i for i, r in enumerate(results) if r["caption"]]
    assert len(drawn) == len(with_words)
    for image, i in zip(drawn, with_words, strict=True):
        assert image.size == (32, 32)  # the crop, not the full frame squashed
        assert torch.allclose(_normalise(image), seen[0][i], atol=1e-6)


def test_caption_skips_an_unreadable_image_and_captions_the_rest(trained, photos, tmp_path, caplog):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    cfg = compose_config(
        tmp_path,
        "caption",
        [
            f"ckpt={trained / 'checkpoints' / 'best.ckpt'}",
            f"images=[{photos[0]},{broken},{photos[1]}]",
        ],
    )
    # The warning goes through logging (the console's stderr handler and caption.log).
    with caplog.at_level(logging.WARNING):
        results = tasks.caption(cfg)
    assert [r["image"] for r in results] == [str(photos[0]), str(photos[1])]
    warnings = [r.getMessage() for r in caplog.records if "broken.jpg" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipped")
    skipped = json.loads((Path(cfg.paths.output_dir) / "skipped.json").read_text())
    assert skipped == [str(broken)]
    # Alone, an unreadable image is an error.
    cfg.images = [str(broken)]
    with pytest.raises(DataError, match="broken.jpg"):
        tasks.caption(cfg)


@pytest.mark.parametrize("value", [0, -1, 1.5])
def test_caption_rejects_beam_sizes_below_one(trained, photos, tmp_path, value):
    cfg = compose_config(
        tmp_path,
        "caption",
        [f"ckpt={trained / 'checkpoints' / 'best.ckpt'}", f"images={photos[0]}"],
    )
    cfg.beam_size = value
    with pytest.raises(ConfigError, match="beam_size"):
        tasks.caption(cfg)
    with pytest.raises(ConfigError, match="beam_size"):
        Captioner.from_checkpoint(trained / "checkpoints" / "best.ckpt")(photos, beam_size=value)


@pytest.mark.parametrize("meteor", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_coco_files_score_like_metrics_json(trained, tmp_path, meteor):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from pycocotools.coco import COCO

    from imgcap.metrics import java_available

    if not java_available():
        pytest.skip("pycocoevalcap's tokenizer and METEOR need Java")
    cfg = compose_config(
        tmp_path,
        "evaluate",
        [
            f"ckpt={trained / 'checkpoints' / 'best.ckpt'}",
            "beam_size=[2,1]",
            "num_workers=0",
            f"meteor={str(meteor).lower()}",
        ],
    )
    metrics = tasks.evaluate(cfg)
    out = Path(cfg.paths.output_dir)
    assert metrics["scoring"] == {
        "tokenizer": "stanford-ptb-java",
        "meteor": meteor,
        "spice": False,
        "scorer": "pycocoevalcap",
    }
    assert metrics["split"] == "test" and metrics["split_source"] == "official"
    assert metrics["beam_size"] == 2 and metrics["length_penalty"] == 1.0
    assert metrics["checkpoint"] == str((trained / "checkpoints" / "best.ckpt").resolve())

    # Exactly what coco-caption's COCOEvalCap does, minus SPICE (it downloads a model).
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out / "references_coco.json"))
        results = coco.loadRes(str(out / "results_coco.json"))
        image_ids = results.getImgIds()
        gts = {i: coco.imgToAnns[i] for i in image_ids}
        res = {i: results.imgToAnns[i] for i in image_ids}
        tokenizer = PTBTokenizer()
        gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
        scores = {}
        bleu, _ = Bleu(4).compute_score(gts, res)
        scores.update({f"BLEU-{n + 1}": b for n, b in enumerate(bleu)})
        if meteor:  # a JVM that loads paraphrase tables: about 15 s
            scores["METEOR"], _ = Meteor().compute_score(gts, res)
        scores["ROUGE-L"], _ = Rouge().compute_score(gts, res)
        scores["CIDEr"], _ = Cider().compute_score(gts, res)
    assert len(image_ids) == 6
    assert set(scores) == {k.split("/")[1] for k in metrics if k.startswith("test/")}
    for name, value in scores.items():
        assert metrics[f"test/{name}"] == pytest.approx(value, abs=1e-9), name
    # The second beam size has its own results file over the same references.
    beam1 = json.loads((out / "results_coco_beam1.json").read_text())
    assert [r["image_id"] for r in beam1] == [
        r["image_id"] for r in json.loads((out / "results_coco.json").read_text())
    ]


def test_evaluate_takes_data_root_from_the_command_line(trained, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(trained.parent / "data" / "shapes", moved)
    shutil.rmtree(trained.parent / "data" / "shapes")
    try:
        cfg = compose_config(
            tmp_path,
            "evaluate",
            [
                f"ckpt={trained / 'checkpoints' / 'best.ckpt'}",
                f"data.root={moved}",
                "num_workers=0",
                "meteor=false",
            ],
        )
        metrics = tasks.evaluate(cfg)
        assert metrics["num_images"] == 6 and str(moved) in metrics["caption_file"]
    finally:
        shutil.copytree(moved, trained.parent / "data" / "shapes")


def test_evaluate_accepts_ckpt_path_and_checks_only_the_scored_images(trained, tmp_path):
    """``ckpt_path=`` works like ``ckpt=``; a broken training image does not stop scoring the
    test split (only the scored images are checked)."""
    copy = tmp_path / "shapes"
    shutil.copytree(trained.parent / "data" / "shapes", copy)
    ckpt = trained / "checkpoints" / "best.ckpt"
    cfg = compose_config(
        tmp_path,
        "evaluate",
        [f"ckpt_path={ckpt}", f"data.root={copy}", "num_workers=0", "meteor=false"],
    )
    train_image = copy / "Images" / cfg_train_image(copy)
    train_image.write_bytes(train_image.read_bytes()[:100])  # truncated: fails the check
    metrics = tasks.evaluate(cfg)
    assert metrics["num_images"] == 6 and metrics["checkpoint"] == str(ckpt.resolve())
    # Scoring the split that holds the broken image still reports it in one line.
    cfg.split = "val"
    train_list = (copy / "Flickr8k_text" / "Flickr_8k.trainImages.txt").read_text().split()
    (copy / "Flickr8k_text" / "Flickr_8k.devImages.txt").write_text(train_image.name + "\n")
    (copy / "Flickr8k_text" / "Flickr_8k.trainImages.txt").write_text(
        "\n".join(train_list[1:]) + "\n"
    )
    with pytest.raises(DataError, match=train_image.name):
        tasks.evaluate(cfg)


def cfg_train_image(root: Path) -> str:
    """The first training image of a shapes set (official split lists in its root)."""
    return (root / "Flickr8k_text" / "Flickr_8k.trainImages.txt").read_text().split()[0]


@pytest.mark.parametrize("given", [["ckpt=a.ckpt", "ckpt_path=b.ckpt"], []])
def test_evaluate_wants_exactly_one_checkpoint(tmp_path, given):
    cfg = compose_config(tmp_path, "evaluate", given)
    with pytest.raises(ConfigError, match=r"ckpt=.*ckpt_path="):
        tasks.evaluate(cfg)


def test_cuda_on_a_machine_without_it_says_so(trained, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ckpt = trained / "checkpoints" / "best.ckpt"
    for device in ("cuda", "gpu", "cuda:0"):
        with pytest.raises(ConfigError, match="CUDA is not available") as err:
            Captioner.from_checkpoint(ckpt, device=device)
        assert "truncated" not in str(err.value) and "\n" not in str(err.value)
    assert Captioner.from_checkpoint(ckpt, device="cpu").device.type == "cpu"
