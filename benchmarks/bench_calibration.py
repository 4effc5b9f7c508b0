"""Calibration cost against one bare forward pass over the same tokens.

Calibration is a forward pass plus the float64 Gram updates ``G += X^T X`` of
the targeted maps.  Two things keep it near one forward pass:

* maps that read the very same input tensor (q, k, v; gate and up) share one
  Gram, accumulated once;
* the forward stops after the last transformer block: the final norm and the
  output head (49,152 x 576 on SmolLM2, a fifth of its multiply-adds) are
  not needed for any Gram.

For comparison the table also times the *naive* hooks (one Gram per map,
full forward through the head), as the adapter did before.  Every time is the
minimum of ``--repeats`` runs, each in the same process after one warm-up
forward; the ratio divides by the bare forward's time (the full model with
its logits, no hooks, ``use_cache=False``).

Model: ``../shared/models/smollm2-135m-instruct`` (the GGUF file, through the
dequantized cache) when present, else a random-weights Llama of SmolLM2's
shape (30 layers, hidden 576, 9/3 heads, intermediate 1536, vocabulary
49,152, tied embeddings), which costs the same.

Usage::

    .venv/bin/python benchmarks/bench_calibration.py                 # CPU, 8 x 512 tokens
    .venv/bin/python benchmarks/bench_calibration.py --device cuda --windows 64 --seq-len 2048
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("GRASSBUNDLE_SHARED", REPO.parent / "shared"))
SMOLLM2 = SHARED / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
FAMILY_SETS = {
    "self_attn.o_proj": "self_attn.o_proj",
    "all 7 families": "all",
}


def _model(device: str) -> tuple[Any, str]:
    from llm_adapter import load
    from llm_adapter.testing import random_model

    if SMOLLM2.is_file():
        model, _ = load(SMOLLM2, device=device, dtype="float32")
        return model, "SmolLM2-135M-Instruct (Q4_1, dequantized), float32"
    model = random_model(
        "llama",
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        vocab_size=49152,
        max_position_embeddings=8192,
    ).to(device)
    return model, "random Llama of SmolLM2's shape, float32"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best(fn: Callable[[], Any], repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def _naive(model: Any, families: str, windows: torch.Tensor, batch_size: int) -> None:
    """One float64 Gram per map, hooks on every map, full forward (the old way)."""
    from llm_adapter.models import family_modules, resolve_families

    handles = []
    for f in resolve_families(model, families):
        for module in family_modules(model, f):
            n = module.in_features
            gram = torch.zeros(n, n, dtype=torch.float64, device=module.weight.device)

            def hook(mod: Any, args: tuple[Any, ...], gram: torch.Tensor = gram) -> None:
                x2 = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
                gram.addmm_(x2.T, x2)

            handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for s in range(0, windows.shape[0], batch_size):
                model(input_ids=windows[s : s + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()


def publish(lines: list[str], out: str) -> None:
    """Print a benchmark's table and write it, as printed, to ``out``."""
    text = "\n".join(lines) + "\n"
    print(text)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(HERE / "results" / "calibration.md"))
    args = p.parse_args(argv)
    from llm_adapter.calibrate import calibrate

    model, label = _model(args.device)
    rng = np.random.default_rng(0)
    windows = torch.from_numpy(
        rng.integers(0, model.config.vocab_size, size=(args.windows, args.seq_len))
    ).to(args.device)
    tokens = windows.numel()

    def forward() -> None:
        with torch.no_grad():
            for s in range(0, windows.shape[0], args.batch_size):
                model(input_ids=windows[s : s + args.batch_size], use_cache=False)

    forward()  # warm-up
    t_fwd = _best(forward, args.repeats, args.device)
    rows = []
    for name, fams in FAMILY_SETS.items():
        t_cal = _best(
            lambda fams=fams: calibrate(
                model, None, fams, token_windows=windows.cpu(), batch_size=args.batch_size
            ),
            args.repeats,
            args.device,
        )
        t_naive = _best(
            lambda fams=fams: _naive(model, fams, windows, args.batch_size),
            args.repeats,
            args.device,
        )
        rows.append((name, t_cal, t_naive))
    threads = torch.get_num_threads()
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    lines = [
        f"# Calibration time / bare forward time ({label})",
        "",
        f"device {args.device} ({dev or platform.machine()}), torch threads {threads}, "
        f"{args.windows} windows x {args.seq_len} tokens = {tokens} tokens, batch "
        f"{args.batch_size}, best of {args.repeats}; load average at the end "
        f"{os.getloadavg()[0]:.1f}",
        "",
        f"bare forward (full model, logits included): {t_fwd:.2f} s",
        "",
        "| families | calibrate (s) | ratio | naive hooks (s) | naive ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t_cal, t_naive in rows:
        lines.append(
            f"| {name} | {t_cal:.2f} | {t_cal / t_fwd:.2f} | {t_naive:.2f} | "
            f"{t_naive / t_fwd:.2f} |"
        )
    lines.append("")
    lines.append("command: .venv/bin/python benchmarks/bench_calibration.py " + " ".join(argv))
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
