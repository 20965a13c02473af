"""Put/Get/Lookup/Delete/Stats against a real daemon, checked against kvstash's own C++
codec (the decode of the encode, byte for byte)."""

import numpy as np
import pytest

import kvstash

ml_dtypes = pytest.importorskip("ml_dtypes")

PRESETS = ["fp16", "kivi-2", "asymkv-1.5", "xquant"]


def random_kv(rng, L=4, T=64, H=2, D=64, dtype=np.float16):
    return (rng.standard_normal((L, 2, T, H, D)) * rng.uniform(0.5, 3)).astype(dtype)


def keys_for(client, n, seed=0, T=64):
    return kvstash.chunk_keys(np.random.default_rng(seed).integers(0, 32000, n * T), T,
                              client.namespace)


@pytest.mark.parametrize("preset", PRESETS)
def test_round_trip_matches_cpp_codec(client, codec_oracle, preset):
    rng = np.random.default_rng(hash(preset) % 2**32)
    kv = random_kv(rng, L=6)
    key = keys_for(client, 1)[0]
    put = client.put(key, kv, codec=preset)
    assert put.key == key and not put.replaced
    assert put.info.layout == (6, 64, 2, 64) and put.info.dtype == "fp16"
    assert put.info.preset == preset
    back = client.get(key)
    assert back.shape == kv.shape and back.dtype == np.float16
    want = codec_oracle.decode(codec_oracle.encode(kv, codec_oracle.preset(preset, 6)))
    np.testing.assert_array_equal(back.reshape(-1).view(np.uint16), want.view(np.uint16))
    if preset == "fp16":
        np.testing.assert_array_equal(back.view(np.uint16), kv.view(np.uint16))
        assert put.info.equivalent_bits == 16
    else:
        assert put.info.true_bits < 4 and put.info.compression > 4


def test_bits_are_reported(client):
    kv = random_kv(np.random.default_rng(1), L=32, T=64, H=2, D=128)
    info = client.put(keys_for(client, 1)[0], kv, codec="xquant").info
    assert info.equivalent_bits == pytest.approx(1.375, abs=0.01)
    assert 2.3 < info.true_bits < 2.5
    assert info.logical_bytes == kv.nbytes


def test_bf16_via_ml_dtypes_and_uint16_view(client):
    rng = np.random.default_rng(2)
    kv = random_kv(rng, dtype=ml_dtypes.bfloat16)
    k1, k2 = keys_for(client, 2)
    assert client.put(k1, kv, codec="fp16").info.dtype == "bf16"
    back = client.get(k1)
    assert back.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(back.view(np.uint16), kv.view(np.uint16))
    client.put(k2, kv.view(np.uint16), codec="fp16", dtype="bf16")
    np.testing.assert_array_equal(client.get(k2).view(np.uint16), kv.view(np.uint16))
    with pytest.raises(kvstash.Error) as e:
        client.put(k2, kv.view(np.uint16))
    assert e.value.code.name == "INVALID_ARGUMENT" and "dtype" in e.value.message


def test_slices_and_dtype_conversion(client):
    rng = np.random.default_rng(3)
    kv = random_kv(rng, L=6, H=4)
    key = keys_for(client, 1)[0]
    client.put(key, kv, codec="fp16")
    part = client.get(key, layers=(2, 5), heads=(1, 3))
    np.testing.assert_array_equal(part, kv[2:5, :, :, 1:3])
    as_bf16 = client.get(key, dtype="bf16")
    np.testing.assert_array_equal(as_bf16, kv.astype(np.float32).astype(ml_dtypes.bfloat16))


def test_custom_config(client, codec_oracle):
    kv = random_kv(np.random.default_rng(4), L=8)
    key = keys_for(client, 1)[0]
    cfg = kvstash.CodecConfig(k_q=4, v_q=2, k_m=8, v_m=4, eta1=0.1, eta2=0.05)
    info = client.put(key, kv, codec=cfg).info
    assert info.preset is None and info.config == cfg
    oracle_cfg = codec_oracle.preset("xquant", 8).__class__(False, 4, 2, 8, 4, 0.1, 0.05, 0)
    want = codec_oracle.decode(codec_oracle.encode(kv, oracle_cfg))
    np.testing.assert_array_equal(client.get(key).reshape(-1).view(np.uint16), want.view(np.uint16))


def test_get_many_lookup_delete_stats(client):
    rng = np.random.default_rng(5)
    keys = keys_for(client, 4)
    kvs = [random_kv(rng) for _ in keys]
    res = client.put_many(list(zip(keys[:3], kvs[:3])), codec="fp16")
    assert [r.key for r in res] == keys[:3]
    assert client.lookup(keys) == 3
    assert client.lookup(keys[1:]) == 2
    got = client.get_many(keys, allow_missing=True)
    assert [g.found for g in got] == [True, True, True, False]
    for g, kv in zip(got[:3], kvs):
        np.testing.assert_array_equal(g.data, kv)
    out = np.empty((3,) + kvs[0].shape, np.float16)
    client.get_many(keys[:3], out=out)
    np.testing.assert_array_equal(out, np.stack(kvs[:3]))
    assert client.put(keys[0], kvs[3], codec="kivi-2").replaced
    s = client.stats()
    assert s.chunks >= 3 and s.max_message_bytes > 0 and s.codec_path
    assert client.delete([keys[1], keys[3]]) == (1, 1)
    assert client.lookup(keys) == 1


def test_get_prefix_without_destination(client):
    rng = np.random.default_rng(6)
    tokens = rng.integers(0, 32000, 64 * 5 + 10)
    keys = kvstash.chunk_keys(tokens, 64, client.namespace)
    kvs = [random_kv(rng) for _ in range(3)]
    client.put_many(list(zip(keys[:3], kvs)), codec="fp16")
    p = client.get_prefix(tokens, chunk_tokens=64)
    assert (p.tokens, p.chunks) == (192, 3) and p.keys == keys[:3]
    np.testing.assert_array_equal(p.data, np.stack(kvs))
    assert client.get_prefix(tokens, chunk_tokens=64, max_tokens=130).chunks == 2
    assert client.get_prefix(tokens[1:], chunk_tokens=64).chunks == 0
