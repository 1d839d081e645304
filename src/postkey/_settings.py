"""Settings: one frozen dataclass of documented defaults; `from_env` reads POSTKEY_* variables."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ._errors import InvalidValue, unknown_argument
from ._policy import DestinationPolicy
from ._request import HTTP_VERSIONS

Resolver = Callable[[str], Sequence[str]]
ALLOW_ALL = DestinationPolicy()  # frozen: one shared default is safe

MiB = 1024 * 1024
STORE_SCHEMES = frozenset({"memory", "redis", "rediss", "unix", "redis+cluster", "rediss+cluster"})
SEND_MODES = ("local", "workers")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class Settings:
    """How a client behaves. Every field has a default; `Client(**fields)` overrides any of them.

    Raises (on construction):
        InvalidValue: a field of the wrong type or out of range, or a client_cert / client_key
            that is not a readable PEM file of its kind.
    """

    #: Timeout used when a request gives none, in ms.
    default_timeout_ms: int = 30_000
    #: The largest timeout a request may ask for, in ms (1 hour).
    max_timeout_ms: int = 3_600_000
    #: Submissions waiting for a transfer slot; past this, submit raises QueueFull.
    max_queue: int = 100_000
    #: How long a submit may wait for room in a full queue before raising QueueFull, in ms.
    queue_wait_ms: int = 0
    #: Transfers on the wire at once, all hosts together.
    max_in_flight: int = 256
    #: Connections to one host (scheme + name + port) at once; more transfers wait in libcurl.
    max_per_host: int = 64
    #: Open connections kept for reuse, all hosts together (libcurl closes the oldest idle one
    #: past it). Apart from max_in_flight: a sender to 1,000 hosts with 256 in flight otherwise
    #: opened a new connection for every request. Capped below the process's open-file limit.
    max_idle_connections: int = 1024
    #: Response body cap; a larger body ends the request as failed / too_large.
    max_response_bytes: int = 10 * MiB
    #: Response header lines accepted (libcurl also caps their total size at 300 KiB).
    max_response_headers: int = 200
    #: Request body cap, checked on submit.
    max_request_bytes: int = 16 * MiB
    #: How long a result stays readable, in ms (1 hour).
    result_ttl_ms: int = 3_600_000
    #: How long an expired key is still reported as `expired` rather than `unknown`, in ms.
    tombstone_ttl_ms: int = 3_600_000
    #: Entries the memory cache holds before evicting the least recently used.
    cache_max_entries: int = 1_000_000
    #: Bytes (approximate, values plus overhead) the memory cache holds before evicting. A
    #: library's default: results nobody reads must not take the host process's memory (it was
    #: 1 GiB: 2,000 unread 1 MiB responses held 1.1 GB of RSS). Read with take=True, or raise it.
    cache_max_bytes: int = 256 * MiB
    #: Follow redirects when a request does not say.
    follow_redirects: bool = False
    #: Hops followed at most when following redirects.
    max_redirects: int = 5
    #: Ask for gzip / deflate / br / zstd and decode the body (the cap applies to decoded bytes).
    decompress: bool = False
    #: Verify TLS certificates and host names. Turning this off is for tests only.
    verify_tls: bool = True
    #: A CA bundle (PEM) to verify against instead of the system's.
    ca_file: str | None = None
    #: Proxy URL. Proxy environment variables are ignored unless a proxy is set here.
    proxy: str | None = None
    #: A PEM file with the TLS client certificate to present (mTLS), and its private key unless
    #: client_key is set. A request's own client_cert= replaces it.
    client_cert: str | None = None
    #: A PEM file with client_cert's private key (unencrypted), when it is not in client_cert.
    client_key: str | None = None
    #: None: HTTP/2 when the server offers it over TLS (ALPN), else HTTP/1.1. "1.1": always
    #: HTTP/1.1. "2": HTTP/2 only (h2 by ALPN over https, h2c with prior knowledge over http);
    #: a server that does not speak it ends the request as failed / protocol.
    http_version: str | None = None
    #: The User-Agent header sent unless the request sets one.
    user_agent: str = "postkey/0.1"
    #: At interpreter exit, how long open clients let in-flight requests finish, in ms; the rest
    #: end as failed / cancelled.
    exit_grace_ms: int = 2_000
    #: on_done callbacks waiting to run at most; a submit with a callback past this raises
    #: QueueFull (a slow callback then holds up only submits that ask for callbacks).
    max_callback_backlog: int = 10_000
    #: How long close() lets queued on_done callbacks run after the requests ended, in ms; the
    #: rest are skipped with a WARNING log line.
    callback_grace_ms: int = 5_000
    #: Which addresses requests may connect to (see DestinationPolicy). The library default
    #: allows all, as curl does; network-facing modes use DestinationPolicy.public_only().
    policy: DestinationPolicy = ALLOW_ALL
    #: Resolve host names with this function (name -> addresses) instead of the system resolver.
    #: It runs on a resolver thread, inside each request's deadline. For tests and custom DNS.
    resolver: Resolver | None = None
    #: How long a resolver's answer for a name is reused, in ms (0: ask it for every request
    #: that finds no lookup of its name in flight). libcurl keeps its own answers 60 s too.
    resolver_cache_ms: int = 60_000
    #: Bytes (approximate) of tombstones, the marks that make a key whose value expired or was
    #: evicted read as `expired` rather than `unknown`; past this the oldest are dropped. Never
    #: more than cache_max_bytes. Idempotency keys are bounded by max_idempotency_keys instead.
    max_tombstone_bytes: int = 64 * MiB
    #: Caller-supplied keys (``key=``) remembered at once, pending or finished. Each is kept for
    #: its pending time + result TTL + tombstone_ttl_ms whatever the cache's pressure; a submit
    #: that would remember one more is refused (nothing is sent).
    max_idempotency_keys: int = 100_000
    #: Where keys, results and cache values live: "memory://" (this process only, the default)
    #: or a Redis URL ("redis://host:6379/0", "rediss://...", "unix:///path?db=0"), readable and
    #: waitable from every process that uses the same Redis and store_prefix; for a Redis
    #: Cluster, "redis+cluster://" (or "rediss+cluster://") and the address of any node.
    store: str = "memory://"
    #: The prefix of every Redis key postkey writes (several deployments can share a Redis).
    store_prefix: str = "postkey"
    #: A sending process's lease in a shared store, in ms: renewed every third of it; when it
    #: lapses (the process died), its unfinished keys end as failed / worker_lost.
    lease_ms: int = 10_000
    #: Socket timeout of every Redis call, in ms; a Redis that does not answer within it (after
    #: one retry) raises StoreUnavailable.
    store_timeout_ms: int = 2_000
    #: Who sends: "local" (this process's engine, the default) or "workers" (the submit goes
    #: to a queue in the Redis store, and `postkey worker` processes anywhere send it).
    send: str = "local"
    #: Queued mode: a request its worker has not touched for this long (the worker died) is
    #: taken over by another worker; live workers renew theirs every third of it, in ms.
    claim_idle_ms: int = 30_000
    #: Queued mode: deliveries of one request at most; a request whose every worker died
    #: ends as failed / worker_lost and goes to the dead-letter stream.
    max_deliveries: int = 3
    #: Queued mode: requests on the wire to one host (scheme, name, port) across all workers
    #: at once (0: no shared limit; each worker still has max_per_host).
    host_concurrency: int = 0
    #: Queued mode: requests per second to one host across all workers (0: no limit).
    host_rate_per_s: int = 0
    #: Queued mode: the longest pause a 429 / 503 with Retry-After puts on its host for every
    #: worker, in ms.
    max_pause_ms: int = 300_000
    #: Queued mode: times an at-least-once request is sent again after a connection failure or
    #: a 429 / 502 / 503 / 504, with exponential backoff and full jitter (Retry-After honoured,
    #: clamped), within its deadline. 0: no retries.
    retries: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                if type(value) is not int:
                    raise InvalidValue(f"{f.name} must be an int, not {type(value).__name__}")
                zero_ok = (
                    "queue_wait_ms",
                    "max_redirects",
                    "exit_grace_ms",
                    "callback_grace_ms",
                    "host_concurrency",
                    "host_rate_per_s",
                    "max_pause_ms",
                    "retries",
                    "resolver_cache_ms",
                )
                lowest = 0 if f.name in zero_ok else 1
                if value < lowest:
                    raise InvalidValue(f"{f.name} must be >= {lowest}, got {value}")
                most = _most(f.name)
                if value > most and f.name not in _OWN_RANGE:
                    raise InvalidValue(
                        f"{f.name} must be <= {most} ({_MOST_WHY[most]}), got {value}"
                    )
            elif f.type == "bool" and not isinstance(value, bool):
                raise InvalidValue(f"{f.name} must be a bool, not {type(value).__name__}")
        _check_transport_text("user_agent", self.user_agent, _BAD_HEADER_VALUE, optional=False)
        _check_transport_text("proxy", self.proxy, _BAD_URL_CHAR, optional=True)
        if self.ca_file is not None and (
            not isinstance(self.ca_file, str)
            or not os.path.isfile(self.ca_file)
            or not os.access(self.ca_file, os.R_OK)
        ):
            raise InvalidValue(f"ca_file {self.ca_file!r} is not a readable file")
        if not isinstance(self.policy, DestinationPolicy):
            raise InvalidValue("policy must be a DestinationPolicy")
        if self.resolver is not None and not callable(self.resolver):
            raise InvalidValue("resolver must be callable")
        if self.default_timeout_ms > self.max_timeout_ms:
            raise InvalidValue("default_timeout_ms must not exceed max_timeout_ms")
        _check_connection(self.client_cert, self.client_key, self.http_version)
        scheme, sep, _ = (
            self.store.partition("://") if isinstance(self.store, str) else ("", "", "")
        )
        if not sep or scheme not in STORE_SCHEMES:
            raise InvalidValue(
                f"store must be 'memory://' or a redis://, rediss://, unix://, redis+cluster:// or"
                f" rediss+cluster:// URL, not"
                f" {self.store!r}"
            )
        for name, most in (("retries", 100), ("max_deliveries", 1000)):
            if getattr(self, name) > most:
                raise InvalidValue(f"{name} must be <= {most}, got {getattr(self, name)}")
        # Renewed every third of it: below these, renewals would be a hot loop on Redis (1 ms
        # made an idle worker send thousands of commands a second) and a live worker's entries
        # would go idle between two of them and be taken over.
        for name, least in (("lease_ms", 300), ("claim_idle_ms", 500)):
            if not least <= getattr(self, name) <= 86_400_000:
                raise InvalidValue(
                    f"{name} must be from {least} to 86400000 (a day), got {getattr(self, name)}"
                )
        if self.send not in SEND_MODES:
            raise InvalidValue(f"send must be 'local' or 'workers', not {self.send!r}")
        if self.send == "workers" and self.store == "memory://":
            raise InvalidValue(
                "send='workers' queues requests in a shared store: give store='redis://...'"
                " (the memory store lives in this process; no worker could read it)"
            )
        if not isinstance(self.store_prefix, str) or not _PREFIX_RE.fullmatch(self.store_prefix):
            raise InvalidValue(
                "store_prefix must be 1 to 64 letters, digits, '_', '-' or '.', not"
                f" {self.store_prefix!r}"
            )

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed.

        Raises:
            InvalidValue: an unknown field name, or a value out of range.
        """
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise unknown_argument("settings", sorted(unknown)[0], names)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, strict: bool = True) -> Settings:
        """Build settings from ``POSTKEY_<FIELD>`` variables (e.g. ``POSTKEY_MAX_IN_FLIGHT=512``).

        The policy comes from ``POSTKEY_POLICY`` (allow_all or public_only) and the comma-separated
        rule lists ``POSTKEY_ALLOW`` and ``POSTKEY_DENY``. Any other ``POSTKEY_`` variable is an
        error, so that a misspelled one is not silently ignored; with ``strict=False`` (the
        default client: an application may have POSTKEY_ variables of its own) it is logged as a
        WARNING instead.

        Raises:
            InvalidValue: a variable that does not parse as its field's type, or a ``POSTKEY_``
                variable that names no setting (the message suggests the closest real name).
        """
        env = os.environ if environ is None else environ
        # The names accepted besides the settings' own (POSTKEY_STORE is the setting `store`).
        other_names = {"POSTKEY_POLICY", "POSTKEY_ALLOW", "POSTKEY_DENY"}
        known = {f"POSTKEY_{f.name.upper()}" for f in fields(cls) if f.name != "resolver"}
        known |= other_names
        unknown = sorted(name for name in env if name.startswith("POSTKEY_") and name not in known)
        if unknown:
            named = []
            for name in unknown:
                # Compared without the common prefix, which would make every name look close.
                close = difflib.get_close_matches(name[8:].upper(), [k[8:] for k in known], n=1)
                hint = f"did you mean POSTKEY_{close[0]}?" if close else "no setting has that name"
                if name == "POSTKEY_RESOLVER":
                    hint = "the resolver is a function: it cannot come from the environment"
                named.append(f"{name} ({hint})")
            plural = "s" if len(named) > 1 else ""
            message = f"unknown environment variable{plural} " + "; ".join(named)
            if strict:
                raise InvalidValue(message)
            logging.getLogger("postkey").warning("%s: ignored", message)
        changes: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"POSTKEY_{f.name.upper()}")
            if raw is None or f.name in ("policy", "resolver"):
                continue
            if f.type == "int":
                try:
                    changes[f.name] = int(raw)
                except ValueError:
                    raise InvalidValue(
                        f"POSTKEY_{f.name.upper()}={raw!r} is not an integer"
                    ) from None
            elif f.type == "bool":
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise InvalidValue(f"POSTKEY_{f.name.upper()}={raw!r} is not a boolean")
                changes[f.name] = raw.lower() in ("1", "true", "yes")
            elif "None" in str(f.type):
                changes[f.name] = raw or None
            else:
                changes[f.name] = raw
        mode = env.get("POSTKEY_POLICY", "allow_all")
        allow = tuple(r for r in env.get("POSTKEY_ALLOW", "").split(",") if r.strip())
        deny = tuple(r for r in env.get("POSTKEY_DENY", "").split(",") if r.strip())
        changes["policy"] = DestinationPolicy(mode, allow, deny)  # type: ignore[arg-type]
        return cls(**changes)


# Upper bounds, so that what a client accepts the transport can take (libcurl's options are C
# longs; a wait on a lock takes at most a few hundred years of seconds) and a typo of a few
# digits is an error, not a setting that makes every request fail.
_DAY_MS = 86_400_000
_MOST_MS = 31 * _DAY_MS
_MOST_TTL_MS = 365 * _DAY_MS
_MOST_BYTES = 1 << 40
_MOST_COUNT = (1 << 31) - 1
_MOST_WHY = {
    _MOST_MS: "31 days",
    _MOST_TTL_MS: "365 days",
    _MOST_BYTES: "1 TiB",
    _MOST_COUNT: "2**31 - 1",
}


_OWN_RANGE = ("lease_ms", "claim_idle_ms", "retries", "max_deliveries")  # narrower, below


def _most(name: str) -> int:
    """The largest value the int setting ``name`` may take."""
    if name in ("result_ttl_ms", "tombstone_ttl_ms"):
        return _MOST_TTL_MS
    if name.endswith("_ms"):
        return _MOST_MS
    if name.endswith("_bytes"):
        return _MOST_BYTES
    return _MOST_COUNT


# What libcurl would put on the wire as it is: a user agent is a header value (no CR, LF, NUL
# or other control character), a proxy a URL (nothing to escape either).
_BAD_HEADER_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
_BAD_URL_CHAR = re.compile(r"[^\x21-\x7e]")
_MOST_TEXT = 2048


def _check_transport_text(name: str, value: object, bad: re.Pattern[str], optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise InvalidValue(f"{name} must be a str, not {type(value).__name__}")
    if len(value) > _MOST_TEXT:
        raise InvalidValue(f"{name} is {len(value)} characters long; the maximum is {_MOST_TEXT}")
    found = bad.search(value)
    if found is not None:
        raise InvalidValue(
            f"{name} contains {found.group()!r} at position {found.start()}:"
            " control characters, line breaks and (in a proxy URL) spaces are not allowed"
        )


_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY = b"PRIVATE KEY-----"  # BEGIN PRIVATE KEY, BEGIN RSA / EC / ENCRYPTED PRIVATE KEY
_MAX_PEM_BYTES = 1024 * 1024


def _check_connection(cert: object, key: object, http_version: object) -> None:
    """Check the connection fields: a client's certificate problems surface here, at
    construction, rather than as a TLS failure of every request."""
    if http_version is not None and http_version not in HTTP_VERSIONS:
        raise InvalidValue(f"http_version must be '1.1', '2' or None, not {http_version!r}")
    if key is not None and cert is None:
        raise InvalidValue("client_key was given without client_cert")
    if cert is not None:
        text = _read_pem("client_cert", cert)
        if _PEM_CERT not in text:
            raise InvalidValue(f"client_cert {cert!r} holds no PEM certificate")
        if key is None and _PEM_KEY not in text:
            raise InvalidValue(
                f"client_cert {cert!r} holds no private key; give its key file as client_key"
            )
    if key is not None and _PEM_KEY not in _read_pem("client_key", key):
        raise InvalidValue(f"client_key {key!r} holds no PEM private key")


def _read_pem(name: str, path: object) -> bytes:
    if not isinstance(path, str):
        raise InvalidValue(f"{name} must be a str path to a PEM file, not {type(path).__name__}")
    try:
        with open(path, "rb") as f:
            return f.read(_MAX_PEM_BYTES)
    except OSError as exc:
        raise InvalidValue(f"{name} {path!r} is not a readable file ({exc.strerror})") from None
