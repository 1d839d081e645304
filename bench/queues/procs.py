"""Process and Redis helpers for bench/queued.py (stdlib only).

The /proc walk is the one of the team's peer harness (peer-bench/queues/harness.py): a worker's
peak RSS is the sum over its processes alive at the end of each one's VmHWM (the kernel's own
peak, so not a sampling artefact; forked processes share pages, so for several processes the sum
is an upper bound), and its CPU is utime + stime of the tree, reaped children included.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")
PINNING = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cpu: int, cmd: list[str]) -> list[str]:
    """``cmd`` under ``taskset -c cpu`` when taskset is there and the machine has 2+ CPUs."""
    return ["taskset", "-c", str(cpu), *cmd] if PINNING else cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def tree(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    return pids


def proc_info(pid: int) -> tuple[int, float] | None:
    """(VmHWM kB, CPU s including reaped children) of a live process, or None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    hwm = 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14..17
    return hwm, sum(int(x) for x in fields[11:15]) / CLK


def trees_info(roots: list[int]) -> tuple[list[float], float]:
    """Peak RSS (MB) of each process under ``roots``, and their CPU seconds together."""
    rss, cpu = [], 0.0
    for root in roots:
        for pid in tree(root):
            info = proc_info(pid)
            if info is not None:
                rss.append(info[0] / 1024)
                cpu += info[1]
    return rss, cpu


def stop(proc: subprocess.Popen, grace_s: float = 30.0) -> bool:
    """SIGTERM (a warm shutdown), then SIGKILL to its process group; True if it had to be killed.

    ``proc`` must have been started with ``start_new_session=True``.
    """
    killed = False
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            killed = True
    try:  # the group: the process itself if it hung, and any child left behind
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    return killed


def _command(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def redis_call(port: int, *args: str) -> bytes | int | None:
    """One command to the Redis on 127.0.0.1:port over RESP; its simple, integer or bulk reply.

    Raises:
        OSError: no connection.
        RuntimeError: an error reply.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(_command(*args))
        f = s.makefile("rb")
        line = f.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else f.read(size + 2)[:-2]
        raise RuntimeError(f"redis {args[0]}: {line.decode(errors='replace')}")


class RedisServer:
    """A redis-server of our own on a free loopback port, pinned to CPU 1, no persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found (Debian: apt-get install redis-server)")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="postkey-bench-redis-")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> RedisServer:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--dir", self.dir, "--logfile", "redis.log"]
        self.proc = subprocess.Popen(pinned(1, cmd), start_new_session=True)
        for _ in range(100):
            try:
                if redis_call(self.port, "PING") == b"PONG":
                    return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise SystemExit("redis-server did not answer PING")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def version(self) -> str:
        info = redis_call(self.port, "INFO", "server")
        assert isinstance(info, bytes)
        for line in info.decode().splitlines():
            if line.startswith("redis_version:"):
                return line.split(":", 1)[1].strip()
        return "?"

    def flushall(self) -> None:
        redis_call(self.port, "FLUSHALL")
        if redis_call(self.port, "DBSIZE") != 0:
            raise RuntimeError("FLUSHALL left keys behind")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop(self.proc, 10)
        shutil.rmtree(self.dir, ignore_errors=True)
