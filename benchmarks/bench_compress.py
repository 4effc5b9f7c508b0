"""Wall time and peak memory of ``llm_adapter`` compression, per method.

Each (model, method) runs in a fresh subprocess, so its peak resident set
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which covers torch's and
numpy's allocations alike) is that method's alone; on a GPU the peak of
``torch.cuda.max_memory_allocated`` is reported too.  The time is split as
:func:`llm_adapter.compress_model` reports it: calibration (the forward passes
that accumulate the Grams), factorisation (extracting the weights and the
grassbundle / basis-sharing solve) and write-back (building the low-rank
modules).  Methods that need no calibration statistics (``svd`` and the
bundle at lambda = 0 with the weight metric) are run without them, as the
command line does without calibration data, so their calibration time is 0.

Models:

``neox-mini``
    ``../shared/models/neox-mini`` (6 layers, hidden 192), calibrated on
    WikiText-2 validation text with its own tokenizer.
``pythia-1.4b-shape``
    A random-weights GPT-NeoX with Pythia-1.4B's shape (24 layers, hidden 2048,
    16 heads, intermediate 8192, vocabulary 50,304; 1.41e9 parameters, float32),
    built from its config with a seeded random init (the weights are random,
    so only the timings and memory mean anything).  Calibration windows are
    WikiText-2 validation text in the Pythia tokenizer
    (``../shared/data/tokenizer/20B_tokenizer.json``).

Usage::

    .venv/bin/python benchmarks/bench_compress.py                 # both models, CPU
    .venv/bin/python benchmarks/bench_compress.py --models neox-mini --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("GRASSBUNDLE_SHARED", REPO.parent / "shared"))
WIKI_VALID = SHARED / "data" / "wikitext-2" / "wiki.valid.tokens"
PYTHIA_TOKENIZER = SHARED / "data" / "tokenizer" / "20B_tokenizer.json"
NEOX_MINI = SHARED / "models" / "neox-mini"
FAMILY = "attention.dense"
RANK_RATIO = 0.25

#: method label -> CompressionConfig keyword arguments
METHODS: dict[str, dict[str, Any]] = {
    "svd": {"method": "svd"},
    "svd-llm": {"method": "svd-llm"},
    "basis-sharing": {"method": "basis-sharing", "group_size": 2},
    "bundle lam=0 k=1": {"method": "bundle", "lam": 0.0, "tying": 1},
    "bundle lam=0 k=3": {"method": "bundle", "lam": 0.0, "tying": 3},
}

#: model label -> calibration protocol (windows x tokens); kept short on CPU
MODELS: dict[str, dict[str, int]] = {
    "neox-mini": {"samples": 64, "seq_len": 256},
    "pythia-1.4b-shape": {"samples": 2, "seq_len": 256},
}


def pythia_14b_config() -> Any:
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(  # type: ignore[call-arg]  # rotary_pct: 4.x name, mapped by 5.x
        vocab_size=50304,
        hidden_size=2048,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=8192,
        rotary_pct=0.25,
        max_position_embeddings=2048,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )


def max_rss_mb() -> float:
    """Peak resident set of this process in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far (all its threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def worker(model_name: str, method: str, device: str, seed: int, threads: int) -> dict[str, Any]:
    """Load, calibrate (when the method needs it) and compress; return the measurements."""
    import llm_adapter
    import numpy as np
    import torch
    from llm_adapter.data import sample_windows

    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    proto = MODELS[model_name]
    text = WIKI_VALID.read_text(encoding="utf-8")
    t0 = time.perf_counter()
    if model_name == "neox-mini":
        model, tokenizer = llm_adapter.load(NEOX_MINI, device=device)
        load_seconds = time.perf_counter() - t0
        ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    else:
        from tokenizers import Tokenizer
        from transformers import GPTNeoXForCausalLM

        with torch.device(device):
            model = GPTNeoXForCausalLM(pythia_14b_config()).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        load_seconds = time.perf_counter() - t0
        ids = np.asarray(Tokenizer.from_file(str(PYTHIA_TOKENIZER)).encode(text).ids)
    params = sum(p.numel() for p in model.parameters())
    windows = sample_windows(ids, proto["samples"], proto["seq_len"], seed)
    rss_loaded = max_rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        gpu_loaded = torch.cuda.memory_allocated() / 1e6

    config = llm_adapter.CompressionConfig(
        rank_ratio=RANK_RATIO, families=(FAMILY,), **METHODS[method]
    )
    t1 = time.perf_counter()
    cpu0 = cpu_seconds()
    stats = None
    if config.needs_calibration:
        stats = llm_adapter.calibrate(model, None, [FAMILY], token_windows=windows, batch_size=4)
    report = llm_adapter.compress_model(model, config, stats)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t1
    cpu = cpu_seconds() - cpu0
    fam = report.families[FAMILY]
    out: dict[str, Any] = {
        "model": model_name,
        "method": method,
        "device": device,
        "threads": torch.get_num_threads(),
        "params": params,
        "layers": fam.layers,
        "shape": [fam.m, fam.n],
        "rank": fam.rank,
        "calibration_tokens": 0 if stats is None else stats.tokens,
        "load_seconds": load_seconds,
        "calibration": report.timings["calibration"],
        "factorisation": report.timings["factorisation"],
        "write_back": report.timings["write_back"],
        "wall": wall,
        "cpu": cpu,
        "rss_loaded_mb": rss_loaded,
        "rss_peak_mb": max_rss_mb(),
        "frobenius_fraction_mean": float(np.mean(fam.frobenius_fraction)),
    }
    if device.startswith("cuda"):
        out["gpu_loaded_mb"] = gpu_loaded
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 1e6
    return out


def run_one(model: str, method: str, device: str, seed: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", model, method, "--device", device]
    cmd += ["--seed", str(seed), "--threads", str(threads)]
    env = dict(os.environ)
    if threads > 0:  # the BLAS under numpy / scipy too, not only torch's own threads
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{model} / {method} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def table(rows: list[dict[str, Any]]) -> str:
    gpu = any("gpu_peak_mb" in r for r in rows)
    head = (
        f"{'model':<18} {'method':<17} {'calib s':>8} {'factor s':>9} {'write s':>8} "
        f"{'total s':>8} {'CPU s':>7} {'RSS load MB':>12} {'RSS peak MB':>12} {'peak-load MB':>13}"
    )
    if gpu:
        head += f" {'GPU peak MB':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        total = r["calibration"] + r["factorisation"] + r["write_back"]
        line = (
            f"{r['model']:<18} {r['method']:<17} {r['calibration']:>8.2f} "
            f"{r['factorisation']:>9.2f} {r['write_back']:>8.2f} {total:>8.2f} {r['cpu']:>7.1f} "
            f"{r['rss_loaded_mb']:>12.0f} {r['rss_peak_mb']:>12.0f} "
            f"{r['rss_peak_mb'] - r['rss_loaded_mb']:>13.0f}"
        )
        if gpu:
            line += f" {r.get('gpu_peak_mb', float('nan')):>12.0f}"
        lines.append(line)
    return "\n".join(lines)


def environment(device: str, threads: int) -> str:
    import numpy
    import torch
    import transformers

    cpu = f"{os.cpu_count()} CPU cores ({platform.machine()}), torch threads {threads}"
    if device.startswith("cuda"):
        cpu += f", GPU {torch.cuda.get_device_name(0)}"
    return (
        f"{cpu}; python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, numpy {numpy.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="compress wall time and peak memory per method")
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model labels")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated method labels")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=0, help="torch and BLAS threads per worker (0: defaults)"
    )
    p.add_argument("--out", type=Path, default=None, help="results file (default: results/)")
    args = p.parse_args(argv)
    if args.worker is not None:
        print(
            json.dumps(worker(args.worker[0], args.worker[1], args.device, args.seed, args.threads))
        )
        return 0

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    models = [m for m in args.models.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in models if m not in MODELS] + [m for m in methods if m not in METHODS]
    if unknown:
        p.error(
            f"unknown model or method {unknown}; models: {list(MODELS)}, methods: {list(METHODS)}"
        )
    if not (NEOX_MINI / "config.json").is_file() or not WIKI_VALID.is_file():
        print(f"skipped: shared model or data not found under {SHARED}")
        return 0

    load_before = os.getloadavg()[0]
    rows = []
    for model in models:
        for method in methods:
            r = run_one(model, method, device, args.seed, args.threads)
            print(
                f"  {model} / {method}: {r['wall']:.1f} s, peak RSS {r['rss_peak_mb']:.0f} MB",
                flush=True,
            )
            rows.append(r)
    lines = [
        f"compress {FAMILY} at d/D = {RANK_RATIO} on {device}, one subprocess per row",
        environment(device, rows[0]["threads"]),
        f"machine load average (1 min) {load_before:.2f} before the runs, "
        f"{os.getloadavg()[0]:.2f} after (others share these cores; "
        "CPU s is the worker's own CPU time)",
    ]
    for model in models:
        r = next(x for x in rows if x["model"] == model)
        proto = MODELS[model]
        lines.append(
            f"{model}: {r['params']:,} parameters, {r['layers']} maps of "
            f"{r['shape'][0]}x{r['shape'][1]}, rank {r['rank']}; calibration "
            f"{proto['samples']} windows x {proto['seq_len']} tokens; model load "
            f"{r['load_seconds']:.1f} s (not in the table)"
        )
    lines += ["", table(rows)]
    text = "\n".join(lines)
    print(text)

    out = args.out or HERE / "results" / ("compress.md" if device == "cpu" else "compress-cuda.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "benchmarks/bench_compress.py " + " ".join(argv if argv is not None else sys.argv[1:])
    notes = [
        "- Columns: calibration, factorisation and write-back as `compress_model` reports "
        "them; total s is their sum; CPU s is the worker's user + system CPU time over the "
        "same span; RSS figures are the worker's peak resident set after loading the model "
        "and at the end (`ru_maxrss`), and their difference.",
        "- `svd` and the lambda = 0 bundle with the weight metric need no calibration "
        "statistics, so they run without them (calibration 0).",
    ]
    if "pythia-1.4b-shape" in models:
        proto = MODELS["pythia-1.4b-shape"]
        notes.append(
            f"- pythia-1.4b-shape is calibrated on {proto['samples']} windows x "
            f"{proto['seq_len']} tokens only (fewer tokens than the hidden size 2048, so its "
            "covariances are singular, which the projection form allows): a forward pass of "
            "the full model is slow on a shared 2-core CPU; calibration time grows linearly "
            "in the token count."
        )
    if device == "cpu" and not torch.cuda.is_available():
        notes.append(
            "- No GPU on the machine that wrote this file: the CUDA path (`--device cuda`, "
            "peak `torch.cuda.max_memory_allocated` in an extra column, results in "
            "`compress-cuda.md`) exists but was not run."
        )
    out.write_text(
        "# compress: wall time and peak memory per method\n\n"
        f"Written by `{command.strip()}` (see its docstring for what is measured).\n\n"
        f"```\n{text}\n```\n\n" + "\n".join(notes) + "\n"
    )
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
