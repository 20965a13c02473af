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


def _token_array(tokens: Sequence[int] | np.ndarray | Iterable[int]) -> np.ndarray:
    """Token ids as little-endian 32-bit words (ids >= 2^31 wrap to their two's complement
    bytes, as a C++ int32_t cast does). ValueError for anything that is not 1-D integers
    within 32 bits."""
    if hasattr(tokens, "detach"):  # a torch tensor
        tokens = tokens.detach().cpu().numpy()
    if isinstance(tokens, np.ndarray):
        a = tokens
    elif isinstance(tokens, (list, tuple)):
        try:
            a = np.array(tokens, dtype=np.int64) if tokens else np.zeros(0, np.int64)
        except (OverflowError, TypeError, ValueError) as e:
            raise ValueError(f"token_ids: every id must be an integer within 32 bits ({e})") from None
    else:
        a = np.fromiter(tokens, dtype=np.int64)
    if a.ndim != 1:
        raise ValueError(f"token_ids: expected a 1-D sequence, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, "<u4")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"token_ids: expected integers, got dtype {a.dtype}")
    if a.dtype.itemsize > 4 or a.dtype == np.uint32:
        if a.min() < -(1 << 31) or a.max() >= (1 << 32):
            raise ValueError("token_ids: every id must fit in 32 bits")
    return a.astype("<u4")  # a C-style cast: negative ids wrap, as in C++


def chain_key(prev: ChunkKey | None, tokens: Sequence[int] | np.ndarray, namespace: str) -> ChunkKey:
    """The key of the chunk holding ``tokens`` after the chunk keyed ``prev`` (None: first)."""
    p = prev or ChunkKey(0, 0)
    buf = (p.hi.to_bytes(8, "little") + p.lo.to_bytes(8, "little")
           + _token_array(tokens).tobytes() + namespace.encode("utf-8"))
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
    words = _token_array(token_ids)
    raw = words.tobytes()
    ns = namespace.encode("utf-8")
    step = 4 * chunk_tokens
    p = prev or ChunkKey(0, 0)
    hi, lo = p.hi, p.lo
    keys: list[ChunkKey] = []
    digest = xxhash.xxh3_128_intdigest
    for i in range(words.size // chunk_tokens):
        d = digest(hi.to_bytes(8, "little") + lo.to_bytes(8, "little")
                   + raw[i * step:(i + 1) * step] + ns)
        hi, lo = d >> 64, d & _MASK64
        keys.append(ChunkKey(hi, lo))
    return keys
