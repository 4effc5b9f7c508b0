"""``make demo``: SVD-LLM against the lambda = 0 Grassmann bundle on ``attention.dense``.

Compresses every ``attention.dense`` map of a GPT-NeoX model to d/D = 0.25
twice, with SVD-LLM (the anchor section: top-d eigenspace of W C W^T) and with
the untied lambda = 0 bundle (top-d eigenspace of W W^T), and prints per layer
the Frobenius error fraction ||W - W'||_F^2 / ||W||_F^2 and the activation
error fraction tr((W - W') C (W - W')^T) / tr(W C W^T), the parameters kept,
and perplexity on calibration-held-out text.  The bundle wins on Frobenius
error on every layer (Theorem B, untied); SVD-LLM wins on activation error.
Then it saves the bundle-compressed model, reloads it and checks the logits.

Default model: the tiny GPT-NeoX shipped with llm-adapter
(``llm_adapter.assets.TINY_MODEL``), calibrated on 48 of its 64 shipped
calibration windows and scored on the other 16; everything runs offline.
With ``MODEL`` (or ``--model``) set to another checkpoint, e.g.
``MODEL=EleutherAI/pythia-70m make demo``, calibration windows come from
``--calib-text`` or the hub dataset ``--calib-dataset`` (default: WikiText-2
raw train) and perplexity from ``--eval-text`` or ``--eval-dataset``
(default: WikiText-2 raw test).

Usage::

    .venv/bin/python examples/demo.py [--model M] [--rank-ratio 0.25] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import llm_adapter
import numpy as np
import torch
from llm_adapter.assets import CALIBRATION_TOKENS, TINY_MODEL
from llm_adapter.data import load_text, sample_windows, tokenize_text
from llm_adapter.evaluate import perplexity
from safetensors import safe_open

FAMILY = "attention.dense"
HUB_TRAIN = "wikitext:wikitext-2-raw-v1:train"
HUB_TEST = "wikitext:wikitext-2-raw-v1:test"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="SVD-LLM vs the lambda = 0 bundle on attention.dense")
    p.add_argument(
        "--model",
        default=os.environ.get("MODEL") or None,
        help="local directory or hub id (default: $MODEL, else the shipped tiny model)",
    )
    p.add_argument("--rank-ratio", type=float, default=0.25, help="d/D (default 0.25)")
    p.add_argument("--calib-text", default=None, help="calibration text file (other models)")
    p.add_argument("--calib-dataset", default=None, help=f"hub dataset (default {HUB_TRAIN})")
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-text", default=None, help="held-out text file for perplexity")
    p.add_argument("--eval-dataset", default=None, help=f"hub dataset (default {HUB_TEST})")
    p.add_argument("--eval-windows", type=int, default=16, help="windows scored for perplexity")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="keep the saved checkpoints in this folder")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    return p.parse_args(argv)


def shipped_windows() -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny model's 64 calibration windows: 48 to calibrate, 16 held out."""
    with safe_open(str(CALIBRATION_TOKENS), framework="pt") as f:
        windows = f.get_tensor("input_ids")
    return windows[:48], windows[48:]


def data_windows(args: argparse.Namespace, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration windows (SVD-LLM's protocol) and held-out evaluation windows."""
    if args.calib_text is not None:
        text, _ = load_text(text_path=args.calib_text)
    else:
        text, _ = load_text(dataset=args.calib_dataset or HUB_TRAIN)
    ids = tokenize_text(text, tokenizer)
    calib = sample_windows(ids, args.calib_samples, args.seq_len, args.seed)
    if args.eval_text is not None:
        text, _ = load_text(text_path=args.eval_text)
    else:
        text, _ = load_text(dataset=args.eval_dataset or HUB_TEST)
    need = args.eval_windows * args.seq_len
    # only the first windows are scored: tokenise a generous prefix (BPE tokens
    # average about 4 characters), and the whole text only if that falls short
    ids = tokenize_text(text[: 16 * need], tokenizer)
    if ids.size < need:
        ids = tokenize_text(text, tokenizer)
    n = min(args.eval_windows, ids.size // args.seq_len)
    held_out = torch.from_numpy(ids[: n * args.seq_len].reshape(n, args.seq_len))
    return calib, held_out


def held_out_ppl(model: Any, windows: torch.Tensor) -> float:
    """Perplexity of the held-out windows (non-overlapping, as the windows are)."""
    res = perplexity(
        model, input_ids=windows.reshape(-1), seq_len=int(windows.shape[1]), progress=False
    )
    return float(res.perplexity)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    name = args.model or str(TINY_MODEL)
    dense, tokenizer = llm_adapter.load_model(name, device=args.device)
    if args.model is None:
        calib, held_out = shipped_windows()
        source = "shipped calibration windows of neox-tiny (WikiText-2 validation text)"
    else:
        calib, held_out = data_windows(args, tokenizer)
        source = args.calib_text or args.calib_dataset or HUB_TRAIN
    stats = llm_adapter.calibrate(dense, tokenizer, [FAMILY], token_windows=calib)

    reports: dict[str, Any] = {}
    models: dict[str, Any] = {}
    configs = {
        "svd-llm": llm_adapter.CompressionConfig(
            method="svd-llm", rank_ratio=args.rank_ratio, families=(FAMILY,)
        ),
        "bundle": llm_adapter.CompressionConfig(
            method="bundle", rank_ratio=args.rank_ratio, families=(FAMILY,), lam=0.0, tying=1
        ),
    }
    for key, config in configs.items():
        model = copy.deepcopy(dense)
        reports[key] = llm_adapter.compress_model(model, config, stats)
        models[key] = model

    svdllm = reports["svd-llm"].families[FAMILY]
    bundle = reports["bundle"].families[FAMILY]
    cfg: Any = dense.config
    shown = "neox-tiny (shipped with llm-adapter)" if args.model is None else name
    print(f"llm-adapter demo: {shown}")
    print(
        f"  GPT-NeoX, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"{sum(p.numel() for p in dense.parameters()):,} parameters"
    )
    print(
        f"  calibration: {calib.shape[0]} windows x {calib.shape[1]} tokens "
        f"({stats.tokens:,} tokens) from {source}"
    )
    print(
        f"  family {FAMILY}: {svdllm.layers} maps of {svdllm.m}x{svdllm.n}, "
        f"rank d = {svdllm.rank} of D = {svdllm.D} (d/D = {svdllm.rank_ratio:.3f})"
    )
    print()
    print("per-layer error fractions (lower is better)")
    head = (
        f"{'layer':>5}  {'frob SVD-LLM':>12} {'frob bundle':>12} {'change':>8}   "
        f"{'act SVD-LLM':>12} {'act bundle':>12} {'change':>8}"
    )
    print(head)
    print("-" * len(head))
    assert svdllm.activation_fraction is not None and bundle.activation_fraction is not None
    rows = zip(
        svdllm.frobenius_fraction,
        bundle.frobenius_fraction,
        svdllm.activation_fraction,
        bundle.activation_fraction,
        strict=True,
    )
    for l, (fs, fb, as_, ab) in enumerate(rows):
        print(
            f"{l:>5}  {fs:12.4f} {fb:12.4f} {fb / fs - 1:+8.1%}   "
            f"{as_:12.4f} {ab:12.4f} {ab / as_ - 1:+8.1%}"
        )
    mean = {
        k: float(np.mean(v))
        for k, v in {
            "fs": svdllm.frobenius_fraction,
            "fb": bundle.frobenius_fraction,
            "as": svdllm.activation_fraction,
            "ab": bundle.activation_fraction,
        }.items()
    }
    print(
        f"{'mean':>5}  {mean['fs']:12.4f} {mean['fb']:12.4f} {mean['fb'] / mean['fs'] - 1:+8.1%}   "
        f"{mean['as']:12.4f} {mean['ab']:12.4f} {mean['ab'] / mean['as'] - 1:+8.1%}"
    )
    wins = sum(
        fb < fs for fs, fb in zip(svdllm.frobenius_fraction, bundle.frobenius_fraction, strict=True)
    )
    print(
        f"bundle (lam=0, untied) has the lower Frobenius error on {wins} of {bundle.layers} "
        "layers (Theorem B)"
    )
    print()
    print(
        f"parameters kept in the family (a rank-d factorisation of an m x n map keeps "
        f"d(m+n)/(mn) = {svdllm.rank * (svdllm.m + svdllm.n) / (svdllm.m * svdllm.n):.3f})"
    )
    for key, r in (("SVD-LLM", svdllm), ("bundle", bundle)):
        print(f"  {key:<8} {r.params_kept:,} of {r.params_dense:,} ({r.param_ratio:.3f})")

    ppl = {"dense": held_out_ppl(dense, held_out)}
    for key, model in models.items():
        ppl[key] = held_out_ppl(model, held_out)
    print()
    print(
        f"perplexity on {held_out.shape[0]} held-out windows of {held_out.shape[1]} tokens "
        "(not used for calibration)"
    )
    print(f"  dense {ppl['dense']:.3f}   SVD-LLM {ppl['svd-llm']:.3f}   bundle {ppl['bundle']:.3f}")

    # Save the bundle-compressed model, reload it and compare logits.
    with tempfile.TemporaryDirectory(prefix="llm-adapter-demo-") as tmp:
        out_root = Path(args.out) if args.out is not None else Path(tmp)
        out = llm_adapter.save(
            models["bundle"], tokenizer, reports["bundle"], out_root / "bundle", overwrite=True
        )
        size = (out / "model.safetensors").stat().st_size
        reloaded, _ = llm_adapter.load(out, device=args.device)
        x = held_out[:2].to(next(reloaded.parameters()).device)
        with torch.no_grad():
            diff = float((reloaded(x).logits - models["bundle"](x).logits).abs().max())
    print()
    print(f"saved the bundle-compressed model ({size:,} bytes of weights), reloaded it:")
    print(f"  max |logit difference| against the in-memory model: {diff:.3g}")
    seconds = time.perf_counter() - t_start
    print(f"done in {seconds:.1f} s")

    if args.json is not None:
        result = {
            "model": name,
            "family": FAMILY,
            "rank": svdllm.rank,
            "D": svdllm.D,
            "rank_ratio": svdllm.rank_ratio,
            "calibration_tokens": stats.tokens,
            "methods": {
                key: {
                    "config": reports[key].config,
                    "frobenius_fraction": r.frobenius_fraction,
                    "activation_fraction": r.activation_fraction,
                    "params_kept": r.params_kept,
                    "params_dense": r.params_dense,
                    "perplexity": ppl[key],
                }
                for key, r in (("svd-llm", svdllm), ("bundle", bundle))
            },
            "dense_perplexity": ppl["dense"],
            "held_out_windows": list(held_out.shape),
            "saved_weight_bytes": size,
            "reload_max_abs_logit_diff": diff,
            "seconds": seconds,
        }
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except llm_adapter.AdapterError as exc:  # bad input: one line, no traceback
        print(f"demo: error: {exc}", file=sys.stderr)
        sys.exit(2)
