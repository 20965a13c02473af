"""Every engine layout of kvstash.layouts over shared memory, bit-exact against plain numpy
indexing of the engine's tensors, with random block ids and a first slot inside a block."""

import numpy as np
import pytest

import kvstash
from layout_cases import L, H, D, cases, gather
from wire import WireMeter

BS, NB, T = 16, 24, 32  # 2 chunks of 32 tokens from slot 5 span 5 blocks of 16


def stack(rows):
    return np.stack([np.stack([np.stack(r) for r in per]) for per in rows])


@pytest.mark.parametrize("name,build", cases(BS, NB), ids=[c[0] for c in cases(BS, NB)])
def test_layout_put_and_get_bit_exact(client, name, build):
    rng = np.random.default_rng(abs(hash(name)) % 2**32)

    def alloc(shape):
        a = client.host_buffer(shape, np.float16)
        a[:] = rng.standard_normal(shape).astype(np.float16)
        return a

    make, views, tensors = build(alloc)
    ids = [int(b) for b in rng.permutation(NB)[:5]]
    first = 5
    keys = kvstash.chunk_keys(rng.integers(0, 1000, 2 * T), T, client.namespace)
    meter = WireMeter(client)
    res = client.put_paged(keys, make(ids, first), T, codec="fp16")
    assert [r.info.layout for r in res] == [(L, T, H, D)] * 2
    assert meter.largest("Put")[0] < 4096  # references, not payload
    want = stack(gather(views, ids, first, BS, 2 * T))  # [L, 2, 2T, H, D]
    for i, k in enumerate(keys):
        np.testing.assert_array_equal(client.get(k), want[:, :, i * T:(i + 1) * T])

    # Scatter into a zeroed cache of the same layout at other blocks: exactly the chunk's
    # slots change.
    make2, views2, tensors2 = build(lambda shape: _zeroed(client, shape))
    ids2 = [int(b) for b in rng.permutation(NB)[:5]]
    got = client.get_paged(keys, make2(ids2, 3))
    assert [g.first_token for g in got] == [0, T]
    np.testing.assert_array_equal(stack(gather(views2, ids2, 3, BS, 2 * T)), want)
    touched = sum(int(np.count_nonzero(t)) for t in tensors2)
    assert touched == np.count_nonzero(want)

    # A lossy codec through the paged path decodes to the same bytes as a contiguous put.
    k3 = kvstash.chunk_keys(rng.integers(0, 1000, T), T, client.namespace)[0]
    k4 = kvstash.chunk_keys(rng.integers(1000, 2000, T), T, client.namespace)[0]
    client.put_paged([k3], make(ids, first), T, codec="xquant")
    client.put(k4, np.ascontiguousarray(want[:, :, :T]), codec="xquant")
    np.testing.assert_array_equal(client.get(k3).view(np.uint16), client.get(k4).view(np.uint16))


def _zeroed(client, shape):
    a = client.host_buffer(shape, np.float16)
    a[:] = 0
    return a


def test_head_range_into_a_narrower_cache(client):
    rng = np.random.default_rng(3)
    src = client.host_buffer((NB, 2, BS, 4, D), np.float16)
    src[:] = rng.standard_normal(src.shape).astype(np.float16)
    key = kvstash.chunk_keys(list(range(T)), T, client.namespace)[0]
    cache = kvstash.layouts.vllm_blocks_first([src], [1, 2])
    client.put_paged([key], cache, T, codec="fp16")
    dst = _zeroed(client, (NB, 2, BS, 2, D))  # a tensor-parallel rank holding heads 2:4
    client.get_paged([key], kvstash.layouts.vllm_blocks_first([dst], [7, 3]), heads=(2, 4))
    np.testing.assert_array_equal(dst[[7, 3]], src[[1, 2]][:, :, :, 2:4])


def test_prefix_restore_into_dense_cache(client):
    """get_prefix into a transformers-style [L, 2, H, T, D] buffer, in place."""
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, 32000, 3 * T + 7)
    keys = kvstash.chunk_keys(tokens, T, client.namespace)
    chunks = [rng.standard_normal((L, 2, T, H, D)).astype(np.float16) for _ in range(2)]
    client.put_many(list(zip(keys[:2], chunks)), codec="fp16")
    dense = _zeroed(client, (L, 2, H, 3 * T, D))
    p = client.get_prefix(tokens, T, into=kvstash.layouts.dense(dense))
    assert (p.tokens, p.chunks) == (2 * T, 2)
    want = np.concatenate(chunks, axis=2).transpose(0, 1, 3, 2, 4)  # [L, 2, H, 2T, D]
    np.testing.assert_array_equal(dense[:, :, :, :2 * T], want)
    assert not dense[:, :, :, 2 * T:].any()
