"""Real `postkey worker` processes for queue tests: start, kill -9, pause, restart, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class WorkerProcess:
    """One ``postkey worker`` process (``python -m postkey worker``), logging to a file."""

    def __init__(self, url: str, prefix: str, *args: str, **settings: int | str) -> None:
        self.url = url
        self.args = args
        self.env = {**os.environ, "POSTKEY_STORE_PREFIX": prefix}
        for name, value in settings.items():
            self.env[f"POSTKEY_{name.upper()}"] = str(value)
        self.log = Path(tempfile.mkstemp(prefix="postkey-worker-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._offset = 0

    def start(self) -> WorkerProcess:
        argv = [sys.executable, "-m", "postkey", "worker", "--store", self.url, "--allow-private"]
        argv += list(self.args)
        self._offset = self.log.stat().st_size  # this start's lines come after
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, env=self.env, stdout=log, stderr=log)
        self.starts += 1
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        """Until this start's "ready" line is in the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log.open("rb") as log:
                log.seek(self._offset)
                if b" ready: " in log.read():
                    return
            assert self.process is not None and self.process.poll() is None, self.output()
            time.sleep(0.05)
        raise AssertionError(f"worker not ready in {timeout} s: {self.output()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.process.wait(60)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait; the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"worker did not stop in {timeout} s: {self.output()}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]
