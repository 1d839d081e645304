"""The ``postkey`` command: send requests, wait for results, run a JSONL batch, run the demo,
serve the HTTP gateway."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from ._batch import run_batch
from ._client import Client
from ._demo import run_demo
from ._encoders import load_json
from ._errors import PostkeyError, StoreUnavailable
from ._gc import tune_for_serving
from ._keys import check_key
from ._policy import DestinationPolicy
from ._request import check_timeout
from ._result import Result, State
from ._settings import Settings

EXIT_FAILED = 1  # a request ended as failed (no response)
EXIT_USAGE = 2  # bad input: nothing was sent
EXIT_HTTP_ERROR = 22  # --fail and a status of 400 or more (curl --fail's code)
EXIT_NO_RESULT = 3  # get / wait: the key has no result (yet, or any more)
EXIT_STORE_UNAVAILABLE = 4  # the shared store did not answer (or is not a Redis)
EXIT_ABORTED = 130  # Ctrl-C

EXIT_CODES_HELP = """\b
Exit codes:
  0    success
  1    a request failed: no response (batch: a line was rejected or failed;
       demo: not every response was read back)
  2    bad input or usage: one line on stderr, nothing sent
  3    get / wait: the key has no result (pending, running, unknown or expired)
  4    the shared store did not answer (down, unreachable, not a Redis, or
       refusing writes)
  22   with --fail: the response's status was 400 or more
  130  interrupted"""

ALLOW_HINT = "use --allow-private, or --allow ADDRESS[:PORT] for one destination"


def main() -> None:
    """Entry point: run the CLI, turning postkey's errors into one line and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="postkey: %(levelname)s: %(message)s")
    try:
        # prog_name: the same name (and completion variable, _POSTKEY_COMPLETE) under
        # `python -m postkey` as under the installed `postkey` script.
        cli(standalone_mode=False, prog_name="postkey")
    except click.exceptions.Abort:
        _die("aborted", EXIT_ABORTED)
    except click.ClickException as exc:
        _die(exc.format_message(), EXIT_USAGE)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except StoreUnavailable as exc:  # an outage, not a typo: a script may try again
        _die(str(exc), EXIT_STORE_UNAVAILABLE)
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


# The levels the long-running commands (worker, serve) log at; one list, so they take the same.
_log_level_option = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)


def _client_deadline_option(
    name: str, part: str, default_s: float
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """serve's deadline on one part of a request a client sends (a slow client is cut off)."""
    return click.option(
        name,
        type=click.FloatRange(0.01, 3600),
        default=default_s,
        show_default=True,
        help=f"Seconds a client has to send a request's {part}.",
    )


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.version_option(package_name="postkey", message="%(prog)s %(version)s")
def cli() -> None:
    """Send an HTTP request now, get its response later by key.

    Settings come from POSTKEY_* environment variables (see the README); a POSTKEY_ variable that
    names no setting is an error. post, request and batch send to public addresses only unless
    given --allow-private, --allow or POSTKEY_POLICY.
    """


def _request_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("-d", "--data", help="Body to send; @FILE reads a file, @- stdin."),
        click.option("--json", "json_data", help="JSON body; adds Content-Type and Accept."),
        click.option("-H", "--header", "headers", multiple=True, help="'Name: value' (repeat)."),
        click.option("--timeout-ms", type=int, help="One deadline for the whole exchange."),
        click.option("-L", "--location", "follow", is_flag=True, help="Follow redirects."),
        click.option("--key", help="Your own key (makes the submit idempotent)."),
        click.option("--wait", "wait_", is_flag=True, help="Print the response (or the failure)."),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["text", "json"]),
            help="How --wait prints the result (default: text). Needs --wait.",
        ),
        click.option(
            "--fail",
            is_flag=True,
            help="Exit 22 when the status is 400 or more (still printing what --wait prints).",
        ),
        click.option(
            "--store",
            help="Shared store URL (redis://host:6379/0): results readable from anywhere."
            " Default: POSTKEY_STORE, else this process only.",
        ),
        click.option(
            "--send",
            type=click.Choice(["local", "workers"]),
            help="Who sends: this process (local), or `postkey worker` processes (workers:"
            " queued in the --store, the command returns at once). Default: POSTKEY_SEND.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


_NO_WAIT_HELP = """

Without --wait the request is still sent, and ends before the command exits. With a shared store
(--store or POSTKEY_STORE) the key is printed: read it later with get, exists or wait, from
anywhere. In embedded mode nothing is printed on stdout: the result lives only in this process,
so a key would be of no use; one line on stderr says how it went."""


# Commands' first sentences have no comma: fish's completion cuts descriptions at the first one.
@cli.command(
    help="POST to URL; --wait prints the response." + _NO_WAIT_HELP, epilog=EXIT_CODES_HELP
)
@click.argument("url")
@_request_options
@_policy_options
def post(url: str, **options: Any) -> None:
    _send("POST", url, **options)


@cli.command(
    help="Send METHOD (any case) to URL; --wait prints the response." + _NO_WAIT_HELP,
    epilog=EXIT_CODES_HELP,
)
@click.argument("method")
@click.argument("url")
@_request_options
@_policy_options
def request(method: str, url: str, **options: Any) -> None:
    _send(method, url, **options)  # any case: the library checks and upper-cases it


def _read_data(data: str | None, json_data: str | None, max_bytes: int) -> bytes | str | None:
    """The body --data or --json gives; @FILE and @- read at most ``max_bytes`` (the client's
    max_request_bytes) plus one, so an endless or huge source is refused at once."""
    if data is not None and json_data is not None:
        raise click.UsageError("give either --data or --json, not both")
    if json_data is not None:
        try:
            load_json(json_data)
        except ValueError as exc:
            raise click.UsageError(f"--json is not valid JSON: {exc}") from None
        return json_data
    if data is None or not data.startswith("@"):
        return data
    if data == "@-":
        body, where = sys.stdin.buffer.read(max_bytes + 1), "stdin"
    else:
        with Path(data[1:]).open("rb") as source:
            body, where = source.read(max_bytes + 1), data[1:]
    if len(body) > max_bytes:
        raise click.UsageError(
            f"body read from {where} is over the maximum of {max_bytes} bytes (max_request_bytes)"
        )
    return body


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
    fmt: str | None,
    fail: bool,
    allow_private: bool,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
    store: str | None,
    send: str | None,
) -> None:
    if fmt is not None and not wait_:
        raise click.UsageError("--format says how --wait prints the result: add --wait")
    settings = _guarded_settings(allow_private, allow, deny)
    body = _read_data(data, json_data, settings.max_request_bytes)
    header_lines = list(headers)
    if json_data is not None:
        names = {h.partition(":")[0].strip().lower() for h in header_lines}
        if "content-type" not in names:
            header_lines.append("Content-Type: application/json")
        if "accept" not in names:
            header_lines.append("Accept: application/json")
    changes = {k: v for k, v in (("store", store), ("send", send)) if v}
    client = Client(settings.replace(**changes) if changes else settings)
    drain = True
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
        # Printed once every process can see it.
        client.flush()
        queued = client.settings.send == "workers"
        if queued and not wait_:
            # A worker sends it: the key is the answer, however fast a worker may be; its
            # outcome is read later with get / wait.
            click.echo(issued)
            sys.exit(0)
        result = client.wait(issued) if wait_ else client.get(issued)
    except KeyboardInterrupt:
        drain = False
        raise
    finally:
        # Sent here: the request ends (response, failure or deadline) before the process does;
        # unless Ctrl-C said to stop.
        _close(client, drain)
    if not queued:
        result = client.get(issued)
    if wait_:
        _print_result(result, fmt or "text")
    else:
        _report_without_wait(issued, result, client.settings.store != "memory://")
    sys.exit(_exit_code(result, fail))


def _close(client: Client, drain: bool) -> None:
    """Close ``client``: after Ctrl-C (before or during the drain) cancel what is in flight at
    once, so the command exits 130 now rather than at the request's deadline."""
    try:
        client.close(drain=drain)
    except KeyboardInterrupt:
        client.close(drain=False)
        raise


def _exit_code(result: Result, fail: bool) -> int:
    if result.state is not State.DONE:
        return EXIT_FAILED
    if fail and result.status is not None and result.status >= 400:
        return EXIT_HTTP_ERROR
    return 0


def _report_without_wait(key: str, result: Result, shared: bool) -> None:
    """What ``post`` / ``request`` print without --wait: the one place that decides it.

    With a shared store (Redis) the key is readable from anywhere: print it. In embedded mode the
    result lives in this process, which exits now, so no other process can read ``key``:
    printing it would invite a read that can only say ``unknown``. Say on stderr how the request
    went instead.
    """
    if shared:
        click.echo(key)
        if result.state is State.FAILED:
            _print_failure(result)
        return
    if result.state is not State.DONE:
        _print_failure(result)
        return
    elapsed = f" in {result.elapsed_ms:.0f} ms" if result.elapsed_ms is not None else ""
    click.echo(
        f"postkey: sent: {result.status} {result.reason}".rstrip() + f"{elapsed}; results live"
        " only in this process (embedded mode), so no key is printed: use --wait to print"
        " the response",
        err=True,
    )


def _store_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store",
        help="Shared store URL (redis://host:6379/0); default: POSTKEY_STORE.",
    )(fn)


def _shared_client(store: str | None, key: str) -> Client:
    """A client on the shared store that get / exists / wait / cancel use for ``key``.

    Raises:
        InvalidKey: ``key`` is malformed (exit 2, as the gateway's 422): checked first, so it
            is never read as a key that merely has no result.
    """
    check_key(key)
    settings = _settings(store=store)
    if settings.store == "memory://":
        raise click.UsageError(
            "reading a key from another process needs a shared store: give --store"
            " redis://HOST:PORT/DB or set POSTKEY_STORE (in embedded mode a key lives only in"
            " the process that sent it)"
        )
    return Client(settings)


def _show(result: Result, fmt: str) -> None:
    if result.state.terminal:
        _print_result(result, fmt)
    elif fmt == "json":
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        click.echo(f"postkey: {result.key} is {result.describe()}", err=True)
    code = 0 if result.state is State.DONE else EXIT_FAILED
    sys.exit(code if result.state.terminal else EXIT_NO_RESULT)


_FORMAT = click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)


@cli.command(short_help="Print a key's result from the shared store.", epilog=EXIT_CODES_HELP)
@click.argument("key")
@_store_option
@_FORMAT
def get(key: str, store: str | None, fmt: str) -> None:
    """Print KEY's result (status line, headers, body; or JSON) from the shared store, now."""
    with _shared_client(store, key) as client:
        result = client.get(key)
    _show(result, fmt)


@cli.command(short_help="Exit 0 if a key has a result in the shared store.")
@click.argument("key")
@_store_option
def exists(key: str, store: str | None) -> None:
    """Print true and exit 0 if KEY has a result (done or failed); else print false, exit 1."""
    with _shared_client(store, key) as client:
        found = client.exists(key)
    click.echo("true" if found else "false")
    sys.exit(0 if found else 1)


@cli.command(short_help="Wait for a key's result in the shared store.", epilog=EXIT_CODES_HELP)
@click.argument("key")
@click.option("--timeout", type=float, help="Seconds to wait at most (default: forever).")
@_store_option
@_FORMAT
def wait(key: str, timeout: float | None, store: str | None, fmt: str) -> None:
    """Wait until KEY has a result (woken by the store, no polling), then print it like get."""
    with _shared_client(store, key) as client:
        result = client.wait(key, timeout)
    _show(result, fmt)


@cli.command(short_help="Cancel a pending request in the shared store.")
@click.argument("key")
@_store_option
def cancel(key: str, store: str | None) -> None:
    """End KEY as failed / cancelled if it has not ended yet, whichever process or worker
    sends it (a worker stops sending it within a third of claim_idle_ms). Prints true and
    exits 0 if this call cancelled it; else prints false and exits 1."""
    with _shared_client(store, key) as client:
        done = client.cancel(key)
    click.echo("true" if done else "false")
    sys.exit(0 if done else 1)


@cli.command(short_help="Send the requests queued in a Redis store.")
@click.option("--store", "--redis", "store", help="The Redis store URL; default: POSTKEY_STORE.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 100_000),
    default=256,
    show_default=True,
    help="Requests on the wire at once.",
)
@click.option(
    "--drain",
    type=click.FloatRange(0, 86_400),
    default=30.0,
    show_default=True,
    help="Seconds in-flight requests may finish after SIGTERM; then they go back to the queue"
    " (at-least-once) or end as unknown_outcome (at-most-once).",
)
@click.option("--name", help="This worker's name in the consumer group (default: host-pid-random).")
@_log_level_option
@_policy_options
def worker(
    store: str | None,
    concurrency: int,
    drain: float,
    name: str | None,
    log_level: str,
    allow_private: bool,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
) -> None:
    """Read requests from the store's queue and send them, until SIGTERM or Ctrl-C.

    Run as many as you like, on any machine that reaches the Redis store. Destinations are
    public addresses only unless given --allow-private, --allow or POSTKEY_POLICY. Logs go to
    stderr as key=value lines."""
    from .worker import Worker  # noqa: PLC0415  # needs redis-py: only for this command

    settings = _guarded_settings(allow_private, allow, deny)
    if store:
        settings = settings.replace(store=store)
    if settings.store == "memory://":
        raise click.UsageError(
            "a worker reads the queue in a Redis store: give --store redis://HOST:PORT/DB or set"
            " POSTKEY_STORE"
        )
    # key=value lines with a timestamp: what log collectors parse without configuration.
    for handler in logging.getLogger().handlers:
        handler.setFormatter(
            logging.Formatter("ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
        )
    logging.getLogger("postkey").setLevel(log_level.upper())
    runner = Worker(settings, concurrency=concurrency, drain_s=drain, name=name)

    def stop(_signum: int, _frame: object) -> None:
        runner.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    tune_for_serving()
    runner.run()


def _print_failure(result: Result) -> None:
    kind = result.error_kind.value if result.error_kind else "?"
    hint = f" ({ALLOW_HINT})" if kind == "blocked" else ""
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
    for name, value in result.headers.items():  # every line as received, repeats kept
        click.echo(f"{name}: {value}")
    click.echo()
    sys.stdout.flush()
    sys.stdout.buffer.write(result.body)
    if result.body and not result.body.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()


@cli.command(short_help="Send a JSONL file of requests concurrently.", epilog=EXIT_CODES_HELP)
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
    outcome = run_batch(file, out, settings)
    if outcome.blocked:
        blocked = f"{outcome.blocked} request(s) blocked by the destination policy"
        click.echo(f"postkey: {blocked}: {ALLOW_HINT}", err=True)
    sys.exit(0 if outcome.ok else EXIT_FAILED)


@cli.command(short_help="Serve the HTTP gateway (API for any language).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--store", help="memory:// (default) or a Redis URL; default: POSTKEY_STORE.")
@click.option(
    "--send",
    type=click.Choice(["local", "workers"]),
    help="Who sends: this process (local) or `postkey worker`s (a Redis store); default:"
    " POSTKEY_SEND or local.",
)
@click.option("--keys", "keys_file", help="A TOML file of tenants and API key hashes.")
@click.option(
    "--api-key-file",
    help="Without --keys: read the API key from this file, or write a new one there.",
)
@click.option("--no-auth", is_flag=True, help="No API key (loopback addresses only).")
@click.option(
    "--rate-limit",
    type=click.FloatRange(0, 1e9),
    default=0,
    show_default=True,
    help="Requests/s per tenant when its keys file entry sets none (0: no limit).",
)
@click.option("--burst", type=click.IntRange(0, 10**9), default=0, help="Rate limit bucket size.")
@click.option(
    "--max-body",
    type=click.IntRange(1, 2**40),
    default=32 * 1024 * 1024,
    show_default=True,
    help="Largest request body read, in bytes (413 past it).",
)
@click.option(
    "--max-wait",
    type=click.FloatRange(0.001, 86_400),
    default=60.0,
    show_default=True,
    help="Longest ?wait= long-poll, in seconds.",
)
@click.option(
    "--max-waiters",
    type=click.IntRange(1, 10**7),
    default=10_000,
    show_default=True,
    help="Long-polls waiting at once, shared by all tenants beyond their reserves (503 past it).",
)
@click.option(
    "--tenant-waiters",
    type=click.IntRange(0, 10**6),
    default=100,
    show_default=True,
    help="Long-polls each tenant may always have waiting, whatever the others hold.",
)
@_client_deadline_option("--header-timeout", "headers", default_s=10.0)
@_client_deadline_option("--body-timeout", "body", default_s=30.0)
@click.option(
    "--secure-cookies",
    is_flag=True,
    help="Mark the dashboard's session cookie Secure (behind a TLS proxy that does not send"
    " X-Forwarded-Proto).",
)
@click.option(
    "--server",
    type=click.Choice(["uvicorn", "granian"]),
    default="uvicorn",
    show_default=True,
    help="The HTTP server (granian needs the granian package).",
)
@_log_level_option
@_policy_options
def serve(
    host: str,
    port: int,
    store: str | None,
    send: str | None,
    keys_file: str | None,
    api_key_file: str | None,
    no_auth: bool,
    rate_limit: float,
    burst: int,
    max_body: int,
    max_wait: float,
    max_waiters: int,
    tenant_waiters: int,
    header_timeout: float,
    body_timeout: float,
    secure_cookies: bool,
    server: str,
    log_level: str,
    allow_private: bool,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
) -> None:
    """Serve the HTTP gateway: submit requests and read their results over HTTP.

    Without --keys, one tenant ('default') with a new API key, printed at start (or kept in
    --api-key-file). Destinations are public addresses only unless given --allow-private,
    --allow or POSTKEY_POLICY (a keys file can allow more per tenant)."""
    try:
        from .gateway._launch import build_config  # noqa: PLC0415  # needs the gateway extra
        from .gateway._server import ServeOptions, serve_on_granian  # noqa: PLC0415
        from .gateway._server import serve as run_server  # noqa: PLC0415
    except ImportError as exc:
        raise click.UsageError(
            f"the gateway needs its extra: pip install 'postkey[gateway]' ({exc})"
        ) from None
    settings = _guarded_settings(allow_private, allow, deny)
    settings = settings.replace(**{k: v for k, v in (("store", store), ("send", send)) if v})
    config = build_config(
        settings,
        host,
        keys_file=keys_file,
        api_key_file=api_key_file,
        no_auth=no_auth,
        rate_per_s=rate_limit,
        burst=burst,
        say=lambda line: click.echo(f"postkey serve: {line}", err=True),
        max_body_bytes=max_body,
        max_wait_s=max_wait,
        max_waiters=max_waiters,
        tenant_waiters=tenant_waiters,
        body_timeout_s=body_timeout,
        secure_cookies=secure_cookies,
    )
    logging.getLogger("postkey").setLevel(log_level.upper())
    options = ServeOptions(host, port, header_timeout_s=header_timeout, log_level=log_level)
    if server == "granian":
        serve_on_granian(config, options)
    else:
        run_server(config, options)


@cli.command(short_help="Run the seed's scenario on a local test server.", epilog=EXIT_CODES_HELP)
@click.option(
    "-n",
    "--requests",
    "count",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="POSTs to send.",
)
@click.option(
    "--timeout-ms", type=int, default=3000, show_default=True, help="Each request's deadline."
)
def demo(count: int, timeout_ms: int) -> None:
    """Start postkey's local test server and run the seed's scenario: many async POSTs through
    the MyChat names, each read back by its key. Exit 1 unless every one came back."""
    settings = _settings()
    check_timeout(timeout_ms, settings.max_timeout_ms)  # before anything starts
    sys.exit(0 if run_demo(count, timeout_ms, settings) else EXIT_FAILED)


if __name__ == "__main__":
    main()
