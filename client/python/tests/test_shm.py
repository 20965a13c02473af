"""Same-host zero copy: host buffers are shared-memory regions; puts from them and gets
into them send references, never payload bytes."""

import gc
import os
import time
import warnings

import numpy as np
import pytest

import kvstash
from wire import WireMeter

L, T, H, D = 4, 64, 2, 64


def test_put_and_get_through_host_buffer_send_no_payload(client, codec_oracle):
    rng = np.random.default_rng(10)
    buf = client.host_buffer((3, L, 2, T, H, D), np.float16)
    assert isinstance(buf, np.ndarray) and buf.shape == (3, L, 2, T, H, D)
    buf[:] = rng.standard_normal(buf.shape).astype(np.float16)
    keys = kvstash.chunk_keys(rng.integers(0, 1000, 3 * T), T, client.namespace)
    meter = WireMeter(client)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no slow-path warning may fire
        client.put(keys[0], buf[0], codec="fp16")
        client.put(keys[1], buf[1], codec="xquant")
        out = client.host_buffer((2, L, 2, T, H, D), np.float16)
        client.get_many(keys[:2], out=out)
        client.get(keys[1], out=buf[2])
    payload = L * 2 * T * H * D * 2
    q, r = meter.largest("Put")
    assert q < 1024 < payload, f"Put request of {q} bytes carried the payload"
    q, r = meter.largest("Get")
    assert r < 2048 < payload, f"Get response of {r} bytes carried the payload"
    np.testing.assert_array_equal(out[0], buf[0])
    want = codec_oracle.decode(codec_oracle.encode(buf[1], codec_oracle.preset("xquant", L)))
    np.testing.assert_array_equal(out[1].reshape(-1).view(np.uint16), want.view(np.uint16))
    np.testing.assert_array_equal(buf[2], out[1])


def test_region_is_unregistered_on_close_and_file_is_gone(daemon, namespace):
    c = kvstash.Client(daemon.address, namespace=namespace)
    c.host_buffer((1024,), np.float16)
    (r,) = c.regions()
    assert r.kind == "shm" and r.lease_seconds > 0
    assert not os.path.exists(r.path)  # unlinked once registered
    c.close()
    c2 = kvstash.Client(daemon.address, namespace=namespace)
    with pytest.raises(kvstash.Error) as e:
        c2._renew(r)
    assert e.value.code.name == "NOT_FOUND"
    c2.close()


def test_lease_is_renewed_in_the_background(client):
    client.host_buffer((1024,), np.float16, lease_seconds=3)
    (r,) = client.regions()
    assert r.lease_seconds == 3
    time.sleep(4.5)  # past the first lease: the renewer must have kept it alive
    assert client._renew(r) == 3


def test_torch_host_buffer(client):
    torch = pytest.importorskip("torch")
    t = client.host_buffer((L, 2, T, H, D), "bf16", torch=True)
    assert t.dtype == torch.bfloat16 and t.device.type == "cpu"
    t.copy_(torch.randn(t.shape, dtype=torch.bfloat16))
    key = kvstash.chunk_keys(list(range(T)), T, client.namespace)[0]
    meter = WireMeter(client)
    client.put(key, t, codec="fp16")
    assert meter.largest("Put")[0] < 1024
    back = client.get(key, torch=True)
    assert torch.equal(back, t)


def test_plain_array_still_works_with_one_warning(client):
    kv = np.random.default_rng(11).standard_normal((L, 2, T, H, D)).astype(np.float16)
    keys = kvstash.chunk_keys(list(range(2 * T)), T, client.namespace)
    with pytest.warns(UserWarning, match="host_buffer"):
        client.put(keys[0], kv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client.put(keys[1], kv)  # the warning fires once per client


def test_noncontiguous_slice_of_host_buffer_goes_as_bytes(client):
    buf = client.host_buffer((L, 2, T, 2 * H, D), np.float16)
    buf[:] = 1
    key = kvstash.chunk_keys(list(range(T)), T, client.namespace)[0]
    meter = WireMeter(client)
    with pytest.warns(UserWarning):
        client.put(key, buf[:, :, :, :H], codec="fp16")
    assert meter.largest("Put")[0] > L * 2 * T * H * D * 2
    np.testing.assert_array_equal(client.get(key), buf[:, :, :, :H])
    gc.collect()
