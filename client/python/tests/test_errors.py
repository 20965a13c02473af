"""Errors carry the daemon's status code and its message, which names the field."""

import socket

import numpy as np
import pytest

import kvstash


def kv(L=2, T=32, H=1, D=64):
    return np.random.default_rng(0).standard_normal((L, 2, T, H, D)).astype(np.float16)


def key(client, i=0):
    return kvstash.chunk_keys([i] * 32, 32, client.namespace)[0]


def code(e):
    return e.value.code.name


def test_wrong_geometry_names_the_field(client):
    with pytest.raises(kvstash.Error) as e:
        client.put(key(client), kv(D=100))
    assert code(e) == "INVALID_ARGUMENT"
    assert e.value.message.startswith("chunks[0].layout.head_dim")


def test_wrong_rank_is_refused_before_sending(client):
    with pytest.raises(kvstash.Error) as e:
        client.put(key(client), np.zeros((2, 32, 1, 64), np.float16))
    assert code(e) == "INVALID_ARGUMENT" and "[L, 2, T, H, D]" in e.value.message


def test_nan_is_refused_and_nothing_is_stored(client):
    x = kv()
    x[1, 0, 5, 0, 7] = np.nan
    with pytest.raises(kvstash.Error) as e:
        client.put(key(client), x)
    assert code(e) == "INVALID_ARGUMENT" and "chunks[0].data" in e.value.message
    assert client.lookup([key(client)]) == 0


def test_missing_key_is_not_found(client):
    with pytest.raises(kvstash.Error) as e:
        client.get(key(client, 7))
    assert code(e) == "NOT_FOUND" and key(client, 7).hex() in e.value.message


def test_bad_ranges(client):
    client.put(key(client), kv(), codec="fp16")
    with pytest.raises(kvstash.Error) as e:
        client.get(key(client), layers=(3, 2))
    assert code(e) == "INVALID_ARGUMENT" and e.value.message.startswith("layers")
    with pytest.raises(kvstash.Error) as e:
        client.get(key(client), heads=(0, 5))
    assert code(e) == "INVALID_ARGUMENT"


def test_bad_codec_and_dtype(client):
    with pytest.raises(kvstash.Error) as e:
        client.put(key(client), kv(), codec="zip")
    assert code(e) == "INVALID_ARGUMENT" and "codec" in e.value.message
    with pytest.raises(kvstash.Error) as e:
        client.put(key(client), kv().astype(np.float32))
    assert code(e) == "INVALID_ARGUMENT" and "float16" in e.value.message
    with pytest.raises(kvstash.Error) as e:
        client.put(key(client), kv(), codec=kvstash.CodecConfig(1, 1, 1, 1, eta1=0.7))
    assert code(e) == "INVALID_ARGUMENT" and "eta1" in e.value.message


def test_bad_paged_layout_names_the_field(client):
    buf = client.host_buffer((4, 16, 1, 64), np.float16)  # 4 blocks of 16 tokens
    cache = kvstash.layouts.from_views([buf], [buf], block_ids=[0, 1, 9], first_slot=0)
    with pytest.raises(kvstash.Error) as e:
        client.put_paged([key(client)], cache.with_blocks([0, 9]), 32, codec="fp16")
    assert code(e) == "INVALID_ARGUMENT"
    assert "data_paged.planes[0].length" in e.value.message
    with pytest.raises(kvstash.Error) as e:
        client.put_paged([key(client)], cache.with_blocks([0]), 32)
    assert code(e) == "INVALID_ARGUMENT" and "block_ids" in e.value.message
    plain = np.zeros((4, 16, 1, 64), np.float16)  # not in a region
    with pytest.raises(kvstash.Error) as e:
        client.put_paged([key(client)], kvstash.layouts.from_views([plain], [plain], [0, 1]), 32)
    assert code(e) == "INVALID_ARGUMENT" and "not inside a registered region" in e.value.message


def test_region_of_another_namespace_is_refused(daemon, client):
    buf = client.host_buffer((2, 2, 32, 1, 64), np.float16)
    buf[:] = 0.5
    other = kvstash.Client(daemon.address, namespace=client.namespace + "-other")
    other._regions = client._regions  # pretend to know the token; the namespace must match
    with pytest.raises(kvstash.Error) as e:
        other.put(key(client), buf)
    assert code(e) == "PERMISSION_DENIED"
    other._regions = []
    other.close()


def test_daemon_down_is_unavailable_at_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    addr = f"127.0.0.1:{port}"
    with kvstash.Client(addr, timeout=5) as c:
        with pytest.raises(kvstash.Error) as e:
            c.stats()
    assert code(e) == "UNAVAILABLE"
    assert f"unavailable at {addr}" in str(e.value)
    assert e.value.address == addr


def test_client_side_validation():
    with pytest.raises(kvstash.Error) as e:
        kvstash.Client("127.0.0.1:1", namespace="")
    assert code(e) == "INVALID_ARGUMENT" and "namespace" in e.value.message
