"""Every speed target in one run: prints a line per measurement and, with --json, one JSON
object last. Each ratio compares two variants timed alternately in the same process.

    python benchmarks/run_all.py [--json] [--smoke] [--gpu-sections-on-cpu] [--gpu-only]

CPU (always):
  train_step_vs_reference   decoder train step (fwd + bwd + Adam), B=32: the textbook loop
                            (benchmarks/textbook.py) time / imgcap's time (target >= 2.5)
  beam_batched_vs_per_image beam search k=3 over a batch vs one image at a time
  beam_outputs_identical    both give the same captions
  cache_vs_no_cache         one epoch of data + frozen encoder without / with the feature cache
  cpu_epoch_data_overhead   an epoch of decoder steps on resident cached features / the same
                            steps on synthetic tensors (benchmarks/resident.py)
CPU scoring (always, also with --gpu-only; needs pycocoevalcap, else reported as skipped):
  val_scoring_seconds_1000      seconds to score 1000 images x 5 references per validation epoch
                                with the fast back end (benchmarks/scoring.py; real captions when
                                IMGCAP_FLICKR8K_SAMPLE is set)
  val_scoring_vs_pycocoevalcap  compute_caption_metrics(meteor=False) time / that (target >= 5);
                                val_scoring has the first call of a process and the check to 1e-6
GPU (when CUDA is available; names start with gpu_):
  gpu_train_step_vs_reference_b32/_b128  as above on the GPU, bf16 autocast (target >= 4)
  gpu_cache_vs_resnet_forward            feature-cache build rate / bare ResNet-50 forward rate,
                                         same batch and precision (target >= 0.5)
  gpu_finetune_vs_resnet_fwd_bwd         fine-tuning step (last 2 stages + decoder) / ResNet-50
                                         forward + backward alone (target <= 1.5)
  gpu_full_run_minutes_estimate          cache + 30 epochs + beam-3 validation each epoch + test
                                         on a Flickr8k-sized set, extrapolated (target <= 10)
  gpu_epoch_data_overhead                an epoch of graphed B=64 steps on resident features
                                         (data.resident=device) / the same steps on synthetic
                                         tensors (target <= 1.3); null without CUDA
Whole trial (measured by benchmarks/gpu_trial.sh, read with --gpu-trial-json PATH; else null):
  gpu_trial_minutes                      experiment=flickr8k, 30 epochs, on a generated
                                         Flickr8k-sized set: command to metrics.json (<= 10)
  gpu_trial_breakdown                    seconds per phase of that run (imgcap/phase_timing.py)

Needs only torch, torchvision, numpy and lightning (no Hydra or W&B; pycocoevalcap for the
scoring section alone), so it runs on a bare GPU machine with the repository on PYTHONPATH. --smoke shrinks every size to check the
script itself in seconds; --gpu-sections-on-cpu runs the GPU sections on the CPU (smoke only).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.textbook import textbook_forward  # noqa: E402
from imgcap.decoders.cuda_graphs import GraphedUnroll  # noqa: E402
from imgcap.decoders.decoding import beam_search  # noqa: E402
from imgcap.decoders.lstm_attention import AttentionLSTMDecoder  # noqa: E402
from imgcap.encoders import build_encoder  # noqa: E402
from imgcap.objectives import xe_attention_loss  # noqa: E402
from imgcap.vocab import END_ID, PAD_ID, START_ID  # noqa: E402

# Flickr8k sizes: 14x14 grid of ResNet-50 features, dims 512, ~3k words, captions of 8-23 tokens
FULL = dict(P=196, C=2048, dim=512, vocab=3000, min_len=8, max_len=23)
SMOKE = dict(P=16, C=64, dim=32, vocab=100, min_len=4, max_len=9)
# A Flickr8k-sized run: 6000/1000/1000 images, 5 captions each, experiment=flickr8k settings
RUN = dict(train_images=6000, val_images=1000, test_images=1000, captions=5, batch=64, epochs=30)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(
    fns: dict[str, Callable[[], object]], reps: int, device: torch.device, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of each variant, run alternately after ``warmup`` calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def caption_batches(n: int, B: int, size: dict, device: torch.device, seed: int = 0):
    """``n`` batches (features (B, P, C), captions (B, T), lengths (B,)) with random lengths."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        lengths = torch.randint(size["min_len"], size["max_len"] + 1, (B,), generator=g)
        T = int(lengths.max())
        captions = torch.randint(4, size["vocab"], (B, T), generator=g)
        captions[:, 0] = START_ID
        for i, L in enumerate(lengths.tolist()):
            captions[i, L - 1] = END_ID
            captions[i, L:] = PAD_ID
        features = torch.randn(B, size["P"], size["C"], generator=g)
        batches.append((features.to(device), captions.to(device), lengths.to(device)))
    return batches


def make_decoder(size: dict, device: torch.device) -> AttentionLSTMDecoder:
    torch.manual_seed(0)
    d = size["dim"]
    return AttentionLSTMDecoder(size["vocab"], size["C"], d, d, d, dropout=0.5).to(device)


# ---------------------------------------------------------------------------------- sections
def train_step(B: int, size: dict, device: torch.device, reps: int, autocast: bool) -> dict:
    """Decoder train step, textbook loop vs imgcap's default path on ``device``."""
    dec = make_decoder(size, device)
    batches = caption_batches(4, B, size, device)

    # same function first: the ratio below means nothing otherwise
    dec.eval()
    f, c, lengths = batches[0]
    with torch.no_grad():
        ours = xe_attention_loss(*dec(f, c, lengths), c[:, 1:], 1.0)["loss"]
        ref = xe_attention_loss(*textbook_forward(dec, f, c, lengths), c[:, 1:], 1.0)["loss"]
    same = math.isclose(ours.item(), ref.item(), rel_tol=1e-4, abs_tol=1e-5)
    dec.train()

    if device.type == "cuda":
        dec.fixed_runner = GraphedUnroll(dec)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-4)

    def step(forward: Callable) -> Callable[[], None]:
        def run() -> None:
            for f, c, lengths in batches:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    logits, alphas = forward(f, c, lengths)
                    loss = xe_attention_loss(logits, alphas, c[:, 1:], 1.0)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return run

    variants = {
        "textbook": step(lambda f, c, n: textbook_forward(dec, f, c, n)),
        "imgcap": step(dec),  # the default: auto unroll (+ CUDA graphs on a GPU)
        "shrink": step(dec.forward_shrinking),
        "fixed_eager": step(dec.forward_fixed),
    }
    # warm-up: on a GPU the first calls capture the graphs (and autotune cuDNN)
    med = compare(variants, reps, device, warmup=2 if device.type == "cuda" else 1)
    per_step = {k: v / len(batches) for k, v in med.items()}
    return {
        "ms": {k: round(v * 1e3, 2) for k, v in per_step.items()},
        "ratio": per_step["textbook"] / per_step["imgcap"],
        "same_loss": same,
        "graphs": len(dec.fixed_runner.graphs) if dec.fixed_runner else 0,
        "graphs_disabled": dec.fixed_runner.disabled_reason if dec.fixed_runner else None,
    }


def beam(
    n_images: int,
    size: dict,
    device: torch.device,
    reps: int,
    k: int = 3,
    n_single: int | None = None,
) -> dict:
    """Batched beam search over ``n_images`` vs a per-image loop over the first ``n_single``
    (rates per image), and whether both give the same captions for those."""
    n_single = min(n_single or n_images, n_images)
    dec = make_decoder(size, device).eval()
    feats = torch.randn(n_images, size["P"], size["C"], generator=torch.Generator().manual_seed(1))
    feats = feats.to(device)

    def batched() -> list[list[int]]:
        return beam_search(dec, feats, beam_size=k, max_len=20).tokens

    def per_image() -> list[list[int]]:
        return [
            beam_search(dec, feats[i : i + 1], beam_size=k, max_len=20).tokens[0]
            for i in range(n_single)
        ]

    identical = batched()[:n_single] == per_image()
    med = compare({"batched": batched, "per_image": per_image}, reps, device)
    rates = {"batched": n_images / med["batched"], "per_image": n_single / med["per_image"]}
    return {
        "images_per_s": rates,
        "ratio": rates["batched"] / rates["per_image"],
        "identical": identical,
    }


def cache_vs_no_cache(images: int, workers: int) -> dict:
    from benchmarks.data import cache_speedup
    from imgcap.data.shapes import generate_shapes

    with tempfile.TemporaryDirectory() as tmp:
        shapes = generate_shapes(Path(tmp) / "shapes", num_images=images, image_size=224, seed=0)
        return cache_speedup(shapes, Path(tmp) / "cache", workers)


class _Tensors(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def gpu_cache(device: torch.device, n: int, batch: int, image_size: int, arch: str, reps: int):
    """Feature-cache build rate vs a bare encoder forward, both float16 autocast + channels_last."""
    from imgcap.data.feature_cache import build_feature_cache

    enc = build_encoder(arch=arch, weights=None, encoded_size=14, fine_tune="frozen").to(device)
    enc = enc.eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    amp = torch.float16 if device.type == "cuda" else None

    def forward() -> None:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=amp, enabled=amp is not None),
        ):
            enc(x)

    fwd_s = compare({"forward": forward}, reps, device, warmup=2)["forward"]
    images = torch.randn(n, 3, image_size, image_size)
    ids = [f"{i}.jpg" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        build_feature_cache(  # warm-up (cuDNN autotuning, allocator) on a few images
            Path(tmp) / "warm",
            ids[:batch],
            _Tensors(images[:batch]),
            enc,
            {"w": 1},
            image_size,
            batch_size=batch,
            quiet=True,
            device=device,
        )
        sync(device)
        t0 = time.perf_counter()
        build_feature_cache(
            Path(tmp),
            ids,
            _Tensors(images),
            enc,
            {"arch": arch},
            image_size,
            batch_size=batch,
            num_workers=2,
            quiet=True,
            device=device,
        )
        sync(device)
        build_s = time.perf_counter() - t0
    forward_rate, cache_rate = batch / fwd_s, n / build_s
    return {
        "forward_img_s": forward_rate,
        "cache_img_s": cache_rate,
        "ratio": cache_rate / forward_rate,
    }


def gpu_finetune(device: torch.device, B: int, size: dict, image_size: int, arch: str, reps: int):
    """Fine-tuning step (encoder's last 2 stages + decoder + Adam) vs encoder fwd + bwd alone."""
    enc = build_encoder(
        arch=arch, weights=None, encoded_size=int(math.sqrt(size["P"])), fine_tune=2
    )
    enc = enc.to(device).train().to(memory_format=torch.channels_last)
    size = {**size, "C": enc.out_dim}
    dec = make_decoder(size, device).train()
    if device.type == "cuda":
        dec.fixed_runner = GraphedUnroll(dec)
    x = torch.randn(B, 3, image_size, image_size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    _, captions, lengths = caption_batches(1, B, size, device)[0]
    params = [*enc.trainable_parameters(), *dec.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def encoder_alone() -> None:
        with torch.autocast(**amp):
            loss = enc(x).float().square().mean()
        loss.backward()

    def full_step() -> None:
        with torch.autocast(**amp):
            logits, alphas = dec(enc(x), captions, lengths)
            loss = xe_attention_loss(logits, alphas, captions[:, 1:], 1.0)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    med = compare({"encoder": encoder_alone, "full": full_step}, reps, device, warmup=2)
    return {"ms": {k: v * 1e3 for k, v in med.items()}, "ratio": med["full"] / med["encoder"]}


def gpu_data_rates(device: torch.device, n: int, arch: str, image_size: int, workers: int):
    """The real data path on a generated set of ``n`` JPEGs: the DataModule builds the feature
    cache of train + val on ``device`` (decode + encoder + write, images/s), then one pass of
    the cached train loader, every caption of every image (captions/s)."""
    from imgcap.data.datamodule import CaptionDataModule
    from imgcap.data.shapes import generate_shapes

    enc = build_encoder(arch=arch, weights=None, encoded_size=14, fine_tune="frozen").to(device)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_shapes(Path(tmp) / "s", num_images=n, image_size=image_size, seed=0)
        dm = CaptionDataModule(
            root=str(root),
            image_size=image_size,
            batch_size=RUN["batch"],
            min_word_freq=1,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            cache_features=True,
            quiet=True,
        )
        dm.prepare_vocabulary()
        dm.attach_feature_encoder(enc, {"arch": arch, "weights": None, "grid": 14})
        t0 = time.perf_counter()
        dm.setup("fit")
        sync(device)
        cached_images = len(dm.annotations.splits["train"]) + len(dm.annotations.splits["val"])
        cache_rate = cached_images / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        captions = 0
        for batch in dm.train_dataloader():
            batch["features"].to(device, non_blocking=True)
            captions += len(batch["captions"])
        sync(device)
        return {
            "cache_img_s": cache_rate,
            "loader_captions_s": captions / (time.perf_counter() - t0),
        }


def gpu_full_run(
    step_ms: float,
    beam_img_s: float,
    cache_img_s: float,
    loader_captions_s: float,
    scoring_s: float,
) -> dict:
    """Minutes for cache + RUN['epochs'] epochs (validation each) + test, from measured rates.

    An epoch counts its loader time and its compute time in full, one after the other (an
    upper bound: the loader's workers run while the GPU computes)."""
    images = RUN["train_images"] + RUN["val_images"] + RUN["test_images"]
    cache_s = images / cache_img_s
    captions = RUN["train_images"] * RUN["captions"]
    epoch_s = math.ceil(captions / RUN["batch"]) * step_ms / 1e3 + captions / loader_captions_s
    val_s = RUN["val_images"] / beam_img_s + scoring_s
    test_s = RUN["test_images"] / beam_img_s + scoring_s
    total = cache_s + RUN["epochs"] * (epoch_s + val_s) + test_s
    return {
        "minutes": total / 60,
        "parts_s": {"cache": cache_s, "epoch": epoch_s, "validation": val_s, "test": test_s},
    }


# ---------------------------------------------------------------------------------- scoring
def val_scoring(smoke: bool) -> dict | None:
    """benchmarks/scoring.py's measurement, or None where pycocoevalcap is missing."""
    try:
        from benchmarks.scoring import measure
    except ImportError:
        return None
    return measure(images=50 if smoke else 1000, reps=1 if smoke else 3)


# ---------------------------------------------------------------------------------- main
def gpu_trial(path: str | None) -> dict[str, object]:
    """The whole-trial figures from ``benchmarks/gpu_trial.sh``'s JSON, or nulls with a note:
    a trial takes minutes on a GPU, so it is a script of its own and not rerun here."""
    if not path:
        return {
            "gpu_trial_minutes": None,
            "gpu_trial_breakdown": None,
            "note": "unmeasured: run benchmarks/gpu_trial.sh on a GPU, then --gpu-trial-json",
            "text": "unmeasured (no --gpu-trial-json)",
        }
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: --gpu-trial-json {path}: cannot read it ({e})") from None
    minutes = data.get("gpu_trial_minutes")
    where = f"{data.get('device')}, {data.get('images')} images, {data.get('epochs')} epochs"
    notes = []
    if minutes is None:
        state = "was cut off" if data.get("cut_off") else "did not finish"
        notes.append(f"the trial {state} (the breakdown is as far as it got)")
        text = f"null: the trial {state} ({where})"
    else:
        text = f"{minutes:.2f} min  ({where}; from {path})"
    full = data.get("images") == 8091 and data.get("epochs") == 30
    if not full or data.get("device") in ("cpu", "unknown", None):
        notes.append(f"not the full GPU trial: {where}")
    return {
        "gpu_trial_minutes": minutes,
        "gpu_trial_breakdown": data.get("gpu_trial_breakdown"),
        "note": "; ".join(notes) or None,
        "text": text,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script")
    parser.add_argument("--gpu-sections-on-cpu", action="store_true")
    parser.add_argument(
        "--gpu-only", action="store_true", help="skip the CPU sections (a short GPU session)"
    )
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument(
        "--scoring-seconds",
        type=float,
        default=12.0,
        help="pycocoevalcap scoring of 1000 captions with METEOR (not importable on a bare GPU "
        "machine, so an assumed figure: override it with a time measured on your machine)",
    )
    parser.add_argument(
        "--gpu-trial-json",
        default=None,
        help="gpu_trial.json written by benchmarks/gpu_trial.sh: its gpu_trial_minutes and "
        "gpu_trial_breakdown are carried into this JSON (null without it: unmeasured)",
    )
    args = parser.parse_args()
    trial = gpu_trial(args.gpu_trial_json)  # a bad path fails now, not after the benchmarks
    smoke = args.smoke
    size = SMOKE if smoke else FULL
    cpu = torch.device("cpu")
    out: dict[str, object] = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    t_start = time.perf_counter()

    def report(key: str, value: object, text: str) -> None:
        out[key] = value
        print(f"{key:<36} {text}", flush=True)

    reps = args.reps or (2 if smoke else 3)
    if not args.gpu_only:
        r = train_step(32, size, cpu, reps, autocast=False)
        report(
            "train_step_vs_reference",
            round(r["ratio"], 2),
            f"{r['ratio']:.2f}x  (ms/step {r['ms']}; same loss: {r['same_loss']})",
        )
        out["train_step_cpu_ms"], out["train_step_same_loss"] = r["ms"], r["same_loss"]

        r = beam(8 if smoke else 32, size, cpu, reps)
        report(
            "beam_batched_vs_per_image",
            round(r["ratio"], 2),
            f"{r['ratio']:.2f}x  (images/s { ({k: round(v, 1) for k, v in r['images_per_s'].items()}) })",
        )
        report("beam_outputs_identical", r["identical"], str(r["identical"]))

        r = cache_vs_no_cache(64 if smoke else 256, workers=2)
        report(
            "cache_vs_no_cache",
            round(r["ratio"], 1),
            f"{r['ratio']:.1f}x  (epoch {r['without_s']:.2f}s -> {r['with_s']:.3f}s, build {r['build_s']:.2f}s)",
        )
        from benchmarks.resident import epoch_data_overhead

        r = epoch_data_overhead(cpu, size, 16 if smoke else 64, 32, reps)
        report(
            "cpu_epoch_data_overhead",
            round(r["ratio"], 3),
            f"{r['ratio']:.3f}x  ({r['steps']} steps of B=32; seconds {r['seconds']})",
        )

    scoring = val_scoring(smoke)
    if scoring is None:
        report("val_scoring_seconds_1000", None, "skipped: pycocoevalcap is not installed")
        report("val_scoring_vs_pycocoevalcap", None, "skipped: pycocoevalcap is not installed")
    else:
        sec = scoring["seconds"]
        report(
            "val_scoring_seconds_1000",
            sec["fast_per_epoch"],
            f"{sec['fast_per_epoch']:.3f} s per epoch  ({scoring['images']} images x 5 refs, "
            f"{scoring['captions']}; first call of a process {sec['fast_first_call']:.3f} s; "
            f"Java {scoring['java']})",
        )
        report(
            "val_scoring_vs_pycocoevalcap",
            scoring["per_epoch_vs_pycocoevalcap"],
            f"{scoring['per_epoch_vs_pycocoevalcap']:.1f}x  (pycocoevalcap {sec['pycocoevalcap']:.3f}"
            f" s; first call {scoring['first_call_vs_pycocoevalcap']:.1f}x; max |difference| "
            f"{scoring['max_abs_difference']:.2g})",
        )
        out["val_scoring"] = scoring

    gpu = torch.device("cuda") if torch.cuda.is_available() else None
    if gpu is None and args.gpu_sections_on_cpu:
        gpu = cpu
    if gpu is None:
        report("device", "cpu", "no CUDA device: GPU sections skipped")
        report("gpu_epoch_data_overhead", None, "unmeasured (no CUDA device)")
    else:
        name = torch.cuda.get_device_name(gpu) if gpu.type == "cuda" else "cpu (smoke)"
        report("device", name, name)
        greps = args.reps or (2 if smoke else 10)
        amp = gpu.type == "cuda"
        steps = {}
        for B in (32, 64, 128):
            r = train_step(B, size, gpu, greps, autocast=amp)
            steps[B] = r
            if B != 64:
                report(
                    f"gpu_train_step_vs_reference_b{B}",
                    round(r["ratio"], 2),
                    f"{r['ratio']:.2f}x  (ms/step {r['ms']}; graphs {r['graphs']}"
                    f"{'; disabled: ' + r['graphs_disabled'] if r['graphs_disabled'] else ''})",
                )
        out["gpu_train_step_ms"] = {B: r["ms"] for B, r in steps.items()}
        arch, px = ("resnet18", 64) if smoke else ("resnet50", 224)
        r = gpu_cache(
            gpu,
            n=64 if smoke else 4096,
            batch=16 if smoke else 256,
            image_size=px,
            arch=arch,
            reps=greps,
        )
        report(
            "gpu_cache_vs_resnet_forward",
            round(r["ratio"], 2),
            f"{r['ratio']:.2f}x  (cache {r['cache_img_s']:.0f} img/s, bare forward {r['forward_img_s']:.0f} img/s)",
        )
        r = gpu_finetune(gpu, 4 if smoke else 32, size, px, arch, greps)
        report(
            "gpu_finetune_vs_resnet_fwd_bwd",
            round(r["ratio"], 2),
            f"{r['ratio']:.2f}x  (ms: { ({k: round(v, 1) for k, v in r['ms'].items()}) })",
        )
        b = beam(64 if smoke else 1000, size, gpu, 2 if smoke else 3, n_single=16 if smoke else 100)
        out["gpu_beam3_images_per_s"] = round(b["images_per_s"]["batched"], 1)
        data = gpu_data_rates(gpu, 64 if smoke else 2000, arch, px, workers=2 if smoke else 12)
        out["gpu_data_rates"] = {k: round(v, 1) for k, v in data.items()}
        from benchmarks.resident import epoch_data_overhead

        r = epoch_data_overhead(gpu, size, 64 if smoke else 2000, RUN["batch"], 3)
        report(
            "gpu_epoch_data_overhead",
            round(r["ratio"], 3),
            f"{r['ratio']:.3f}x  ({r['steps']} steps of B={RUN['batch']}; seconds {r['seconds']})",
        )
        r = gpu_full_run(
            steps[64]["ms"]["imgcap"],
            b["images_per_s"]["batched"],
            data["cache_img_s"],
            data["loader_captions_s"],
            args.scoring_seconds,
        )
        report(
            "gpu_full_run_minutes_estimate",
            round(r["minutes"], 2),
            f"{r['minutes']:.2f} min  (seconds: { ({k: round(v, 1) for k, v in r['parts_s'].items()}) };"
            f" {RUN['epochs']} epochs of {RUN['train_images'] * RUN['captions']} captions, batch"
            f" {RUN['batch']}; cache {data['cache_img_s']:.0f} img/s incl. JPEG decode, cached"
            f" loader {data['loader_captions_s']:.0f} captions/s)",
        )
    report("gpu_trial_minutes", trial["gpu_trial_minutes"], trial["text"])
    out["gpu_trial_breakdown"] = trial["gpu_trial_breakdown"]
    if trial.get("note"):
        out["gpu_trial_note"] = trial["note"]
    out["seconds"] = round(time.perf_counter() - t_start, 1)
    if args.json:
        print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
