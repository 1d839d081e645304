"""How the engine thread sleeps: in select() (or poll()) on libcurl's sockets plus a self-pipe
that other threads write to when they have work for it."""

from __future__ import annotations

import os
import select
import threading

FD_SETSIZE = 1024  # select() cannot take descriptors from here up


class Wakeup:
    """A self-pipe: `poke` from any thread ends the engine's current (or next) `sleep`."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Guards the pipe's closing: a poke written after close would land in whatever socket
        # reused the descriptor number (seen: a stray NUL byte in another connection).
        self._lock = threading.Lock()

    def poke(self) -> None:
        """Wake the engine (cheap if it is awake already; harmless after `close`)."""
        with self._lock:
            if self._write < 0:
                return
            try:
                os.write(self._write, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    def sleep(
        self, readers: list[int], writers: list[int], errors: list[int], timeout: float
    ) -> None:
        """Block until a socket is ready, `poke` is called or ``timeout`` seconds pass."""
        readers.append(self._read)
        if max(readers + writers + errors) < FD_SETSIZE:
            woken = self._read in select.select(readers, writers, errors, timeout)[0]
        else:
            woken = _poll(readers, writers, timeout, self._read)
        if woken:
            try:
                while os.read(self._read, 4096):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        """Close the pipe; later pokes do nothing."""
        with self._lock:
            os.close(self._read)
            os.close(self._write)
            self._write = -1

    def orphan(self) -> None:
        """In a forked child: the pipe is the parent's; never write to it (nor close it)."""
        self._write = -1


def _poll(readers: list[int], writers: list[int], timeout: float, wake_fd: int) -> bool:
    """select() cannot take descriptors >= FD_SETSIZE; poll() can (slower to set up)."""
    poller = select.poll()
    events: dict[int, int] = {}
    for fd in readers:
        events[fd] = select.POLLIN
    for fd in writers:
        events[fd] = events.get(fd, 0) | select.POLLOUT
    for fd, mask in events.items():
        poller.register(fd, mask)
    return any(fd == wake_fd for fd, _ in poller.poll(timeout * 1000.0))
