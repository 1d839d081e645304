"""Process life: fork(), interpreter exit and clients nobody closed.

Each case runs a real Python process against real local servers and times it from outside.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme

import postkey
from postkey import Client, State

from .servers import HostileServer


def _run(script: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``script`` in a new interpreter; its output and the seconds from the start of the
    script to the end of the process. The interpreter's start and postkey's import are not
    counted (seconds on a loaded machine; CLOCK_MONOTONIC is one clock for every process), and
    the bounds below leave a few seconds for a machine running the whole suite in parallel:
    what they catch is an exit held by requests of 20 to 60 s."""
    mark = (
        "import sys as _s, time as _t, postkey as _p\n"
        "_s.stderr.write(f'script started {_t.monotonic()}\\n')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", mark + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    ended = time.monotonic()
    first = out.stderr.split("\n", 1)[0]
    assert first.startswith("script started "), out.stderr
    return out, ended - float(first.split()[-1])


# -- fork ----------------------------------------------------------------------------------------


def _child_uses_postkey(url: str, client: Client, queue: multiprocessing.Queue[object]) -> None:
    try:
        a = postkey.wait(postkey.post_async(url + "/child-default", b"x", None, 5000), 10)
        b = client.wait(client.post_async(url + "/child-client", b"y", None, 5000), 10)
        queue.put((a.state.value, a.status, b.state.value, b.status, b.json()["url"][-13:]))
    except BaseException as exc:
        queue.put(repr(exc))


def test_after_fork_a_multiprocessing_child_gets_working_clients(echo: str) -> None:
    client = Client()
    try:
        # the parent has used both: engines running, connections open
        assert postkey.wait(postkey.post_async(echo + "/p", b"x", None, 5000), 5).status == 200
        assert client.wait(client.post_async(echo + "/p", b"x", None, 5000), 5).status == 200
        ctx = multiprocessing.get_context("fork")
        queue: multiprocessing.Queue[object] = ctx.Queue()
        proc = ctx.Process(target=_child_uses_postkey, args=(echo, client, queue))
        proc.start()
        answer = queue.get(timeout=30)
        proc.join(10)
        assert answer == ("done", 200, "done", 200, "/child-client"), answer
        assert proc.exitcode == 0
        # the parent's engines are untouched by the child's life and exit
        assert postkey.wait(postkey.post_async(echo + "/p", b"x", None, 5000), 5).status == 200
        assert client.wait(client.post_async(echo + "/p", b"x", None, 5000), 5).status == 200
    finally:
        client.close()
        postkey.close()


def test_a_forked_child_never_hands_out_the_keys_its_parent_will() -> None:
    from postkey._keys import new_key

    new_key()  # the parent has random bytes read ahead now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, "".join(new_key() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 4096).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = "".join(new_key() for _ in range(8))
    child_keys = {child[i : i + 32] for i in range(0, len(child), 32)}
    parent_keys = {parent[i : i + 32] for i in range(0, len(parent), 32)}
    assert len(child_keys) == 8 and len(parent_keys) == 8
    assert not child_keys & parent_keys


def test_a_forked_child_never_uses_the_parents_connections() -> None:
    server = HostileServer().start()
    client = Client()
    try:
        first = client.get_async(server.url + "/hold", timeout_ms=5000)
        assert client.wait(first, 5).status == 200
        assert server.connections == 1  # kept alive for reuse
        pid = os.fork()
        if pid == 0:  # the child: a gunicorn --preload worker, say
            code = 1
            try:
                assert client.status(first) is State.UNKNOWN  # it lives in the parent
                r = client.wait(client.get_async(server.url + "/hold", timeout_ms=5000), 10)
                code = 0 if r.status == 200 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert server.connections == 2  # the child opened its own
        # the parent's idle connection is still its own: reused, no new connection
        assert client.wait(client.get_async(server.url + "/hold", timeout_ms=5000), 5).status == 200
        assert server.connections == 2
    finally:
        client.close(drain=False)
        server.stop()


class _KeepAlive(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep connections open, so reuse is visible

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


class _CountingTLSServer(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0

    def get_request(self) -> tuple[socket.socket, object]:
        self.connections += 1
        return super().get_request()


def test_a_forked_child_exiting_normally_leaves_the_parents_tls_connections_alone(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    server = _CountingTLSServer(("127.0.0.1", 0), _KeepAlive)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    url = f"https://localhost:{server.server_address[1]}/"
    try:
        out, _ = _run(
            f"""
            import os, sys, postkey
            c = postkey.Client(ca_file={str(ca_file)!r})
            assert c.wait(c.get_async({url!r}, timeout_ms=5000), 5).status == 200
            pid = os.fork()
            if pid == 0:
                r = c.wait(c.get_async({url!r}, timeout_ms=5000), 5)
                sys.exit(0 if r.status == 200 else 3)  # a full, ordinary interpreter exit
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
            r = c.wait(c.get_async({url!r}, timeout_ms=5000), 5)
            print(r.status, r.timings.connect_ms == 0.0)
            """
        )
        assert out.returncode == 0, out.stderr
        # the parent's second request reused its TLS connection (no new connect): the child's
        # exit sent nothing on it, not even a TLS close_notify
        assert out.stdout.split() == ["200", "True"], out.stdout
        assert server.connections == 2  # the parent's one and the child's own one
    finally:
        server.shutdown()
        server.server_close()


# -- interpreter exit ----------------------------------------------------------------------------


@pytest.mark.parametrize("daemon", [True, False])
def test_exit_is_bounded_while_another_thread_closes_a_client(hostile: str, daemon: bool) -> None:
    out, took = _run(
        f"""
        import threading, time, postkey
        def worker():
            with postkey.Client(exit_grace_ms=500) as c:
                c.get_async({hostile + "/silent"!r}, timeout_ms=60000)
        threading.Thread(target=worker, daemon={daemon}).start()
        time.sleep(0.3)
        """
    )
    assert out.returncode == 0, out.stderr
    assert took < 0.3 + 0.5 + 4.0, took


def test_exit_is_bounded_while_a_resolver_is_stuck(hostile: str) -> None:
    port = hostile.rsplit(":", 1)[1]
    out, took = _run(
        f"""
        import time, postkey
        c = postkey.Client(resolver=lambda name: time.sleep(30) or ["127.0.0.1"], exit_grace_ms=300)
        c.get_async("http://stuck.test:{port}/hold", timeout_ms=60000)
        time.sleep(0.2)
        """
    )
    assert out.returncode == 0, out.stderr
    assert took < 0.2 + 0.3 + 4.0, took


def test_an_unreferenced_clients_request_is_still_sent() -> None:
    server = HostileServer().start()
    try:
        out, _ = _run(
            f"""
            import postkey
            postkey.Client().post_async({server.url + "/hold"!r}, b"x", None, 5000)
            """
        )
        assert out.returncode == 0, out.stderr
        assert server.requests == 1
    finally:
        server.stop()


def test_requests_cancelled_at_exit_are_reported_in_a_warning(hostile: str) -> None:
    out, took = _run(
        f"""
        import logging, postkey
        logging.basicConfig(level=logging.WARNING)
        c = postkey.Client(exit_grace_ms=200)
        for _ in range(3):
            c.get_async({hostile + "/silent"!r}, timeout_ms=60000)
        """
    )
    assert out.returncode == 0, out.stderr
    assert took < 0.2 + 4.0, took
    assert "WARNING" in out.stderr and "3" in out.stderr and "exit" in out.stderr, out.stderr


_PRELOADED_APP = """
import json, os, postkey

ECHO = os.environ["ECHO_URL"]
client = postkey.Client()  # created in the gunicorn master, before the workers fork
# ... and used there, so its engine thread and a kept-alive connection exist before fork()
assert client.wait(client.post_async(ECHO + "/master", b"m", None, 5000), 5).status == 200
assert postkey.wait(postkey.post_async(ECHO + "/master", b"m", None, 5000), 5).status == 200


def app(environ, start_response):
    mine = client.wait(client.post_async(ECHO + "/worker", b"w", None, 5000), 5)
    default = postkey.wait(postkey.post_async(ECHO + "/worker", b"w", None, 5000), 5)
    body = json.dumps([os.getpid(), mine.status, default.status]).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
"""


def test_gunicorn_preload_workers_send_through_clients_made_in_the_master(
    echo: str, tmp_path: Path
) -> None:
    import json
    import urllib.request

    (tmp_path / "preloaded_app.py").write_text(_PRELOADED_APP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gunicorn = Path(sys.executable).with_name("gunicorn")
    proc = subprocess.Popen(
        [str(gunicorn), "--preload", "-w", "2", "-b", f"127.0.0.1:{port}", "preloaded_app:app"],
        cwd=tmp_path,
        env={**os.environ, "ECHO_URL": echo},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        answers = []
        deadline = time.monotonic() + 20
        while len(answers) < 6 and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                    answers.append(json.loads(r.read()))
            except OSError:
                time.sleep(0.1)
        assert len(answers) == 6, answers
        assert all(status == [200, 200] for _pid, *status in answers), answers
        assert proc.pid not in {pid for pid, *_ in answers}  # served by workers, not the master
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err


_EXIT_SCENARIOS = {
    "a thread in close() while a callback is stuck": """
        c = postkey.Client(exit_grace_ms=500)
        c.get_async(HOLD, timeout_ms=5000, on_done=lambda r: time.sleep(3600))
        time.sleep(0.5)
        c.get_async(SILENT, timeout_ms=30000)
        threading.Thread(target=c.close).start()
        time.sleep(0.1)
        """,
    "a thread that keeps using the default client": """
        def worker():
            for _ in range(3):
                try:
                    postkey.wait(postkey.get_async(SILENT, timeout_ms=8000))
                except postkey.ClientClosed:
                    return
        threading.Thread(target=worker).start()
        time.sleep(0.2)
        """,
    "an AsyncClient closing in another thread": """
        import asyncio
        async def main():
            async with postkey.AsyncClient(exit_grace_ms=500) as c:
                await c.wait(c.get_async(SILENT, timeout_ms=30000), 0.05)
        threading.Thread(target=lambda: asyncio.run(main())).start()
        time.sleep(0.1)
        """,
    "a thread waiting for a cache value nobody sets": """
        c = postkey.Client(exit_grace_ms=500)
        threading.Thread(target=c.cache_wait, args=("never-set",)).start()
        time.sleep(0.1)
        """,
    "an executor thread waiting for a key": """
        from concurrent.futures import ThreadPoolExecutor
        c = postkey.Client(exit_grace_ms=500)
        k = c.get_async(SILENT, timeout_ms=20000)
        ThreadPoolExecutor(1).submit(c.wait, k)
        time.sleep(0.1)
        """,
}


@pytest.mark.parametrize("scenario", sorted(_EXIT_SCENARIOS))
def test_exit_stays_bounded_whatever_other_threads_do_inside_postkey(
    hostile: str, scenario: str
) -> None:
    grace = 2.0 if "default client" in scenario else 0.5
    out, took = _run(
        "import threading, time, postkey\n"
        f"HOLD, SILENT = {hostile + '/hold'!r}, {hostile + '/silent'!r}\n"
        + textwrap.dedent(_EXIT_SCENARIOS[scenario])
    )
    assert out.returncode == 0, out.stderr
    assert took < grace + 4.0, f"{scenario}: exit took {took:.1f} s"


def test_a_forked_child_exits_even_if_the_parents_store_lock_was_held_at_fork() -> None:
    # Another thread of the parent holds the store's lock at the moment of fork(): in the child
    # nobody will ever release it, so the child's exit must not touch the inherited store.
    code = textwrap.dedent(
        """
        import os, sys, threading, time
        import postkey

        client = postkey.Client()
        lock = client._store.cache._lock
        held, release = threading.Event(), threading.Event()

        def hold():
            with lock:
                held.set()
                release.wait()

        threading.Thread(target=hold, daemon=True).start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # a normal exit: exit hooks run
        release.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print("child exited", os.waitstatus_to_exitcode(status))
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            print("child hung at exit")
        client.close()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.stdout.strip() == "child exited 0", out.stdout + out.stderr


def test_exit_never_hangs_when_the_collector_frees_a_dropped_client_inside_the_exit_hook() -> None:
    # A client dropped without close(), in a reference cycle, is freed by the garbage collector
    # whenever an allocation triggers a collection: at exit, that can be inside the exit hook
    # while it holds the lifecycle lock. The next collection is set to come after N more
    # allocations, for N in a range that puts it there (N=3 hung here before the fix).
    script = textwrap.dedent(
        """
        import gc, sys
        import postkey

        class Holder:
            def __init__(self):
                self.client = postkey.Client()
                self.client.owner = self

        gc.collect()
        gc.freeze()
        holder = Holder()
        del holder
        gc.set_threshold(gc.get_count()[0] + int(sys.argv[1]), 1_000_000, 1_000_000)
        """
    )
    for every in range(1, 9):
        try:
            proc = subprocess.run(
                [sys.executable, "-c", script, str(every)],
                check=False,
                capture_output=True,
                timeout=15,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"the interpreter did not exit (a collection after {every} allocations)")
        assert proc.returncode == 0, proc.stderr


def test_postkeys_own_server_processes_collect_garbage_less_often_and_skip_start_up() -> None:
    # serve and worker call this once started; a library user's process is never touched.
    code = (
        "import gc, postkey; before = gc.get_threshold();"
        " from postkey._gc import tune_for_serving, YOUNG_THRESHOLD; tune_for_serving();"
        " after = gc.get_threshold(); print(before[0], after[0] == YOUNG_THRESHOLD,"
        " after[1:] == before[1:], gc.get_freeze_count() > 1000)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["700", "True", "True", "True"], out
