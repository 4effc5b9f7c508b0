r"""
Compressing a Pythia model end to end
=====================================

The whole adapter in one script: load a GPT-NeoX (Pythia-architecture)
model, collect calibration covariances, compress the ``attention.dense``
family at :math:`d/D = 0.25` with plain SVD, SVD-LLM and two corners of the
bundle, compare their error fractions and perplexity, then save a compressed
model and load it back.

It runs in seconds on the tiny GPT-NeoX shipped with llm-adapter
(:data:`llm_adapter.assets.TINY_MODEL`); the same calls work on a real Pythia
checkpoint, and the command lines for that are at the end.
"""

# %%
# Load the model and calibrate
# ----------------------------
import copy
import os
import tempfile
from pathlib import Path

import llm_adapter
import matplotlib.pyplot as plt
import numpy as np
import torch
from llm_adapter.assets import CALIBRATION_TOKENS, TINY_MODEL
from llm_adapter.evaluate import perplexity
from safetensors.torch import load_file

torch.manual_seed(0)
# this folder: the script's own, or the working directory that sphinx-gallery
# runs the script in
here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
shared = Path(os.environ.get("GRASSBUNDLE_SHARED", here.parent.parent / "shared"))

if (TINY_MODEL / "config.json").is_file():
    model_dir = TINY_MODEL
    model, tokenizer = llm_adapter.load(model_dir, device="cpu")
    windows = load_file(CALIBRATION_TOKENS)["input_ids"]
else:  # the tiny model is not there (a development checkout): use the shared one
    model_dir = shared / "models" / "neox-mini"
    model, tokenizer = llm_adapter.load(model_dir, device="cpu")
    text = (shared / "data" / "wikitext-2" / "wiki.valid.tokens").read_text()[:200_000]
    ids = np.asarray(tokenizer(text)["input_ids"])
    starts = np.random.default_rng(0).choice(ids.size - 128, size=64, replace=False)
    windows = torch.as_tensor(np.stack([ids[s : s + 128] for s in starts]))
print(f"model {model_dir.name}: {sum(p.numel() for p in model.parameters()):,} parameters")

stats = llm_adapter.calibrate(model, tokenizer, "attention.dense", token_windows=windows)
print(f"calibration: {stats.tokens} tokens")

# Held-out text for perplexity: the WikiText-2 test split when it is available
# next to the repository, otherwise the calibration windows themselves (then
# the figure is in-sample and says so).
test_file = shared / "data" / "wikitext-2" / "wiki.test.tokens"
if test_file.is_file():
    eval_ids = torch.as_tensor(tokenizer(test_file.read_text()[:15_000])["input_ids"])
    where = "WikiText-2 test (first 15k characters)"
else:
    eval_ids = torch.as_tensor(windows).reshape(-1)
    where = "calibration windows (in-sample)"


def ppl(m):
    res = perplexity(m, tokenizer, input_ids=eval_ids, seq_len=128, progress=False)
    return res.perplexity


dense_ppl = ppl(model)
print(f"dense perplexity on {where}: {dense_ppl:.2f}")

# %%
# Compress with four methods
# --------------------------
# :class:`llm_adapter.CompressionConfig` names the method and its knobs;
# :func:`llm_adapter.compress_model` replaces the family's layers in place
# and returns a report with per-layer error fractions.
configs = {
    "SVD": llm_adapter.CompressionConfig(method="svd", rank_ratio=0.25),
    "SVD-LLM": llm_adapter.CompressionConfig(method="svd-llm", rank_ratio=0.25),
    "bundle lam=0 k=1": llm_adapter.CompressionConfig(method="bundle", rank_ratio=0.25),
    "bundle lam=0 k=L": llm_adapter.CompressionConfig(
        method="bundle",
        rank_ratio=0.25,
        tying=len(llm_adapter.family_modules(model, "attention.dense")),
    ),
}
results = {}
for name, config in configs.items():
    compressed = copy.deepcopy(model)
    report = llm_adapter.compress_model(compressed, config, stats)
    fam = report.families["attention.dense"]
    results[name] = (
        float(np.mean(fam.frobenius_fraction)),
        float(np.mean(fam.activation_fraction)),
        ppl(compressed),
        fam.param_ratio,
    )
    print(report.summary_table())
    print()

print(
    f"{'method':18s} {'Frobenius':>10s} {'activation':>11s} {'perplexity':>11s}"
    f" {'params kept':>12s}"
)
for name, (f, a, p, r) in results.items():
    print(f"{name:18s} {f:10.4f} {a:11.4f} {p:11.2f} {r:12.3f}")

# %%
# The lambda = 0 corner (untied, it is plain SVD) wins in weight (Frobenius)
# error and SVD-LLM in activation error, as Theorem B and the SVD-LLM
# equivalence say; tying all layers to one frame stores fewer parameters and
# costs error in both.  Perplexity is printed, not interpreted: in a model
# this small the attention output projection is not a bottleneck, so it
# barely moves (the experiment page has the figures that matter).
names = list(results)
panels = {
    "Frobenius error fraction": [results[n][0] for n in names],
    "activation error fraction (log)": [results[n][1] for n in names],
    "perplexity change vs dense (%)": [100 * (results[n][2] / dense_ppl - 1) for n in names],
}
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
for ax, (title, values) in zip(axes, panels.items(), strict=True):
    ax.bar(range(len(names)), values, color=["C0", "C1", "C2", "C3"])
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_title(title)
axes[1].set_yscale("log")
fig.tight_layout()
plt.show()

# %%
# Save and reload
# ---------------
# :func:`llm_adapter.save` writes safetensors weights, the tokenizer and a
# ``compression.json`` manifest; :func:`llm_adapter.load` rebuilds the
# low-rank modules and gives back the same function.
compressed = copy.deepcopy(model)
report = llm_adapter.compress_model(compressed, configs["SVD-LLM"], stats)
with tempfile.TemporaryDirectory() as tmp:
    out = llm_adapter.save(compressed, tokenizer, report, Path(tmp) / "svd-llm")
    print("saved:", sorted(p.name for p in out.iterdir()))
    reloaded, _ = llm_adapter.load(out, device="cpu")
    x = eval_ids[:64][None]
    with torch.no_grad():
        diff = (compressed(x).logits - reloaded(x).logits).abs().max().item()
    print(f"max |logits(compressed) - logits(reloaded)| = {diff:.2e}")
    print("manifest method:", llm_adapter.read_manifest(out)["method"])

# %%
# The same on a real Pythia model
# -------------------------------
# From the command line: the model comes from the Hugging Face hub, and the
# WikiText-2 and HellaSwag files are those listed in ``../shared/data``.  The
# commands are parsed here by the program's own parser before they are
# printed, so this page cannot show a command the program would reject.
import shlex

from llm_adapter.cli import build_parser

commands = [
    "llm-adapter compress --model EleutherAI/pythia-70m --method svd-llm --rank-ratio 0.25"
    " --calib-text wiki.valid.tokens --out pythia-70m-svdllm",
    "llm-adapter compress --model EleutherAI/pythia-70m --method bundle --lam 0 --tying 1"
    " --rank-ratio 0.25 --out pythia-70m-bundle",
    "llm-adapter info pythia-70m-svdllm",
    "llm-adapter evaluate pythia-70m-svdllm --wikitext wiki.test.tokens"
    " --hellaswag hellaswag_val_full.txt.bz2",
]
parser = build_parser()
for line in commands:
    parser.parse_args(shlex.split(line)[1:])  # exits with status 2 on a bad line
    print(line)
