"""Fixtures: a real kvstashd on a free loopback port, and clients of it.

The daemon binary is $KVSTASH_DAEMON, else build/server/kvstashd of this checkout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import kvstash

REPO = Path(__file__).resolve().parents[3]


def daemon_binary() -> str:
    env = os.environ.get("KVSTASH_DAEMON")
    if env:
        return env
    for b in (REPO / "build" / "server" / "kvstashd", REPO / ".gpu" / "bin" / "kvstashd"):
        if b.is_file():
            return str(b)
    pytest.fail("kvstashd not found: build it (bash scripts/build.sh) or set KVSTASH_DAEMON")


class Daemon:
    def __init__(self, *extra: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="kvstash-pytest-")
        ready = os.path.join(self.dir, "ready")
        self.log = open(os.path.join(self.dir, "log"), "w+")
        cmd = os.environ.get("KVSTASH_DAEMON_WRAPPER", "").split() + [
            daemon_binary(), "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--ready-file", ready, "--host-capacity", "512MiB", "--worker-threads", "2",
            "--fidelity-probe-every", "0", "--log-level", "warn", *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvstashd exited with {self.proc.returncode}:\n{self.output()}")
            if os.path.exists(ready):
                text = Path(ready).read_text()
                if text.endswith("\n"):
                    self.address = text.strip()
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"kvstashd not ready after 30 s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="session")
def daemon():
    d = Daemon(*os.environ.get("KVSTASH_DAEMON_ARGS", "").split())
    yield d
    d.stop()


@pytest.fixture
def namespace() -> str:
    return f"pytest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(daemon, namespace):
    with kvstash.Client(daemon.address, namespace=namespace, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def codec_oracle():
    """kvstash's own C++ codec through its C ABI (tools/fidelity/codec.py)."""
    import sys

    sys.path.insert(0, str(REPO / "tools" / "fidelity"))
    try:
        import codec  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    return codec.Codec()
