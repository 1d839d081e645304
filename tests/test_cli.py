"""The postkey command, run as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "postkey.cli"]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI; sending commands get --allow-private (the test servers are on loopback)."""
    if args and args[0] in ("post", "request", "batch") and "--no-allow" not in args:
        args = (*args, "--allow-private")
    args = tuple(a for a in args if a != "--no-allow")
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, input=stdin, check=False
    )


def test_post_prints_a_key_and_still_sends(echo: str) -> None:
    out = run("post", echo + "/x", "-d", "hello")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip()) == 32


def test_post_wait_prints_status_headers_and_body(echo: str) -> None:
    out = run("post", echo + "/x", "-d", "hello", "-H", "X-Test: yes", "--wait")
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition("\n\n")
    assert head.splitlines()[0] == "HTTP/1.1 200 OK"
    assert "Content-Type: application/json" in head
    echoed = json.loads(body)
    assert echoed["data"] == "hello" and echoed["headers"]["X-Test"] == "yes"


def test_request_with_json_and_json_output(echo: str) -> None:
    out = run("request", "put", echo, "--json", '{"a": 1}', "--wait", "--format", "json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["state"] == "done" and result["status"] == 200
    echoed = json.loads(result["body"])
    assert echoed["method"] == "PUT" and echoed["json"] == {"a": 1}
    assert echoed["headers"]["Content-Type"] == "application/json"


def test_data_from_a_file_and_stdin(echo: str, tmp_path: Path) -> None:
    f = tmp_path / "body.bin"
    f.write_bytes(b"from file")
    out = run("post", echo, "-d", f"@{f}", "--wait", "--format", "json")
    assert json.loads(json.loads(out.stdout)["body"])["data"] == "from file"
    out = run("post", echo, "-d", "@-", "--wait", "--format", "json", stdin="from stdin")
    assert json.loads(json.loads(out.stdout)["body"])["data"] == "from stdin"


def test_a_failed_request_exits_1_with_one_line() -> None:
    out = run("request", "GET", "http://127.0.0.1:9/", "--wait", "--timeout-ms", "2000")
    assert out.returncode == 1
    assert out.stderr.strip().startswith("postkey: failed: connect:")
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["post", "ftp://x/"], "only http and https"),
        (["post", "http://127.0.0.1:9/", "-H", "bad header"], "no colon"),
        (["post", "http://127.0.0.1:9/", "--timeout-ms", "0"], "timeout_ms is 0"),
        (["post", "http://127.0.0.1:9/", "--json", "{bad"], "not valid JSON"),
        (["post", "http://127.0.0.1:9/", "-d", "a", "--json", "{}"], "not both"),
        (["post", "http://127.0.0.1:9/", "--key", "bad key"], "key contains"),
        (["request", "get me", "http://127.0.0.1:9/"], "method"),
        (["post", "http://127.0.0.1:9/", "-d", "@/no/such/file"], "No such file"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], says: str) -> None:
    out = run(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("postkey: error:")
    assert says in lines[0]


def test_batch_writes_results_and_a_summary(echo: str, tmp_path: Path) -> None:
    lines = [json.dumps({"url": echo + f"/{i}", "json": {"i": i}}) for i in range(30)]
    lines.append(json.dumps({"method": "GET", "url": echo + "/status/503"}))
    lines.append(json.dumps({"url": "ftp://nope/"}))
    lines.append("not json")
    lines.append(json.dumps({"url": "http://127.0.0.1:9/", "timeout_ms": 2000}))
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = run("batch", str(src))
    assert out.returncode == 1  # rejected and failed lines
    rows = [json.loads(x) for x in (tmp_path / "in.jsonl.results.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, 35))
    assert all(r["state"] == "done" and r["status"] == 200 for r in rows[:30])
    assert json.loads(rows[0]["body"])["json"] == {"i": 0}
    assert rows[30]["status"] == 503
    assert rows[31]["state"] == "rejected" and "only http and https" in rows[31]["error"]
    assert rows[32]["state"] == "rejected"
    assert rows[33]["state"] == "failed" and rows[33]["error_kind"] == "connect"
    for word in ("state done", "31", "rejected lines", "status 5xx", "latency p99", "requests / s"):
        assert word in out.stdout


def test_batch_to_stdout(echo: str, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"url": echo}) + "\n")
    out = run("batch", str(src), "-o", "-")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])["status"] == 200
    assert "latency p50" in out.stderr


def test_demo_runs_the_seed_scenario() -> None:
    out = run("demo", "-n", "50")
    assert out.returncode == 0, out.stderr
    assert "[Key] httppost_async{" in out.stdout
    assert "50/50 responses read back by key" in out.stdout
    assert out.stdout.rstrip().endswith("Script done successfully.")


def test_private_destinations_are_refused_by_default_and_say_why(echo: str) -> None:
    out = run("post", echo, "-d", "x", "--wait", "--no-allow")
    assert out.returncode == 1
    line = out.stderr.strip()
    assert line.startswith("postkey: failed: blocked: 127.0.0.1 is loopback")
    assert "--allow-private" in line
    port = echo.rsplit(":", 1)[1]
    allowed = run("post", echo, "-d", "x", "--wait", "--no-allow", "--allow", f"127.0.0.1:{port}")
    assert allowed.returncode == 0, allowed.stderr
    denied = run("post", echo, "-d", "x", "--wait", "--deny", f"127.0.0.1:{port}")
    assert denied.returncode == 1 and "denied by rule" in denied.stderr


def test_without_wait_a_refusal_is_still_reported(echo: str) -> None:
    out = run("post", echo, "-d", "x", "--no-allow")
    assert out.returncode == 1
    assert len(out.stdout.strip()) == 32  # the key was issued
    assert "blocked" in out.stderr
