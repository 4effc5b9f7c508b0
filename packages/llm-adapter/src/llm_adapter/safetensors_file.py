"""Reading safetensors files without trusting them: the header checked against the file.

Only the 8-byte length and the JSON header are read; no tensor data is.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from .errors import CheckpointError

__all__ = ["check_weight_files", "main_file_tensor_bytes", "read_safetensors_header"]


def main_file_tensor_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of tensor data in a safetensors file (its size less the 8-byte length and header)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
    return os.path.getsize(path) - 8 - int(header_len)


_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


def read_safetensors_header(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The tensor table of a safetensors file, checked against the file's size.

    Parameters
    ----------
    path : str or path

    Returns
    -------
    dict
        Tensor name -> ``{"dtype", "shape", "data_offsets"}`` (the
        ``__metadata__`` entry left out).

    Raises
    ------
    AdapterError
        For a missing, truncated or malformed file: a header that is not a
        JSON object, a tensor whose byte range does not match its shape and
        dtype or lies outside the file, or data of another length than the
        tensors need.
    """
    p = Path(path)
    fix = "the file is truncated or not a safetensors file; re-create or re-download it"
    if not p.is_file():
        raise CheckpointError(f"weights file {str(p)!r} does not exist")
    size = p.stat().st_size
    try:
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{str(p)!r} has {size} bytes, no safetensors header: {fix}")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100_000_000):
                raise CheckpointError(
                    f"{str(p)!r} announces a {n}-byte header in a {size}-byte file: {fix}"
                )
            header = json.loads(f.read(n).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{str(p)!r} has an unreadable header ({exc}): {fix}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{str(p)!r}: the header is not a JSON object: {fix}")
    header.pop("__metadata__", None)
    data = size - 8 - n
    end = 0
    for name, info in header.items():
        try:
            dtype, shape, (lo, hi) = info["dtype"], info["shape"], info["data_offsets"]
            numel = math.prod(int(s) for s in shape)
            ok = (
                dtype in _ITEMSIZE
                and all(isinstance(s, int) and s >= 0 for s in shape)
                and isinstance(lo, int)
                and isinstance(hi, int)
                and 0 <= lo <= hi
                and hi - lo == numel * _ITEMSIZE[dtype]
            )
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(
                f"{str(p)!r}: tensor {name} has a malformed entry {info!r}: {fix}"
            )
        end = max(end, hi)
    if end != data:
        raise CheckpointError(
            f"{str(p)!r} holds {data} bytes of tensor data, its header describes {end}: {fix}"
        )
    return header


def check_weight_files(path: str | os.PathLike[str]) -> None:
    """Check every ``*.safetensors`` file of a local model directory (see
    :func:`read_safetensors_header`); a hub id or a missing path is left to the loader.

    Parameters
    ----------
    path : str or path
    """
    root = Path(path)
    if root.is_dir():
        for file in sorted(root.glob("*.safetensors")):
            read_safetensors_header(file)
