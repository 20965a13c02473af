#!/usr/bin/env python3
"""The Python client measured against the physical limits and the C++ client, same run.

    python3 bench/python/client_bench.py --addr HOST:PORT [--chunks 16] [--reps 30]
        [--codec xquant] [--label gpu-tier] [--shm]

Llama-3-8B geometry (L32 H8 D128, T=256 tokens per chunk, fp16: 32 MiB a chunk). With
torch and a GPU: Puts `chunks` chunks from a registered CUDA tensor, then times a Get of one
chunk into it, and a prefix restore (`get_prefix`: Lookup + one multi-key Get) of all
chunks into it; also a pinned host-to-device copy and a device-to-device copy of the same
16-bit bytes (CUDA events, median of `reps`). With --shm: Put and Get of one chunk through a
host buffer, and a numpy memcpy of the same bytes. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "client" / "python"))
import kvstash  # noqa: E402

L, T, H, D = 32, 256, 8, 128


def q(v, p):
    v = sorted(v)
    return v[int(p * (len(v) - 1))]


def timed(fn, reps, warm=3):
    for _ in range(warm):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": q(out, 0.5), "p90_ms": q(out, 0.9)}


def cuda_copy_ms(torch, src, dst, reps):
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
          for _ in range(reps + 3)]
    for a, b in ev:
        a.record()
        dst.copy_(src, non_blocking=True)
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev[3:])


def gpu(args, report):
    import torch

    chunk_bytes = L * 2 * T * H * D * 2
    n = args.chunks
    with kvstash.Client(args.addr, namespace=f"pybench-{args.label}", timeout=120) as c:
        buf = torch.randn((n, L, 2, T, H, D), dtype=torch.float16, device="cuda")
        out = torch.empty_like(buf)
        c.register_cuda(buf)
        c.register_cuda(out)
        tokens = [i * 7 + 1 for i in range(T * n)]
        keys = kvstash.chunk_keys(tokens, T, c.namespace)
        for i, k in enumerate(keys):
            c.put(k, buf[i], codec=args.codec)
        one = timed(lambda: c.get(keys[0], out=out[0]), args.reps)
        # Where the Python client's time goes: keys from token ids, one Lookup RPC.
        keys_t = timed(lambda: kvstash.chunk_keys(tokens, T, c.namespace), args.reps)
        look = timed(lambda: c.lookup(keys), args.reps)
        pre = timed(lambda: c.get_prefix(tokens, T, into=out), args.reps)
        res = c.get_prefix(tokens, T, into=out)
        assert res.chunks == n, res.chunks
        if args.codec == "fp16":
            assert torch.equal(out, buf)
        c.delete(keys)
        pinned = torch.empty((n, L, 2, T, H, D), dtype=torch.float16).pin_memory()
        h2d = cuda_copy_ms(torch, pinned, out, args.reps)
        d2d = cuda_copy_ms(torch, buf, out, args.reps)
    tot = n * chunk_bytes
    report.update({
        "device": torch.cuda.get_device_name(0),
        "chunk_bytes": chunk_bytes, "chunks": n,
        "get1": one, "prefix": pre, "chunk_keys": keys_t, "lookup": look,
        "get1_gbps": chunk_bytes / one["p50_ms"] / 1e6,
        "prefix_gbps": tot / pre["p50_ms"] / 1e6,
        "pinned_h2d_ms": h2d, "pinned_h2d_gbps": tot / h2d / 1e6,
        "d2d_ms": d2d, "d2d_gbps_copied": tot / d2d / 1e6,
        "prefix_vs_pinned_h2d": h2d / pre["p50_ms"],
        "prefix_vs_d2d": d2d / pre["p50_ms"],
    })


def shm(args, report):
    chunk_bytes = L * 2 * T * H * D * 2
    with kvstash.Client(args.addr, namespace=f"pybench-shm-{args.label}", timeout=120) as c:
        buf = c.host_buffer((2, L, 2, T, H, D), np.float16)
        buf[0] = np.random.default_rng(0).standard_normal((L, 2, T, H, D)).astype(np.float16)
        key = kvstash.chunk_keys(list(range(T)), T, c.namespace)[0]
        put = timed(lambda: c.put(key, buf[0], codec=args.codec), args.reps)
        get = timed(lambda: c.get(key, out=buf[1]), args.reps)
        c.delete([key])
    src = np.ones(chunk_bytes, np.uint8)
    dst = np.empty_like(src)
    cp = timed(lambda: np.copyto(dst, src), args.reps)
    report.update({"shm_put": put, "shm_get": get, "memcpy": cp,
                   "shm_put_gbps": chunk_bytes / put["p50_ms"] / 1e6,
                   "shm_get_gbps": chunk_bytes / get["p50_ms"] / 1e6,
                   "memcpy_gbps": chunk_bytes / cp["p50_ms"] / 1e6})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", default="127.0.0.1:7450")
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--codec", default="xquant")
    ap.add_argument("--label", default="run")
    ap.add_argument("--shm", action="store_true", help="the shared-memory runs instead of CUDA")
    args = ap.parse_args()
    report = {"client": "python", "label": args.label, "codec": args.codec,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (shm if args.shm else gpu)(args, report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
