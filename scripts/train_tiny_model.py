"""Train the tiny GPT-NeoX checkpoint shipped with llm-adapter (``neox-tiny``).

The checkpoint lets ``make demo`` run offline on a fresh clone.  It is a real
trained transformer (the Pythia architecture, scaled down), so its weights and
activation covariances have the structure that separates activation-aware
compression from plain SVD; random weights do not.

Recipe (every value is a command-line option, recorded in ``TRAINING.json``):

1. Train a byte-level BPE tokenizer (``tokenizers``, 4,096 ids, one special
   token ``<|endoftext|>`` with id 0) on the WikiText-2 validation text.
2. Train a ``GPTNeoXForCausalLM`` with Pythia's features (rotary embedding on
   25% of each head, parallel residual, untied input and output embeddings)
   on random 128-token windows of that text: AdamW, linear warm-up then cosine
   decay, gradient clipping at 1, seeded.
3. Measure perplexity on the WikiText-2 test split: non-overlapping 128-token
   windows (all complete ones), mean next-token NLL over every predicted
   token, and the add-one unigram baseline on the same tokens.
4. Write the asset folder atomically: ``config.json``, ``model.safetensors``
   (float32), ``tokenizer.json``, ``tokenizer_config.json``,
   ``calibration_tokens.safetensors`` (64 seeded windows x 128 tokens of the
   training text), ``TRAINING.json`` and ``MODEL_CARD.md``.

Usage (from the repository root; a few minutes on 2 idle CPU cores; on a
machine whose cores are oversubscribed, ``--threads 1`` is several times
faster than 2 threads, which then wait on each other)::

    .venv/bin/python scripts/train_tiny_model.py
    .venv/bin/python scripts/train_tiny_model.py --steps 50 --out /tmp/neox-tiny  # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_TRAIN = SHARED_DATA / "wikitext-2" / "wiki.valid.tokens"
DEFAULT_TEST = SHARED_DATA / "wikitext-2" / "wiki.test.tokens"
DEFAULT_OUT = REPO / "packages" / "llm-adapter" / "src" / "llm_adapter" / "assets" / "neox-tiny"
EOS = "<|endoftext|>"
SIZE_CAP_BYTES = 10_000_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-text", type=Path, default=DEFAULT_TRAIN)
    p.add_argument("--test-text", type=Path, default=DEFAULT_TEST)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib-windows", type=int, default=64)
    p.add_argument("--calib-seq", type=int, default=128)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument(
        "--rewrite-card",
        action="store_true",
        help="only re-render MODEL_CARD.md of --out from its TRAINING.json (no training)",
    )
    return p.parse_args(argv)


def train_tokenizer(path: Path, vocab: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 / Pythia style, no prefix space) trained on ``path``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    with path.open(encoding="utf-8") as f:
        lines = f.readlines()
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    return tok


def encode_file(tok: Tokenizer, path: Path) -> np.ndarray:
    """The whole file as one token stream (line by line, newlines kept), int64."""
    with path.open(encoding="utf-8") as f:
        lines = f.readlines()
    ids: list[int] = []
    for enc in tok.encode_batch(lines):
        ids.extend(enc.ids)
    return np.asarray(ids, dtype=np.int64)


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up to ``args.lr``, then cosine decay to 10% of it."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))


@torch.no_grad()
def mean_nll(model: GPTNeoXForCausalLM, stream: np.ndarray, seq: int, batch: int = 32) -> float:
    """Mean next-token NLL (nats) over non-overlapping complete ``seq``-token windows."""
    model.eval()
    n_win = len(stream) // seq
    windows = torch.from_numpy(stream[: n_win * seq].reshape(n_win, seq))
    total, count = 0.0, 0
    for i in range(0, n_win, batch):
        x = windows[i : i + batch]
        logits = model(input_ids=x).logits[:, :-1].double()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(nll)
        count += x[:, 1:].numel()
    return total / count


def unigram_nll(train: np.ndarray, stream: np.ndarray, seq: int, vocab: int) -> float:
    """Add-one unigram NLL of the same predicted tokens as :func:`mean_nll`."""
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    n_win = len(stream) // seq
    targets = stream[: n_win * seq].reshape(n_win, seq)[:, 1:]
    return float(-logp[targets].mean())


def build_model(args: argparse.Namespace) -> GPTNeoXForCausalLM:
    config = GPTNeoXConfig(  # type: ignore[call-arg]  # 4.x names, mapped by 5.x
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden,
        hidden_act="gelu",
        rotary_pct=0.25,
        rotary_emb_base=10000,
        max_position_embeddings=2048,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        attention_dropout=args.dropout,
        hidden_dropout=args.dropout,
        initializer_range=0.02,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(args.seed)
    return GPTNeoXForCausalLM(config)


def train(
    model: GPTNeoXForCausalLM, stream: np.ndarray, args: argparse.Namespace
) -> tuple[list[dict[str, float]], float]:
    rng = np.random.default_rng(args.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    log: list[dict[str, float]] = []
    t0 = time.perf_counter()
    running = 0.0
    model.train()
    for step in range(args.steps):
        starts = rng.integers(0, len(stream) - args.seq, size=args.batch)
        x = torch.from_numpy(np.stack([stream[s : s + args.seq] for s in starts]))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            n = (step % args.log_every) + 1
            entry = {
                "step": step + 1,
                "loss": round(running / n, 4),
                "lr": lr_at(step, args),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            log.append(entry)
            print(json.dumps(entry), flush=True)
            running = 0.0
    return log, time.perf_counter() - t0


def calibration_windows(stream: np.ndarray, n: int, seq: int, seed: int) -> torch.Tensor:
    """``n`` windows of ``seq`` tokens at seeded random offsets, shape [n, seq], int64."""
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.integers(0, len(stream) - seq, size=n))
    return torch.from_numpy(np.stack([stream[s : s + seq] for s in starts]))


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


MODEL_CARD = """\
# neox-tiny: the small GPT-NeoX checkpoint shipped with llm-adapter

The default model of `make demo`, so that the demo runs offline on a fresh
clone.  It is a real trained transformer with the Pythia architecture, scaled
down; it is not Pythia and not a useful language model beyond this purpose.
Rebuild it with `scripts/train_tiny_model.py`; `TRAINING.json` records every
option of the run (the script's defaults are this recipe) and the loss curve.

- Architecture: `GPTNeoXForCausalLM`, {layers} layers, hidden {hidden}, {heads} heads
  (head dimension {head_dim}), intermediate {intermediate}, rotary embedding on 25% of each
  head, parallel residual, untied input and output embeddings (as Pythia).
  {params:,} parameters, stored in float32.
- Size on disk: `model.safetensors` {model_bytes:,} bytes; the whole folder
  {total_mb:.2f} MB (cap: 10 MB).
- Tokenizer: byte-level BPE with {vocab:,} ids trained on the training text by the same
  script (`tokenizer.json`; `<|endoftext|>` is id 0 and serves as BOS/EOS/UNK).
  It is not Pythia's tokenizer.  Loads with `AutoTokenizer.from_pretrained`.
- Training text: WikiText-2 validation split, tokenized variant
  (`wiki.valid.tokens`, {train_tokens:,} tokens with this tokenizer).
- Training: {steps:,} AdamW steps (betas 0.9/0.95, weight decay {wd} on matrices)
  of {batch} random windows x {seq} tokens ({tokens_seen:,} tokens, about
  {epochs:.1f} passes), learning rate {lr:g} with {warmup} warm-up steps then cosine
  decay to 10%, dropout {dropout}, gradient clipping at 1, seed {seed}; {minutes:.1f} minutes of
  training with {threads} torch thread(s) on {machine}.
- Quality, WikiText-2 test split (tokenized variant, {test_tokens:,} tokens):
  non-overlapping {seq}-token windows (all {test_windows:,} complete windows), mean
  next-token NLL over every predicted token:
  perplexity **{test_ppl:.2f}** (NLL {test_nll:.4f} nats); the add-one unigram model of
  the training text scores {unigram_ppl:.2f} on the same tokens.  On the training text
  (same protocol) perplexity is {train_ppl:.2f}.
- `calibration_tokens.safetensors`: tensor `input_ids`, int64, shape
  [{calib_windows}, {calib_seq}]: {calib_windows} windows of {calib_seq} tokens of the
  training text at random offsets (numpy `default_rng({calib_seed})`, offsets sorted), so
  the demo calibrates without `../shared`.  These windows were seen in training.
- Good for: running the demo and fast end-to-end tests of every family of
  GPT-NeoX maps (`attention.query_key_value`, `attention.dense`,
  `mlp.dense_h_to_4h`, `mlp.dense_4h_to_h`) and tying across {layers} layers.
- Not good for: magnitudes.  Perplexity changes under compression on a model
  this small say little about Pythia-scale models.
- License: the weights derive from WikiText-2 (CC BY-SA 3.0).
"""


def card_fields(folder: Path) -> dict[str, Any]:
    """The model card's values, all read from ``TRAINING.json`` and the files."""
    t = json.loads((folder / "TRAINING.json").read_text())
    r = t["recipe"]
    tokens_seen = r["steps"] * r["batch"] * r["seq"]
    return {
        "layers": r["layers"],
        "hidden": r["hidden"],
        "heads": r["heads"],
        "head_dim": r["hidden"] // r["heads"],
        "intermediate": 4 * r["hidden"],
        "params": t["params"],
        "model_bytes": (folder / "model.safetensors").stat().st_size,
        "vocab": r["vocab"],
        "train_tokens": t["train_tokens"],
        "steps": r["steps"],
        "wd": r["weight_decay"],
        "batch": r["batch"],
        "seq": r["seq"],
        "tokens_seen": tokens_seen,
        "epochs": tokens_seen / t["train_tokens"],
        "lr": r["lr"],
        "warmup": r["warmup"],
        "dropout": r["dropout"],
        "seed": r["seed"],
        "threads": r["threads"],
        "minutes": t["train_seconds"] / 60,
        "machine": t.get("machine", "a shared CPU"),
        "test_tokens": t["test_tokens"],
        "test_windows": t["test_tokens"] // t["eval_seq"],
        "test_ppl": math.exp(t["test_nll"]),
        "test_nll": t["test_nll"],
        "unigram_ppl": t["unigram_test_ppl"],
        "train_ppl": t["train_ppl"],
        "calib_windows": r["calib_windows"],
        "calib_seq": r["calib_seq"],
        "calib_seed": t["calibration_seed"],
        "total_mb": 0.0,
    }


def write_card(folder: Path) -> None:
    """Render ``MODEL_CARD.md`` from ``TRAINING.json`` (twice: the card counts in the size)."""
    fields = card_fields(folder)
    card = folder / "MODEL_CARD.md"
    card.write_text(MODEL_CARD.format(**fields))
    fields["total_mb"] = folder_bytes(folder) / 1e6
    card.write_text(MODEL_CARD.format(**fields))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rewrite_card:
        write_card(args.out)
        print(f"rewrote {args.out / 'MODEL_CARD.md'}")
        return 0
    for path in (args.train_text, args.test_text):
        if not path.is_file():
            print(f"error: text file {path} not found (pass --train-text/--test-text)")
            return 2
    if args.out.exists() and not args.overwrite:
        print(f"error: {args.out} exists; pass --overwrite to replace it")
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    tok = train_tokenizer(args.train_text, args.vocab)
    assert tok.token_to_id(EOS) == 0
    train_ids = encode_file(tok, args.train_text)
    test_ids = encode_file(tok, args.test_text)
    print(f"tokenizer: {tok.get_vocab_size()} ids; train {len(train_ids)}, test {len(test_ids)}")

    model = build_model(args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters", flush=True)
    log, train_seconds = train(model, train_ids, args)

    test_nll = mean_nll(model, test_ids, args.seq)
    train_nll = mean_nll(model, train_ids, args.seq)
    uni_nll = unigram_nll(train_ids, test_ids, args.seq, args.vocab)
    print(
        f"test ppl {math.exp(test_nll):.2f} (unigram {math.exp(uni_nll):.2f}), "
        f"train ppl {math.exp(train_nll):.2f}",
        flush=True,
    )

    # Write everything into a temporary sibling folder, then move it into place.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{args.out.name}-", dir=args.out.parent))
    try:
        model.eval()
        model.save_pretrained(tmp)
        gen = tmp / "generation_config.json"
        if gen.exists():
            gen.unlink()  # sampling defaults are meaningless for this model
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS
        )
        fast.save_pretrained(tmp)
        # transformers 5 writes its own class name; the 4.x name loads in both.
        tok_cfg_path = tmp / "tokenizer_config.json"
        tok_cfg = json.loads(tok_cfg_path.read_text())
        tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2) + "\n")
        calib_seed = args.seed + 1
        calib = calibration_windows(train_ids, args.calib_windows, args.calib_seq, calib_seed)
        save_file(
            {"input_ids": calib.contiguous()},
            tmp / "calibration_tokens.safetensors",
            metadata={
                "source": "WikiText-2 validation split (wiki.valid.tokens)",
                "seed": str(calib_seed),
                "windows": str(args.calib_windows),
                "seq_len": str(args.calib_seq),
            },
        )
        recipe = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        for key in ("train_text", "test_text", "out"):
            recipe[key] = Path(recipe[key]).name
        training: dict[str, Any] = {
            "recipe": recipe,
            "params": n_params,
            "train_tokens": len(train_ids),
            "test_tokens": len(test_ids),
            "eval_seq": args.seq,
            "test_nll": round(test_nll, 5),
            "test_ppl": round(math.exp(test_nll), 3),
            "unigram_test_ppl": round(math.exp(uni_nll), 3),
            "train_ppl": round(math.exp(train_nll), 3),
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.perf_counter() - t_start, 1),
            "calibration_seed": calib_seed,
            "machine": f"a shared {platform.machine()} CPU ({os.cpu_count()} cores)",
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
            "log": log,
        }
        (tmp / "TRAINING.json").write_text(json.dumps(training, indent=1) + "\n")
        write_card(tmp)
        total = folder_bytes(tmp)
        if total > SIZE_CAP_BYTES:
            print(f"error: asset folder is {total} bytes, over the {SIZE_CAP_BYTES} cap")
            return 1
        tmp.chmod(0o755)  # mkdtemp makes it private; the asset ships with the package
        for f in tmp.iterdir():
            f.chmod(0o644)
        if args.out.exists():
            shutil.rmtree(args.out)
        tmp.rename(args.out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(f"wrote {args.out} ({total:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
