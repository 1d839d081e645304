"""The postkey command, run as a real process (``python -m postkey``, and the installed
``postkey`` script where it matters) against real local servers."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from postkey import Client, InvalidValue, Settings
from postkey.testing import LocalServer

CLI = [sys.executable, "-m", "postkey"]
ENTRY_POINT = Path(sys.executable).with_name("postkey")  # the console script pip installed

SENT = re.compile(
    r"postkey: sent: 200 OK in \d+ ms; results live only in this process \(embedded mode\),"
    r" so no key is printed: use --wait to print the response"
)


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI; sending commands get --allow-private (the test servers are on loopback).

    ``env`` adds variables to a copy of this process's environment, without any POSTKEY_ ones.
    """
    if args and args[0] in ("post", "request", "batch") and "--no-allow" not in args:
        args = (*args, "--allow-private")
    args = tuple(a for a in args if a != "--no-allow")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("POSTKEY_")}
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        check=False,
        env={**full_env, **(env or {})},
    )


def test_post_without_wait_sends_prints_no_key_and_says_how_it_went() -> None:
    with LocalServer() as server:
        out = run("post", server.url + "/post", "-d", "hello")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""  # no key: in embedded mode no other process could read it
    assert SENT.fullmatch(out.stderr.strip()), out.stderr


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


MAX_BODY = 16 * 1024 * 1024  # max_request_bytes' default


def run_on_zeros(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with /dev/zero as its stdin, no POSTKEY_ variables, and its address space capped
    at 2 GiB: a command that reads an endless source whole fails fast rather than filling
    memory."""

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTKEY_")}
    with open("/dev/zero", "rb") as zeros:
        return subprocess.run(
            [*CLI, *args],
            stdin=zeros,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
            preexec_fn=cap_memory,  # only sets a limit
        )


@pytest.mark.parametrize("source", ["@/dev/zero", "@-"])
def test_an_endless_data_source_is_refused_after_the_maximum_body_size(source: str) -> None:
    # Read no more than one byte past max_request_bytes: /dev/zero never ends.
    out = run_on_zeros("post", "http://127.0.0.1:9/", "-d", source, "--wait")
    assert out.returncode == 2, out.stderr[-500:]
    shown = "stdin" if source == "@-" else "/dev/zero"
    assert out.stderr == (
        f"postkey: error: body read from {shown} is over the maximum of {MAX_BODY} bytes"
        " (max_request_bytes)\n"
    )
    assert out.stdout == ""


@pytest.mark.parametrize("source", ["/dev/zero", "-"])
def test_a_batch_line_without_end_is_refused_not_read_whole(source: str) -> None:
    # A batch file may be large; one line of it (one request) may not: /dev/zero has no
    # newline, and reading it as one line filled memory (MemoryError, exit 1).
    out = run_on_zeros("batch", source)
    assert out.returncode == 2, out.stderr[-500:]
    shown = "stdin" if source == "-" else source
    assert out.stderr.strip().startswith(f"postkey: error: {shown} line 1 is over ")
    assert "bytes" in out.stderr and out.stdout == ""


def test_data_up_to_the_configured_maximum_is_sent_and_one_byte_more_is_refused(
    echo: str, tmp_path: Path
) -> None:
    env = {"POSTKEY_MAX_REQUEST_BYTES": "1000"}
    f = tmp_path / "body.bin"
    f.write_bytes(b"a" * 1000)
    out = run("post", echo, "-d", f"@{f}", "--wait", "--format", "json", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(json.loads(out.stdout)["body"])["data"] == "a" * 1000
    f.write_bytes(b"a" * 1001)
    out = run("post", echo, "-d", f"@{f}", "--wait", env=env)
    assert out.returncode == 2
    assert out.stderr == (
        f"postkey: error: body read from {f} is over the maximum of 1000 bytes"
        " (max_request_bytes)\n"
    )
    out = run("post", echo, "-d", "@-", "--wait", stdin="a" * 1001, env=env)
    assert out.returncode == 2
    assert "body read from stdin is over the maximum of 1000 bytes" in out.stderr


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
        (["request", "head", "http://127.0.0.1:9/", "-d", "x"], "HEAD request cannot carry"),
        (["post", "http://127.0.0.1:9/", "-d", "@/no/such/file"], "No such file"),
        (["nosuchcommand"], "No such command"),
        (["post", "http://127.0.0.1:9/", "--format", "json"], "add --wait"),
        (["request", "GET", "http://127.0.0.1:9/", "--format", "text"], "add --wait"),
        (["demo", "--timeout-ms", "0"], "timeout_ms is 0; it must be between 1 and"),
        (["demo", "--timeout-ms", "-5"], "timeout_ms is -5"),
        (["demo", "--timeout-ms", "3600001"], "timeout_ms is 3600001"),
        (["demo", "--timeout-ms", "soon"], "'soon' is not a valid integer"),
        (["demo", "-n", "0"], "0 is not in the range 1<=x<=100000"),
        (["demo", "-n", "99999999999"], "not in the range"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], says: str) -> None:
    out = run(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("postkey: error:")
    assert says in lines[0]
    assert out.stdout == ""


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


def test_a_demo_that_reads_back_nothing_ends_with_a_failure_and_exit_1() -> None:
    # Every response is larger than 10 bytes: each request fails as too_large.
    out = run("demo", "-n", "5", env={"POSTKEY_MAX_RESPONSE_BYTES": "10"})
    assert out.returncode == 1, out.stderr
    assert "0/5 responses read back by key" in out.stdout
    assert "Script done successfully." not in out.stdout
    last = out.stdout.rstrip().splitlines()[-1]
    assert last.endswith(
        "Script error: ScenarioFailed: 0/5 responses read back by key with their own request_id"
    )


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
    assert out.stdout == ""
    assert out.stderr.startswith("postkey: failed: blocked:") and "--allow-private" in out.stderr


def test_without_wait_a_failure_says_so_and_exits_1() -> None:
    out = run("request", "get", "http://127.0.0.1:9/", "--timeout-ms", "2000")
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith("postkey: failed: connect:")


# -- batch: a private destination, methods in any case ----------------------------------------


def test_batch_to_a_private_address_says_once_how_to_allow_it(echo: str, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"url": f"{echo}/{i}"}) + "\n" for i in range(5)))
    out = run("batch", str(src), "--no-allow")
    assert out.returncode == 1
    rows = [json.loads(x) for x in (tmp_path / "in.jsonl.results.jsonl").read_text().splitlines()]
    assert [(r["state"], r["error_kind"]) for r in rows] == [("failed", "blocked")] * 5
    hint = "use --allow-private, or --allow ADDRESS[:PORT] for one destination"
    assert out.stderr.count(hint) == 1
    assert "postkey: 5 request(s) blocked by the destination policy: " + hint in out.stderr
    allowed = run("batch", str(src), "--no-allow", "--allow", echo.removeprefix("http://"))
    assert allowed.returncode == 0, allowed.stderr
    assert hint not in allowed.stderr


def test_batch_lines_take_methods_in_any_case(echo: str, tmp_path: Path) -> None:
    # Needs the library to accept methods in any case (sent in upper case).
    src = tmp_path / "in.jsonl"
    lines = [
        {"method": "post", "url": echo + "/anything", "json": {"a": 1}},
        {"method": "Patch", "url": echo + "/anything", "body": "x"},
        {"method": "delete", "url": echo + "/anything"},
    ]
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = run("batch", str(src), "-o", "-")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert [r["state"] for r in rows] == ["done"] * 3
    assert [json.loads(r["body"])["method"] for r in rows] == ["POST", "PATCH", "DELETE"]


# -- --fail and exit codes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "exit_code"), [(200, 0), (302, 0), (399, 0), (404, 22), (503, 22)]
)
def test_fail_exits_22_for_a_status_of_400_or_more_and_still_prints(
    echo: str, code: int, exit_code: int
) -> None:
    out = run("post", f"{echo}/status/{code}", "-d", "x", "--wait", "--fail")
    assert out.returncode == exit_code, out.stderr
    assert out.stdout.startswith(f"HTTP/1.1 {code}")
    assert json.loads(out.stdout.partition("\n\n")[2])["data"] == "x"


def test_without_fail_a_4xx_is_exit_0(echo: str) -> None:
    out = run("request", "GET", echo + "/status/404", "--wait", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == 404


def test_fail_without_wait_exits_22_and_says_the_status(echo: str) -> None:
    out = run("request", "delete", echo + "/status/503", "--fail")
    assert out.returncode == 22
    assert out.stdout == ""
    assert out.stderr.startswith("postkey: sent: 503 Service Unavailable in ")


def test_fail_with_a_failed_request_is_still_exit_1() -> None:
    out = run("post", "http://127.0.0.1:9/", "--fail", "--wait", "--timeout-ms", "2000")
    assert out.returncode == 1


@pytest.mark.parametrize("command", [[], ["post"], ["request"], ["batch"], ["demo"]])
def test_help_lists_the_exit_codes(command: list[str]) -> None:
    out = run(*command, "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for line in (
        "0 success",
        "1 a request failed: no response",
        "2 bad input or usage",
        "22 with --fail: the response's status was 400 or more",
        "130 interrupted",
    ):
        assert line in text


def test_post_help_says_why_no_key_is_printed_without_wait() -> None:
    text = " ".join(run("post", "--help").stdout.split())
    assert "In embedded mode nothing is printed on stdout: the result lives only in this" in text
    assert "With a shared store (--store or POSTKEY_STORE) the key is printed" in text


# -- environment -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["post", "http://127.0.0.1:9/"], ["demo", "-n", "1"]])
def test_a_misspelled_postkey_variable_is_exit_2_naming_the_real_one(command: list[str]) -> None:
    out = run(*command, env={"POSTKEY_MAX_INFLIGHT": "8"})
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "postkey: error: unknown environment variable POSTKEY_MAX_INFLIGHT"
        " (did you mean POSTKEY_MAX_IN_FLIGHT?)"
    )
    assert out.stdout == ""  # the demo did not start


def test_settings_from_env_refuses_postkey_variables_that_name_no_setting() -> None:
    assert Settings.from_env({"POSTKEY_MAX_IN_FLIGHT": "8"}).max_in_flight == 8
    Settings.from_env({"POSTKEY_POLICY": "public_only", "POSTKEY_ALLOW": "", "POSTKEY_DENY": ""})
    with pytest.raises(InvalidValue, match=r"POSTKEY_VERIFY_SSL \(did you mean POSTKEY_VERIFY_TLS"):
        Settings.from_env({"POSTKEY_VERIFY_SSL": "0"})
    with pytest.raises(InvalidValue, match=r"POSTKEY_max_in_flight \(did you mean POSTKEY_MAX_IN"):
        Settings.from_env({"POSTKEY_max_in_flight": "8"})
    with pytest.raises(InvalidValue, match=r"variables POSTKEY_QQQ \(no setting has that name\)"):
        Settings.from_env({"POSTKEY_QQQ": "redis://", "POSTKEY_ZZZ": "1"})
    assert Settings.from_env({"POSTKEY_STORE": "redis://h:1/0"}).store == "redis://h:1/0"
    with pytest.raises(InvalidValue, match="resolver is a function"):
        Settings.from_env({"POSTKEY_RESOLVER": "dns"})
    assert Settings.from_env({"OTHER_POSTKEY_X": "1", "_POSTKEY_COMPLETE": "x"}) == Settings()


# -- --version, python -m postkey, shell completion ------------------------------------------


def test_version_prints_the_version() -> None:
    from importlib.metadata import version

    for cli in (CLI, [str(ENTRY_POINT)]):
        out = subprocess.run([*cli, "--version"], capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"postkey {version('postkey')}\n"


def test_python_m_postkey_runs_the_cli(echo: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "postkey", "request", "GET", echo + "/get", "--wait"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "POSTKEY_POLICY": "allow_all"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("HTTP/1.1 200 OK")
    assert "Usage: postkey [OPTIONS]" in run("--help").stdout  # named postkey, not __main__.py


def _entry_point_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{ENTRY_POINT.parent}{os.pathsep}{os.environ['PATH']}", **extra}


def test_bash_completion_works_with_the_installed_entry_point() -> None:
    script = r"""
        eval "$(_POSTKEY_COMPLETE=bash_source postkey)"
        complete -p postkey
        COMP_WORDS=(postkey po); COMP_CWORD=1; _postkey_completion postkey
        echo "commands: ${COMPREPLY[*]}"
        COMPREPLY=(); COMP_WORDS=(postkey post http://x --format ""); COMP_CWORD=4
        _postkey_completion postkey
        echo "formats: ${COMPREPLY[*]}"
    """
    out = subprocess.run(
        ["bash", "--norc", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=_entry_point_env(),
    )
    assert out.returncode == 0, out.stderr
    assert "complete -o nosort -F _postkey_completion postkey" in out.stdout
    assert "commands: post\n" in out.stdout
    assert "formats: text json\n" in out.stdout


@pytest.mark.parametrize(("shell", "marker"), [("zsh", "#compdef postkey"), ("fish", "complete")])
def test_zsh_and_fish_completion_scripts_come_from_the_entry_point(shell: str, marker: str) -> None:
    out = subprocess.run(
        [str(ENTRY_POINT)],
        capture_output=True,
        text=True,
        check=False,
        env=_entry_point_env(_POSTKEY_COMPLETE=f"{shell}_source"),
    )
    assert out.returncode == 0, out.stderr
    assert marker in out.stdout and "_POSTKEY_COMPLETE" in out.stdout


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes_commands_and_choices() -> None:
    script = (
        "_POSTKEY_COMPLETE=fish_source postkey | source;"
        ' complete -C"postkey "; complete -C"postkey post http://x --format "'
    )
    out = subprocess.run(
        ["fish", "--no-config", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=_entry_point_env(),
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "post\tPOST to URL; --wait prints the response." in lines
    assert {"json", "text"} <= set(lines)


# -- the shared store: keys readable from other commands ------------------------------------


def test_with_a_shared_store_post_prints_a_key_that_get_exists_and_wait_read(
    redis_url: str, echo: str, hostile: str
) -> None:
    env = {"POSTKEY_STORE": redis_url, "POSTKEY_STORE_PREFIX": "cli1"}
    sent = run("post", echo + "/post", "-d", "shared", env=env)
    assert sent.returncode == 0, sent.stderr
    key = sent.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    got = run("get", key, "--format", "json", env=env)
    assert got.returncode == 0 and json.loads(got.stdout)["body"].count("shared") == 1
    assert run("exists", key, env=env).stdout.strip() == "true"
    missing = run("exists", "never-sent", env=env)
    assert missing.returncode == 1 and missing.stdout.strip() == "false"
    unknown = run("get", "never-sent", env=env)
    assert unknown.returncode == 3 and "is unknown" in unknown.stderr
    waited = run(
        "wait", key, "--timeout", "5", "--store", redis_url, env={"POSTKEY_STORE_PREFIX": "cli1"}
    )
    assert waited.returncode == 0 and waited.stdout.startswith("HTTP/1.1 200 OK")


def test_wait_in_another_command_is_woken_when_the_result_lands(redis_url: str, echo: str) -> None:
    env = {"POSTKEY_STORE": redis_url, "POSTKEY_STORE_PREFIX": "cli2"}
    with Client(store=redis_url, store_prefix="cli2") as client:
        key = client.get_async(echo + "/delay/1500", timeout_ms=5000)
        waited = run("wait", key, "--timeout", "10", "--format", "json", env=env)
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["status"] == 200


def test_reading_keys_without_a_shared_store_is_a_usage_error() -> None:
    for args in (("get", "k"), ("exists", "k"), ("wait", "k")):
        out = run(*args)
        assert out.returncode == 2 and "needs a shared store" in out.stderr


@pytest.mark.parametrize("command", ["get", "exists", "wait", "cancel"])
@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("bad key", "key contains ' '; allowed are letters, digits and _ - . : ~ { }"),
        ("k" * 300, "key is 300 characters long; the maximum is 250"),
        ("", "key must not be empty"),
    ],
)
def test_a_malformed_key_is_bad_input_exit_2_saying_what_is_wrong(
    single_redis_url: str, command: str, key: str, says: str
) -> None:
    wait = ["--timeout", "1"] if command == "wait" else []
    out = run(command, key, "--store", single_redis_url, *wait)
    assert (out.returncode, out.stdout) == (2, ""), out
    assert out.stderr == f"postkey: error: {says}\n"
