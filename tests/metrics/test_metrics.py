"""Caption metrics: the wrapper must reproduce raw pycocoevalcap and degrade without Java."""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from imgcap.metrics import (
    METRIC_KEYS,
    CaptionMetric,
    MetricsWarning,
    compute_caption_metrics,
    java_available,
    ptb_tokenize,
    python_ptb_tokenize,
)
from imgcap.metrics import common as metrics_common
from imgcap.metrics import meteor as metrics_meteor
from imgcap.metrics import ptb as metrics_tokenize

needs_java = pytest.mark.skipif(not java_available(), reason="Java is not installed")

# Five human captions for three Flickr8k images, copied verbatim from captions.txt.
FIXED_CAPTIONS = [
    [
        "A collage of one person climbing a cliff .",
        "A group of people are rock climbing on a rock climbing wall .",
        "A group of people climbing a rock while one man belays",
        "Seven climbers are ascending a rock face whilst another man stands holding the rope .",
        "Several climbers in a row are climbing the rock while the man in red watches and "
        "holds the line .",
    ],
    [
        "A brown dog chases the water from a sprinkler on a lawn .",
        "a brown dog plays with the hose .",
        "A brown dog running on a lawn near a garden hose",
        "A dog is playing with a hose .",
        "Large brown dog running away from the sprinkler in the grass .",
    ],
    [
        "A man uses ice picks and crampons to scale ice .",
        "an ice climber in a blue jacket and black pants is scaling a frozen ice wall .",
        "An ice climber scaling a frozen waterfall .",
        "A person in blue and red ice climbing with two picks .",
        "Climber climbing an ice wall",
    ],
]

# Stanford PTBTokenizer 3.4.1 (-preserveLines -lowerCase) output after pycocoevalcap's
# punctuation removal, recorded with Java 17.
PTB_CASES = [
    ("A man in Area B. He runs.", "a man in area b he runs"),
    (
        "Mr. Smith and Mrs. Jones at St. Paul etc. near Mt. Fuji in Jan. with Dr. No.",
        "mr. smith and mrs. jones at st. paul etc. near mt. fuji in jan. with dr. no",
    ),
    ("a dog at 5 p.m. in the U.S.", "a dog at 5 p.m. in the u.s."),
    ("the dog. the cat,the mouse", "the dog the cat the mouse"),
    (
        "a dog's toy and the dogs' toys , the kids's ball",
        "a dog 's toy and the dogs toys the kids 's ball",
    ),
    ("\"Dog\" 'cat' the 'big' dog isn't here", "dog cat the big dog is n't here"),
    ("A dog , cat ... and mouse...", "a dog cat and mouse"),
    (
        "a man wearing a t-shirt with #23 on it at 3:30",
        "a man wearing a t-shirt with # 23 on it at 3:30",
    ),
    (
        "I'm we're you've they'll he'd can't won't cannot gonna",
        "i 'm we 're you 've they 'll he 'd ca n't wo n't can not gon na",
    ),
    ("the 90's and the '90s rock 'n' roll", "the 90 's and the '90s rock 'n' roll"),
    ("wow?! really!! (dog) U.S.A. flag", "wow ?! really !! -lrb- dog -rrb- u.s.a. flag"),
    (
        "a girl in a pink shirt(smiling) [x] {y}",
        "a girl in a pink shirt -lrb- smiling -rrb- -lsb- x -rsb- -lcb- y -rcb-",
    ),
    ("a dog's. -5 degrees x-ray, A/B test", "a dog 's -5 degrees x-ray a/b test"),
    ("it is a dog--a big one $5 50% 1,000 3.5", "it is a dog a big one $ 5 50 % 1,000 3.5"),
    ("Two men - one in red - stand", "two men one in red stand"),
    ("A DOG RUNS ON THE BEACH\n", "a dog runs on the beach"),
    ("", ""),
    ("  .  ", ""),
]
# The one recorded difference: a single letter with a period ending the caption stays "a." in
# Java (abbreviation rule), the Python imitation splits it.
PTB_KNOWN_DIFFERENCES = [("a.", "a.", "a")]


def _sample_dir() -> Path | None:
    value = os.environ.get("IMGCAP_FLICKR8K_SAMPLE")
    return Path(value) if value else None


def _sample_captions() -> list[list[str]]:
    folder = _sample_dir()
    if folder is None:
        pytest.skip("IMGCAP_FLICKR8K_SAMPLE is not set")
    by_image: dict[str, list[str]] = defaultdict(list)
    with open(folder / "captions.txt", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_image[row["image"]].append(row["caption"])
    return list(by_image.values())


def _leave_one_out(captions: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    return [c[0] for c in captions], [c[1:] for c in captions]


def _raw_pycocoevalcap(hyps, refs, meteor=True) -> dict[str, float]:
    """The reference computation, straight from the pycocoevalcap classes."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in r] for i, r in enumerate(refs)})
    res = tokenizer.tokenize({i: [{"caption": h}] for i, h in enumerate(hyps)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU-{n + 1}": b for n, b in enumerate(bleu)}
    if meteor:
        scorer = Meteor()
        try:
            out["METEOR"] = scorer.compute_score(gts, res)[0]
        finally:
            scorer.__del__()  # kills its JVM now instead of at garbage collection
    out["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = Cider().compute_score(gts, res)[0]
    return out


def _meteor_children() -> list[int]:
    """PIDs of METEOR JVMs started by this process (Linux /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"meteor" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(metrics_common, "_warned", set())


# --------------------------------------------------------------------------------------------
# Reference equality
# --------------------------------------------------------------------------------------------


@needs_java
def test_wrapper_equals_raw_pycocoevalcap_fixed_example():
    hyps, refs = _leave_one_out(FIXED_CAPTIONS)
    ours = compute_caption_metrics(hyps, refs, meteor=False)
    raw = _raw_pycocoevalcap(hyps, refs, meteor=False)
    assert list(ours) == [k for k in METRIC_KEYS if k != "METEOR"]
    for key in ours:
        assert ours[key] == pytest.approx(raw[key], abs=1e-9), key
    assert 0.0 < ours["BLEU-4"] < ours["BLEU-1"] < 1.0


@needs_java
@pytest.mark.slow  # two METEOR JVMs: 5-25 s depending on load
def test_wrapper_equals_raw_pycocoevalcap_with_meteor_and_empty_hypotheses():
    hyps, refs = _leave_one_out(FIXED_CAPTIONS)
    hyps, refs = hyps + ["", " . ", hyps[0]], refs + refs
    ours = compute_caption_metrics(hyps, refs)
    raw = _raw_pycocoevalcap(hyps, refs)
    assert list(ours) == list(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(raw[key], abs=1e-9), key
    assert 0.0 < ours["METEOR"] < 1.0
    if Path("/proc").is_dir():
        assert _meteor_children() == [], "METEOR JVM left running"


@needs_java
@pytest.mark.slow  # two METEOR JVMs
def test_wrapper_equals_raw_pycocoevalcap_on_sample():
    captions = _sample_captions()[:20]
    hyps, refs = _leave_one_out(captions)
    ours = compute_caption_metrics(hyps, refs)
    raw = _raw_pycocoevalcap(hyps, refs)
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(raw[key], abs=1e-9), key


@needs_java
def test_java_subprocess_output_is_silenced(capfd):
    hyps, refs = _leave_one_out(FIXED_CAPTIONS)
    compute_caption_metrics(hyps, refs, meteor=False)
    out, err = capfd.readouterr()
    assert out == "" and err == "", "PTBTokenizer or pycocoevalcap printed something"


@needs_java
def test_empty_hypotheses_score_like_raw():
    hyps, refs = _leave_one_out(FIXED_CAPTIONS)
    hyps = ["", " . ", hyps[2]]
    ours = compute_caption_metrics(hyps, refs, meteor=False)
    raw = _raw_pycocoevalcap(hyps, refs, meteor=False)
    assert ours == pytest.approx(raw, abs=1e-9)
    assert ours["BLEU-1"] > 0.0


def test_empty_hypotheses_do_not_crash_without_java(monkeypatch, tmp_path, fresh_warnings):
    monkeypatch.setenv("PATH", str(tmp_path))
    hyps, refs = _leave_one_out(FIXED_CAPTIONS)
    with pytest.warns(MetricsWarning):
        full = compute_caption_metrics(hyps, refs)
        blank = compute_caption_metrics(["", "...", hyps[2]], refs)
    assert all(math.isfinite(v) for v in blank.values())
    assert blank["CIDEr"] < full["CIDEr"] and blank["BLEU-1"] < full["BLEU-1"]


def test_input_validation():
    with pytest.raises(ValueError, match="no captions"):
        compute_caption_metrics([], [])
    with pytest.raises(ValueError, match="2 reference lists"):
        compute_caption_metrics(["a dog"], [["a dog"], ["a cat"]])
    with pytest.raises(ValueError, match="non-empty list"):
        compute_caption_metrics(["a dog"], ["a dog"])


def test_perfect_hypothesis_only_when_matching():
    refs = FIXED_CAPTIONS
    perfect = compute_caption_metrics([r[1] for r in refs], refs, meteor=False)
    assert perfect["BLEU-4"] > 0.999 and perfect["BLEU-1"] > 0.999
    assert perfect["ROUGE-L"] > 0.999
    # Each hypothesis is a real caption, but of another image.
    shuffled = compute_caption_metrics([refs[(i + 1) % 3][1] for i in range(3)], refs, meteor=False)
    assert shuffled["BLEU-4"] < 0.2
    assert shuffled["CIDEr"] < 0.25 * perfect["CIDEr"]
    assert shuffled["ROUGE-L"] < 0.6 * perfect["ROUGE-L"]


# --------------------------------------------------------------------------------------------
# Without Java / with a broken METEOR
# --------------------------------------------------------------------------------------------


def test_java_missing_skips_meteor_with_one_warning(monkeypatch, tmp_path, fresh_warnings):
    hyps, refs = _leave_one_out(FIXED_CAPTIONS)
    with_java = compute_caption_metrics(hyps, refs, meteor=False) if java_available() else None

    monkeypatch.setenv("PATH", str(tmp_path))  # a folder without java
    assert not java_available()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = compute_caption_metrics(hyps, refs)
        second = compute_caption_metrics(hyps, refs)
    ours = [w for w in caught if issubclass(w.category, MetricsWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    message = str(ours[0].message)
    assert "METEOR is skipped" in message and "Java >= 8" in message and "install" in message
    assert "METEOR" not in first
    assert list(first) == [k for k in METRIC_KEYS if k != "METEOR"]
    assert first == second
    if with_java is not None:  # identical tokens on these captions, so identical scores
        for key, value in with_java.items():
            assert first[key] == pytest.approx(value, abs=1e-9), key


def test_java_missing_on_sample_close_to_java(monkeypatch, tmp_path, fresh_warnings):
    if not java_available():
        pytest.skip("Java is not installed")
    hyps, refs = _leave_one_out(_sample_captions()[:40])
    with_java = compute_caption_metrics(hyps, refs, meteor=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.warns(MetricsWarning, match="Java"):
        without = compute_caption_metrics(hyps, refs)
    assert "METEOR" not in without
    for key, value in with_java.items():
        assert without[key] == pytest.approx(value, abs=1e-6), key


@needs_java
def test_meteor_failure_degrades_to_warning(monkeypatch, fresh_warnings):
    monkeypatch.setattr(metrics_meteor, "_METEOR_CMD", ["java", "-jar", "/nonexistent/meteor.jar"])
    hyps, refs = _leave_one_out(FIXED_CAPTIONS)
    with pytest.warns(MetricsWarning, match="METEOR is skipped"):
        scores = compute_caption_metrics(hyps, refs)
    assert "METEOR" not in scores and "CIDEr" in scores
    if Path("/proc").is_dir():
        assert _meteor_children() == [], "METEOR JVM left running"


# --------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------


def test_python_tokenizer_matches_recorded_java_output():
    inputs = [text for text, _ in PTB_CASES]
    assert python_ptb_tokenize(inputs) == [expected for _, expected in PTB_CASES]
    for text, _java, python in PTB_KNOWN_DIFFERENCES:
        assert python_ptb_tokenize([text]) == [python]


@needs_java
def test_java_tokenizer_matches_recorded_output_and_raw_class():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    cases = PTB_CASES + [(text, java) for text, java, _ in PTB_KNOWN_DIFFERENCES]
    inputs = [text for text, _ in cases]
    assert ptb_tokenize(inputs) == [expected for _, expected in cases]
    non_empty = {i: [{"caption": t}] for i, t in enumerate(inputs) if t.strip()}
    raw = PTBTokenizer().tokenize(non_empty)
    assert [raw[i][0] for i in non_empty] == [cases[i][1] for i in non_empty]


@needs_java
def test_python_tokenizer_matches_java_on_sample():
    captions = [c for caps in _sample_captions() for c in caps]
    java = metrics_tokenize._java_ptb_tokenize(captions)
    python = python_ptb_tokenize(captions)
    differing = [(c, j, p) for c, j, p in zip(captions, java, python, strict=True) if j != p]
    assert differing == []


# --------------------------------------------------------------------------------------------
# CaptionMetric
# --------------------------------------------------------------------------------------------


def _metric_example() -> tuple[list[str], list[list[str]]]:
    return _leave_one_out(FIXED_CAPTIONS)


def test_caption_metric_accumulates_and_resets():
    hyps, refs = _metric_example()
    expected = compute_caption_metrics(hyps, refs, meteor=False)

    metric = CaptionMetric(meteor=False)
    metric.update(hyps[:2], refs[:2])
    assert metric(hyps[2:], refs[2:]) is None  # forward only accumulates
    assert metric.compute() == expected

    metric.reset()
    assert metric.hypotheses == [] and metric.references == []
    metric.update(hyps[:2], refs[:2])
    assert metric.compute() == compute_caption_metrics(hyps[:2], refs[:2], meteor=False)
    assert metric.compute() != expected


def test_caption_metric_dedupes_padded_images():
    hyps, refs = _metric_example()
    expected = compute_caption_metrics(hyps, refs, meteor=False)
    # A DistributedSampler pads the last batch by repeating the first images.
    padded_h, padded_r = hyps + hyps[:1], refs + refs[:1]
    assert compute_caption_metrics(padded_h, padded_r, meteor=False) != expected

    metric = CaptionMetric(meteor=False)
    metric.update(padded_h[:2], padded_r[:2], image_ids=torch.tensor([10, 11]))
    metric.update(padded_h[2:], padded_r[2:], image_ids=[12, 10])
    assert metric.compute() == expected

    metric.reset()
    metric.update(hyps[:1], refs[:1], image_ids=[1])
    with pytest.raises(ValueError, match="every update or in none"):
        metric.update(hyps[1:], refs[1:])


def test_caption_metric_survives_device_and_dtype_moves():
    hyps, refs = _metric_example()
    metric = CaptionMetric(meteor=False)
    metric.update(hyps, refs)
    metric = metric.to("cpu").to(torch.float64)
    assert metric.hypotheses == hyps
    assert metric.compute() == compute_caption_metrics(hyps, refs, meteor=False)


def test_caption_metric_syncs_through_a_process_group(tmp_path):
    hyps, refs = _metric_example()
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        metric = CaptionMetric(meteor=False)
        metric.update(hyps, refs, image_ids=[0, 1, 2])
        assert metric.compute() == compute_caption_metrics(hyps, refs, meteor=False)
        assert metric.hypotheses == hyps  # local state restored after the synced compute
    finally:
        dist.destroy_process_group()


def _ddp_worker(rank: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        hyps, refs = _metric_example()
        # DistributedSampler order for 3 images on 2 ranks: rank 0 gets 0, 2; rank 1 gets 1, 0.
        mine = [0, 2] if rank == 0 else [1, 0]
        metric = CaptionMetric(meteor=False)
        metric.update([hyps[i] for i in mine], [refs[i] for i in mine], image_ids=mine)
        scores = metric.compute()
        torch.save(scores, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_caption_metric_gathers_across_two_processes(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    hyps, refs = _metric_example()
    expected = compute_caption_metrics(
        [hyps[i] for i in (0, 2, 1)], [refs[i] for i in (0, 2, 1)], meteor=False
    )
    for rank in range(2):
        scores = torch.load(tmp_path / f"rank{rank}.pt")
        assert scores == pytest.approx(expected, abs=1e-12)


def test_meteor_says_what_it_scores(monkeypatch, caplog):
    """The status line comes before the JVM starts (here it fails at once)."""
    import logging
    import subprocess

    from imgcap.metrics import meteor

    def no_java(*args, **kwargs):
        raise OSError("java: not found")

    monkeypatch.setattr(subprocess, "Popen", no_java)
    gts = {i: ["a dog runs"] for i in range(3)}
    with caplog.at_level(logging.INFO, logger="imgcap"), pytest.raises(OSError):
        meteor.meteor_score(gts, {i: ["a dog"] for i in range(3)})
    assert [r.getMessage() for r in caplog.records] == ["scoring METEOR on 3 captions (Java) ..."]
