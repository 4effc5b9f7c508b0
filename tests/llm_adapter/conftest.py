"""Shared fixtures of the adapter's tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One BLAS and one torch thread while a module runs (restored after); modules ask
    for it with ``pytest.mark.usefixtures("one_thread")``.

    On shared cores, OpenBLAS and OpenMP threads that wait for a busy core spin:
    a 192 x 192 fit then takes seconds instead of milliseconds.
    """
    import torch

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not a dependency: then only torch's threads are limited
        limits: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    else:
        limits = threadpool_limits(limits=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with limits:
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A saved random 3-layer GPT-NeoX with a word-level tokenizer, and a calibration text.

    Keys: ``model`` (the checkpoint directory), ``text`` (40 lines of 30 words
    of its vocabulary) and ``root`` (their folder), one per test module.
    """
    from llm_adapter.testing import random_neox
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny")
    model_dir = root / "model"
    random_neox(num_hidden_layers=3, seed=3).save_pretrained(model_dir)
    vocab = {f"w{i}": i for i in range(127)} | {"[UNK]": 127}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    text = root / "calib.txt"
    text.write_text(
        "\n".join(" ".join(f"w{i}" for i in rng.integers(0, 127, 30)) for _ in range(40))
    )
    return {"model": model_dir, "text": text, "root": root}


#: the commit the hub caches laid out by :func:`lay_out_hub_cache` name
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_hub_cache(cache: Path, hub_id: str, files: Path) -> None:
    """The hub cache's layout: ``models--ORG--NAME/{refs/main, snapshots/<commit>/...}``."""
    import shutil

    repo = cache / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    snap = repo / "snapshots" / HUB_COMMIT
    snap.mkdir(parents=True)
    for f in files.iterdir():
        if f.is_file():
            shutil.copy(f, snap / f.name)


@pytest.fixture(scope="module")
def pythia_hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache holding the shipped GPT-NeoX under the README's ``EleutherAI/pythia-70m``.

    Run a command with ``HF_HUB_CACHE`` set to it and ``HF_HUB_OFFLINE=1``: the hub id then
    resolves from the cache, with the network off.
    """
    from llm_adapter.assets import TINY_MODEL

    cache = tmp_path_factory.mktemp("hub")
    lay_out_hub_cache(cache, "EleutherAI/pythia-70m", TINY_MODEL)
    return cache


@pytest.fixture
def pythia_env(pythia_hub: Path) -> dict[str, str]:
    """The environment of a subprocess that finds models in :func:`pythia_hub` only, offline."""
    import os

    env = {**os.environ, "HF_HUB_CACHE": str(pythia_hub), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HOME", None)
    return env


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache, the hub switched off."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache
