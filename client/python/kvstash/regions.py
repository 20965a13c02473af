"""Registered regions: shared-memory host buffers and CUDA allocations (docs/api.md,
"Shared-memory regions" and "CUDA IPC").

A region is registered once; afterwards any array or tensor that lies inside it travels as
a reference (region id, token, offset, length) instead of bytes.
"""

from __future__ import annotations

import mmap
import os
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from .v1 import kvstash_pb2 as pb


@dataclass
class Region:
    """A registered region: ``base`` is the address in this process (host or device)."""

    region_id: int
    token: str
    base: int
    size: int
    kind: str                 # "shm" or "cuda"
    device: int | None = None  # CUDA device index (cuda regions)
    lease_seconds: int = 0
    path: str = ""
    pinned: bool = False
    keepalive: list[Any] = field(default_factory=list)  # mmap / tensor kept alive
    closed: bool = False

    def contains(self, ptr: int, nbytes: int, device: int | None) -> bool:
        return (not self.closed and self.device == device and self.base <= ptr
                and ptr + nbytes <= self.base + self.size)

    def ref(self, ptr: int, nbytes: int) -> pb.RegionRef:
        return pb.RegionRef(region_id=self.region_id, token=self.token,
                            offset=ptr - self.base, length=nbytes)


def create_shm_file(size: int) -> tuple[str, int]:
    """Creates a 0600 file of ``size`` bytes under /dev/shm and reserves its pages.

    The pages are allocated up front (posix_fallocate) so that a /dev/shm without room fails
    here with ENOSPC rather than with SIGBUS in the daemon or in this process later.
    Returns (path, fd).
    """
    path = f"/dev/shm/kvstash-py-{os.getpid()}-{secrets.token_hex(8)}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        os.close(fd)
        os.unlink(path)
        raise
    return path, fd


def map_shm(fd: int, size: int) -> mmap.mmap:
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)


class LeaseRenewer:
    """Renews the leases of registered regions in the background.

    One daemon thread per client; each region is renewed when a third of its lease has
    passed. Thread-safe.
    """

    def __init__(self, renew) -> None:
        self._renew = renew  # callable(Region) -> new lease seconds; raises on failure
        self._regions: list[Region] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def add(self, r: Region) -> None:
        with self._lock:
            self._regions.append(r)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kvstash-lease",
                                                daemon=True)
                self._thread.start()
        self._wake.set()

    def remove(self, r: Region) -> None:
        with self._lock:
            if r in self._regions:
                self._regions.remove(r)

    def regions(self) -> list[Region]:
        with self._lock:
            return list(self._regions)

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        import time

        due: dict[int, float] = {}
        while not self._stop:
            now = time.monotonic()
            wait = 60.0
            for r in self.regions():
                period = max(1.0, (r.lease_seconds or 300) / 3.0)
                t = due.setdefault(id(r), now + period)
                if now >= t:
                    try:
                        r.lease_seconds = self._renew(r)
                    except Exception:  # the next use reports a lost region; keep trying
                        pass
                    due[id(r)] = now + max(1.0, (r.lease_seconds or 300) / 3.0)
                wait = min(wait, due[id(r)] - now)
            self._wake.wait(timeout=max(0.05, wait))
            self._wake.clear()
