"""kvstash: the Python client of kvstashd, a compressed KV-cache memory service.

>>> import kvstash
>>> with kvstash.Client("127.0.0.1:7450", namespace="llama-3-8b") as c:
...     keys = kvstash.chunk_keys(token_ids, 256, c.namespace)
...     c.put(keys[0], kv)                      # kv: [L, 2, T, H, D] fp16/bf16
...     n = c.lookup(keys)                      # leading chunks stored

With authentication and TLS: ``kvstash.Client(address, token=..., tls=kvstash.TlsConfig(
ca_file="ca.pem"))`` (the token defaults to ``$KVSTASH_TOKEN``).

See docs/python.md for the transports (gRPC bytes, shared memory, CUDA IPC), the paged
layouts of vLLM and SGLang (:mod:`kvstash.layouts`) and prefix restore.
"""

from . import layouts
from .client import ChunkInfo, Client, GetResult, NamespaceStats, PrefixResult, PutResult, Stats
from .codec import PRESETS, CodecConfig
from .errors import Error
from .keys import ChunkKey, chain_key, chunk_keys
from .regions import Region
from .security import TlsConfig, load_token_file

__version__ = "0.3.0"

__all__ = [
    "ChunkInfo", "ChunkKey", "Client", "CodecConfig", "Error", "GetResult", "PRESETS",
    "NamespaceStats", "PrefixResult", "PutResult", "Region", "Stats", "TlsConfig", "chain_key", "chunk_keys",
    "layouts", "load_token_file",
]
