"""ctypes binding to kvstash's own C++ codec through libkvstash_codec_capi.so
(kernels/capi): encode / decode go through kernels::Encode and kernels::Decode, the bit
counts through kernels::EquivalentBits and kernels::TrueBits, the presets through
kernels::PresetConfig. Nothing of the codec is re-implemented here."""
from __future__ import annotations

import ctypes as C
import glob
import os
from dataclasses import dataclass

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB_NAME = "libkvstash_codec_capi.so"


class kvs_shape(C.Structure):
    _fields_ = [("num_layers", C.c_uint32), ("num_tokens", C.c_uint32),
                ("num_heads", C.c_uint32), ("head_dim", C.c_uint32), ("dtype", C.c_uint32)]


class kvs_config(C.Structure):
    _fields_ = [("raw", C.c_uint32), ("k_q", C.c_uint32), ("v_q", C.c_uint32),
                ("k_m", C.c_uint32), ("v_m", C.c_uint32), ("eta1", C.c_float),
                ("eta2", C.c_float), ("preset", C.c_uint32)]


@dataclass(frozen=True)
class CodecConfig:
    raw: bool = False
    k_q: int = 0
    v_q: int = 0
    k_m: int = 0
    v_m: int = 0
    eta1: float = 0.0
    eta2: float = 0.0
    preset: int = 0  # 0 custom, 1 fp16, 2 kivi-2, 3 asymkv-1.5, 4 xquant

    def c(self) -> kvs_config:
        return kvs_config(int(self.raw), self.k_q, self.v_q, self.k_m, self.v_m,
                          self.eta1, self.eta2, self.preset)


class CodecError(RuntimeError):
    pass


def find_library() -> str:
    env = os.environ.get("KVSTASH_CODEC_CAPI")
    if env:
        return env
    cands = [os.path.join(REPO, "build", "kernels", "capi", LIB_NAME)]
    cands += sorted(glob.glob(os.path.join(REPO, "build*", "kernels", "capi", LIB_NAME)))
    cands += sorted(glob.glob(os.path.join("/tmp", "build*", "kernels", "capi", LIB_NAME)))
    for c in cands:
        if os.path.isfile(c):
            return c
    raise CodecError(f"{LIB_NAME} not found: build target kvstash_codec_capi or set "
                     "KVSTASH_CODEC_CAPI")


class Codec:
    def __init__(self, path: str | None = None):
        self.path = path or find_library()
        lib = C.CDLL(self.path)
        P = C.POINTER
        lib.kvs_capi_version.restype = C.c_int
        lib.kvs_fast_path_name.restype = C.c_char_p
        lib.kvs_preset_config.argtypes = [C.c_char_p, C.c_uint32, P(kvs_config), C.c_char_p, C.c_size_t]
        lib.kvs_chunk_bytes.argtypes = [P(kvs_shape), P(kvs_config), P(C.c_uint64), C.c_char_p, C.c_size_t]
        lib.kvs_bits.argtypes = [P(kvs_shape), P(kvs_config), P(C.c_double), P(C.c_double),
                                 C.c_char_p, C.c_size_t]
        lib.kvs_encode.argtypes = [P(kvs_shape), P(kvs_config), C.c_void_p, C.c_uint64, C.c_void_p,
                                   C.c_uint64, P(C.c_uint64), C.c_int, C.c_char_p, C.c_size_t]
        lib.kvs_decoded_elements.argtypes = [C.c_void_p, C.c_uint64, C.c_uint32, C.c_uint32,
                                             C.c_uint32, C.c_uint32, P(C.c_uint64), C.c_char_p,
                                             C.c_size_t]
        lib.kvs_decode.argtypes = [C.c_void_p, C.c_uint64, C.c_uint32, C.c_uint32, C.c_uint32,
                                   C.c_uint32, C.c_uint32, C.c_void_p, C.c_uint64, C.c_int,
                                   C.c_char_p, C.c_size_t]
        for f in ("kvs_preset_config", "kvs_chunk_bytes", "kvs_bits", "kvs_encode",
                  "kvs_decoded_elements", "kvs_decode"):
            getattr(lib, f).restype = C.c_int
        self.lib = lib
        self.version = lib.kvs_capi_version()
        self.fast_path = lib.kvs_fast_path_name().decode()

    @staticmethod
    def _check(rc, err, what):
        if rc != 0:
            raise CodecError(f"{what}: code {rc}: {err.value.decode(errors='replace')}")

    def preset(self, name: str, num_layers: int) -> CodecConfig:
        out, err = kvs_config(), C.create_string_buffer(512)
        self._check(self.lib.kvs_preset_config(name.encode(), num_layers, C.byref(out), err, 512),
                    err, f"preset {name}")
        return CodecConfig(bool(out.raw), out.k_q, out.v_q, out.k_m, out.v_m, out.eta1,
                           out.eta2, out.preset)

    @staticmethod
    def _shape(shape, dtype=1) -> kvs_shape:
        L, T, H, D = shape
        return kvs_shape(L, T, H, D, dtype)

    def bits(self, shape, config: CodecConfig) -> tuple[float, float]:
        """(equivalent bits, true bits per element) for a [L, T, H, D] chunk."""
        eq, tb, err = C.c_double(), C.c_double(), C.create_string_buffer(512)
        s, c = self._shape(shape), config.c()
        self._check(self.lib.kvs_bits(C.byref(s), C.byref(c), C.byref(eq), C.byref(tb), err, 512),
                    err, "bits")
        return eq.value, tb.value

    def encode(self, kv: np.ndarray, config: CodecConfig, impl: int = 0) -> bytes:
        """kv: float16 array [L, 2, T, H, D]. Returns the stored chunk."""
        kv = np.ascontiguousarray(kv, dtype=np.float16)
        L, two, T, H, D = kv.shape
        assert two == 2
        s, c = self._shape((L, T, H, D)), config.c()
        n, err = C.c_uint64(), C.create_string_buffer(512)
        self._check(self.lib.kvs_chunk_bytes(C.byref(s), C.byref(c), C.byref(n), err, 512),
                    err, "chunk_bytes")
        out = np.empty(n.value, dtype=np.uint8)
        size = C.c_uint64()
        self._check(self.lib.kvs_encode(C.byref(s), C.byref(c), kv.ctypes.data, kv.size,
                                        out.ctypes.data, out.size, C.byref(size), impl, err, 512),
                    err, "encode")
        return out[: size.value].tobytes()

    def decode(self, chunk: bytes, layers=(0, 0), heads=(0, 0), impl: int = 0) -> np.ndarray:
        """Decodes a slice to float16, flat [l1-l0][2][T][h1-h0][D] (reshape with the
        caller's shape)."""
        buf = np.frombuffer(chunk, dtype=np.uint8)
        n, err = C.c_uint64(), C.create_string_buffer(512)
        self._check(self.lib.kvs_decoded_elements(buf.ctypes.data, buf.size, layers[0], layers[1],
                                                  heads[0], heads[1], C.byref(n), err, 512),
                    err, "decoded_elements")
        out = np.empty(n.value, dtype=np.float16)
        self._check(self.lib.kvs_decode(buf.ctypes.data, buf.size, layers[0], layers[1], heads[0],
                                        heads[1], 1, out.ctypes.data, out.size, impl, err, 512),
                    err, "decode")
        return out

    def roundtrip(self, kv: np.ndarray, config: CodecConfig) -> tuple[np.ndarray, int]:
        """Encode + decode a [L, 2, T, H, D] float16 cache; returns (restored, chunk bytes)."""
        chunk = self.encode(kv, config)
        return self.decode(chunk).reshape(kv.shape), len(chunk)
