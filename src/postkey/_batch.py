"""``postkey batch``: send every request of a JSONL file concurrently, write results as JSONL."""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._client import Client
from ._encoders import load_json
from ._errors import InvalidValue, PostkeyError
from ._result import ErrorKind, State
from ._settings import Settings
from ._stats import Summary

_END: Any = object()


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """How a batch went: ``ok`` if every line was accepted and got a response; ``blocked``
    counts the requests the destination policy refused (the CLI says once how to allow them)."""

    ok: bool
    blocked: int


def parse_line(text: str) -> dict[str, Any]:
    """Turn one JSONL line into `Client.request_async` arguments.

    Raises:
        ValueError: not a JSON object, unknown fields, or both "body" and "json".
    """
    spec = load_json(text)
    if not isinstance(spec, dict):
        raise ValueError("a line must be a JSON object")
    unknown = set(spec) - {"method", "url", "body", "json", "headers", "timeout_ms", "key"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    if "body" in spec and "json" in spec:
        raise ValueError('give either "body" or "json", not both')
    headers = spec.get("headers")
    if "json" in spec:
        spec["body"] = json.dumps(spec.pop("json"))
        if isinstance(headers, dict) and not any(k.lower() == "content-type" for k in headers):
            headers = {**headers, "Content-Type": "application/json"}
        elif headers is None:
            headers = {"Content-Type": "application/json"}
    if isinstance(headers, list):
        headers = [tuple(pair) if isinstance(pair, list) else pair for pair in headers]
    spec["headers"] = headers
    spec.setdefault("method", "POST" if spec.get("body") is not None else "GET")
    return spec


def line_limit(settings: Settings) -> int:
    """The longest line a batch reads: one request, whose body may come JSON-escaped (up to six
    bytes a byte, as \\u00XX), with room for its URL and headers. A file may be as long as it
    likes; a line past this (a file with no newline, such as /dev/zero) is refused rather than
    read whole into memory."""
    return 6 * settings.max_request_bytes + (1 << 20)


def _lines(path: str, limit: int) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line.

    Raises:
        InvalidValue: a line that is not UTF-8, or longer than ``limit`` bytes (a file is checked
            whole before anything is sent).
    """
    shown = "stdin" if path == "-" else path
    handle = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    try:
        number = 0
        while raw := handle.readline(limit + 1):
            number += 1
            if len(raw) > limit:
                raise InvalidValue(f"{shown} line {number} is over {limit} bytes long")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidValue(
                    f"{shown} line {number} is not UTF-8 ({exc.reason} at byte {exc.start})"
                ) from None
            if line.strip():
                yield number, line
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()


def run_batch(path: str, output: str, settings: Settings) -> BatchOutcome:
    """Run the batch, write a result per line to ``output`` and print a summary."""
    limit = line_limit(settings)
    total = None if path == "-" else sum(1 for _ in _lines(path, limit))
    # Submitting waits for room in the queue instead of failing: a batch is bounded by its file.
    client = Client(settings.replace(queue_wait_ms=settings.max_timeout_ms))
    summary = Summary()
    rejected = 0
    pending: queue.Queue[Any] = queue.Queue(maxsize=settings.max_queue)
    out: IO[str] = sys.stdout if output == "-" else open(output, "w", encoding="utf-8")  # noqa: SIM115
    report = Console(stderr=output == "-")
    progress = Progress(
        TextColumn("[bold]batch"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )

    def write_results() -> None:
        while (item := pending.get()) is not _END:
            number, key, error, own_key = item
            if key is None:
                row = {"line": number, "state": "rejected", "error": error}
            else:
                result = client.wait(key)
                summary.add(result)
                if not own_key:
                    # Written out: free the memory now. A line's own key stays until its TTL:
                    # another line may name it again (sent once, reported on both lines).
                    client.cache_delete(key)
                row = {"line": number, **result.to_dict()}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            progress.advance(task)

    started = time.monotonic()
    with progress:
        task = progress.add_task("batch", total=total)
        writer = threading.Thread(target=write_results, name="postkey-batch-writer")
        writer.start()
        try:
            for number, line in _lines(path, limit):
                try:
                    spec = parse_line(line)
                    key = client.request_async(
                        spec["method"],
                        spec.get("url", ""),
                        spec.get("body"),
                        spec.get("headers"),
                        spec.get("timeout_ms"),
                        key=spec.get("key"),
                    )
                    pending.put((number, key, None, spec.get("key") is not None))
                except (ValueError, TypeError, PostkeyError) as exc:
                    rejected += 1
                    pending.put((number, None, str(exc), False))
        finally:
            pending.put(_END)
            writer.join()
            client.close()
            if out is not sys.stdout:
                out.close()
    elapsed = time.monotonic() - started
    _print_summary(report, summary, rejected, elapsed)
    return BatchOutcome(
        ok=rejected == 0 and summary.states[State.DONE.value] == summary.total,
        blocked=summary.error_kinds[ErrorKind.BLOCKED.value],
    )


def _print_summary(console: Console, summary: Summary, rejected: int, elapsed: float) -> None:
    table = Table(title="postkey batch", show_header=True)
    table.add_column("what")
    table.add_column("count / value", justify="right")
    for state, n in sorted(summary.states.items()):
        table.add_row(f"state {state}", str(n))
    if rejected:
        table.add_row("rejected lines", str(rejected))
    for cls, n in sorted(summary.status_classes.items()):
        table.add_row(f"status {cls}", str(n))
    for kind, n in sorted(summary.error_kinds.items()):
        table.add_row(f"error {kind}", str(n))
    for name, value in summary.percentiles().items():
        table.add_row(f"latency {name}", f"{value:.1f} ms")
    rate = summary.total / elapsed if elapsed > 0 else 0.0
    table.add_row("requests / s", f"{rate:,.0f}")
    table.add_row("wall time", f"{elapsed:.2f} s")
    console.print(table)
