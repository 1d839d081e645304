"""What only a Redis Cluster can do to the store: a slot that moves to another master while a
process waits on a key in it, and a master that is down for some keys and not for others.

(The contract, queue and fault tests run on a Cluster too, through the ``redis_url`` fixture.)
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

import postkey
from postkey import Client, State
from postkey._stores.names import Names
from postkey.testing import LocalRedisCluster

from .spy import spy_client


@pytest.fixture
def cluster() -> Iterator[LocalRedisCluster]:
    """A Cluster of this test's own (slots are moved and nodes killed)."""
    made = LocalRedisCluster().start()
    yield made
    made.stop()


def _move_slot(cluster: LocalRedisCluster, slot: int) -> None:
    """Move ``slot``, and its keys, from the master that holds it to another master."""
    spy = spy_client(cluster.url)
    nodes = {f"127.0.0.1:{n.port}": n for n in cluster.nodes}
    source = spy.nodes_manager.slots_cache[slot][0]
    target_name = next(name for name in nodes if name != source.name)
    src = spy.get_redis_connection(source)
    dst = spy.get_redis_connection(spy.get_node(node_name=target_name))
    src_id, dst_id = src.cluster("myid"), dst.cluster("myid")
    src_id = src_id.decode() if isinstance(src_id, bytes) else src_id
    dst_id = dst_id.decode() if isinstance(dst_id, bytes) else dst_id
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
        port = nodes[target_name].port
        src.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
    for node in cluster.nodes:
        other = spy.get_redis_connection(spy.get_node(node_name=f"127.0.0.1:{node.port}"))
        other.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    spy.close()


def test_a_wait_survives_its_slot_moving_to_another_master(
    cluster: LocalRedisCluster, echo: str, caplog: pytest.LogCaptureFixture
) -> None:
    p = f"m{uuid.uuid4().hex[:8]}"
    with Client(store=cluster.url, store_prefix=p) as sender:
        key = sender.get_async(echo + "/delay/1500", timeout_ms=10_000)
        sender.flush()
        got: list[postkey.Result] = []
        woke_at: list[float] = []
        with Client(store=cluster.url, store_prefix=p) as reader:

            def wait() -> None:
                got.append(reader.wait(key, 10))
                woke_at.append(time.time())

            waiter = threading.Thread(target=wait)
            waiter.start()
            # Subscribed on the master that holds the key now (a fixed sleep was too short on a
            # slow machine: the hub then subscribed after the move and heard nothing go).
            deadline = time.monotonic() + 10
            while reader._store.subscriptions() < 1 and time.monotonic() < deadline:  # type: ignore[attr-defined]
                time.sleep(0.01)
            time.sleep(0.1)
            slot = spy_client(cluster.url).keyslot(Names(p).record(key))
            _move_slot(cluster, slot)
            waiter.join(15)
        result = sender.wait(key, 10)
    assert result.state is State.DONE and result.status == 200
    assert got and got[0].state is State.DONE and got[0].body == result.body
    assert result.finished_at is not None
    # Woken by the announcement on the new master, not found by the slow last-resort re-check.
    assert woke_at[0] - result.finished_at < 1.0
    # The hub heard the slot go (Redis drops a moved slot's subscribers) and started over.
    assert "moved to another node" in caplog.text


def test_a_master_down_fails_only_its_keys_and_clearly(
    cluster: LocalRedisCluster, echo: str
) -> None:
    p = f"d{uuid.uuid4().hex[:8]}"
    names = Names(p)
    spy = spy_client(cluster.url)
    down = cluster.nodes[0]
    with Client(store=cluster.url, store_prefix=p, store_timeout_ms=500) as client:
        keys = [client.get_async(echo + "/get") for _ in range(64)]
        results = client.wait_many(keys, 10)
        assert all(r.status == 200 for r in results)
        on_down = [k for k in keys if spy.get_node_from_key(names.record(k)).port == down.port]
        elsewhere = [k for k in keys if k not in on_down]
        assert on_down and elsewhere  # 64 random keys cover every master
        down.kill()
        try:
            assert client.get(elsewhere[0]).status == 200  # the other masters answer
            started = time.monotonic()
            with pytest.raises(postkey.StoreUnavailable, match="did not answer"):
                client.get(on_down[0])
            assert time.monotonic() - started < 5  # a clear error, no endless wait
        finally:
            down.start()
            cluster.wait_ok()
        again = client.get_async(echo + "/get")  # the Cluster is whole again: all is well
        assert client.wait(again, 10).status == 200
    spy.close()


def test_a_url_of_the_wrong_kind_is_refused_saying_which_to_use(cluster_redis_url: str) -> None:
    from postkey.testing import LocalRedis
    from postkey.worker import Worker

    node = cluster_redis_url.replace("redis+cluster://", "redis://")
    with pytest.raises(postkey.InvalidValue, match="names a node of a Redis Cluster: use 'redis"):
        Client(store=node)
    worker = Worker(postkey.Settings(store=node))
    with pytest.raises(postkey.InvalidValue, match=r"use 'redis\+cluster://"):
        worker.run()  # at once: no retrying of a misconfiguration
    with LocalRedis() as single:
        wrong = single.replace("redis://", "redis+cluster://")
        with pytest.raises(
            postkey.InvalidValue, match="this Redis is not a Cluster: use 'redis://"
        ):
            Client(store=wrong)
