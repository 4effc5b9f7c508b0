"""Evaluation throughput: perplexity and HellaSwag tokens per second, full-HellaSwag time.

Measured on the shared neox-mini model (4.2M parameters, 4,096-token vocabulary)
and on a random-weights model with Pythia-70M's shape (6 layers, hidden 512,
vocabulary 50,304; throughput does not depend on the weights' values), on
the CPU, and on CUDA when one is present (bf16 weights, fp32 log-softmax).

* Perplexity: non-overlapping windows (``--seq-len``), batch of windows per
  forward pass; tokens/s counts the tokens passed through the model.
* HellaSwag: the first ``--items`` items of the shared validation file,
  scored as ``llm-adapter evaluate`` does (4 sequences per item); the time for
  all 10,042 items is *extrapolated* from the measured tokens/s and the
  token count of the whole file (tokenised here), and labelled so.

Run: ``make bench`` or ``python benchmarks/bench_evaluate.py [--quick]``. The
printed Markdown is written, exactly, to ``benchmarks/results/evaluate.md``.
On a shared machine the numbers depend on the other load; the table records
the load average at the start.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import llm_adapter
import torch
from llm_adapter import evaluate as ev

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GRASSBUNDLE_SHARED", REPO.parent / "shared"))
MODEL = SHARED / "models" / "neox-mini"
WIKI = SHARED / "data" / "wikitext-2" / "wiki.test.tokens"
HELLASWAG = SHARED / "data" / "hellaswag" / "hellaswag_val_full.txt.bz2"
RESULTS = Path(__file__).resolve().parent / "results" / "evaluate.md"


def pythia70m_shaped(seed: int = 0) -> torch.nn.Module:
    """Random weights, Pythia-70M's configuration (70M parameters)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        intermediate_size=2048,
        max_position_embeddings=2048,
        rotary_pct=0.25,
        use_parallel_residual=True,
    )
    return GPTNeoXForCausalLM(config).eval()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer windows and items")
    parser.add_argument("--items", type=int, default=None, help="HellaSwag items to time")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if not (MODEL / "config.json").is_file() or not HELLASWAG.is_file():
        print(f"shared model or data absent under {SHARED}; nothing to measure")
        return 0
    n_items = args.items or (40 if args.quick else 200)
    windows = 64 if args.quick else 256
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    _, tokenizer = llm_adapter.load(MODEL, device="cpu")
    ids = ev.tokenize_for_eval(tokenizer, ev.read_wikitext(WIKI))
    all_items = ev.read_hellaswag(HELLASWAG)
    sample = all_items[:n_items]

    def item_tokens(items: list[ev.HellaSwagItem], tok: object) -> int:
        total = 0
        for it in items:
            for c in it.choices:
                ctx, cont = ev._encode_pair(tok, it.query, " " + c)
                total += len(ctx) + len(cont) - 1  # tokens passed (the last is only a target)
        return total

    full_tokens = item_tokens(all_items, tokenizer)
    lines = [
        "# Evaluation throughput",
        "",
        f"`python benchmarks/bench_evaluate.py{' --quick' if args.quick else ''}`; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"load average at start {os.getloadavg()[0]:.1f} (shared machine: other work "
        "competes for the cores, so these are lower bounds).",
        "",
        "| model | device | task | measured on | tokens/s | seconds |",
        "|---|---|---|---|---|---|",
    ]
    full_rows = []
    for device in devices:
        for name, build in (
            ("neox-mini (4.2M)", lambda: llm_adapter.load(MODEL, device="cpu")[0]),
            ("Pythia-70M shape, random", pythia70m_shaped),
        ):
            m = ev.prepare_for_eval(build(), device)
            vocab = int(m.config.vocab_size)
            seq = 128 if "mini" in name else 512
            n_win = windows if "mini" in name else max(4, windows // 16)
            win_ids = ids[: n_win * seq] % vocab
            ppl = ev.perplexity(m, input_ids=win_ids, seq_len=seq, batch_size=16, progress=False)
            lines.append(
                f"| {name} | {device} | perplexity, seq {seq} | {ppl.windows} windows "
                f"({ppl.windows * seq} tokens) | {ppl.tokens_per_second:,.0f} | {ppl.seconds:.1f} |"
            )
            if "mini" in name:
                hs = ev.evaluate_hellaswag(m, tokenizer, sample, batch_size=64, progress=False)
                sample_tokens = item_tokens(sample, tokenizer)
                lines.append(
                    f"| {name} | {device} | HellaSwag acc/acc_norm | first {len(sample)} items "
                    f"({sample_tokens} tokens) | {hs.tokens_per_second:,.0f} | {hs.seconds:.1f} |"
                )
                est = full_tokens / hs.tokens_per_second
                full_rows.append(
                    f"| {name} | {device} | {full_tokens:,} | {est:,.0f} s ({est / 60:.1f} min) |"
                )
            del m
    lines += [
        "",
        "## Full HellaSwag validation (10,042 items): extrapolated, not run",
        "",
        "Estimate = tokens of all 10,042 items (4 sequences each, tokenised here with the "
        "model's tokenizer) / the HellaSwag tokens/s measured above.",
        "",
        "| model | device | tokens, all items | estimated time |",
        "|---|---|---|---|",
        *full_rows,
        "",
    ]
    if not torch.cuda.is_available():
        lines += [
            "No CUDA device on this machine: the GPU rows are absent. The same script "
            "measures them where one is present (bf16 weights, fp32 log-softmax).",
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    status = main(sys.argv[1:])
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    raise SystemExit(status)
