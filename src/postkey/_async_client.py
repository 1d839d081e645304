"""`AsyncClient`: the shared client core with awaitable waits, woken through the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from ._client import _ClientCore
from ._result import Result


class AsyncClient(_ClientCore):
    """A postkey client for asyncio code: submitting never blocks, waits are awaitable.

    Raises (on construction):
        InvalidValue: a bad setting.
    """

    async def wait(self, key: str, timeout: float | None = None) -> Result:
        """Await the end of ``key`` (see `Client.wait`); woken by the store via the event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()

        def wake(result: Result) -> None:
            loop.call_soon_threadsafe(_resolve, future, result)

        found, unwatch = self._store.watch(key, wake)
        if found is not None:
            return found
        assert unwatch is not None
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return self._store.lookup(key)
        finally:
            unwatch()

    async def wait_many(self, keys: Iterable[str], timeout: float | None = None) -> list[Result]:
        """Await every key concurrently under one ``timeout``; Results in the keys' order."""
        return list(await asyncio.gather(*(self.wait(k, timeout) for k in keys)))

    async def cache_wait(self, key: str, timeout: float | None = None, default: Any = None) -> Any:
        """Await a value under ``key`` for up to ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def wake(value: object) -> None:
            loop.call_soon_threadsafe(_resolve, future, value)

        cache = self._store.cache
        found = cache.add_waiter(key, wake)
        if found is not cache.MISSING:
            cache.remove_waiter(key, wake)
            return found
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return default
        finally:
            cache.remove_waiter(key, wake)

    async def aclose(self, drain: bool = True, timeout: float | None = None) -> None:
        """`Client.close` without blocking the event loop."""
        drain_ms = (
            (self.settings.max_timeout_ms if timeout is None else int(timeout * 1000))
            if drain
            else 0
        )
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown, drain_ms)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _resolve(future: asyncio.Future[Any], value: object) -> None:
    if not future.done():
        future.set_result(value)
