"""`Replies`: waits on the keys this process queued, woken from its own reply channels.

The same channels carry the end of a key this process sends itself that another process ended
(a cancel: its pending record names the reply id too); `Replies` hands such a key to its owner
(``sent_here``), which checks the store and stops the transfer.

Every terminal write of a queued key also announces ``<key>`` + newline + the result (or
``r``: read it) on its submitter's reply channel in the key's shard (`names.Names.reply`), so a
submitter subscribes to 16 channels once instead of one channel per key it waits for. A worker
that ends many keys in one call sends one message per reply channel holding all of theirs
(`redis_queue.REPLY_BATCH`).

A result announced while nobody here waits for it yet (a submitter still queueing, say) is kept,
bounded in count, bytes and age, so that the wait that follows takes it without a read; a key
queued while its channel was confirmed and not heard of since has not ended, and needs no read
either.

A result announced before this process listened is not heard: a key queued while its shard's
channel was not yet confirmed (or during a reconnect) is marked, and a wait on it reads it once
after registering; a confirmation (first, or after a reconnect) reads every waiting key of the
shard; the hub's last-resort recheck reads a slice of them every second, which also ends a key
no worker ever took (the read ends it once it is far past its deadline).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from .._errors import StoreUnavailable
from .._result import Result, State
from .._waits import wake_all
from . import codec
from .base import MISSING, STORE_DOWN, outlives_outages
from .names import SHARDS, Names, shard_of
from .redis_queue import REPLY_BATCH

#: Called with a key's terminal Result (which names its key), or MISSING when waiters are
#: released at exit. One wake may wait on many keys (a `wait_many`).
Wake = Callable[[Result], None]

_NOT_ENDED = (State.PENDING, State.RUNNING)
_MAX_MINE = 100_000  # queued keys not heard of yet; past this the oldest wait through the hub
#: Results heard before anyone waited for them, kept for the wait that follows: at most this many
#: bytes (the oldest go first) and this long (a result's TTL may pass; then it is read again).
_LANDED_BYTES = 16 * 1024 * 1024
_LANDED_S = 10.0
_RECHECK_MAX = 1_000  # waiting keys read per last-resort recheck

#: How `Replies` subscribes its channels: `WaitHub.listen` (channels, on_message, on_confirmed,
#: on_lost, on_recheck).
Listen = Callable[
    [
        list[str],
        Callable[[str, bytes], None],
        Callable[[str], None],
        Callable[[], None],
        Callable[[], None],
    ],
    None,
]


class Replies:
    """This process's queued keys and their waiters. Thread-safe."""

    def __init__(
        self,
        listen: Listen,
        names: Names,
        reply_id: str,
        read_many: Callable[[list[str]], list[Result]],
        lookup: Callable[[str], Result],
        sent_here: Callable[[str], None] = lambda key: None,
        confirmed: Callable[[int], None] = lambda shard: None,
    ) -> None:
        self._listen = listen  # WaitHub.listen: subscribes the reply channels for good
        self._names = names
        self._reply_id = reply_id
        self._read_many = read_many
        self._lookup = lookup
        # The owner's hooks, on the hub's thread: a key announced that is not one this process
        # queued (one it sends itself, that another process ended: a cancel), and a shard whose
        # channel was confirmed, first or after a reconnect (announcements before were lost).
        self._sent_here = sent_here
        self._confirmed_hook = confirmed
        self._lock = threading.Lock()
        # Queued here and not heard of (True: queued while its shard's channel was confirmed,
        # so its end cannot have been missed), the waiters, the shards confirmed.
        self._mine: dict[str, bool] = {}
        # A key's wake, or its wakes when several waits wait on it: no list for the usual one
        # (a wait_many of 20,000 keys would otherwise make 20,000 lists for the collector).
        self._waiters: dict[str, Wake | list[Wake]] = {}
        self._confirmed: set[int] = set()
        # Heard with nobody waiting: key -> (when, the announced record), oldest first.
        self._landed: dict[str, tuple[float, bytes]] = {}
        self._landed_bytes = 0
        self._short_lived: set[str] = set()  # queued with a TTL too short to keep their result
        self._listening = False
        self._recheck_at = 0

    def remember(
        self, key: str, heard_from_start: bool | None = None, keep_ms: int | None = None
    ) -> None:
        """``key`` was queued here: its end will be announced on our reply channels. A result
        whose TTL (``keep_ms``) is shorter than the time one is kept here is never kept: it
        could expire in Redis while its copy here lived on."""
        with self._lock:
            confirmed = shard_of(key) in self._confirmed
            self._mine[key] = confirmed if heard_from_start is None else heard_from_start
            if len(self._mine) > _MAX_MINE:
                del self._mine[next(iter(self._mine))]
            if keep_ms is not None and keep_ms <= _LANDED_S * 1000:
                if len(self._short_lived) >= _MAX_MINE:  # never heard of (lost announcements)
                    self._short_lived.clear()
                self._short_lived.add(key)
            if self._listening:
                return
        self.listen()

    def listen(self) -> None:
        """Subscribe the reply channels, once (the first `remember` does it too). Cheap once
        done: a sender calls it at every submit."""
        if self._listening:  # read without the lock: it only ever goes from False to True
            return
        with self._lock:
            if self._listening:
                return
            self._listening = True
        self._listen(
            [self._names.reply(i, self._reply_id) for i in range(SHARDS)],
            self._heard,
            self._confirmed_channel,
            self._lost,
            self._recheck,
        )

    def drop(self, key: str) -> None:
        """Forget a result heard for ``key`` (this process deletes or takes it)."""
        with self._lock:
            kept = self._landed.pop(key, None)
            if kept is not None:
                self._landed_bytes -= len(kept[1])

    def forget(self, key: str) -> list[Wake]:
        """``key`` will not be announced (its queue write failed): its waiters, to wake."""
        with self._lock:
            self._mine.pop(key, None)
            return _wakes(self._waiters.pop(key, None))

    def claim(self, keys: list[str]) -> tuple[dict[str, Result], set[str]]:
        """Of ``keys``: the results heard here already (taken: each is handed out once), and
        those that cannot have ended unheard (queued here while listening, not heard of since).
        Neither needs a read."""
        landed: dict[str, bytes] = {}
        silent: set[str] = set()
        with self._lock:
            if self._landed:
                too_old = time.monotonic() - _LANDED_S
                for key in keys:
                    kept = self._landed.pop(key, None)
                    if kept is not None:
                        self._landed_bytes -= len(kept[1])
                        if kept[0] > too_old:
                            landed[key] = kept[1]
            mine = self._mine
            silent = {k for k in keys if mine.get(k) is True and k not in landed}
        results: dict[str, Result] = {}
        for key, record in landed.items():
            try:
                results[key] = codec.decode_result(key, record)
            except codec.RecordError:
                pass  # read it as any other
        return results, silent

    def watch(self, key: str, wake: Wake) -> tuple[Callable[[], None], bool] | None:
        """Register ``wake`` if ``key`` is one of ours (else None): the undo, and True if the
        caller must read the key once more (see the module docstring). A result heard already
        wakes it at once."""
        watched, again, others = self.watch_many([key], wake)
        if others:
            return None
        return (lambda: self.unwatch_many(watched, wake)), bool(again)

    def watch_many(self, keys: Iterable[str], wake: Wake) -> tuple[list[str], list[str], list[str]]:
        """`watch` for many keys under one lock, with one ``wake`` for all of them: the keys
        registered (for `unwatch_many`), the keys among them to read once more
        (`read_again`), and the keys that are not ours. Results heard already wake at once.
        Never reads Redis."""
        watched: list[str] = []
        again: list[str] = []
        others: list[str] = []
        heard: list[Result] = []
        with self._lock:
            landed, mine, waiters = self._landed, self._mine, self._waiters
            for key in keys:
                kept = landed.pop(key, None) if landed else None
                if kept is not None:
                    self._landed_bytes -= len(kept[1])
                    # Kept only once decoded (see _heard_one): it decodes again.
                    heard.append(codec.decode_result(key, kept[1]))
                    continue
                heard_from_start = mine.get(key)
                if heard_from_start is None:
                    others.append(key)
                    continue
                have = waiters.get(key)
                if have is None:
                    waiters[key] = wake
                elif isinstance(have, list):
                    have.append(wake)
                else:
                    waiters[key] = [have, wake]
                watched.append(key)
                if not heard_from_start:
                    again.append(key)
        for result in heard:
            wake(result)
        return watched, again, others

    def unwatch_many(self, keys: list[str], wake: Wake) -> None:
        """Undo `watch_many` for the keys not woken."""
        with self._lock:
            waiters = self._waiters
            for key in keys:
                have = waiters.get(key)
                if have is None:
                    continue
                if not isinstance(have, list):
                    if have == wake:  # == : bound methods are made anew at each lookup
                        del waiters[key]
                elif wake in have:
                    have.remove(wake)
                    if len(have) == 1:
                        waiters[key] = have[0]

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
            if waiters is not None:
                wake_all(_wakes(waiters), result, "key", key)

    def release_all(self, marker: object = MISSING) -> None:
        """Wake every waiter with ``marker``: MISSING (interpreter exit), or STORE_DOWN (then
        watches that outlive outages stay)."""
        with self._lock:
            waiters, self._waiters = self._waiters, {}
            if marker is STORE_DOWN:
                for key, wakes in waiters.items():
                    kept = [w for w in _wakes(wakes) if outlives_outages(w)]
                    if kept:
                        self._waiters[key] = kept if len(kept) > 1 else kept[0]
        for key, wakes in waiters.items():
            gone = [w for w in _wakes(wakes) if marker is not STORE_DOWN or not outlives_outages(w)]
            wake_all(gone, marker, "key", key)

    # -- on the hub's thread ---------------------------------------------------------------------

    def _heard(self, _channel: str, data: bytes) -> None:
        if data[:1] != REPLY_BATCH:
            self._heard_one(data)
            return
        # Several announcements (a worker ended many keys at once), each after its length.
        at, end = 1, len(data)
        while at + 4 <= end:
            size = int.from_bytes(data[at : at + 4], "little")
            at += 4
            if at + size > end:
                break  # truncated: the rest is read by the recheck if anyone waits for it
            self._heard_one(data[at : at + size])
            at += size

    def _heard_one(self, data: bytes) -> None:
        # Anyone who can publish on the channel can send anything: only a key's terminal
        # result (announced, or read back from Redis) ends its wait.
        raw_key, _, note = data.partition(b"\n")
        key = raw_key.decode(errors="replace")
        result = None
        if note.startswith(codec.RECORD_MAGIC):
            try:
                result = codec.decode_result(key, note)
            except (codec.RecordError, ValueError):
                result = None
            if result is not None and result.state in _NOT_ENDED:
                result = None
        ours = False
        with self._lock:
            waiters = self._waiters.pop(key, None) if result is not None else None
            unwaited = waiters is None and key not in self._waiters
            if waiters is not None:  # the usual case: taken under one lock
                self._mine.pop(key, None)
                self._short_lived.discard(key)
            elif unwaited:
                ours = self._mine.pop(key, None) is not None
                short_lived = key in self._short_lived
                self._short_lived.discard(key)
                if ours and not short_lived and result is not None:
                    self._keep_landed(key, note)
        if unwaited:
            if not ours:
                self._sent_here(key)  # it checks the store itself: anyone can announce
            return
        if waiters is not None:
            wake_all(_wakes(waiters), result, "key", key)
            return
        if result is None:  # announced without its record (too large), or unreadable: read it
            try:
                result = self._lookup(key)
            except StoreUnavailable:
                return  # still waited for: the recheck reads it
            if result.state in _NOT_ENDED:
                return  # not ended (a stray announcement): its waiters wait on
        with self._lock:
            self._mine.pop(key, None)
            self._short_lived.discard(key)
            waiters = self._waiters.pop(key, None)
        if waiters is not None:
            wake_all(_wakes(waiters), result, "key", key)

    def _keep_landed(self, key: str, note: bytes) -> None:
        # Under the lock. The oldest go first, past the bounds or their time (a process that
        # never waits keeps only the last few seconds' results); those are read instead.
        landed = self._landed
        now = time.monotonic()
        landed[key] = (now, note)
        self._landed_bytes += len(note)
        self._prune_landed(now)

    def _prune_landed(self, now: float) -> None:
        # Under the lock.
        landed = self._landed
        too_old = now - _LANDED_S
        while landed:
            oldest, (when, record) = next(iter(landed.items()))
            if when > too_old and self._landed_bytes <= _LANDED_BYTES and len(landed) <= _MAX_MINE:
                break
            del landed[oldest]
            self._landed_bytes -= len(record)

    def _confirmed_channel(self, channel: str) -> None:
        # From now on every end in the shard reaches us; those announced before are read.
        shard = int(channel[channel.index("{s") + 2 : channel.index("}")])
        with self._lock:
            self._confirmed.add(shard)
            keys = [k for k in self._waiters if shard_of(k) == shard]
        self.read_again(keys)
        self._confirmed_hook(shard)

    def _lost(self) -> None:
        with self._lock:
            self._confirmed.clear()
            for key in self._mine:
                self._mine[key] = False

    def _recheck(self) -> None:
        with self._lock:
            self._prune_landed(time.monotonic())  # also while no result comes to push them out
            keys = list(self._waiters)
        if len(keys) > _RECHECK_MAX:
            start = self._recheck_at % len(keys)
            self._recheck_at = start + _RECHECK_MAX
            keys = (keys[start:] + keys[:start])[:_RECHECK_MAX]
        self.read_again(keys)


def _wakes(waiters: Wake | list[Wake] | None) -> list[Wake]:
    """A key's entry in `Replies._waiters` as a list."""
    if waiters is None:
        return []
    return waiters if isinstance(waiters, list) else [waiters]
