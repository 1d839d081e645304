"""MemCache: TTL, tombstones, LRU and byte bounds, and waits that are woken, not polled."""

from __future__ import annotations

import threading
import time

import pytest

import postkey
from postkey import Client, State
from postkey._settings import Settings
from postkey._stores.memcache import MemCache
from postkey._stores.memory import MemoryStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock, **kw: int) -> MemCache:
    opts = {
        "max_entries": 100,
        "max_bytes": 10**9,
        "default_ttl_ms": 1000,
        "tombstone_ttl_ms": 5000,
    }
    opts.update(kw)
    return MemCache(clock=clock, **opts)


def test_entries_expire_after_their_ttl_and_leave_a_tombstone() -> None:
    clock = FakeClock()
    cache = make(clock)
    cache.set("a", "1")
    cache.set("b", "2", ttl_ms=3000)
    clock.now += 0.999
    assert cache.get("a") == "1"
    clock.now += 0.002
    assert cache.get("a") is None and cache.exists("b")
    assert cache.tombstone("a") == "" and cache.tombstone("b") is None
    assert cache.count() == 1
    clock.now += 2.0
    assert cache.count() == 0
    clock.now += 5.0
    assert cache.tombstone("a") is None  # the tombstone has its own TTL
    assert cache.expirations == 2


def test_least_recently_used_is_evicted_by_count() -> None:
    cache = make(FakeClock(), max_entries=3)
    for key in "abc":
        cache.set(key, key)
    cache.get("a")  # a is now the most recently used
    cache.set("d", "d")
    assert not cache.exists("b")
    assert all(cache.exists(k) for k in "acd")
    assert cache.evictions == 1
    assert cache.tombstone("b") == ""


def test_byte_bound_evicts_until_it_fits() -> None:
    cache = make(FakeClock(), max_bytes=10_000)
    for i in range(10):
        cache.set(f"k{i}", "x" * 2000)
    assert cache.bytes_used <= 10_000
    assert cache.count() == 4
    assert not cache.exists("k0") and cache.exists("k9")
    cache.set("big", "x" * 20_000)  # alone larger than the bound: not kept
    assert not cache.exists("big")
    assert cache.bytes_used <= 10_000


def test_delete_and_clear() -> None:
    cache = make(FakeClock())
    cache.set("a", b"bytes")
    assert cache.delete("a") and not cache.delete("a")
    assert cache.tombstone("a") is None  # deleted on purpose: unknown, not expired
    cache.set("b", "v")
    cache.clear()
    assert cache.count() == 0 and cache.bytes_used == 0


def test_replacing_and_deleting_many_keys_keeps_the_expiry_index_bounded() -> None:
    cache = make(FakeClock(), max_entries=10)
    for i in range(20_000):
        cache.set(f"k{i % 50}", str(i), ttl_ms=1000 + i)  # every TTL distinct
        if i % 3 == 0:
            cache.delete(f"k{(i + 7) % 50}")
    # Replaced, deleted and evicted entries leave shells in the expiry heap; they are compacted
    # away a few at a time, so the index stays within twice the live entries plus a constant.
    assert len(cache._heap) + len(cache._old) <= 2 * 10 + 1024 + 8


def test_status_of_an_unknown_key_stays_cheap_with_100k_distinct_ttls() -> None:
    clock = FakeClock()
    cache = make(clock, max_entries=10**6)
    for i in range(100_000):
        cache.set(f"k{i}", "v", ttl_ms=10_000 + i)
    started = time.monotonic()
    for _ in range(20):
        assert cache.tombstone("never-set") is None
        assert cache.count() == 100_000
    # A walk over every entry per call took ~100 ms each; O(1) calls end in well under 1 s.
    assert time.monotonic() - started < 1.0


def test_a_write_reclaims_only_a_bounded_number_of_expired_entries() -> None:
    clock = FakeClock()
    cache = make(clock, max_entries=10**6)
    for i in range(10_000):
        cache.set(f"k{i}", "v")
    clock.now += 2.0
    cache.set("fresh", "v")
    assert 0 < cache.expirations <= 64  # not all 10,000 under the lock at once
    assert cache.get("k9999") is None and cache.exists("fresh")  # reads stay exact meanwhile


def test_count_is_exact_for_live_entries_with_mixed_ttls() -> None:
    clock = FakeClock()
    cache = make(clock, max_entries=1000)
    for i in range(300):
        cache.set(f"k{i}", "v", ttl_ms=100 * (1 + i % 10))
    clock.now += 0.55  # TTLs of 100..500 ms have passed: half the entries
    assert cache.count() == 150
    assert cache.count() == 150


def test_reap_reclaims_expired_entries_in_bounded_steps() -> None:
    clock = FakeClock()
    cache = make(clock, max_entries=10**6)
    for i in range(10_000):
        cache.set(f"k{i}", "x" * 100, ttl_ms=50 + i % 7)
    clock.now += 1.0
    steps = []
    while (done := cache.reap(1000)) > 0:
        steps.append(done)
        assert len(steps) < 100
    assert max(steps) <= 1000
    assert cache.expirations == 10_000 and cache.bytes_used == 0


def test_store_tick_reclaims_expired_entries_and_tombstones_while_idle() -> None:
    clock = FakeClock()
    store = MemoryStore(Settings(tombstone_ttl_ms=1000), clock=clock)
    for i in range(10_000):
        store.cache_set(f"k{i}", "x" * 100, ttl_ms=100 + i % 50)
    clock.now += 1.0
    first = store.tick()
    assert 0 < first < 10_000  # bounded work per tick
    ticks = 1
    while store.cache.bytes_used:
        store.tick()
        ticks += 1
        assert ticks < 100
    assert store.cache.expirations == 10_000
    assert store.lookup("k0").state is State.EXPIRED
    clock.now += 2.0  # the tombstones' own TTL
    while store.cache.tombstone_bytes:
        store.tick()
        ticks += 1
        assert ticks < 200
    assert store.lookup("k0").state is State.UNKNOWN


def test_many_distinct_short_lived_keys_keep_tombstone_memory_bounded() -> None:
    import tracemalloc

    bound = 256 * 1024
    store = MemoryStore(Settings(cache_max_bytes=bound))
    for i in range(200_000):
        store.cache_set(f"key-{i:08d}", "v", 1)
    # Tombstones are capped at max_tombstone_bytes and never more than cache_max_bytes.
    assert 0 < store.cache.tombstone_bytes <= bound
    assert 0 < len(store.cache._tombs) < bound // 50
    # And the memory really stays flat (traced for part of the run: tracing is slow).
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(40_000):
        store.cache_set(f"more-{i:08d}", "v", 1)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 512 * 1024, grown
    assert store.cache.tombstone_bytes <= bound


def test_wait_is_woken_by_set_without_polling() -> None:
    cache = make(FakeClock())
    got: list[object] = []
    cpu: list[float] = []

    def waiter() -> None:
        started = time.thread_time()
        got.append(cache.wait("late", timeout=10))
        cpu.append(time.thread_time() - started)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.5)
    set_at = time.monotonic()
    cache.set("late", "value")
    thread.join(5)
    woke_after = time.monotonic() - set_at
    assert got == ["value"]
    assert woke_after < 0.2
    # A polling loop would have burnt CPU for half a second; a blocked thread burns none.
    assert cpu[0] < 0.02


def test_wait_times_out_with_the_default() -> None:
    cache = make(FakeClock())
    started = time.monotonic()
    assert cache.wait("never", timeout=0.2, default="d") == "d"
    assert 0.15 < time.monotonic() - started < 1.0
    assert cache._waiters == {}  # the waiter was unregistered


def test_client_cache_api_and_request_keys_are_protected(client: Client, echo: str) -> None:
    client.cache_set("greeting", "hello", ttl_ms=60000)
    assert client.cache_get("greeting") == "hello"
    assert client.cache_exists("greeting")
    with pytest.raises(postkey.InvalidValue):
        client.cache_set("n", 5)  # type: ignore[arg-type]
    for ttl in (0, -1, 1.5, True, 10**12):
        with pytest.raises(postkey.InvalidValue):
            client.cache_set("t", "v", ttl_ms=ttl)  # type: ignore[arg-type]
    with pytest.raises(postkey.InvalidKey):
        client.cache_set("bad key", "v")
    key = client.get_async(echo, timeout_ms=5000)
    with pytest.raises(postkey.KeyConflict):
        client.cache_set(key, "overwrite")  # pending request
    client.wait(key, 10)
    with pytest.raises(postkey.KeyConflict):
        client.cache_set(key, "overwrite")  # its result
    assert isinstance(client.cache_get(key), postkey.Result)
    assert client.cache_count() == 2
    assert client.cache_delete(key)
    assert client.status(key) == State.UNKNOWN
    assert client.cache_wait("greeting", 1) == "hello"
    client.cache_clear()
    assert client.cache_count() == 0


def test_results_expire_to_the_expired_state(echo: str) -> None:
    with Client(result_ttl_ms=200) as c:
        key = c.get_async(echo, timeout_ms=5000)
        assert c.wait(key, 5).state == State.DONE
        time.sleep(0.3)
        assert c.status(key) == State.EXPIRED
        assert not c.exists(key)
        assert c.wait(key, 5).state == State.EXPIRED
        short = c.get_async(echo, timeout_ms=5000, ttl_ms=100_000)
        c.wait(short, 5)
        time.sleep(0.3)
        assert c.status(short) == State.DONE  # per-request TTL


def test_an_expired_caller_key_is_still_idempotent(echo: str) -> None:
    with Client(result_ttl_ms=100) as c:
        c.wait(c.post_async(echo, "a", None, 5000, key="idem"), 5)
        time.sleep(0.2)
        assert c.status("idem") == State.EXPIRED
        assert c.post_async(echo, "a", None, 5000, key="idem") == "idem"
        assert c.status("idem") == State.EXPIRED  # nothing sent again
        with pytest.raises(postkey.KeyConflict):
            c.post_async(echo, "b", None, 5000, key="idem")


def test_a_cached_1_kb_result_costs_about_1_6_kb() -> None:
    import tracemalloc

    from postkey._result import Timings

    head = (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 25 Nov 2026 20:00:00 GMT\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1024\r\nConnection: keep-alive"
    )
    cache = make(FakeClock(), max_entries=10**6)
    n = 5000
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        key = f"{i:032x}"
        result = postkey.Result(
            key,
            State.DONE,
            status=200,
            raw_head=bytes(head),
            body=bytes(1024),
            timings=Timings(0.1 * i, 0.2, 0.3, 0.4, 0.5),
            submitted_at=1.0 * i,
            finished_at=2.0 * i,
            attempts=1,
        )
        cache.set(key, result)
    per_entry = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    assert per_entry <= 1.6 * 1024, per_entry


def test_entries_kept_through_a_heap_rebuild_still_expire() -> None:
    # Deleting many entries leaves shells in the expiry heap; past a point the heap is rebuilt,
    # a few items per write. The live entries it carries over must keep their expiry (on the
    # compiled build an identity test of the float times dropped every one of them).
    clock = FakeClock()
    cache = make(clock, max_entries=100_000)
    for i in range(100):
        cache.set(f"keep{i}", "v", ttl_ms=2500)
    rebuilding = False
    for i in range(3000):
        cache.set(f"gone{i}", "v", ttl_ms=60_000)
        cache.delete(f"gone{i}")
        rebuilding = rebuilding or bool(cache._old)
    for i in range(400):  # writes move the rebuild along
        cache.set(f"w{i}", "v", ttl_ms=1000)
    assert rebuilding and not cache._old, "setup: a rebuild ran and has finished"
    clock.now += 61.0
    while cache.reap(2048):
        pass
    assert cache.count() == 0
    assert not cache._entries


# -- partitions: namespaces that cannot evict each other (the gateway's tenants) -----------------


def test_a_partitioned_store_keeps_each_namespace_within_its_own_share() -> None:
    store = MemoryStore(Settings(cache_max_bytes=300_000), clock=FakeClock())
    store.partition_cache(["a~", "b~"])  # 150,000 bytes each
    store.cache_set("a~keep", "x" * 1000, None)
    for i in range(100):
        store.cache_set(f"b~noise{i}", "y" * 10_000, None)
    assert store.cache_get("a~keep") == "x" * 1000
    entries, used, evictions = store.cache_stats()
    assert 1 < entries < 16 and used <= 300_000 and evictions == 100 - (entries - 1)
    assert store.cache_get("b~noise99") is not None and store.lookup("b~noise0").state is (
        State.EXPIRED
    )
    store.cache_set("elsewhere", "z", None)  # under no namespace: the store's own cache
    assert store.cache_exists("elsewhere") and store.cache_count() == entries + 1
    with pytest.raises(postkey.InvalidValue, match="holds at most 150000"):
        store.cache_set("a~huge", "h" * 150_000, None)
    assert not store.cache_exists("a~huge")
    with pytest.raises(postkey.InvalidValue, match="before anything is stored"):
        store.partition_cache(["c~"])
    store.cache_clear()
    assert store.cache_count() == 0


def test_partitions_take_namespaces_with_one_separator() -> None:
    for bad in ([], ["a~", "b:"], ["a~", ""]):
        with pytest.raises(postkey.InvalidValue, match="one separator"):
            MemoryStore(Settings()).partition_cache(bad)


def test_results_of_one_namespace_evict_only_results_of_the_same(echo: str) -> None:
    with Client(cache_max_entries=10) as c:
        c._store.partition_cache(["a~", "b~"])  # type: ignore[attr-defined]  # 5 entries each
        mine = c.wait(c.get_async(echo, timeout_ms=5000, key="a~mine"), 5)
        assert mine.state is State.DONE
        # One at a time, each read as it lands: submitted together, a result could land and be
        # evicted by the others (5 places) before the wait looked at it.
        for i in range(20):
            assert c.wait(c.get_async(echo, timeout_ms=5000, key=f"b~k{i}"), 5).state is State.DONE
        assert c.get("a~mine").state is State.DONE
        assert c.status("b~k0") is State.EXPIRED and c.status("b~k19") is State.DONE
        assert c.get_async(echo, timeout_ms=5000, key="a~mine") == "a~mine"  # idempotent
        with pytest.raises(postkey.KeyConflict):
            c.post_async(echo, "other", None, 5000, key="a~mine")
        threading.Timer(0.05, c.cache_set, ("a~later", "v")).start()
        assert c.cache_wait("a~later", 5) == "v"  # woken from its partition


def test_ticks_reclaim_every_partition_even_behind_a_large_backlog() -> None:
    clock = FakeClock()
    store = MemoryStore(Settings(tombstone_ttl_ms=1000), clock=clock)
    store.partition_cache(["a~", "b~"])
    for i in range(10_000):
        store.cache_set(f"a~k{i}", "x", ttl_ms=100)
    store.cache_set("b~only", "y", ttl_ms=100)
    clock.now += 1.0
    store.tick(limit=2048)
    store.tick(limit=2048)  # a's backlog is far from done, and b has had its turn
    assert store._parts["b~"].expirations == 1
    assert store._parts["a~"].expirations < 10_000


def test_partitions_share_the_tombstone_bound_and_the_idempotency_key_bound(echo: str) -> None:
    clock = FakeClock()
    store = MemoryStore(
        Settings(max_tombstone_bytes=1 << 20, tombstone_ttl_ms=3_600_000), clock=clock
    )
    store.partition_cache(["a~", "b~", "c~", "d~"])
    for ns in "abcd":
        for i in range(20_000):
            store.cache_set(f"{ns}~k{i}", "x", ttl_ms=1)
    clock.now += 1.0
    while store.tick():
        pass
    assert sum(c.tombstone_bytes for c in store._caches()) <= 1 << 20  # not 1 MiB each

    with Client(max_idempotency_keys=8) as c:
        c._store.partition_cache(["a~", "b~"])  # type: ignore[attr-defined]  # 4 keys each
        for i in range(4):
            c.wait(c.get_async(echo, timeout_ms=5000, key=f"b~k{i}"), 5)
        with pytest.raises(postkey.IdempotencyKeysFull):
            c.get_async(echo, timeout_ms=5000, key="b~one-more")
        # b's keys fill b's share only: a still has its own.
        assert c.wait(c.get_async(echo, timeout_ms=5000, key="a~mine"), 5).state is State.DONE


def test_a_result_larger_than_the_cache_is_handed_over_but_evicts_nothing_else(echo: str) -> None:
    # One result over cache_max_bytes used to evict every other result, then itself.
    with Client(cache_max_bytes=1 << 20, max_response_bytes=4 << 20) as c:
        small = [c.get_async(echo + "/bytes/1000", timeout_ms=5000) for _ in range(20)]
        assert all(r.status == 200 for r in c.wait_many(small, 10))
        got: list[postkey.Result] = []
        big = c.get_async(echo + "/bytes/2000000", timeout_ms=5000, on_done=got.append)
        result = c.wait(big, 10)
        assert result.status == 200 and len(result.body) == 2_000_000  # its waiter has it
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(got) == 1 and len(got[0].body) == 2_000_000  # and its callback
        assert all(c.exists(k) for k in small)  # the others stay
        assert c.get(big).state is State.EXPIRED  # it alone could not be kept
        assert c.cache_count() == 20


def test_a_value_over_the_byte_bound_set_directly_leaves_the_others() -> None:
    cache = make(FakeClock(), max_bytes=10_000)
    for i in range(10):
        cache.set(f"k{i}", b"v" * 10)
    cache.set("huge", b"x" * (cache.max_bytes + 1))
    assert all(cache.get(f"k{i}") == b"v" * 10 for i in range(10))
    assert cache.get("huge") is None and cache.evictions == 1
