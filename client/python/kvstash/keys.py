"""Chunk keys: the canonical chain function of docs/api.md ("Chunk keys").

``key_i = XXH3_128(key_{i-1} || tokens_i || namespace)`` with ``key_{-1} = 0``; each key's
16 bytes are its ``hi`` then its ``lo``, little-endian; tokens are 32-bit little-endian
two's complement. Byte-identical to the C++ client's ``ChainKey``/``ChainKeys`` (both are
checked against tests/fixtures/chunk_keys.json).
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np
import xxhash

_MASK64 = (1 << 64) - 1


class ChunkKey(NamedTuple):
    """A 128-bit chunk key: ``hi`` and ``lo`` are unsigned 64-bit integers."""

    hi: int
    lo: int

    def hex(self) -> str:
        """32 lowercase hex digits, ``hi`` then ``lo`` (as in logs, errors and the CLI)."""
        return f"{self.hi:016x}{self.lo:016x}"

    @classmethod
    def from_hex(cls, text: str) -> "ChunkKey":
        """Parses 32 hex digits (``hi`` then ``lo``)."""
        if len(text) != 32:
            raise ValueError(f"chunk key {text!r}: expected 32 hex digits")
        v = int(text, 16)
        return cls(v >> 64, v & _MASK64)

    def __str__(self) -> str:
        return self.hex()


def _token_bytes(tokens: Sequence[int] | np.ndarray) -> bytes:
    a = np.asarray(tokens)
    if a.ndim != 1:
        raise ValueError(f"token_ids: expected a 1-D sequence, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"token_ids: expected integers, got dtype {a.dtype}")
    if a.size and (a.min() < -(1 << 31) or a.max() >= (1 << 32)):
        raise ValueError("token_ids: every id must fit in 32 bits")
    # Ids >= 2^31 wrap to their two's complement bytes, as a C++ int32_t cast does.
    return a.astype(np.int64).astype("<u4").tobytes() if a.size else b""


def chain_key(prev: ChunkKey | None, tokens: Sequence[int] | np.ndarray, namespace: str) -> ChunkKey:
    """The key of the chunk holding ``tokens`` after the chunk keyed ``prev`` (None: first)."""
    p = prev or ChunkKey(0, 0)
    buf = (p.hi.to_bytes(8, "little") + p.lo.to_bytes(8, "little") + _token_bytes(tokens)
           + namespace.encode("utf-8"))
    d = xxhash.xxh3_128_intdigest(buf)
    return ChunkKey(d >> 64, d & _MASK64)


def chunk_keys(token_ids: Sequence[int] | np.ndarray | Iterable[int], chunk_tokens: int,
               namespace: str, prev: ChunkKey | None = None) -> list[ChunkKey]:
    """Keys of the whole ``chunk_tokens``-token chunks of ``token_ids``, in order.

    Args:
        token_ids: the token ids (a list, a 1-D numpy array or a 1-D torch tensor).
        chunk_tokens: tokens per chunk, > 0. A trailing partial chunk gets no key.
        namespace: the namespace the chunks are stored in (part of every key).
        prev: the key of the chunk before ``token_ids[0]``, when they continue a chain.
    """
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens: {chunk_tokens} must be positive")
    if hasattr(token_ids, "detach"):  # a torch tensor
        token_ids = token_ids.detach().cpu().numpy()
    a = np.asarray(token_ids if not isinstance(token_ids, (list, tuple)) else list(token_ids))
    if a.ndim != 1:
        raise ValueError(f"token_ids: expected a 1-D sequence, got shape {a.shape}")
    keys: list[ChunkKey] = []
    k = prev
    for i in range(a.size // chunk_tokens):
        k = chain_key(k, a[i * chunk_tokens:(i + 1) * chunk_tokens], namespace)
        keys.append(k)
    return keys
