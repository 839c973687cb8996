"""A throwaway Redis server for the tests (Debian's ``redis-server``, installed by ``make redis``).

``redis_server()`` starts one on a free loopback port in a temporary folder (no persistence, a
password required) and stops it at the end. Without the binary the tests that need it skip, unless
``PIPELINE_REQUIRE_REDIS=1`` (CI sets it: there they must run).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class RedisServer:
    port: int
    password: str
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """SIGKILL: an outage, not a clean shutdown."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK)
                                             else None)
    if found is None:
        reason = "redis-server not found (make redis installs Debian's package)"
        if os.environ.get("PIPELINE_REQUIRE_REDIS") == "1":
            pytest.fail(f"{reason}, and PIPELINE_REQUIRE_REDIS=1 requires it")
        pytest.skip(reason)
    return found


def start(folder: Path, port: int | None = None, password: str | None = None) -> RedisServer:
    """A Redis server on 127.0.0.1 (``port``: a free one), answering once started."""
    port = port or _free_port()
    password = password or secrets.token_hex(16)
    process = subprocess.Popen(
        [binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
         "--appendonly", "no", "--requirepass", password, "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return RedisServer(port, password, process)
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}")
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start within 20 s")


@contextlib.contextmanager
def redis_server(folder: Path):
    server = start(folder)
    try:
        yield server
    finally:
        server.stop()
