"""The CUDA driver API calls the client needs, through ctypes (no compiled extension).

Only three facts are needed about a worker's device memory: the allocation that holds an
address (``cuMemGetAddressRange``), its IPC handle (``cuIpcGetMemHandle``) and the UUID of
its device (``cuDeviceGetUuid``), which names the device to the daemon independently of
``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from .errors import invalid

_lib = None


def _driver() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            _lib = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            raise invalid(f"CUDA driver (libcuda.so.1) not found: {e}") from e
    return _lib


def _check(rc: int, what: str) -> None:
    if rc != 0:
        lib = _driver()
        name = ctypes.c_char_p()
        lib.cuGetErrorName(rc, ctypes.byref(name))
        err = name.value.decode() if name.value else str(rc)
        raise invalid(f"{what}: {err}")


@dataclass(frozen=True)
class Allocation:
    base: int          # device address of the allocation's first byte
    size: int          # bytes
    handle: bytes      # the 64 bytes of its CUipcMemHandle
    device_uuid: bytes  # 16 bytes
    ordinal: int       # device index in this process


def allocation_of(ptr: int, ordinal: int) -> Allocation:
    """The allocation holding device address ``ptr`` on device ``ordinal``.

    REQUIRES: the device's primary context is current on this thread (torch makes it so
    once it has used the device; the caller enters ``torch.cuda.device(ordinal)``).
    INVALID_ARGUMENT when the memory cannot be shared over IPC (for example memory from
    PyTorch's ``expandable_segments`` allocator, which uses cuMemCreate).
    """
    lib = _driver()
    ctx = ctypes.c_void_p()
    _check(lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
    dev = ctypes.c_int()
    _check(lib.cuDeviceGet(ctypes.byref(dev), ordinal), "cuDeviceGet")
    if not ctx.value:
        _check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        _check(lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    base = ctypes.c_uint64()
    size = ctypes.c_size_t()
    _check(lib.cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size),
                                       ctypes.c_uint64(ptr)),
           "cuMemGetAddressRange (is this CUDA memory of this process?)")
    handle = (ctypes.c_char * 64)()
    rc = lib.cuIpcGetMemHandle(handle, ctypes.c_uint64(base.value))
    if rc != 0:
        _check(rc, "cuIpcGetMemHandle: this memory cannot be shared over CUDA IPC (PyTorch's "
                   "expandable_segments allocator is not supported: unset "
                   "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True)")
    uuid = (ctypes.c_char * 16)()
    fn = getattr(lib, "cuDeviceGetUuid_v2", None) or lib.cuDeviceGetUuid
    _check(fn(uuid, dev), "cuDeviceGetUuid")
    return Allocation(base.value, size.value, bytes(handle), bytes(uuid), ordinal)
