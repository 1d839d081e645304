"""The ``postkey`` command: send requests, wait for results, run a JSONL batch, run the demo."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from ._batch import run_batch
from ._client import Client
from ._demo import run_demo
from ._errors import PostkeyError
from ._policy import DestinationPolicy
from ._result import Result, State
from ._settings import Settings

EXIT_FAILED = 1  # a request ended as failed (no response)
EXIT_USAGE = 2  # bad input: nothing was sent


def main() -> None:
    """Entry point: run the CLI, turning postkey's errors into one line and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="postkey: %(levelname)s: %(message)s")
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        _die("aborted", 130)
    except click.ClickException as exc:
        _die(exc.format_message(), EXIT_USAGE)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (PostkeyError, OSError) as exc:
        _die(str(exc), EXIT_USAGE)


def _die(message: str, code: int) -> NoReturn:
    click.echo(f"postkey: error: {message}", err=True)
    sys.exit(code)


def _settings(**overrides: Any) -> Settings:
    return Settings.from_env().replace(**{k: v for k, v in overrides.items() if v is not None})


def _policy_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--allow-private",
            is_flag=True,
            help="Allow every destination (loopback, private...). Default: public only.",
        ),
        click.option(
            "--allow", "allow", multiple=True, help="Allow a CIDR, address or host[:port]."
        ),
        click.option("--deny", "deny", multiple=True, help="Deny a CIDR, address or host[:port]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _guarded_settings(
    allow_private: bool, allow: tuple[str, ...], deny: tuple[str, ...]
) -> Settings:
    """The CLI sends to public addresses only unless told otherwise (flags, or POSTKEY_POLICY)."""
    settings = _settings()
    env_policy = os.environ.get("POSTKEY_POLICY")
    mode = "allow_all" if allow_private else (env_policy or "public_only")
    policy = DestinationPolicy(
        mode,  # type: ignore[arg-type]
        settings.policy.allow + allow,
        settings.policy.deny + deny,
    )
    return settings.replace(policy=policy)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="postkey")
def cli() -> None:
    """Send an HTTP request now, get its response later by key.

    Settings come from POSTKEY_* environment variables (see the README). post, request and batch
    send to public addresses only unless given --allow-private, --allow or POSTKEY_POLICY.
    """


def _request_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("-d", "--data", help="Body to send; @FILE reads a file, @- stdin."),
        click.option("--json", "json_data", help="JSON body; adds Content-Type and Accept."),
        click.option("-H", "--header", "headers", multiple=True, help="'Name: value' (repeat)."),
        click.option("--timeout-ms", type=int, help="One deadline for the whole exchange."),
        click.option("-L", "--location", "follow", is_flag=True, help="Follow redirects."),
        click.option("--key", help="Your own key (makes the submit idempotent)."),
        click.option("--wait", "wait_", is_flag=True, help="Wait and print the result."),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["text", "json"]),
            default="text",
            help="How --wait prints the result.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@cli.command()
@click.argument("url")
@_request_options
@_policy_options
def post(url: str, **options: Any) -> None:
    """POST to URL; print the key (or, with --wait, the result)."""
    _send("POST", url, **options)


@cli.command()
@click.argument("method")
@click.argument("url")
@_request_options
@_policy_options
def request(method: str, url: str, **options: Any) -> None:
    """Send METHOD to URL; print the key (or, with --wait, the result)."""
    _send(method.upper(), url, **options)


def _read_data(data: str | None, json_data: str | None) -> bytes | str | None:
    if data is not None and json_data is not None:
        raise click.UsageError("give either --data or --json, not both")
    if json_data is not None:
        try:
            json.loads(json_data)
        except ValueError as exc:
            raise click.UsageError(f"--json is not valid JSON: {exc}") from None
        return json_data
    if data is not None and data.startswith("@"):
        return sys.stdin.buffer.read() if data == "@-" else Path(data[1:]).read_bytes()
    return data


def _send(
    method: str,
    url: str,
    *,
    data: str | None,
    json_data: str | None,
    headers: tuple[str, ...],
    timeout_ms: int | None,
    follow: bool,
    key: str | None,
    wait_: bool,
    fmt: str,
    allow_private: bool,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
) -> None:
    body = _read_data(data, json_data)
    header_lines = list(headers)
    if json_data is not None:
        names = {h.partition(":")[0].strip().lower() for h in header_lines}
        if "content-type" not in names:
            header_lines.append("Content-Type: application/json")
        if "accept" not in names:
            header_lines.append("Accept: application/json")
    client = Client(_guarded_settings(allow_private, allow, deny))
    try:
        issued = client.request_async(
            method,
            url,
            body,
            "\r\n".join(header_lines),
            timeout_ms,
            key=key,
            follow_redirects=follow or None,
        )
        if not wait_:
            click.echo(issued)
    finally:
        # Without --wait the request still goes out before the process ends.
        client.close()
    result = client.get(issued)
    if wait_:
        _print_result(result, fmt)
    elif result.state is not State.DONE:
        _print_failure(result)
    if result.state is not State.DONE:
        sys.exit(EXIT_FAILED)


def _print_failure(result: Result) -> None:
    kind = result.error_kind.value if result.error_kind else "?"
    hint = ""
    if kind == "blocked":
        hint = " (use --allow-private, or --allow ADDRESS[:PORT] for one destination)"
    click.echo(f"postkey: {result.state.value}: {kind}: {result.error}{hint}", err=True)


def _print_result(result: Result, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    if result.state is not State.DONE:
        _print_failure(result)
        return
    version = result.http_version or "1.1"
    click.echo(f"HTTP/{version} {result.status} {result.reason}".rstrip())
    for name, value in result.headers:
        click.echo(f"{name}: {value}")
    click.echo()
    sys.stdout.flush()
    sys.stdout.buffer.write(result.body)
    if result.body and not result.body.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("-o", "--output", help="Results as JSONL (default: FILE.results.jsonl; - = stdout).")
@click.option("--max-in-flight", type=int, help="Requests on the wire at once.")
@click.option("--timeout-ms", type=int, help="Default timeout for lines that give none.")
@_policy_options
def batch(
    file: str,
    output: str | None,
    max_in_flight: int | None,
    timeout_ms: int | None,
    allow_private: bool,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
) -> None:
    """Send every request in FILE (one JSON object per line) concurrently; write results as JSONL.

    A line: {"method": "POST", "url": "...", "body": "..." | "json": {...}, "headers": {...},
    "timeout_ms": 3000, "key": "..."}. Exit code 1 if any line was rejected or failed.
    """
    out = output or (f"{file}.results.jsonl" if file != "-" else "-")
    settings = _guarded_settings(allow_private, allow, deny).replace(
        **{
            k: v
            for k, v in {"max_in_flight": max_in_flight, "default_timeout_ms": timeout_ms}.items()
            if v is not None
        }
    )
    ok = run_batch(file, out, settings)
    sys.exit(0 if ok else EXIT_FAILED)


@cli.command()
@click.option("-n", "--requests", "count", type=int, default=200, show_default=True)
@click.option("--timeout-ms", type=int, default=3000, show_default=True)
def demo(count: int, timeout_ms: int) -> None:
    """Start a local echo server and run the seed's scenario: many async POSTs, read back by key."""
    if not 1 <= count <= 100_000:
        raise click.UsageError("--requests must be between 1 and 100000")
    sys.exit(0 if run_demo(count, timeout_ms) else EXIT_FAILED)


if __name__ == "__main__":
    main()
