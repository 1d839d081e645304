"""`Gateway`: what one running gateway holds (its config, a client per destination policy, the
activity, metrics and rate limits) and the namespaced calls routes make through it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.requests import Request

from .._async_client import AsyncClient
from .._callbacks import Inline
from .._policy import DestinationPolicy
from .._result import Result
from .._stores.memory import MemoryStore
from ._activity import Activity, host_of
from ._config import GatewayConfig
from ._limits import RateLimiter
from ._metrics import Metrics
from ._tenants import Tenant

_T = TypeVar("_T")
CLOSE_GRACE_S = 5.0  # at shutdown, how long requests in flight may still finish


_ON_DONE_KEPT = 1024


class Gateway:
    """The state of one gateway process. Clients are made by `start` (in the server's process,
    inside its event loop's lifespan) and closed by `aclose`."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.activity = Activity()
        self.limiter = RateLimiter()
        self.waiters = 0  # long-polls waiting now
        self._tenant_waiters: dict[str, int] = {}  # by tenant name, while it has any
        self._pooled_waiters = 0  # those beyond their tenant's reserve
        # Set when the server begins to shut down: long-polls answer what they know and end.
        self.stopping = asyncio.Event()
        self._by_policy: dict[DestinationPolicy, AsyncClient] = {}
        self._by_tenant: dict[str, AsyncClient] = {}
        self.metrics = Metrics(self._engine_stats)
        # (tenant, method, URL) -> its result callback: most submits repeat a few of these, and
        # one made per submit cost a closure on the loop and a URL parse per result.
        self._on_done: dict[tuple[str, str, str], Inline] = {}
        self.metrics.long_polls.set_function(lambda: self.waiters)
        self.remote = config.settings.store != "memory://"

    def start(self) -> None:
        """Make one client per distinct destination policy (tenants with none of their own share
        one): each has its own engine and, with the memory store, its own store."""
        self.stopping = asyncio.Event()  # of this start's event loop
        base = self.config.settings.policy
        for tenant in self.config.tenants:
            policy = base
            if tenant.allow:
                policy = DestinationPolicy(base.mode, base.allow + tenant.allow, base.deny)
            client = self._by_policy.get(policy)
            if client is None:
                client = self._by_policy[policy] = AsyncClient(
                    self.config.settings.replace(policy=policy)
                )
            self._by_tenant[tenant.name] = client
        for client in self._by_policy.values():
            # Tenants that share a memory store get equal shares of its cache: one cannot evict
            # another's values or results. (On Redis, bounding memory is Redis's maxmemory.)
            namespaces = [t.namespace for t in self.config.tenants if self.client(t) is client]
            if isinstance(client._store, MemoryStore) and len(namespaces) > 1:
                client._store.partition_cache(namespaces)

    def begin_shutdown(self) -> None:
        """The server stops: long-polls stop waiting and answer what is known now, so that they
        do not hold the shutdown for up to ``max_wait_s`` (called on the event loop's thread)."""
        self.stopping.set()

    async def aclose(self) -> None:
        """Close every client: requests in flight get `CLOSE_GRACE_S`, the rest are cancelled."""
        self.begin_shutdown()
        clients, self._by_policy, self._by_tenant = list(self._by_policy.values()), {}, {}
        await asyncio.gather(*(c.aclose(timeout=CLOSE_GRACE_S) for c in clients))

    def client(self, tenant: Tenant) -> AsyncClient:
        """The client that sends ``tenant``'s requests and holds its keys."""
        return self._by_tenant[tenant.name]

    @property
    def clients(self) -> list[AsyncClient]:
        """Every client, once."""
        return list(self._by_policy.values())

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)``: at once with the memory store, on a thread with Redis, so that a slow
        store never stalls the event loop."""
        if not self.remote:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def take_waiter_place(self, tenant: Tenant) -> bool:
        """Count one more long-poll of ``tenant`` if it has a place (its reserve of
        ``tenant_waiters``, else the shared ``max_waiters``); False if none is free."""
        held = self._tenant_waiters.get(tenant.name, 0)
        if held >= self.config.tenant_waiters:
            if self._pooled_waiters >= self.config.max_waiters:
                return False
            self._pooled_waiters += 1
        self._tenant_waiters[tenant.name] = held + 1
        self.waiters += 1
        return True

    def give_waiter_place(self, tenant: Tenant) -> None:
        """A long-poll of ``tenant`` ended (after `take_waiter_place` said True)."""
        held = self._tenant_waiters[tenant.name] - 1
        if held >= self.config.tenant_waiters:
            self._pooled_waiters -= 1
        if held:
            self._tenant_waiters[tenant.name] = held
        else:
            del self._tenant_waiters[tenant.name]
        self.waiters -= 1

    def on_done(self, tenant: Tenant, method: str, url: str) -> Callable[[Result], None]:
        """The callback that records a request's result in the activity and the metrics (where
        the result lands: a few microseconds under their own locks, see `Inline`). Called on
        the event loop's thread only."""
        cache_key = (tenant.name, method, url)
        done = self._on_done.get(cache_key)
        if done is None:
            if len(self._on_done) >= _ON_DONE_KEPT:
                self._on_done.clear()  # many distinct URLs: start over
            done = self._on_done[cache_key] = self._recorder(tenant, method, url)
        return done

    def _recorder(self, tenant: Tenant, method: str, url: str) -> Inline:
        activity, metrics, name = self.activity, self.metrics, tenant.name
        skip = len(tenant.namespace)
        try:
            host: str | None = host_of(url)  # once for every result, of both
        except ValueError:  # never for a validated URL; if so, each result works it out
            host = None

        def done(result: Result) -> None:
            activity.finished(name, result.key[skip:], url, result, host)
            metrics.on_result(method, url, result, host)

        return Inline(done)

    def _engine_stats(self) -> tuple[int, int, int | None, int | None, int | None]:
        queued = in_flight = 0
        entries = size = evictions = None
        for client in self.clients:
            # Read-only peeks at the engine and the memory cache, for the metrics only.
            engine = client._engine
            queued += engine.queued
            in_flight += engine.in_flight
            store = client._store
            if isinstance(store, MemoryStore):
                count, used, evicted = store.cache_stats()
                entries = (entries or 0) + count
                size = (size or 0) + used
                evictions = (evictions or 0) + evicted
        return queued, in_flight, entries, size, evictions


def gateway_of(request: Request) -> Gateway:
    """The Gateway serving ``request``."""
    # The app's own attribute (set by create_app), not app.state's: State looks names up
    # through __getattr__, and every call asks.
    gateway: Gateway = request.scope["app"].gateway
    return gateway
