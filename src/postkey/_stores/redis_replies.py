"""`Replies`: waits on the keys this process queued, woken from its own reply channels.

Every terminal write of a queued key also announces ``<key>`` + newline + the result (or
``r``: read it) on its submitter's reply channel in the key's shard (`names.Names.reply`), so a
submitter subscribes to 16 channels once instead of one channel per key it waits for.

A result announced before this process listened is not heard: a key queued while its shard's
channel was not yet confirmed (or during a reconnect) is marked, and a wait on it reads it once
after registering; a confirmation (first, or after a reconnect) reads every waiting key of the
shard; the hub's last-resort recheck reads a slice of them every second, which also ends a key
no worker ever took (the read ends it once it is far past its deadline).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .._result import Result, State
from .._waits import wake_all
from . import codec
from .base import MISSING
from .names import SHARDS, Names, shard_of
from .redis_waits import WaitHub

Wake = Callable[[Result], None]

_NOT_ENDED = (State.PENDING, State.RUNNING)
_MAX_MINE = 100_000  # queued keys not heard of yet; past this the oldest wait through the hub
_RECHECK_MAX = 1_000  # waiting keys read per last-resort recheck


class Replies:
    """This process's queued keys and their waiters. Thread-safe."""

    def __init__(
        self,
        hub: WaitHub,
        names: Names,
        owner: str,
        read_many: Callable[[list[str]], list[Result]],
        lookup: Callable[[str], Result],
    ) -> None:
        self._hub = hub
        self._names = names
        self._owner = owner
        self._read_many = read_many
        self._lookup = lookup
        self._lock = threading.Lock()
        # Queued here and not heard of (True: queued while its shard's channel was confirmed,
        # so its end cannot have been missed), the waiters, the shards confirmed.
        self._mine: dict[str, bool] = {}
        self._waiters: dict[str, list[Wake]] = {}
        self._confirmed: set[int] = set()
        self._listening = False
        self._recheck_at = 0

    def remember(self, key: str, heard_from_start: bool | None = None) -> None:
        """``key`` was queued here: its end will be announced on our reply channels."""
        with self._lock:
            confirmed = shard_of(key) in self._confirmed
            self._mine[key] = confirmed if heard_from_start is None else heard_from_start
            if len(self._mine) > _MAX_MINE:
                del self._mine[next(iter(self._mine))]
            if self._listening:
                return
            self._listening = True
        self._hub.listen(
            [self._names.reply(i, self._owner) for i in range(SHARDS)],
            self._heard,
            self._confirmed_channel,
            self._lost,
            self._recheck,
        )

    def forget(self, key: str) -> list[Wake]:
        """``key`` will not be announced (its queue write failed): its waiters, to wake."""
        with self._lock:
            self._mine.pop(key, None)
            return self._waiters.pop(key, [])

    def watch(self, key: str, wake: Wake) -> tuple[Callable[[], None], bool] | None:
        """Register ``wake`` if ``key`` is one of ours (else None): the undo, and True if the
        caller must read the key once more (see the module docstring)."""
        with self._lock:
            heard_from_start = self._mine.get(key)
            if heard_from_start is None:
                return None
            self._waiters.setdefault(key, []).append(wake)
        return (lambda: self._unwatch(key, wake)), not heard_from_start

    def _unwatch(self, key: str, wake: Wake) -> None:
        with self._lock:
            waiters = self._waiters.get(key)
            if waiters is not None and wake in waiters:
                waiters.remove(wake)
                if not waiters:
                    del self._waiters[key]

    def read_again(self, keys: list[str]) -> None:
        """Wake the waiters of those ``keys`` that have ended already."""
        if not keys:
            return
        for key, result in zip(keys, self._read_many(keys), strict=True):
            if result.state in _NOT_ENDED:
                continue
            with self._lock:
                self._mine.pop(key, None)
                waiters = self._waiters.pop(key, None)
            if waiters:
                wake_all(waiters, result, f"key {key!r}")

    def release_all(self) -> None:
        """Wake every waiter with MISSING (interpreter exit)."""
        with self._lock:
            waiters, self._waiters = self._waiters, {}
        for key, wakes in waiters.items():
            wake_all(wakes, MISSING, f"key {key!r}")

    # -- on the hub's thread ---------------------------------------------------------------------

    def _heard(self, _channel: str, data: bytes) -> None:
        raw_key, _, note = data.partition(b"\n")
        key = raw_key.decode(errors="replace")
        with self._lock:
            self._mine.pop(key, None)
            waiters = self._waiters.pop(key, None)
        if not waiters:
            return
        result = None
        if note.startswith(codec.RECORD_MAGIC):
            try:
                result = codec.decode_result(key, note)
            except codec.RecordError:
                result = None
        wake_all(waiters, result or self._lookup(key), f"key {key!r}")

    def _confirmed_channel(self, channel: str) -> None:
        # From now on every end in the shard reaches us; those announced before are read.
        shard = int(channel[channel.index("{s") + 2 : channel.index("}")])
        with self._lock:
            self._confirmed.add(shard)
            keys = [k for k in self._waiters if shard_of(k) == shard]
        self.read_again(keys)

    def _lost(self) -> None:
        with self._lock:
            self._confirmed.clear()
            for key in self._mine:
                self._mine[key] = False

    def _recheck(self) -> None:
        with self._lock:
            keys = list(self._waiters)
        if len(keys) > _RECHECK_MAX:
            start = self._recheck_at % len(keys)
            self._recheck_at = start + _RECHECK_MAX
            keys = (keys[start:] + keys[:start])[:_RECHECK_MAX]
        self.read_again(keys)
