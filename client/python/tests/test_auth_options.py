"""kvstash.Client(token=..., tls=kvstash.TlsConfig(...)) against an in-process gRPC server.

The server (grpc.server with generic handlers for Stats and Lookup) records each call's
``authorization`` metadata and refuses calls without the right bearer token; certificates
(a CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a second,
unrelated CA) are made by the openssl CLI when the tests start. No kvstashd is needed.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from concurrent import futures
from pathlib import Path

import grpc
import pytest

import kvstash
from kvstash.v1 import kvstash_pb2 as pb

TOKEN = "tok-3f9a.B_7~x+/="
DENIED = "read-only-token"
SERVICE = "kvstash.v1.KvStash"


class FakeDaemon:
    """Stats and Lookup; UNAUTHENTICATED without TOKEN, PERMISSION_DENIED for DENIED."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []   # each call's authorization value, None if absent

    def _check(self, context: grpc.ServicerContext) -> None:
        values = [v for k, v in context.invocation_metadata() if k == "authorization"]
        self.seen.append(values[0] if len(values) == 1 else (None if not values else "<several>"))
        if values == [f"Bearer {DENIED}"]:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "token may not call this")
        if values != [f"Bearer {TOKEN}"]:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "authorization: missing or unknown bearer token")

    def stats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> pb.StatsResponse:
        self._check(context)
        return pb.StatsResponse(version="fake", used_bytes=42)

    def lookup(self, request: pb.LookupRequest,
               context: grpc.ServicerContext) -> pb.LookupResponse:
        self._check(context)
        return pb.LookupResponse(present_prefix=0)

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn, req, resp):
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString)

        return grpc.method_handlers_generic_handler(SERVICE, {
            "Stats": unary(self.stats, pb.StatsRequest, pb.StatsResponse),
            "Lookup": unary(self.lookup, pb.LookupRequest, pb.LookupResponse),
        })


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
            "-subj", f"/CN=kvstash test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    leaves = {"server": ("localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                      "extendedKeyUsage=serverAuth\n"),
              "client": ("kvstash test client", "extendedKeyUsage=clientAuth\n")}
    for serial, (name, (cn, ext)) in enumerate(leaves.items(), start=2):
        (d / f"{name}.ext").write_text(ext)
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", str(serial), "-days", "2", "-out", f"{name}.pem",
            "-extfile", f"{name}.ext")
    return d


class Server:
    def __init__(self, listen: str = "127.0.0.1:0",
                 creds: grpc.ServerCredentials | None = None) -> None:
        self.daemon = FakeDaemon()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                                  handlers=[self.daemon.handler()])
        port = (self.server.add_insecure_port(listen) if creds is None
                else self.server.add_secure_port(listen, creds))
        self.address = listen if listen.startswith("unix:") else f"127.0.0.1:{port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(None)


@pytest.fixture
def servers():
    made: list[Server] = []

    def start(*args, **kwargs) -> Server:
        made.append(Server(*args, **kwargs))
        return made[-1]

    yield start
    for s in made:
        s.stop()


def server_tls(certs: Path, require_client_cert: bool = False) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [((certs / "server.key").read_bytes(), (certs / "server.pem").read_bytes())],
        root_certificates=(certs / "ca.pem").read_bytes(),
        require_client_auth=require_client_cert)


def stats(address: str, **kwargs) -> kvstash.Stats:
    with kvstash.Client(address, timeout=5, **kwargs) as c:
        return c.stats()


def refused(address: str, **kwargs) -> kvstash.Error:
    with pytest.raises(kvstash.Error) as e:
        stats(address, **kwargs)
    return e.value


@pytest.fixture(autouse=True)
def no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVSTASH_TOKEN", raising=False)


# --- tokens ------------------------------------------------------------------------------

def test_token_is_sent_as_bearer_metadata_on_every_call(servers):
    s = servers()
    with kvstash.Client(s.address, timeout=5, token=TOKEN) as c:
        assert c.stats().used_bytes == 42
        assert c.lookup([kvstash.ChunkKey(1, 2)]) == 0
    assert s.daemon.seen == [f"Bearer {TOKEN}", f"Bearer {TOKEN}"]


def test_env_token_is_the_fallback_and_empty_string_means_none(servers, monkeypatch):
    s = servers()
    monkeypatch.setenv("KVSTASH_TOKEN", TOKEN)
    assert stats(s.address).used_bytes == 42                 # token=None: the environment
    assert refused(s.address, token="").code == grpc.StatusCode.UNAUTHENTICATED
    assert refused(s.address, token="other").code == grpc.StatusCode.UNAUTHENTICATED
    assert s.daemon.seen == [f"Bearer {TOKEN}", None, "Bearer other"]


def test_refused_calls_keep_the_daemons_code_and_message(servers):
    s = servers()
    e = refused(s.address)
    assert e.code == grpc.StatusCode.UNAUTHENTICATED
    assert e.message == "authorization: missing or unknown bearer token"
    assert e.address == s.address
    e = refused(s.address, token=DENIED)
    assert e.code == grpc.StatusCode.PERMISSION_DENIED
    assert e.message == "token may not call this"
    assert s.daemon.seen == [None, f"Bearer {DENIED}"]


def test_bad_tokens_are_refused_before_anything_is_sent(servers, monkeypatch, tmp_path):
    s = servers()
    for token, what in (("two words", "token: character 3 (0x20)"),
                        ("ctl\n", "token: character 3 (0x0a)"),
                        ("caf\u00e9", "token: character 3 (0xe9)")):
        with pytest.raises(kvstash.Error) as e:
            kvstash.Client(s.address, token=token)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert what in e.value.message
    monkeypatch.setenv("KVSTASH_TOKEN", "bad token")
    with pytest.raises(kvstash.Error, match="KVSTASH_TOKEN: character 3"):
        kvstash.Client(s.address)
    assert s.daemon.seen == []


def test_load_token_file_trims_whitespace_and_names_bad_files(tmp_path):
    (tmp_path / "token").write_text(f"  {TOKEN}\r\n")
    assert kvstash.load_token_file(tmp_path / "token") == TOKEN
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(kvstash.Error, match="is empty") as e:
        kvstash.load_token_file(tmp_path / "empty")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    (tmp_path / "two").write_text("a b\n")
    with pytest.raises(kvstash.Error, match=r"token file '.*two': character 1 \(0x20\)"):
        kvstash.load_token_file(tmp_path / "two")
    with pytest.raises(kvstash.Error, match="token file: cannot read '.*missing'"):
        kvstash.load_token_file(tmp_path / "missing")


# --- TLS ---------------------------------------------------------------------------------

def test_tls_config_is_an_exported_frozen_dataclass():
    assert "TlsConfig" in kvstash.__all__
    t = kvstash.TlsConfig(ca_file="ca.pem")
    assert dataclasses.is_dataclass(t)
    assert (t.cert_file, t.key_file, t.server_name) == (None, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.ca_file = "other.pem"


def test_tls_connects_with_the_ca_and_sends_the_token(servers, certs):
    s = servers(creds=server_tls(certs))
    assert stats(s.address, token=TOKEN, tls=kvstash.TlsConfig(ca_file=certs / "ca.pem")) \
        .used_bytes == 42
    assert s.daemon.seen == [f"Bearer {TOKEN}"]


def test_tls_with_the_wrong_ca_is_unavailable(servers, certs):
    s = servers(creds=server_tls(certs))
    e = refused(s.address, token=TOKEN, tls=kvstash.TlsConfig(ca_file=certs / "other-ca.pem"))
    assert e.code == grpc.StatusCode.UNAVAILABLE
    assert s.daemon.seen == []


def test_server_name_is_what_the_certificate_must_carry(servers, certs):
    s = servers(creds=server_tls(certs))
    ok = kvstash.TlsConfig(ca_file=str(certs / "ca.pem"), server_name="localhost")
    assert stats(s.address, token=TOKEN, tls=ok).used_bytes == 42
    wrong = dataclasses.replace(ok, server_name="kvstash.example")
    assert refused(s.address, token=TOKEN, tls=wrong).code == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_cannot_talk_to_a_tls_server(servers, certs):
    s = servers(creds=server_tls(certs))
    assert refused(s.address, token=TOKEN).code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_rejects_a_client_without_a_certificate_and_accepts_one_with_it(servers,
                                                                                  certs):
    s = servers(creds=server_tls(certs, require_client_cert=True))
    no_cert = kvstash.TlsConfig(ca_file=certs / "ca.pem")
    assert refused(s.address, token=TOKEN, tls=no_cert).code == grpc.StatusCode.UNAVAILABLE
    assert s.daemon.seen == []
    with_cert = dataclasses.replace(no_cert, cert_file=certs / "client.pem",
                                    key_file=certs / "client.key")
    assert stats(s.address, token=TOKEN, tls=with_cert).used_bytes == 42
    assert s.daemon.seen == [f"Bearer {TOKEN}"]


def test_bad_tls_options_are_invalid_argument_naming_the_field(certs):
    cases = [
        (kvstash.TlsConfig(ca_file=certs / "missing.pem"), "tls.ca_file: cannot read '"),
        (kvstash.TlsConfig(ca_file=certs / "server.key"), "tls.ca_file: '"),
        (kvstash.TlsConfig(cert_file=certs / "client.pem"),
         "tls.cert_file: given without tls.key_file"),
        (kvstash.TlsConfig(key_file=certs / "client.key"),
         "tls.key_file: given without tls.cert_file"),
        (kvstash.TlsConfig(cert_file=certs / "client.pem", key_file=certs / "client.pem"),
         "holds no PEM PRIVATE KEY"),
    ]
    for tls, what in cases:
        with pytest.raises(kvstash.Error) as e:
            kvstash.Client("127.0.0.1:1", token=TOKEN, tls=tls)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert what in e.value.message, (tls, e.value.message)
    with pytest.raises(kvstash.Error, match="tls: expected a kvstash.TlsConfig"):
        kvstash.Client("127.0.0.1:1", tls={"ca_file": "ca.pem"})


# --- Unix socket -------------------------------------------------------------------------

def test_unix_socket_address_works_with_a_token(servers, tmp_path):
    address = f"unix:{tmp_path / 'kvstash.sock'}"
    s = servers(address)
    with kvstash.Client(address, timeout=5, token=TOKEN) as c:
        assert c.address == address
        assert c.stats().used_bytes == 42
    assert s.daemon.seen == [f"Bearer {TOKEN}"]


def test_unix_socket_address_works_with_tls(servers, certs, tmp_path):
    # Without a server_name, a unix: address verifies "localhost", a SAN of the certificate.
    address = f"unix:{tmp_path / 'kvstash-tls.sock'}"
    servers(address, creds=server_tls(certs))
    assert stats(address, token=TOKEN, tls=kvstash.TlsConfig(ca_file=certs / "ca.pem")) \
        .used_bytes == 42


def test_unreachable_unix_socket_is_unavailable_naming_the_address(tmp_path):
    address = f"unix:{tmp_path / 'nobody.sock'}"
    e = refused(address, token=TOKEN)
    assert e.code == grpc.StatusCode.UNAVAILABLE
    assert address in e.message


# --- kvstash.transformers ----------------------------------------------------------------

def test_prefix_cache_calls_carry_the_clients_token(servers):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from kvstash.transformers import PrefixCache

    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, head_dim=32)
    model = transformers.LlamaForCausalLM(cfg).to(torch.float16).eval()
    s = servers()
    with kvstash.Client(s.address, namespace="tiny", timeout=5, token=TOKEN) as c:
        pc = PrefixCache(c, model, chunk_tokens=32)
        assert pc.restore(torch.arange(70)) == (None, 0)     # Lookup: nothing stored
    assert pc.stats.fallbacks == 0
    assert s.daemon.seen == [f"Bearer {TOKEN}"]
