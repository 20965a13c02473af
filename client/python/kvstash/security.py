"""Bearer tokens and TLS for :class:`kvstash.Client` (docs/python.md "Authentication and TLS").

The daemon reads the token from the call metadata ``authorization: Bearer <token>``, sent on
every call over TLS and plaintext alike (loopback and ``unix:`` sockets need no TLS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import grpc

from .errors import invalid

PathLike = Union[str, "os.PathLike[str]"]

#: The environment variable a Client reads its token from when ``token`` is None.
TOKEN_ENV = "KVSTASH_TOKEN"
#: The metadata key of the bearer token; its value is ``"Bearer <token>"``.
AUTHORIZATION_KEY = "authorization"


@dataclass(frozen=True)
class TlsConfig:
    """TLS for a :class:`kvstash.Client`: the client verifies the daemon's certificate and,
    for mutual TLS, presents its own. Files are read when the Client is made.

    Attributes:
        ca_file: PEM bundle of the CAs that may sign the daemon's certificate. None: gRPC's
            default roots (its bundled roots, or ``$GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``).
        cert_file: PEM certificate chain this client presents (mutual TLS); with key_file.
        key_file: PEM private key of cert_file.
        server_name: the name the daemon's certificate must carry instead of the address's
            host (test certificates, an IP address without an IP SAN). None: the host, and
            ``localhost`` for ``unix:`` addresses (whatever the gRPC version's default).
    """

    ca_file: PathLike | None = None
    cert_file: PathLike | None = None
    key_file: PathLike | None = None
    server_name: str | None = None


def validate_token(token: str, what: str = "token") -> None:
    """Raises :class:`kvstash.Error` (INVALID_ARGUMENT) unless ``token`` can be sent as a
    bearer token: visible ASCII (0x21-0x7e), no spaces or control characters."""
    for i, ch in enumerate(token):
        if not 0x21 <= ord(ch) <= 0x7E:
            raise invalid(f"{what}: character {i} ({ord(ch):#04x}) is not visible ASCII; a "
                          "bearer token cannot hold spaces or control characters")


def load_token_file(path: PathLike) -> str:
    """The bearer token in the file at ``path``, less surrounding whitespace (a trailing
    newline is fine). :class:`kvstash.Error` (INVALID_ARGUMENT) naming the file when it
    cannot be read, is empty or holds a character a token cannot have."""
    try:
        with open(path, encoding="ascii", errors="surrogateescape") as f:
            text = f.read()
    except OSError as e:
        raise invalid(f"token file: cannot read '{os.fspath(path)}': {e.strerror}") from None
    token = text.strip()
    if not token:
        raise invalid(f"token file: '{os.fspath(path)}' is empty")
    validate_token(token, f"token file '{os.fspath(path)}'")
    return token


def resolve_token(token: str | None) -> str:
    """``token`` when given (``""``: none, ignoring the environment), else
    ``$KVSTASH_TOKEN`` (unset or empty: none). Validated."""
    if token is None:
        env = os.environ.get(TOKEN_ENV, "")
        validate_token(env, TOKEN_ENV)
        return env
    if not isinstance(token, str):
        raise invalid(f"token: expected a str, got {type(token).__name__}")
    validate_token(token)
    return token


def call_metadata(token: str) -> tuple[tuple[str, str], ...] | None:
    """The metadata every call carries: the bearer token, or None without one."""
    return ((AUTHORIZATION_KEY, f"Bearer {token}"),) if token else None


def _read_pem(field: str, path: PathLike, kind: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise invalid(f"{field}: cannot read '{os.fspath(path)}': {e.strerror}") from None
    begin = data.find(b"-----BEGIN ")
    if begin < 0 or data.find(f"{kind}-----".encode(), begin) < 0:
        raise invalid(f"{field}: '{os.fspath(path)}' holds no PEM {kind}")
    return data


def channel_credentials(tls: TlsConfig, address: str) -> tuple[grpc.ChannelCredentials,
                                                               list[tuple[str, str]]]:
    """The credentials and extra channel options of ``tls`` for a channel to ``address``.
    Reads its files; :class:`kvstash.Error` (INVALID_ARGUMENT) naming the field for a bad
    one."""
    if not isinstance(tls, TlsConfig):
        raise invalid(f"tls: expected a kvstash.TlsConfig, got {type(tls).__name__}")
    if bool(tls.cert_file) != bool(tls.key_file):
        given, missing = ("cert_file", "key_file") if tls.cert_file else ("key_file", "cert_file")
        raise invalid(f"tls.{given}: given without tls.{missing} (mutual TLS needs both)")
    root = _read_pem("tls.ca_file", tls.ca_file, "CERTIFICATE") if tls.ca_file else None
    chain = key = None
    if tls.cert_file:
        chain = _read_pem("tls.cert_file", tls.cert_file, "CERTIFICATE")
        key = _read_pem("tls.key_file", tls.key_file, "PRIVATE KEY")
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                         certificate_chain=chain)
    # gRPC's default name for a unix: address was "localhost" and is now the path; a
    # certificate names a host, so keep "localhost".
    name = tls.server_name or ("localhost" if address.startswith("unix") else None)
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return creds, options


__all__ = ["TlsConfig", "load_token_file"]
