"""A checkpoint written before the package layout changed still resumes, evaluates and captions.

``fixtures/checkpoint_format2.ckpt`` was written at git 2f18a71, when the LightningModule lived
in ``imgcap.captioning_module`` and the callbacks in ``imgcap.callbacks``; its run config names those
import paths. It is the ``last.ckpt`` of::

    python train.py data=shapes data.synthetic.num_images=40 data.synthetic.image_size=32 \
      data.image_size=32 data.batch_size=16 model.encoder.arch=small_cnn \
      model.encoder.weights=null model.encoder.fine_tune=all ++model.encoder.width=16 \
      model.encoded_size=2 model.decoder.attention_dim=16 model.decoder.embed_dim=16 \
      model.decoder.decoder_dim=16 model.meteor=false trainer=cpu \
      trainer.num_sanity_val_steps=0 callbacks.progress_bar=null trainer.max_epochs=1 logger=csv

and ``checkpoint_format2_expected.json`` holds what ``evaluate.py beam_size=3`` and
``caption.py`` made of it then, on the same generated shapes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.scripts import REPO, run_script

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OLD = FIXTURES / "checkpoint_format2.ckpt"
EXPECTED = json.loads((FIXTURES / "checkpoint_format2_expected.json").read_text())


def _targets(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return found + [t for value in node.values() for t in _targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in _targets(value)]
    return []


def test_old_import_paths_are_upgraded_in_memory_and_all_import():
    """The file keeps its paths (it is never rewritten); what is read names modules that exist."""
    import importlib

    from imgcap.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_KEY, read_checkpoint

    entry = read_checkpoint(OLD)[CHECKPOINT_KEY]
    assert entry["format"] == CHECKPOINT_FORMAT and entry["upgraded_from"] == 2
    targets = _targets(entry["config"])
    assert "imgcap.captioning_module.CaptioningModule" in targets
    assert not [t for t in targets if t.startswith(("imgcap.module.", "imgcap.csv_history."))]
    for target in targets:
        module, _, name = target.rpartition(".")
        assert hasattr(importlib.import_module(module), name), target


@pytest.fixture(scope="module")
def old_run(tmp_path_factory) -> Path:
    """A copy of the old run folder: ``<tmp>/run/checkpoints/last.ckpt``."""
    tmp = tmp_path_factory.mktemp("old")
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(OLD, tmp / "run" / "checkpoints" / "last.ckpt")
    return tmp


@pytest.mark.slow
def test_old_checkpoint_evaluates_as_it_did(old_run):
    data = old_run / "data" / "shapes"
    done = run_script(
        [
            str(REPO / "evaluate.py"),
            f"ckpt={old_run / 'run' / 'checkpoints' / 'last.ckpt'}",
            f"data.root={data}",
            "beam_size=3",
            "meteor=false",
            f"paths.root_dir={old_run}",
            f"hydra.run.dir={old_run / 'evaluate'}",
        ],
        old_run,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = json.loads((old_run / "evaluate" / "predictions.json").read_text())
    assert predictions == EXPECTED["predictions"]
    metrics = json.loads((old_run / "evaluate" / "metrics.json").read_text())
    for key, value in EXPECTED["evaluate_test_beam3"].items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.slow
def test_old_checkpoint_captions_as_it_did(old_run):
    data = old_run / "data" / "shapes"
    if not data.exists():  # the evaluation above generates the shapes; alone, make them here
        test_old_checkpoint_evaluates_as_it_did(old_run)
    image = data / "Images" / "shape_00000.jpg"
    done = run_script(
        [
            str(REPO / "caption.py"),
            f"ckpt={old_run / 'run' / 'checkpoints' / 'last.ckpt'}",
            f"images={image}",
            f"paths.root_dir={old_run}",
            f"hydra.run.dir={old_run / 'caption'}",
        ],
        old_run,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    captions = json.loads((old_run / "caption" / "captions.json").read_text())
    assert [c["caption"] for c in captions] == [c["caption"] for c in EXPECTED["caption"]]


@pytest.mark.slow
def test_old_checkpoint_resumes_in_its_own_folder(old_run):
    done = run_script(
        [
            str(REPO / "train.py"),
            f"ckpt_path={old_run / 'run' / 'checkpoints' / 'last.ckpt'}",
            "trainer.max_epochs=2",
            f"data.root={old_run / 'data' / 'shapes'}",
        ],
        old_run,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    metrics = json.loads((old_run / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and "test/BLEU-4" in metrics
