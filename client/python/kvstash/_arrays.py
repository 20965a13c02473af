"""numpy and torch arrays as kvstash sees them: dtype, device, address, contiguity.

torch is never imported here: a tensor is recognised by its type's module, and torch is
imported only by helpers that are handed a tensor or asked for one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import invalid
from .v1 import kvstash_pb2 as pb

try:  # bf16 for numpy; optional (a uint16 view with dtype="bf16" works without it)
    import ml_dtypes as _ml_dtypes

    NP_BF16: Any = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    NP_BF16 = None

DTYPES = {"fp16": pb.DTYPE_FP16, "bf16": pb.DTYPE_BF16}
DTYPE_NAMES = {pb.DTYPE_FP16: "fp16", pb.DTYPE_BF16: "bf16"}


def is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def torch_module():
    """Imports torch on demand, with a clear error when it is missing."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover
        raise invalid("this call needs torch (pip install torch)") from e
    return torch


@dataclass
class ArrayView:
    """What the client needs of an array: where it is and what it holds."""

    obj: Any
    torch: bool
    shape: tuple[int, ...]
    dtype: str | None      # "fp16", "bf16", "u16" (a uint16 view: the caller names it), else None
    ptr: int
    nbytes: int
    contiguous: bool
    cuda_device: int | None  # CUDA device index, None on the host


def view(x: Any) -> ArrayView:
    """Describes a numpy array or a torch tensor; INVALID_ARGUMENT for anything else."""
    if isinstance(x, np.ndarray):
        dt = x.dtype
        name = ("fp16" if dt == np.float16 else "bf16" if NP_BF16 is not None and dt == NP_BF16
                else "u16" if dt == np.uint16 else None)
        return ArrayView(x, False, tuple(x.shape), name, x.__array_interface__["data"][0],
                         x.nbytes, bool(x.flags["C_CONTIGUOUS"]), None)
    if is_torch(x):
        torch = sys.modules["torch"]
        name = {torch.float16: "fp16", torch.bfloat16: "bf16",
                torch.uint16: "u16"}.get(x.dtype) if hasattr(torch, "uint16") else \
            {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(x.dtype)
        dev = x.device.index if x.device.type == "cuda" else None
        if x.device.type == "cuda" and dev is None:
            dev = torch.cuda.current_device()
        if x.device.type not in ("cpu", "cuda"):
            raise invalid(f"tensor on device {x.device}: only cpu and cuda tensors are supported")
        return ArrayView(x, True, tuple(x.shape), name, x.data_ptr(),
                         x.numel() * x.element_size(), x.is_contiguous(), dev)
    raise invalid(f"expected a numpy array or a torch tensor, got {type(x).__name__}")


def wire_dtype(v: ArrayView, dtype: str | None, what: str) -> int:
    """The wire dtype of an array: its own, or `dtype` for a uint16 view."""
    if dtype is not None and dtype not in DTYPES:
        raise invalid(f"dtype: {dtype!r} must be 'fp16' or 'bf16'")
    if v.dtype in ("fp16", "bf16"):
        if dtype is not None and dtype != v.dtype:
            raise invalid(f"{what}: array is {v.dtype} but dtype={dtype!r} was given")
        return DTYPES[v.dtype]
    if v.dtype == "u16":
        if dtype is None:
            raise invalid(f"{what}: a uint16 array needs dtype='fp16' or dtype='bf16' to say "
                          "what its bits are")
        return DTYPES[dtype]
    raise invalid(f"{what}: dtype must be float16 or bfloat16 (or a uint16 view with "
                  f"dtype=...), got {getattr(v.obj, 'dtype', '?')}")


def host_bytes(v: ArrayView) -> bytes:
    """The array's bytes in C order (copies; a CUDA tensor is copied to the host)."""
    if v.torch:
        t = v.obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        torch = sys.modules["torch"]
        return t.view(torch.int16).numpy().tobytes() if t.numel() else b""
    return np.ascontiguousarray(v.obj).tobytes()


def numpy_dtype(wire: int) -> np.dtype:
    """numpy dtype for a wire dtype: float16, ml_dtypes.bfloat16, or uint16 without it."""
    if wire == pb.DTYPE_FP16:
        return np.dtype(np.float16)
    return NP_BF16 if NP_BF16 is not None else np.dtype(np.uint16)


def torch_dtype(wire: int):
    torch = torch_module()
    return torch.float16 if wire == pb.DTYPE_FP16 else torch.bfloat16
