"""Refit variants of SVD-LLM on neox-mini: perplexity, paired intervals and time.

All families of the 6-layer neox-mini at half their parameters (param ratio
0.5, or ``--param-ratio``), float32 weights (statistics in float64), 16 calibration windows of 128
tokens from WikiText-2 valid (seed 0; the refits hold out the last 4), 16
evaluation windows of 128 tokens from WikiText-2 test.  Each variant is
compared with unrefit SVD-LLM and with SVD-LLM's update by the paired
bootstrap of :func:`llm_adapter.experiment.paired.paired_perplexity`;
results are appended, one JSON line per variant, to
``experiments/results/neox_mini_refit.jsonl``.

Usage: ``python experiments/neox_mini_refit.py [--samples 16] [--eval-windows 16]
[--families all] [--variants svd-llm,update,...] [--out FILE]`` (one thread).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import llm_adapter as la
import torch
from llm_adapter.evaluate import perplexity, tokenize_for_eval
from llm_adapter.experiment.paired import paired_perplexity

SHARED = Path("/work/shared")
OUT = Path(__file__).parent / "results" / "neox_mini_refit.jsonl"
VARIANTS = {
    "svd-llm": {},
    "update": {"update": True},
    "left/local": {"refit": "left", "target": "local"},
    "left/output": {"refit": "left"},
    "sigma/output": {"refit": "sigma"},
    "both/joint 0.5": {"refit": "both", "target": "joint"},
    "right/output": {"refit": "right"},
    "both/output": {"refit": "both"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=16, help="calibration windows")
    p.add_argument("--eval-windows", type=int, default=16, help="evaluation windows")
    p.add_argument("--families", default="all", help="families to compress")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants")
    p.add_argument("--param-ratio", type=float, default=0.5, help="fraction of parameters kept")
    p.add_argument("--out", type=Path, default=OUT, help="JSON lines output")
    args = p.parse_args()
    variants = {k: VARIANTS[k] for k in args.variants.split(",")}
    torch.set_num_threads(1)
    model, tok = la.load(SHARED / "models" / "neox-mini", device="cpu", dtype="float32")
    stats = la.calibrate(
        model, tok, args.families, text_path=SHARED / "data" / "wikitext-2" / "wiki.valid.tokens",
        samples=args.samples, seq_len=128, seed=0,
    )  # fmt: skip
    text = (SHARED / "data" / "wikitext-2" / "wiki.test.tokens").read_text(encoding="utf-8")
    ids = tokenize_for_eval(tok, text[:200_000])[: args.eval_windows * 128]
    dense = perplexity(model, input_ids=ids, seq_len=128, progress=False).perplexity
    print(f"dense ppl {dense:.3f}", flush=True)
    rows = {}
    args.out.parent.mkdir(exist_ok=True)
    for name, kw in variants.items():
        m = copy.deepcopy(model)
        config = la.CompressionConfig(
            method="svd-llm", families=args.families, param_ratio=args.param_ratio, **kw
        )
        t0 = time.process_time()  # CPU seconds: comparable on a shared machine
        report = la.compress_model(m, config, stats)
        seconds = time.process_time() - t0
        ppl = perplexity(m, input_ids=ids, seq_len=128, progress=False)
        kept = [k for f in report.families.values() for k in (f.refit_kept or ())]
        row = {
            "variant": name, "dense_ppl": dense, "config": report.config,
            "cpu_seconds": seconds, "ppl": ppl.perplexity,
            "ppl_window_nll": list(ppl.window_nll), "ppl_window_tokens": list(ppl.window_tokens),
            "params_kept": sum(f.params_kept for f in report.families.values()),
            "kept": sum(kept), "maps": len(kept),
            "ridges": {f: r.refit_ridge for f, r in report.families.items()},
        }  # fmt: skip
        for ref in ("svd-llm", "update"):
            if ref in rows:
                d = paired_perplexity(rows[ref], row, seed=0)
                row[f"vs_{ref}"] = [d.estimate, d.low, d.high, d.significant]
        rows[name] = row
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(name, f"ppl {ppl.perplexity:.3f}", f"{seconds:.1f} s CPU", row.get("vs_svd-llm"),
              row.get("vs_update"), f"kept {sum(kept)}/{len(kept)}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
