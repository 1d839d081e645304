"""Wake-up latency through Redis, across two processes: from the moment the writer's engine has
a result (``Result.finished_at``) to the moment a waiter in another process, blocked in
``wait(key)``, has it: the write behind, Redis, the sharded pub/sub announcement and the wake.

The writer is a shared-store client that sends each request itself; the waiter waits push-based.
Timestamps are the wall clock, one clock for both processes on this machine.
Prints one JSON line (p50 / p99 / max in ms over the rounds). Redis: a LocalRedis of its own.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 2)[0])

import postkey
from postkey.testing import LocalRedis, LocalServer

ROUNDS = int(os.environ.get("WAKE_ROUNDS", "1000"))


def waiter(url: str, keys: mp.Queue, woke: mp.Queue) -> None:
    with postkey.Client(store=url) as client:
        while (key := keys.get()) is not None:
            result = client.wait(key, 10)
            woke.put((time.time(), result.state.value))


def main() -> None:
    with LocalRedis() as url, LocalServer() as server:
        spawn = mp.get_context("spawn")  # a fresh interpreter: no threads inherited
        keys: mp.Queue = spawn.Queue()
        woke: mp.Queue = spawn.Queue()
        other = spawn.Process(target=waiter, args=(url, keys, woke))
        other.start()
        lags: list[float] = []
        with postkey.Client(store=url) as writer:
            for _ in range(ROUNDS + 1):
                # A request that answers after 20 ms: the waiter is subscribed by then.
                key = writer.get_async(server.url + "/delay/20", timeout_ms=5000)
                writer.flush()
                keys.put(key)
                result = writer.wait(key, 10)
                woken, state = woke.get(timeout=10)
                assert state == "done" and result.status == 200
                assert result.finished_at is not None
                lags.append((woken - result.finished_at) * 1000)
        # Round 0 starts before the waiter process has imported postkey: a warm-up.
        del lags[0]
        keys.put(None)
        other.join(10)
    lags.sort()
    print(
        json.dumps(
            {
                "client": "redis-wake",
                "rounds": ROUNDS,
                "wake_p50_ms": lags[len(lags) // 2],
                "wake_p99_ms": lags[int(len(lags) * 0.99)],
                "wake_max_ms": lags[-1],
                "over_100ms": sum(1 for lag in lags if lag > 100),
            }
        )
    )


if __name__ == "__main__":
    main()
