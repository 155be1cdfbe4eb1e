"""The entry scripts as a user runs them (subprocesses): an Optuna sweep of the demo returns an
objective, the demo's console carries no noise, DDP runs on CPU with gloo."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.support.runs import TINY
from tests.support.scripts import REPO, run_script

# What one demo run used to print besides its progress bars and its own summary.
NOISE = {
    "advertising tip": r"Tip:|litlogger|litmodels",
    "deprecation": r"[Dd]eprecat",
    "worker-count warning": r"does not have many workers",
    "pin-memory warning": r"'pin_memory' argument",
    "model summary with FLOPs": r"FLOPs",
    "Lightning's test table": r"Test metric|DataLoader 0\s*┃",
    "logger line": r"logger None|: WandbLogger",
}


@pytest.mark.slow
def test_optuna_sweep_of_the_demo_returns_a_float_objective(tmp_path):
    pytest.importorskip("hydra_plugins.imgcap_sweeper")
    sweep = tmp_path / "sweep"
    done = run_script(
        [
            str(REPO / "train.py"),
            "-m",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "experiment=demo",
            "trainer.max_epochs=1",
            # The demo on a fifth of its generated images, to keep the test short.
            "data.synthetic.num_images=400",
            "test=false",
            f"paths.root_dir={tmp_path}",
            f"hydra.sweep.dir={sweep}",
            "callbacks.progress_bar=null",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert isinstance(result["best_value"], float)
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["best_checkpoint"].endswith("best.ckpt")  # validated after epoch 1 of 1
        assert "val/BLEU-4" in metrics  # the demo's monitor is the objective
    assert result["best_value"] == max(
        json.loads((sweep / j / "metrics.json").read_text())["val/BLEU-4"] for j in ("0", "1")
    )


@pytest.mark.slow
def test_demo_console_has_progress_and_one_summary_but_no_noise(trained_demo):
    done, tmp_path = trained_demo.console, trained_demo.root  # train.py experiment=demo
    assert done.returncode == 0, done.stderr[-3000:]
    for what, pattern in NOISE.items():
        for stream in (done.stderr, done.stdout):
            hits = [line for line in stream.splitlines() if re.search(pattern, line)]
            assert not hits, f"{what}: {hits[:3]}"
    assert "Epoch 0" in done.stderr + done.stdout  # the progress bar stays
    assert done.stdout.count("test scores (") == 1
    assert done.stdout.count("split: official") == 1
    assert re.search(r"^model: [\d.]+ [KM] parameters", done.stdout, re.M)
    assert done.stdout.startswith("config\n")  # the tree, once
    assert done.stdout.count("\n├── data") == 1
    (run,) = (tmp_path / "outputs" / "train" / "runs").glob("*/*")
    assert (run / "config_tree.log").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.slow
def test_ddp_sim_trains_two_processes_on_cpu(tmp_path):
    train = run_script(
        [
            str(REPO / "train.py"),
            *TINY,
            "trainer=ddp_sim",
            "trainer.max_epochs=1",
            "logger=csv",
            f"paths.root_dir={tmp_path}",
        ],
        tmp_path,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert train.stdout.count("\n├── data") == 1  # rank zero only
    assert train.stdout.count("test scores (") == 1
    (run,) = (tmp_path / "outputs" / "train" / "runs").glob("*/*")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split_sizes"]["test"] == 6 and "test/BLEU-4" in metrics


# Small settings appended to the design card's lines so that each runs in seconds.
CARD_SMALL = [
    "experiment=demo",
    "trainer.max_epochs=1",
    "data.synthetic.num_images=60",
    "test=false",
    "print_config=false",
    "callbacks.progress_bar=null",
]


@pytest.mark.slow
def test_the_design_cards_lines_work_as_written(tmp_path):
    # python train.py model.attention_dim=512
    single = run_script(
        [
            str(REPO / "train.py"),
            "model.attention_dim=512",
            *CARD_SMALL,
            f"paths.root_dir={tmp_path}",
        ],
        tmp_path,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").glob("*/*")
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert saved["model"]["decoder"]["attention_dim"] == 512  # the real key, not the alias
    assert "attention_dim" not in saved["model"]
    # python train.py -m model.attention_dim=256,512
    sweep = tmp_path / "sweep"
    multi = run_script(
        [
            str(REPO / "train.py"),
            "-m",
            "model.attention_dim=256,512",
            *CARD_SMALL,
            f"paths.root_dir={tmp_path}",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    sizes = sorted(
        yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())["model"]["decoder"][
            "attention_dim"
        ]
        for job in ("0", "1")
    )
    assert sizes == [256, 512]
    # An alias the selected decoder does not have: one line, exit 2, before any work.
    wrong = run_script(
        [
            str(REPO / "train.py"),
            "model/decoder=transformer",
            "model.attention_dim=512",
            *CARD_SMALL,
            f"paths.root_dir={tmp_path / 'wrong'}",
        ],
        tmp_path,
    )
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines() == [
        "error: model.attention_dim (= model.decoder.attention_dim) is not a setting of the "
        "transformer decoder; its settings are ['d_model', 'num_layers', 'num_heads', 'ff_dim', "
        "'dropout', 'attention_dropout', 'max_len', 'tie_embeddings', 'region_positions']"
    ]
    assert not (tmp_path / "wrong" / "data").exists()  # refused before the data was generated
