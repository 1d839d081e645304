"""Push-based waiting on a Redis store: one sharded pub/sub connection per store for all waiters.

A waiter registers a callback for a key; the hub thread subscribes (``SSUBSCRIBE`` to the key's
channel, which shares the key's hash slot), and once Redis confirms the subscription it reads the
key: a result that landed before the subscription is found by that read, one that lands after is
announced on the channel (the writer stores and publishes in one script). Every watched key is
read again after a reconnect and, as a last resort, every ``recheck_s``; a key with no waiters
left is unsubscribed, so the subscription count returns to zero.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis

from .._waits import wake_all
from .base import MISSING, STORE_DOWN, outlives_outages
from .codec import RECORD_MAGIC
from .names import Names
from .redis_connect import UNAVAILABLE
from .redis_pubsub import Channels, ClusterChannels, open_channels

log = logging.getLogger("postkey")

Wake = Callable[[object], None]
#: (key, kind) pairs and the records that came with announcements -> what to wake each with, or
#: MISSING while it is not settled. kind is "result" (a settled Result) or "value" (a cache
#: value or a result).
Check = Callable[[list[tuple[str, str]], dict[str, bytes]], list[object]]

_BACKOFF_MAX_S = 2.0
_LOST: tuple[type[Exception], ...] = (*UNAVAILABLE, OSError)  # the connection: start over
_RECHECK_MAX = 1_000  # keys read per last-resort recheck


class WaitHub:
    """Waiters of one store, woken from one pub/sub connection on one thread."""

    def __init__(
        self, client: Any, names: Names, check: Check, recheck_s: float, give_up_s: float
    ) -> None:
        self._client = client
        # Redis unreachable for this long: every waiter is woken with STORE_DOWN (and raises
        # StoreUnavailable) while the hub goes on reconnecting for the waits to come.
        self._give_up_s = give_up_s
        self._down_since: float | None = None
        self._down_told = False
        self._last_failure = 0.0
        #: Called (on the hub's thread) when the waiters were released for an outage.
        self.on_down: Callable[[], None] | None = None
        self._names = names
        self._check = check
        self._recheck_s = recheck_s
        self._lock = threading.Lock()
        self._waiters: dict[tuple[str, str], dict[Wake, None]] = {}
        self._subscribed: set[str] = set()  # keys whose channel we asked for
        self._requests: deque[tuple[bool, str]] = deque()  # (subscribe?, key)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stopping = False
        self._recheck_at = 0
        # Channels subscribed for good (a submitter's reply channels) and their handlers.
        self._listening: set[str] = set()
        self._listen_requests: list[str] = []
        self._on_message: Callable[[str, bytes], None] | None = None
        self._on_confirmed: Callable[[str], None] | None = None
        self._on_lost: Callable[[], None] | None = None
        self._on_recheck: Callable[[], None] | None = None
        self._pubsub: Channels | ClusterChannels | None = None
        self._runner = threading.Thread(target=self._run, name="postkey-redis-waits", daemon=True)
        self._runner.start()

    # -- called by waiting threads ---------------------------------------------------------------

    def watch(self, key: str, kind: str, wake: Wake) -> Callable[[], None]:
        """Call ``wake(value)`` once ``key`` settles (see `Check`); returns the undo."""
        with self._lock:
            waiters = self._waiters.setdefault((key, kind), {})
            waiters[wake] = None
            if key not in self._subscribed:
                self._subscribed.add(key)
                self._requests.append((True, key))
                self._poke()
        return lambda: self._unwatch(key, kind, wake)

    def _unwatch(self, key: str, kind: str, wake: Wake) -> None:
        with self._lock:
            waiters = self._waiters.get((key, kind))
            if waiters is not None:
                waiters.pop(wake, None)
                if not waiters:
                    del self._waiters[(key, kind)]
            self._drop_if_idle(key)

    def _drop_if_idle(self, key: str) -> None:
        # Under _lock. Unsubscribe once no waiter of either kind is left for the key.
        if key in self._subscribed and not any(
            (key, k) in self._waiters for k in ("result", "value")
        ):
            self._subscribed.discard(key)
            self._requests.append((False, key))
            self._poke()

    def listen(
        self,
        channels: list[str],
        on_message: Callable[[str, bytes], None],
        on_confirmed: Callable[[str], None],
        on_lost: Callable[[], None],
        on_recheck: Callable[[], None],
    ) -> None:
        """Subscribe ``channels`` until the hub closes: ``on_confirmed(channel)`` once Redis
        confirms each (again after every reconnect, which ``on_lost()`` announces first), and
        ``on_message(channel, data)`` for what is published on them, and ``on_recheck()`` with
        the hub's last-resort rechecks. All on the hub thread."""
        with self._lock:
            self._on_message, self._on_confirmed, self._on_lost = on_message, on_confirmed, on_lost
            self._on_recheck = on_recheck
            fresh = [c for c in channels if c not in self._listening]
            self._listening.update(fresh)
            self._listen_requests += fresh
        self._poke()

    def subscriptions(self) -> int:
        """Keys subscribed to now (0 when nobody waits)."""
        with self._lock:
            return len(self._subscribed)

    def release_all(self, marker: object = MISSING) -> None:
        """Wake every waiter with ``marker``: MISSING (interpreter exit, or the store closing),
        or STORE_DOWN (then watches that outlive outages stay)."""
        with self._lock:
            everything = list(self._waiters.items())
            self._waiters.clear()
            if marker is STORE_DOWN:
                for pair, wakes in everything:
                    kept = {w: None for w in wakes if outlives_outages(w)}
                    if kept:
                        self._waiters[pair] = kept
            for key in list(self._subscribed):
                self._drop_if_idle(key)
        for (key, _kind), gone in everything:
            told = [w for w in gone if marker is not STORE_DOWN or not outlives_outages(w)]
            wake_all(told, marker, "key", key)

    def close(self) -> None:
        """Release every waiter and stop the thread."""
        self.release_all()
        self._stopping = True
        self._poke()
        self._runner.join(5)

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the thread will look anyway

    # -- the hub thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        while not self._stopping:
            try:
                self._serve()
            except _LOST as exc:
                if self._stopping:
                    break
                log.warning("redis wait connection lost (%s); reconnecting in %.2fs", exc, backoff)
                self._reset_connection()
                self._down(exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            except Exception:  # a bug: keep serving waiters rather than leave them hanging
                log.exception("redis wait hub failed; restarting it")
                self._reset_connection()
                time.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = 0.05
        self._reset_connection()

    def _down(self, exc: BaseException) -> None:
        """The connection failed: once that has lasted ``give_up_s``, release the waiters."""
        now = time.monotonic()
        last, self._last_failure = self._last_failure, now
        if self._down_since is None or now - last > _BACKOFF_MAX_S + 2 * self._give_up_s:
            # A first failure, or one long after the last (an outage in between ended without
            # anything to send that would have said so): a new outage starts.
            self._down_since = now
            self._down_told = False
            return
        if self._down_told or now - self._down_since < self._give_up_s:
            return
        self._down_told = True
        log.error(
            "redis did not answer for %.1f s (%s): the waits on it give up",
            now - self._down_since,
            exc,
        )
        self.release_all(STORE_DOWN)
        if self.on_down is not None:
            self.on_down()

    def _up(self) -> None:
        self._down_since = None
        self._down_told = False

    def _reset_connection(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:
                pass
        # Everything must be subscribed again on the new connection, then read again.
        with self._lock:
            self._requests = deque((True, key) for key in self._subscribed)
            self._listen_requests = list(self._listening)
            lost = self._on_lost
        if lost is not None and self._listening:
            lost()

    def _serve(self) -> None:
        if self._pubsub is None:
            self._pubsub = open_channels(self._client)
        pubsub = self._pubsub
        next_recheck = time.monotonic() + self._recheck_s
        while not self._stopping:
            # After a reconnect every subscription is sent again: Redis taking them ends the
            # outage (with nothing subscribed, nothing waits on the hub to be released).
            if self._send_requests(pubsub):
                self._up()
            ready: set[str] = set()
            known: dict[str, bytes] = {}
            while True:  # drain what hiredis has buffered as well as what the socket holds
                message = pubsub.get_message()
                if message is None:
                    break
                channel = message.get("channel")
                if message["type"] in ("ssubscribe", "smessage") and channel is not None:
                    name = channel.decode() if isinstance(channel, bytes) else str(channel)
                    if name in self._listening:
                        self._heard(message["type"], name, message.get("data"))
                        continue
                    key = self._names.key_of_channel(name)
                    ready.add(key)
                    data = message.get("data")
                    if isinstance(data, bytes) and data.startswith(RECORD_MAGIC):
                        known[key] = data  # the record came with its announcement
            now = time.monotonic()
            if now >= next_recheck:
                ready |= self._recheck_slice()
                next_recheck = now + self._recheck_s
                if self._on_recheck is not None:
                    self._on_recheck()
            if ready:
                self._settle(ready, known)
                continue
            self._sleep(pubsub, max(0.0, next_recheck - time.monotonic()))

    def _recheck_slice(self) -> set[str]:
        """The next watched keys to read as a last resort: all of them when they are few, else
        a rotating slice, so that 20,000 waiting keys cost a read of 1,000 a second rather
        than a read of all 20,000 a second (the pushes carry the load; this only mends)."""
        with self._lock:
            if len(self._subscribed) <= _RECHECK_MAX:
                return set(self._subscribed)
            keys = list(self._subscribed)
        start = self._recheck_at % len(keys)
        self._recheck_at = start + _RECHECK_MAX
        chunk = keys[start : start + _RECHECK_MAX]
        return set(chunk + keys[: _RECHECK_MAX - len(chunk)])

    def _heard(self, kind: str, channel: str, data: object) -> None:
        """A confirmation or a message on a channel listened to for good."""
        try:
            if kind == "ssubscribe" and self._on_confirmed is not None:
                self._on_confirmed(channel)
            elif kind == "smessage" and self._on_message is not None and isinstance(data, bytes):
                self._on_message(channel, data)
        except redis.RedisError:
            raise  # the connection: reconnect, and read everything again
        except Exception:  # a bug in a handler must not stop the hub
            log.exception("a reply handler raised")

    def _send_requests(self, pubsub: Channels | ClusterChannels) -> bool:
        """Send the (un)subscriptions asked for since the last call; True if there were any
        (and so Redis took them)."""
        with self._lock:
            listen, self._listen_requests = self._listen_requests, []
            requests, self._requests = self._requests, deque()
        if listen:
            pubsub.ssubscribe(listen)
        subscribe = [self._names.channel(k) for wanted, k in requests if wanted]
        unsubscribe = [self._names.channel(k) for wanted, k in requests if not wanted]
        if subscribe:
            pubsub.ssubscribe(subscribe)
        if unsubscribe:
            pubsub.sunsubscribe(unsubscribe)
        return bool(listen or subscribe or unsubscribe)

    def _sleep(self, pubsub: Channels | ClusterChannels, timeout: float) -> None:
        watched = [self._wake_r, *pubsub.fds()]
        readable, _, _ = select.select(watched, [], [], timeout)
        if self._wake_r in readable:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def _settle(self, keys: set[str], known: dict[str, bytes]) -> None:
        with self._lock:
            wanted = [
                (key, kind)
                for key in keys
                for kind in ("result", "value")
                if (key, kind) in self._waiters
            ]
        if not wanted:
            return
        values = self._check(wanted, known)
        woken: list[tuple[str, list[Wake], object]] = []
        with self._lock:
            for (key, kind), value in zip(wanted, values, strict=True):
                if value is MISSING:
                    continue
                found = self._waiters.pop((key, kind), None)
                if found:
                    woken.append((key, list(found), value))
                self._drop_if_idle(key)
        for key, wakes, value in woken:
            wake_all(wakes, value, "key", key)
