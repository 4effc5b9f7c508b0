"""Cost of the loss-aware allocation's inputs against SVD-LLM's calibration, in one run.

SVD-LLM needs the calibration covariances (a forward pass with float64 Gram
updates); the ``fisher`` and ``gradient`` allocations need, in addition, the
components of every map (one eigendecomposition each, or one SVD of ``W S``
for a tall map) and the gradient scores (a forward and a backward pass per
window, with gradients for the targeted weights only, and ``U^T G`` per map).
All four are timed here on the same windows and the same model, as ratios to
the bare forward pass and to calibration; the target is gradient scoring at
most 3x calibration.  Every time is the best of ``--repeats`` runs after one
warm-up forward.  The load average before and after is printed: compare
ratios only from quiet runs.

Model: SmolLM2-135M-Instruct (the GGUF file under ``../shared``) when present,
else a random-weights Llama of its shape (the same cost).

Usage::

    .venv/bin/python benchmarks/bench_scoring.py                  # CPU, 8 x 512 tokens
    .venv/bin/python benchmarks/bench_scoring.py --windows 16 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_calibration import _best, _model, publish  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(HERE / "results" / "scoring.md"))
    args = p.parse_args(argv)
    from llm_adapter.calibrate import calibrate
    from llm_adapter.scoring import component_bases, gradient_scores

    load_before = os.getloadavg()[0]
    model, label = _model(args.device)
    model.eval()
    rng = np.random.default_rng(0)
    windows = torch.from_numpy(
        rng.integers(0, model.config.vocab_size, size=(args.windows, args.seq_len))
    )
    tokens = windows.numel()

    def forward() -> None:
        with torch.no_grad():
            for s in range(0, windows.shape[0], args.batch_size):
                model(input_ids=windows[s : s + args.batch_size].to(args.device), use_cache=False)

    forward()  # warm-up
    t_fwd = _best(forward, args.repeats, args.device)
    stats = calibrate(model, None, "all", token_windows=windows, batch_size=args.batch_size)
    t_cal = _best(
        lambda: calibrate(model, None, "all", token_windows=windows, batch_size=args.batch_size),
        args.repeats,
        args.device,
    )
    bases = component_bases(model, stats.families, stats)
    t_bases = _best(lambda: component_bases(model, stats.families, stats), 1, args.device)
    t_grad = _best(
        lambda: gradient_scores(model, stats.families, stats, bases), args.repeats, args.device
    )
    threads = torch.get_num_threads()
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    rows = [
        ("bare forward (logits included)", t_fwd),
        ("calibration, all 7 families (SVD-LLM's input)", t_cal),
        ("components of all maps (eigh / SVD of W S)", t_bases),
        ("gradient scores (forward + backward + U^T G per window)", t_grad),
    ]
    lines = [
        f"# Loss-aware allocation: cost against calibration ({label})",
        "",
        f"device {args.device} ({dev or platform.machine()}), torch threads {threads}, "
        f"{args.windows} windows x {args.seq_len} tokens = {tokens} tokens; best of "
        f"{args.repeats} (components: one run); load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after",
        "",
        "| stage | seconds | / forward | / calibration |",
        "|---|---:|---:|---:|",
    ]
    for name, t in rows:
        lines.append(f"| {name} | {t:.2f} | {t / t_fwd:.2f} | {t / t_cal:.2f} |")
    lines += [
        "",
        f"gradient scores / calibration: {t_grad / t_cal:.2f} (target <= 3); "
        f"(components + gradient scores) / calibration: {(t_bases + t_grad) / t_cal:.2f}",
        "",
        "command: .venv/bin/python benchmarks/bench_scoring.py " + " ".join(argv),
    ]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
