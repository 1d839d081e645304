"""Hostile HTTP servers on 127.0.0.1 for the tests: each path misbehaves in its own way.

/silent          reads the request, never answers
/drip            sends headers, then one body byte per second (Content-Length 1000)
/reset           sends headers and part of the body, then resets the connection
/huge            a 50 MiB body with Content-Length
/huge-chunked    a 50 MiB body, chunked (no length known in advance)
/hold            answers 200 after 300 ms (for caps and close tests)
/drip800         headers, then one body byte every 800 ms
/slow-reader     reads the request body at one byte per second
/gzip-bomb       a small gzip body that inflates to 256 MiB of zeros
/br-bomb         the same with brotli
/stacked         Content-Encoding: gzip, gzip, gzip
/many-headers    1,000 header lines
/huge-header     one 1 MiB header line
/bad-status      an invalid status line
/status-2000     a four-digit status code ("2000"), which libcurl 8.23 reads as 200
/status-700      a three-digit code outside 100-599
/continue-flood  endless "100 Continue" interim responses
/forever         a chunked body that never ends
Any TLS handshake (https:// to this port) is never answered: the server waits for a request line.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import threading
import zlib

import brotli

HUGE = 50 * 1024 * 1024
_CHUNK = b"x" * 65536


def _gzip_bomb(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    block = bytes(1024 * 1024)
    parts = [packer.compress(block) for _ in range(size // len(block))]
    return b"".join(parts) + packer.flush()


BOMB_SIZE = 256 * 1024 * 1024
GZIP_BOMB = _gzip_bomb(BOMB_SIZE)  # ~250 KiB on the wire, 256 MiB inflated


def _brotli_bomb(size: int) -> bytes:
    packer = brotli.Compressor(quality=5)
    block = bytes(1024 * 1024)
    parts = [packer.process(block) for _ in range(size // len(block))]
    return b"".join(parts) + packer.finish()


BROTLI_BOMB = _brotli_bomb(BOMB_SIZE)  # a few KiB on the wire
STACKED = gzip.compress(gzip.compress(gzip.compress(b"three layers")))


class HostileServer:
    """Runs on its own event loop thread; counts connections (total and peak concurrent)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.connections = 0
        self.requests = 0
        self.active = 0
        self.peak_active = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> HostileServer:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024), self.loop
        )
        self._server = fut.result(5)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def reset_counts(self) -> None:
        self.connections = self.requests = self.active = self.peak_active = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line = head.split(b"\r\n", 1)[0].decode()
                path = request_line.split(" ")[1]
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if path.startswith("/slow-reader"):
                    for _ in range(length):
                        await reader.readexactly(1)
                        await asyncio.sleep(1.0)
                if length:
                    await reader.readexactly(length)
                self.requests += 1
                if not await self._answer(path, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.active -= 1
            writer.close()

    async def _answer(self, path: str, writer: asyncio.StreamWriter) -> bool:
        if path.startswith("/silent"):
            await asyncio.sleep(3600)
        elif path.startswith("/drip800"):
            await _drip(writer, 0.8)
        elif path.startswith("/gzip-bomb"):
            _encoded(writer, b"gzip", GZIP_BOMB)
        elif path.startswith("/br-bomb"):
            _encoded(writer, b"br", BROTLI_BOMB)
        elif path.startswith("/stacked"):
            _encoded(writer, b"gzip, gzip, gzip", STACKED)
        elif path.startswith("/many-headers"):
            lines = b"".join(b"X-H%d: v\r\n" % i for i in range(1000))
            writer.write(b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 2\r\n\r\nok")
        elif path.startswith("/huge-header"):
            writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (1024 * 1024) + b"\r\n\r\n")
        elif path.startswith("/bad-status"):
            writer.write(b"HTTP/1.1 abc Nope\r\nContent-Length: 0\r\n\r\n")
        elif path.startswith("/status-2000"):
            writer.write(b"HTTP/1.1 2000 WHAT\r\nContent-Length: 2\r\n\r\nok")
        elif path.startswith("/status-700"):
            writer.write(b"HTTP/1.1 700 Odd\r\nContent-Length: 2\r\n\r\nok")
        elif path.startswith("/continue-flood"):
            while True:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 100)
                await writer.drain()
                await asyncio.sleep(0.001)
        elif path.startswith("/forever"):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n" % len(_CHUNK) + _CHUNK + b"\r\n"
            while True:
                writer.write(chunk)
                await writer.drain()
        elif path.startswith("/drip"):
            await _drip(writer, 1.0)
        elif path.startswith("/reset"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100)
            await writer.drain()
            await asyncio.sleep(0.05)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        elif path.startswith("/huge-chunked"):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n" % len(_CHUNK) + _CHUNK + b"\r\n"
            for _ in range(HUGE // len(_CHUNK)):
                writer.write(chunk)
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif path.startswith("/huge"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % HUGE)
            for _ in range(HUGE // len(_CHUNK)):
                writer.write(_CHUNK)
                await writer.drain()
        elif path.startswith("/hold"):
            await asyncio.sleep(0.3)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        return True


async def _drip(writer: asyncio.StreamWriter, interval: float) -> None:
    """Headers for a 1,000-byte body, then one byte every ``interval`` seconds."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(interval)


def _encoded(writer: asyncio.StreamWriter, coding: bytes, body: bytes) -> None:
    """A 200 whose body is ``body`` under ``Content-Encoding: coding``."""
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
        % (coding, len(body))
        + body
    )
