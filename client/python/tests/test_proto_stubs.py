"""The checked-in kvstash/v1/kvstash_pb2.py must be what protoc makes of the .proto today."""

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

STUB = REPO / "client" / "python" / "kvstash" / "v1" / "kvstash_pb2.py"


def test_generated_stub_is_current(tmp_path: Path):
    protoc = shutil.which("protoc")
    if protoc is None:
        pytest.fail("protoc not found (Debian: protobuf-compiler); it is a build dependency")
    subprocess.run([protoc, f"-I{REPO / 'proto'}", f"--python_out={tmp_path}",
                    str(REPO / "proto" / "kvstash" / "v1" / "kvstash.proto")], check=True)
    fresh = (tmp_path / "kvstash" / "v1" / "kvstash_pb2.py").read_text()
    assert fresh == STUB.read_text(), (
        "kvstash_pb2.py is stale: regenerate with `protoc -Iproto --python_out=client/python "
        "proto/kvstash/v1/kvstash.proto` from the repository root")
