"""`Worker`: sends the requests clients queued in a Redis store (``send="workers"``).

Run it as ``postkey worker --store redis://...`` on any machine; as many as you like. Each reads
the queue streams in batches as a member of one consumer group, starts each entry (`START`
fences the attempt), sends it with the same engine and destination policy as a client, and
stores the result, acknowledging and deleting the entry in the same script. While it works on
entries it renews them (``XCLAIM ... JUSTID``) every third of ``claim_idle_ms``; entries of a
worker that died go idle and are taken over by another (``XAUTOCLAIM``) after ``claim_idle_ms``.
A key another process cancelled is noticed at the next renewal and its transfer stopped.

A worker holds up to twice its concurrency of entries: those on the wire, and as many started
and waiting for a slot, so the engine never waits for a read. (A read takes at most one entry
from each of the 16 shards' streams when it has room for fewer, so a worker with a concurrency
under 16 may hold up to its concurrency plus 16.)

`stop` (SIGTERM in the CLI) stops reading, lets the requests it holds finish for up to the drain
time, then hands what is left back to the queue: every request that was never sent, and the
at-least-once ones on the wire; an at-most-once request on the wire then ends as
``unknown_outcome`` (it may have been sent).

Redis errors never end the worker: it logs them and tries again with backoff (a restarted
Redis that lost the consumer groups, NOGROUP, gets them made again), never in a hot loop.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from ._engine import Engine
from ._errors import InvalidKey, InvalidRequest, InvalidValue
from ._host_gate import HostGate
from ._job import Job
from ._keys import check_key
from ._request import Request, build_request, check_options
from ._result import ErrorKind, Result, State
from ._settings import Settings
from ._stores import codec
from ._stores.delivery import AT_LEAST_ONCE
from ._stores.names import GROUP, SHARDS, Names
from ._stores.redis_connect import (
    STORE_ERRORS,
    check_not_a_cluster_node,
    connect,
    mget,
    redacted_url,
)
from ._stores.redis_limits import HostLimits, parse_retry_after
from ._stores.redis_queue import WorkQueue
from ._stores.redis_writes import WriteBehind, call_scripts
from ._transport import Transport

log = logging.getLogger("postkey.worker")

_NAME = re.compile(r"[A-Za-z0-9._-]+")  # a --name: no '#', which ends it in an owner
_READ_BATCH = 512  # entries asked for per read, at most
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_RETRY_KINDS = frozenset({ErrorKind.DNS, ErrorKind.CONNECT, ErrorKind.NETWORK})
_BACKOFF_CAP_S = 5.0


@dataclass
class _Taken:
    """An entry this worker has started: what it needs to store or hand back its result."""

    shard: int
    entry_id: bytes
    owner: str  # "<worker>#<attempt>": the fence of every write of this attempt
    delivery: str
    job: Job
    tries: int = 0  # retries made (settings.retries)
    storing: bool = False  # its result (or hand-back) is on its way to Redis
    #: Its result's FINISH call (KEYS, ARGV), kept until Redis has answered it: see _stored.
    finish: tuple[Any, Any] | None = None

    def unsent(self) -> bool:
        """True if no attempt of this worker's has put the request on the wire."""
        job = self.job
        return self.tries == 0 and job.hops == 0 and job.state is State.PENDING


@dataclass
class WorkerStats:
    """What a worker has done, for logs, tests and operators."""

    started: int = 0  # entries started (sent, or ended without sending)
    stored: int = 0  # results stored
    dropped: int = 0  # results that lost to an earlier terminal write (cancel, takeover)
    ended_by_start: int = 0  # entries ended without sending (deadline, unknown outcome, poison)
    reclaimed: int = 0  # entries taken over from a dead worker
    handed_back: int = 0  # entries put back on the queue at stop
    held: int = 0  # times a request waited for its host (pause, concurrency, rate)
    retried: int = 0  # retries sent (settings.retries)
    redis_errors: int = 0


def _key_of(fields: Any) -> str | None:
    """The entry's key if it is one postkey could have issued, else None (junk)."""
    raw = fields.get(b"k") if isinstance(fields, dict) else None
    if not isinstance(raw, bytes):
        return None
    try:
        return check_key(raw.decode())
    except (UnicodeDecodeError, InvalidKey):
        return None


class _Backoff:
    """Exponential backoff with full jitter, reset by a success."""

    def __init__(self) -> None:
        self._delay = 0.05

    def reset(self) -> None:
        self._delay = 0.05

    def sleep(self, stop: threading.Event) -> None:
        stop.wait(random.uniform(0, self._delay))
        self._delay = min(self._delay * 2, _BACKOFF_CAP_S)


class Worker:
    """One worker process's loop. Thread-safe `stop`; `run` blocks until stopped.

    Raises (on construction):
        InvalidValue: settings without a Redis store, or a bad concurrency / drain time.
    """

    def __init__(
        self,
        settings: Settings,
        concurrency: int = 256,
        drain_s: float = 30.0,
        name: str | None = None,
    ) -> None:
        if settings.store == "memory://":
            raise InvalidValue("a worker reads the queue in a Redis store: give store='redis://'")
        if type(concurrency) is not int or not 1 <= concurrency <= 100_000:
            raise InvalidValue(f"concurrency must be an int from 1 to 100000, not {concurrency!r}")
        if not 0 <= drain_s <= 86_400:
            raise InvalidValue(f"drain_s must be from 0 to 86400 seconds, not {drain_s!r}")
        self.concurrency = concurrency
        self.drain_s = drain_s
        self.settings = settings.replace(
            max_in_flight=concurrency, max_queue=max(2 * concurrency, 1024), send="local"
        )
        if name is not None and (
            not isinstance(name, str) or not 1 <= len(name) <= 100 or not _NAME.fullmatch(name)
        ):
            raise InvalidValue(
                f"a worker's name is 1 to 100 letters, digits and '._-', not {name!r}"
            )
        # A random part in every run's name, given or not: a worker restarted under the same
        # name (by a supervisor) must never be taken for the one it replaces, whose started
        # requests are not its own (an at-most-once request would be sent again).
        self.name = f"{name or f'{socket.gethostname()}-{os.getpid()}'}-{secrets.token_hex(3)}"
        self.stats = WorkerStats()
        self._names = Names(settings.store_prefix)
        self._redis = connect(settings)
        self._queue = WorkQueue(self._redis, self._names, self.name)
        self._claim_idle_ms = settings.claim_idle_ms
        # A blocking read must end well within the socket timeout (else it reads as an error).
        self._block_ms = max(1, min(1000, settings.store_timeout_ms // 2))
        self._ttls = (settings.result_ttl_ms, settings.tombstone_ttl_ms)
        self._taken: dict[str, _Taken] = {}
        # Entries held at once, besides those whose results are on their way to Redis (up to
        # `concurrency` of them): as many as are sent at once and as many again started and
        # waiting for a slot, so the engine never waits for a read and its START. A read asks
        # every shard's stream for the same count (WorkQueue.read): with room for 16 or more
        # it takes no more than that room; with less (a concurrency under 16), up to 16.
        self._may_hold = 2 * concurrency
        self._read_from = min(SHARDS, concurrency)  # the room a read waits for
        self._storing = 0
        self._reader_waits = False  # the read loop waits for room (on _room)
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._cutting = False  # past the drain time: cancelled requests are handed back
        # The engine is closed: nothing can be held any more (until then a retry can be, in the
        # drain too, and the thread that releases held jobs must be there for it).
        self._holding_over = False
        self._writes_closed = False
        self._recover_own = False  # after a failed read: read our own pending entries
        self._writes = WriteBehind(self._redis, give_up_s=settings.claim_idle_ms / 1000.0)
        self._when_stored = self._stored  # bound once: a lookup makes a new object each time
        self._engine = Engine(
            self.settings, Transport(self.settings), self._sink, housekeeping=lambda: 0
        )
        self._gate = HostGate(HostLimits(self._redis, settings.store_prefix), settings, self.name)
        # Jobs waiting for their host (or a retry's backoff): (not before, order, entry).
        self._held: list[tuple[float, int, _Taken]] = []
        self._held_order = itertools.count()
        self._held_ready = threading.Condition(self._lock)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Read and send until `stop`; then drain (see the module docstring).

        Raises:
            InvalidValue: the store URL names a node of a Redis Cluster as a single Redis.
        """
        backoff = _Backoff()
        while not self._stopping.is_set():
            try:
                try:
                    check_not_a_cluster_node(self._redis, self.settings.store)
                except InvalidValue:
                    self._engine.close(0, reason="the worker did not start")
                    self._close()
                    raise
                self._queue.ensure_groups()
                self._beat()
                break
            except STORE_ERRORS as exc:
                self._redis_error("could not reach the store at start", exc)
                backoff.sleep(self._stopping)
        upkeep = threading.Thread(target=self._keep_up, name="postkey-worker-upkeep", daemon=True)
        upkeep.start()
        holding = threading.Thread(
            target=self._release_held, name="postkey-worker-held", daemon=True
        )
        holding.start()
        log.info(
            "worker %s ready: store=%s shards=%d concurrency=%d claim_idle_ms=%d",
            self.name,
            redacted_url(self.settings.store),
            SHARDS,
            self.concurrency,
            self._claim_idle_ms,
        )
        try:
            self._read_loop(backoff)
        finally:
            self._drain()
            self._stopping.set()
            upkeep.join(5)
            self._close()

    def stop(self) -> None:
        """Stop reading; `run` then drains and returns. Safe from a signal handler."""
        self._stopping.set()

    def _read_loop(self, backoff: _Backoff) -> None:
        while not self._stopping.is_set():
            with self._room:
                room = self._room_left()
                if room < self._read_from:
                    self._reader_waits = True
                    self._room.wait(0.2)
                    self._reader_waits = False
                    continue
            try:
                if self._recover_own:
                    # A read whose answer was lost left entries delivered to us that we never
                    # saw: read our own pending entries again and start those we do not hold.
                    entries = self._queue.read(min(room, _READ_BATCH), None, own=True)
                    with self._lock:
                        held = {t.entry_id for t in self._taken.values()}
                    entries = [e for e in entries if e[1] not in held]
                    self._recover_own = False
                else:
                    entries = self._queue.read(min(room, _READ_BATCH), self._block_ms)
                if entries:
                    self._start(entries)
                backoff.reset()
            except redis.ResponseError as exc:
                self._recover_own = True
                if "NOGROUP" in str(exc):
                    # Redis restarted without persistence (or someone deleted the group).
                    log.warning("worker %s: the consumer groups are gone: making them", self.name)
                    try:
                        self._queue.ensure_groups()
                    except STORE_ERRORS as again:
                        self._redis_error("could not make the consumer groups", again)
                else:
                    self._redis_error("reading the queue failed", exc)
                backoff.sleep(self._stopping)
            except STORE_ERRORS as exc:
                self._recover_own = True
                self._redis_error("reading the queue failed", exc)
                backoff.sleep(self._stopping)
            except Exception:  # a bug (or an entry nobody foresaw) must not end the worker
                log.exception("worker %s: starting entries raised", self.name)
                backoff.sleep(self._stopping)

    def _room_left(self) -> int:
        """(Under the lock) How many more entries this worker may take."""
        return self._may_hold - len(self._taken) + min(self._storing, self.concurrency)

    def _redis_error(self, what: str, exc: Exception) -> None:
        self.stats.redis_errors += 1
        log.warning("worker %s: %s: %s", self.name, what, exc)

    # -- starting entries ----------------------------------------------------------------------

    def _start(self, entries: list[tuple[int, bytes, Any]]) -> None:
        """Start a batch of entries: one `START` call per shard, all in one round trip."""
        by_shard: dict[int, list[tuple[str, bytes, bytes]]] = {}
        junk: list[tuple[int, bytes]] = []
        for shard, entry_id, fields in entries:
            key, payload = _key_of(fields), fields.get(b"j")
            if key is None or not isinstance(payload, bytes):
                junk.append((shard, entry_id))
                continue
            by_shard.setdefault(shard, []).append((key, entry_id, payload))
        calls = []
        for shard, batch in by_shard.items():
            pairs = [(key, entry_id) for key, entry_id, _payload in batch]
            keys, args = self._queue.start_args(
                shard, pairs, self.settings.max_deliveries, self._ttls
            )
            calls.append((self._queue.scripts.start, keys, args))
        if junk:
            pipe = self._redis.pipeline(transaction=False)
            for shard, entry_id in junk:
                log.error(
                    "worker %s: entry %r is not a postkey request: dropped", self.name, entry_id
                )
                stream = self._queue.streams[shard]
                pipe.xack(stream, GROUP, entry_id)
                pipe.xdel(stream, entry_id)
            pipe.execute()
        verdicts = call_scripts(self._redis, calls)
        for (shard, batch), answers in zip(by_shard.items(), verdicts, strict=True):
            if isinstance(answers, Exception):  # left pending: taken over after claim_idle_ms
                self._redis_error(f"starting entries of shard {shard} failed", answers)
                continue
            for (key, entry_id, payload), verdict in zip(batch, answers, strict=True):
                self.stats.started += 1
                if verdict[0] != b"go":
                    if verdict[0] == b"ended":
                        self.stats.ended_by_start += 1
                    continue
                self._send(shard, key, entry_id, payload, int(verdict[1]), verdict[2].decode())

    def _send(
        self, shard: int, key: str, entry_id: bytes, payload: bytes, left_ms: int, owner: str
    ) -> None:
        try:
            queued = codec.decode_job(payload)
            # Checked again as a submit is: whatever wrote the entry, nothing unchecked is sent.
            request = build_request(
                queued.method,
                queued.url,
                queued.body,
                queued.headers,
                queued.timeout_ms,
                max_timeout_ms=self.settings.max_timeout_ms,
                max_body_bytes=self.settings.max_request_bytes,
                follow_redirects=queued.follow_redirects,
            )
            if queued.options:
                request.options = check_options(*queued.options)
            job = Job(key, request, ttl_ms=queued.ttl_ms)
            job.fingerprint = queued.fingerprint
            job.submitted_at = queued.submitted_at
        except (codec.RecordError, InvalidRequest, TypeError, ValueError) as exc:
            # Written by something that is not this version of postkey: end it, do not guess.
            job = Job(key, Request("GET", "", b"", (), 1, False))
            taken = _Taken(shard, entry_id, owner, AT_LEAST_ONCE, job)
            self._store(taken, job.failure(ErrorKind.INTERNAL, f"the queued request is bad: {exc}"))
            return
        # The deadline counts from the submit (Redis time, in the entry's ID): time queued
        # is part of timeout_ms, as in a client's own engine.
        job.deadline = time.monotonic() + left_ms / 1000.0
        taken = _Taken(shard, entry_id, owner, queued.delivery, job)
        with self._lock:
            self._taken[key] = taken
        self._admit(taken)

    def _admit(self, taken: _Taken) -> None:
        """Hand the job to the engine if its host takes it now, else hold it for a while."""
        try:
            wait = self._gate.admit(taken.job)
        except STORE_ERRORS as exc:
            self._redis_error("checking a host's limits failed", exc)
            wait = 0.5
        if wait <= 0:
            self._engine.enqueue(taken.job)
            return
        self.stats.held += 1
        self._hold(taken, wait)

    def _hold(self, taken: _Taken, seconds: float) -> None:
        with self._held_ready:
            entry = (time.monotonic() + seconds, next(self._held_order), taken)
            heapq.heappush(self._held, entry)
            self._held_ready.notify()

    def _release_held(self) -> None:
        """Ask again for held jobs as their time comes; end those whose deadline passed."""
        while not self._holding_over or self._held:
            with self._held_ready:
                now = time.monotonic()
                due = self._held and (self._held[0][0] <= now or self._cutting)
                if not due:
                    until = self._held[0][0] - now if self._held else 0.2
                    self._held_ready.wait(min(until, 0.2))
                    continue
                _when, _order, taken = heapq.heappop(self._held)
            job = taken.job
            if self._cutting:
                # Not on the wire now (never sent, or a retry waiting for its turn): back to
                # the queue for another worker, whatever its delivery.
                self._hand_back(taken)
            elif time.monotonic() >= job.deadline:
                message = (
                    "its deadline passed while it waited for its host (a pause, or a limit"
                    " shared by every worker)"
                )
                self._store(taken, job.failure(ErrorKind.TIMEOUT, message))
            else:
                self._admit(taken)

    # -- results -------------------------------------------------------------------------------

    def _sink(self, job: Job, result: Result) -> None:
        """The engine's result (on its thread): stored behind, in a batch per round trip."""
        with self._lock:
            taken = self._taken.get(job.key)
        if taken is None or taken.job is not job:
            return
        try:
            self._gate.done(job, result)
        except STORE_ERRORS as exc:
            self._redis_error("releasing a host's limit failed", exc)
        if self._should_retry(taken, result):
            return
        result.url = job.request.url
        if self._cutting and result.error_kind is ErrorKind.CANCELLED:
            # Cut at the end of the drain. Never sent (it waited for a slot), or free to be
            # sent again: back to the queue for another worker.
            if taken.delivery == AT_LEAST_ONCE or taken.unsent():
                self._hand_back(taken)
                return
            result = job.failure(
                ErrorKind.UNKNOWN_OUTCOME,
                "the worker sending it stopped (drain time over) before it ended; it may or may"
                " not have reached the server, and at-most-once delivery does not send it again",
            )
            result.url = job.request.url
        self._store(taken, result)

    def _should_retry(self, taken: _Taken, result: Result) -> bool:
        """Send ``taken``'s request again later if retries are on and it may be repeated."""
        if (
            taken.tries >= self.settings.retries
            or taken.delivery != AT_LEAST_ONCE
            or self._cutting
            or not (result.status in _RETRY_STATUSES or result.error_kind in _RETRY_KINDS)
        ):
            return False
        # Full jitter over an exponential bound (0.2 s, 0.4 s, ... at most 30 s); a Retry-After
        # asks for at least its time (clamped like a pause).
        delay = random.uniform(0, min(30.0, 0.2 * 2**taken.tries))
        if result.status in _RETRY_STATUSES:
            asked = parse_retry_after(result.headers.get("retry-after"))
            if asked:
                delay = max(delay, min(asked, self.settings.max_pause_ms / 1000.0))
        job = taken.job
        if time.monotonic() + delay >= job.deadline:
            return False  # no time left for another try: this result stands
        again = Job(job.key, job.request, ttl_ms=job.ttl_ms)
        again.fingerprint, again.submitted_at, again.deadline = (
            job.fingerprint,
            job.submitted_at,
            job.deadline,
        )
        taken.job = again
        taken.tries += 1
        self.stats.retried += 1
        self._hold(taken, delay)
        return True

    def _store(self, taken: _Taken, result: Result) -> None:
        result.fingerprint = taken.job.fingerprint
        ttl = taken.job.ttl_ms or self._ttls[0]
        keys, args = self._queue.finish_args(
            taken.shard,
            taken.job.key,
            taken.entry_id,
            taken.owner,
            codec.encode_result(result),
            (ttl, self._ttls[1]),
        )

        taken.finish = (keys, args)
        self._on_its_way(taken)
        self._writes.put(self._queue.scripts.finish, keys, args, self._when_stored, taken)

    def _stored(self, taken: _Taken, answer: Any) -> None:
        """(Writer thread) The result of ``taken`` was stored (1), dropped (0) or lost."""
        if answer is None and taken.finish is not None and not self._stopping.is_set():
            # Redis did not answer for claim_idle_ms. The entry is still ours unless another
            # worker took it over (then FINISH answers 0): held, and written again, it is
            # never taken for an entry we did not start (reading our own pending entries
            # after an outage), which would send the request a second time.
            log.warning("worker %s: the result of %s is written again", self.name, taken.job.key)
            keys, args = taken.finish
            self._writes.put(self._queue.scripts.finish, keys, args, self._when_stored, taken)
            return
        if answer == 1:
            self.stats.stored += 1
        elif answer == 0:
            self.stats.dropped += 1
        self._let_go(taken)

    def _hand_back(self, taken: _Taken) -> None:
        keys, args = self._queue.handback_args(
            taken.shard, taken.job.key, taken.entry_id, taken.owner
        )

        self._on_its_way(taken)
        self._writes.put(self._queue.scripts.handback, keys, args, self._handed_back, taken)

    def _handed_back(self, taken: _Taken, answer: Any) -> None:
        if answer == 1:
            self.stats.handed_back += 1
        self._let_go(taken)

    def _on_its_way(self, taken: _Taken) -> None:
        """``taken``'s last write is queued: it leaves room for another entry."""
        with self._room:
            if not taken.storing:
                taken.storing = True
                self._storing += 1
                self._wake_reader()

    def _let_go(self, taken: _Taken) -> None:
        with self._room:
            if taken.storing:
                taken.storing = False
                self._storing -= 1
            if self._taken.get(taken.job.key) is taken:
                del self._taken[taken.job.key]
            self._wake_reader()

    def _wake_reader(self) -> None:
        """(Under the lock) Wake the read loop if it may read now, and the drain when all
        is done: not at every result (the reader would wake for each, to find too little
        room)."""
        if (self._reader_waits and self._room_left() >= self._read_from) or not self._taken:
            self._room.notify_all()

    # -- upkeep: renewals, takeovers, cancels --------------------------------------------------

    def _keep_up(self) -> None:
        every = self._claim_idle_ms / 3000.0
        while not self._stopping.wait(every):
            try:
                self._beat()
                self._renew()
                self._reclaim()
            except STORE_ERRORS as exc:
                self._redis_error("upkeep failed", exc)
            except Exception:  # a bug here must not stop renewals silently forever
                log.exception("worker %s: upkeep raised", self.name)
        # Renew through the drain too: a request still running must not be taken over.
        while self._taken and not self._writes_closed:
            try:
                self._renew()
            except STORE_ERRORS as exc:
                self._redis_error("upkeep failed", exc)
            time.sleep(min(every, 0.5))

    def _beat(self) -> None:
        """The liveness key: present while this worker runs (for operators and tests)."""
        self._redis.set(self._names.owner(self.name), b"worker", px=self._claim_idle_ms)

    def _renew(self) -> None:
        with self._lock:
            taken = list(self._taken.values())
        by_shard: dict[int, list[bytes]] = {}
        for t in taken:
            by_shard.setdefault(t.shard, []).append(t.entry_id)
        pipe = self._redis.pipeline(transaction=False)
        for shard, ids in by_shard.items():
            self._queue.keep(shard, ids, client=pipe)
        pipe.execute()
        self._gate.renew()
        # Keys another process ended (cancelled) while they ran here: stop sending them.
        names = self._names
        for start in range(0, len(taken), 512):
            chunk = taken[start : start + 512]
            records = mget(self._redis, [names.record(t.job.key) for t in chunk])
            for t, record in zip(chunk, records, strict=True):
                if record is not None and record[3:4] != b"P":
                    self._engine.cancel(t.job)

    def _reclaim(self) -> None:
        """Take over entries whose worker died (idle past claim_idle_ms), as room allows."""
        for shard in range(SHARDS):
            with self._lock:
                room = self._room_left()
                mine = {t.entry_id for t in self._taken.values()}
            if room <= 0 or self._stopping.is_set():
                return
            entries = self._queue.reclaim(shard, self._claim_idle_ms, min(room, 100))
            # An entry of our own can come back if a renewal was late: it is still ours.
            theirs = [e for e in entries if e[1] not in mine]
            if theirs:
                self.stats.reclaimed += len(theirs)
                log.info(
                    "worker %s: took over %d entries of shard %d", self.name, len(theirs), shard
                )
                self._start(theirs)

    # -- stopping ------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Let in-flight requests finish for up to drain_s; hand back or end the rest."""
        deadline = time.monotonic() + self.drain_s
        with self._room:
            while self._taken and time.monotonic() < deadline:
                self._room.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            left = len(self._taken)
        if left:
            log.warning("worker %s: drain time over with %d requests in flight", self.name, left)
        self._cutting = True
        with self._held_ready:
            self._held_ready.notify_all()
        # Held jobs go back to the queue (by _release_held); then the engine's are cut.
        until = time.monotonic() + 5
        while self._held and time.monotonic() < until:
            time.sleep(0.02)
        self._engine.close(0, reason="the worker stopped")
        with self._held_ready:
            self._holding_over = True
            self._held_ready.notify_all()
        self._writes.flush(self._claim_idle_ms / 1000.0)

    def _close(self) -> None:
        self._writes_closed = True
        self._writes.close(self._claim_idle_ms / 1000.0)
        try:
            self._redis.delete(self._names.owner(self.name))
        except STORE_ERRORS:
            pass
        self._redis.close()
        log.info(
            "worker %s stopped: started=%d stored=%d dropped=%d reclaimed=%d handed_back=%d",
            self.name,
            self.stats.started,
            self.stats.stored,
            self.stats.dropped,
            self.stats.reclaimed,
            self.stats.handed_back,
        )

    def in_flight(self) -> int:
        """Entries started and not yet stored."""
        with self._lock:
            return len(self._taken)
