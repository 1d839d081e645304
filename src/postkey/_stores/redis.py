"""`RedisStore`: keys, results and cache values in Redis, readable and waitable from anywhere.

This process's engine still sends (the shared-store mode). Each key has one record
(`codec`: pending, then the result or a cache value) and, after its result, a tombstone that
says ``expired`` once the result's TTL has passed and remembers a caller key's fingerprint; both
under the key's hash tag (`names`). Every write that changes what a key is runs as one Lua
script, which also publishes on the key's sharded channel, so a waiter never misses it.

Pending records name their owner, the sending process, whose lease (a key renewed every third of
``lease_ms``) shows it is alive. A reader that finds a pending key whose owner's lease has lapsed
ends it as ``failed`` / ``worker_lost``, with the same check-and-set the owner uses: whichever
terminal write comes first wins, the later one is dropped and counted.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from .._errors import IdempotencyKeysFull, InvalidValue, KeyConflict, StoreUnavailable
from .._job import Job
from .._result import ErrorKind, Result, State
from .._settings import Settings
from .._waits import check_wait_timeout, wake_all
from . import codec
from .base import MISSING, STORE_DOWN
from .names import Names, shard_of
from .redis_connect import (
    REFUSED_WRITE,
    STORE_ERRORS,
    UNAVAILABLE,
    check_not_a_cluster_node,
    connect,
    disconnect,
    mget,
    redacted_url,
)
from .redis_queue import BATCHED_REPLIES, CLAIM, QueueScripts, encode_request, with_announce
from .redis_replies import Replies
from .redis_waits import WaitHub
from .redis_writes import Done, WriteBehind

log = logging.getLogger("postkey")

# Register a key: KEYS record, tombstone; ARGV pending record, fingerprint ('' for a postkey
# key), pending TTL ms. Returns 1 registered, 0 the same request is known, -1 a conflict.
_REGISTER = CLAIM + "return claim(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])\n"

# The one terminal write: KEYS record, tombstone, channel; ARGV result record, owner, result TTL
# ms, result TTL + tombstone TTL ms, and '1' if the owner itself writes. Only a pending record of
# that owner is replaced; the owner also writes when the record is gone (a Redis restarted
# without persistence lost it: nobody else can have ended the key).
_FINISH = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  if ARGV[5] ~= '1' then return 0 end
else
  if string.sub(cur, 4, 4) ~= 'P' then return 0 end
  local meta = cjson.decode(string.sub(cur, 5))
  if meta['owner'] ~= ARGV[2] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
local t = redis.call('GET', KEYS[2]) or 'E'
redis.call('SET', KEYS[2], t, 'PX', ARGV[4])
redis.call('SPUBLISH', KEYS[3], ANNOUNCE(ARGV[1]))
return 1
"""

# A cache value: KEYS record, tombstone, channel; ARGV value record, TTL ms. Refused (-1) over a
# request's record or a remembered key.
_CACHE_SET = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local kind = string.sub(cur, 4, 4)
  if kind == 'P' or kind == 'R' then return -1 end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SPUBLISH', KEYS[3], ANNOUNCE(ARGV[1]))
return 1
"""

# Delete a value or result (never a pending record); a caller key's fingerprint stays.
_CACHE_DELETE = """
local cur = redis.call('GET', KEYS[1])
if not cur or string.sub(cur, 4, 4) == 'P' then return 0 end
redis.call('DEL', KEYS[1])
local t = redis.call('GET', KEYS[2])
if t == 'E' then redis.call('DEL', KEYS[2]) end
return 1
"""

_NOT_ENDED = (State.PENDING, State.RUNNING)
#: A queued key still pending this long after its deadline had no worker (or lost it): a reader
#: ends it. Workers end late requests themselves; this is the fallback when none runs.
QUEUED_GRACE_S = 60.0
_RECHECK_S = 1.0  # the last-resort re-read of every watched key
_MAX_KEPT_HERE = 100_000  # results only this process knows (writes that never landed)
_OWNER_CACHE_S = 0.5  # how long "that owner is alive" is believed without asking again


class RedisStore:
    """A `Store` on Redis (or Valkey). Thread-safe."""

    #: Calls may wait on a server: AsyncClient makes them off the event loop.
    remote = True

    def __init__(self, settings: Settings) -> None:
        self._url = settings.store
        self._redis = connect(settings)
        self._names = Names(settings.store_prefix)
        self._result_ttl_ms = settings.result_ttl_ms
        self._tombstone_ttl_ms = settings.tombstone_ttl_ms
        self._max_ttl_ms = max(settings.result_ttl_ms, settings.max_timeout_ms, 30 * 86_400_000)
        self._max_idempotency_keys = settings.max_idempotency_keys
        self._lease_ms = settings.lease_ms
        self._register = self._redis.register_script(_REGISTER)
        self._finish = self._redis.register_script(with_announce(_FINISH))
        self._cache_set = self._redis.register_script(with_announce(_CACHE_SET))
        self._cache_delete = self._redis.register_script(_CACHE_DELETE)
        self._queue = QueueScripts(self._redis)
        self.owner = secrets.token_hex(8)
        #: The id of this process's reply channels (`Replies`), in every key it queues or
        #: sends: the ends of its queued keys, and of keys it sends that another process ended
        #: (a cancel), are announced there.
        self.reply_id = self.owner + BATCHED_REPLIES
        self._pending_record = codec.pending_record_of(self.owner, self.reply_id)
        self._jobs: dict[str, Job] = {}
        self._caller_jobs = 0
        self._lock = threading.Lock()
        self._alive: dict[str, float] = {}  # owner -> until when it is believed alive
        self._cache_unwatches: dict[tuple[str, Callable[[object], None]], Callable[[], None]] = {}
        # Results written behind and not landed yet: this process reads them from here.
        self._ending: dict[str, Result] = {}
        # Queued submits written behind and not landed yet (pending, for this process).
        self._queuing: dict[str, Job] = {}
        #: Terminal writes that lost to an earlier one (a reader's worker_lost, say).
        self.dropped_writes = 0
        #: Called (on the lease thread) with each job of this process whose key another
        #: process ended, e.g. cancelled: the client stops sending it.
        self.on_ended_elsewhere: Callable[[Job], None] | None = None
        self._closing = threading.Event()
        self._leased = False  # see _take_lease
        # Fails here, clearly, if Redis is not there or is a Cluster node named as one Redis,
        # or refuses what the URL asks (a database it does not have, say).
        try:
            self._call(check_not_a_cluster_node, self._redis, self._url)
            # A read, not the lease: a process that only reads must work on a Redis that
            # refuses writes (full under noeviction, a read-only replica). The lease is
            # taken at the first send (see _take_lease).
            self._call(self._redis.ping)
        except ResponseError as exc:
            disconnect(self._redis)
            raise InvalidValue(
                f"store URL {self._redacted_url()!r}: Redis refused it: {exc}"
            ) from None
        self._leases = threading.Thread(target=self._keep_lease, name="postkey-lease", daemon=True)
        self._leases.start()
        # A wait gives up on a Redis that stopped answering as a call does: after its socket
        # timeout and one retry.
        self._give_up_s = 2 * settings.store_timeout_ms / 1000.0
        self._hub = WaitHub(self._redis, self._names, self._check, _RECHECK_S, self._give_up_s)
        self._hub.on_down = self._release_for_outage
        self._replies = Replies(
            self._hub.listen,
            self._names,
            self.reply_id,
            self._read_many,
            self._lookup,
            sent_here=self._ended_elsewhere_heard,
            confirmed=self._ended_elsewhere_missed,
        )
        self._writes = WriteBehind(self._redis, give_up_s=self._lease_ms / 1000.0)
        # Bound once: an attribute lookup of a method makes a new object every time.
        self._when_written: Done = self._written
        self._when_landed: Done = self._landed

    @property
    def max_ttl_ms(self) -> int:
        """The longest TTL a result or cache value may be given, in ms."""
        return self._max_ttl_ms

    # -- talking to Redis ------------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except UNAVAILABLE as exc:
            writes = getattr(self, "_writes", None)  # None while the store is being made
            if writes is not None:
                writes.healthy = False  # submits write synchronously until Redis answers
            raise StoreUnavailable(
                f"the store {self._redacted_url()} did not answer: {exc}"
            ) from None
        except REFUSED_WRITE as exc:
            raise StoreUnavailable(
                f"the store {self._redacted_url()} refused a write: {exc}"
            ) from None
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            # Another application sharing the Redis wrote under postkey's prefix.
            raise KeyConflict(
                f"a name under the store's prefix holds a value postkey did not write: {exc}"
            ) from None

    def _redacted_url(self) -> str:
        return redacted_url(self._url)

    def _release_for_outage(self) -> None:
        """(The hub's thread) Redis stopped answering: the waits on reply channels give up too
        (the hub released its own waiters). Keys this process sends are woken by their own
        results, which the engine makes without Redis."""
        self._replies.release_all(STORE_DOWN)

    def _gave_up(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"the store {self._redacted_url()} did not answer for {self._give_up_s:g} s:"
            " the wait gave up"
        )

    def _renew_lease(self) -> bool:
        """Renew the lease; False if it was gone (first time, or Redis lost it)."""
        old = self._redis.set(self._names.owner(self.owner), b"1", px=self._lease_ms, get=True)
        return old is not None

    def _take_lease(self) -> None:
        """Before this process's first key is written: its lease, which every pending record
        it writes names (a record whose owner has none ends as worker_lost for readers).

        Raises:
            StoreUnavailable: Redis did not answer, or refused the write.
        """
        self._call(self._renew_lease)  # refused (full, a read-only replica): StoreUnavailable
        self._leased = True

    def _keep_lease(self) -> None:
        while not self._closing.wait(self._lease_ms / 3000.0):
            try:
                if self._leased and not self._renew_lease():
                    self._restore_pending()
                self._stop_ended_elsewhere()
            except STORE_ERRORS as exc:
                log.warning("could not renew this process's lease in the store: %s", exc)
            except Exception:  # a bug here must not end the lease: keys would end as lost
                log.exception("the lease thread's upkeep raised")

    def _restore_pending(self) -> None:
        # Redis lost this process's lease, so perhaps its pending records too (a restart
        # without persistence): put back those that are missing, so other processes see the
        # keys as pending rather than unknown. SET NX: a record there already stays.
        with self._lock:
            jobs = list(self._jobs.values())
        if not jobs:
            return
        pipe = self._redis.pipeline(transaction=False)
        for job in jobs:
            record = codec.encode_pending(
                self.owner, job.fingerprint, job.submitted_at, "pending", self.reply_id
            )
            ttl = job.request.timeout_ms + 60_000 + self._lease_ms
            pipe.set(self._names.record(job.key), record, nx=True, px=ttl)
        restored = sum(1 for done in pipe.execute() if done)
        if restored:
            log.warning("the store had lost %d pending keys of this process: restored", restored)

    def _owner_alive(self, owner: str) -> bool:
        now = time.monotonic()
        if self._alive.get(owner, 0.0) > now:
            return True
        alive = bool(self._redis.exists(self._names.owner(owner)))
        if alive:
            self._alive[owner] = now + _OWNER_CACHE_S
        return alive

    # -- requests --------------------------------------------------------------------------------

    def register(self, job: Job, caller_key: bool) -> bool:
        """Make ``job``'s key visible as pending (see `Store.register`).

        Raises:
            KeyConflict, IdempotencyKeysFull: see `Store.register`.
            StoreUnavailable: Redis did not answer.
        """
        # Before the first key is visible: a cancel from another process is announced on the
        # reply channels, and the transfer here stops at once (see _ended_elsewhere_heard).
        self._replies.listen()
        if not self._leased:
            self._take_lease()
        fingerprint = job.fingerprint if caller_key and job.fingerprint is not None else ""
        if fingerprint:
            with self._lock:
                if self._caller_jobs >= self._max_idempotency_keys:
                    raise IdempotencyKeysFull(
                        f"{self._max_idempotency_keys} idempotency keys are pending in this"
                        " process (max_idempotency_keys); nothing was sent"
                    )
        if job.fingerprint is None:
            record = self._pending_record(job.submitted_at)
        else:
            record = codec.encode_pending(
                self.owner, job.fingerprint, job.submitted_at, "pending", self.reply_id
            )
        # The pending record outlives the request's own deadline: the engine ends it by then.
        pending_ttl = job.request.timeout_ms + 60_000 + self._lease_ms
        names = self._names
        keys = names.parts(job.key)[:2]
        args = (record, fingerprint, pending_ttl)  # tuples: see WriteBehind.put
        # Written before the submit returns (and so before anything is sent): a key handed out
        # is visible everywhere, and a sender killed right after still leaves it pending, to
        # end as worker_lost.
        if not fingerprint and self._writes.healthy:
            # A key postkey made cannot conflict: its record is written behind, in a batch
            # with others (one round trip for many submits), and always before its result
            # (the writes go in order). Other processes see it once the batch lands, within
            # a round trip; flush() waits for that. This process sees it as pending now.
            with self._lock:
                self._jobs[job.key] = job
            # Nothing to do once it lands: a write given up on is logged by the writer, one
            # line per write naming its key's record, and the key still ends here.
            self._writes.put(self._register, keys, args, None)
            return True
        outcome = self._call(self._register, keys, args)
        if outcome == 1:
            # Known here only once registered: a duplicate must not replace the first job.
            with self._lock:
                self._jobs[job.key] = job
                if fingerprint:
                    self._caller_jobs += 1
            return True
        if outcome == 0:
            return False
        raise KeyConflict(f"key {job.key!r} already names a different request (or a cache value)")

    def enqueue(self, job: Job, caller_key: bool, delivery: str) -> bool:
        """Queue ``job`` for the workers: its pending record and queue entry, in one step.
        False if ``caller_key`` and the key already names the same request.

        Raises:
            KeyConflict: the key names a different request or holds a cache value.
            StoreUnavailable: Redis did not answer.
        """
        fingerprint = job.fingerprint if caller_key and job.fingerprint is not None else ""
        # The submitting client's TTL, not the worker's, decides how long the result stays.
        ttl = job.ttl_ms or self._result_ttl_ms
        # Pending for as long as a result would be readable: a queue without workers holds it.
        pending_ttl = job.request.timeout_ms + self._result_ttl_ms
        names = self._names
        record_name, tombstone_name, _channel = names.parts(job.key)
        keys = (record_name, tombstone_name, names.queue_of(job.key))
        request = job.request
        args = (  # tuples: see WriteBehind.put
            fingerprint,
            pending_ttl,
            encode_request(job, delivery, ttl),
            job.key,
            delivery,
            request.timeout_ms,
            ttl,
            repr(job.submitted_at),
            request.url,
            self.reply_id,
        )
        if not fingerprint and self._writes.healthy:
            # Written behind, as `register` does, for the same reasons; until it lands this
            # process answers for the key (pending), and if it cannot land, ends it here.
            with self._lock:
                self._queuing[job.key] = job
            self._replies.remember(job.key, keep_ms=ttl)
            self._writes.put(self._queue.enqueue, keys, args, self._when_landed, job)
            return True
        outcome = _own_retry(self._call(self._queue.enqueue, keys, args), fingerprint)
        if outcome == 1:
            # Its end may be announced before this line: a wait on it reads it once more.
            self._replies.remember(job.key, heard_from_start=False, keep_ms=ttl)
            return True
        if outcome == 0:
            return False
        raise KeyConflict(f"key {job.key!r} already names a different request (or a cache value)")

    def _landed(self, job: Job, answer: Any) -> None:
        """(Writer thread) The queue entry of ``job`` was written (or could not be)."""
        answer = _own_retry(answer, "")  # written behind: only keys postkey made
        waiters = None
        with self._lock:
            self._queuing.pop(job.key, None)
            if answer != 1:  # no reply will come for it
                waiters = self._replies.forget(job.key)
            if answer is None:
                # Never queued, so never sent: the key ends here (only this process
                # ever knew it), as failed / not_queued.
                failure = job.failure(
                    ErrorKind.NOT_QUEUED,
                    f"the store {self._redacted_url()} did not answer: the request was"
                    " never queued, nothing was sent",
                )
                self._remember_here(job.key, failure)
        if waiters:
            final = self._ending.get(job.key)
            if final is not None:  # never a non-terminal Result: else they wait on
                wake_all(waiters, final, "key", job.key)

    def _remember_here(self, key: str, result: Result) -> None:
        """Keep a result only this process can know (bounded: the oldest go first)."""
        self._ending[key] = result
        if len(self._ending) > _MAX_KEPT_HERE:
            del self._ending[next(iter(self._ending))]

    def end_pending(self, key: str, kind: ErrorKind, message: str, owner: str = "*") -> bool:
        """End a pending key as failed / ``kind``, whoever sends it (if ``owner`` is '*') or
        if its record still names ``owner``. True if this call ended it; its sender, noticing,
        stops sending it (a worker within a heartbeat).

        Raises:
            StoreUnavailable: Redis did not answer.
        """
        if key in self._queuing:  # queued here, its record not written yet: write it first
            self._writes.flush(self._lease_ms / 1000.0)
        return bool(self._call(self._end_pending, key, kind, message, owner))

    def _end_pending(self, key: str, kind: ErrorKind, message: str, owner: str) -> Any:
        """`end_pending`'s script call, its errors as redis-py raises them."""
        keys = list(self._names.parts(key))
        args = [owner, codec.kind_code(kind), message, self._result_ttl_ms, self._tombstone_ttl_ms]
        return self._queue.end_pending(keys, args)

    def ended_elsewhere(self, shard: int | None = None) -> list[Job]:
        """This process's jobs (of one ``shard``, or all) whose keys another process ended (a
        cancel): stop sending them. Such an end is announced (`_ended_elsewhere_heard`); this
        read finds those that were not heard (the lease thread's last resort)."""
        with self._lock:
            jobs = [
                job
                for key, job in self._jobs.items()
                if key not in self._ending and (shard is None or shard_of(key) == shard)
            ]
        records = self._records_of([job.key for job in jobs])
        return [
            job
            for job, record in zip(jobs, records, strict=True)
            if record is not None and record[3:4] != b"P"
        ]

    def _ended_elsewhere_heard(self, key: str) -> None:
        """(Hub thread) ``key`` was announced ended on our reply channels but is none of our
        queued keys: if it is one we send, another process ended it (a cancel). Stop sending
        it; the write of our own result is then dropped, and its waiters get what the store
        holds. Checked in the store first: anyone may announce anything."""
        hook = self.on_ended_elsewhere
        with self._lock:
            job = self._jobs.get(key)
            if hook is None or job is None or key in self._ending:
                return
        try:
            record = self._redis.get(self._names.record(key))
        except STORE_ERRORS:
            return  # the lease thread's read finds it
        if record is not None and record[3:4] != b"P":
            hook(job)

    def _stop_ended_elsewhere(self, shard: int | None = None) -> None:
        """Stop sending this process's jobs (of one ``shard``, or all) that another process
        ended: `ended_elsewhere` read, each handed to `on_ended_elsewhere`.

        Raises:
            redis.RedisError: the read failed.
        """
        hook = self.on_ended_elsewhere
        if hook is not None:
            for job in self.ended_elsewhere(shard):
                hook(job)

    def _ended_elsewhere_missed(self, shard: int) -> None:
        """(Hub thread) Our channel of ``shard`` is confirmed, first or after a reconnect: ends
        announced before were not heard (a caller's key may be cancelled by another process
        before the first confirmation), so read our keys of that shard, if there are any."""
        try:
            self._stop_ended_elsewhere(shard)
        except STORE_ERRORS:
            pass  # the lease thread's read finds them

    def _records_of(self, keys: list[str]) -> list[Any]:
        """The records of ``keys`` (None where there is none), one MGET per 512 keys."""
        names = self._names
        out: list[Any] = []
        for start in range(0, len(keys), 512):
            out += mget(self._redis, [names.record(k) for k in keys[start : start + 512]])
        return out

    def job(self, key: str) -> Job | None:
        """The pending job under ``key`` that this process sends (not one whose result is
        already on its way to the store)."""
        return None if key in self._ending else self._jobs.get(key)

    def finish(self, job: Job, result: Result) -> None:
        """Store ``job``'s terminal result and publish it (written behind, in order after the
        key's pending record); the job is forgotten here once the write has landed. A Redis that
        does not answer is retried for up to one lease; then the result is logged as lost."""
        with self._lock:
            if self._jobs.get(job.key) is not job or job.key in self._ending:
                return  # finished already: the first terminal result wins
            self._ending[job.key] = result
        result.fingerprint = job.fingerprint
        keys, args = self._terminal_write(job.key, result, self.owner, job.ttl_ms)
        # A method and the pair, not a closure per result: fewer objects for the collector.
        self._writes.put(self._finish, keys, args, self._when_written, (job, result))

    def _written(self, finished: tuple[Job, Result], answer: Any) -> None:
        """(Writer thread) A result of ours landed (or was dropped, or lost): forget the job
        and wake its waiters."""
        job, result = finished
        with self._lock:
            if answer == 0:
                self.dropped_writes += 1
            self._ending.pop(job.key, None)
            if self._jobs.get(job.key) is job:
                del self._jobs[job.key]
                if job.fingerprint is not None:
                    self._caller_jobs -= 1
            waiters, job.waiters = job.waiters, None
        if waiters:
            # What the store now holds: ours, or (dropped) whatever ended the key first.
            final = result if answer != 0 else self._read_after_loss(job.key, result)
            wake_all(waiters, final, "key", job.key)

    def _read_after_loss(self, key: str, ours: Result) -> Result:
        try:
            return self._lookup(key)
        except STORE_ERRORS:
            return ours

    def _watch_result(
        self, key: str, wake: Callable[[Result], None]
    ) -> tuple[Callable[[], None], bool]:
        """Call ``wake`` with ``key``'s terminal Result; returns the undo, and True if the
        caller must read the key once more (its result may have been announced before this
        process listened). A key this process sends is woken by its own result landing, with
        no pub/sub at all; a key it queued by its reply channels; others by the hub."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None:
                job.add_waiter(wake)
                return (lambda: self._unwatch_job(job, wake)), False
        mine = self._replies.watch(key, wake)
        if mine is not None:
            return mine
        return self._hub.watch(key, "result", wake), False  # type: ignore[arg-type]

    def _unwatch_job(self, job: Job, wake: Callable[[Result], object]) -> None:
        with self._lock:
            job.remove_waiter(wake)

    def _terminal_write(
        self, key: str, result: Result, owner: str, ttl_ms: int | None
    ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        """KEYS and ARGV of `_FINISH` for ``result`` on behalf of ``owner`` (tuples: see
        WriteBehind.put)."""
        ttl = ttl_ms or self._result_ttl_ms
        own = "1" if owner == self.owner else "0"
        record = codec.encode_result(result)
        return self._names.parts(key), (record, owner, ttl, ttl + self._tombstone_ttl_ms, own)

    def lookup(self, key: str) -> Result:
        """What is known of ``key`` now.

        Raises:
            StoreUnavailable: Redis did not answer.
        """
        result: Result = self._call(self._lookup, key)
        return result

    def _lookup(self, key: str) -> Result:
        mine = self._local(key)  # before the read: see _local
        pair: list[Any] = self._redis.mget(self._names.parts(key)[:2])
        return self._settled_or_pending(key, pair[0], pair[1], mine)

    def _local(self, key: str) -> tuple[Result | None, Job | None]:
        """What this process knows of ``key``: a result written behind, its job. Taken BEFORE
        reading Redis: a read that started before a result landed shows the pending record, and
        must still be answered with the result this process was writing."""
        return self._ending.get(key), self._jobs.get(key) or self._queuing.get(key)

    def _settled_or_pending(
        self,
        key: str,
        record: bytes | None,
        tombstone: bytes | None,
        mine: tuple[Result | None, Job | None],
    ) -> Result:
        ending, local = mine
        if ending is not None and (record is None or record[3:4] == b"P"):
            return ending  # written behind: on its way to the store
        if record is None:
            if local is not None:  # this process still sends it (a restarted Redis lost it)
                return Result(key, local.state, submitted_at=local.submitted_at)
            if tombstone is not None:  # "E", or a caller key's "F:<fingerprint>"
                return Result(key, State.EXPIRED, error=_EXPIRED_HINT)
            return Result(key, State.UNKNOWN, error=_UNKNOWN_HINT)
        try:
            kind = codec.kind_of(record)
            if kind == b"R":
                return codec.decode_result(key, record)
            if kind != b"P":
                return Result(key, State.UNKNOWN, error=_VALUE_HINT)
            if local is not None:  # ours: no need to read the record's metadata
                return Result(key, local.state, submitted_at=local.submitted_at)
            meta = codec.decode_pending(record)
        except (codec.RecordError, ValueError) as exc:
            return Result(
                key, State.UNKNOWN, error=f"the store holds a record postkey cannot read: {exc}"
            )
        if meta.get("queued"):
            return self._queued_state(key, meta)
        if meta["owner"] == self.owner:
            # Ours, and not in the table taken before the read: ended since (the next read
            # finds the result). Never a lease check against ourselves.
            return Result(key, State.PENDING, submitted_at=meta["submitted_at"])
        # A record younger than a lease may be a live sender's whose lease is not back yet
        # (Redis restarted empty: the sender takes it again at its next renewal, within a
        # third of lease_ms); a dead sender's ends once it is older.
        submitted = meta["submitted_at"]
        if time.time() - submitted < self._lease_ms / 1000.0 or self._owner_alive(meta["owner"]):
            return Result(key, State.PENDING, submitted_at=submitted)
        return self._end_as_lost(key, meta)

    def _queued_state(self, key: str, meta: dict[str, Any]) -> Result:
        """A queued key: pending or running as its record says. Workers own it (a dead one's
        entry is taken over by another), so no lease check here; but a key still pending long
        after its deadline had no worker at all, and this reader ends it."""
        submitted = meta["submitted_at"]
        state = State.RUNNING if meta.get("state") == "running" else State.PENDING
        if time.time() < submitted + meta["timeout_ms"] / 1000.0 + QUEUED_GRACE_S:
            return Result(key, state, submitted_at=submitted)
        if meta["owner"]:
            kind, message = ErrorKind.WORKER_LOST, _NO_WORKER_FINISHED
        else:
            kind, message = ErrorKind.TIMEOUT, _NO_WORKER_TOOK
        try:
            ended = self._end_pending(key, kind, message, meta["owner"])
        except REFUSED_WRITE:  # a reader answers with what it knows; a later one ends it
            return Result(key, state, submitted_at=submitted)
        if not ended:
            with self._lock:
                self.dropped_writes += 1
        return self._lookup(key)

    def _end_as_lost(self, key: str, meta: dict[str, Any]) -> Result:
        lost = Result(
            key,
            State.FAILED,
            error_kind=ErrorKind.WORKER_LOST,
            error="the process sending this request stopped (its lease in the store lapsed)"
            " before the request ended; it may or may not have reached the server",
            submitted_at=meta["submitted_at"],
            finished_at=time.time(),
            fingerprint=meta.get("fingerprint"),
        )
        keys, args = self._terminal_write(key, lost, meta["owner"], None)
        try:
            written = self._finish(keys, args)
        except REFUSED_WRITE:  # a reader answers with what it knows; a later one ends it
            return Result(key, State.PENDING, submitted_at=meta["submitted_at"])
        if not written:
            with self._lock:
                self.dropped_writes += 1  # the owner's late result (or another reader) won
        return self._lookup(key)  # whatever won: this failure, or the owner's late result

    # -- waiting ---------------------------------------------------------------------------------

    def _check(self, wanted: list[tuple[str, str]], known: dict[str, bytes]) -> list[object]:
        """For the wait hub: what each (key, kind) settles to now, or MISSING. ``known`` holds
        records that came with their announcement: only the other keys are read."""
        names = self._names
        mine = [self._local(key) for key, _kind in wanted]
        unread = list({key for key, _kind in wanted if key not in known})
        flat: list[str] = []
        for key in unread:
            flat += names.parts(key)[:2]
        fetched: list[Any] = mget(self._redis, flat) if flat else []
        read = {key: (fetched[2 * i], fetched[2 * i + 1]) for i, key in enumerate(unread)}
        out: list[object] = []
        for i, (key, kind) in enumerate(wanted):
            record, tombstone = read[key] if key in read else (known[key], None)
            if kind == "value":
                out.append(self._value_of(key, record))
                continue
            result = self._settled_or_pending(key, record, tombstone, mine[i])
            out.append(MISSING if result.state in (State.PENDING, State.RUNNING) else result)
        return out

    def watch(
        self, key: str, wake: Callable[[Result], None]
    ) -> tuple[Result, None] | tuple[None, Callable[[], None]]:
        """See `Store.watch`.

        Raises:
            StoreUnavailable: Redis did not answer.
        """
        now = self.lookup(key)
        if now.state not in (State.PENDING, State.RUNNING):
            return now, None
        undo, read_again = self._watch_result(key, wake)
        if read_again:
            self._replies.read_again([key])
        return None, undo

    def wait(self, key: str, timeout: object) -> Result:
        """See `Store.wait`."""
        return self.wait_many([key], timeout)[0]

    def wait_many(self, keys: list[str], timeout: object) -> list[Result]:
        """See `Store.wait_many`: one sleep, woken when the last key settles.

        Raises:
            InvalidValue: a bad ``timeout``, before anything is registered.
            StoreUnavailable: Redis did not answer.
        """
        seconds = check_wait_timeout(timeout)
        settling = _Settling()
        # Keys this process sends need no read: each is woken by its own result landing (under
        # the lock its write takes to wake them). Only the others are read and watched. One
        # waker for all of them, on their jobs (as the memory store does): no object per key.
        wake = settling.wake_with_result
        with self._lock:
            jobs = self._jobs
            sent_here = {k for k in keys if k in jobs}
            for key in sent_here:
                jobs[key].add_waiter(wake)
        try:
            # One another process ended (a cancel) is announced to us, and its transfer here
            # stopped: its waiters get what the store holds when our own write is dropped.
            others = [k for k in keys if k not in sent_here] if sent_here else keys
            # Keys this process queued need no read if their results were heard already, or
            # if they cannot have ended unheard (see Replies.claim).
            known, silent = self._replies.claim(others)
            unknown = [k for k in others if k not in known and k not in silent]
            known.update(zip(unknown, self._read_many(unknown), strict=True))
            waiting = {k for k in others if k in silent or known[k].state in _NOT_ENDED}
            undo, again = self._watch_all(waiting, settling)
            try:
                self._replies.read_again(again)
                # The hub hands each key's terminal Result to its waiter: only keys it did not
                # settle (the wait timed out) are read again.
                settled = settling.wait(len(waiting) + len(sent_here), self._asleep_for(seconds))
            finally:
                for unwatch in undo:
                    unwatch()
        finally:
            if sent_here:
                self._unwatch_here(sent_here, wake)
        if settling.down:
            raise self._gave_up()
        again = [k for k in sent_here | waiting if k not in settled]
        settled.update(zip(again, self._read_many(again), strict=True))
        return [settled[k] if k in settled else known[k] for k in keys]

    def _read_many(self, keys: list[str]) -> list[Result]:
        """What is known of each key now, read in batches (one MGET per 512 keys)."""
        out: list[Result] = []
        names = self._names
        for start in range(0, len(keys), 512):
            chunk = keys[start : start + 512]
            flat = [name for k in chunk for name in names.parts(k)[:2]]
            mine = [self._local(k) for k in chunk]
            values: list[Any] = self._call(mget, self._redis, flat)
            out += [
                self._settled_or_pending(k, values[2 * i], values[2 * i + 1], mine[i])
                for i, k in enumerate(chunk)
            ]
        return out

    def _watch_all(
        self, keys: set[str], settling: _Settling
    ) -> tuple[list[Callable[[], None]], list[str]]:
        """Watch every key of ``keys`` (none sent here) for ``settling``, reading nothing: the
        undos, and the keys to read once more (`Replies.read_again`: their results may have
        been announced before this process listened). Keys this process queued are woken by
        its reply channels, the others by the hub."""
        if not keys:
            return [], []
        wake = settling.wake_with_result  # a Result names its key: one wake for all of them
        watched, again, others = self._replies.watch_many(keys, wake)
        undo = [lambda: self._replies.unwatch_many(watched, wake)] if watched else []
        for key in others:
            undo.append(self._hub.watch(key, "result", settling.waker(key)))
        return undo, again

    @property
    def closing(self) -> bool:
        """See `Store.closing`: close() sets it before it releases the waiters."""
        return self._closing.is_set()

    def _asleep_for(self, seconds: float | None) -> float | None:
        """How long a wait, its watches in place, may sleep: not at all once the store is
        closing (close() released the waiters before, or is about to: it set the flag first)."""
        return 0.0 if self.closing else seconds

    def _unwatch_here(self, keys: set[str], wake: Callable[[Result], object]) -> None:
        # The waker of a wait that ended, off the jobs it did not hear from (a timeout).
        with self._lock:
            jobs = self._jobs
            for key in keys:
                job = jobs.get(key)
                if job is not None:
                    job.remove_waiter(wake)

    def subscriptions(self) -> int:
        """Channels this store is subscribed to now (0 when nobody waits)."""
        return self._hub.subscriptions()

    # -- the general cache -----------------------------------------------------------------------

    def _check_ttl(self, ttl_ms: object) -> int:
        # Typed object: what the caller gave, checked here (the compiled build would otherwise
        # refuse a wrong type with a bare TypeError before this check could say what is wrong).
        if ttl_ms is None:
            return self._result_ttl_ms
        if type(ttl_ms) is not int or not 1 <= ttl_ms <= self._max_ttl_ms:
            raise InvalidValue(
                f"ttl_ms must be an int between 1 and {self._max_ttl_ms}, got {ttl_ms!r}"
            )
        return ttl_ms

    def cache_set(self, key: str, value: object, ttl_ms: object) -> None:
        """See `Store.cache_set`."""
        if not isinstance(value, str | bytes):
            raise InvalidValue(f"cache values must be str or bytes, not {type(value).__name__}")
        ttl = self._check_ttl(ttl_ms)
        names = self._names
        keys = list(names.parts(key))
        conflict = key in self._jobs or key in self._queuing  # its record may not have landed
        if conflict or self._call(self._cache_set, keys, [codec.encode_value(value), ttl]) != 1:
            raise KeyConflict(f"key {key!r} names a request; cache_set cannot overwrite it")

    def _value_of(self, key: str, record: bytes | None) -> object:
        if record is None:
            return MISSING
        try:
            kind = codec.kind_of(record)
            if kind == b"R":
                return codec.decode_result(key, record)
            if kind == b"P":
                return MISSING
            return codec.decode_value(record)
        except codec.RecordError:
            return MISSING

    def cache_get(self, key: str, default: Any = None) -> Any:
        """See `Store.cache_get`."""
        ending = self._ending.get(key)
        if ending is not None:
            return ending  # written behind, not landed yet: read your own write
        record: Any = self._call(self._redis.get, self._names.record(key))
        value = self._value_of(key, record)
        return default if value is MISSING else value

    def cache_exists(self, key: str) -> bool:
        """See `Store.cache_exists`."""
        return self.cache_get(key, MISSING) is not MISSING

    def cache_delete(self, key: str) -> bool:
        """See `Store.cache_delete`."""
        self._replies.drop(key)  # a copy heard on a reply channel must not come back
        keys = list(self._names.parts(key)[:2])
        with self._lock:
            behind = key in self._ending
        if behind:
            # Its result is still being written behind (a `take` right as it ended): deleted
            # now, that write would land after and bring the result back. Queued after it.
            self._writes.put(self._cache_delete, keys, [], None)
            return True
        return bool(self._call(self._cache_delete, keys, []))

    def _records(self) -> list[bytes]:
        return list(self._redis.scan_iter(match=self._names.records_pattern(), count=1000))

    def cache_count(self) -> int:
        """Live values and results under this prefix (a SCAN: O(keys), for operators)."""

        def count() -> int:
            names = self._records()
            total = 0
            for start in range(0, len(names), 1000):
                pipe = self._redis.pipeline(transaction=False)
                for name in names[start : start + 1000]:
                    pipe.getrange(name, 3, 3)
                total += sum(1 for kind in pipe.execute() if kind in (b"R", b"S", b"B"))
            return total

        return int(self._call(count))

    def cache_clear(self) -> None:
        """Remove every value and result under this prefix (pending keys stay)."""

        def clear() -> None:
            for name in self._records():
                self._cache_delete([name, name[:-1] + b"t"], [])

        self._call(clear)

    def cache_watch(self, key: str, wake: Callable[[object], None]) -> Any:
        """See `Store.cache_watch`."""
        found = self.cache_get(key, MISSING)
        if found is not MISSING:
            return found
        unwatch = self._hub.watch(key, "value", wake)
        with self._lock:
            self._cache_unwatches[(key, wake)] = unwatch
        return MISSING

    def cache_unwatch(self, key: str, wake: Callable[[object], None]) -> None:
        """See `Store.cache_unwatch`."""
        with self._lock:
            unwatch = self._cache_unwatches.pop((key, wake), None)
        if unwatch is not None:
            unwatch()

    def cache_wait(self, key: str, timeout: object, default: Any = None) -> Any:
        """See `Store.cache_wait`."""
        seconds = check_wait_timeout(timeout)
        box: list[object] = []
        gate = threading.Event()

        def wake(value: object) -> None:
            box.append(value)
            gate.set()

        found = self.cache_watch(key, wake)
        if found is not MISSING:
            return found
        try:
            gate.wait(self._asleep_for(seconds))
        finally:
            self.cache_unwatch(key, wake)
        if box and box[0] is STORE_DOWN:
            raise self._gave_up()
        return box[0] if box and box[0] is not MISSING else default

    # -- upkeep ----------------------------------------------------------------------------------

    def tick(self) -> int:
        """Nothing to reclaim: Redis expires what postkey writes (every key has a TTL)."""
        return 0

    def release_waiters(self) -> None:
        """Wake every waiter with its default (interpreter exit)."""
        self._hub.release_all()
        local: list[tuple[str, dict[Callable[[Result], object], None]]] = []
        with self._lock:
            for key, job in self._jobs.items():
                if job.waiters:
                    local.append((key, job.waiters))
                    job.waiters = None
        for key, waiters in local:
            wake_all(waiters, MISSING, "key", key)
        self._replies.release_all()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the keys and results written behind to land;
        True if they all have."""
        return self._writes.flush(timeout)

    def close(self) -> None:
        """Stop the lease and the waits; the lease is given up, so anything still pending here
        ends as worker_lost for its readers."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._writes.close(self._lease_ms / 1000.0)  # what is queued lands first
        # Nothing can wake a wait any more: those asleep return what the store holds (a
        # wait that begins from now on returns at once, see _asleep_for).
        self.release_waiters()
        self._hub.close()
        try:
            self._redis.delete(self._names.owner(self.owner))
        except STORE_ERRORS:
            pass
        disconnect(self._redis)


_UNKNOWN_HINT = (
    "no request or value under this key in the store: never issued, or forgotten after its"
    " result's TTL and tombstone time"
)
_EXPIRED_HINT = "its result's TTL passed"
_NO_WORKER_TOOK = "no worker took the request from the queue before its deadline"
_NO_WORKER_FINISHED = (
    "the worker sending it stopped and no other took it over before its deadline; it may or"
    " may not have reached the server"
)
_VALUE_HINT = "the key holds a cache value, not a request (read it with cache_get)"


def _own_retry(answer: Any, fingerprint: str) -> Any:
    """The queue script's answer, where -1 (the key holds a record already) for a key postkey
    made (no ``fingerprint``) means 1: such a key cannot collide, so the record is this very
    write, made by a first try whose answer was lost and that redis-py retried. Queued once."""
    return 1 if answer == -1 and not fingerprint else answer


class _Settling:
    """The keys one wait sleeps on: each waker records its key's terminal Result; the sleep
    ends when every awaited key has one, or waiters are released (exit)."""

    __slots__ = ("_expected", "_gate", "_lock", "down", "settled")

    def __init__(self) -> None:
        self._gate = threading.Event()
        self._lock = threading.Lock()
        self._expected: int | None = None
        self.settled: dict[str, Result] = {}
        #: Woken because Redis stopped answering (STORE_DOWN): the wait raises.
        self.down = False

    def waker(self, key: str) -> _Waker:
        return _Waker(self, key)

    def wake_with_result(self, value: object) -> None:
        """A waker for many keys at once: a Result names its own key (MISSING: released)."""
        self.record(value.key if isinstance(value, Result) else "", value)

    def record(self, key: str, value: object) -> None:
        with self._lock:
            if isinstance(value, Result):
                self.settled[key] = value
            elif value is STORE_DOWN:
                self.down = True
            expected = self._expected
            if (
                value is MISSING
                or value is STORE_DOWN
                or (expected is not None and len(self.settled) >= expected)
            ):
                self._gate.set()

    def wait(self, expected: int, seconds: float | None) -> dict[str, Result]:
        """Sleep until ``expected`` keys settled (or ``seconds`` passed); the Results so far."""
        with self._lock:
            self._expected = expected
            if len(self.settled) >= expected:
                self._gate.set()
        if expected:
            self._gate.wait(seconds)
        with self._lock:
            return dict(self.settled)


class _Waker:
    """Wakes one key of a `_Settling` (an object, not a closure: a wait removes its own)."""

    __slots__ = ("key", "settling")

    def __init__(self, settling: _Settling, key: str) -> None:
        self.settling = settling
        self.key = key

    def __call__(self, value: object) -> None:
        self.settling.record(self.key, value)
