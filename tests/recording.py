"""A recording HTTP server for queue tests: how many times each request id reached it.

``GET|POST /rec/<id>[?ms=<delay>][&status=<code>&fail_first=<n>&retry_after=<s>]`` answers
``200`` with the body ``<id> <n>`` (n: this id's hit number, counted as the request arrives,
before the delay); with ``status``, the first ``fail_first`` hits (all, if not given) answer
that status instead, with a Retry-After header if asked. It runs on its own event-loop thread,
so the counts are exact whatever the workers do (killed mid-send included); ``peak`` is the
most requests it held at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from urllib.parse import parse_qs, urlsplit


class RecordingServer:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.active = 0
        self.peak = 0
        self.arrivals: list[tuple[str, float]] = []  # (id, time.monotonic()) in arrival order
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024), self._loop
        ).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def duplicates(self) -> dict[str, int]:
        """Ids that arrived more than once, with their counts."""
        return {rid: n for rid, n in self.hits.items() if n > 1}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                parts = urlsplit(target)
                rid = parts.path.rpartition("/")[2]
                self.hits[rid] += 1
                hit = self.hits[rid]
                self.arrivals.append((rid, time.monotonic()))
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                body = f"{rid} {hit}".encode()
                status = b"200 OK"
                extra = b""
                if "status" in query and hit <= int(query.get("fail_first", "1000000")):
                    status = query["status"].encode() + b" Nope"
                    if "retry_after" in query:
                        extra = b"Retry-After: " + query["retry_after"].encode() + b"\r\n"
                self.active += 1
                self.peak = max(self.peak, self.active)
                try:
                    delay_ms = int(query.get("ms", "0"))
                    if delay_ms:
                        await asyncio.sleep(delay_ms / 1000)
                finally:
                    self.active -= 1
                writer.write(
                    b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\n\r\n%s"
                    % (status, extra, len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
