"""Chunk keys: the shared vectors (tests/fixtures/chunk_keys.json, also checked by the C++
client's tests) and the chain's properties."""

import json

import numpy as np
import pytest

import kvstash
from conftest import REPO

VECTORS = json.loads((REPO / "tests" / "fixtures" / "chunk_keys.json").read_text())


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_matches_shared_vectors(case):
    prev = kvstash.ChunkKey.from_hex(case["prev"]) if case["prev"] else None
    keys = kvstash.chunk_keys(case["tokens"], case["chunk_tokens"], case["namespace"], prev)
    assert [k.hex() for k in keys] == case["keys"]


def test_accepts_numpy_and_lists_alike():
    toks = list(range(1000))
    assert kvstash.chunk_keys(toks, 128, "m") == kvstash.chunk_keys(np.arange(1000), 128, "m")
    assert kvstash.chunk_keys(np.arange(1000, dtype=np.int32), 128, "m") == \
        kvstash.chunk_keys(toks, 128, "m")


def test_partial_chunk_gets_no_key_and_prev_continues_the_chain():
    toks = list(range(700))
    keys = kvstash.chunk_keys(toks, 256, "m")
    assert len(keys) == 2
    assert kvstash.chunk_keys(toks[256:512], 256, "m", prev=keys[0]) == [keys[1]]


def test_hex_round_trip_and_errors():
    k = kvstash.chunk_keys([1, 2, 3, 4], 4, "default")[0]
    assert kvstash.ChunkKey.from_hex(k.hex()) == k
    with pytest.raises(ValueError, match="chunk_tokens"):
        kvstash.chunk_keys([1], 0, "m")
    with pytest.raises(ValueError, match="32 bits"):
        kvstash.chunk_keys([2**33], 1, "m")
