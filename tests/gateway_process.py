"""A real ``postkey serve`` process on a free port, for tests over real sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from postkey.gateway import hash_key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def keys_file(directory: Path, **tenants: str) -> Path:
    """A keys file giving each tenant (name=API key) loopback destinations and admin."""
    lines = []
    for name, key in tenants.items():
        lines += [
            f"[tenants.{name}]",
            f'keys = ["{hash_key(key)}"]',
            'allow = ["127.0.0.1"]',
            "admin = true",
            "",
        ]
    path = directory / "keys.toml"
    path.write_text("\n".join(lines))
    return path


class ServeProcess:
    """``python -m postkey serve`` with the given arguments, its output in a file."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="postkey-serve-", suffix=".log")[1])
        argv = [sys.executable, "-m", "postkey", "serve", "--port", str(self.port), *args]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("POSTKEY_")}
        full_env.update(env or {})
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, env=full_env)

    def wait_ready(self, timeout: float = 30) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"postkey serve not ready in {timeout} s: {self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]
