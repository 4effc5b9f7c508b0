"""What a user deploying a compressed model sees: speed, memory and size, dense against low-rank.

For each model the dense checkpoint and SVD-LLM compressions of every linear
family at a few parameter budgets (``--param-ratios``, the fraction of each
family's weight entries kept) are saved with :func:`llm_adapter.save`, then
each is loaded by :func:`llm_adapter.load` in a fresh subprocess (so its peak
memory is its own) and measured on the same machine in the same run:

prefill tokens/s
    One forward pass over a batch of 1 x T random tokens, for each T in
    ``--prefill``; the best of ``--repeats`` timed passes after one warm-up
    (the best, not the median: other jobs on shared cores only slow a run down).
decode tokens/s
    Greedy-style single-token steps with the KV cache (``past_key_values``),
    after a 32-token prompt: ``batch x steps / time`` for batch 1 and
    ``--decode-batch``; the best of ``--repeats``.
peak memory
    The worker's peak resident set (``VmHWM`` on Linux: Python, torch and the
    model) on the CPU; ``torch.cuda.max_memory_allocated`` on a GPU.
checkpoint bytes
    The size of the saved ``model.safetensors``.
perplexity
    WikiText-2 raw test text (``../shared/data/wikitext-2-raw``), the first
    ``--ppl-windows`` non-overlapping windows of 512 tokens; only for models
    with real weights, so the speed sits beside the error it costs.

A second table times one linear map alone, ``y = W x`` against
``y = L (R x)`` with rank d, for the shapes of SmolLM2's maps, at fractions
of the break-even rank ``d* = m n / (m + n)`` (where the factors hold as many
entries as ``W``): the low-rank form does ``d (m + n)`` multiply-adds per
token against ``m n``, so it can only pay off below ``d*``, and in practice
pays off only well below it (two kernel launches, two passes over memory, and
thin matrices that run below peak FLOP rate).

Models:

``neox-tiny``
    The shipped GPT-NeoX (4 layers, hidden 128), real weights, calibrated on
    its own shipped calibration windows.
``smollm2-135m``
    SmolLM2-135M-Instruct from ``../shared/models`` (Q4_1 GGUF, dequantized by
    :func:`llm_adapter.load`), calibrated on WikiText-2 validation text;
    without the file, ``smollm2-135m-shape``: a random Llama of the same shape
    (30 layers, hidden 576, GQA 9/3 heads, intermediate 1536, vocabulary
    49,152, tied embeddings) built from its config (timings only).

Usage::

    .venv/bin/python benchmarks/bench_deploy.py
    .venv/bin/python benchmarks/bench_deploy.py --models neox-tiny --device cuda
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
WIKI_VALID = SHARED / "data" / "wikitext-2" / "wiki.valid.tokens"
WIKI_TEST_RAW = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw.crlf_noblank"
MODELS = ("neox-tiny", "smollm2-135m")


def smollm2_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )


def max_rss_mb() -> float:
    """This process's peak resident set, in MB.

    On Linux, ``VmHWM`` of ``/proc/self/status``: the peak of the process's own
    address space.  ``ru_maxrss`` is not used there: it survives ``execve``, and a
    worker started by ``subprocess`` (vfork, then exec) inherits the parent's peak
    through it, so every worker would report at least the parent's memory.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


# ---------------------------------------------------------------- preparing checkpoints


def load_dense(name: str) -> tuple[Any, Any, str, bool]:
    """(model, tokenizer, label, real weights) in float32 on the CPU."""
    import llm_adapter
    import torch

    if name == "neox-tiny":
        from llm_adapter.assets import TINY_MODEL

        model, tok = llm_adapter.load(TINY_MODEL, device="cpu")
        return model, tok, "neox-tiny", True
    if GGUF.is_file():
        model, tok = llm_adapter.load(GGUF, device="cpu", dtype="float32")
        return model, tok, "smollm2-135m", True
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(smollm2_config()).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, None, "smollm2-135m-shape", False


def calibration_windows(name: str, tok: Any, seed: int) -> Any:
    import numpy as np
    import torch

    if name == "neox-tiny":
        from llm_adapter.assets import CALIBRATION_TOKENS
        from safetensors.torch import load_file

        return load_file(str(CALIBRATION_TOKENS))["input_ids"][:32]
    if tok is None or not WIKI_VALID.is_file():
        rng = np.random.default_rng(seed)
        return torch.from_numpy(rng.integers(0, 49152, size=(16, 256)))
    from llm_adapter.data import sample_windows

    ids = np.asarray(tok(WIKI_VALID.read_text(encoding="utf-8"))["input_ids"], dtype=np.int64)
    return sample_windows(ids, 16, 256, seed)


def prepare(name: str, ratios: list[float], root: Path, seed: int) -> list[dict[str, Any]]:
    """Save the dense and the compressed checkpoints; return one row stub per checkpoint."""
    import llm_adapter

    model, tok, label, real = load_dense(name)
    rows = []
    dense_dir = llm_adapter.save(model, tok, None, root / f"{label}-dense")
    rows.append({"model": label, "form": "dense", "dir": str(dense_dir), "real": real})
    windows = calibration_windows(name, tok, seed)
    stats = llm_adapter.calibrate(model, None, "all", token_windows=windows, batch_size=4)
    del model
    for ratio in ratios:
        model, _ = llm_adapter.load(dense_dir, device="cpu")
        config = llm_adapter.CompressionConfig(method="svd-llm", param_ratio=ratio, families="all")
        report = llm_adapter.compress_model(model, config, stats)
        ranks = {f: r.rank for f, r in report.families.items()}
        out = llm_adapter.save(model, tok, report, root / f"{label}-p{ratio}")
        rows.append(
            {
                "model": label,
                "form": f"svd-llm p={ratio}",
                "dir": str(out),
                "real": real,
                "ranks": ranks,
            }
        )
        del model
    return rows


# ---------------------------------------------------------------- measuring one checkpoint


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def worker(path: str, device_name: str, args: argparse.Namespace) -> dict[str, Any]:
    import llm_adapter
    import torch
    from llm_adapter.safetensors_file import main_file_tensor_bytes

    torch.manual_seed(args.seed)
    model, tok = llm_adapter.load(path, device=device_name)
    device = next(model.parameters()).device
    if device.type == "cuda":
        model.to(torch.bfloat16)
        torch.cuda.reset_peak_memory_stats()
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(args.seed)
    out: dict[str, Any] = {
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "params": llm_adapter.count_unique_parameters(model),
        "file_bytes": (Path(path) / "model.safetensors").stat().st_size,
        "tensor_bytes": main_file_tensor_bytes(Path(path) / "model.safetensors"),
        "threads": torch.get_num_threads(),
    }
    prefill: dict[int, float] = {}
    with torch.inference_mode():
        for length in args.prefill:
            ids = torch.randint(0, vocab, (1, length), generator=gen).to(device)
            model(input_ids=ids)  # warm-up
            times = []
            for _ in range(args.repeats):
                _sync(device)
                t = time.perf_counter()
                model(input_ids=ids)
                _sync(device)
                times.append(time.perf_counter() - t)
            prefill[length] = length / min(times)
        decode: dict[int, float] = {}
        for batch in (1, args.decode_batch):
            prompt = torch.randint(0, vocab, (batch, 32), generator=gen).to(device)
            times = []
            for rep in range(args.repeats + 1):  # the first is a warm-up
                res = model(input_ids=prompt, use_cache=True)
                cache = res.past_key_values
                nxt = res.logits[:, -1:].argmax(-1)
                _sync(device)
                t = time.perf_counter()
                for _ in range(args.steps):
                    res = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                    cache = res.past_key_values
                    nxt = res.logits[:, -1:].argmax(-1)
                _sync(device)
                if rep:
                    times.append(time.perf_counter() - t)
            decode[batch] = batch * args.steps / min(times)
    out["prefill"] = prefill
    out["decode"] = decode
    if args.ppl_windows and tok is not None and WIKI_TEST_RAW.is_file():
        from llm_adapter.evaluate import perplexity

        text = WIKI_TEST_RAW.read_text(encoding="utf-8")  # newline=None: CRLF -> LF
        res = perplexity(
            model, tok, text=text, seq_len=512, max_windows=args.ppl_windows, progress=False
        )
        out["ppl"] = res.perplexity
    out["rss_peak_mb"] = max_rss_mb()
    if device.type == "cuda":
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 1e6
    return out


def run_worker(path: str, device: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", path, "--device", device, "--seed", str(args.seed)]
    cmd += ["--prefill", ",".join(map(str, args.prefill)), "--repeats", str(args.repeats)]
    cmd += ["--steps", str(args.steps), "--decode-batch", str(args.decode_batch)]
    cmd += ["--ppl-windows", str(args.ppl_windows), "--threads", str(args.threads)]
    env = dict(os.environ)
    if args.threads > 0:  # the BLAS under torch too, not only torch's own threads
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{path} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- one linear map


def break_even(device_name: str, repeats: int) -> list[dict[str, Any]]:
    """Time ``W x`` against ``L (R x)`` for SmolLM2's map shapes at fractions of d*."""
    import torch
    import torch.nn.functional as F

    device = torch.device(device_name)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    rows = []
    for m, n in ((576, 576), (1536, 576), (576, 1536)):
        d_star = m * n / (m + n)
        W = torch.randn(m, n, generator=gen).to(device, dtype)
        for tokens in (1, 512):
            x = torch.randn(tokens, n, generator=gen).to(device, dtype)
            reps = 1000 if tokens == 1 else 10

            def timed(fn: Any, reps: int = reps) -> float:
                fn()
                best = float("inf")
                for _ in range(repeats):
                    _sync(device)
                    t = time.perf_counter()
                    for _ in range(reps):
                        fn()
                    _sync(device)
                    best = min(best, (time.perf_counter() - t) / reps)
                return best

            with torch.inference_mode():
                dense = timed(lambda: F.linear(x, W))  # noqa: B023
                for frac in (0.125, 0.25, 0.5, 0.75, 1.0):
                    d = max(1, round(frac * d_star))
                    L = torch.randn(m, d, generator=gen).to(device, dtype)
                    R = torch.randn(d, n, generator=gen).to(device, dtype)
                    low = timed(lambda: F.linear(F.linear(x, R), L))  # noqa: B023
                    rows.append(
                        {
                            "shape": f"{m}x{n}",
                            "tokens": tokens,
                            "d": d,
                            "d_star": d_star,
                            "entries": d * (m + n) / (m * n),
                            "dense_us": dense * 1e6,
                            "lowrank_us": low * 1e6,
                        }
                    )
    return rows


# ---------------------------------------------------------------- report


def table(rows: list[dict[str, Any]], prefill: list[int], decode_batch: int) -> str:
    gpu = any("gpu_peak_mb" in r for r in rows)
    head = f"{'model':<20} {'form':<16} {'params':>12} {'file MB':>8}"
    head += "".join(f" {'pre ' + str(t):>9}" for t in prefill)
    head += f" {'dec b=1':>8} {'dec b=' + str(decode_batch):>9} {'RSS MB':>7}"
    head += f" {'GPU MB':>7}" if gpu else ""
    head += f" {'ppl':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['model']:<20} {r['form']:<16} {r['params']:>12,} {r['file_bytes'] / 1e6:>8.1f}"
        line += "".join(f" {r['prefill'][str(t)]:>9.0f}" for t in prefill)
        line += f" {r['decode']['1']:>8.1f} {r['decode'][str(decode_batch)]:>9.1f}"
        line += f" {r['rss_peak_mb']:>7.0f}"
        line += f" {r.get('gpu_peak_mb', float('nan')):>7.0f}" if gpu else ""
        line += f" {r['ppl']:>8.2f}" if "ppl" in r else f" {'-':>8}"
        lines.append(line)
    return "\n".join(lines)


def ratio_table(rows: list[dict[str, Any]]) -> str:
    base: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["form"] == "dense":
            base[r["model"]] = r
    lines = []
    for r in rows:
        if r["form"] == "dense":
            continue
        b = base[r["model"]]
        pre = ", ".join(
            f"{int(t)}: {r['prefill'][t] / b['prefill'][t]:.2f}x"
            for t in sorted(r["prefill"], key=int)
        )
        dec = ", ".join(f"b={k}: {r['decode'][k] / b['decode'][k]:.2f}x" for k in r["decode"])
        lines.append(
            f"{r['model']} {r['form']}: parameters {r['params'] / b['params']:.3f}, file "
            f"{r['file_bytes'] / b['file_bytes']:.3f}; prefill {pre}; decode {dec}"
        )
        if "ranks" in r:
            lines.append("    ranks: " + ", ".join(f"{k} {v}" for k, v in r["ranks"].items()))
    return "\n".join(lines)


def break_even_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'shape':<10} {'tokens':>6} {'d':>5} {'d/d*':>6} {'d(m+n)/mn':>10} "
        f"{'W x us':>9} {'L(Rx) us':>9} {'speed-up':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['shape']:<10} {r['tokens']:>6} {r['d']:>5} {r['d'] / r['d_star']:>6.3f} "
            f"{r['entries']:>10.3f} {r['dense_us']:>9.1f} {r['lowrank_us']:>9.1f} "
            f"{r['dense_us'] / r['lowrank_us']:>8.2f}x"
        )
    return "\n".join(lines)


def environment(device: str) -> str:
    import numpy
    import torch
    import transformers

    threads = torch.get_num_threads()
    cpu = f"{os.cpu_count()} CPU cores ({platform.machine()}), torch threads {threads}"
    if device.startswith("cuda"):
        cpu += f", GPU {torch.cuda.get_device_name(0)}"
    return (
        f"{cpu}; python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, numpy {numpy.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="deployment speed, memory and size: dense vs low-rank")
    p.add_argument("--worker", metavar="CHECKPOINT", help=argparse.SUPPRESS)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model labels")
    p.add_argument("--param-ratios", default="0.5,0.9", help="budgets of the compressed forms")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: cuda when available)")
    p.add_argument("--prefill", default="128,512,1024", help="prefill lengths (tokens)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (the best is kept)")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (0: defaults)")
    p.add_argument("--steps", type=int, default=32, help="decode steps per timing")
    p.add_argument("--decode-batch", type=int, default=8, help="the larger decode batch")
    p.add_argument("--ppl-windows", type=int, default=8, help="512-token windows for perplexity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="results file (default: results/)")
    args = p.parse_args(argv)
    args.prefill = [int(x) for x in str(args.prefill).split(",") if x]
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.device, args)))
        return 0

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ratios = [float(x) for x in args.param_ratios.split(",") if x]
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        for name in [m for m in args.models.split(",") if m]:
            t = time.perf_counter()
            stubs = prepare(name, ratios, Path(tmp), args.seed)
            print(f"{name}: checkpoints written in {time.perf_counter() - t:.1f} s", flush=True)
            for stub in stubs:
                res = run_worker(stub["dir"], device, args)
                row = {**stub, **res}
                rows.append(row)
                print(f"  {row['model']} {row['form']}: done", flush=True)
    breakeven = break_even(device, args.repeats)
    load_after = os.getloadavg()[0]
    rows = json.loads(json.dumps(rows))  # int keys -> str, as in the workers' JSON
    suffix = "" if device == "cpu" else "-cuda"
    body = [
        f"deployment figures on {device}, one subprocess per checkpoint",
        environment(device),
        f"machine load average (1 min) {load_before:.2f} before the runs, {load_after:.2f} after",
        "",
        table(rows, args.prefill, args.decode_batch),
        "",
        ratio_table(rows),
        "",
        "one linear map, y = W x against y = L (R x) (best of "
        f"{args.repeats} timings; d* = mn/(m+n), where the factors hold mn entries)",
        break_even_table(breakeven),
        break_even_summary(breakeven),
    ]
    text = "\n".join(body)
    print(text)
    out = args.out or HERE / "results" / f"deploy{suffix}.md"
    cmd = "benchmarks/bench_deploy.py" + (f" --device {args.device}" if suffix else "")
    notes = NOTES.format(
        prefill=", ".join(map(str, args.prefill)),
        repeats=args.repeats,
        steps=args.steps,
        batch=args.decode_batch,
        windows=args.ppl_windows,
    )
    out.write_text(
        "# deploy: speed, memory and size, dense against low-rank\n\n"
        f"Written by `{cmd}` (see its docstring for what is measured).\n\n"
        f"```\n{text}\n```\n\n{notes}"
    )
    return 0


NOTES = """\
- Columns: `params` are the unique parameters of the loaded model; `file MB` the saved
  `model.safetensors`; `pre T` prefill tokens/s for one sequence of T tokens (best of
  {repeats}); `dec b=B` decode tokens/s, B sequences advancing {steps} tokens each with the
  KV cache after a 32-token prompt (best of {repeats}); `RSS MB` the worker's peak resident
  set (Python and torch included); `ppl` WikiText-2 raw test perplexity over the first
  {windows} windows of 512 tokens (models with real weights only).
- The compressed forms are SVD-LLM at the given parameter ratio p over every linear family
  (the embeddings and norms stay dense, so the model shrinks by less than p).
- `smollm2-135m` is SmolLM2-135M-Instruct (Q4_1, dequantized to float32), calibrated on
  16 windows of 256 tokens of WikiText-2 validation text; `smollm2-135m-shape` (when
  the GGUF file is absent) has random weights and no perplexity.
- When low-rank is slower: a map of m x n at rank d costs d(m+n) multiply-adds per token
  against mn, so it can only win below the break-even rank d* = mn/(m+n) (d* = 288 for
  576x576, 419 for 576x1536 and 1536x576); near d* it does the same arithmetic in two
  thinner matrix products (each below peak rate, the activations read twice) and loses.
  The map table measures where it pays off on this machine; the line after it gives, per
  shape and token count, the largest d/d* at which the low-rank form was still faster.
  A parameter ratio p over a family is d/d* = p, so p = 0.9 sits next to break-even and
  buys memory and file size but no speed.
- Timings on shared cores are noisy even as the best of several runs: compare rows of
  one run (the machine load is printed above the table), not runs.
- No GPU on the machine that wrote `deploy.md`: the CUDA path (`--device cuda`: bfloat16
  weights, peak `torch.cuda.max_memory_allocated` in an extra column, results in
  `deploy-cuda.md`) exists but has not been run here.
"""


def break_even_summary(rows: list[dict[str, Any]]) -> str:
    """Per shape and token count: the largest d/d* at which ``L (R x)`` beat ``W x``."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["shape"], int(r["tokens"])), []).append(r)
    parts = []
    for (shape, tokens), rs in groups.items():
        faster = [r["d"] / r["d_star"] for r in rs if r["lowrank_us"] < r["dense_us"]]
        best = f"{max(faster):.3f}" if faster else "none measured"
        parts.append(f"{shape} at {tokens} token(s): {best}")
    return "largest d/d* still faster than dense: " + "; ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
