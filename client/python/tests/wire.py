"""Records the serialized size of every request and response a client sends and receives,
so tests can prove that no payload crossed gRPC."""

from __future__ import annotations


class WireMeter:
    def __init__(self, client) -> None:
        self.calls: list[tuple[str, int, int]] = []
        inner = client._call

        def call(method, request, response_type):
            resp = inner(method, request, response_type)
            self.calls.append((method, request.ByteSize(), resp.ByteSize()))
            return resp

        client._call = call

    def largest(self, method: str) -> tuple[int, int]:
        sizes = [(q, r) for m, q, r in self.calls if m == method]
        return (max(s[0] for s in sizes), max(s[1] for s in sizes)) if sizes else (0, 0)
