"""Where the shared store's time goes in W1: CPU per request, thread by thread.

Runs W1 (as bench/clients/postkey_w1.py and postkey_w1_redis.py: 20,000 POSTs, concurrency
256, local nginx on CPU 1, the client on CPU 0, its redis-server beside nginx) in three forms,
interleaved, each in a process of its own:

- ``embedded``: the memory store;
- ``shared``: the Redis store, as the benchmark runs it;
- ``shared-unregistered``: the Redis store with its pending records left out (a key is not
  written at the submit), its results written as in ``shared``: the most that any cheaper way of
  making a key visible as pending could gain;
- ``shared-unwritten``: the Redis store with its writes left out: a pending record is not
  written, a result counts as landed at once (its waiters woken, its job forgotten) without
  being encoded or sent. Everything else (the client, the engine, the store's own bookkeeping,
  the threads and the redis-server) is as in ``shared``: the difference is what writing costs.

For each it prints req/s, the ratio to ``embedded`` of the same round (median over rounds) and
the CPU each thread spent per request, from the first submit to the last result read (from
/proc: the threads of the client process only; Redis and nginx run on the other core).
Usage: python bench/shared_store_costs.py [--rounds 6]   (the pure build: the compiled one's
classes cannot be patched).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FORMS = ("embedded", "shared", "shared-unregistered", "shared-unwritten")
_CLK = os.sysconf("SC_CLK_TCK")


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by thread name."""
    names = {t.native_id: t.name.removeprefix("postkey-") for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        name = names.get(int(tid), "other")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / _CLK
    return out


def _leave_writes_out(client: object) -> None:
    """The ``shared-unwritten`` form: the store's write queue drops registrations and lands
    results at once (their completion called as if Redis had taken them); a key read back
    (one that ended before the wait began) is answered from memory, as nothing reached Redis."""
    store = client._store_
    landed: dict[str, object] = {}

    def put(script, keys, args, done=None, arg=None) -> None:
        if done is not None:
            landed[arg[0].key] = arg[1]  # (job, result): see RedisStore.finish
            done(arg, 1)

    store._writes.put = put
    store._read_many = lambda keys: [landed[k] for k in keys]


def _leave_registers_out(client: object) -> None:
    """The ``shared-unregistered`` form: the store's write queue drops the pending records
    (`RedisStore.register`'s writes); results go to Redis as in ``shared``."""
    store = client._store_
    put = store._writes.put

    def put_but_registers(script, keys, args, done=None, arg=None) -> None:
        if script is not store._register:
            put(script, keys, args, done, arg)

    store._writes.put = put_but_registers


def client(form: str) -> None:
    """One W1 run in this process; prints a JSON line."""
    sys.path.insert(0, str(HERE))
    import postkey
    from postkey.testing import LocalRedis
    from workload import BODY, CONCURRENCY, EXPECTED, HEADERS, URL, N

    server = LocalRedis() if form != "embedded" else None
    url = server.__enter__() if server is not None else "memory://"
    if server is not None and server.pid is not None:
        os.sched_setaffinity(server.pid, {1})  # beside nginx, as in bench/run.py
    c = postkey.Client(max_in_flight=CONCURRENCY, max_per_host=CONCURRENCY, max_queue=N, store=url)
    if form == "shared-unwritten":
        _leave_writes_out(c)
    elif form == "shared-unregistered":
        _leave_registers_out(c)
    before = _thread_cpu()
    started = time.perf_counter()
    keys = [c.post_async(URL, BODY, HEADERS, 30000) for _ in range(N)]
    results = c.wait_many(keys)
    elapsed = time.perf_counter() - started
    after = _thread_cpu()
    good = sum(1 for r in results if r.status == 200 and r.body == EXPECTED)
    cpu = {k: v - before.get(k, 0.0) for k, v in after.items()}
    print(json.dumps({"rps": N / elapsed, "ok": good, "n": N, "cpu": cpu}))
    c.close()
    if server is not None:
        server.__exit__(None, None, None)
    sys.exit(0 if good == N else 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--client", choices=FORMS)
    args = parser.parse_args()
    if args.client:
        client(args.client)
        return
    from run import ROOT, Nginx

    rows: dict[str, list[dict]] = {f: [] for f in FORMS}
    with Nginx() as nginx:
        env = {**os.environ, "W1_URL": nginx.url, "PYTHONPATH": str(ROOT / "src")}
        for i in range(args.rounds + 1):  # the first round warms up, not counted
            for form in FORMS:
                cmd = ["taskset", "-c", "0", sys.executable, __file__, "--client", form]
                out = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{form} failed: {out.stdout}{out.stderr}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                if i:
                    rows[form].append(row)
                print(f"round {i} {form:20s} {row['rps']:>8,.0f} req/s", file=sys.stderr)
    threads = ("MainThread", "engine", "redis-writes")
    print(
        "| form | req/s (median) | vs embedded | CPU µs per request: submitting thread"
        " | engine | Redis writer | all threads |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for form in FORMS:
        mine = rows[form]
        ratio = statistics.median(
            a["rps"] / b["rps"] for a, b in zip(mine, rows["embedded"], strict=True)
        )

        def us(pick, mine: list[dict] = mine) -> str:
            return f"{statistics.median(pick(r['cpu']) / r['n'] * 1e6 for r in mine):.1f}"

        cells = [us(lambda cpu, t=t: cpu.get(t, 0.0)) for t in threads]
        print(
            f"| {form} | {statistics.median(r['rps'] for r in mine):,.0f} | {ratio:.2f}x | "
            + " | ".join(cells)
            + f" | {us(lambda cpu: sum(cpu.values()))} |"
        )


if __name__ == "__main__":
    main()
