"""Codec choices: the presets by name, or a custom XQuant configuration (docs/format.md §2)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Union

import numpy as np

from .errors import invalid
from .v1 import kvstash_pb2 as pb

#: Preset names and what they cost (B_eq code bits / true stored bits per element, from
#: docs/format.md), best quality first. Quality on real models: bench/results/fidelity/.
PRESETS: dict[str, int] = {
    "fp16": pb.PRESET_FP16,            # lossless, 16 / 16 bits
    "kivi-2": pb.PRESET_KIVI_2,        # 2-bit keys and values, 2.0 / 3.0 bits
    "asymkv-1.5": pb.PRESET_ASYMKV_1_5,  # 2-bit keys, 1-bit values, 1.5 / 2.5 bits
    "xquant": pb.PRESET_XQUANT,        # + shared value codes, calibrated, 1.375 / 2.375 bits
}
_PRESET_NAMES = {v: k for k, v in PRESETS.items()}


@dataclass(frozen=True)
class CodecConfig:
    """A custom XQuant configuration (docs/format.md section 2).

    Layers ``[0, k_q)`` keep 2-bit keys, the rest 1-bit; likewise ``v_q`` for values. Odd
    layers ``>= k_m`` (``v_m``) reuse the key (value) codes of the layer below. ``eta1`` and
    ``eta2`` calibrate 1- and 2-bit groups, each in ``[0, 0.5)``.
    """

    k_q: int
    v_q: int
    k_m: int
    v_m: int
    eta1: float = 0.0
    eta2: float = 0.0

    def to_proto(self) -> pb.CodecConfig:
        return pb.CodecConfig(k_q=self.k_q, v_q=self.v_q, k_m=self.k_m, v_m=self.v_m,
                              eta1=self.eta1, eta2=self.eta2)

    @classmethod
    def from_proto(cls, c: pb.CodecConfig) -> "CodecConfig":
        # eta travels as a float32: show its shortest form (0.1, not 0.10000000149).
        return cls(c.k_q, c.v_q, c.k_m, c.v_m, _f32(c.eta1), _f32(c.eta2))


Codec = Union[str, CodecConfig]


@functools.lru_cache(maxsize=256)
def _f32(x: float) -> float:
    return float(str(np.float32(x)))


def codec_to_proto(codec: Codec) -> pb.Codec:
    """A preset name (``"xquant"``, ...) or a CodecConfig as the wire message."""
    if isinstance(codec, CodecConfig):
        return pb.Codec(custom=codec.to_proto())
    if isinstance(codec, str) and codec in PRESETS:
        return pb.Codec(preset=PRESETS[codec])
    raise invalid(f"codec: {codec!r} is neither a preset ({', '.join(PRESETS)}) "
                  f"nor a kvstash.CodecConfig")


def preset_name(preset: int) -> str | None:
    """The name of a wire preset; None for PRESET_UNSPECIFIED (a custom configuration)."""
    return _PRESET_NAMES.get(preset)
