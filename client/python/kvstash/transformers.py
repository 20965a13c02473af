"""A kvstash-backed prefix cache for Hugging Face transformers (5.x, torch).

A worker that serves prompts sharing prefixes (system prompts, few-shot examples, a long
document asked several questions) recomputes those prefixes on every request. With
:class:`PrefixCache` it stores each prompt's whole chunks in kvstash after the prefill, and
before the next request restores the longest stored prefix straight into a
``DynamicCache``, so ``model.generate`` computes only the rest::

    import kvstash
    from kvstash.transformers import PrefixCache, generate_with_prefix_cache

    client = kvstash.Client("127.0.0.1:7450", namespace="llama-3-8b-instruct@bf16")
    pc = PrefixCache(client, model, chunk_tokens=256, codec="fp16")
    out = generate_with_prefix_cache(model, pc, input_ids, max_new_tokens=64, do_sample=False)

How the bytes move: a restore is one Lookup and one multi-key Get that the daemon decodes
into a registered staging tensor on the model's GPU (CUDA IPC; shared memory for a CPU
model) laid out ``[L, 2, H, T, D]``, i.e. each layer's K and V already ``[H, T, D]``; the
``DynamicCache`` is built from views of it (``DynamicCache`` copies them on its first
update, so the staging tensor is reused by the next request). A store copies the prompt's
K/V from the model's cache into the staging tensor (one device copy per layer) and puts the
new whole chunks from there; chunks already stored are not sent again.

Supported: decoder-only models with full attention on every layer whose cache is per layer
``[batch, H_kv, T, D]`` (Llama, Mistral without sliding window, Qwen2/Qwen3 families;
GQA included), fp16 or bf16 weights, batch size 1. Anything else (sliding-window or hybrid
layers, MLA, encoder-decoder, float32) is refused when the PrefixCache is made, with the
reason. A batch of several sequences is refused by ``restore``/``store`` (use one call per
sequence).

The namespace of the client must name the model exactly (weights, revision, dtype): keys
cover token ids only, and K/V of another model under the same namespace would be restored
as if they were this one's. Restored chunks of another geometry are refused and computed.

Failure is never wrong output: when the daemon is down, a chunk is missing or fails its
checksum, or anything else goes wrong in a restore, the request computes its prefix as if
there were no cache; each fallback is counted (:attr:`PrefixCache.stats`) and logged once
per kind of error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from . import layouts
from .client import Client
from .codec import Codec
from .errors import Error, invalid
from .keys import chunk_keys

log = logging.getLogger("kvstash.transformers")


@dataclass
class PrefixCacheStats:
    """Counters of one PrefixCache (monotonic)."""

    requests: int = 0          # restore() calls
    hit_tokens: int = 0        # tokens restored instead of computed
    prompt_tokens: int = 0     # tokens of the prompts restore() saw
    stored_chunks: int = 0     # chunks put by store()
    skipped_chunks: int = 0    # chunks store() found already stored
    fallbacks: int = 0         # restores or stores that failed and were computed / skipped
    last_restore: dict[str, float] = field(default_factory=dict)  # seconds: lookup, fetch, build


def _model_geometry(model: Any) -> tuple[int, int, int, Any, Any]:
    """(layers, kv heads, head dim, dtype, device) or INVALID_ARGUMENT naming the reason."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise invalid("model: not a transformers model (no .config)")
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    name = getattr(cfg, "model_type", "?")
    if getattr(cfg, "is_encoder_decoder", False):
        raise invalid(f"model: {name} is an encoder-decoder; only decoder-only models are supported")
    if getattr(text, "kv_lora_rank", None) or getattr(text, "q_lora_rank", None):
        raise invalid(f"model: {name} uses multi-head latent attention (MLA), whose cache is "
                      "not [batch, H_kv, T, D]; not supported")
    types = getattr(text, "layer_types", None)
    if types is not None:
        other = sorted({t for t in types if t != "full_attention"})
        if other:
            raise invalid(f"model: {name} has {', '.join(other)} layers (config.layer_types); "
                          "only full attention on every layer is supported")
    sw = getattr(text, "sliding_window", None)
    use_sw = getattr(text, "use_sliding_window", sw is not None)
    if sw is not None and use_sw:
        raise invalid(f"model: {name} uses sliding-window attention (config.sliding_window="
                      f"{sw}); its cache drops old tokens, so restored prefixes would not "
                      "match; not supported")
    L = getattr(text, "num_hidden_layers", None)
    heads = getattr(text, "num_attention_heads", None)
    kv = getattr(text, "num_key_value_heads", None) or heads
    D = getattr(text, "head_dim", None) or (text.hidden_size // heads if heads else None)
    if not (L and kv and D):
        raise invalid(f"model: {name}: cannot tell layers, KV heads and head dim from its config")
    if D % 32 or not 32 <= D <= 512:
        raise invalid(f"model: head_dim {D} is not a multiple of 32 in [32, 512] (kvstash's codec)")
    p = next(model.parameters())
    import torch

    if p.dtype not in (torch.float16, torch.bfloat16):
        raise invalid(f"model: weights are {p.dtype}; kvstash stores 16-bit K/V "
                      "(load the model in float16 or bfloat16)")
    return int(L), int(kv), int(D), p.dtype, p.device


class PrefixCache:
    """Stores prompts' chunks in kvstash and restores the longest stored prefix.

    Args:
        client: a :class:`kvstash.Client` whose namespace names this model exactly (with
            any address, token and TLS: its calls carry them).
        model: a supported transformers causal LM (see the module docstring); refused with
            ``kvstash.Error`` (INVALID_ARGUMENT) otherwise.
        chunk_tokens: tokens per stored chunk (default 256). Only whole chunks are stored
            and restored.
        codec: how chunks are stored: a preset (``"fp16"`` lossless, the default;
            ``"kivi-2"``, ``"asymkv-1.5"``, ``"xquant"``) or a ``kvstash.CodecConfig``.
            The lossy presets change the model's outputs: on SmolLM2-135M ``kivi-2`` changed
            27% of next-token argmaxes and ``xquant`` 53% (bench/results/prefix-cache.md;
            perplexity +20% and +157%, docs/fidelity.md); measure your model.

    Not thread-safe (one staging tensor); use one PrefixCache per worker thread.
    """

    def __init__(self, client: Client, model: Any, chunk_tokens: int = 256,
                 codec: Codec = "fp16") -> None:
        if chunk_tokens <= 0:
            raise invalid(f"chunk_tokens: {chunk_tokens} must be positive")
        self.client = client
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.codec = codec
        self.num_layers, self.num_heads, self.head_dim, self.dtype, self.device = \
            _model_geometry(model)
        self.stats = PrefixCacheStats()
        self._staging = None       # [L, 2, H, capacity, D] in registered memory
        self._staging_layout: layouts.PagedCache | None = None
        self._logged: set[str] = set()

    # --- staging ---------------------------------------------------------------------------

    def _stage(self, tokens: int) -> Any:
        """A registered [L, 2, H, >= tokens, D] tensor on the model's device."""
        import torch

        if self._staging is not None and self._staging.shape[3] >= tokens:
            return self._staging
        cap = max(tokens, self.chunk_tokens)
        cap = -(-cap // self.chunk_tokens) * self.chunk_tokens
        if self._staging is not None:
            for r in self.client.regions():
                if any(x is self._staging for x in r.keepalive):
                    self.client.unregister(r)
            self._staging = None
        shape = (self.num_layers, 2, self.num_heads, cap, self.head_dim)
        if self.device.type == "cuda":
            t = torch.empty(shape, dtype=self.dtype, device=self.device)
            self.client.register_cuda(t)
        else:
            t = self.client.host_buffer(shape, "bf16" if self.dtype == torch.bfloat16 else "fp16",
                                        torch=True)
        self._staging = t
        self._staging_layout = layouts.dense(t)  # described once: 2 planes per layer
        return t

    def _fallback(self, what: str, e: Exception) -> None:
        self.stats.fallbacks += 1
        kind = f"{what}:{getattr(e, 'code', type(e).__name__)}"
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("kvstash prefix cache: %s failed, computing instead (%s); further "
                        "failures of this kind are counted in PrefixCache.stats.fallbacks",
                        what, e)

    @staticmethod
    def _ids(input_ids: Any) -> Any:
        if input_ids.dim() == 2:
            if input_ids.shape[0] != 1:
                raise invalid(f"input_ids: batch of {input_ids.shape[0]} sequences; the prefix "
                              "cache handles one sequence per call")
            input_ids = input_ids[0]
        if input_ids.dim() != 1:
            raise invalid(f"input_ids: expected [1, T] or [T], got {tuple(input_ids.shape)}")
        return input_ids.detach().cpu().numpy()

    # --- restore ---------------------------------------------------------------------------

    def restore(self, input_ids: Any) -> tuple[Any, int]:
        """Looks up the longest stored prefix of ``input_ids`` (``[1, T]`` or ``[T]``, int64)
        and fetches it in one call.

        Returns ``(cache, tokens)``: a ``DynamicCache`` built for the model (``config=``)
        holding the first ``tokens`` tokens on the model's device and dtype, or
        ``(None, 0)`` when nothing is stored or the restore failed (then counted and
        logged). At least one token is always left to compute.
        """
        from transformers import DynamicCache

        ids = self._ids(input_ids)
        self.stats.requests += 1
        self.stats.prompt_tokens += len(ids)
        # Whole chunks only (a prompt made entirely of stored chunks: see below).
        limit = len(ids) // self.chunk_tokens * self.chunk_tokens
        if limit <= 0 or len(ids) < 2:
            return None, 0
        t0 = time.perf_counter()
        try:
            keys = chunk_keys(ids[:limit], self.chunk_tokens, self.client.namespace)
            n = self.client.lookup(keys)
            t1 = time.perf_counter()
            if n == 0:
                self.stats.last_restore = {"lookup": t1 - t0, "fetch": 0.0, "build": 0.0}
                return None, 0
            staging = self._stage(n * self.chunk_tokens)
            res = self.client.get_paged(keys[:n], self._staging_layout, allow_missing=True)
            t2 = time.perf_counter()
        except Error as e:
            self._fallback("restore", e)
            return None, 0
        found = 0
        for r in res:
            if not r.found:
                break
            if r.info.layout != (self.num_layers, self.chunk_tokens, self.num_heads,
                                 self.head_dim):
                self._fallback("restore", invalid(
                    f"stored chunk {r.key.hex()} has layout {r.info.layout}, this model needs "
                    f"{(self.num_layers, self.chunk_tokens, self.num_heads, self.head_dim)}; "
                    "is the client's namespace this model's?"))
                return None, 0
            found += 1
        if found < len(res):  # evicted between the Lookup and the Get: shorter prefix
            self.stats.fallbacks += 1
        if found == 0:
            return None, 0
        # A prompt made entirely of stored chunks keeps its last token to compute.
        T = min(found * self.chunk_tokens, len(ids) - 1)
        data = [(staging[l, 0, :, :T].unsqueeze(0), staging[l, 1, :, :T].unsqueeze(0))
                for l in range(self.num_layers)]
        cache = DynamicCache(data, config=self.model.config)
        t3 = time.perf_counter()
        self.stats.hit_tokens += T
        self.stats.last_restore = {"lookup": t1 - t0, "fetch": t2 - t1, "build": t3 - t2}
        return cache, T

    # --- store -----------------------------------------------------------------------------

    def store(self, input_ids: Any, cache: Any) -> int:
        """Puts the whole chunks of ``input_ids`` that are not stored yet, reading their K/V
        from ``cache`` (the model's ``DynamicCache`` after a prefill or a ``generate`` of
        this prompt; it must hold at least the prompt's tokens). Returns the chunks put;
        0 on failure (counted and logged)."""
        ids = self._ids(input_ids)
        n = len(ids) // self.chunk_tokens
        if n == 0 or cache is None:
            return 0
        T = n * self.chunk_tokens
        try:
            keys = chunk_keys(ids[:T], self.chunk_tokens, self.client.namespace)
            start = self.client.lookup(keys)
            self.stats.skipped_chunks += start
            if start == n:
                return 0
            layers = cache.layers if hasattr(cache, "layers") else None
            if layers is None or len(layers) != self.num_layers:
                raise invalid("cache: expected a DynamicCache with one layer per model layer")
            staging = self._stage(T)
            for l, layer in enumerate(layers):
                k, v = layer.keys, layer.values  # [1, H, T_cache, D]
                if k is None or k.shape[-2] < T:
                    raise invalid(f"cache: layer {l} holds fewer than the prompt's {T} tokens")
                staging[l, 0, :, start * self.chunk_tokens:T].copy_(
                    k[0, :, start * self.chunk_tokens:T])
                staging[l, 1, :, start * self.chunk_tokens:T].copy_(
                    v[0, :, start * self.chunk_tokens:T])
            res = self.client.put_paged(keys[start:], _shifted(self._staging_layout, start *
                                                               self.chunk_tokens),
                                        self.chunk_tokens, codec=self.codec)
        except Error as e:
            self._fallback("store", e)
            return 0
        self.stats.stored_chunks += len(res)
        return len(res)


def _shifted(cache: layouts.PagedCache, first_token: int) -> layouts.PagedCache:
    """The dense cache seen from token ``first_token`` on (its one block, a later slot)."""
    return cache.with_blocks(cache.block_ids, cache.first_slot + first_token)


def generate_with_prefix_cache(model: Any, prefix_cache: PrefixCache, input_ids: Any,
                               attention_mask: Any = None, store: bool = True,
                               **generate_kwargs: Any) -> Any:
    """``model.generate`` with the prompt's stored prefix restored first and its whole
    chunks stored afterwards. Returns what ``generate`` returns.

    ``input_ids``: ``[1, T]`` (int64, on the model's device); ``attention_mask``, if
    given, must be all ones (no padding with one sequence). The full prompt is passed to
    ``generate`` together with the restored cache, so only the tokens after the prefix
    are computed.
    """
    import torch

    if attention_mask is not None and not bool(torch.all(attention_mask == 1)):
        raise invalid("attention_mask: padding is not supported with the prefix cache")
    cache, _ = prefix_cache.restore(input_ids)
    kwargs = dict(generate_kwargs)
    want_dict = kwargs.pop("return_dict_in_generate", False)
    out = model.generate(input_ids=input_ids,
                         attention_mask=torch.ones_like(input_ids),
                         past_key_values=cache, return_dict_in_generate=True, **kwargs)
    if store:
        prefix_cache.store(input_ids, out.past_key_values)
    return out if want_dict else out.sequences


__all__ = ["PrefixCache", "PrefixCacheStats", "generate_with_prefix_cache"]
