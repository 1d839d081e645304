"""Run the benchmarks side by side and write docs/BENCHMARKS.md.

W1: 20,000 POSTs of a ~100-byte JSON body at concurrency 256 to a local nginx (1 worker on
CPU 1; every client on CPU 0), every result stored and checked. Each client runs as its own
process; runs are interleaved (client A, B, C, D, then again) so machine noise hits all alike.
Usage: python bench/run.py [--runs 5] [--only postkey,pycurl]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The compiled build (mypyc), unpacked by `make fast`; its clients run with it on PYTHONPATH.
FAST_SITE = ROOT / "build" / "fast-site"
CLIENTS = {
    "postkey": ("postkey (public API, end to end, wait_many)", "postkey_w1.py"),
    "postkey-perkey": (
        "postkey, wait(key) one by one, status + headers + body read",
        "postkey_w1_perkey.py",
    ),
    "postkey-compiled": ("postkey compiled (mypyc), wait_many", "postkey_w1.py"),
    "postkey-perkey-compiled": (
        "postkey compiled (mypyc), wait(key) one by one, status + headers + body",
        "postkey_w1_perkey.py",
    ),
    "postkey-guard": ("postkey, public_only + allow 127.0.0.1", "postkey_w1.py"),
    "postkey-redis": ("postkey, shared store on Redis (sends itself)", "postkey_w1_redis.py"),
    "postkey-redis-compiled": (
        "postkey compiled (mypyc), shared store on Redis (sends itself)",
        "postkey_w1_redis.py",
    ),
    "pycurl": ("bare pycurl CurlMulti loop (keeps status, headers, body)", "pycurl_bare.py"),
    "aiohttp": ("aiohttp, 256 worker tasks", "aiohttp_w1.py"),
    "requests-futures": ("requests-futures, 256 threads", "requests_futures_w1.py"),
}


def ensure_nginx() -> str:
    path = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if path:
        return path
    print("nginx not found: installing it with apt-get", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=True, env=env)
    return shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    def __init__(self) -> None:
        self.binary = ensure_nginx()
        self.prefix = Path(tempfile.mkdtemp(prefix="postkey-bench-nginx-"))
        self.port = free_port()
        conf = (HERE / "nginx.conf").read_text().replace("__PORT__", str(self.port))
        (self.prefix / "nginx.conf").write_text(conf)
        self.url = f"http://127.0.0.1:{self.port}/ingest"

    def __enter__(self) -> Nginx:
        cmd = ["taskset", "-c", "1", self.binary, "-p", str(self.prefix), "-c", "nginx.conf"]
        subprocess.run(cmd, check=True)
        for _ in range(50):
            try:
                with urllib.request.urlopen(self.url, data=b"{}", timeout=1) as r:
                    assert r.read() == b'{"ok":true}'
                break
            except OSError:
                time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        pid = int((self.prefix / "nginx.pid").read_text())
        os.kill(pid, 15)
        time.sleep(0.3)
        shutil.rmtree(self.prefix, ignore_errors=True)


def run_client(
    script: str, url: str, guard: bool = False, compiled: bool = False
) -> dict[str, float]:
    """Run one client process on CPU 0; its JSON line plus peak RSS (MB) from wait4."""
    if compiled and not (FAST_SITE / "postkey").is_dir():
        raise SystemExit(f"{FAST_SITE} has no compiled build: run `make fast` first")
    env = {**os.environ, "W1_URL": url, "PYTHONPATH": str(FAST_SITE if compiled else ROOT / "src")}
    if guard:
        env["W1_GUARD"] = "1"
    proc = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, str(HERE / "clients" / script)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed ({proc.returncode}): {out}")
    row = json.loads(out.strip().splitlines()[-1])
    row["rss_mb"] = usage.ru_maxrss / 1024
    return row


def cached_result_bytes() -> float:
    """Memory one cached 1 KB result costs in the MemCache, measured with tracemalloc."""
    sys.path.insert(0, str(ROOT / "src"))
    import postkey
    from postkey._result import Timings
    from postkey._stores.memcache import MemCache

    head = (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 25 Nov 2026 20:00:00 GMT\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1024\r\nConnection: keep-alive"
    )
    cache = MemCache(
        max_entries=10**6, max_bytes=10**10, default_ttl_ms=10**7, tombstone_ttl_ms=1000
    )
    n = 20_000
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(n):
        key = os.urandom(16).hex()
        cache.set(
            key,
            postkey.Result(
                key,
                postkey.State.DONE,
                status=200,
                raw_head=bytes(head),
                body=os.urandom(1024),
                timings=Timings(0.1, 0.2, 0.3, 0.4, 0.5),
                submitted_at=time.time(),
                finished_at=time.time(),
                attempts=1,
            ),
        )
    per = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    return per


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    nginx = subprocess.run(
        [ensure_nginx(), "-v"], capture_output=True, text=True, check=False
    ).stderr.strip()
    import pycurl

    return (
        f"{os.cpu_count()} cores ({cpu}), {int(mem) // 1024 // 1024} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"{pycurl.version}, {nginx}"
    )


def within_run_ratio(runs: dict[str, list[dict[str, float]]], mine: str, theirs: str) -> float:
    """The median over runs of ``mine``'s req/s over ``theirs``' in the same run."""
    return statistics.median(
        a["rps"] / b["rps"] for a, b in zip(runs[mine], runs[theirs], strict=True)
    )


def median_row(rows: list[dict[str, float]]) -> dict[str, float]:
    rps = [r["rps"] for r in rows]
    return {
        "rps": statistics.median(rps),
        "min": min(rps),
        "max": max(rps),
        "rss_mb": statistics.median(r["rss_mb"] for r in rows),
    }


#: Arguments of the scripts whose output is appended (each takes a few minutes).
BENCH_ARGS = {
    "gateway.py": ("--submits", "10000", "--runs", "3"),
    "workloads.py": ("--rounds", "3"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default=",".join(CLIENTS))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    chosen = [c for c in args.only.split(",") if c]
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in chosen}
    micro: list[dict[str, float]] = []
    w4: list[dict[str, float]] = []
    redis_wake: list[dict[str, float]] = []
    with Nginx() as nginx:
        for c in chosen:  # warm-up (file cache, nginx), not counted
            if c != "requests-futures":
                run_client(CLIENTS[c][1], nginx.url, c == "postkey-guard", "compiled" in c)
        for i in range(args.runs):
            for c in chosen:
                row = run_client(CLIENTS[c][1], nginx.url, c == "postkey-guard", "compiled" in c)
                runs[c].append(row)
                print(
                    f"run {i + 1} {c:17s} {row['rps']:>9,.0f} req/s  {row['rss_mb']:.0f} MB",
                    file=sys.stderr,
                )
            if "postkey" in chosen:
                micro.append(run_client("postkey_micro.py", nginx.url))
                w4.append(run_client("postkey_w4.py", nginx.url))
            if "postkey-redis" in chosen:
                redis_wake.append(run_client("postkey_redis_wake.py", nginx.url))
    med = {c: median_row(r) for c, r in runs.items()}
    lines = [
        f"W1: 20,000 POSTs, ~100-byte JSON body, concurrency 256, local nginx. "
        f"Median of {args.runs} runs, in-process req/s (submit to last result checked); each"
        " ratio is the median of the ratios within each run.",
        "",
        "| client | req/s (median) | min-max | vs bare pycurl | vs aiohttp | vs requests-futures "
        "| vs postkey | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in chosen:
        m = med[c]

        def ratio(other: str, mine: list[dict[str, float]] = runs[c]) -> str:
            # Within each run, then the median: clients of one run share the machine's state
            # (runs are interleaved), so a ratio moves much less than either req/s.
            theirs = runs.get(other)
            if not theirs or len(theirs) != len(mine):
                return "-"
            pairs = zip(mine, theirs, strict=True)
            return f"{statistics.median(a['rps'] / b['rps'] for a, b in pairs):.2f}x"

        lines.append(
            f"| {CLIENTS[c][0]} | {m['rps']:,.0f} | {m['min']:,.0f}-{m['max']:,.0f} | "
            f"{ratio('pycurl')} | {ratio('aiohttp')} | {ratio('requests-futures')} | "
            f"{ratio('postkey')} | {m['rss_mb']:.0f} |"
        )
    if micro:
        lines += [
            "",
            "| postkey figure | median | target |",
            "|---|---:|---:|",
            f"| submits per second, one thread (engine idle) | "
            f"{statistics.median(r['submits_per_s'] for r in micro):,.0f} | >= 200,000 |",
            f"| submits per second, one thread, while the engine sends on the same core | "
            f"{statistics.median(r['submits_per_s_busy'] for r in micro):,.0f} | - |",
            f"| wait wake-up p50 | {statistics.median(r['wake_p50_ms'] for r in micro):.3f} ms"
            " | <= 0.2 ms |",
            f"| wait wake-up p99 | {statistics.median(r['wake_p99_ms'] for r in micro):.3f} ms"
            " | <= 1 ms |",
            f"| memory per cached 1 KB result | {cached_result_bytes():,.0f} bytes | <= 1,638 |",
        ]
    shared = [
        (build, within_run_ratio(runs, mine, theirs))
        for build, mine, theirs in (
            ("pure", "postkey-redis", "postkey"),
            ("compiled", "postkey-redis-compiled", "postkey-compiled"),
        )
        if mine in runs and theirs in runs
    ]
    if shared:
        lines += [
            "",
            "Shared store against embedded, each build against itself (median of the ratios"
            " within each run; target >= 0.8x): "
            + ", ".join(f"{build} {ratio:.2f}x" for build, ratio in shared)
            + ".",
        ]
    if redis_wake:
        lines += [
            "",
            "Wake-up through Redis, across two processes: from the writer's result"
            " (`Result.finished_at`) to a waiter in another process returning from `wait(key)`"
            " (write behind, Redis, sharded pub/sub announcement), 1,000 rounds per run.",
            "",
            "| postkey figure | median of runs | target |",
            "|---|---:|---:|",
            f"| wake-up through Redis p50 | "
            f"{statistics.median(r['wake_p50_ms'] for r in redis_wake):.2f} ms | <= 2 ms |",
            f"| wake-up through Redis p99 | "
            f"{statistics.median(r['wake_p99_ms'] for r in redis_wake):.2f} ms | <= 10 ms |",
        ]
    if w4:
        lines += [
            "",
            "W4: 20,000 POSTs at concurrency 256 (max_per_host 64); one in ten goes to a host that"
            " accepts connections and never answers (2 s timeout), the rest to nginx.",
            "",
            "| postkey W4 figure | median | target |",
            "|---|---:|---:|",
            f"| fast requests per second, all fast | "
            f"{statistics.median(r['fast_rps_all_fast'] for r in w4):,.0f} | - |",
            f"| fast requests per second, 10% to the silent host | "
            f"{statistics.median(r['fast_rps_mixed'] for r in w4):,.0f} | - |",
            f"| mixed / all fast (same process) | "
            f"{statistics.median(r['ratio'] for r in w4):.2f}x | >= 0.8x |",
            f"| fast p99 latency, all fast / mixed | "
            f"{statistics.median(r['p99_all_fast_ms'] for r in w4):,.0f} ms / "
            f"{statistics.median(r['p99_mixed_ms'] for r in w4):,.0f} ms | - |",
        ]
    table = "\n".join(lines)
    print(table)
    extras = "\n" + (HERE / "w1_profile.md").read_text()
    if not args.no_write:
        for script, title in (
            ("deadlines.py", "Deadlines against slow servers"),
            ("memory_bounds.py", "Memory under a capped response"),
            ("gateway.py", "The HTTP gateway"),
            ("workloads.py", "More workloads: TLS, HTTP/2, many hosts, large bodies, load"),
        ):
            env = dict(os.environ)
            if "postkey" in med:  # the gateway's submits are compared with embedded W1
                env["BENCH_EMBEDDED_W1"] = str(med["postkey"]["rps"])
            out = subprocess.run(
                [sys.executable, str(HERE / script), *BENCH_ARGS.get(script, ())],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            ).stdout.strip()
            print(out)
            extras += f"\n## {title}\n\n`bench/{script}`:\n\n{out}\n"
    if not args.no_write:
        doc = ROOT / "docs" / "BENCHMARKS.md"
        doc.write_text(
            "# Benchmarks\n\n"
            "Produced by `make bench` (`bench/run.py`); do not edit by hand.\n\n"
            f"Measured {date.today().isoformat()} on: {machine()}.\n"
            "nginx: 1 worker pinned to CPU 1, `keepalive_requests 1000000`, fixed 11-byte JSON"
            " answer. Clients: one process each, pinned to CPU 0; every response is stored"
            " under a key and checked (status 200, exact body).\n\n"
            f"{table}\n{extras}\n"
            "Queued mode (workers) beside arq and Celery: [BENCHMARKS_QUEUED.md]"
            "(BENCHMARKS_QUEUED.md) (`bench/queued.py`).\n\n"
            "How the figures are taken: see `bench/run.py` and `bench/clients/`. Ratios from the"
            " same run are the numbers to read; absolute req/s on a shared 2-core VM move by"
            " +-10% between runs.\n"
        )
        print(f"wrote {doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
