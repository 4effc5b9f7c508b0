"""ONNX export that keeps the savings: each low-rank map stays two products.

:func:`export_onnx` writes a model (a checkpoint written by
:func:`llm_adapter.save`, or any model :func:`llm_adapter.load` reads) as one
ONNX file whose graph takes ``input_ids`` (batch x tokens, both dynamic) and
returns the logits of every position (prefill; no key/value cache).  A
:class:`~llm_adapter.lowrank.LowRankLinear` map ``y = L (R x) + b`` becomes
``MatMul(MatMul(x, R^T), L^T) + b`` with ``R^T`` and ``L^T`` stored as
initializers, and a factor shared by a tied group is one initializer read by
every layer of the group: the file keeps the compressed model's size.  After
export, an initializer that equals the transpose of another (the exporter's
folded transposes, e.g. of tied input/output embeddings) is replaced by one
``Transpose`` node of the other, so no weight is stored twice.

:func:`onnx_logits` runs such a file with ONNX Runtime.  Needs ``onnx``,
``onnxscript`` and ``onnxruntime`` (``pip install onnx onnxscript onnxruntime``).
"""

from __future__ import annotations

import copy
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from .errors import AdapterError, mention
from .lowrank import LowRankLinear

__all__ = ["export_onnx", "onnx_initializer_bytes", "onnx_logits"]


class _FactoredLinear(nn.Module):
    """``x @ right_t @ left_t + bias``: two MatMuls on stored, already transposed factors."""

    def __init__(self, right_t: nn.Parameter, left_t: nn.Parameter, bias: Any) -> None:
        super().__init__()
        self.right_t = right_t
        self.left_t = left_t
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(torch.matmul(x, self.right_t), self.left_t)
        return y if self.bias is None else y + self.bias


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out: Any = self.model(input_ids=input_ids, use_cache=False)
        return out.logits


def _factored_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose low-rank maps hold transposed factors, shared ones still shared."""
    model = copy.deepcopy(model).float().eval()
    transposed: dict[int, nn.Parameter] = {}

    def t(p: nn.Parameter) -> nn.Parameter:
        if id(p) not in transposed:
            transposed[id(p)] = nn.Parameter(p.detach().t().contiguous(), requires_grad=False)
        return transposed[id(p)]

    swaps = [(n, m) for n, m in model.named_modules() if isinstance(m, LowRankLinear)]
    for name, module in swaps:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _FactoredLinear(t(module.right), t(module.left), module.bias))
    return model


def _dedup_transposes(proto: Any) -> int:
    """Replace initializers equal to another's transpose by one Transpose node each; count them."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}

    def key(a: NDArray[Any]) -> tuple[str, tuple[int, ...], str]:
        return (
            str(a.dtype),
            a.shape,
            hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest(),
        )

    by_key: dict[tuple[str, tuple[int, ...], str], str] = {}
    for name, a in arrays.items():
        if a.ndim == 2 and a.size >= 1024:
            by_key.setdefault(key(a), name)
    replace: dict[str, str] = {}  # copy -> source it is the transpose of
    for name, a in arrays.items():
        if a.ndim != 2 or a.size < 1024:
            continue
        src = by_key.get(key(a.T))
        if src is not None and src != name and src not in replace and name not in replace.values():
            replace[name] = src
    if not replace:
        return 0
    keep = [init for init in graph.initializer if init.name not in replace]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = [
        helper.make_node("Transpose", [src], [name], perm=[1, 0], name=f"transpose_of_{src}")
        for name, src in replace.items()
    ]
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    return len(replace)


def export_onnx(
    source: str | os.PathLike[str] | nn.Module,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    opset: int = 18,
) -> Path:
    """Write ``source`` as an ONNX file with its low-rank maps kept as two products.

    Parameters
    ----------
    source : path, hub id or torch.nn.Module
        Anything :func:`llm_adapter.load` reads, or a loaded model.
    out : path
        The ``.onnx`` file to write (its folder must exist).
    overwrite : bool
        Replace an existing ``out``.
    opset : int
        ONNX opset version.

    Returns
    -------
    Path
        ``out``.
    """
    path = Path(out)
    if path.suffix != ".onnx":
        raise AdapterError(
            f"ONNX output {str(out)!r} must end in .onnx; name a file like model.onnx"
        )
    if not path.parent.is_dir():
        raise AdapterError(
            f"ONNX output folder {str(path.parent)!r} does not exist; create it or name another"
        )
    if path.exists() and not overwrite:
        raise AdapterError(f"ONNX output {str(out)!r} exists; pass {mention('overwrite', True)}")
    try:
        import onnx
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError as exc:
        raise AdapterError(
            f"ONNX export needs the onnx and onnxscript packages ({exc}); "
            "pip install onnx onnxscript onnxruntime"
        ) from None
    if isinstance(source, nn.Module):
        model = source
    else:
        from .checkpoint import load

        model, _ = load(source, device="cpu")
    wrapped = _Logits(_factored_copy(model))
    config: Any = model.config
    vocab = int(config.vocab_size)
    ids = torch.arange(2 * 16).reshape(2, 16) % vocab
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("tokens")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapped,
            (ids,),
            dynamo=True,
            dynamic_shapes={"input_ids": {0: batch, 1: seq}},
            input_names=["input_ids"],
            output_names=["logits"],
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    _dedup_transposes(proto)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    onnx.save_model(proto, str(tmp))
    os.replace(tmp, path)
    return path


def onnx_initializer_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the stored weights (initializers) of an ONNX file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in proto.graph.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        total += n * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return total


def onnx_logits(
    path: str | os.PathLike[str], input_ids: NDArray[np.int64] | torch.Tensor, threads: int = 0
) -> NDArray[np.float32]:
    """Logits of ``input_ids`` (batch x tokens) from the ONNX file, run by ONNX Runtime.

    Parameters
    ----------
    path : path
        A file written by :func:`export_onnx`.
    input_ids : array, shape=[batch, tokens]
    threads : int
        Intra-op threads (0: ONNX Runtime's default).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise AdapterError(
            "running ONNX files needs onnxruntime; pip install onnxruntime"
        ) from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ids = np.asarray(input_ids, dtype=np.int64)
    out: NDArray[np.float32] = session.run(["logits"], {"input_ids": ids})[0]
    return out
