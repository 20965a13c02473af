"""The Python client against a real kvstashd with tenants (docs/security.md): a token opens
its own namespaces only, refusals keep their gRPC codes, and a worker on the Unix socket is
its uid's tenant, shared-memory regions included."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

import kvstash
from conftest import Daemon


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    d = tmp_path_factory.mktemp("auth")
    tokens = d / "tokens.toml"
    tokens.write_text(
        f'[[tenant]]\nname = "alice"\ntoken_sha256 = "{_hash("alice-token")}"\n'
        'namespaces = ["alice", "alice/*"]\nrights = ["read", "write"]\n\n'
        f'[[tenant]]\nname = "bob"\ntoken_sha256 = "{_hash("bob-token")}"\n'
        'namespaces = ["bob"]\nrights = ["read"]\n\n'
        f'[[tenant]]\nname = "local"\nuids = [{os.geteuid()}]\n'
        'namespaces = ["local"]\nrights = ["read", "write"]\n')
    sock = str(d / "kvstash.sock")
    daemon = Daemon("--tokens-file", str(tokens), "--unix-socket", sock)
    daemon.socket = sock
    yield daemon
    daemon.stop()


def _kv(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, 2, 16, 2, 32)).astype(np.float16)


def test_a_token_opens_only_its_namespaces(secured):
    kv = _kv(1)
    with kvstash.Client(secured.address, namespace="alice", token="alice-token") as alice:
        alice.put((1, 1), kv, codec="fp16")
        np.testing.assert_array_equal(alice.get((1, 1)), kv)
        with pytest.raises(kvstash.Error) as e:
            kvstash.Client(secured.address, namespace="bob", token="alice-token").lookup([(1, 1)])
        assert e.value.code.name == "PERMISSION_DENIED"
        assert "namespace 'bob'" in e.value.message
    with kvstash.Client(secured.address, namespace="alice", token="bob-token") as bob:
        with pytest.raises(kvstash.Error) as e:
            bob.get((1, 1))
        assert e.value.code.name == "PERMISSION_DENIED"
        with pytest.raises(kvstash.Error) as e:
            bob.delete([(1, 1)])
        assert e.value.code.name == "PERMISSION_DENIED"
    with kvstash.Client(secured.address, namespace="bob", token="bob-token") as bob:
        with pytest.raises(kvstash.Error) as e:
            bob.put((1, 2), kv, codec="fp16")
        assert e.value.code.name == "PERMISSION_DENIED"
        assert "write" in e.value.message


def test_stats_show_a_tenant_only_its_own_namespaces(secured):
    with kvstash.Client(secured.address, namespace="alice/x", token="alice-token") as alice:
        alice.put((3, 1), _kv(3), codec="fp16")
        s = alice.stats()
    names = {n.namespace for n in s.namespaces}
    assert "alice/x" in names
    assert all(n.startswith("alice") for n in names)
    assert s.chunks == 0 and s.puts == 0  # store-wide counters are for admins
    assert s.capacity_bytes > 0
    x = next(n for n in s.namespaces if n.namespace == "alice/x")
    assert x.chunks == 1 and x.allocated_bytes >= x.stored_bytes > 0
    with kvstash.Client(secured.address, namespace="bob", token="bob-token") as bob:
        assert all(n.namespace == "bob" for n in bob.stats().namespaces)


def test_missing_and_wrong_tokens_are_unauthenticated(secured):
    for token in ("", "nobody-token"):
        with kvstash.Client(secured.address, namespace="alice", token=token) as c:
            with pytest.raises(kvstash.Error) as e:
                c.stats()
            assert e.value.code.name == "UNAUTHENTICATED"
            assert "nobody-token" not in e.value.message


def test_unix_socket_peer_is_its_uids_tenant_with_shared_memory(secured):
    kv = _kv(2)
    with kvstash.Client("unix:" + secured.socket, namespace="local", token="") as c:
        buf = c.host_buffer(kv.shape, np.float16)
        buf[...] = kv
        c.put((2, 1), buf, codec="fp16")
        out = c.host_buffer(kv.shape, np.float16)
        c.get((2, 1), out=out)
        np.testing.assert_array_equal(out, kv)
    with kvstash.Client("unix:" + secured.socket, namespace="alice", token="") as c:
        with pytest.raises(kvstash.Error) as e:
            c.lookup([(2, 1)])
        assert e.value.code.name == "PERMISSION_DENIED"
