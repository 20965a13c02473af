"""Paged KV caches in the inference engines' own layouts (docs/python.md, docs/api.md
"Paged caches").

Each helper takes an engine's cache tensors (numpy arrays or torch tensors, host or CUDA)
and the block ids of a sequence, and returns a :class:`PagedCache`: per layer a K plane and
a V plane, each described by the address of its block 0 and three byte strides (block,
token, head). kvstash gathers from and scatters into such planes directly: ``put_paged`` and
``get_paged`` / ``get_prefix(into=...)`` of :class:`kvstash.Client`. Nothing is copied here.

Every plane is viewed as ``[num_blocks, block_size, H, D]`` with D contiguous; the helpers
differ only in how they make that view from the engine's tensor:

=====================================  ==========================================  =========================
engine layout                          per-layer tensor shape                      helper
=====================================  ==========================================  =========================
vLLM FlashAttention, older releases    ``(2, num_blocks, block_size, H, D)``       :func:`vllm_kv_first`
vLLM, later releases                   ``(num_blocks, 2, block_size, H, D)``       :func:`vllm_blocks_first`
vLLM, newest releases (K, V packed)    ``(num_blocks, H, block_size, 2*D)``        :func:`vllm_packed`
SGLang token pool (MHA)                ``K[num_slots, H, D]``, ``V[num_slots, H, D]`` :func:`sglang_token_pool`
SGLang HiCache host, ``layer_first``   ``(2, L, slots, H, D)`` (all layers)        :func:`hicache_layer_first`
SGLang HiCache host, ``page_first``    ``(2, slots, L, H, D)`` (all layers)        :func:`hicache_page_first`
SGLang HiCache, ``page_first_direct``  ``(2, num_pages, L, page_size, H, D)``      :func:`hicache_page_first_direct`
=====================================  ==========================================  =========================

vLLM's HND memory order (``VLLM_KV_CACHE_LAYOUT=HND``) needs nothing extra: the tensor's
strides say where each element is, and the helpers read strides, not shapes alone.

The memory must be in a region the client has registered: a CUDA allocation registered with
:meth:`kvstash.Client.register_cuda`, or a shared-memory host buffer from
:meth:`kvstash.Client.host_buffer` (an engine's host pool must be allocated there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from . import _arrays
from .errors import invalid


@dataclass(frozen=True)
class Plane:
    """One K or V plane of one layer: ``ptr`` is block 0's address (host or device),
    ``extent`` the bytes from there that the plane spans."""

    ptr: int
    extent: int


@dataclass
class PagedCache:
    """A paged KV cache and the blocks of one sequence in it.

    Element (head h, dim d) of the sequence's token t is at byte
    ``planes[2*l + kv].ptr + b*block_stride + s*token_stride + h*head_stride + 2*d`` with
    ``s = (first_slot + t) % block_size`` and ``b = block_ids[(first_slot + t) // block_size]``.
    """

    planes: list[Plane]            # [l0 K, l0 V, l1 K, ...]
    block_size: int                # tokens per block (page size)
    block_stride: int              # bytes
    token_stride: int              # bytes
    head_stride: int               # bytes
    num_heads: int                 # heads held by the planes
    head_dim: int
    dtype: str                     # "fp16" or "bf16"
    device: int | None             # CUDA device index; None for host memory
    block_ids: list[int] = field(default_factory=list)
    first_slot: int = 0
    keepalive: list[Any] = field(default_factory=list, repr=False)

    @property
    def num_layers(self) -> int:
        return len(self.planes) // 2

    def with_blocks(self, block_ids: Sequence[int] | np.ndarray, first_slot: int = 0) -> "PagedCache":
        """The same cache with another sequence's blocks."""
        ids = [int(b) for b in np.asarray(block_ids).reshape(-1)]
        return PagedCache(self.planes, self.block_size, self.block_stride, self.token_stride,
                          self.head_stride, self.num_heads, self.head_dim, self.dtype,
                          self.device, ids, first_slot, self.keepalive)

    def window(self, t0: int, tokens: int) -> tuple[list[int], int]:
        """Block ids and first slot of tokens ``[t0, t0 + tokens)`` of the sequence."""
        s0 = self.first_slot + t0
        first = s0 // self.block_size
        slot = s0 % self.block_size
        count = -(-(slot + tokens) // self.block_size)
        if first + count > len(self.block_ids):
            raise invalid(f"block_ids: {len(self.block_ids)} blocks of {self.block_size} from "
                          f"slot {self.first_slot} hold fewer than {t0 + tokens} tokens")
        return self.block_ids[first:first + count], slot

    def capacity(self) -> int:
        """Tokens the sequence's blocks hold after ``first_slot``."""
        return len(self.block_ids) * self.block_size - self.first_slot


def _strides_bytes(x: Any) -> tuple[int, ...]:
    if _arrays.is_torch(x):
        return tuple(s * x.element_size() for s in x.stride())
    return tuple(int(s) for s in x.strides)


def _plane_of(x: Any, what: str) -> tuple[Plane, tuple[int, ...], tuple[int, ...], Any]:
    """A [num_blocks, block_size, H, D] view as a Plane plus its shape and byte strides."""
    v = _arrays.view(x)
    if len(v.shape) != 4:
        raise invalid(f"{what}: expected a [num_blocks, block_size, H, D] view, got shape {v.shape}")
    st = _strides_bytes(x)
    if st[3] != 2:
        raise invalid(f"{what}: the head_dim axis must be contiguous (stride 2 bytes), got {st[3]}")
    if min(st[:3]) < 0:
        raise invalid(f"{what}: negative strides are not supported")
    nb, bs, h, d = v.shape
    extent = (nb - 1) * st[0] + (bs - 1) * st[1] + (h - 1) * st[2] + d * 2
    return Plane(v.ptr, extent), v.shape, st, v


def from_views(k_views: Sequence[Any], v_views: Sequence[Any], block_ids: Sequence[int] = (),
               first_slot: int = 0) -> PagedCache:
    """A PagedCache from per-layer K and V views shaped ``[num_blocks, block_size, H, D]``.

    The views may have any strides (D contiguous); all planes must share shape, strides,
    dtype and device. This is the general form every engine helper reduces to.
    """
    if len(k_views) != len(v_views) or not k_views:
        raise invalid(f"planes: {len(k_views)} K views and {len(v_views)} V views; need the "
                      "same number, at least one")
    planes: list[Plane] = []
    shape = strides = None
    dtype = device = None
    keep: list[Any] = []
    for l, (k, vv) in enumerate(zip(k_views, v_views)):
        for kv, x in (("K", k), ("V", vv)):
            what = f"layer {l} {kv}"
            p, sh, st, av = _plane_of(x, what)
            if av.dtype not in ("fp16", "bf16"):
                raise invalid(f"{what}: dtype must be float16 or bfloat16")
            if shape is None:
                shape, strides, dtype, device = sh, st, av.dtype, av.cuda_device
            elif (sh, st, av.dtype, av.cuda_device) != (shape, strides, dtype, device):
                raise invalid(f"{what}: shape {sh}, strides {st}, {av.dtype} on "
                              f"{av.cuda_device} differ from layer 0 K's {shape}, {strides}, "
                              f"{dtype} on {device}")
            planes.append(p)
            keep.append(x)
    assert shape is not None and strides is not None and dtype is not None
    return PagedCache(planes, shape[1], strides[0], strides[1], strides[2], shape[2], shape[3],
                      dtype, device, [int(b) for b in np.asarray(block_ids).reshape(-1)],
                      first_slot, keep)


def _slots_as_pages(x: Any, page_size: int, what: str) -> Any:
    """A [num_slots, H, D] (any strides) as a [num_slots // page_size, page_size, H, D] view."""
    if len(x.shape) != 3:
        raise invalid(f"{what}: expected [num_slots, H, D], got shape {tuple(x.shape)}")
    n, h, d = (int(s) for s in x.shape)
    if page_size <= 0 or n % page_size:
        raise invalid(f"{what}: {n} slots are not a whole number of pages of {page_size}")
    if _arrays.is_torch(x):
        s = x.stride()
        return x.as_strided((n // page_size, page_size, h, d),
                            (page_size * s[0], s[0], s[1], s[2]))
    s = x.strides
    return np.lib.stride_tricks.as_strided(x, (n // page_size, page_size, h, d),
                                           (page_size * s[0], s[0], s[1], s[2]))


def vllm_kv_first(kv_caches: Sequence[Any], block_ids: Sequence[int] = (),
                  first_slot: int = 0) -> PagedCache:
    """vLLM's older FlashAttention layout: per layer ``(2, num_blocks, block_size, H, D)``
    (NHD, or HND memory order through strides)."""
    return from_views([t[0] for t in kv_caches], [t[1] for t in kv_caches], block_ids, first_slot)


def vllm_blocks_first(kv_caches: Sequence[Any], block_ids: Sequence[int] = (),
                      first_slot: int = 0) -> PagedCache:
    """vLLM's later layout: per layer ``(num_blocks, 2, block_size, H, D)``."""
    return from_views([t[:, 0] for t in kv_caches], [t[:, 1] for t in kv_caches], block_ids,
                      first_slot)


def vllm_packed(kv_caches: Sequence[Any], block_ids: Sequence[int] = (),
                first_slot: int = 0) -> PagedCache:
    """vLLM's newest layout: per layer ``(num_blocks, H, block_size, 2*D)``, K in the first
    D and V in the second D of each row (``kv.transpose(1, 2).split(D, -1)``)."""
    ks, vs = [], []
    for l, t in enumerate(kv_caches):
        if len(t.shape) != 4 or t.shape[3] % 2:
            raise invalid(f"kv_caches[{l}]: expected (num_blocks, H, block_size, 2*D), got "
                          f"{tuple(t.shape)}")
        d = int(t.shape[3]) // 2
        tt = t.transpose(1, 2) if _arrays.is_torch(t) else t.transpose(0, 2, 1, 3)
        ks.append(tt[..., :d])
        vs.append(tt[..., d:])
    return from_views(ks, vs, block_ids, first_slot)


def sglang_token_pool(k_buffers: Sequence[Any], v_buffers: Sequence[Any], page_size: int,
                      block_ids: Sequence[int] = (), first_slot: int = 0) -> PagedCache:
    """SGLang's MHA token pool: per layer ``K[num_slots, H, D]`` and ``V[num_slots, H, D]``;
    a block is a page of ``page_size`` slots, so ``block_ids`` are page indices
    (``slot // page_size``)."""
    return from_views([_slots_as_pages(k, page_size, f"k_buffers[{i}]") for i, k in enumerate(k_buffers)],
                      [_slots_as_pages(v, page_size, f"v_buffers[{i}]") for i, v in enumerate(v_buffers)],
                      block_ids, first_slot)


def hicache_layer_first(kv: Any, page_size: int, block_ids: Sequence[int] = (),
                        first_slot: int = 0) -> PagedCache:
    """SGLang HiCache host pool, ``layer_first``: ``(2, L, slots, H, D)``."""
    if len(kv.shape) != 5 or kv.shape[0] != 2:
        raise invalid(f"kv: expected (2, L, slots, H, D), got {tuple(kv.shape)}")
    L = int(kv.shape[1])
    return from_views([_slots_as_pages(kv[0, l], page_size, f"kv[0, {l}]") for l in range(L)],
                      [_slots_as_pages(kv[1, l], page_size, f"kv[1, {l}]") for l in range(L)],
                      block_ids, first_slot)


def hicache_page_first(kv: Any, page_size: int, block_ids: Sequence[int] = (),
                       first_slot: int = 0) -> PagedCache:
    """SGLang HiCache host pool, ``page_first``: ``(2, slots, L, H, D)``."""
    if len(kv.shape) != 5 or kv.shape[0] != 2:
        raise invalid(f"kv: expected (2, slots, L, H, D), got {tuple(kv.shape)}")
    L = int(kv.shape[2])
    return from_views([_slots_as_pages(kv[0, :, l], page_size, f"kv[0, :, {l}]") for l in range(L)],
                      [_slots_as_pages(kv[1, :, l], page_size, f"kv[1, :, {l}]") for l in range(L)],
                      block_ids, first_slot)


def hicache_page_first_direct(kv: Any, block_ids: Sequence[int] = (),
                              first_slot: int = 0) -> PagedCache:
    """SGLang HiCache host pool, ``page_first_direct``: ``(2, num_pages, L, page_size, H, D)``."""
    if len(kv.shape) != 6 or kv.shape[0] != 2:
        raise invalid(f"kv: expected (2, num_pages, L, page_size, H, D), got {tuple(kv.shape)}")
    L = int(kv.shape[2])
    return from_views([kv[0, :, l] for l in range(L)], [kv[1, :, l] for l in range(L)],
                      block_ids, first_slot)


def dense(kv: Any, first_slot: int = 0) -> PagedCache:
    """A transformers-style dense cache: per layer K and V ``[H, T, D]`` (one sequence),
    given as ``kv`` of shape ``[L, 2, H, T, D]`` (any strides, D contiguous): one block of T
    slots, token stride D, head stride T*D. Restoring a prefix into it writes each layer's
    ``[H, T, D]`` in place."""
    if len(kv.shape) != 5 or kv.shape[1] != 2:
        raise invalid(f"kv: expected [L, 2, H, T, D], got {tuple(kv.shape)}")
    L = int(kv.shape[0])

    def as_block(x: Any) -> Any:  # [H, T, D] -> [1, T, H, D]
        return x.permute(1, 0, 2).unsqueeze(0) if _arrays.is_torch(x) else x.transpose(1, 0, 2)[None]

    return from_views([as_block(kv[l, 0]) for l in range(L)], [as_block(kv[l, 1]) for l in range(L)],
                      [0], first_slot)
