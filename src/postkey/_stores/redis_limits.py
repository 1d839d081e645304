"""Per-host limits shared by every worker process on one Redis (or Redis Cluster).

Three independent limits, each one Lua script over one host's keys, all timed by the server's
clock (``TIME`` inside the script) so workers on machines with skewed clocks still agree:

- concurrency: a lease semaphore, a sorted set of holders scored by lease expiry. A holder that
  dies (kill -9) is never released, but its lease lapses and the next acquire sweeps it out;
  live holders renew before their lease ends.
- rate (optional): GCRA, one key holding the theoretical arrival time. Allows ``burst`` at once,
  then one request per emission interval; a refused request is not counted.
- pause: a 429/503 with Retry-After stores an until-time that every worker reads before sending.

A host's keys are ``{prefix}:{h-<digest>}:<part>``: the digest, not the host, forms the Cluster
hash tag, because hosts may hold braces and would otherwise move or empty the tag. Every key
expires by itself, so an idle or forgotten host leaves nothing behind.
"""

from __future__ import annotations

import email.utils
import hashlib
import math
import re
import time
from datetime import UTC

import redis
from redis.commands.core import Script

SEMAPHORE = "sem"
RATE = "rate"
PAUSE = "pause"

# Far above any sane lease, rate window or pause, far below where Lua hands a time back to Redis as
# "1e+17" (it prints numbers with '%.17g'), which PEXPIRE and SET PX refuse.
LONGEST_MS = 366 * 86_400_000

# Milliseconds of Redis time. Lease scores and the pause until-time are whole milliseconds (exact
# in a double for millennia); GCRA keeps the fraction, since an emission interval may be 333.3 ms.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_NOW_FINE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
"""

# The key must never vanish while a lease in it is live; a lease of margin past the latest one
# makes that hold whatever the rounding, and keeping an empty-ish set that long costs nothing.
_SEM_TTL = """
local function keep(key, now, lease)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIRE', key, tonumber(last[2]) - now + lease) end
end
"""

# KEYS: sem. ARGV: holder, limit, lease_ms. Returns 1 if the holder now holds a permit.
_ACQUIRE = (
    _NOW
    + _SEM_TTL
    + """
local lease = tonumber(ARGV[3])
-- Sweeping here, not on a timer, is what frees a dead holder's permit and bounds the set.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
-- A holder already in the set is renewed even at the limit: it is not a second permit.
if not redis.call('ZSCORE', KEYS[1], ARGV[1])
    and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
keep(KEYS[1], now, lease)
return 1
"""
)

# KEYS: sem. ARGV: lease_ms, holder...
_RENEW = (
    _NOW
    + _SEM_TTL
    + """
local lease = tonumber(ARGV[1])
-- A lapsed lease may already be counted as free by another acquirer: never revive it.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[i])
end
keep(KEYS[1], now, lease)
return 0
"""
)

# KEYS: sem. Counts only unexpired leases: members wait for the next acquire to be swept.
_HOLDERS = (
    _NOW
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)

# KEYS: rate. ARGV: emission interval (ms, may be fractional), burst.
# Returns 0 (and counts the request) or the whole ms until one may go.
_RATE = (
    _NOW_FINE
    + """
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allowed_at = tat - (tonumber(ARGV[2]) - 1) * interval
if now < allowed_at then
  return math.ceil(allowed_at - now)
end
tat = tat + interval
-- Once the arrival time is in the past the key means nothing more than its absence does.
-- '%.3f' because tostring() keeps 14 significant digits: epoch ms would lose their fraction.
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.max(1, math.ceil(tat - now)))
return 0
"""
)

# KEYS: pause. ARGV: pause_ms (>= 1). Returns the ms the host is now paused for.
_PAUSE = (
    _NOW
    + """
local wanted = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]))
-- One worker's short Retry-After must not cut short another's longer one.
if current and current >= wanted then
  return current - now
end
redis.call('SET', KEYS[1], wanted, 'PX', ARGV[1])
return tonumber(ARGV[1])
"""
)

# KEYS: pause. Returns the ms left, 0 if not paused.
_PAUSED = (
    _NOW
    + """
local current = tonumber(redis.call('GET', KEYS[1]))
if current and current > now then return current - now end
return 0
"""
)


def host_tag(host: str) -> str:
    """The Cluster hash tag every key of ``host`` shares."""
    return "{h-" + hashlib.blake2b(host.encode(), digest_size=8).hexdigest() + "}"


def _positive_int(name: str, value: int, most: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    if most is not None and value > most:
        raise ValueError(f"{name} must be at most {most}, got {value}")
    return value


class HostLimits:
    """Concurrency, rate and pause per host, shared through ``client``. Thread-safe.

    ``client`` is a ``redis.Redis`` or ``redis.RedisCluster``; its ``decode_responses`` does not
    matter (the scripts return integers). Every script touches one host's keys only.
    """

    def __init__(self, client: redis.Redis | redis.RedisCluster, prefix: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            # A brace in the prefix would become every key's hash tag: one Cluster slot for all.
            raise ValueError(f"prefix must be non-empty and hold no braces, got {prefix!r}")
        self._client = client
        self._prefix = prefix
        self._acquire: Script = client.register_script(_ACQUIRE)
        self._renew: Script = client.register_script(_RENEW)
        self._holders: Script = client.register_script(_HOLDERS)
        self._rate: Script = client.register_script(_RATE)
        self._pause: Script = client.register_script(_PAUSE)
        self._paused: Script = client.register_script(_PAUSED)

    def key(self, host: str, part: str) -> str:
        """The Redis key of ``host``'s ``part`` (`SEMAPHORE`, `RATE` or `PAUSE`)."""
        return f"{self._prefix}:{host_tag(host)}:{part}"

    # -- concurrency ---------------------------------------------------------------------------

    def acquire(self, host: str, holder: str, limit: int, lease_ms: int) -> bool:
        """Take (or renew) a permit for ``holder`` if fewer than ``limit`` live ones are held.

        The permit lapses ``lease_ms`` after this call unless renewed; ``holder`` must be unique
        across every process (a worker id and a request key, say).
        """
        _positive_int("limit", limit)
        _positive_int("lease_ms", lease_ms, LONGEST_MS)
        keys = [self.key(host, SEMAPHORE)]
        return bool(self._acquire(keys=keys, args=[holder, limit, lease_ms]))

    def renew(self, host: str, holders: list[str], lease_ms: int) -> None:
        """Extend the leases of those ``holders`` that still hold a permit to ``lease_ms`` from
        now. A holder whose lease already lapsed is not given one back: it must acquire again."""
        _positive_int("lease_ms", lease_ms, LONGEST_MS)
        if holders:
            self._renew(keys=[self.key(host, SEMAPHORE)], args=[lease_ms, *holders])

    def release(self, host: str, holder: str) -> None:
        """Give ``holder``'s permit back (nothing happens if it holds none)."""
        self._client.zrem(self.key(host, SEMAPHORE), holder)

    def holders(self, host: str) -> int:
        """How many unexpired permits ``host`` has out."""
        return int(self._holders(keys=[self.key(host, SEMAPHORE)]))

    # -- rate ----------------------------------------------------------------------------------

    def rate(self, host: str, per_second: float, burst: int) -> int:
        """0 if a request to ``host`` may go now (it is counted), else the ms until one may.

        Up to ``burst`` requests may go at once; after that one per ``1 / per_second`` s.
        """
        if not (isinstance(per_second, int | float) and 0 < per_second < math.inf):
            raise ValueError(f"per_second must be a finite number above 0, got {per_second!r}")
        _positive_int("burst", burst)
        interval_ms = 1000.0 / per_second
        if interval_ms * burst > LONGEST_MS:
            most = LONGEST_MS // 1000
            raise ValueError(
                f"burst / per_second must be at most {most} s, got {burst} / {per_second}"
            )
        return int(self._rate(keys=[self.key(host, RATE)], args=[repr(interval_ms), burst]))

    # -- pause ---------------------------------------------------------------------------------

    def pause(self, host: str, seconds: float, max_pause_s: float) -> float:
        """Pause ``host`` for every worker for ``seconds``, clamped to ``[0, max_pause_s]``.

        A longer pause already in place is kept. Returns the pause now in effect, in seconds
        (0.0 if none): the longer of the one asked for and the one already there.
        """
        if not (isinstance(max_pause_s, int | float) and 0 <= max_pause_s <= LONGEST_MS / 1000):
            raise ValueError(
                f"max_pause_s must be a number from 0 to {LONGEST_MS // 1000}, got {max_pause_s!r}"
            )
        if math.isnan(seconds):
            seconds = 0.0
        pause_ms = math.ceil(min(max(seconds, 0.0), max_pause_s) * 1000)
        if pause_ms <= 0:
            return self.paused_ms(host) / 1000
        return int(self._pause(keys=[self.key(host, PAUSE)], args=[pause_ms])) / 1000

    def paused_ms(self, host: str) -> int:
        """How many ms ``host`` stays paused; 0 if it is not."""
        return int(self._paused(keys=[self.key(host, PAUSE)]))


_DELTA_SECONDS = re.compile(r"[+-]?\d+(?:\.\d+)?")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header value: delta-seconds or an HTTP-date (email.utils);
    None if absent/malformed; negative -> 0.

    ``now`` (a Unix time, default ``time.time()``) is what an HTTP-date is counted from. A
    fraction of a second is accepted although RFC 9110 allows only whole ones.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return max(0.0, float(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": the zone is unknown; HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
