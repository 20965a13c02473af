"""kvstash.Client: the gRPC client of kvstashd (docs/api.md, docs/python.md)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import grpc
import numpy as np

from . import _arrays, _cuda, layouts
from .codec import Codec, CodecConfig, codec_to_proto, preset_name
from .errors import Error, from_rpc, invalid
from .keys import ChunkKey, _token_array, chunk_keys
from .regions import LeaseRenewer, Region, create_shm_file, map_shm
from .security import TlsConfig, call_metadata, channel_credentials, resolve_token
from .v1 import kvstash_pb2 as pb

log = logging.getLogger("kvstash")

_SERVICE = "/kvstash.v1.KvStash/"
# The daemon's default server.max_message_bytes is 256 MiB; the client accepts up to the
# gRPC maximum so that a daemon configured higher is never limited here.
_MAX_MESSAGE = 2**31 - 1

KeyLike = ChunkKey | str | tuple[int, int]
Range = tuple[int, int] | None


@dataclass(frozen=True)
class ChunkInfo:
    """What a stored chunk is and what it costs (docs/api.md "ChunkInfo")."""

    layout: tuple[int, int, int, int]   # (num_layers, num_tokens, num_heads, head_dim)
    dtype: str                          # "fp16" or "bf16"
    preset: str | None                  # None for a custom configuration
    config: CodecConfig                 # the effective configuration
    logical_bytes: int                  # 16-bit payload bytes
    stored_bytes: int                   # bytes the daemon keeps
    equivalent_bits: float              # the paper's B_eq (code bits per element)
    true_bits: float                    # every stored bit per element

    @property
    def compression(self) -> float:
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 0.0

    @classmethod
    def from_proto(cls, i: pb.ChunkInfo) -> "ChunkInfo":
        lo = i.layout
        return cls((lo.num_layers, lo.num_tokens, lo.num_heads, lo.head_dim),
                   _arrays.DTYPE_NAMES.get(i.dtype, "?"), preset_name(i.preset),
                   CodecConfig.from_proto(i.config), i.logical_bytes, i.stored_bytes,
                   i.equivalent_bits, i.true_bits)


@dataclass(frozen=True)
class PutResult:
    key: ChunkKey
    info: ChunkInfo
    replaced: bool  # an existing chunk of this key was replaced


@dataclass
class GetResult:
    """One key of a Get. ``data`` is the slice ``[layers, 2, T, heads, D]`` (a numpy array
    or torch tensor) unless the call wrote into ``out``/a paged cache or the key is
    missing."""

    key: ChunkKey
    found: bool
    info: ChunkInfo | None
    data: Any = None
    first_token: int = 0   # paged output: this result's first token in the concatenation


@dataclass(frozen=True)
class PrefixResult:
    """What get_prefix restored: ``tokens`` leading tokens (``chunks`` whole chunks)."""

    tokens: int
    chunks: int
    keys: list[ChunkKey]          # the keys restored, in order
    results: list[GetResult]
    data: Any = None              # [chunks, L, 2, T, H, D] when no destination was given


@dataclass(frozen=True)
class NamespaceStats:
    """One namespace's share of the store (docs/api.md "Stats"). Byte counts are pool
    bytes actually allocated (whole pages), bytes stored and 16-bit payload bytes."""

    namespace: str
    chunks: int
    allocated_bytes: int
    stored_bytes: int
    logical_bytes: int
    quota_evictions: int
    capacity_evictions: int
    quota_bytes: int  # 0 = no quota


@dataclass(frozen=True)
class Stats:
    """Daemon-wide counters (docs/api.md "Stats"). With authentication on, a tenant
    without the admin right gets only the configuration fields and its own namespaces;
    the store-wide counters read 0 (docs/security.md)."""

    capacity_bytes: int
    used_bytes: int
    page_bytes: int
    chunks: int
    logical_bytes: int
    stored_bytes: int
    hits: int
    misses: int
    evictions: int
    puts: int
    gets: int
    deletes: int
    equivalent_bits: float
    true_bits: float
    version: str
    codec_path: str
    max_message_bytes: int
    quota_evictions: int = 0
    namespaces: tuple[NamespaceStats, ...] = ()  # largest first
    namespaces_omitted: int = 0  # namespaces beyond those listed


def _key(k: KeyLike, what: str) -> pb.ChunkKey:
    if type(k) is ChunkKey and 0 <= k.hi < 2**64 and 0 <= k.lo < 2**64:
        return pb.ChunkKey(hi=k.hi, lo=k.lo)
    if isinstance(k, str):
        try:
            k = ChunkKey.from_hex(k)
        except ValueError as e:
            raise invalid(f"{what}: {e}") from None
    if isinstance(k, tuple) and len(k) == 2:
        hi, lo = int(k[0]), int(k[1])
        if not (0 <= hi < 2**64 and 0 <= lo < 2**64):
            raise invalid(f"{what}: hi and lo must be unsigned 64-bit integers")
        return pb.ChunkKey(hi=hi, lo=lo)
    raise invalid(f"{what}: expected a ChunkKey, 32 hex digits or (hi, lo), got {k!r}")


def _keys(keys: Sequence[KeyLike], what: str = "keys") -> list[pb.ChunkKey]:
    return [_key(k, f"{what}[{i}]") if type(k) is not ChunkKey else _key(k, what)
            for i, k in enumerate(keys)]


def _range(r: Range, what: str) -> pb.Range | None:
    if r is None:
        return None
    if isinstance(r, slice):
        r = (r.start or 0, r.stop or 0)
    try:
        b, e = (int(x) for x in r)
    except (TypeError, ValueError):
        raise invalid(f"{what}: expected (begin, end), got {r!r}") from None
    if b < 0 or e < 0:
        raise invalid(f"{what}: [{b}, {e}) has a negative bound")
    return pb.Range(begin=b, end=e)


class Client:
    """A connection to kvstashd.

    Args:
        address: ``host:port`` of the daemon's gRPC port (``server.listen``), or
            ``unix:/path/to/kvstash.sock`` for its Unix domain socket.
        namespace: the namespace every call uses (a model, or a tenant); 1-256 bytes.
        timeout: seconds per call (None: no deadline).
        token: bearer token sent as ``authorization: Bearer <token>`` metadata on every
            call. None (the default): ``$KVSTASH_TOKEN`` if set and non-empty; ``""``: no
            token, whatever the environment. Visible ASCII only.
        tls: connect with TLS (:class:`kvstash.TlsConfig`: CA bundle, client certificate
            for mutual TLS, server name). None (the default): plaintext.

    A bad token or TLS file raises :class:`kvstash.Error` (``INVALID_ARGUMENT``, naming the
    argument) here; a daemon that refuses the token answers each call with
    ``UNAUTHENTICATED`` (no or unknown token) or ``PERMISSION_DENIED`` (not allowed), and a
    failed TLS handshake is ``UNAVAILABLE``.

    Chunks are arrays of shape ``[L, 2, T, H, D]`` (K before V in every layer) of 16-bit
    values: numpy float16, numpy ``ml_dtypes.bfloat16`` (or a numpy uint16 view with
    ``dtype="bf16"``), or torch float16/bfloat16 tensors on the CPU or a GPU.

    Transports, chosen per call from where the array lives:

    * inside a :meth:`host_buffer` (shared memory): a region reference, no payload bytes;
    * inside an allocation registered with :meth:`register_cuda`: a CUDA IPC reference,
      encoded from and decoded into the GPU memory in place;
    * anywhere else: bytes over gRPC (a one-time warning names the faster way).

    Every failure raises :class:`kvstash.Error` with the gRPC status code. Thread-safe: one
    client may be shared by threads. Use it as a context manager, or call :meth:`close`,
    which unregisters its regions.
    """

    def __init__(self, address: str = "127.0.0.1:7450", namespace: str = "default",
                 timeout: float | None = 60.0, *, token: str | None = None,
                 tls: TlsConfig | None = None) -> None:
        ns = namespace.encode("utf-8")
        if not 1 <= len(ns) <= 256:
            raise invalid(f"namespace: {len(ns)} bytes, must be 1 to 256")
        self.address = address
        self.namespace = namespace
        self.timeout = timeout
        self.tls = tls
        # Sent with every call: gRPC refuses call credentials on plaintext channels, and a
        # token must work over loopback and unix: sockets too.
        self._metadata = call_metadata(resolve_token(token))
        options = [
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ]
        if tls is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            creds, tls_options = channel_credentials(tls, address)
            self._channel = grpc.secure_channel(address, creds, options=options + tls_options)
        self._calls: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._regions: list[Region] = []
        self._renewer = LeaseRenewer(self._renew)
        self._warned: set[str] = set()
        self._closed = False

    # --- plumbing ------------------------------------------------------------------------

    def _call(self, method: str, request: Any, response_type: Any) -> Any:
        if self._closed:
            raise Error(grpc.StatusCode.FAILED_PRECONDITION, "client is closed", self.address)
        fn = self._calls.get(method)
        if fn is None:
            fn = self._channel.unary_unary(_SERVICE + method,
                                           request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=response_type.FromString)
            self._calls[method] = fn
        try:
            return fn(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc(e, self.address, method) from None

    def _warn_once(self, what: str, text: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(text, stacklevel=3)

    def close(self) -> None:
        """Unregisters every region of this client and closes the channel. Idempotent."""
        if self._closed:
            return
        self._renewer.stop()
        for r in list(self._regions):
            try:
                self.unregister(r)
            except Error:
                pass
        self._closed = True
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- basic calls ---------------------------------------------------------------------

    def stats(self) -> Stats:
        """Daemon-wide counters."""
        r = self._call("Stats", pb.StatsRequest(), pb.StatsResponse)
        fields = {f: getattr(r, f) for f in Stats.__dataclass_fields__ if f != "namespaces"}
        fields["namespaces"] = tuple(
            NamespaceStats(**{f: getattr(n, f) for f in NamespaceStats.__dataclass_fields__})
            for n in r.namespaces)
        return Stats(**fields)

    def lookup(self, keys: Sequence[KeyLike]) -> int:
        """How many leading keys of the chain ``keys`` are stored (0 for an empty list)."""
        if not keys:
            return 0
        req = pb.LookupRequest(namespace=self.namespace,
                               keys=_keys(keys))
        return self._call("Lookup", req, pb.LookupResponse).present_prefix

    def delete(self, keys: Sequence[KeyLike]) -> tuple[int, int]:
        """Deletes ``keys``; returns (deleted, not_found)."""
        if not keys:
            return 0, 0
        req = pb.DeleteRequest(namespace=self.namespace,
                               keys=_keys(keys))
        r = self._call("Delete", req, pb.DeleteResponse)
        return r.deleted, r.not_found

    # --- put -----------------------------------------------------------------------------

    def _chunk(self, key: KeyLike, kv: Any, codec: Codec, dtype: str | None,
               i: int) -> pb.PutChunk:
        what = f"chunks[{i}]"
        v = _arrays.view(kv)
        if len(v.shape) != 5 or v.shape[1] != 2:
            raise invalid(f"{what}: expected shape [L, 2, T, H, D], got {v.shape}")
        L, _, T, H, D = v.shape
        c = pb.PutChunk(namespace=self.namespace, key=_key(key, f"{what}.key"),
                        layout=pb.Layout(num_layers=L, num_tokens=T, num_heads=H, head_dim=D),
                        dtype=_arrays.wire_dtype(v, dtype, what), codec=codec_to_proto(codec))
        ref = self._region_ref(v)
        if ref is not None:
            if v.cuda_device is not None:
                # The worker must have finished writing the tensor (docs/api.md, CUDA IPC).
                _arrays.torch_module().cuda.current_stream(v.cuda_device).synchronize()
            c.data_region.CopyFrom(ref)
        else:
            self._slow_path(v)
            c.data = _arrays.host_bytes(v)
        return c

    def put(self, key: KeyLike, kv: Any, codec: Codec = "xquant",
            dtype: str | None = None) -> PutResult:
        """Stores one chunk ``kv`` of shape ``[L, 2, T, H, D]`` under ``key``.

        Args:
            key: a ChunkKey (see :func:`kvstash.chunk_keys`), 32 hex digits, or (hi, lo).
            kv: numpy array or torch tensor, float16 or bfloat16 (or uint16 with ``dtype``).
            codec: a preset name (``"fp16"``, ``"kivi-2"``, ``"asymkv-1.5"``, ``"xquant"``)
                or a :class:`kvstash.CodecConfig`.
            dtype: ``"fp16"``/``"bf16"``, needed only for a uint16 view.
        Returns the key, the stored chunk's :class:`ChunkInfo` and whether it replaced one.
        """
        return self.put_many([(key, kv)], codec=codec, dtype=dtype)[0]

    def put_many(self, items: Iterable[tuple[KeyLike, Any]], codec: Codec = "xquant",
                 dtype: str | None = None) -> list[PutResult]:
        """Stores several chunks in one call. Each chunk is stored atomically; on failure at
        chunk i the earlier ones stay stored (docs/api.md, Put)."""
        chunks = [self._chunk(k, kv, codec, dtype, i) for i, (k, kv) in enumerate(items)]
        if not chunks:
            return []
        return self._put(chunks)

    def _put(self, chunks: list[pb.PutChunk]) -> list[PutResult]:
        r = self._call("Put", pb.PutRequest(chunks=chunks), pb.PutResponse)
        return [PutResult(ChunkKey(x.key.hi, x.key.lo), ChunkInfo.from_proto(x.info), x.replaced)
                for x in r.results]

    def put_paged(self, keys: Sequence[KeyLike], cache: layouts.PagedCache, chunk_tokens: int,
                  codec: Codec = "xquant", skip_present: bool = False) -> list[PutResult]:
        """Stores ``len(keys)`` consecutive chunks of ``chunk_tokens`` tokens gathered from a
        paged cache: chunk i is tokens ``[i*chunk_tokens, (i+1)*chunk_tokens)`` of the
        sequence whose blocks ``cache.block_ids`` lists (from ``cache.first_slot``).

        ``skip_present``: first Lookup the chain and send only the chunks after its stored
        prefix (their results are then omitted).
        """
        start = self.lookup(keys) if skip_present else 0
        if chunk_tokens <= 0:
            raise invalid(f"chunk_tokens: {chunk_tokens} must be positive")
        chunks = []
        for i in range(start, len(keys)):
            what = f"chunks[{i - start}]"
            ids, slot = cache.window(i * chunk_tokens, chunk_tokens)
            c = pb.PutChunk(namespace=self.namespace, key=_key(keys[i], f"{what}.key"),
                            layout=pb.Layout(num_layers=cache.num_layers, num_tokens=chunk_tokens,
                                             num_heads=cache.num_heads, head_dim=cache.head_dim),
                            dtype=_arrays.DTYPES[cache.dtype], codec=codec_to_proto(codec))
            c.data_paged.CopyFrom(self._paged_proto(cache, ids, slot, what))
            chunks.append(c)
        if not chunks:
            return []
        if cache.device is not None:
            _arrays.torch_module().cuda.current_stream(cache.device).synchronize()
        return self._put(chunks)

    # --- get -----------------------------------------------------------------------------

    def get(self, key: KeyLike, layers: Range = None, heads: Range = None,
            dtype: str | None = None, out: Any = None, torch: bool = False) -> Any:
        """Decodes one chunk (or the slice ``layers`` x ``heads`` of it).

        Returns an array ``[l1-l0, 2, T, h1-h0, D]``: ``out`` when given (written in place;
        zero-copy when it lies in a host buffer or a registered CUDA allocation), else a new
        read-only numpy array (float16, or bfloat16 with ml_dtypes, else uint16), or a CPU
        torch tensor with ``torch=True``. NOT_FOUND if the key is missing.
        """
        r = self.get_many([key], layers=layers, heads=heads, dtype=dtype, out=out,
                          torch=torch)[0]
        return out if out is not None else r.data

    def get_many(self, keys: Sequence[KeyLike], layers: Range = None, heads: Range = None,
                 dtype: str | None = None, allow_missing: bool = False, out: Any = None,
                 torch: bool = False) -> list[GetResult]:
        """Decodes several chunks in one call; one GetResult per key, in order.

        ``out``: a destination for all found results, laid one after another in request order
        (each result's bytes right after the previous one's), e.g. an array of shape
        ``[len(keys), L, 2, T, H, D]``. Zero-copy in a host buffer or a registered CUDA
        allocation; any other array is filled from the bytes received.
        """
        req = self._get_request(keys, layers, heads, dtype, allow_missing)
        dest = _arrays.view(out) if out is not None else None
        ref = self._region_ref(dest) if dest is not None else None
        if dest is not None and not dest.contiguous:
            raise invalid("out: must be contiguous")
        if ref is not None:
            req.output_region.CopyFrom(ref)
        elif dest is not None:
            self._slow_path(dest)
        resp = self._call("Get", req, pb.GetResponse)
        results: list[GetResult] = []
        at = 0
        for x in resp.results:
            k = ChunkKey(x.key.hi, x.key.lo)
            if not x.found:
                results.append(GetResult(k, False, None))
                continue
            info = ChunkInfo.from_proto(x.info)
            if ref is not None:
                results.append(GetResult(k, True, info))
                continue
            data = self._array_from_bytes(x, req, info, torch and dest is None)
            if dest is not None:
                at = self._copy_into(dest, at, x.data)
                data = None
            results.append(GetResult(k, True, info, data))
        return results

    def _get_request(self, keys: Sequence[KeyLike], layers: Range, heads: Range,
                     dtype: str | None, allow_missing: bool) -> pb.GetRequest:
        if dtype is not None and dtype not in _arrays.DTYPES:
            raise invalid(f"dtype: {dtype!r} must be 'fp16', 'bf16' or None")
        req = pb.GetRequest(namespace=self.namespace,
                            keys=_keys(keys),
                            allow_missing=allow_missing)
        for name, r in (("layers", layers), ("heads", heads)):
            pr = _range(r, name)
            if pr is not None:
                getattr(req, name).CopyFrom(pr)
        if dtype is not None:
            req.output_dtype = _arrays.DTYPES[dtype]
        return req

    @staticmethod
    def _slice_shape(req: pb.GetRequest, info: ChunkInfo) -> tuple[int, ...]:
        L, T, H, D = info.layout
        l0, l1 = req.layers.begin, req.layers.end or L
        h0, h1 = req.heads.begin, req.heads.end or H
        if not req.HasField("layers"):
            l0, l1 = 0, L
        if not req.HasField("heads"):
            h0, h1 = 0, H
        return (l1 - l0, 2, T, h1 - h0, D)

    def _array_from_bytes(self, x: pb.GetResult, req: pb.GetRequest, info: ChunkInfo,
                          as_torch: bool) -> Any:
        shape = self._slice_shape(req, info)
        a = np.frombuffer(x.data, dtype=_arrays.numpy_dtype(x.dtype)).reshape(shape)
        if not as_torch:
            return a
        torch = _arrays.torch_module()
        t = torch.frombuffer(bytearray(x.data), dtype=torch.int16).view(_arrays.torch_dtype(x.dtype))
        return t.reshape(shape)

    @staticmethod
    def _copy_into(dest: _arrays.ArrayView, at: int, data: bytes) -> int:
        if at + len(data) > dest.nbytes:
            raise invalid(f"out: {dest.nbytes} bytes cannot hold the results "
                          f"({at + len(data)} bytes so far)")
        if dest.torch:
            torch = sys.modules["torch"]
            flat = dest.obj.view(-1).view(torch.uint8)
            src = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            flat[at:at + len(data)].copy_(src.to(flat.device))
        else:
            flat = dest.obj.reshape(-1).view(np.uint8)
            flat[at:at + len(data)] = np.frombuffer(data, dtype=np.uint8)
        return at + len(data)

    def get_paged(self, keys: Sequence[KeyLike], cache: layouts.PagedCache,
                  layers: Range = None, heads: Range = None,
                  allow_missing: bool = False) -> list[GetResult]:
        """Decodes ``keys`` into a paged cache: the found results' tokens, concatenated in
        request order, go to the sequence's blocks from ``cache.first_slot``.
        ``GetResult.first_token`` says where each result starts. The planes hold the
        requested layers (``cache.num_layers == l1 - l0``) and heads."""
        req = self._get_request(keys, layers, heads, cache.dtype, allow_missing)
        req.output_paged.CopyFrom(self._paged_proto(cache, cache.block_ids, cache.first_slot,
                                                    "output_paged"))
        resp = self._call("Get", req, pb.GetResponse)
        return [GetResult(ChunkKey(x.key.hi, x.key.lo), x.found,
                          ChunkInfo.from_proto(x.info) if x.found else None, None, x.first_token)
                for x in resp.results]

    def get_prefix(self, token_ids: Sequence[int] | np.ndarray | Any, chunk_tokens: int = 256,
                   into: Any = None, layers: Range = None, heads: Range = None,
                   dtype: str | None = None, max_tokens: int | None = None,
                   prev: ChunkKey | None = None) -> PrefixResult:
        """Restores the longest stored prefix of ``token_ids`` in one Lookup and one Get.

        The keys are ``chunk_keys(token_ids[:max_tokens], chunk_tokens, namespace, prev)``.
        ``into`` receives the chunks' slices: a :class:`kvstash.layouts.PagedCache` (tokens
        go to its blocks from ``first_slot``), or an array/tensor with room for them one
        after another (``[n, L, 2, T, H, D]``; zero-copy in a host buffer or registered CUDA
        memory). Without ``into``, ``PrefixResult.data`` is a numpy array
        ``[chunks, l, 2, T, h, D]``. A chunk evicted between the Lookup and the Get ends the
        prefix there.
        """
        try:
            ids = _token_array(token_ids)
        except ValueError as e:
            raise invalid(str(e)) from None
        if max_tokens is not None:
            ids = ids[:max(0, max_tokens)]
        keys = chunk_keys(ids, chunk_tokens, self.namespace, prev)
        n = self.lookup(keys)
        if n == 0:
            return PrefixResult(0, 0, [], [])
        if isinstance(into, layouts.PagedCache):
            res = self.get_paged(keys[:n], into, layers=layers, heads=heads, allow_missing=True)
        else:
            res = self.get_many(keys[:n], layers=layers, heads=heads, dtype=dtype,
                                allow_missing=True, out=into)
        found = 0
        while found < len(res) and res[found].found:
            found += 1
        data = None
        if into is None and found:
            data = np.stack([r.data for r in res[:found]])
        return PrefixResult(found * chunk_tokens, found, keys[:found], res[:found], data)

    # --- regions -------------------------------------------------------------------------

    def host_buffer(self, shape: Sequence[int] | int, dtype: Any = np.float16,
                    torch: bool = False, lease_seconds: int = 0) -> Any:
        """A new array whose memory is a shared-memory region registered with the daemon.

        Puts from it and Gets into it (or into any contiguous slice of it) move no payload
        bytes over gRPC. The file under /dev/shm is created 0600, its pages are reserved
        (posix_fallocate), and it is unlinked once registered; the lease is renewed in the
        background and the region unregistered on :meth:`close`.

        Args:
            shape: the array's shape, e.g. ``(chunks, L, 2, T, H, D)``.
            dtype: numpy float16 / ml_dtypes.bfloat16 / uint16, or the names "fp16"/"bf16".
            torch: return a CPU torch tensor (float16/bfloat16) sharing the memory.
        """
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        if dtype == "fp16":
            dtype = np.float16
        elif dtype == "bf16":
            dtype = _arrays.NP_BF16 if _arrays.NP_BF16 is not None else np.uint16
        dt = np.dtype(dtype)
        if dt.itemsize != 2:
            raise invalid(f"dtype: {dt} is not a 16-bit type")
        nbytes = int(np.prod(shape, dtype=np.int64)) * 2
        if nbytes <= 0:
            raise invalid(f"shape: {shape} holds no elements")
        size = -(-nbytes // 4096) * 4096
        path, fd = create_shm_file(size)
        try:
            mm = map_shm(fd, size)
            try:
                resp = self._call("RegisterRegion", pb.RegisterRegionRequest(
                    namespace=self.namespace, path=path, size=size, lease_seconds=lease_seconds),
                    pb.RegisterRegionResponse)
            except Error:
                mm.close()
                raise
        finally:
            os.unlink(path)  # the daemon's descriptor (and ours, through the map) keep it
            os.close(fd)
        arr = np.frombuffer(mm, dtype=np.uint8, count=nbytes).view(dt).reshape(shape)
        base = arr.__array_interface__["data"][0]
        r = Region(resp.region_id, resp.token, base, resp.size, "shm", None, resp.lease_seconds,
                   path, resp.pinned, [mm])
        self._add_region(r)
        if torch:
            t = _arrays.torch_module().from_numpy(arr.view(np.int16))
            tdt = _arrays.torch_module().bfloat16 if (
                dtype is np.uint16 or dt == _arrays.NP_BF16) else _arrays.torch_module().float16
            return t.view(tdt)
        return arr

    def register_cuda(self, tensor: Any, lease_seconds: int = 0) -> Region:
        """Registers the CUDA allocation that holds ``tensor`` (a torch CUDA tensor).

        PyTorch's caching allocator sub-allocates large cudaMalloc segments; this registers
        the whole segment once (by its CUDA IPC handle), so every later put/get of any
        tensor or view inside it, contiguous or paged, is encoded from and decoded into the
        GPU memory in place. The client keeps ``tensor`` alive until the region is
        unregistered, so the segment cannot be freed under the daemon. Registering a tensor
        of an already registered segment returns that region.

        Completion: a put synchronizes the tensor's device's current stream before it
        sends (the data must be written); when a get returns, the daemon has synchronized
        its own stream, so the data is visible to every stream of the worker.
        """
        v = _arrays.view(tensor)
        if not v.torch or v.cuda_device is None:
            raise invalid("tensor: register_cuda needs a torch CUDA tensor")
        for r in self._regions:
            if r.kind == "cuda" and r.contains(v.ptr, max(v.nbytes, 1), v.cuda_device):
                return r
        torch = _arrays.torch_module()
        with torch.cuda.device(v.cuda_device):
            torch.cuda.current_stream().synchronize()
            alloc = _cuda.allocation_of(v.ptr, v.cuda_device)
        resp = self._call("RegisterRegion", pb.RegisterRegionRequest(
            namespace=self.namespace, size=0, lease_seconds=lease_seconds,
            cuda_ipc=pb.CudaIpcBuffer(handle=alloc.handle, device_uuid=alloc.device_uuid)),
            pb.RegisterRegionResponse)
        r = Region(resp.region_id, resp.token, alloc.base, resp.size, "cuda", v.cuda_device,
                   resp.lease_seconds, "", False, [tensor])
        self._add_region(r)
        return r

    def unregister(self, region: Region) -> None:
        """Releases a region (host buffer or CUDA allocation) at the daemon."""
        self._renewer.remove(region)
        with self._lock:
            if region in self._regions:
                self._regions.remove(region)
        if region.closed:
            return
        region.closed = True
        region.keepalive.clear()
        self._call("UnregisterRegion", pb.UnregisterRegionRequest(
            region_id=region.region_id, token=region.token), pb.UnregisterRegionResponse)

    def regions(self) -> list[Region]:
        """The regions this client has registered."""
        with self._lock:
            return list(self._regions)

    def _add_region(self, r: Region) -> None:
        with self._lock:
            self._regions.append(r)
        self._renewer.add(r)

    def _renew(self, r: Region) -> int:
        resp = self._call("RenewRegion", pb.RenewRegionRequest(region_id=r.region_id,
                                                               token=r.token),
                          pb.RenewRegionResponse)
        return resp.lease_seconds

    def _find_region(self, ptr: int, nbytes: int, device: int | None) -> Region | None:
        with self._lock:
            for r in self._regions:
                if r.contains(ptr, nbytes, device):
                    return r
        return None

    def _region_ref(self, v: _arrays.ArrayView) -> pb.RegionRef | None:
        if not v.contiguous or v.nbytes == 0:
            return None
        r = self._find_region(v.ptr, v.nbytes, v.cuda_device)
        return r.ref(v.ptr, v.nbytes) if r is not None else None

    def _slow_path(self, v: _arrays.ArrayView) -> None:
        if v.cuda_device is not None:
            self._warn_once("cuda", "kvstash: a CUDA tensor outside any registered allocation "
                            "goes through host memory and gRPC bytes; call "
                            "client.register_cuda(tensor) once for in-place GPU transfers")
        else:
            self._warn_once("host", "kvstash: this array is not in a shared-memory region, so "
                            "its bytes travel over gRPC; allocate it with client.host_buffer() "
                            "for zero-copy transfers")

    def _paged_proto(self, cache: layouts.PagedCache, block_ids: Sequence[int], first_slot: int,
                     what: str) -> pb.PagedLayout:
        p = pb.PagedLayout(block_size=cache.block_size, block_stride=cache.block_stride,
                           token_stride=cache.token_stride, head_stride=cache.head_stride,
                           block_ids=[int(b) for b in block_ids], first_slot=first_slot)
        for j, pl in enumerate(cache.planes):
            r = self._find_region(pl.ptr, pl.extent, cache.device)
            if r is None:
                where = f"CUDA device {cache.device}" if cache.device is not None else "host memory"
                raise invalid(f"{what}.planes[{j}]: the plane ({pl.extent} bytes in {where}) is "
                              "not inside a registered region; use client.host_buffer() for "
                              "host caches or client.register_cuda() for GPU caches")
            p.planes.append(r.ref(pl.ptr, pl.extent))
        return p

