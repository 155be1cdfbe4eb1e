"""Where the decoder's training step spends its time (issue 14, item 4: B=128 >= 4x textbook).

    python benchmarks/profile_decoder_step.py [--batch 128] [--reps 20] [--smoke] [--trace DIR]

Not measured yet on a GPU: this script prepares the measurement. On CUDA it runs imgcap's
default step (fixed unroll replayed as CUDA graphs, bf16 autocast, Adam) at Flickr8k sizes and
prints, per step (median of ``--reps``, CUDA events):

* the phases: forward + loss, backward, optimizer (``zero_grad`` + ``step``);
* the optimizer alone with Adam's ``foreach`` (default), ``fused`` and per-tensor loops;
* the arithmetic: FLOPs of one step (``torch.utils.flop_counter``) and the rate they imply
  over the forward + backward time, against the textbook loop's step time;
* with ``--trace DIR`` a torch.profiler table of the top CUDA kernels and a Chrome trace.

``--smoke`` runs the same on the CPU at tiny sizes (eager, no graphs) to check the script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run_all import FULL, SMOKE, caption_batches, make_decoder  # noqa: E402
from benchmarks.textbook import textbook_forward  # noqa: E402
from imgcap.decoders.cuda_graphs import GraphedUnroll  # noqa: E402
from imgcap.objectives import xe_attention_loss  # noqa: E402


class Clock:
    """Marks on the device's timeline (CUDA events) or the host clock (CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, a, b) -> float:
        if self.cuda:
            b.synchronize()
            return a.elapsed_time(b)
        return (b - a) * 1e3


def phases(dec, forward, opt, batches, device, reps: int, autocast: bool) -> dict[str, float]:
    """Median ms per step of forward + loss, backward and the optimizer."""
    clock = Clock(device)
    times: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "step": []}
    for rep in range(reps + 2):  # two warm-up steps (graph capture, autotuning)
        f, c, n = batches[rep % len(batches)]
        t0 = clock.mark()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits, alphas = forward(f, c, n)
            loss = xe_attention_loss(logits, alphas, c[:, 1:], 1.0)["loss"]
        t1 = clock.mark()
        loss.backward()
        t2 = clock.mark()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = clock.mark()
        if rep >= 2:
            for name, (a, b) in {
                "forward": (t0, t1),
                "backward": (t1, t2),
                "optimizer": (t2, t3),
                "step": (t0, t3),
            }.items():
                times[name].append(clock.ms(a, b))
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def optimizer_alone(dec, device, reps: int) -> dict[str, float]:
    """Median ms of one Adam step over the decoder's parameters, by implementation."""
    clock = Clock(device)
    for p in dec.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    variants = {"foreach": dict(foreach=True), "per_tensor": dict(foreach=False)}
    if device.type == "cuda":
        variants["fused"] = dict(fused=True)
    out = {}
    for name, kwargs in variants.items():
        opt = torch.optim.Adam(dec.parameters(), lr=1e-9, **kwargs)
        samples = []
        for rep in range(reps + 2):
            t0 = clock.mark()
            opt.step()
            t1 = clock.mark()
            if rep >= 2:
                samples.append(clock.ms(t0, t1))
        out[name] = round(statistics.median(samples), 3)
    return out


def step_flops(dec, batch, autocast: bool, device: torch.device) -> int:
    """FLOPs of one eager forward + loss + backward (the arithmetic the graphs replay)."""
    from torch.utils.flop_counter import FlopCounterMode

    f, c, n = batch
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits, alphas = dec.forward_fixed(f, c, n)
            loss = xe_attention_loss(logits, alphas, c[:, 1:], 1.0)["loss"]
        loss.backward()
    dec.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--trace", type=Path, default=None, help="write a profiler trace here")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    size = SMOKE if args.smoke else FULL
    autocast = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, B={args.batch}, sizes {size}")

    batches = caption_batches(4, args.batch, size, device)
    dec = make_decoder(size, device).train()
    flops = step_flops(dec, batches[0], autocast, device)
    if device.type == "cuda":
        dec.fixed_runner = GraphedUnroll(dec)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-4)
    ours = phases(dec, dec, opt, batches, device, args.reps, autocast)
    ref = phases(
        dec,
        lambda f, c, n: textbook_forward(dec, f, c, n),
        torch.optim.Adam(dec.parameters(), lr=1e-4),
        batches,
        device,
        args.reps,
        autocast,
    )
    print(f"imgcap step ms  {ours}")
    print(f"textbook step ms {ref}")
    print(f"ratio textbook / imgcap: {ref['step'] / ours['step']:.2f}x")
    compute_ms = ours["forward"] + ours["backward"]
    print(
        f"arithmetic: {flops / 1e9:.1f} GFLOP per step -> {flops / compute_ms / 1e9:.1f} TFLOP/s "
        f"over forward + backward ({compute_ms:.2f} ms)"
    )
    print(f"optimizer alone ms {optimizer_alone(dec, device, args.reps)}")
    if args.trace is not None:
        from torch.profiler import ProfilerActivity, profile

        args.trace.mkdir(parents=True, exist_ok=True)
        activities = [ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if device.type == "cuda" else []
        )
        with profile(activities=activities) as prof:
            phases(dec, dec, opt, batches, device, 5, autocast)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=25)
        (args.trace / "top_kernels.txt").write_text(table)
        prof.export_chrome_trace(str(args.trace / "decoder_step_trace.json"))
        print(table)


if __name__ == "__main__":
    main()
