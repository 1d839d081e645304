"""`Client` (blocking waits), the core it shares with `AsyncClient`, and the default client."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, NamedTuple

from . import _lifecycle
from ._callbacks import CallbackRunner, check_on_done
from ._encoders import FORM_TYPE, JSON_TYPE, add_params, encode_form, encode_json, with_content_type
from ._engine import Engine
from ._errors import (
    ClientClosed,
    InvalidBody,
    InvalidKey,
    InvalidRequest,
    InvalidValue,
    QueueFull,
    StoreUnavailable,
    UnknownArgument,
    unknown_argument,
)
from ._headers import HeadersInput
from ._job import Job
from ._keys import check_key, mychat_key, new_key
from ._request import Body, Request, build_request, check_options
from ._result import ErrorKind, Result, State
from ._settings import Settings
from ._stores import CacheValue, QueueingStore, Store, open_store
from ._stores.delivery import DELIVERIES, delivery_of
from ._stores.memory import MemoryStore
from ._transport import Transport
from ._urls import redacted
from ._waits import MAX_WAIT_S, check_wait_timeout

KeyFormat = Literal["hex", "mychat"]
OnDone = Callable[[Result], Any]

#: The keyword options of every submit (`Client.request_async` documents them).
SUBMIT_OPTIONS = frozenset(
    {
        "key",
        "key_format",
        "follow_redirects",
        "ttl_ms",
        "on_done",
        "json",
        "data",
        "params",
        "client_cert",
        "client_key",
        "http_version",
        "delivery",
    }
)
_REQUEST_FIELDS = ("method", "url", "body", "headers", "timeout_ms")
# What each submit call takes besides the options, for the message of an unknown argument.
_POSITIONAL = {
    "post_async": ("url", "body", "headers", "timeout_ms"),
    "get_async": ("url", "headers", "timeout_ms"),
}

log = logging.getLogger("postkey")


def _check_take(take: object) -> None:
    """Refuse a ``take`` that is not a bool (a truthy "no" must not delete results).

    Raises:
        InvalidValue: ``take`` is not True or False.
    """
    if take is not True and take is not False:
        raise InvalidValue(f"take must be True or False, not {take!r}")


def _str_key(key: object) -> str:
    """``key`` if it is a str (reads take any str: an unknown one reads as unknown).

    Raises:
        InvalidKey: not a str.
    """
    if type(key) is not str:
        raise InvalidKey(f"a key is a str, not {type(key).__name__}")
    return key


def _str_keys(keys: object) -> list[str]:
    """``keys`` as a list of str keys.

    Raises:
        InvalidValue: not an iterable of keys (a single str counts as a mistake, not as keys).
        InvalidKey: one of them is not a str.
    """
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        raise InvalidValue(f"keys must be a list (or iterable) of str keys, not {keys!r:.80}")
    return [_str_key(k) for k in keys]


class _Submit(NamedTuple):
    """A validated submit, ready for `_ClientCore._submit`."""

    request: Request
    key: str | None
    key_format: KeyFormat
    ttl_ms: int | None
    on_done: OnDone | None
    delivery: str | None = None
    #: Prepended to the key (generated or given); the gateway's tenant namespaces.
    namespace: str = ""


class _ClientCore:
    """Everything both clients share: submission, lookups, the cache, close. Never blocks long."""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        base = settings if settings is not None else Settings()
        self.settings = base.replace(**overrides) if overrides else base
        self._closed = False
        self._start()

    def _start(self) -> None:
        """Build this client's store, callback thread and engine (again, after a fork)."""
        self._generation = _lifecycle.generation
        self._store_ = open_store(self.settings)
        _lifecycle.track_cache(self._store_)
        weakref.finalize(self, _lifecycle.untrack_cache, self._store_)
        self._callbacks_ = CallbackRunner(
            self.settings.max_callback_backlog, self.settings.callback_grace_ms
        )
        # The engine gets a sink that does not point back at the client, so a client that is
        # dropped without close() can be collected (and its finalizer can stop the engine).
        sink = _ResultSink(self._store_, self._callbacks_)
        self._engine_ = Engine(
            self.settings,
            Transport(self.settings),
            sink,
            housekeeping=self._store_.tick,
            wakes=_held_wakes(self._store_),
        )
        self._queue: QueueingStore | None = None
        if isinstance(self._store_, QueueingStore):
            self._queue = self._store_
            # Another process's cancel() ends a key in the store; this engine then stops it.
            self._queue.on_ended_elsewhere = self._engine_.cancel
        # A client dropped without close() still lets its requests finish by their own
        # deadlines (at interpreter exit, by exit_grace_ms): nobody can read their results,
        # but what they send still matters.
        weakref.finalize(
            self,
            self._engine_.close,
            self.settings.max_timeout_ms,
            False,
            "the client was dropped without close() and its requests ran out of time",
        )

    def _forked(self) -> None:
        # This process is a fork() child: the engine thread did not come along. Start afresh
        # (keys issued in the parent live in the parent); a closed client stays closed.
        with _rebuild_lock:
            if self._generation != _lifecycle.generation:
                if self._closed:
                    # Nothing inherited is touched (its locks may be held for good): a closed
                    # client gets an empty store, where every key reads unknown.
                    self._store_ = open_store(self.settings)
                    self._queue = None
                    self._generation = _lifecycle.generation
                else:
                    self._start()

    def _here(self) -> _ClientCore:
        """This client, rebuilt first if this process is a fork() child of where it was made."""
        if self._generation != _lifecycle.generation:
            self._forked()
        return self

    @property
    def _store(self) -> Store:
        return self._here()._store_

    @property
    def _engine(self) -> Engine:
        return self._here()._engine_

    @property
    def _callbacks(self) -> CallbackRunner:
        return self._here()._callbacks_

    # -- submitting ------------------------------------------------------------------------------

    def _prepare(
        self,
        call: str,
        method: str,
        url: str,
        body: Body,
        headers: HeadersInput,
        timeout_ms: int | None,
        options: Mapping[str, Any],
    ) -> _Submit:
        """Validate a submit with its keyword options (see `Client.request_async`).

        Raises:
            UnknownArgument: an option ``call`` does not take.
            InvalidRequest: (and subclasses) anything malformed.
        """
        unknown = options.keys() - SUBMIT_OPTIONS
        if unknown:
            name = sorted(unknown)[0]
            if call == "get_async" and name == "body":
                raise UnknownArgument(
                    "get_async: unknown argument 'body': a GET sends no body here (use"
                    " post_async, or request_async with the method you need)"
                )
            takes = _POSITIONAL.get(call, _REQUEST_FIELDS)
            raise unknown_argument(call, name, (*takes, *SUBMIT_OPTIONS))
        params = options.get("params")
        if params is not None:
            url = add_params(url, params)
        json_value, form = options.get("json"), options.get("data")
        if json_value is not None or form is not None:
            if (json_value is not None) + (form is not None) + (body is not None) > 1:
                raise InvalidBody("give one of body=, json= and data=, not several")
            if json_value is not None:
                body, headers = encode_json(json_value), with_content_type(headers, JSON_TYPE)
            else:
                body, headers = encode_form(form), with_content_type(headers, FORM_TYPE)
        follow = options.get("follow_redirects")
        if follow is not None and type(follow) is not bool:
            raise InvalidRequest(f"follow_redirects must be True or False, not {follow!r}")
        request = self._build(method, url, body, headers, timeout_ms, follow)
        request.options = check_options(
            options.get("client_cert"), options.get("client_key"), options.get("http_version")
        )
        on_done = options.get("on_done")
        if on_done is not None:
            check_on_done(on_done)
        delivery = options.get("delivery")
        if delivery is not None and delivery not in DELIVERIES:
            raise InvalidRequest(
                f"delivery must be 'at_least_once' or 'at_most_once', not {delivery!r}"
            )
        return _Submit(
            request,
            options.get("key"),
            options.get("key_format", "hex"),
            options.get("ttl_ms"),
            on_done,
            delivery,
        )

    def _prepare_many(self, requests: Iterable[Mapping[str, Any]]) -> list[_Submit]:
        """Validate every item of a `submit_many` (method defaults to GET).

        Raises:
            InvalidRequest: an item is malformed (its index is in the message).
        """
        if isinstance(requests, str | bytes | Mapping) or not isinstance(requests, Iterable):
            raise InvalidRequest(
                f"submit_many takes a list (or iterable) of request dicts, not {requests!r:.80}"
            )
        prepared = []
        for index, item in enumerate(requests):
            if not isinstance(item, Mapping):
                raise InvalidRequest(f"request #{index}: must be a dict, not {type(item).__name__}")
            spec = dict(item)
            try:
                prepared.append(
                    self._prepare(
                        f"request #{index}",
                        spec.pop("method", "GET"),
                        spec.pop("url", None),  # None is refused as InvalidURL
                        spec.pop("body", None),
                        spec.pop("headers", None),
                        spec.pop("timeout_ms", None),
                        spec,
                    )
                )
            except UnknownArgument:
                raise
            except InvalidRequest as exc:
                raise type(exc)(f"request #{index}: {exc}") from None
        return prepared

    def _build(
        self,
        method: str,
        url: str,
        body: Body,
        headers: HeadersInput,
        timeout_ms: int | None,
        follow_redirects: bool | None,
    ) -> Request:
        s = self.settings
        return build_request(
            method,
            url,
            body,
            headers,
            s.default_timeout_ms if timeout_ms is None else timeout_ms,
            max_timeout_ms=s.max_timeout_ms,
            max_body_bytes=s.max_request_bytes,
            follow_redirects=s.follow_redirects if follow_redirects is None else follow_redirects,
        )

    def _submit(
        self,
        request: Request,
        key: str | None = None,
        key_format: KeyFormat = "hex",
        ttl_ms: int | None = None,
        on_done: OnDone | None = None,
        delivery: str | None = None,
        namespace: str = "",
        wait_for_room: bool = True,
        wake_engine: bool = True,
    ) -> str:
        """Submit a prepared request; its key. ``wake_engine=False``: the caller wakes the
        engine itself (`Engine.wake_for_new_jobs`), once for many submits."""
        if self._closed:
            raise ClientClosed("the client is closed")
        if ttl_ms is not None and (
            type(ttl_ms) is not int or not 1 <= ttl_ms <= self._store_.max_ttl_ms
        ):
            raise InvalidRequest(
                f"ttl_ms must be an int between 1 and {self._store_.max_ttl_ms}, got {ttl_ms!r}"
            )
        if key is None:
            if key_format == "hex":
                key = namespace + new_key()
            elif key_format == "mychat":
                key = namespace + mychat_key(request.method)
            else:
                raise InvalidRequest(f"key_format must be 'hex' or 'mychat', not {key_format!r}")
            job = Job(key, request, on_done=on_done, ttl_ms=ttl_ms)
        else:
            key = check_key(namespace + check_key(key))  # checked alone first: a non-str
            job = Job(key, request, on_done=on_done, ttl_ms=ttl_ms)
            job.fingerprint = request.fingerprint()
        self._here()
        if self.settings.send == "workers":
            return self._enqueue(job, delivery)
        store = self._store_
        engine = self._engine_
        # Room first, before the key becomes visible: once another caller can see it (the same
        # idempotency key), this submit can no longer be refused for lack of room.
        engine.check_room(wait_for_room)
        if on_done is not None:
            self._callbacks_.check_room()
        try:
            if not store.register(job, caller_key=job.fingerprint is not None):
                return key  # the same request under the same key: sent once, not again
            if log.isEnabledFor(logging.DEBUG):  # before the engine can log its start
                log.debug("submit %s %s %s", key, request.method, redacted(request.url))
            engine.enqueue(job, wake_engine)
        except ClientClosed as exc:
            # Closed in between: the key may already be in another caller's hands, so it ends.
            if store.job(job.key) is job:
                job.done = True
                store.finish(job, job.failure(ErrorKind.CANCELLED, str(exc)))
            raise
        except BaseException:
            # Interrupted (Ctrl-C) between register and enqueue, or after: if the key became
            # visible, it must still end, once. The engine's cancel ends it wherever it is.
            if store.job(job.key) is job:
                engine.cancel(job)
            raise
        return key

    def _enqueue(self, job: Job, delivery: str | None) -> str:
        """Queued mode: the request goes to the store's queue, for a worker to send."""
        store = self._queue
        if store is None:  # Settings refuses send='workers' without a shared store
            raise InvalidRequest("send='workers' needs a Redis store")
        mode = delivery_of(job.request, delivery)
        if store.enqueue(job, job.fingerprint is not None, mode):
            if log.isEnabledFor(logging.DEBUG):
                log.debug("queued %s %s %s", job.key, job.request.method, redacted(job.request.url))
            if job.on_done is not None:
                self._call_back_when_done(job.key, job.on_done)
        return job.key

    def _call_back_when_done(self, key: str, on_done: OnDone) -> None:
        callbacks = self._callbacks_
        found, _unwatch = self._store_.watch(key, _CallBack(callbacks, on_done))
        if found is not None:
            callbacks.call(on_done, found)

    def flush(self, timeout: float | None = 10.0) -> None:
        """Return once every key issued so far is visible in the store to other processes.

        In a shared store new keys are written in batches, within a round trip of their submit
        (one round trip per submit would cap a process at a few thousand a second); this is for
        the moment a key is handed to another process. Nothing to wait for in embedded mode.

        Raises:
            StoreUnavailable: the store did not take them within ``timeout`` seconds.
            InvalidValue: ``timeout`` is not None or a number of seconds from 0 to 31 days.
        """
        seconds = check_wait_timeout(timeout)
        if not self._store.flush(MAX_WAIT_S if seconds is None else seconds):
            raise StoreUnavailable(
                f"the store did not take this client's writes within {timeout} s (or Redis"
                " did not answer and some were given up: their keys end here as failed)"
            )

    # -- reading ---------------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        """True if ``key`` has a terminal result (done or failed) to read."""
        return self._store.lookup(_str_key(key)).state.terminal

    def status(self, key: str) -> State:
        """The state of ``key``: unknown, pending, running, done, failed or expired."""
        return self._store.lookup(_str_key(key)).state

    def get(self, key: str, *, take: bool = False) -> Result:
        """What is known of ``key`` now, as a Result (check ``.state``); never blocks.

        ``take=True``: a terminal result is also removed from the store as it is returned (the
        key then reads unknown, or expired for a caller-given key, which stays remembered), so
        large responses do not stay cached after they are read. It does not make reads
        exclusive: two readers that take the same key at once may both get the result.
        """
        _check_take(take)
        return self._taken(self._store.lookup(_str_key(key)), take)

    def _taken(self, result: Result, take: bool) -> Result:
        if take and result.state.terminal:
            self._store.cache_delete(result.key)
        return result

    def _take_all(self, results: list[Result]) -> list[Result]:
        """Take each terminal result of ``results`` (a key listed twice is taken once)."""
        for key in {r.key for r in results if r.state.terminal}:
            self._store.cache_delete(key)
        return results

    def cancel(self, key: str, timeout: float = 5.0) -> bool:
        """End a pending or running request as failed / cancelled.

        Returns True if this call cancelled it, False if the key was not pending or running (or
        finished first). Waits up to ``timeout`` seconds for the engine to record it.

        Raises:
            InvalidValue: ``timeout`` is not a number of seconds from 0 to 31 days (checked
                before anything is cancelled).
        """
        seconds = check_wait_timeout(timeout)
        job = self._store.job(_str_key(key))
        if job is None:
            # Sent by another process (a worker, or another client on the shared store).
            store = self._here()._queue
            if store is not None:
                return store.end_pending(key, ErrorKind.CANCELLED, _CANCELLED_ELSEWHERE)
            return False
        self._engine.cancel(job)
        final = self._store.wait(key, seconds)
        return final.state is State.FAILED and final.error_kind == "cancelled"

    # -- the general cache -----------------------------------------------------------------------

    def cache_set(self, key: str, value: CacheValue, ttl_ms: int | None = None) -> None:
        """Store ``value`` (str or bytes) under ``key`` for ``ttl_ms`` (default: result TTL).

        Raises:
            InvalidKey: a malformed key.
            InvalidValue: a value that is not str / bytes, or a bad TTL.
            KeyConflict: ``key`` names a request.
        """
        self._store.cache_set(check_key(key), value, ttl_ms)

    def cache_get(self, key: str, default: Any = None) -> Any:
        """The value under ``key`` (a Result for request keys), or ``default``."""
        return self._store.cache_get(_str_key(key), default)

    def cache_exists(self, key: str) -> bool:
        """True if ``key`` holds a live value or result."""
        return self._store.cache_exists(_str_key(key))

    def cache_delete(self, key: str) -> bool:
        """Remove ``key``'s value or result; True if there was one."""
        return self._store.cache_delete(_str_key(key))

    def cache_count(self) -> int:
        """Number of live entries (values and results)."""
        return self._store.cache_count()

    def cache_clear(self) -> None:
        """Remove every value and result (pending requests are not affected)."""
        self._store.cache_clear()

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once `close` was called, or the engine stopped after an internal error."""
        return self._closed or self._engine.closed

    def _drain_ms(self, drain: bool, timeout: object) -> int:
        """How long `close` lets requests finish, in ms.

        Raises:
            InvalidValue: ``timeout`` is not None or a number of seconds from 0 to 31 days.
        """
        seconds = check_wait_timeout(timeout)
        if not drain:
            return 0
        return self.settings.max_timeout_ms if seconds is None else int(seconds * 1000)

    def _shutdown(self, drain_ms: int) -> None:
        _lifecycle.run_exit_hook_first()  # this may run in an executor thread joined at exit
        self._closed = True
        self._engine.close(drain_ms)
        self._callbacks.close()
        self._store.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<{type(self).__name__} {state} queued={self._engine.queued}"
            f" in_flight={self._engine.in_flight} cached={self._store.cache_count()}>"
        )


class Client(_ClientCore):
    """A postkey client with its own engine and memory store; waits block the calling thread.

    Raises (on construction):
        InvalidValue: a bad setting.
    """

    def request_async(
        self,
        method: str,
        url: str,
        body: Body = None,
        headers: HeadersInput = None,
        timeout_ms: int | None = None,
        **options: Any,
    ) -> str:
        """Submit a request and return its key at once; the response lands in the store later.

        ``options`` (keywords): ``json=`` a value sent as JSON (adds ``Content-Type:
        application/json``), ``data=`` form fields sent urlencoded, ``params=`` query fields
        appended to the URL, ``key=`` your own key (the submit becomes idempotent),
        ``key_format="hex" | "mychat"``, ``follow_redirects=``, ``ttl_ms=`` how long the result
        stays readable, ``on_done=callable(result)`` run on postkey's callback thread,
        ``client_cert=`` / ``client_key=`` PEM files for TLS client authentication,
        ``http_version="1.1" | "2"``, ``delivery="at_least_once" | "at_most_once"`` (queued
        mode: whether a request whose worker died mid-send is sent again; the default
        depends on the method and an Idempotency-Key header).

        Raises:
            InvalidRequest: (and subclasses) a malformed method, URL, header, body, timeout or
                option; `UnknownArgument` for an option this call does not take.
            InvalidKey: a malformed ``key``.
            KeyConflict: ``key`` already names a different request.
            QueueFull: the queue is full (after ``queue_wait_ms``).
            ClientClosed: the client is closed.
        """
        return self._submit(
            *self._prepare("request_async", method, url, body, headers, timeout_ms, options)
        )

    def post_async(
        self,
        url: str,
        body: Body = None,
        headers: HeadersInput = None,
        timeout_ms: int | None = None,
        **options: Any,
    ) -> str:
        """`request_async` with method POST (MyChat's ``HTTPSendPostMessageAsync``)."""
        if options:
            return self._submit(
                *self._prepare("post_async", "POST", url, body, headers, timeout_ms, options)
            )
        # The common call, one layer shorter: submitting is the caller's hot path.
        return self._submit(self._build("POST", url, body, headers, timeout_ms, None))

    def get_async(
        self, url: str, headers: HeadersInput = None, timeout_ms: int | None = None, **options: Any
    ) -> str:
        """`request_async` with method GET and no body."""
        if options:
            return self._submit(
                *self._prepare("get_async", "GET", url, None, headers, timeout_ms, options)
            )
        return self._submit(self._build("GET", url, None, headers, timeout_ms, None))

    def submit_many(self, requests: Iterable[Mapping[str, Any]]) -> list[str]:
        """Validate every request, then submit them all; return their keys in order.

        Each item is a mapping of `request_async` arguments (``method`` defaults to GET).

        Raises:
            InvalidRequest: an item is malformed (its index is in the message); nothing was sent.
            QueueFull: the queue filled up part way; ``exc.keys`` lists the keys submitted.
        """
        keys: list[str] = []
        for prepared in self._prepare_many(requests):
            try:
                keys.append(self._submit(*prepared))
            except QueueFull as exc:
                exc.keys = keys  # type: ignore[attr-defined]
                raise
        return keys

    def wait(self, key: str, timeout: float | None = None, *, take: bool = False) -> Result:
        """Block until ``key`` ends (done or failed) or ``timeout`` seconds pass.

        Returns the terminal Result, or the current one (pending / running) on timeout; an
        unknown or expired key returns at once. Woken by the store, never by polling.
        ``take=True`` removes a terminal result from the store as it is returned (see `get`).

        Raises:
            InvalidValue: ``timeout`` is not None or a number of seconds from 0 to 31 days.
        """
        _check_take(take)
        _lifecycle.run_exit_hook_first()  # the caller may be a thread joined at exit
        return self._taken(self._store.wait(_str_key(key), timeout), take)

    def wait_many(
        self, keys: Iterable[str], timeout: float | None = None, *, take: bool = False
    ) -> list[Result]:
        """`wait` for every key under one overall ``timeout``; Results in the keys' order.

        The calling thread sleeps once and is woken when the last key ends. ``take=True``
        removes each terminal result from the store as it is returned (see `get`).

        Raises:
            InvalidValue: ``timeout`` is not None or a number of seconds from 0 to 31 days.
        """
        _check_take(take)
        _lifecycle.run_exit_hook_first()  # the caller may be a thread joined at exit
        results = self._store.wait_many(_str_keys(keys), timeout)
        return self._take_all(results) if take else results

    def cache_wait(self, key: str, timeout: float | None = None, default: Any = None) -> Any:
        """Block until ``key`` holds a value (or result) or ``timeout`` seconds pass.

        Raises:
            InvalidValue: ``timeout`` is not None or a number of seconds from 0 to 31 days.
        """
        _lifecycle.run_exit_hook_first()  # the caller may be a thread joined at exit
        if _lifecycle.exiting() and timeout is None:
            timeout = _lifecycle.time_left_at_exit(float(MAX_WAIT_S))
        return self._store.cache_wait(_str_key(key), timeout, default)

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting; with ``drain``, let queued and in-flight requests finish for up to
        ``timeout`` seconds (default: until each has met its own deadline); end the rest as
        failed / cancelled. Every key issued has its terminal result when this returns.

        Raises:
            InvalidValue: ``timeout`` is not None or a number of seconds from 0 to 31 days.
        """
        self._shutdown(self._drain_ms(drain, timeout))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _held_wakes(store: Store) -> tuple[Callable[[], None], Callable[[], None]] | None:
    """The store's way to have its wakes held while the engine is busy, if it has one."""
    if isinstance(store, MemoryStore):
        return store.hold_wakes, store.wake_held
    return None


class _CallBack:
    """Calls a queued key's ``on_done`` when the key ends (a watch, not a wait: a store outage
    does not release it)."""

    __slots__ = ("_callbacks", "_on_done")
    outlives_outages = True

    def __init__(self, callbacks: CallbackRunner, on_done: OnDone) -> None:
        self._callbacks = callbacks
        self._on_done = on_done

    def __call__(self, result: object) -> None:
        # Not a Result: the watch was released (close, interpreter exit) before the key ended
        # here; no result, so no call.
        if isinstance(result, Result):
            self._callbacks.call(self._on_done, result)


class _ResultSink:
    """Stores each terminal result and schedules its ``on_done`` callback."""

    __slots__ = ("_callbacks", "_store")

    def __init__(self, store: Store, callbacks: CallbackRunner) -> None:
        self._store = store
        self._callbacks = callbacks

    def __call__(self, job: Job, result: Result) -> None:
        result.url = job.request.url
        if log.isEnabledFor(logging.DEBUG):
            # A failure's message can quote URLs (redirect targets): the kind alone goes here.
            kind = result.error_kind
            outcome = result.describe() if kind is None else f"failed: {kind.value}"
            log.debug("end %s %s in %.1f ms", job.key, outcome, result.elapsed_ms or 0.0)
        try:
            self._store.finish(job, result)
        finally:
            if job.on_done is not None:
                self._callbacks.call(job.on_done, result)


_CANCELLED_ELSEWHERE = "cancelled by cancel() from another process"

_rebuild_lock = threading.Lock()


def _reinit_lock_in_child() -> None:
    # Another thread may have held it at fork(); in the child nobody would ever release it.
    global _rebuild_lock
    _rebuild_lock = threading.Lock()


os.register_at_fork(after_in_child=_reinit_lock_in_child)
