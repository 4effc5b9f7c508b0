"""SmolLM2-135M-Instruct on the CPU: time and peak memory of each stage.

Stages, each in a fresh subprocess so that its peak resident set
(``ru_maxrss``) is its own:

``load (cold)``
    :func:`llm_adapter.load` on the GGUF file with an empty cache
    (``LLM_ADAPTER_CACHE`` pointed at a new temporary directory): read,
    dequantize, write the cache entry, load it.
``load (cached)``
    The same call again: the entry is checked (sha256 of every file) and
    loaded.
``calibrate``
    :func:`llm_adapter.calibrate` on ``--calib-samples`` windows of
    ``--seq-len`` tokens of the WikiText-2 validation text, for the
    ``self_attn.o_proj`` family and for all seven families (model load time
    excluded), next to a bare forward pass over the same windows.
``compress``
    :func:`llm_adapter.compress_model` of every ``self_attn.o_proj`` at
    d/D = 0.25 with each method, from the statistics of the stage above
    (calibration and model load excluded).

Needs ``../shared/models/smollm2-135m-instruct`` (the GGUF file) and
``../shared/data/wikitext-2``.  The table is printed and written to
``benchmarks/results/smollm2.md``.

Usage::

    .venv/bin/python benchmarks/bench_smollm2.py
    .venv/bin/python benchmarks/bench_smollm2.py --calib-samples 16 --seq-len 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("GRASSBUNDLE_SHARED", REPO.parent / "shared"))
GGUF = SHARED / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
VALID = SHARED / "data" / "wikitext-2" / "wiki.valid.tokens"
METHODS: dict[str, dict[str, Any]] = {
    "svd": {"method": "svd"},
    "svd-llm": {"method": "svd-llm"},
    "basis-sharing (groups of 2)": {"method": "basis-sharing", "group_size": 2},
    "bundle (lam 1, k 5)": {"method": "bundle", "lam": 1.0, "tying": 5},
}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(stage: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one stage in this process and return its figures."""
    import torch
    from llm_adapter import CompressionConfig, compress_model, load
    from llm_adapter.calibrate import calibrate

    if stage == "load":
        t0 = time.perf_counter()
        load(GGUF, device="cpu", dtype="float32")
        return {"seconds": time.perf_counter() - t0, "peak_mb": _peak_mb()}
    model, tok = load(GGUF, device="cpu", dtype="float32")
    base_mb = _peak_mb()
    kw: dict[str, Any] = {
        "text_path": VALID,
        "samples": args.calib_samples,
        "seq_len": args.seq_len,
    }
    if stage == "calibrate":
        from llm_adapter.data import load_text, sample_windows, tokenize_text

        text, _ = load_text(VALID)
        windows = sample_windows(tokenize_text(text, tok), args.calib_samples, args.seq_len, 0)
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, windows.shape[0], args.batch_size):
                model(input_ids=windows[s : s + args.batch_size], use_cache=False)
        out: dict[str, Any] = {"forward_seconds": time.perf_counter() - t0}
        for label, fams in (("o_proj", "self_attn.o_proj"), ("all", "all")):
            t0 = time.perf_counter()
            calibrate(model, tok, fams, batch_size=args.batch_size, **kw)
            out[f"calibrate_{label}_seconds"] = time.perf_counter() - t0
        out["peak_mb"] = _peak_mb()
        out["model_mb"] = base_mb
        return out
    # statistics shared by the compression stages through a temporary cache (not timed)
    stats = calibrate(
        model,
        tok,
        "self_attn.o_proj",
        batch_size=args.batch_size,
        cache_dir=args.calib_cache or None,
        **kw,
    )
    method = METHODS[stage]
    config = CompressionConfig(rank_ratio=0.25, families="self_attn.o_proj", **method)
    t0 = time.perf_counter()
    compress_model(model, config, stats)
    return {"seconds": time.perf_counter() - t0, "peak_mb": _peak_mb(), "model_mb": base_mb}


def _run(stage: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        stage,
        "--calib-samples",
        str(args.calib_samples),
        "--seq-len",
        str(args.seq_len),
        "--batch-size",
        str(args.batch_size),
        "--calib-cache",
        args.calib_cache,
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"stage {stage} failed:\n{res.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--stages",
        default="load,calibrate,compress",
        help="comma-separated subset of load, calibrate, compress (default: all three)",
    )
    p.add_argument("--out", default=str(HERE / "results" / "smollm2.md"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--calib-cache", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(args.child, args)))
        return 0
    if not GGUF.is_file() or not VALID.is_file():
        print(f"SmolLM2 GGUF or WikiText-2 validation text absent under {SHARED}; nothing to do")
        return 0
    import torch

    stages = {s.strip() for s in args.stages.split(",") if s.strip()}
    unknown = stages - {"load", "calibrate", "compress"}
    if unknown:
        p.error(f"unknown stages {sorted(unknown)}; valid: load, calibrate, compress")
    rows: list[str] = []
    args.calib_cache = ""
    if "load" in stages:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "LLM_ADAPTER_CACHE": cache}
            cold = _run("load", args, env)
            warm = _run("load", args, env)
        rows.append(
            f"| load (cold: dequantize, cache) | {cold['seconds']:.1f} | {cold['peak_mb']:.0f} |"
        )
        rows.append(f"| load (cached) | {warm['seconds']:.1f} | {warm['peak_mb']:.0f} |")
    if "calibrate" in stages:
        cal = _run("calibrate", args, dict(os.environ))
        tokens = args.calib_samples * args.seq_len
        fwd = cal["forward_seconds"]
        rows.append(f"| bare forward, {tokens} tokens | {fwd:.1f} | |")
        for label in ("o_proj", "all"):
            t = cal[f"calibrate_{label}_seconds"]
            rows.append(
                f"| calibrate {label} ({t / fwd:.2f} x the bare forward) | {t:.1f} | "
                + (f"{cal['peak_mb']:.0f} |" if label == "all" else " |")
            )
    compress_runs: dict[str, dict[str, Any]] = {}
    if "compress" in stages:
        with tempfile.TemporaryDirectory() as calib_cache:
            args.calib_cache = calib_cache
            compress_runs = {name: _run(name, args, dict(os.environ)) for name in METHODS}
    for name, r in compress_runs.items():
        rows.append(
            f"| compress o_proj d/D 0.25, {name} | {r['seconds']:.1f} | {r['peak_mb']:.0f} |"
        )
    lines = [
        "# SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32) on the CPU",
        "",
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"load average at the end {os.getloadavg()[0]:.1f}; calibration: "
        f"{args.calib_samples} windows x {args.seq_len} tokens of WikiText-2 validation, "
        f"batch {args.batch_size}.  Peak memory: ru_maxrss of the stage's own process "
        "(model load included).",
        "",
        "| stage | seconds | peak MB |",
        "|---|---:|---:|",
        *rows,
        "",
        "command: .venv/bin/python benchmarks/bench_smollm2.py " + " ".join(argv),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
