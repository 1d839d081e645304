"""The request queue on Redis Streams: what clients enqueue and workers read, start and finish.

One stream per shard (`names.SHARDS`), one consumer group (`names.GROUP`) that every worker
reads in. A request's pending record and its queue entry share the shard's hash tag, so each
step below is one Lua script over one hash slot (Cluster-safe):

- ``ENQUEUE`` (client): the pending record (``owner`` '', ``attempt`` 0) and the entry, together:
  a key handed out is always both visible and queued.
- ``START`` (worker, a batch of entries of one shard): decides each entry's fate from its record.
  Ended already: acknowledged and deleted. Past its deadline (counted from the entry's ID, i.e.
  Redis time at enqueue): ends as ``timeout``. Started before by a worker that died, and
  at-most-once: ends as ``unknown_outcome`` (it may have been sent). Started ``max_deliveries``
  times: ends as ``worker_lost`` and is copied to the shard's dead-letter stream. Otherwise the
  attempt number goes up and the record names the new owner, ``<worker>#<attempt>``: that
  string fences every later write of the attempt.
- ``FINISH`` (worker): the result replaces the record only if the record still names this
  attempt; then XACK + XDEL of the entry, in the same script. A later attempt's result, or one
  after a cancel, is dropped (and counted by the caller); the entry stays for whoever owns it.
- ``HANDBACK`` (a worker stopping): an unsent request goes back to the queue as a new entry,
  its attempt not counted.
- ``END_PENDING`` (anyone): ends a pending key (cancel, or a reader that finds a queued key
  long past its deadline), fenced by the owner it read.

Entries are deleted only right after their XACK and streams are never trimmed, so no pending
entry can vanish (on Redis 7.0, trimming silently drops pending work from XAUTOCLAIM).
"""

from __future__ import annotations

from typing import Any

import redis

from .._job import Job
from .._result import ErrorKind, State
from . import codec
from .names import GROUP, SHARDS, Names
from .redis_connect import is_cluster

DEAD_LETTERS_KEPT = 10_000  # the dead-letter streams are capped (nothing there is pending)

# Make a key's record: 1 made, 0 the same caller key (fingerprint) names the same request,
# -1 the key names something else. Without a caller key (fp ''), postkey made the key: it only
# has to be new. The one rule for REGISTER (local sending) and ENQUEUE (queued).
CLAIM = """
local function claim(rec, tomb, record, fp, ttl)
  if fp == '' then
    if redis.call('SET', rec, record, 'NX', 'PX', ttl) then return 1 end
    return -1
  end
  local t = redis.call('GET', tomb)
  if t then
    if t == 'F:' .. fp then return 0 end
    return -1
  end
  if redis.call('EXISTS', rec) == 1 then return -1 end
  redis.call('SET', rec, record, 'PX', ttl)
  redis.call('SET', tomb, 'F:' .. fp, 'PX', ttl)
  return 1
end
"""

# Helpers every script that ends a key shares: a failed result in codec's R format, and the one
# terminal write (record, tombstone kept or made, publish), so a waiter is always woken.
_PRELUDE = """
-- A script's many form (redis_writes) makes this a table: the reply announcements of the keys it
-- ends are gathered and sent as one message per reply channel (REPLY_BATCH) at its end.
local REPLIES = nil
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- A failed result in codec's R format (codec.RESULT_HEAD); kind is codec.kind_code's number.
local function failed(meta, kind, message)
  local fp, url, at = meta['fingerprint'], meta['url'], meta['submitted_at']
  if type(fp) ~= 'string' then fp = '' end
  if type(url) ~= 'string' then url = '' end
  local nan = 0 / 0
  if type(at) ~= 'number' then at = nan end
  return 'pk\\1R' .. struct.pack('<BBhI', FAILED, kind, -1, meta['attempt'] or 0)
    .. struct.pack('<ddfffff', at, now_s(), nan, nan, nan, nan, nan)
    .. struct.pack('<IHII', string.len(message), string.len(fp), string.len(url), 0)
    .. message .. fp .. url
end
-- meta: the pending record's (nil if it was lost). Its submitter's reply channel (same shard,
-- same slot) hears the key, a newline and the announcement: no channel per key needed.
local function settle(rec, tomb, chan, record, ttl, tomb_ttl, meta)
  redis.call('SET', rec, record, 'PX', ttl)
  local t = redis.call('GET', tomb) or 'E'
  redis.call('SET', tomb, t, 'PX', ttl + tomb_ttl)
  local note = ANNOUNCE(record)
  redis.call('SPUBLISH', chan, note)
  local reply = meta and meta['reply']
  if type(reply) == 'string' and reply ~= '' then
    local head = string.match(rec, '^[^{]*{[^}]*}')
    local key = string.sub(rec, string.len(head) + 2, -3)
    local chan, item = head .. ':reply:' .. reply, key .. '\\n' .. note
    if REPLIES and string.sub(reply, -2) == 'BATCHED_REPLIES' then  -- one message per channel
      local items = REPLIES[chan]
      if not items then
        items = {}
        REPLIES[chan] = items
      end
      items[#items + 1] = struct.pack('<I', string.len(item)) .. item
    else
      redis.call('SPUBLISH', chan, item)
    end
  end
end
local function ttl_of(meta, default)
  if type(meta['ttl_ms']) == 'number' then return meta['ttl_ms'] end
  return default
end
"""

# KEYS record, tombstone, stream; ARGV fingerprint ('' without a caller key), pending TTL ms,
# the queued request, the key, delivery, timeout ms, result TTL ms, submitted at, URL, the
# submitter's reply id (its results are also announced on its reply channels). The
# pending record is made here (in Redis's CPU, not the client's). 1 queued, 0 the same request
# is known, -1 a conflict.
_ENQUEUE = (
    CLAIM
    + """
local fp = ARGV[1]
local record = 'pk\\1P' .. cjson.encode({owner = '', fingerprint = (fp ~= '' and fp) or cjson.null,
  submitted_at = tonumber(ARGV[8]), state = 'pending', queued = true, delivery = ARGV[5],
  timeout_ms = tonumber(ARGV[6]), ttl_ms = tonumber(ARGV[7]), attempt = 0, url = ARGV[9],
  reply = ARGV[10]})
local claimed = claim(KEYS[1], KEYS[2], record, fp, ARGV[2])
if claimed ~= 1 then return claimed end
redis.call('XADD', KEYS[3], '*', 'k', ARGV[4], 'j', ARGV[3])
return 1
"""
)

# KEYS stream, dead-letter stream, then record, tombstone, channel per entry; ARGV group, worker,
# max deliveries, default result TTL, tombstone TTL, then one entry ID per entry. Per entry:
# {'go', ms left, owner} or {'skip'} / {'ended'} (acknowledged and deleted).
_START = (
    _PRELUDE
    + """
local group, max = ARGV[1], tonumber(ARGV[3])
local default_ttl, tomb_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, (#KEYS - 2) / 3 do
  local rec, tomb, chan = KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2]
  local id = ARGV[5 + i]
  local cur = redis.call('GET', rec)
  local verdict = {'skip'}
  local ok, meta = false, nil
  if cur and string.sub(cur, 4, 4) == 'P' then
    ok, meta = pcall(cjson.decode, string.sub(cur, 5))  -- a record no postkey wrote: skipped
  end
  if ok and type(meta) == 'table' and type(meta['timeout_ms']) == 'number' then
    local ttl = ttl_of(meta, default_ttl)
    local left = tonumber(string.match(id, '^(%d+)')) + meta['timeout_ms'] - now_ms
    if meta['entry'] == id and meta['owner'] == ARGV[2] .. '#' .. tostring(meta['attempt']) then
      -- This worker started this entry already (its answer was lost, or the entry came back
      -- from its own pending list): the same attempt, not a new delivery.
      verdict = {'go', math.max(left, 1), meta['owner']}
    elseif left <= 0 then
      settle(rec, tomb, chan, failed(meta, KIND_TIMEOUT,
        'its deadline passed before a worker could send it'), ttl, tomb_ttl, meta)
      verdict = {'ended'}
    elseif meta['attempt'] >= 1 and meta['delivery'] == 'at_most_once' then
      settle(rec, tomb, chan, failed(meta, KIND_UNKNOWN_OUTCOME,
        'the worker sending it stopped before it ended; it may or may not have reached the'
        .. ' server, and at-most-once delivery does not send it again'), ttl, tomb_ttl, meta)
      verdict = {'ended'}
    elseif meta['attempt'] >= max then
      settle(rec, tomb, chan, failed(meta, KIND_WORKER_LOST,
        'every worker that took it (' .. meta['attempt'] .. ' deliveries) stopped before it'
        .. ' ended; moved to the dead-letter stream'), ttl, tomb_ttl, meta)
      local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
      if entry then
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6 + (#KEYS - 2) / 3] or 10000, '*',
          'id', id, 'attempts', meta['attempt'], unpack(entry[2]))
      end
      verdict = {'ended'}
    else
      meta['attempt'] = meta['attempt'] + 1
      meta['owner'] = ARGV[2] .. '#' .. meta['attempt']
      meta['state'] = 'running'
      meta['entry'] = id
      redis.call('SET', rec, 'pk\\1P' .. cjson.encode(meta), 'KEEPTTL')
      verdict = {'go', left, meta['owner']}
    end
  end
  if verdict[1] ~= 'go' then
    redis.call('XACK', KEYS[1], group, id)
    redis.call('XDEL', KEYS[1], id)
  end
  out[i] = verdict
end
return out
"""
)

# KEYS record, tombstone, channel, stream; ARGV result record, owner, result TTL, tombstone TTL,
# group, entry ID. 1 stored, 0 dropped (ended already, or another attempt owns the key).
_FINISH = (
    _PRELUDE
    + """
local cur = redis.call('GET', KEYS[1])
local meta = nil
if cur then
  if string.sub(cur, 4, 4) == 'P' then
    meta = cjson.decode(string.sub(cur, 5))
    if meta['owner'] ~= ARGV[2] then return 0 end
  else
    redis.call('XACK', KEYS[4], ARGV[5], ARGV[6])
    redis.call('XDEL', KEYS[4], ARGV[6])
    return 0
  end
end
settle(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]), meta)
redis.call('XACK', KEYS[4], ARGV[5], ARGV[6])
redis.call('XDEL', KEYS[4], ARGV[6])
return 1
"""
)

# KEYS record, stream; ARGV owner, group, entry ID. 1 queued again, 0 not ours any more.
_HANDBACK = """
local cur = redis.call('GET', KEYS[1])
local mine = false
if cur and string.sub(cur, 4, 4) == 'P' then
  local meta = cjson.decode(string.sub(cur, 5))
  if meta['owner'] ~= ARGV[1] then return 0 end
  meta['attempt'] = meta['attempt'] - 1
  meta['owner'] = ''
  meta['state'] = 'pending'
  redis.call('SET', KEYS[1], 'pk\\1P' .. cjson.encode(meta), 'KEEPTTL')
  mine = true
end
local entry = redis.call('XRANGE', KEYS[2], ARGV[3], ARGV[3])[1]
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[2], ARGV[3])
if mine and entry then
  redis.call('XADD', KEYS[2], '*', unpack(entry[2]))
  return 1
end
return 0
"""

# KEYS record, tombstone, channel; ARGV owner it must still have ('*': any), error kind,
# message, default result TTL, tombstone TTL. 1 ended here, 0 not pending (or not that owner's).
_END_PENDING = (
    _PRELUDE
    + """
local cur = redis.call('GET', KEYS[1])
if not cur or string.sub(cur, 4, 4) ~= 'P' then return 0 end
local meta = cjson.decode(string.sub(cur, 5))
if ARGV[1] ~= '*' and meta['owner'] ~= ARGV[1] then return 0 end
settle(KEYS[1], KEYS[2], KEYS[3], failed(meta, tonumber(ARGV[2]), ARGV[3]),
  ttl_of(meta, tonumber(ARGV[4])), tonumber(ARGV[5]), meta)
return 1
"""
)


#: Records up to this size travel in their announcement: a waiter needs no read to have them.
ANNOUNCED_MAX = 65_536


#: The first byte of a reply-channel message that holds several announcements, each as a 4-byte
#: little-endian length and ``<key>`` + newline + announcement (no key starts with it).
REPLY_BATCH = b"*"
#: How a submitter's reply id ends if it reads such messages; to a reply id without it (a
#: submitter of an earlier version) each announcement goes alone.
BATCHED_REPLIES = "+b"


def with_announce(lua: str) -> str:
    """``lua`` with ``ANNOUNCE(record)`` defined: what a terminal write publishes on the key's
    channel, the record itself if small, else 'r' (read it)."""
    return (
        f"local function announce(r) if string.len(r) <= {ANNOUNCED_MAX} then return r end"
        " return 'r' end\n" + lua.replace("ANNOUNCE(", "announce(")
    )


def _with_codes(lua: str) -> str:
    """``lua`` with the record numbers of codec in place of their names."""
    return with_announce(
        lua.replace("KIND_TIMEOUT", str(codec.kind_code(ErrorKind.TIMEOUT)))
        .replace("KIND_UNKNOWN_OUTCOME", str(codec.kind_code(ErrorKind.UNKNOWN_OUTCOME)))
        .replace("KIND_WORKER_LOST", str(codec.kind_code(ErrorKind.WORKER_LOST)))
        .replace("FAILED", str(codec.STATES.index(State.FAILED)))
        .replace("BATCHED_REPLIES", BATCHED_REPLIES)
    )


#: On a Cluster, how long an idle worker's read blocks on one shard before it looks at all.
CLUSTER_BLOCK_MS = 50


class QueueScripts:
    """The queue's scripts, registered on one Redis client."""

    def __init__(self, client: Any) -> None:
        self.enqueue = client.register_script(_ENQUEUE)
        self.start = client.register_script(_with_codes(_START))
        self.finish = client.register_script(_with_codes(_FINISH))
        self.handback = client.register_script(_HANDBACK)
        self.end_pending = client.register_script(_with_codes(_END_PENDING))


def encode_request(job: Job, delivery: str, ttl_ms: int) -> bytes:
    """A queue entry's payload: everything a worker needs to send ``job``'s request."""
    request = job.request
    options = request.options
    return codec.encode_job(
        codec.QueuedRequest(
            request.method,
            request.url,
            "\r\n".join(f"{name}: {value}" for name, value in request.headers),
            request.body,
            request.timeout_ms,
            ttl_ms,
            request.follow_redirects,
            delivery,
            job.fingerprint,
            job.submitted_at,
            list(options) if options is not None else None,
        )
    )


class WorkQueue:
    """A worker's side of the queue: read, start, keep alive, reclaim, finish, hand back."""

    def __init__(self, client: Any, names: Names, consumer: str) -> None:
        self._redis = client
        self._names = names
        self.consumer = consumer
        self.scripts = QueueScripts(client)
        self.streams = [names.queue(i) for i in range(SHARDS)]
        self._cluster = is_cluster(client)
        self._turn = 0  # the shard an idle read on a Cluster blocks on next

    def ensure_groups(self) -> None:
        """Create the consumer group on every shard's stream (from the start: entries are
        deleted once done, so whatever is left is unfinished work, to be read again)."""
        for stream in self.streams:
            try:
                self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def read(
        self, count: int, block_ms: int | None, own: bool = False
    ) -> list[tuple[int, bytes, list[Any]]]:
        """New entries for this consumer, at most ``count`` (from every shard's stream, up to
        ``count // SHARDS`` each, at least one): (shard, entry ID, fields); with ``own``, the
        entries already delivered to it and not acknowledged instead."""
        start = "0" if own else ">"
        # Redis applies COUNT to each stream of a read: the whole count from each would take up
        # to SHARDS times as many as asked for.
        each = max(1, count // SHARDS)
        if self._cluster:
            return self._read_slot_by_slot(count, each, block_ms, start)
        reply = self._redis.xreadgroup(
            GROUP, self.consumer, dict.fromkeys(self.streams, start), count=each, block=block_ms
        )
        return self._entries(reply)

    def _read_slot_by_slot(
        self, count: int, each: int, block_ms: int | None, start: str
    ) -> list[tuple[int, bytes, list[Any]]]:
        # A Cluster refuses one XREADGROUP over streams of several slots, and a read can block
        # on one slot only. So: every shard without blocking, in one pipeline (a round trip
        # per master); when all are empty, block briefly on one shard, a different one each
        # time, so an idle worker still notices new work within ~CLUSTER_BLOCK_MS.
        pipe = self._redis.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xreadgroup(GROUP, self.consumer, {stream: start}, count=each)
        out: list[tuple[int, bytes, list[Any]]] = []
        for reply in pipe.execute():
            out += self._entries(reply)
        if out or not block_ms or start != ">":
            return out
        self._turn = (self._turn + 1) % SHARDS
        reply = self._redis.xreadgroup(
            GROUP,
            self.consumer,
            {self.streams[self._turn]: start},
            count=count,
            block=min(block_ms, CLUSTER_BLOCK_MS),
        )
        return self._entries(reply)

    def _entries(self, reply: Any) -> list[tuple[int, bytes, list[Any]]]:
        out: list[tuple[int, bytes, list[Any]]] = []
        if not reply:
            return out
        # RESP2 gives [[stream, entries], ...]; RESP3 a dict.
        pairs = reply.items() if isinstance(reply, dict) else reply
        for stream, entries in pairs:
            shard = int(stream[stream.index(b"{s") + 2 : stream.index(b"}")])
            for entry_id, fields in entries:
                if fields is not None:
                    out.append((shard, entry_id, fields))
        return out

    def reclaim(self, shard: int, min_idle_ms: int, count: int) -> list[tuple[int, bytes, Any]]:
        """Entries of shard ``shard`` idle for ``min_idle_ms`` (their worker died): now ours."""
        reply = self._redis.xautoclaim(
            self.streams[shard], GROUP, self.consumer, min_idle_ms, "0-0", count=count
        )
        return [(shard, entry_id, fields) for entry_id, fields in reply[1] if fields is not None]

    def keep(self, shard: int, ids: list[bytes], client: Any) -> None:
        """Reset the idle time of entries this worker is still working on (no new delivery),
        through ``client`` (a pipeline)."""
        if ids:
            client.xclaim(self.streams[shard], GROUP, self.consumer, 0, ids, justid=True)

    def start_args(
        self, shard: int, batch: list[tuple[str, bytes]], max_deliveries: int, ttls: tuple[int, int]
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of `_START` for (key, entry ID) pairs of one shard."""
        names = self._names
        keys = [self.streams[shard], names.dead(shard)]
        for key, _entry_id in batch:
            keys += names.parts(key)
        args: list[Any] = [GROUP, self.consumer, max_deliveries, ttls[0], ttls[1]]
        args += [entry_id for _key, entry_id in batch]
        args.append(DEAD_LETTERS_KEPT)
        return keys, args

    def finish_args(
        self, shard: int, key: str, entry_id: bytes, owner: str, record: bytes, ttl: tuple[int, int]
    ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        """KEYS and ARGV of `_FINISH` (tuples: see WriteBehind.put)."""
        keys = (*self._names.parts(key), self.streams[shard])
        return keys, (record, owner, ttl[0], ttl[1], GROUP, entry_id)

    def handback_args(
        self, shard: int, key: str, entry_id: bytes, owner: str
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of `_HANDBACK`."""
        return [self._names.record(key), self.streams[shard]], [owner, GROUP, entry_id]
