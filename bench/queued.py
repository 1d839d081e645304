"""W1 through job queues, side by side: postkey embedded, postkey queued, arq and Celery.

W1: 20,000 POSTs of the ~100-byte JSON body of bench/workload.py to a local nginx at
concurrency 256; the submitting process reads every result back (by key, or through the queue's
own result API) and checks it. One nginx (bench/run.py's) and one redis-server of this script's
own (free port, no persistence) on CPU 1; workers and submitters on CPU 0. Rows, interleaved
round-robin (run 1 of every row, then run 2 ...), FLUSHALL before each:

  embedded   postkey in-process (bench/clients/postkey_w1.py): no queue, the reference
  queued-1   postkey queued: `postkey worker --concurrency 256` + bench/clients/postkey_w1_queued.py
             (POSTKEY_MAX_PER_HOST = its concurrency, as the embedded client's max_per_host)
  queued-2   the same with 2 workers, --concurrency 128 each (256 on the wire in all)
  embedded-compiled, queued-1-compiled
             embedded and queued-1 on the compiled build (`make fast`, build/fast-site): each
             queued row's ratio is to the embedded row of its own build
  arq        arq 0.28, 1 process, max_jobs=256 (bench/queues/q_arq.py)
  celery     Celery 5.7, --pool=threads --concurrency=64 (bench/queues/q_celery.py)

Per queue run: start the worker(s), wait until ready (a probe job must round-trip), 1 s more,
then time the submitter process: submit = enqueue all N, end-to-end = first enqueue until all N
results are read back and checked; jobs/s = N / end-to-end. Worker RSS = sum of the VmHWM of the
worker processes (as the team's peer harness, peer-bench/queues/harness.py); then SIGTERM.
arq and Celery run from their own venvs, bench/queues/.venv-arq and .venv-celery, made here from
the pinned bench/queues/requirements-*.txt when missing.

Usage (with the project's venv, which has redis-py for the worker):
  .venv/bin/python bench/queued.py [--runs 3] [--only embedded,queued-1,arq] [--n 20000]
  .venv/bin/python bench/queued.py --quick     # N=2,000, 1 run, no warm-up
Writes docs/BENCHMARKS_QUEUED.md (--quick: bench/queues/results/BENCHMARKS_QUEUED.quick.md) and
the raw runs to bench/queues/results/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from urllib.request import urlopen

from queues.procs import CLK, PINNING, RedisServer, pinned, stop, trees_info
from run import Nginx, ensure_nginx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUEUES = HERE / "queues"
RESULTS = QUEUES / "results"
CLIENTS = HERE / "clients"
FAST_SITE = ROOT / "build" / "fast-site"
SUBMIT_TIMEOUT_S = 900.0
READY_TIMEOUT_S = 120.0
SETTLE_S = 1.0  # after ready: let start-up chatter (heartbeats, prefetch) settle
QUIET_CPU = 0.15  # before a run: other work under 15% of one CPU over 1 s, or wait
QUIET_MAX_WAIT_S = 120.0
NOISY_SHARE = 0.1  # a run where other processes used > 10% of a CPU over its time is redone


@dataclass
class Row:
    label: str
    kind: str  # "embedded", "postkey" (queued) or "peer"
    workers: int = 0
    concurrency: int = 0  # per postkey worker
    venv: str = ""
    module: str = ""
    worker_cmd: list[str] = field(default_factory=list)
    compiled: bool = False  # on the compiled build (`make fast`, build/fast-site)


ROWS = {
    "embedded": Row("postkey embedded (in-process, `bench/clients/postkey_w1.py`)", "embedded"),
    "queued-1": Row(
        "postkey queued, 1 worker (`postkey worker --concurrency 256`)", "postkey", 1, 256
    ),
    "queued-2": Row(
        "postkey queued, 2 workers (`--concurrency 128` each)",
        "postkey",
        workers=2,
        concurrency=128,
    ),
    "embedded-compiled": Row(
        "postkey embedded, compiled build (`make fast`)", "embedded", compiled=True
    ),
    "queued-1-compiled": Row(
        "postkey queued, 1 worker, compiled build (`make fast`)",
        "postkey",
        1,
        256,
        compiled=True,
    ),
    "arq": Row(
        "arq (1 process, asyncio, max_jobs=256, one aiohttp session)",
        "peer",
        venv=".venv-arq",
        module="q_arq",
        worker_cmd=["python", "q_arq.py", "worker"],
    ),
    "celery": Row(
        "Celery (`--pool=threads --concurrency=64`, requests.Session per thread)",
        "peer",
        venv=".venv-celery",
        module="q_celery",
        worker_cmd=[
            *("celery", "-A", "q_celery", "worker"),
            *("--pool=threads", "--concurrency=64", "-l", "WARNING"),
        ],
    ),
}


class ForegroundNginx(Nginx):
    """bench/run.py's nginx, but in the foreground as this script's child (`daemon off`): it
    is stopped by its pid and reaped here, so no daemon (or zombie) outlives the script."""

    def __enter__(self) -> ForegroundNginx:
        conf = self.prefix / "nginx.conf"
        conf.write_text(conf.read_text().replace("daemon on;", "daemon off;"))
        cmd = [self.binary, "-p", str(self.prefix), "-c", "nginx.conf"]
        self.proc = subprocess.Popen(pinned(1, cmd), start_new_session=True)
        for _ in range(100):
            try:
                with urlopen(self.url, data=b"{}", timeout=1) as r:
                    if r.read() == b'{"ok":true}':
                        return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise SystemExit("nginx did not answer")

    def __exit__(self, *exc: object) -> None:
        stop(self.proc, 10)
        shutil.rmtree(self.prefix, ignore_errors=True)


class Bench:
    """One nginx, one redis-server, and the runs; every process started is stopped by pid."""

    def __init__(self, nginx: ForegroundNginx, redis: RedisServer, logs: Path) -> None:
        self.nginx = nginx
        self.redis = redis
        self.logs = logs
        self.worker_allow = self._worker_allow()

    def env(self, n: int, row: Row) -> dict[str, str]:
        env = {
            **os.environ,
            "W1_URL": self.nginx.url,
            "W1_REQUESTS": str(n),
            "W1_STORE": self.redis.url,
            "BENCH_REDIS_URL": self.redis.url,
            "PYTHONUNBUFFERED": "1",
        }
        if row.kind == "peer":
            venv_bin = QUEUES / row.venv / "bin"
            env["PATH"] = f"{venv_bin}{os.pathsep}{env['PATH']}"
            env["PYTHONPATH"] = str(QUEUES)
        elif row.compiled:
            if not (FAST_SITE / "postkey").is_dir():
                raise SystemExit(f"{FAST_SITE} has no compiled build: run `make fast` first")
            env["PYTHONPATH"] = str(FAST_SITE)
        else:
            env["PYTHONPATH"] = str(ROOT / "src")
        return env

    @staticmethod
    def _worker_allow() -> list[str]:
        """`--allow 127.0.0.1` when `postkey worker` has it (its default policy is public only)."""
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        helptext = subprocess.run(
            [sys.executable, "-m", "postkey", "worker", "--help"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        ).stdout
        return ["--allow", "127.0.0.1"] if "--allow " in helptext else []

    # -- one run -------------------------------------------------------------------------------

    def run(self, name: str, row: Row, n: int, tag: str) -> dict:
        """One measured run of one row; a dict with `ok` and the figures (or `error`)."""
        self.redis.flushall()
        out: dict = {"row": name, "n": n, "tag": tag}
        env = self.env(n, row)
        workers: list[subprocess.Popen] = []
        worker_logs: list[Path] = []
        try:
            t_ready = time.perf_counter()
            for i in range(row.workers if row.kind == "postkey" else int(row.kind == "peer")):
                log_path = self.logs / f"{tag}-{name}-worker{i}.log"
                worker_logs.append(log_path)
                workers.append(self._start_worker(row, i, env, log_path))
            if workers:
                self._wait_ready(row, workers, worker_logs, env)
                out["ready_s"] = time.perf_counter() - t_ready
                time.sleep(SETTLE_S)
            _, cpu0 = trees_info([w.pid for w in workers])
            _, rcpu0 = trees_info([self.redis.pid])
            _, ncpu0 = trees_info([self.nginx.proc.pid])
            busy0 = cpu_busy_s()
            own, sub = self._submit(row, n, env, self.logs / f"{tag}-{name}-submitter.log")
            busy = cpu_busy_s() - busy0
            rss, cpu1 = trees_info([w.pid for w in workers])
            out["redis_cpu_s"] = trees_info([self.redis.pid])[1] - rcpu0
            out["nginx_cpu_s"] = trees_info([self.nginx.proc.pid])[1] - ncpu0
            out.update(sub)
            # CPU time the machine spent on anything but this run (other users' work): noise.
            ours = cpu1 - cpu0 + sub["submitter_cpu_s"] + out["redis_cpu_s"] + out["nginx_cpu_s"]
            out["other_cpu_s"] = max(0.0, busy - ours)
            if workers:
                if any(w.poll() is not None for w in workers):
                    raise RuntimeError("a worker exited during the run")
                out["worker_rss_each_mb"] = sorted(rss)
                out["worker_rss_mb"] = sum(rss)
                out["worker_cpu_s"] = cpu1 - cpu0
            else:  # embedded: the one process is client and sender
                out["worker_rss_mb"] = sub["submitter_rss_mb"]
                out["worker_cpu_s"] = 0.0
            ok = own.get("ok", own.get("ok_200"))
            out["e2e_s"] = own.get("e2e_s", own.get("elapsed_s"))
            out["submit_s"] = own.get("submit_s")
            out["jobs_per_s"] = n / out["e2e_s"] if out["e2e_s"] else None
            out["ok_results"] = ok
            out["versions"] = {k: v for k, v in own.items() if k in ("version", "aiohttp")}
            out["ok"] = sub["rc"] == 0 and ok == n
            if not out["ok"]:
                out["error"] = f"submitter rc={sub['rc']}, {ok}/{n} correct"
        except Exception as exc:  # a failed run is reported, the others go on
            out.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        finally:
            out["workers_killed"] = sum(stop(w) for w in workers)
            out["worker_log_warnings"] = _warnings(worker_logs)
        return out

    def _start_worker(self, row: Row, i: int, env: dict, log_path: Path) -> subprocess.Popen:
        if row.kind == "postkey":
            cmd = [sys.executable, "-m", "postkey", "worker", "--store", self.redis.url]
            cmd += ["--concurrency", str(row.concurrency), *self.worker_allow]
            cmd += ["--log-level", "info", "--name", f"bench-{i}"]
            cwd = ROOT
            # W1 has one host: as the embedded client (max_per_host=256), the worker may send
            # all of its concurrency there (its default per-host limit is 64).
            env = {**env, "POSTKEY_MAX_PER_HOST": str(row.concurrency)}
        else:
            cmd = list(row.worker_cmd)
            cmd[0] = str(QUEUES / row.venv / "bin" / cmd[0])
            cwd = QUEUES
        with open(log_path, "w") as log:
            return subprocess.Popen(
                pinned(0, cmd),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(
        self, row: Row, workers: list[subprocess.Popen], logs: list[Path], env: dict
    ) -> None:
        """Ready: (postkey) every worker logged its ready line; then one probe round-trips."""
        deadline = time.perf_counter() + READY_TIMEOUT_S
        if row.kind == "postkey":
            while not all(" ready" in p.read_text() for p in logs):
                if any(w.poll() is not None for w in workers):
                    raise RuntimeError(f"a worker exited: {_tail(logs)}")
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"workers not ready: {_tail(logs)}")
                time.sleep(0.05)
            probe = [sys.executable, str(CLIENTS / "postkey_w1_queued.py"), "ready"]
            cwd = ROOT
        else:
            probe = [str(QUEUES / row.venv / "bin" / "python"), f"{row.module}.py", "ready"]
            cwd = QUEUES
        while True:
            if any(w.poll() is not None for w in workers):
                raise RuntimeError(f"a worker exited: {_tail(logs)}")
            r = subprocess.run(
                pinned(0, probe),
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=90,
                check=False,
            )
            if r.returncode == 0 and "ready" in r.stdout:
                return
            if time.perf_counter() > deadline:
                raise RuntimeError(f"not ready: {r.stdout}{r.stderr}")
            time.sleep(0.5)

    def _submit(self, row: Row, n: int, env: dict, log_path: Path) -> tuple[dict, dict]:
        """Run the submitter on CPU 0: its JSON line, and rc / CPU / peak RSS from wait4."""
        if row.kind == "embedded":
            cmd, cwd = [sys.executable, str(CLIENTS / "postkey_w1.py")], ROOT
        elif row.kind == "postkey":
            cmd, cwd = [sys.executable, str(CLIENTS / "postkey_w1_queued.py")], ROOT
        else:
            python = str(QUEUES / row.venv / "bin" / "python")
            cmd, cwd = [python, f"{row.module}.py", "submit", str(n)], QUEUES
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                pinned(0, cmd),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        timer = threading.Timer(SUBMIT_TIMEOUT_S, _kill_group, (proc.pid,))
        timer.start()
        try:
            assert proc.stdout is not None
            text = proc.stdout.read()
            _pid, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            timer.cancel()
            if proc.returncode is None:
                _kill_group(proc.pid)
                proc.wait()
        with open(log_path, "a") as log:
            log.write(text)
        own = {}
        for line in reversed(text.splitlines()):
            if line.startswith("{"):
                own = json.loads(line)
                break
        return own, {
            "rc": proc.returncode,
            "submitter_cpu_s": usage.ru_utime + usage.ru_stime,
            "submitter_rss_mb": usage.ru_maxrss / 1024,
        }


def cpu_busy_s() -> float:
    """CPU seconds all CPUs have run processes since boot (user, nice, system; not irq/softirq,
    which is mostly this run's own loopback traffic)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return sum(int(fields[i]) for i in (0, 1, 2)) / CLK


def wait_quiet(max_wait_s: float = QUIET_MAX_WAIT_S) -> float:
    """Wait (at most max_wait_s) until the machine's other work uses under QUIET_CPU of a CPU
    over a second (nginx and Redis idle here); the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < max_wait_s:
        b0 = cpu_busy_s()
        time.sleep(1.0)
        if cpu_busy_s() - b0 < QUIET_CPU:
            break
    return time.monotonic() - start


def noisy(r: dict) -> bool:
    """Other processes took a noticeable share of the machine during the run."""
    return r["ok"] and r["other_cpu_s"] > max(0.2, NOISY_SHARE * r["e2e_s"])


def measured(bench: Bench, name: str, n: int, tag: str, retries: int) -> dict:
    """One run of a row after the machine is quiet; redone (at most ``retries`` times) when other
    processes' CPU hit it, keeping the least disturbed attempt."""
    attempts = []
    for k in range(retries + 1):
        waited = wait_quiet()
        r = bench.run(name, ROWS[name], n, tag if k == 0 else f"{tag}-redo{k}")
        r["quiet_wait_s"] = waited
        attempts.append(r)
        if not noisy(r):
            break
        print(
            f"run {tag} {name}: other processes used {r['other_cpu_s']:.1f} s CPU: again",
            file=sys.stderr,
        )
    best = min(attempts, key=lambda a: (not a["ok"], a.get("other_cpu_s") or 0.0))
    best["attempts"] = len(attempts)
    return best


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(logs: list[Path]) -> str:
    return " | ".join(p.read_text()[-400:] for p in logs if p.exists())


def _warnings(logs: list[Path]) -> list[str]:
    lines = []
    for p in logs:
        if p.exists():
            lines += [
                line
                for line in p.read_text().splitlines()
                if "WARNING" in line or "ERROR" in line or "Traceback" in line
            ]
    return lines[:20]


# -- setup ------------------------------------------------------------------------------------


def ensure_venv(row: Row) -> None:
    """bench/queues/<venv> from the pinned requirements file, with pip, when missing."""
    venv = QUEUES / row.venv
    if (venv / "bin" / "python").exists():
        return
    reqs = QUEUES / f"requirements-{row.venv.removeprefix('.venv-')}.txt"
    print(f"making {venv} from {reqs.name}", file=sys.stderr)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(reqs)]
    if subprocess.run(pip, check=False).returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)  # no half-made venv taken as ready next time
        raise SystemExit(f"could not install {reqs}")


def machine() -> dict[str, str]:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    nginx = subprocess.run(
        [ensure_nginx(), "-v"], capture_output=True, text=True, check=False
    ).stderr.strip()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "nginx": nginx.removeprefix("nginx version: "),
    }


# -- the table --------------------------------------------------------------------------------


def summarize(name: str, runs: list[dict]) -> dict:
    good = [r for r in runs if r["ok"]]
    s: dict = {
        "runs": len(runs),
        "good": len(good),
        "all_ok": bool(runs) and len(good) == len(runs),
    }
    if not good:
        return s
    rates = [r["jobs_per_s"] for r in good]
    s.update(
        jobs_per_s=statistics.median(rates),
        min=min(rates),
        max=max(rates),
        e2e_s=statistics.median(r["e2e_s"] for r in good),
    )
    for k in (
        *("submit_s", "worker_rss_mb", "worker_cpu_s", "submitter_cpu_s"),
        *("redis_cpu_s", "nginx_cpu_s"),
    ):
        vals = [r[k] for r in good if r.get(k) is not None]
        s[k] = statistics.median(vals) if vals else None
    s["other_cpu_s"] = max(r.get("other_cpu_s") or 0.0 for r in good)  # the worst, not typical
    s["submitter_rss_mb"] = statistics.median(r["submitter_rss_mb"] for r in good)
    s["worker_rss_each_mb"] = good[len(good) // 2].get("worker_rss_each_mb")
    return s


def own_embedded(row: str) -> str:
    """The embedded row of ``row``'s build: each build's queued mode is compared with its own."""
    return "embedded-compiled" if ROWS[row].compiled else "embedded"


def table(chosen: list[str], summ: dict[str, dict], n: int) -> str:
    def ratio(m: dict, other: str) -> str:
        o = summ.get(other, {})
        if "jobs_per_s" not in m or "jobs_per_s" not in o:
            return "-"
        return f"{m['jobs_per_s'] / o['jobs_per_s']:.2f}x"

    lines = [
        "| setup | jobs/s median (min-max) | end-to-end s | submit s | ratio to postkey embedded "
        "| ratio to arq | worker RSS MB | all results correct |",
        "|---|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for c in chosen:
        m = summ[c]
        correct = f"{'yes' if m['all_ok'] else 'no'} ({m['good']}/{m['runs']} runs)"
        if "jobs_per_s" not in m:
            lines.append(f"| {ROWS[c].label} | failed | - | - | - | - | - | {correct} |")
            continue
        submit = f"{m['submit_s']:.2f}" if m.get("submit_s") is not None else "-"
        rss = f"{m['worker_rss_mb']:.0f}" + (
            " (the one process)" if ROWS[c].kind == "embedded" else ""
        )
        each = m.get("worker_rss_each_mb") or []
        if len(each) > 1:
            rss += " (" + " + ".join(f"{x:.0f}" for x in each) + ")"
        lines.append(
            f"| {ROWS[c].label} | **{m['jobs_per_s']:,.0f}** ({m['min']:,.0f}-{m['max']:,.0f}) "
            f"| {m['e2e_s']:.2f} | {submit} | {ratio(m, own_embedded(c))} | {ratio(m, 'arq')} "
            f"| {rss} | {correct} |"
        )
    lines += [
        "",
        "Where the time goes (medians, CPU ms per job; workers and submitter share CPU 0, Redis"
        " and nginx are on CPU 1; the submitter's CPU includes its interpreter start and imports;"
        ' "other CPU" is what the machine spent on anything else during a run, i.e. noise, in'
        " the most disturbed run kept):",
        "",
        "| setup | worker | submitter | both | end-to-end ms/job | Redis | nginx "
        "| other CPU s (worst run) | submitter peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in chosen:
        m = summ[c]
        if "jobs_per_s" not in m:
            continue

        def per_job(v: float | None) -> str:
            return "-" if v is None else f"{1000 * v / n:.3f}"

        both = (m["worker_cpu_s"] or 0.0) + (m["submitter_cpu_s"] or 0.0)
        worker_cpu = "-" if ROWS[c].kind == "embedded" else per_job(m["worker_cpu_s"])
        lines.append(
            f"| {ROWS[c].label} | {worker_cpu} | {per_job(m['submitter_cpu_s'])} "
            f"| {per_job(both)} | {per_job(m['e2e_s'])} | {per_job(m['redis_cpu_s'])} "
            f"| {per_job(m['nginx_cpu_s'])} | {m['other_cpu_s']:.1f} "
            f"| {m['submitter_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def source_state() -> str:
    """The commit measured, and whether src/ had changes not committed (read-only git)."""

    def git(*a: str) -> str:
        r = subprocess.run(
            ["git", "-C", str(ROOT), *a], check=False, capture_output=True, text=True
        )
        return r.stdout.strip() if r.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = git("status", "--porcelain", "--", "src")
    return head + (" + uncommitted changes in src/" if dirty else "")


def src_digest() -> str:
    """A digest of src/postkey's files: another one at the end means src/ changed mid-run."""
    h = hashlib.sha256()
    for p in sorted((ROOT / "src" / "postkey").rglob("*.py")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def versions(all_runs: list[dict], source: str) -> str:
    import postkey

    seen = {"postkey": f"{postkey.__version__} ({source})"}
    for r in all_runs:
        v = r.get("versions") or {}
        if "version" in v:
            seen[r["row"]] = v["version"]
        if "aiohttp" in v:
            seen["aiohttp (arq)"] = v["aiohttp"]
    return ", ".join(f"{k} {v}" for k, v in seen.items())


def write_doc(path: Path, args: argparse.Namespace, n: int, body: str, facts: dict) -> None:
    m = facts["machine"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Benchmarks: W1 through job queues\n\n"
        "Produced by `.venv/bin/python bench/queued.py` (`bench/queued.py`, `bench/queues/`,"
        " `bench/clients/postkey_w1_queued.py`); do not edit by hand.\n\n"
        f"Measured {facts['date']} on: {m['nproc']} CPUs (nproc), {m['cpu']}, {m['system']},"
        f" Python {m['python']}, {m['nginx']}, redis-server {facts['redis']}."
        f" Versions: {facts['versions']}.\n\n"
        f"W1: {n:,} POSTs of the ~100-byte JSON body of `bench/workload.py` to a local nginx"
        " (1 worker, fixed 11-byte JSON answer), concurrency 256; the submitting process reads"
        " every result back (postkey: by key with `wait_many`; arq and Celery: through their own"
        " result API, in submission order) and checks it (status 200, exact body). Median of"
        f" {args.runs} run{'s' if args.runs != 1 else ''} per row, rows interleaved round-robin;"
        " one redis-server of the script's own (`--save '' --appendonly no`, FLUSHALL before"
        " every run) as queue and result store for every queued row.\n"
        + (
            "nginx and redis-server pinned to CPU 1; workers and submitter pinned to CPU 0"
            " (they share that core).\n"
            if PINNING
            else "No CPU pinning (taskset missing, or 1 CPU).\n"
        )
        + "\n"
        "- **jobs/s** = N / end-to-end; **end-to-end** = first submit until all N results are"
        " read back and checked, timed inside the submitting process, which has connected"
        " first; **submit** = submitting all N (workers already consume meanwhile).\n"
        "- **Worker RSS** = the sum of the kernel's peak RSS (VmHWM) of the worker processes at"
        " the end of the run; for postkey embedded, the peak RSS of its one process, which"
        " both submits and sends.\n"
        "- Workers are started and probed (one job must round-trip) before each run, then left"
        " 1 s; they get SIGTERM after it. postkey workers: `postkey worker --store URL"
        f" --concurrency C {' '.join(facts['worker_allow'])}` with `POSTKEY_MAX_PER_HOST=C`"
        " (W1 has one host: as the embedded client's `max_per_host=256`; the worker's default"
        " per-host limit is 64; its default destination policy is public only);"
        ' the client is `postkey.Client(store=URL, send="workers", max_queue=N)`.\n'
        "- arq and Celery: the team's peer harness (`peer-bench/queues/`), adapted in"
        " `bench/queues/` to this workload, in venvs of their own pinned by"
        " `bench/queues/requirements-*.txt`. arq's `Job.result()` polls every 0.05 s (its"
        " default is 0.5 s); Celery waits on pub/sub.\n"
        "- The machine may be shared: before each run the script waits (up to"
        f" {QUIET_MAX_WAIT_S:.0f} s) until other processes use under {QUIET_CPU:.0%} of a CPU,"
        f" and a run during which they used more than {NOISY_SHARE:.0%} of a CPU is redone (at"
        f" most {args.retries} times; the least disturbed attempt counts). Redone here:"
        f" {facts['redone']} of {facts['measured']} runs; still disturbed after that:"
        f" {facts['disturbed']}.\n\n"
        f"{body}\n\n"
        "Ratios from the same run are the numbers to read; absolute figures on a shared VM move"
        " by +-10% between runs. Raw runs: `bench/queues/results/` (not committed).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(ROWS), help="rows: " + ",".join(ROWS))
    parser.add_argument("--n", type=int, default=20_000, help="requests per run")
    parser.add_argument("--quick", action="store_true", help="N=2,000, 1 run, no warm-up")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument(
        "--retries", type=int, default=2, help="redo a run disturbed by other processes' CPU"
    )
    parser.add_argument("--out", type=Path, help="the markdown file to write")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--from-json", type=Path, help="no runs: write the tables again from a raw results file"
    )
    args = parser.parse_args()
    if args.from_json:
        rerender(args.from_json, args.out)
        return
    if args.quick:
        args.n, args.runs, args.no_warmup = 2_000, 1, True
    out = args.out or (
        RESULTS / "BENCHMARKS_QUEUED.quick.md" if args.quick else ROOT / "docs/BENCHMARKS_QUEUED.md"
    )
    chosen = [c for c in args.only.split(",") if c]
    unknown = [c for c in chosen if c not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {','.join(ROWS)}")
    try:
        import pycurl  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"run with the project's venv (.venv/bin/python): {exc}") from None
    for c in chosen:
        if ROWS[c].kind == "peer":
            ensure_venv(ROWS[c])
    if PINNING:
        os.sched_setaffinity(0, {1})  # this script waits beside nginx and Redis, off CPU 0
    # SIGTERM: unwind through the finally blocks, so every process started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    logs = RESULTS / f"logs-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {c: [] for c in chosen}
    source, digest = source_state(), src_digest()
    with ForegroundNginx() as nginx, RedisServer() as redis_server:
        bench = Bench(nginx, redis_server, logs)
        if not bench.worker_allow and any(ROWS[c].kind == "postkey" for c in chosen):
            print("postkey worker has no --allow: 127.0.0.1 may be blocked", file=sys.stderr)
        redis_version = redis_server.version()
        if not args.no_warmup:  # file cache, nginx, Redis, imports; not counted
            for c in chosen:
                r = bench.run(c, ROWS[c], min(args.n, 1_000), "warmup")
                print(f"warm-up {c:9s} ok={r['ok']} {r.get('error', '')}", file=sys.stderr)
        for i in range(args.runs):
            for c in chosen:
                r = measured(bench, c, args.n, f"run{i + 1}", args.retries)
                runs[c].append(r)
                rate = f"{r['jobs_per_s']:>8,.0f} jobs/s" if r.get("jobs_per_s") else "failed"
                print(
                    f"run {i + 1} {c:9s} {rate}  e2e {_fmt(r.get('e2e_s'))} s"
                    f"  submit {_fmt(r.get('submit_s'))} s"
                    f"  worker RSS {_fmt(r.get('worker_rss_mb'))} MB"
                    f"  ok={r['ok']} {r.get('error', '')}",
                    file=sys.stderr,
                    flush=True,
                )
                for w in r["worker_log_warnings"][:3]:
                    print(f"    worker log: {w[:200]}", file=sys.stderr)
    all_runs = [r for c in chosen for r in runs[c]]
    facts = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "redis": redis_version,
        "versions": versions(all_runs, source),
        "worker_allow": bench.worker_allow,
        "src_changed": src_digest() != digest,
    }
    (RESULTS / f"queued-{stamp}.json").write_text(
        json.dumps({"args": vars(args) | {"out": str(out)}, **facts, "runs": runs}, indent=1)
    )
    print(f"raw runs: {RESULTS / f'queued-{stamp}.json'}", file=sys.stderr)
    render(args, chosen, runs, facts, None if args.no_write else out)


def render(
    args: argparse.Namespace,
    chosen: list[str],
    runs: dict[str, list[dict]],
    facts: dict,
    out: Path | None,
) -> None:
    """Print the tables and write the markdown file (unless out is None); exit 1 if a row had
    a failed run."""
    summ = {c: summarize(c, runs[c]) for c in chosen}
    all_runs = [r for c in chosen for r in runs[c]]
    facts = facts | {
        "redone": sum(1 for r in all_runs if r.get("attempts", 1) > 1),
        "measured": len(all_runs),
        "disturbed": sum(1 for r in all_runs if noisy(r)),
    }
    body = table(chosen, summ, args.n)
    if facts["src_changed"]:
        body += "\n\nNote: src/ changed while this ran; the runs may have measured different code."
    print(body)
    if out is not None:
        write_doc(out, args, args.n, body, facts)
        print(f"wrote {out}", file=sys.stderr)
    if not all(summ[c]["all_ok"] for c in chosen):
        sys.exit(1)


def rerender(path: Path, out: Path | None) -> None:
    """--from-json: the tables and the markdown file again from a raw results file."""
    data = json.loads(path.read_text())
    args = argparse.Namespace(**data["args"])
    chosen = list(data["runs"])
    facts = {k: data[k] for k in ("date", "machine", "redis", "versions", "worker_allow")}
    facts["src_changed"] = data.get("src_changed", False)
    render(args, chosen, data["runs"], facts, out or Path(data["args"]["out"]))


if __name__ == "__main__":
    main()
