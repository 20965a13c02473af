"""The one exception type of the kvstash client."""

from __future__ import annotations

import grpc


class Error(Exception):
    """A kvstash call failed.

    Attributes:
        code: the gRPC status code (``grpc.StatusCode``), chosen by the daemon as documented
            in docs/api.md (``INVALID_ARGUMENT`` for a bad field, ``NOT_FOUND`` for a missing
            key, ``RESOURCE_EXHAUSTED``, ``UNAVAILABLE``, ``DATA_LOSS``, ...). Problems the
            client finds before sending (a wrong shape or dtype) use ``INVALID_ARGUMENT`` too.
        message: the daemon's message, which starts with the offending field's path
            (``chunks[0].layout.head_dim: ...``), or the client's own.
        address: the daemon's address.
    """

    def __init__(self, code: grpc.StatusCode, message: str, address: str = "") -> None:
        self.code = code
        self.message = message
        self.address = address
        super().__init__(f"{code.name}: {message}")


def invalid(message: str) -> Error:
    """An INVALID_ARGUMENT error raised by the client before anything is sent."""
    return Error(grpc.StatusCode.INVALID_ARGUMENT, message)


def from_rpc(e: grpc.RpcError, address: str, method: str) -> Error:
    """Converts a gRPC error of ``method`` into an Error (the only place this happens)."""
    code = e.code() if callable(getattr(e, "code", None)) else grpc.StatusCode.UNKNOWN
    details = e.details() if callable(getattr(e, "details", None)) else str(e)
    details = details or ""
    if code == grpc.StatusCode.UNAVAILABLE and (
        "connect" in details.lower() or "connection" in details.lower() or not details
    ):
        # gRPC's own text ("failed to connect to all addresses; last error: ...") is kept at
        # the end for whoever debugs the network.
        return Error(code, f"kvstash daemon unavailable at {address} ({method}): {details}",
                     address)
    return Error(code, details, address)
