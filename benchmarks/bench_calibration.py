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
import importlib
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
MODES = ("float64", "mixed", "previous")
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


def _accuracy(model: Any, mixed: Any, exact: Any, rank_fraction: float) -> list[str]:
    """Mixed against float64 Grams: the covariances, and SVD-LLM's truncation on both."""
    from grassbundle.refit import svd_llm_update
    from llm_adapter.models import family_modules

    lines = [
        "| family | max rel. error of C (Frobenius) | min eigenvalue / max, float64 | mixed | "
        "max rel. change of SVD-LLM's W_d | max rel. change of its activation error |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for f, C64 in exact.covariances.items():
        Cm = mixed.covariances[f]
        diff = np.linalg.norm(Cm - C64, axis=(1, 2)) / np.linalg.norm(C64, axis=(1, 2))
        L = C64.shape[0]
        eig = {}
        for key, Cs in (("float64", C64), ("mixed", Cm)):
            vals = [np.linalg.eigvalsh(Cs[l]) for l in (0, L // 2, L - 1)]
            eig[key] = min(float(v[0] / v[-1]) for v in vals)
        d_w = d_e = 0.0
        modules = family_modules(model, f)
        for l in (0, L // 2, L - 1):
            W = modules[l].weight.detach().double().cpu().numpy()
            d = max(1, int(rank_fraction * min(W.shape)))
            a = svd_llm_update(W, C64[l], rank=d, ridge=0.0)
            b = svd_llm_update(W, Cm[l], rank=d, ridge=0.0)
            Wa, Wb = a.left @ a.right, b.left @ b.right
            d_w = max(d_w, float(np.linalg.norm(Wb - Wa) / np.linalg.norm(W - Wa)))
            ea = float(np.einsum("ij,jk,ik->", W - Wa, C64[l], W - Wa))
            eb = float(np.einsum("ij,jk,ik->", W - Wb, C64[l], W - Wb))
            d_e = max(d_e, abs(eb - ea) / ea)
        lines.append(
            f"| {f} | {diff.max():.1e} | {eig['float64']:.1e} | {eig['mixed']:.1e} | "
            f"{d_w:.1e} | {d_e:.1e} |"
        )
    return lines


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--naive", action="store_true", help="time the naive hooks as well")
    p.add_argument("--rank-fraction", type=float, default=0.5)
    p.add_argument("--out", default=str(HERE / "results" / "calibration.md"))
    args = p.parse_args(argv)
    cal = importlib.import_module("llm_adapter.calibrate")  # the module, not the function

    load_before = os.getloadavg()
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
    stats: dict[str, Any] = {}
    for name, fams in FAMILY_SETS.items():
        times = {}
        for mode in MODES:

            def run(fams: str = fams, mode: str = mode) -> None:
                block = cal.GRAM_BLOCK
                if mode == "previous":  # one full float64 product per update
                    cal.GRAM_BLOCK = 1 << 30
                try:
                    stats[mode] = cal.calibrate(
                        model,
                        None,
                        fams,
                        token_windows=windows.cpu(),
                        batch_size=args.batch_size,
                        accumulate="mixed" if mode == "mixed" else "float64",
                    )
                finally:
                    cal.GRAM_BLOCK = block

            times[mode] = _best(run, args.repeats, args.device)
        t_naive = (
            _best(
                lambda fams=fams: _naive(model, fams, windows, args.batch_size),
                args.repeats,
                args.device,
            )
            if args.naive
            else float("nan")
        )
        rows.append((name, times, t_naive))
    t_fwd2 = _best(forward, args.repeats, args.device)
    load_after = os.getloadavg()
    accuracy = _accuracy(model, stats["mixed"], stats["float64"], args.rank_fraction)
    blocked = max(
        float(np.abs(stats["float64"].covariances[f] - C).max() / np.abs(C).max())
        for f, C in stats["previous"].covariances.items()
    )
    threads = torch.get_num_threads()
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    lines = [
        f"# Calibration time / bare forward time ({label})",
        "",
        f"device {args.device} ({dev or platform.machine()}), torch threads {threads}, "
        f"{args.windows} windows x {args.seq_len} tokens = {tokens} tokens, batch "
        f"{args.batch_size}, best of {args.repeats}; load average (1, 5, 15 min) before "
        f"{', '.join(f'{v:.2f}' for v in load_before)}, after "
        f"{', '.join(f'{v:.2f}' for v in load_after)}",
        "",
        f"bare forward (full model, logits included): {t_fwd:.2f} s before the calibrations, "
        f"{t_fwd2:.2f} s after; the ratios divide by the first",
        "",
        "float64: the default, float64 products over the upper block triangle (blocks of "
        f"{cal.GRAM_BLOCK} columns); mixed: float32 products over blocks of at most "
        f"{cal.BLOCK_TOKENS} tokens and the upper block triangle, summed in float64; "
        "previous: one full float64 product per update (the implementation before)",
        "",
        "| families | float64 (s) | ratio | mixed (s) | ratio | previous (s) | ratio "
        "| naive hooks (s) | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, times, t_naive in rows:
        cells = " | ".join(f"{times[m]:.2f} | {times[m] / t_fwd:.2f}" for m in MODES)
        lines.append(f"| {name} | {cells} | {t_naive:.2f} | {t_naive / t_fwd:.2f} |")
    lines += [
        "",
        "float64 (blocked) against previous (full product), all families: max |difference| "
        f"/ max |C| = {blocked:.1e}",
        "",
        "Accuracy of the mixed accumulation against float64 on the same windows (layers 0, "
        f"L/2 and L-1 for the eigenvalues and SVD-LLM at rank {args.rank_fraction:g} min(m, n); "
        "the change of W_d is relative to the truncation error ||W - W_d||, the activation "
        "error is tr((W - W_d) C (W - W_d)^T) under the float64 C):",
        "",
        *accuracy,
        "",
        "command: .venv/bin/python benchmarks/bench_calibration.py " + " ".join(argv),
    ]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
