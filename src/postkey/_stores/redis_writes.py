"""Write-behind for a Redis store: the writes of new keys and of results, pipelined in batches.

One Redis round trip per write would cap a process at a few thousand requests a second (each
blocking call also hands the GIL back and forth with the engine thread). Writes go instead to one
thread that sends whatever has queued up as one pipeline, in submission order, so a key's
pending record is always written before its result. A batch that meets a connection error is
sent again with backoff for up to ``give_up_s``; then its writes are reported as failed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Any

import redis
from redis.commands.core import Script

from .redis_connect import REFUSED_WRITE, UNAVAILABLE, evalsha, is_cluster
from .redis_queue import REPLY_BATCH

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # redis-py without hiredis: its own pipeline
    _pack = None

log = logging.getLogger("postkey")

#: Called as ``done(arg, answer)``: the ``arg`` given with the write (what it was for, so that a
#: write needs no closure of its own), and the script's answer, or None when the write could not
#: be made.
Done = Callable[[Any, Any], None]

_BATCH = 512
# Writes sent again, with backoff, for up to give_up_s: a Redis that did not answer, and one
# that refused to write (full: its TTLs or an operator may make room; a replica promoted).
_AGAIN = UNAVAILABLE + REFUSED_WRITE


def call_scripts(
    client: Any, calls: Sequence[tuple[Any, ...]], held: HeldConnection | None = None
) -> list[Any]:
    """Run script calls in one pipeline; their answers (an exception for a call that failed).
    Each call is (script, KEYS, ARGV), and may carry more items after those (ignored): the
    writer passes its queued operations as they are. ``held``: send on that connection rather
    than one taken from the pool for this call.

    By EVALSHA alone: redis-py's own script calls in a pipeline first ask SCRIPT EXISTS, one
    more round trip per batch. On one Redis (not a Cluster, whose keys live on several nodes),
    the calls of one script go as one EVALSHA of its `many` form (see `_batched`). A call that
    meets NOSCRIPT (a Redis restarted without persistence has an empty script cache, a many
    form's first use) did not run: its script is loaded and the call sent again, with every
    later call that shares a key with a call sent again, so that a key's calls still run in
    order (those ran once already: every script postkey sends can run twice harmlessly).

    Raises:
        redis.ConnectionError, redis.TimeoutError: the store did not answer (the calls may or
            may not have run: every script postkey sends can run twice harmlessly).
    """
    if _packs_for(client):
        wire = _batched(client, calls)
        send = _send_packed
    else:
        wire = [(call[0], call[1], call[2], [i]) for i, call in enumerate(calls)]
        send = _send_pipelined
    got = send(client, wire, held)
    again = _to_send_again(wire, got)
    if again:
        for script in {wire[i][0].sha: wire[i][0] for i in again}.values():
            client.script_load(script.script)
        for i, answer in zip(again, send(client, [wire[i] for i in again], held), strict=True):
            got[i] = answer
    answers: list[Any] = [None] * len(calls)
    for (_script, _keys, _args, positions), answer in zip(wire, got, strict=True):
        if len(positions) == 1:
            answers[positions[0]] = answer
        elif isinstance(answer, Exception):
            for i in positions:
                answers[i] = answer
        else:
            for i, one in zip(positions, answer, strict=True):
                answers[i] = (
                    redis.ResponseError(one[len(_FAILED) :].decode(errors="replace"))
                    if type(one) is bytes and one.startswith(_FAILED)
                    else one
                )
    return answers


def _packs_for(client: Any) -> bool:
    """True if calls to ``client`` go packed by hiredis on one connection (one Redis, not a
    Cluster, whose keys live on several nodes)."""
    return _pack is not None and not is_cluster(client)


def _to_send_again(
    wire: Sequence[tuple[Script, Sequence[str], Sequence[Any], list[int]]], got: list[Any]
) -> list[int]:
    """The calls to send again after some met NOSCRIPT: those, and every later call on a key
    of a call sent again (in order)."""
    again: list[int] = []
    touched: set[str] = set()
    for i, answer in enumerate(got):
        keys = wire[i][1]
        if isinstance(answer, redis.exceptions.NoScriptError) or (
            touched and not touched.isdisjoint(keys)
        ):
            again.append(i)
            touched.update(keys)
    return again


# A script's `many` form: the script as a function, run for each call's KEYS and ARGV (ARGV[1]
# and ARGV[2] say how many of each a call has); one answer per call, a call's error as a
# string starting with `_FAILED` (caught: the other calls still run and answer). Reply
# announcements of the keys it ends are gathered (REPLIES, see redis_queue._PRELUDE) and sent
# as one message per reply channel.
_MANY = """
local REPLIES = {}
local function one(KEYS, ARGV)
%s
end
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 0, #KEYS / nk - 1 do
  local k, a = {}, {}
  for j = 1, nk do k[j] = KEYS[i * nk + j] end
  for j = 1, na do a[j] = ARGV[2 + i * na + j] end
  local ok, r = pcall(one, k, a)
  if not ok then
    r = '\\0postkey: a call failed\\0' .. tostring(r)
  elseif r == nil then
    r = false
  end
  out[i + 1] = r
end
for chan, items in pairs(REPLIES) do
  redis.call('SPUBLISH', chan, '%s' .. table.concat(items))
end
return out
"""
_FAILED = b"\0postkey: a call failed\0"  # as _MANY writes it
_many_forms: dict[str, Script] = {}


def _many_form(client: Any, script: Script) -> Script:
    form = _many_forms.get(script.sha)
    if form is None:
        lua = script.script if isinstance(script.script, str) else bytes(script.script).decode()
        # The script's own REPLIES (nil: announce each key at once) gives way to the form's.
        lua = lua.replace("\nlocal REPLIES = nil\n", "\n")
        form = _many_forms[script.sha] = client.register_script(_MANY % (lua, REPLY_BATCH.decode()))
    return form


def _batched(
    client: Any, calls: Sequence[tuple[Any, ...]]
) -> list[tuple[Script, Sequence[str], Sequence[Any], list[int]]]:
    """``calls`` as fewer calls: those of one script (with as many KEYS and ARGV) together,
    as one call of its `many` form, with the positions of the calls each answers for.

    Calls are only put together within a stretch in which no key (KEYS[1]) comes twice: the
    calls of one key run in the order they were made (a key's pending record before its
    result), those of different keys in any order."""
    wire: list[tuple[Script, Sequence[str], Sequence[Any], list[int]]] = []
    seen: set[str] = set()
    # (script, #KEYS, #ARGV) -> the script, all KEYS, all ARGV and the positions of its calls
    groups: dict[tuple[Script, int, int], tuple[Script, list[str], list[Any], list[int]]] = {}

    def close() -> None:
        for script, keys, args, positions in groups.values():
            if len(positions) == 1:
                wire.append((script, keys, args, positions))
            else:
                args[:0] = [len(keys) // len(positions), len(args) // len(positions)]
                wire.append((_many_form(client, script), keys, args, positions))
        groups.clear()
        seen.clear()

    # Per call: the writer's hot loop (two calls per request with the shared store).
    add_seen = seen.add
    find = groups.get
    for i, call in enumerate(calls):
        script, keys, args = call[0], call[1], call[2]
        if not keys:  # the many form counts calls by their keys: a keyless call goes alone
            close()
            wire.append((script, keys, args, [i]))
            continue
        if keys[0] in seen:
            close()
        add_seen(keys[0])
        kind = (script, len(keys), len(args))
        group = find(kind)
        if group is None:
            groups[kind] = (script, list(keys), list(args), [i])
        else:
            group[1].extend(keys)
            group[2].extend(args)
            group[3].append(i)
    close()
    return wire


def _send_pipelined(
    client: Any, calls: Sequence[tuple[Any, ...]], held: HeldConnection | None = None
) -> list[Any]:
    del held  # a Cluster's pipeline takes connections of its nodes' own pools
    pipe = client.pipeline(transaction=False)
    for call in calls:
        evalsha(pipe, call[0].sha, call[1], call[2])
    answers: list[Any] = pipe.execute(raise_on_error=False)
    return answers


def _send_packed(
    client: Any, calls: Sequence[tuple[Any, ...]], held: HeldConnection | None = None
) -> list[Any]:
    # The same pipeline without redis-py's Pipeline: the commands packed by hiredis in C and
    # written at once, the answers read one by one. Profiled on W1 with the shared store,
    # redis-py's per-command packing, checks and parsing were most of a writer's time.
    assert _pack is not None
    # One buffer, one write: given a list, redis-py would make a system call per command.
    packed = b"".join(
        [_pack(("EVALSHA", call[0].sha, len(call[1]), *call[1], *call[2])) for call in calls]
    )
    if held is None:
        pool = client.connection_pool
        connection = pool.get_connection()
        try:
            answers = _exchange(connection, packed, len(calls))
        except BaseException:
            connection.disconnect()  # answers may be left unread on it: never reuse it
            pool.release(connection)
            raise
        pool.release(connection)
        return answers
    kept = held.kept
    try:
        return _exchange(held.get(), packed, len(calls))
    except redis.ConnectionError:
        held.drop()
        if not kept:
            raise
    except BaseException:
        held.drop()  # as above
        raise
    # The connection kept since an earlier batch had been closed meanwhile (a restart, an idle
    # timeout, CLIENT KILL): once more on a new one, as a pool checkout would have found it
    # closed and reconnected. Running the calls twice is harmless (see call_scripts).
    try:
        return _exchange(held.get(), packed, len(calls))
    except BaseException:
        held.drop()
        raise


def _exchange(connection: Any, packed: bytes, count: int) -> list[Any]:
    """Send ``packed`` (``count`` commands) and read their answers, an error as an answer."""
    connection.send_packed_command([packed])
    answers: list[Any] = []
    for _ in range(count):
        try:
            answers.append(connection.read_response())
        except redis.ResponseError as exc:  # this call's error; the others still answer
            answers.append(exc)
    return answers


class HeldConnection:
    """A connection of a client's pool that one thread (a writer) keeps between its calls.

    Taking one from the pool for each batch costs a poll() system call (redis-py checks that
    nothing is left unread on it), and with it a hand-over of the GIL to the threads that are
    busy meanwhile. Only that thread uses it; after an error it is dropped, and the next call
    takes another (at once, in the same call, if the kept one turns out closed)."""

    def __init__(self, client: Any) -> None:
        self._pool = client.connection_pool
        self._connection: Any = None

    @property
    def kept(self) -> bool:
        """True if a connection is kept from an earlier call (it may have gone stale since)."""
        return self._connection is not None

    def get(self) -> Any:
        if self._connection is None:
            self._connection = self._pool.get_connection()
        return self._connection

    def drop(self) -> None:
        """Close it (answers may be left unread on it) and give it back to the pool."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()
            self._pool.release(connection)

    def release(self) -> None:
        """Give it back to the pool, as it is."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.release(connection)


class WriteBehind:
    """Queued script calls, sent in order, a batch per round trip, from one thread."""

    def __init__(self, client: redis.Redis, give_up_s: float) -> None:
        self._client = client
        self._held = HeldConnection(client) if _packs_for(client) else None
        self._give_up_s = give_up_s
        self._ops: deque[tuple[Script, Sequence[str], Sequence[Any], Done | None, Any]] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._busy = False  # a batch is on its way
        #: False after a batch met a connection error, until one goes through: callers then
        #: write synchronously, so that a Redis that is down is an error they see at once.
        self.healthy = True
        self._lost = 0  # writes given up on, ever
        self._lost_told = 0  # of those, how many a flush has reported
        self._stopping = False
        self._runner = threading.Thread(target=self._run, name="postkey-redis-writes", daemon=True)
        self._runner.start()

    def put(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Any],
        done: Done | None = None,
        arg: Any = None,
    ) -> None:
        """Queue one call of ``script``; ``done(arg, answer)`` runs on the writer's thread.
        Tuples of ``keys`` and ``args`` rather than lists, where the caller can: a tuple of
        str, int and bytes leaves the collector's sight at its first collection, and queued
        writes outlive a few of them."""
        with self._ready:
            self._ops.append((script, keys, args, done, arg))
            if len(self._ops) == 1:
                self._ready.notify()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until everything queued has been sent; False if that
        time ran out, or if writes were given up on (Redis did not answer for ``give_up_s``)
        since the last flush said so."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while self._ops or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ready.wait(min(left, 0.05))
            told, self._lost_told = self._lost_told, self._lost
        return told == self._lost

    def close(self, timeout: float) -> None:
        """Send what is queued (for up to ``timeout`` seconds), then stop the thread."""
        self.flush(timeout)
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        self._runner.join(timeout + 1)

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            if self._held is not None:
                self._held.release()

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._ops and not self._stopping:
                    self._ready.wait()
                if not self._ops:
                    return
                batch = [self._ops.popleft() for _ in range(min(_BATCH, len(self._ops)))]
                self._busy = True
            try:
                self._send(batch)
            finally:
                with self._ready:
                    self._busy = False
                    self._ready.notify_all()

    def _send(
        self, batch: list[tuple[Script, Sequence[str], Sequence[Any], Done | None, Any]]
    ) -> None:
        deadline = time.monotonic() + self._give_up_s
        delay = 0.05
        try:
            answers = call_scripts(self._client, batch, self._held)
        except UNAVAILABLE as exc:
            answers = [exc] * len(batch)
        # Nearly always none: looked for in C (map), not with a Python test per answer.
        failed = any(map(isinstance, answers, repeat(Exception)))
        # Sent again: the calls that met a store that did not answer (all of them on one
        # Redis; on a Cluster, those whose node is down, "the cluster is down" included).
        todo = [i for i, a in enumerate(answers) if isinstance(a, _AGAIN)] if failed else []
        while todo:
            self.healthy = False
            if time.monotonic() + delay > deadline or self._stopping:
                log.error("%d writes to the store were lost: %s", len(todo), answers[todo[0]])
                for i in todo:
                    # Each by its first key (a key's record): that key is pending only here.
                    log.warning("lost: the write to %s", _first_key(batch[i]))
                    answers[i] = None
                with self._ready:
                    self._lost += len(todo)
                break
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
            try:
                got = call_scripts(self._client, [batch[i] for i in todo], self._held)
            except UNAVAILABLE as exc:
                got = [exc] * len(todo)
            for i, answer in zip(todo, got, strict=True):
                answers[i] = answer
            todo = [i for i in todo if isinstance(answers[i], _AGAIN)]
        else:  # every write went through (none given up on)
            self.healthy = True
        for op, raw in zip(batch, answers, strict=True):
            answer = raw
            if failed and isinstance(raw, Exception):
                log.error("the write to %s failed: %s", _first_key(op), raw)
                answer = None
            done = op[3]
            if done is not None:
                try:
                    done(op[4], answer)
                except Exception:  # a bug in a completion must not stop the writer
                    log.exception("a store write's completion raised")


def _first_key(op: tuple[Any, ...]) -> str:
    keys = op[1]
    return str(keys[0]) if keys else "(a call without keys)"
