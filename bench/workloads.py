"""W2 (HTTPS), W3 (many host names), W5 (large bodies) and latency under load, side by side.

One local nginx (1 worker, pinned to CPU 1, `bench/nginx_workloads.conf`) serves every workload;
each client runs as its own process pinned to CPU 0, clients interleaved within a round (their
order rotated each round), medians over rounds; a ratio is taken within a round, then its median.
Every result is checked (status and exact body); peak RSS comes from `os.wait4`; nginx's
stub_status accept counter, read before and after each run, gives the connections a run opened.

- W2a: HTTPS (TLS 1.3, certificate from `trustme`), HTTP/1.1, keep-alive, 20,000 POSTs of W1's
  body at concurrency 256.
- W2b: the same over a listener that offers HTTP/2 by ALPN.
- W3: 20,000 POSTs at concurrency 256, request i to host ``h{i % 1000 + 1:04d}.w3.test`` (round
  robin over 1,000 names, all resolved to 127.0.0.1 by the client); nginx logs each request's
  connection serial number and Host, so the table says how many connections and names it saw.
- W5: 2,000 GETs of a 1 MiB static file at concurrency 64: MiB/s and peak RSS.
- latency: postkey on W1 (plain HTTP): a closed-loop run gives its peak req/s, then requests are
  submitted open-loop at 50% of that rate (see bench/clients/latency_postkey.py).

Stdout gets markdown tables; stderr a progress line per run.
Usage: python bench/workloads.py [--rounds 3] [--only w2a,w2b,w3,w5,latency] [--quick]

The second half of this file is imported by the client scripts (bench/clients/w2_*.py, ...):
`finish` prints a client's JSON line, `multi_loop` is the bare pycurl loop of
bench/clients/pycurl_bare.py. Both need nothing beyond the standard library at import time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLIENT_TIMEOUT_S = 300


# -- client side: imported by bench/clients/{w2,w3,w5,latency}_*.py ----------------------------


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def w3_host(i: int, hosts: int) -> str:
    """The host name request ``i`` of W3 goes to: round robin over ``hosts`` names."""
    return f"h{i % hosts + 1:04d}.w3.test"


def w3_plan() -> tuple[int, int, int, str, list[str]]:
    """W3 as the harness set it (environment): requests, concurrency, host names, the port,
    and one URL per host name."""
    hosts = env_int("BENCH_HOSTS", 1000)
    port = os.environ["BENCH_PORT"]
    urls = [f"http://{w3_host(i, hosts)}:{port}/ingest" for i in range(hosts)]
    return env_int("BENCH_N", 20_000), env_int("BENCH_C", 256), hosts, port, urls


def finish(client: str, elapsed: float, n: int, good: int, **extra: object) -> NoReturn:
    """Print the client's JSON line (``elapsed``: seconds from the first submit to the last
    result in hand) and exit 1 unless all ``n`` were good."""
    line = {"client": client, "requests": n, "ok": good, "elapsed_s": elapsed, "rps": n / elapsed}
    print(json.dumps({**line, **extra}), flush=True)
    sys.exit(0 if good == n else 1)


def multi_loop(
    multi: Any,
    handles: list[Any],
    n: int,
    start: Callable[[Any, int], None],
    done: Callable[[Any, int], None],
) -> None:
    """Run ``n`` transfers on a pycurl CurlMulti, one per free handle at a time (so
    ``len(handles)`` is the concurrency): ``start(curl, i)`` configures a handle for transfer
    ``i``, ``done(curl, errno)`` reads a finished one (errno 0: a response). The
    perform / info_read / select loop of bench/clients/pycurl_bare.py."""
    import pycurl

    free = list(handles)
    submitted = finished = 0
    while finished < n:
        while free and submitted < n:
            curl = free.pop()
            start(curl, submitted)
            multi.add_handle(curl)
            submitted += 1
        while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        while True:
            queued, ok, failed = multi.info_read()
            for curl in ok:
                done(curl, 0)
                multi.remove_handle(curl)
                free.append(curl)
                finished += 1
            for curl, errno, _message in failed:
                done(curl, errno)
                multi.remove_handle(curl)
                free.append(curl)
                finished += 1
            if not queued:
                break
        if finished < n:
            multi.select(1.0)


# -- the harness --------------------------------------------------------------------------------


class Spec(NamedTuple):
    """One row of a workload's table: a client script and what it is told through its env."""

    name: str
    label: str
    script: str
    env: dict[str, str]


class Workload(NamedTuple):
    name: str
    specs: list[Spec]
    env: dict[str, str]
    warmup_env: dict[str, str]


class Target:
    """nginx in the foreground (so this process owns it), its certificate, file and logs."""

    def __init__(self, workdir: Path) -> None:
        from run import ensure_nginx, free_port

        self.binary = ensure_nginx()
        self.prefix = workdir / "nginx"
        (self.prefix / "static").mkdir(parents=True)
        # nginx's worker runs as nobody when the master is root: it must reach the static file.
        for path in (workdir, self.prefix, self.prefix / "static"):
            path.chmod(0o755)
        self.ports = {name: free_port() for name in ("HTTP", "TLS", "H2", "W3")}
        conf = (HERE / "nginx_workloads.conf").read_text()
        for name, port in self.ports.items():
            conf = conf.replace(f"__{name}_PORT__", str(port))
        (self.prefix / "nginx.conf").write_text(conf)
        self.ca = str(workdir / "ca.pem")
        self._write_certificate()
        self.blob = self.prefix / "static" / "blob.bin"
        self.blob.write_bytes(os.urandom(1024 * 1024))
        self.blob.chmod(0o644)
        self.http = f"http://127.0.0.1:{self.ports['HTTP']}"
        self._log_offset = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def _write_certificate(self) -> None:
        import trustme

        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(self.ca)
        leaf.cert_chain_pems[0].write_to_path(str(self.prefix / "cert.pem"))
        for pem in leaf.cert_chain_pems[1:]:
            pem.write_to_path(str(self.prefix / "cert.pem"), append=True)
        leaf.private_key_pem.write_to_path(str(self.prefix / "key.pem"))

    def __enter__(self) -> Target:
        import socket
        import urllib.request

        cmd = ["taskset", "-c", "1", self.binary, "-p", f"{self.prefix}/", "-c", "nginx.conf"]
        self._proc = subprocess.Popen(cmd)
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(self.http + "/ingest", data=b"{}", timeout=1) as r:
                    assert r.read() == b'{"ok":true}'
                for port in self.ports.values():
                    socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    log = (self.prefix / "error.log").read_text(errors="replace")
                    raise SystemExit(f"nginx did not start:\n{log}") from None
                time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: nginx's fast shutdown, workers included
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def accepts(self) -> int:
        """nginx's count of accepted connections so far (this read's own included)."""
        import urllib.request

        with urllib.request.urlopen(self.http + "/nginx_status", timeout=5) as r:
            lines = r.read().decode().splitlines()
        return int(lines[2].split()[0])

    def w3_log(self) -> tuple[int, int, int]:
        """(requests, distinct connections, distinct host names) logged since the last call."""
        path = self.prefix / "w3.log"
        if not path.exists():
            return 0, 0, 0
        with path.open("rb") as f:
            f.seek(self._log_offset)
            data = f.read()
        self._log_offset += len(data)
        lines = [line.split() for line in data.decode().splitlines() if line]
        return len(lines), len({c for c, _h in lines}), len({h for _c, h in lines})


def run_client(target: Target, workload: str, spec: Spec, env: dict[str, str]) -> dict[str, Any]:
    """Run one client process on CPU 0; its JSON line, plus peak RSS (MB) from wait4 and the
    connections nginx accepted during the run."""
    import threading

    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env, **spec.env}
    before = target.accepts()
    proc = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, str(HERE / "clients" / spec.script)],
        stdout=subprocess.PIPE,
        env=full_env,
        text=True,
    )
    timer = threading.Timer(CLIENT_TIMEOUT_S, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        out = proc.stdout.read()
        _pid, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(
            f"{workload} {spec.name} ({spec.script}) failed ({proc.returncode}): {out}"
        )
    row: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    row["rss_mb"] = usage.ru_maxrss / 1024
    row["conns"] = target.accepts() - before - 1  # less the second read's own connection
    return row


def workloads(target: Target, quick: bool) -> dict[str, Workload]:
    def n(full: int, small: int) -> str:
        return str(small if quick else full)

    w2 = {"BENCH_N": n(20_000, 2_000), "BENCH_C": "256", "BENCH_CA": target.ca}
    postkey_w2 = [
        Spec("postkey", "postkey, default settings", "w2_postkey.py", {}),
        Spec(
            "postkey-1.1",
            'postkey, http_version="1.1"',
            "w2_postkey.py",
            {"BENCH_HTTP_VERSION": "1.1"},
        ),
        Spec(
            "postkey-2", 'postkey, http_version="2"', "w2_postkey.py", {"BENCH_HTTP_VERSION": "2"}
        ),
    ]
    return {
        "w2a": Workload(
            "w2a",
            [
                Spec("pycurl", "bare pycurl CurlMulti loop, HTTP_VERSION 1.1", "w2_pycurl.py", {}),
                Spec("aiohttp", "aiohttp, 256 worker tasks", "w2_aiohttp.py", {}),
                postkey_w2[0],
                postkey_w2[1],
            ],
            {**w2, "BENCH_URL": f"https://127.0.0.1:{target.ports['TLS']}/ingest"},
            {"BENCH_N": "1000"},
        ),
        "w2b": Workload(
            "w2b",
            [
                Spec(
                    "pycurl",
                    "bare pycurl CurlMulti loop, HTTP_VERSION 2TLS + PIPEWAIT",
                    "w2_pycurl.py",
                    {"BENCH_H2": "1"},
                ),
                Spec(
                    "aiohttp", "aiohttp, 256 worker tasks (it has no HTTP/2)", "w2_aiohttp.py", {}
                ),
                postkey_w2[0]._replace(label="postkey, default settings (HTTP/2 if ALPN agrees)"),
                postkey_w2[2],
            ],
            {**w2, "BENCH_URL": f"https://127.0.0.1:{target.ports['H2']}/ingest"},
            {"BENCH_N": "1000"},
        ),
        "w3": Workload(
            "w3",
            [
                Spec("pycurl", "bare pycurl CurlMulti loop, RESOLVE", "w3_pycurl.py", {}),
                Spec("aiohttp", "aiohttp, 256 worker tasks, static resolver", "w3_aiohttp.py", {}),
                Spec("postkey", "postkey, resolver= (function)", "w3_postkey.py", {}),
            ],
            {
                "BENCH_N": n(20_000, 3_000),
                "BENCH_C": "256",
                "BENCH_HOSTS": "1000",
                "BENCH_PORT": str(target.ports["W3"]),
            },
            {"BENCH_N": "1000"},
        ),
        "w5": Workload(
            "w5",
            [
                Spec("pycurl", "bare pycurl CurlMulti loop (check, drop)", "w5_pycurl.py", {}),
                Spec("aiohttp", "aiohttp, 64 worker tasks (check, drop)", "w5_aiohttp.py", {}),
                Spec("postkey", "postkey, submit all, wait_many", "w5_postkey.py", {}),
                Spec(
                    "postkey-perkey",
                    "postkey, wait(key, take=True) in order, check",
                    "w5_postkey.py",
                    {"BENCH_MODE": "perkey"},
                ),
            ],
            {
                "BENCH_N": n(2_000, 200),
                "BENCH_C": "64",
                "BENCH_URL": target.http + "/blob.bin",
                "BENCH_BLOB": str(target.blob),
            },
            {"BENCH_N": "100"},
        ),
        "latency": Workload(
            "latency",
            [Spec("postkey", "postkey", "latency_postkey.py", {})],
            {
                "BENCH_N": n(20_000, 5_000),
                "BENCH_C": "256",
                "BENCH_SECONDS": n(5, 1),
                "BENCH_FRACTION": "0.5",
                "BENCH_URL": target.http + "/ingest",
            },
            {"BENCH_N": "2000", "BENCH_SECONDS": "0.5"},
        ),
    }


def measure(
    target: Target, workload: Workload, rounds: int, warm_up: bool
) -> dict[str, list[dict[str, Any]]]:
    """Every client of ``workload`` once per round, the order rotated each round."""
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in workload.specs}
    if warm_up:  # imports, page cache, TLS session cache: not counted
        for spec in workload.specs:
            run_client(target, workload.name, spec, {**workload.env, **workload.warmup_env})
            if workload.name == "w3":
                target.w3_log()
    for r in range(rounds):
        shift = r % len(workload.specs)
        for spec in workload.specs[shift:] + workload.specs[:shift]:
            row = run_client(target, workload.name, spec, workload.env)
            if workload.name == "w3":
                row["logged"], row["log_conns"], row["hosts"] = target.w3_log()
                if row["logged"] != int(workload.env["BENCH_N"]):
                    raise SystemExit(f"w3 {spec.name}: nginx logged {row['logged']} requests")
            runs[spec.name].append(row)
            figure = (
                f"{row['mib_s']:>9,.0f} MiB/s" if "mib_s" in row else f"{row['rps']:>9,.0f} req/s"
            )
            if "p99_ms" in row:
                figure += f"  p50 {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} ms"
            print(
                f"{workload.name} round {r + 1}/{rounds} {spec.name:15s} {figure}"
                f"  {row['rss_mb']:.0f} MB  {row['conns']} conns",
                file=sys.stderr,
                flush=True,
            )
    return runs


def med(values: Iterator[float] | list[float]) -> float:
    return statistics.median(list(values))


def ratio(runs: dict[str, list[dict[str, Any]]], name: str, other: str, key: str) -> str:
    """Median over rounds of name's figure / other's figure in the same round."""
    if other not in runs or other == name:
        return "-"
    pairs = zip(runs[name], runs[other], strict=True)
    return f"{med(a[key] / b[key] for a, b in pairs):.2f}x"


def protocol(rows: list[dict[str, Any]]) -> str:
    seen: dict[str, int] = {}
    for row in rows:
        for version, count in row.get("protocols", {}).items():
            seen[version] = seen.get(version, 0) + count
    return " + ".join(f"HTTP/{v}" for v in sorted(seen)) or "-"


def throughput_table(workload: Workload, runs: dict[str, list[dict[str, Any]]], key: str) -> str:
    unit = "MiB/s" if key == "mib_s" else "req/s"
    with_protocol = any("protocols" in r for rows in runs.values() for r in rows)
    lines = [
        f"| client |{' protocol |' * with_protocol} {unit} (median) | min-max | vs bare pycurl "
        "| vs aiohttp | vs postkey | connections per run | peak RSS MB |",
        f"|---|{'---|' * with_protocol}---:|---:|---:|---:|---:|---:|---:|",
    ]
    for spec in workload.specs:
        rows = runs[spec.name]
        values = [r[key] for r in rows]
        shown = f" {protocol(rows)} |" if with_protocol else ""
        lines.append(
            f"| {spec.label} |{shown} {med(values):,.0f} | "
            f"{min(values):,.0f}-{max(values):,.0f} | {ratio(runs, spec.name, 'pycurl', key)} | "
            f"{ratio(runs, spec.name, 'aiohttp', key)} | {ratio(runs, spec.name, 'postkey', key)} "
            f"| {med(r['conns'] for r in rows):,.0f} | {med(r['rss_mb'] for r in rows):,.0f} |"
        )
    return "\n".join(lines)


def w3_table(workload: Workload, runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| client | req/s (median) | min-max | vs bare pycurl | vs postkey | connections nginx"
        " saw per run | host names nginx saw | resolver calls per run | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for spec in workload.specs:
        rows = runs[spec.name]
        values = [r["rps"] for r in rows]
        lines.append(
            f"| {spec.label} | {med(values):,.0f} | {min(values):,.0f}-{max(values):,.0f} | "
            f"{ratio(runs, spec.name, 'pycurl', 'rps')} | "
            f"{ratio(runs, spec.name, 'postkey', 'rps')} | "
            f"{med(r['log_conns'] for r in rows):,.0f} | {med(r['hosts'] for r in rows):,.0f} | "
            f"{med(r['resolver_calls'] for r in rows):,.0f} | "
            f"{med(r['rss_mb'] for r in rows):,.0f} |"
        )
    return "\n".join(lines)


def latency_table(rows: list[dict[str, Any]]) -> str:
    def fig(label: str, key: str, fmt: str) -> str:
        values = [r[key] for r in rows]
        each = ", ".join(format(v, fmt) for v in values)
        return f"| {label} | {format(med(values), fmt)} | {each} |"

    return "\n".join(
        [
            "| postkey figure | median of rounds | each round |",
            "|---|---:|---|",
            fig("peak, closed loop (submit all, wait_many), req/s", "peak_rps", ",.0f"),
            fig("offered rate, open loop (50% of that peak), req/s", "rate", ",.0f"),
            fig("requests sent open loop", "sent", ",.0f"),
            fig(
                "achieved rate (sent / first schedule instant to last result), req/s",
                "achieved_rps",
                ",.0f",
            ),
            fig("latency p50, submit to result, ms", "p50_ms", ".2f"),
            fig("latency p99, submit to result, ms", "p99_ms", ".2f"),
            fig("latency max, submit to result, ms", "max_ms", ".2f"),
            fig("latency p99, scheduled instant to result, ms", "sched_p99_ms", ".2f"),
            fig("latency max, scheduled instant to result, ms", "sched_max_ms", ".2f"),
            fig("submit late vs schedule, p99, ms", "late_p99_ms", ".2f"),
            fig("submit late vs schedule, max, ms", "late_max_ms", ".2f"),
            fig("peak RSS, MB", "rss_mb", ",.0f"),
        ]
    )


INTROS = {
    "w2a": "W2a: HTTPS (TLS 1.3, trustme certificate, the CA trusted by each client), HTTP/1.1 "
    "(nginx offers no h2 on this port), keep-alive, {N} POSTs of W1's ~100-byte JSON body at "
    "concurrency 256. Every result kept (status, headers, body) and checked.",
    "w2b": "W2b: as W2a on a listener with `listen ... ssl http2` (nginx 1.22: HTTP/2 by ALPN, "
    "128 streams per connection). The protocol column is what the responses really came over.",
    "w3": "W3: {N} POSTs at concurrency 256 over 1,000 host names (request i to "
    "`h{{i % 1000 + 1:04d}}.w3.test`, round robin), every name resolved to 127.0.0.1 by the "
    "client: pycurl's RESOLVE list (all 1,000 names, set once per handle), aiohttp's "
    "resolver hook, postkey's `resolver=` setting (a function name -> addresses). Connections and "
    "names counted from nginx's access log (`$connection $host`).",
    "w5": "W5: {N} GETs of a 1 MiB static file (sendfile) at concurrency 64, every body compared "
    "byte for byte with the file. The bare loop and aiohttp check each body and drop it; postkey "
    "`wait_many` holds every result until it returns (cache_max_bytes raised to 4 GiB: under "
    "the default, {CACHE} MiB, most results would be evicted and read as `expired`); the last "
    "row reads each key as it lands with `take=True` (the result leaves the store as it is "
    "returned), default cache bound.",
    "latency": "Latency under load (postkey, W1 on plain HTTP, concurrency 256): a closed-loop "
    "run of {N} POSTs gives the peak; then one thread submits for {S} s at 50% of that rate on a "
    "fixed schedule (post_async at each instant, never waiting); latency per request from the "
    "Result's own timestamps (`finished_at - submitted_at`; `submitted_at - scheduled` shows "
    "whether the schedule held).",
}


@contextmanager
def workdir() -> Iterator[Path]:
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="postkey-workloads-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    names = ("w2a", "w2b", "w3", "w5", "latency")
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=None, help="rounds (3; --quick: 1)")
    parser.add_argument("--only", default=",".join(names), help="comma-separated workloads")
    parser.add_argument("--quick", action="store_true", help="fewer requests, no warm-up")
    args = parser.parse_args()
    chosen = [w for w in args.only.split(",") if w]
    unknown = set(chosen) - set(names)
    if unknown:
        parser.error(f"unknown workload(s) {sorted(unknown)}; choose from {names}")
    rounds = args.rounds or (1 if args.quick else 3)
    sys.path.insert(0, str(ROOT / "src"))
    from postkey import Settings

    with workdir() as tmp, Target(tmp) as target:
        every = workloads(target, args.quick)
        for name in chosen:
            workload = every[name]
            started = time.monotonic()
            runs = measure(target, workload, rounds, warm_up=not args.quick)
            print(f"{name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
            intro = INTROS[name].format(
                N=f"{int(workload.env['BENCH_N']):,}",
                S=workload.env.get("BENCH_SECONDS"),
                CACHE=Settings().cache_max_bytes // 2**20,
            )
            if name == "w3":
                table = w3_table(workload, runs)
            elif name == "latency":
                table = latency_table(runs["postkey"])
            else:
                table = throughput_table(workload, runs, "mib_s" if name == "w5" else "rps")
            print(f"{intro} Median of {rounds} round(s).\n\n{table}\n", flush=True)


if __name__ == "__main__":
    main()
