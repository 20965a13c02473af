"""The engine layouts of kvstash.layouts, built on any array library, with the reference
gather/scatter the tests compare kvstash against (plain indexing of the engine tensors)."""

from __future__ import annotations

import numpy as np

import kvstash

L, H, D = 3, 2, 64


def cases(bs: int, nb: int):
    """(name, engine tensor shape per call, builder(alloc) -> (cache_fn, views))

    alloc(shape) returns a zeroed engine tensor (in a registered region); the builder
    returns a function (block_ids, first_slot) -> PagedCache and the per-layer (K, V)
    [num_blocks, block_size, H, D] reference views (plain slicing of the engine tensors).
    """
    def kv_first(alloc):
        ts = [alloc((2, nb, bs, H, D)) for _ in range(L)]
        return (lambda ids, s: kvstash.layouts.vllm_kv_first(ts, ids, s),
                [(t[0], t[1]) for t in ts], ts)

    def kv_first_hnd(alloc):
        # HND memory order: (2, nb, H, bs, D) in memory, seen as (2, nb, bs, H, D).
        ts = [alloc((2, nb, H, bs, D)) for _ in range(L)]
        vs = [swap(t, 2, 3) for t in ts]
        return (lambda ids, s: kvstash.layouts.vllm_kv_first(vs, ids, s),
                [(v[0], v[1]) for v in vs], ts)

    def blocks_first(alloc):
        ts = [alloc((nb, 2, bs, H, D)) for _ in range(L)]
        return (lambda ids, s: kvstash.layouts.vllm_blocks_first(ts, ids, s),
                [(t[:, 0], t[:, 1]) for t in ts], ts)

    def packed(alloc):
        ts = [alloc((nb, H, bs, 2 * D)) for _ in range(L)]
        return (lambda ids, s: kvstash.layouts.vllm_packed(ts, ids, s),
                [(swap(t, 1, 2)[..., :D], swap(t, 1, 2)[..., D:]) for t in ts], ts)

    def sglang(alloc):
        ks = [alloc((nb * bs, H, D)) for _ in range(L)]
        vs = [alloc((nb * bs, H, D)) for _ in range(L)]
        return (lambda ids, s: kvstash.layouts.sglang_token_pool(ks, vs, bs, ids, s),
                [(k.reshape(nb, bs, H, D), v.reshape(nb, bs, H, D)) for k, v in zip(ks, vs)],
                ks + vs)

    def layer_first(alloc):
        t = alloc((2, L, nb * bs, H, D))
        return (lambda ids, s: kvstash.layouts.hicache_layer_first(t, bs, ids, s),
                [(t[0, l].reshape(nb, bs, H, D), t[1, l].reshape(nb, bs, H, D)) for l in range(L)],
                [t])

    def page_first(alloc):
        t = alloc((2, nb * bs, L, H, D))
        return (lambda ids, s: kvstash.layouts.hicache_page_first(t, bs, ids, s),
                [(t[0].reshape(nb, bs, L, H, D)[:, :, l], t[1].reshape(nb, bs, L, H, D)[:, :, l])
                 for l in range(L)], [t])

    def page_first_direct(alloc):
        t = alloc((2, nb, L, bs, H, D))
        return (lambda ids, s: kvstash.layouts.hicache_page_first_direct(t, ids, s),
                [(t[0, :, l], t[1, :, l]) for l in range(L)], [t])

    return [("vllm_kv_first", kv_first), ("vllm_kv_first_hnd", kv_first_hnd),
            ("vllm_blocks_first", blocks_first), ("vllm_packed", packed),
            ("sglang_token_pool", sglang), ("hicache_layer_first", layer_first),
            ("hicache_page_first", page_first), ("hicache_page_first_direct", page_first_direct)]


def swap(t, a, b):
    return t.transpose(a, b) if hasattr(t, "data_ptr") else np.swapaxes(t, a, b)


def gather(views, ids, first_slot, bs, tokens):
    """[L, 2, tokens, H, D] from the reference views by plain indexing."""
    rows = []
    for k, v in views:
        per = []
        for x in (k, v):
            per.append([x[ids[(first_slot + t) // bs], (first_slot + t) % bs] for t in range(tokens)])
        rows.append(per)
    return rows  # nested lists of [H, D] rows; the caller stacks with its library
