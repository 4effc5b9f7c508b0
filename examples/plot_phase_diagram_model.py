r"""
The phase diagram of a trained model
====================================

The bundle objective has two knobs, the anchor strength :math:`\lambda` and
the tying degree :math:`k`.  :func:`grassbundle.phase_diagram` solves it at
every point of a :math:`(k, \lambda)` grid, one symmetric eigenproblem per
group and point.  Here the family is every ``attention.dense`` of a trained
GPT-NeoX, with calibration covariances collected by
:func:`llm_adapter.calibrate`, at :math:`d/D = 0.25`.

Two error fractions are read off every point (see
:doc:`/theory/formulation`): the **Frobenius** fraction :math:`\lVert W_l -
P_{U_l} W_l \rVert_F^2 / \lVert W_l \rVert_F^2`, which the :math:`\lambda =
0` corner minimises, and the **activation** fraction :math:`A_l(U_l) /
\operatorname{tr} M_l`, which SVD-LLM (the :math:`\lambda \to \infty`,
:math:`k = 1` corner) minimises.  Moving across the diagram trades one for
the other: that trade is the paper's finding.
"""

# %%
# The model: the shared ``neox-mini`` (6 layers, hidden 192) when it is
# present next to the repository, otherwise the tiny model shipped with
# llm-adapter.  Both are real trained GPT-NeoX models.
import math
import os
from pathlib import Path

import grassbundle as gb
import llm_adapter
import matplotlib.pyplot as plt
import numpy as np
import torch
from llm_adapter.assets import CALIBRATION_TOKENS, TINY_MODEL
from safetensors.torch import load_file

torch.manual_seed(0)
# this folder: the script's own, or the working directory that sphinx-gallery
# runs the script in
here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
shared = Path(os.environ.get("GRASSBUNDLE_SHARED", here.parent.parent / "shared"))
mini = shared / "models" / "neox-mini"
rng = np.random.default_rng(0)
if (mini / "config.json").is_file():
    model_dir = mini
    model, tokenizer = llm_adapter.load(model_dir, device="cpu")
    # 32 windows of 128 tokens from the WikiText-2 validation text
    text = (shared / "data" / "wikitext-2" / "wiki.valid.tokens").read_text()[:200_000]
    ids = np.asarray(tokenizer(text)["input_ids"])
    starts = rng.choice(ids.size - 128, size=32, replace=False)
    windows = np.stack([ids[s : s + 128] for s in starts])
else:
    model_dir = TINY_MODEL
    model, tokenizer = llm_adapter.load(model_dir, device="cpu")
    windows = load_file(CALIBRATION_TOKENS)["input_ids"][:32]
print("model:", model_dir.name)
stats = llm_adapter.calibrate(model, tokenizer, "attention.dense", token_windows=windows)
W = llm_adapter.family_weights(model, "attention.dense")
C = stats.covariance("attention.dense")
L, m, n = W.shape
d = m // 4
print(
    f"family attention.dense: L={L}, m={m}, n={n}; rank d={d} (d/D = {d / m:.2f}); "
    f"{stats.tokens} calibration tokens"
)

# %%
# Solve the whole grid.  lambda = 0 and lambda = inf are included.
problem = gb.BundleProblem(W, C, rank=d)
lams = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 19), [math.inf]])
ks = [k for k in (1, 2, 3, L) if k <= L]
pd = gb.phase_diagram(problem, lams, ks)
fro = pd.frobenius_error.mean(axis=-1)  # (len(ks), len(lams)), mean over layers
act = pd.activation_error.mean(axis=-1)

svd_llm = gb.anchor_section(problem)
print(
    f"SVD-LLM (anchor): Frobenius {svd_llm.frobenius_error.mean():.4f}, "
    f"activation {svd_llm.activation_error.mean():.4f}"
)
for i, k in enumerate(ks):
    bs = gb.shared_output_basis(problem, k)
    print(
        f"k={k}: lambda=0 Frobenius {fro[i, 0]:.4f} activation {act[i, 0]:.4f} | "
        f"lambda=inf Frobenius {fro[i, -1]:.4f} activation {act[i, -1]:.4f} | "
        f"shared output basis Frobenius {bs.frobenius_error.mean():.4f} "
        f"activation {bs.activation_error.mean():.4f}"
    )
print(
    f"lambda=0, k=1 vs SVD-LLM: Frobenius error "
    f"{100 * (1 - fro[0, 0] / svd_llm.frobenius_error.mean()):.1f}% lower, activation error "
    f"{act[0, 0] / svd_llm.activation_error.mean():.2f}x higher"
)

# %%
# Both fractions over the grid.  Columns are lambda (0 on the left, inf on the
# right), rows the tying degree.
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
labels = ["0"] + [f"{x:.0e}" for x in lams[1:-1]] + ["inf"]
for ax, data, title in (
    (axes[0], fro, "Frobenius error fraction"),
    (axes[1], act, "activation error fraction"),
):
    im = ax.imshow(data, aspect="auto", cmap="viridis", origin="lower")
    ax.set_yticks(range(len(ks)), [str(k) for k in ks])
    ticks = [0, 4, 10, 16, len(lams) - 1]
    ax.set_xticks(ticks, [labels[t] for t in ticks])
    ax.set_xlabel("anchor strength lambda")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
axes[0].set_ylabel("tying degree k")
fig.tight_layout()
plt.show()

# %%
# Along lambda, untied (k = 1) and fully tied (k = L).  Untied, the path runs
# from plain SVD (lambda = 0) to SVD-LLM (lambda = inf): the Frobenius error
# rises and the activation error falls.  Fully tied, pulling the one shared
# frame towards the L2 core (the chordal mean of the L SVD-LLM subspaces)
# raises *both*: the mean of the anchors is a good frame for none of them.
# Path monotonicity guarantees only the first curve's direction (the weighted
# Frobenius term never decreases in lambda).  lambda = 0 and lambda = inf are
# drawn at the left and right edges.
x = np.concatenate([[1e-4], lams[1:-1], [1e4]])
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for i, k in enumerate(ks):
    if k not in (1, L):
        continue
    axes[0].semilogx(x, fro[i], "o-", ms=3, label=f"k = {k}")
    axes[1].semilogx(x, act[i], "o-", ms=3, label=f"k = {k}")
for ax, ref in (
    (axes[0], svd_llm.frobenius_error.mean()),
    (axes[1], svd_llm.activation_error.mean()),
):
    ax.axhline(ref, color="k", ls=":", label="SVD-LLM")
    ax.set_xlabel("lambda (0 at the left edge, inf at the right)")
    ax.legend()
axes[0].set_ylabel("mean Frobenius error fraction")
axes[1].set_ylabel("mean activation error fraction")
axes[1].set_yscale("log")
fig.tight_layout()
plt.show()
