"""Deploying with ONNX Runtime beside PyTorch: size, prefill and decode speed, peak memory.

The same checkpoints as ``bench_deploy.py`` (its :func:`prepare`: the dense
model and SVD-LLM over every family at ``--param-ratios``, the fraction of
each family's entries kept; 0.8, 0.7, 0.6 remove 20, 30 and 40% of them) are
each exported with :func:`llm_adapter.deploy.export_onnx` (low-rank maps as
two MatMuls, shared bases stored once), then measured in a fresh subprocess
per (checkpoint, runtime), side by side in one run:

file MB
    PyTorch: ``model.safetensors``; ONNX Runtime: the ``.onnx`` file.
prefill tokens/s
    One forward pass over 1 x T random tokens for each T in ``--prefill``;
    the best of ``--repeats`` after one warm-up.
decode tokens/s
    PyTorch: single-token steps with the KV cache after a 32-token prompt.
    ONNX Runtime: the exported graph has no cache inputs (prefill only), so
    each step recomputes the prefix; reported as such (``recompute``).
peak memory
    The worker's peak resident set (``VmHWM``; see ``bench_deploy.max_rss_mb``).

Throughput needs an otherwise idle machine: the load average before and
after the runs is printed with the table.  The ratio lines name every form
whose prefill is slower than the dense model's on the same runtime.

Usage::

    .venv/bin/python benchmarks/bench_onnx.py
    .venv/bin/python benchmarks/bench_onnx.py --models neox-tiny --param-ratios 0.6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import bench_deploy  # noqa: E402  (this folder, put on the path above)


def worker(path: str, runtime: str, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(args.seed)
    out: dict[str, Any] = {}
    prefill: dict[int, float] = {}
    if runtime == "ort":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        vocab = int(session.get_outputs()[0].shape[-1] or 0) or 49152

        def logits(ids: Any) -> Any:
            return session.run(["logits"], {"input_ids": ids})[0]

        out["file_bytes"] = Path(path).stat().st_size
    else:
        import llm_adapter
        import torch

        torch.set_num_threads(args.threads)
        model, _ = llm_adapter.load(path, device="cpu")
        vocab = int(model.config.vocab_size)

        def logits(ids: Any) -> Any:
            with torch.inference_mode():
                return model(input_ids=torch.from_numpy(ids)).logits.numpy()

        out["file_bytes"] = (Path(path) / "model.safetensors").stat().st_size
    for length in args.prefill:
        ids = rng.integers(0, vocab, size=(1, length)).astype(np.int64)
        logits(ids)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            logits(ids)
            times.append(time.perf_counter() - t)
        prefill[length] = length / min(times)
    out["prefill"] = prefill
    # decode: greedy steps after a 32-token prompt
    prompt = rng.integers(0, vocab, size=(1, 32)).astype(np.int64)
    times = []
    for _ in range(args.repeats):
        if runtime == "ort":  # no cache in the graph: each step runs the whole prefix
            ids = prompt
            t = time.perf_counter()
            for _ in range(args.steps):
                nxt = logits(ids)[:, -1:].argmax(-1)
                ids = np.concatenate([ids, nxt], axis=1)
            times.append(time.perf_counter() - t)
        else:
            import torch

            with torch.inference_mode():
                res = model(input_ids=torch.from_numpy(prompt), use_cache=True)
                cache, nxt_t = res.past_key_values, res.logits[:, -1:].argmax(-1)
                t = time.perf_counter()
                for _ in range(args.steps):
                    res = model(input_ids=nxt_t, past_key_values=cache, use_cache=True)
                    cache, nxt_t = res.past_key_values, res.logits[:, -1:].argmax(-1)
                times.append(time.perf_counter() - t)
    out["decode"] = args.steps / min(times)
    out["rss_peak_mb"] = bench_deploy.max_rss_mb()
    return out


def run_worker(path: str, runtime: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", path, "--runtime", runtime]
    cmd += ["--prefill", ",".join(map(str, args.prefill)), "--repeats", str(args.repeats)]
    cmd += ["--steps", str(args.steps), "--threads", str(args.threads), "--seed", str(args.seed)]
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{path} ({runtime}) failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def table(rows: list[dict[str, Any]], prefill: list[int]) -> str:
    head = f"{'model':<20} {'form':<16} {'runtime':<12} {'file MB':>8}"
    head += "".join(f" {'pre ' + str(t):>9}" for t in prefill)
    head += f" {'decode':>9} {'RSS MB':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['model']:<20} {r['form']:<16} {r['runtime']:<12} {r['file_bytes'] / 1e6:8.1f}"
        line += "".join(f" {r['prefill'][str(t)]:9.0f}" for t in prefill)
        dec = f"{r['decode']:.1f}" + ("*" if r["runtime"] == "onnxruntime" else "")
        line += f" {dec:>9} {r['rss_peak_mb']:7.0f}"
        lines.append(line)
    lines.append("decode: tokens/s, batch 1; * ONNX Runtime recomputes the prefix (no cache)")
    slower = []
    for r in rows:
        base = next(
            d
            for d in rows
            if d["model"] == r["model"] and d["runtime"] == r["runtime"] and d["form"] == "dense"
        )
        for t in prefill:
            if r["form"] != "dense" and r["prefill"][str(t)] < base["prefill"][str(t)]:
                slower.append(f"{r['model']} {r['form']} on {r['runtime']}, prefill {t}")
    lines.append("slower than the dense map: " + ("; ".join(slower) if slower else "none"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--runtime", default="torch", help=argparse.SUPPRESS)
    p.add_argument("--models", default=",".join(bench_deploy.MODELS))
    p.add_argument("--param-ratios", default="0.8,0.7,0.6", help="fractions of entries kept")
    p.add_argument("--prefill", default="128,512", help="prefill lengths (tokens)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=16, help="decode steps per timing")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=HERE / "results" / "onnx.md")
    args = p.parse_args(argv)
    args.prefill = [int(x) for x in str(args.prefill).split(",")]
    if args.worker:
        print(json.dumps(worker(args.worker, args.runtime, args)))
        return 0
    from llm_adapter.deploy import export_onnx

    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        for name in args.models.split(","):
            ratios = [float(x) for x in args.param_ratios.split(",")]
            for stub in bench_deploy.prepare(name, ratios, Path(tmp), args.seed):
                onnx_path = export_onnx(stub["dir"], Path(stub["dir"] + ".onnx"))
                for runtime, path in (("torch", stub["dir"]), ("ort", str(onnx_path))):
                    res = run_worker(path, runtime, args)
                    res["prefill"] = {str(k): v for k, v in res["prefill"].items()}
                    label = "pytorch" if runtime == "torch" else "onnxruntime"
                    rows.append(
                        {"model": stub["model"], "form": stub["form"], "runtime": label, **res}
                    )
    load_after = os.getloadavg()[0]
    text = table(rows, args.prefill)
    text += f"\nload average (1 min) {load_before:.2f} before the runs, {load_after:.2f} after"
    print(text)
    args.out.write_text(
        "# onnx: ONNX Runtime beside PyTorch\n\n"
        "Written by `benchmarks/bench_onnx.py` (see its docstring).\n\n```\n" + text + "\n```\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
