"""The transfers on the wire: libcurl's multi handle, its running easy handles and a pool of idle
ones, reused (a handle keeps its connection settings; see `Transport.prepare`)."""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable

import pycurl

from ._job import Job
from ._result import ErrorKind, Result, State
from ._settings import Settings
from ._transport import Handle, Transport

log = logging.getLogger(__name__)

Finished = Callable[[Job, Result], None]


def connection_cache_size(settings: Settings) -> int:
    """libcurl's connection cache size: ``max_idle_connections`` (at least ``max_in_flight``),
    but under the open-file limit, leaving room for the transfers themselves and the rest of the
    process: an idle connection holds a descriptor, and running out fails new connections."""
    wanted = max(settings.max_idle_connections, settings.max_in_flight)
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = soft - settings.max_in_flight - 128
    return max(min(wanted, room), 8)


class Transfers:
    """Running transfers, each a `Handle` with its job on ``handle.job``. Engine thread only."""

    def __init__(self, settings: Settings, transport: Transport) -> None:
        self._transport = transport
        self._max_idle = settings.max_in_flight
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, settings.max_per_host)
        self._multi.setopt(pycurl.M_MAXCONNECTS, connection_cache_size(settings))
        #: The handles on the wire, by the pycurl object libcurl hands back when one finishes.
        self.running: dict[pycurl.Curl, Handle] = {}
        self._idle: list[Handle] = []
        self._closed = False

    def start(self, job: Job, timeout_ms: int) -> None:
        """Put ``job`` on the wire with ``timeout_ms`` left on its deadline.

        Raises:
            Exception: the handle could not be configured (nothing is left half started).
        """
        handle = self._idle.pop() if self._idle else self._transport.new_handle()
        try:
            self._transport.prepare(handle, job, timeout_ms)
            handle.job = job
            job.handle = handle
            job.state = State.RUNNING
            self._multi.add_handle(handle.curl)
        except BaseException:
            job.handle = None
            handle.job = None
            handle.curl.close()
            raise
        self.running[handle.curl] = handle

    def perform(self) -> None:
        """Let libcurl move every transfer that can move (one C call for all of them)."""
        perform = self._multi.perform
        while perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass

    def reap(self, finished: Finished) -> None:
        """Call ``finished(job, result)`` for every transfer libcurl has completed."""
        info_read = self._multi.info_read
        running = self.running
        while True:
            remaining, ok, failed = info_read()
            for curl in ok:
                self._finish(running.pop(curl), 0, "", finished)
            for curl, errno, message in failed:
                self._finish(running.pop(curl), errno, message, finished)
            if not remaining:
                return

    def abort(self, job: Job) -> None:
        """Take ``job``'s transfer off the wire; the handle, emptied, goes back to the pool."""
        handle: Handle = job.handle
        self._multi.remove_handle(handle.curl)
        self.running.pop(handle.curl, None)
        handle.job = None
        job.handle = None
        self._transport.release(handle)
        self._keep(handle)

    def sockets(self) -> tuple[list[int], list[int], list[int], int]:
        """libcurl's sockets to watch (read, write, error) and its timeout in ms (-1: none)."""
        readers, writers, errors = self._multi.fdset()
        return readers, writers, errors, self._multi.timeout()

    def close(self) -> list[Job]:
        """Stop every transfer and free libcurl's resources; return the jobs that were running.
        A second call does nothing."""
        jobs: list[Job] = []
        if self._closed:
            return jobs
        self._closed = True
        for handle in list(self.running.values()):
            job = handle.job
            try:
                self._multi.remove_handle(handle.curl)
            except pycurl.error:
                pass
            handle.curl.close()
            if job is not None:
                job.handle = None
                jobs.append(job)
        self.running.clear()
        for handle in self._idle:
            handle.curl.close()
        self._idle.clear()
        self._multi.close()
        return jobs

    def _finish(self, handle: Handle, errno: int, message: str, finished: Finished) -> None:
        self._multi.remove_handle(handle.curl)
        job = handle.job
        assert job is not None
        handle.job = None
        job.handle = None
        try:
            result = self._transport.result(handle, job, errno, message)
        except Exception as exc:  # a bug in result building: this request ends, nothing else
            log.exception("could not read the result of %s", job.key)
            self._transport.release(handle)
            result = job.failure(ErrorKind.INTERNAL, f"could not read the result: {exc}")
        self._keep(handle)
        finished(job, result)

    def _keep(self, handle: Handle) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(handle)
        else:
            handle.curl.close()
