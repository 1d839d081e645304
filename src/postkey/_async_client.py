"""`AsyncClient`: the shared client core with awaitable waits, woken through the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from ._client import _check_take, _ClientCore, _str_key, _str_keys, _Submit
from ._errors import IdempotencyKeysFull, QueueFull, StoreUnavailable
from ._headers import HeadersInput
from ._request import Body
from ._result import Result
from ._stores import MISSING, STORE_DOWN
from ._waits import check_wait_timeout

_T = TypeVar("_T")


class AsyncClient(_ClientCore):
    """A postkey client for asyncio code: every method that can wait is a coroutine.

    Submits return the key at once when the queue has room; when it has none, they wait up to
    ``queue_wait_ms`` for it without blocking the event loop.

    Raises (on construction):
        InvalidValue: a bad setting.
    """

    #: The loop on which a wake-up of the engine is scheduled (see _wake_engine_soon).
    _wake_loop: asyncio.AbstractEventLoop | None = None

    async def request_async(
        self,
        method: str,
        url: str,
        body: Body = None,
        headers: HeadersInput = None,
        timeout_ms: int | None = None,
        **options: Any,
    ) -> str:
        """Submit a request; the key (see `Client.request_async` for the options and errors)."""
        return await self._submit_soon(
            self._prepare("request_async", method, url, body, headers, timeout_ms, options)
        )

    async def post_async(
        self,
        url: str,
        body: Body = None,
        headers: HeadersInput = None,
        timeout_ms: int | None = None,
        **options: Any,
    ) -> str:
        """Submit a POST; the key (see `Client.post_async`)."""
        return await self._submit_soon(
            self._prepare("post_async", "POST", url, body, headers, timeout_ms, options)
        )

    async def get_async(
        self, url: str, headers: HeadersInput = None, timeout_ms: int | None = None, **options: Any
    ) -> str:
        """Submit a GET; the key (see `Client.get_async`)."""
        return await self._submit_soon(
            self._prepare("get_async", "GET", url, None, headers, timeout_ms, options)
        )

    async def submit_many(self, requests: Iterable[Mapping[str, Any]]) -> list[str]:
        """Validate every request, then submit them in order (see `Client.submit_many`)."""
        keys: list[str] = []
        for prepared in self._prepare_many(requests):
            try:
                keys.append(await self._submit_soon(prepared))
            except QueueFull as exc:
                exc.keys = keys  # type: ignore[attr-defined]
                raise
        return keys

    async def _submit_soon(self, prepared: _Submit) -> str:
        # Never block the loop, nor hold a thread: when the queue is full, the engine calls back
        # (through the loop) whenever room may have been made, and the submit tries again. The
        # callback backlog and the idempotency table are not waited for, as in Client.
        engine = self._engine
        deadline = None
        while True:
            try:
                if self._store.remote:
                    return await self._off_loop(self._submit, *prepared, False)
                return self._submit(*prepared, False, not self._wake_later())
            except IdempotencyKeysFull:
                raise
            except QueueFull:
                if engine.has_room():
                    raise  # full for another reason (the callback backlog): no waiting for it
                now = time.monotonic()
                if deadline is None:  # counted from when the wait starts
                    deadline = now + self.settings.queue_wait_ms / 1000.0
                if now >= deadline:
                    raise
                await self._room_or_timeout(deadline - now)

    def _wake_later(self) -> bool:
        """True if this submit may leave waking the engine to the end of the loop's turn.

        Waking the engine costs a system call and a thread switch (the engine then competes
        with the loop for the GIL); 1,000 submits in one turn used to wake it 1,000 times. The
        first submit of a turn wakes it at once and schedules one more wake-up for when the
        turn's callbacks are done; the later ones leave it to that, so a burst costs two
        wake-ups. If the code that submitted them then blocks the loop, the first is on its way
        at once and the later ones when the engine next wakes (at the latest at its 1 s tick, or
        at once if one of them is due before that: none ends unsent for this).
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # driven without a running asyncio loop (by hand, trio, a fork)
            return False
        scheduled = self._wake_loop
        if scheduled is loop:
            return True
        if scheduled is None or scheduled.is_closed():
            self._wake_loop = loop
            loop.call_soon(self._wake_engine_now)
        return False

    def _wake_engine_now(self) -> None:
        self._wake_loop = None
        self._engine_.wake_for_new_jobs()  # this process's engine now (rebuilt after a fork)

    async def _off_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        # A store that talks to a server (Redis) is called from a worker thread, so a slow
        # answer never stalls the event loop; the in-process store answers at once, here.
        if not self._store.remote:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _room_or_timeout(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        room: asyncio.Future[None] = loop.create_future()

        def made(_: None) -> None:
            _resolve_soon(loop, room, None)

        engine = self._engine
        engine.add_room_callback(made)
        try:
            if not engine.has_room():  # room made before the callback was in place
                await asyncio.wait_for(asyncio.shield(room), seconds)
        except TimeoutError:
            pass
        finally:
            engine.remove_room_callback(made)

    async def wait(self, key: str, timeout: float | None = None, *, take: bool = False) -> Result:
        """Await the end of ``key`` (see `Client.wait`); woken by the store via the event loop.

        ``take=True`` removes a terminal result from the store as it is returned (see
        `Client.get`).

        Raises:
            InvalidValue: ``timeout`` is neither None nor a number of seconds from 0 to 31 days.
        """
        _check_take(take)
        result = await self._wait(key, timeout)
        return await self._off_loop(self._taken, result, take) if take else result

    async def _wait(self, key: str, timeout: float | None) -> Result:
        seconds = check_wait_timeout(timeout)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()

        def wake(result: Result) -> None:
            _resolve_soon(loop, future, result)

        found, unwatch = await self._off_loop(self._store.watch, _str_key(key), wake)
        if found is not None:
            return found
        assert unwatch is not None
        if self._store.closing:  # watched first: a close() from now on wakes it anyway
            seconds = 0.0
        try:
            woken: object = await asyncio.wait_for(asyncio.shield(future), seconds)
        except TimeoutError:
            return await self._off_loop(self._store.lookup, key)
        finally:
            unwatch()
        if isinstance(woken, Result):
            return woken
        if woken is STORE_DOWN:
            raise StoreUnavailable(f"the store did not answer: the wait on {key!r} gave up")
        # MISSING: the store released its waiters (interpreter exit): what is known now.
        return await self._off_loop(self._store.lookup, key)

    async def wait_many(
        self, keys: Iterable[str], timeout: float | None = None, *, take: bool = False
    ) -> list[Result]:
        """Await every key concurrently under one ``timeout``; Results in the keys' order.

        ``take=True`` removes each terminal result from the store as it is returned.

        Raises:
            InvalidValue: a bad ``timeout``, before any key is waited for.
        """
        _check_take(take)
        check_wait_timeout(timeout)
        # Every key checked before any wait, and taking only once all are in: a bad key must
        # not cost the caller the results taken before it was found.
        checked = _str_keys(keys)
        results = list(await asyncio.gather(*(self._wait(k, timeout) for k in checked)))
        return await self._off_loop(self._take_all, results) if take else results

    async def cache_wait(self, key: str, timeout: float | None = None, default: Any = None) -> Any:
        """Await a value under ``key`` for up to ``timeout`` seconds.

        Raises:
            InvalidValue: ``timeout`` is neither None nor a number of seconds from 0 to 31 days.
        """
        seconds = check_wait_timeout(timeout)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def wake(value: object) -> None:
            _resolve_soon(loop, future, value)

        store = self._store
        found = await self._off_loop(store.cache_watch, _str_key(key), wake)
        if found is not MISSING:
            return found
        if store.closing:  # as in _wait
            seconds = 0.0
        try:
            found = await asyncio.wait_for(asyncio.shield(future), seconds)
        except TimeoutError:
            return default
        finally:
            await self._off_loop(store.cache_unwatch, key, wake)
        if found is STORE_DOWN:
            raise StoreUnavailable(f"the store did not answer: the wait on {key!r} gave up")
        return default if found is MISSING else found  # MISSING: released at exit

    async def aclose(self, drain: bool = True, timeout: float | None = None) -> None:
        """`Client.close` without blocking the event loop.

        Raises:
            InvalidValue: ``timeout`` is not None or a number of seconds from 0 to 31 days.
        """
        drain_ms = self._drain_ms(drain, timeout)
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown, drain_ms)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _resolve_soon(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], value: object
) -> None:
    # Runs on the thread that stores the value. A loop closed since the wait began has nobody
    # left to read it: dropping the wake-up is right, and raising would only trouble the store.
    try:
        loop.call_soon_threadsafe(_resolve, future, value)
    except RuntimeError:
        pass


def _resolve(future: asyncio.Future[Any], value: object) -> None:
    if not future.done():
        future.set_result(value)
