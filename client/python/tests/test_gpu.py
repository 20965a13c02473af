"""CUDA IPC with torch tensors (marked gpu; skipped without torch, a CUDA device, or a
daemon with a GPU tier)."""

import numpy as np
import pytest

import kvstash
from layout_cases import L, H, D, cases, gather
from wire import WireMeter

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

BS, NB, T = 16, 24, 32


@pytest.fixture
def gpu_client(client):
    probe = torch.zeros(16, dtype=torch.float16, device="cuda")
    try:
        region = client.register_cuda(probe)
    except kvstash.Error as e:
        if e.code.name == "FAILED_PRECONDITION" and "no GPU tier" in e.message:
            pytest.skip("the daemon has no GPU tier (built without CUDA, or --gpu off)")
        raise
    client.unregister(region)
    return client


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_put_get_in_place_from_a_sub_allocation(gpu_client, codec_oracle, dtype):
    c = gpu_client
    dt = getattr(torch, dtype)
    # A pool tensor: the caching allocator hands out views of one segment; register it once.
    pool = torch.zeros((4, L, 2, T, H, D), dtype=dt, device="cuda")
    region = c.register_cuda(pool)
    assert region.kind == "cuda" and region.size >= pool.numel() * 2
    x = pool[1]  # a view at a non-zero offset of the allocation
    x.copy_(torch.randn(x.shape, dtype=dt, device="cuda"))
    keys = kvstash.chunk_keys(list(range(2 * T)), T, c.namespace)
    meter = WireMeter(c)
    c.put(keys[0], x, codec="fp16")
    c.put(keys[1], x, codec="xquant")
    c.get(keys[0], out=pool[2])
    c.get_many(keys, out=pool[2:4])
    assert meter.largest("Put")[0] < 1024 and meter.largest("Get")[1] < 2048
    assert torch.equal(pool[2], x)
    # The GPU decode equals the C++ CPU codec's decode, byte for byte (fp16 input only:
    # the oracle binding takes fp16).
    if dt == torch.float16:
        want = c.get(keys[1])  # over gRPC bytes: decoded by the daemon on its GPU too
        ref = codec_oracle.decode(codec_oracle.encode(x.cpu().numpy(),
                                                      codec_oracle.preset("xquant", L)))
        np.testing.assert_array_equal(pool[3].cpu().numpy().reshape(-1).view(np.uint16),
                                      ref.view(np.uint16))
        np.testing.assert_array_equal(want.reshape(-1).view(np.uint16), ref.view(np.uint16))


def test_unregistered_cuda_tensor_falls_back_with_a_warning(gpu_client):
    x = torch.randn((L, 2, T, H, D), dtype=torch.float16, device="cuda")
    key = kvstash.chunk_keys(list(range(T)), T, gpu_client.namespace)[0]
    with pytest.warns(UserWarning, match="register_cuda"):
        gpu_client.put(key, x, codec="fp16")
    out = torch.empty_like(x)
    gpu_client.get(key, out=out)
    assert torch.equal(out, x)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name,build", cases(BS, NB), ids=[c[0] for c in cases(BS, NB)])
def test_engine_layout_on_gpu_bit_exact(gpu_client, name, build, dtype):
    c = gpu_client
    dt = getattr(torch, dtype)
    g = torch.Generator(device="cuda").manual_seed(abs(hash(name)) % 2**31)

    def alloc(shape):
        t = torch.randn(shape, dtype=dt, device="cuda", generator=g)
        c.register_cuda(t)
        return t

    make, views, _ = build(alloc)
    ids = torch.randperm(NB)[:5].tolist()
    keys = kvstash.chunk_keys(list(range(100, 100 + 2 * T)), T, c.namespace)
    c.put_paged(keys, make(ids, 5), T, codec="fp16")
    want = torch.stack([torch.stack([torch.stack(r) for r in per])
                        for per in gather(views, ids, 5, BS, 2 * T)])
    for i, k in enumerate(keys):
        assert torch.equal(c.get(k, torch=True).cuda(), want[:, :, i * T:(i + 1) * T])

    def zeros(shape):
        t = torch.zeros(shape, dtype=dt, device="cuda")
        c.register_cuda(t)
        return t

    make2, views2, tensors2 = build(zeros)
    ids2 = torch.randperm(NB)[:5].tolist()
    c.get_paged(keys, make2(ids2, 3))
    got = torch.stack([torch.stack([torch.stack(r) for r in per])
                       for per in gather(views2, ids2, 3, BS, 2 * T)])
    assert torch.equal(got, want)
    assert sum(int(torch.count_nonzero(t)) for t in tensors2) == int(torch.count_nonzero(want))


def test_prefix_restore_into_dense_gpu_cache(gpu_client):
    c = gpu_client
    tokens = list(range(3 * T + 1))
    keys = kvstash.chunk_keys(tokens, T, c.namespace)
    chunks = [torch.randn((L, 2, T, H, D), dtype=torch.bfloat16, device="cuda") for _ in range(3)]
    for k, x in zip(keys, chunks):
        c.register_cuda(x)
        c.put(k, x, codec="fp16")
    dense = torch.zeros((L, 2, H, 3 * T, D), dtype=torch.bfloat16, device="cuda")
    c.register_cuda(dense)
    p = c.get_prefix(tokens, T, into=kvstash.layouts.dense(dense))
    assert p.chunks == 3
    assert torch.equal(dense, torch.cat(chunks, dim=2).transpose(2, 3))


def test_freed_tensor_region_is_refused_not_crashed(gpu_client, daemon):
    c = gpu_client
    x = torch.randn((64 << 20) // 2, dtype=torch.float16, device="cuda")  # its own segment
    from kvstash import _cuda
    with torch.cuda.device(x.device):
        alloc = _cuda.allocation_of(x.data_ptr(), x.device.index)
    del x
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # cudaFree of the segment: the handle now names nothing
    from kvstash.v1 import kvstash_pb2 as pb
    with pytest.raises(kvstash.Error) as e:
        c._call("RegisterRegion", pb.RegisterRegionRequest(
            namespace=c.namespace, cuda_ipc=pb.CudaIpcBuffer(handle=alloc.handle,
                                                             device_uuid=alloc.device_uuid)),
            pb.RegisterRegionResponse)
    assert e.value.code.name == "INVALID_ARGUMENT"
    assert c.stats().version  # the daemon still serves
