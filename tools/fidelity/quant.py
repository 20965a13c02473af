"""Codes of kvstash's quantizer computed in numpy, for the cross-layer agreement study.

The same asymmetric min-max quantizer and the same groups as the codec (docs/format.md
section 3): per-channel groups of 32 tokens for K, per-token groups of 32 channels for V,
fp32 arithmetic, q = rint(clamp((x − mn) / s, 0, 2^b − 1)), code 0 for a constant group.
verify_against_codec() shows on real data that these are the codec's codes."""
from __future__ import annotations

import numpy as np

G = 32


def groups(x: np.ndarray, tensor: int) -> np.ndarray:
    """x [T, H, D] (float32, T multiple of 32) -> [n_groups, 32]."""
    T, H, D = x.shape
    if tensor == 0:  # K: per channel, 32 consecutive tokens
        return x.reshape(T // G, G, H, D).transpose(0, 2, 3, 1).reshape(-1, G)
    return x.reshape(T, H, D // G, G).reshape(-1, G)  # V: per token, 32 channels


def codes(x16: np.ndarray, tensor: int, b: int):
    """x16 [T, H, D] float16 -> (codes uint8 [n, 32], mn fp32 [n], s fp32 [n])."""
    x = groups(x16.astype(np.float32) + np.float32(0.0), tensor)
    mn = x.min(axis=1)
    mx = x.max(axis=1)
    lv = np.float32(2 ** b - 1)
    s = ((mx - mn) / lv).astype(np.float32)
    safe = np.where(s == 0, np.float32(1), s)
    q = np.rint(np.clip((x - mn[:, None]) / safe[:, None], np.float32(0), lv))
    q[s == 0] = 0
    return q.astype(np.uint8), mn, s


class AgreementCounter:
    """Share of positions whose codes agree between layers l and l+1 (same group index)."""

    def __init__(self, L: int):
        self.L = L
        # [bits 1|2][tensor K|V][pair l] -> (identical, within ±1, total)
        self.c = np.zeros((2, 2, L - 1, 3), dtype=np.int64)
        # [bits][tensor][layer][code]: code histograms, for the agreement two layers would
        # show by chance if their codes were independent (product of the marginals)
        self.hist = np.zeros((2, 2, L, 4), dtype=np.int64)

    def add(self, kv16: np.ndarray):
        """kv16 [L, 2, T, H, D] float16."""
        for bi, b in enumerate((1, 2)):
            for x in range(2):
                prev = None
                for l in range(self.L):
                    q, _, _ = codes(kv16[l, x], x, b)
                    self.hist[bi, x, l] += np.bincount(q.ravel(), minlength=4)[:4]
                    q = q.astype(np.int16)
                    if prev is not None:
                        d = np.abs(q - prev)
                        self.c[bi, x, l - 1] += (int((d == 0).sum()), int((d <= 1).sum()), d.size)
                    prev = q

    def summary(self) -> dict:
        out = {}
        for bi, b in enumerate((1, 2)):
            for x, name in enumerate(("K", "V")):
                c = self.c[bi, x]
                tot = np.maximum(c[:, 2], 1)
                same = c[:, 0] / tot
                near = c[:, 1] / tot
                even = np.arange(0, self.L - 1, 2)  # pairs (0,1), (2,3), ...: what XQuant shares
                p = self.hist[bi, x] / np.maximum(self.hist[bi, x].sum(axis=1, keepdims=True), 1)
                near_m = (np.abs(np.arange(4)[:, None] - np.arange(4)[None, :]) <= 1).astype(float)
                ch_same = np.array([p[l] @ p[l + 1] for l in range(self.L - 1)])
                ch_near = np.array([p[l] @ near_m @ p[l + 1] for l in range(self.L - 1)])
                out[f"{b}bit_{name}"] = dict(
                    identical=same.tolist(), within1=near.tolist(),
                    identical_mean=float(same.mean()), within1_mean=float(near.mean()),
                    identical_pairs_mean=float(c[even, 0].sum() / max(c[even, 2].sum(), 1)),
                    within1_pairs_mean=float(c[even, 1].sum() / max(c[even, 2].sum(), 1)),
                    chance_identical=ch_same.tolist(), chance_within1=ch_near.tolist(),
                    chance_identical_mean=float(ch_same.mean()),
                    chance_within1_mean=float(ch_near.mean()))
        return out


def verify_against_codec(codec, kv16: np.ndarray) -> bool:
    """kivi-2 (2-bit, η = 0): the codec's decoded value of each element must be
    fp16(q·fp16(s) + fp16(mn)) with q, s, mn from codes() — bit for bit. Also 1 bit via
    asymkv-1.5's values. True when both match exactly."""
    L = kv16.shape[0]
    ok = True
    for name, x, b in (("kivi-2", 0, 2), ("kivi-2", 1, 2), ("asymkv-1.5", 1, 1)):
        c = codec.preset(name, L)
        rest = codec.decode(codec.encode(kv16, c)).reshape(kv16.shape)
        for l in range(L):
            q, mn, s = codes(kv16[l, x], x, b)
            s16 = s.astype(np.float16).astype(np.float32)
            z16 = mn.astype(np.float16).astype(np.float32)
            mine = (q.astype(np.float32) * s16[:, None] + z16[:, None]).astype(np.float16)
            theirs = groups(rest[l, x].astype(np.float32), x).astype(np.float16)
            if not np.array_equal(mine.view(np.uint16), theirs.view(np.uint16)):
                ok = False
    return ok
