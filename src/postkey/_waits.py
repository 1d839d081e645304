"""Waiting: one rule for wait timeouts everywhere, and waking many waiters where one that fails
cannot stop the others."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from ._errors import InvalidValue

log = logging.getLogger(__name__)

#: The longest wait accepted, in seconds (31 days); None waits forever.
MAX_WAIT_S = 31 * 86_400


def check_wait_timeout(timeout: object) -> float | None:
    """Validate a wait timeout in seconds: None (forever) or a finite number within `MAX_WAIT_S`.

    Raises:
        InvalidValue: not None, not an int / float (a bool is refused), NaN, infinite, negative
            or above `MAX_WAIT_S`.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidValue(
            "timeout must be None (wait forever) or a number of seconds,"
            f" not {type(timeout).__name__}"
        )
    try:
        seconds = float(timeout)  # first: what is checked is what is waited on
    except (OverflowError, ValueError, TypeError):
        seconds = float("nan")
    if not 0 <= seconds <= MAX_WAIT_S:  # also refuses NaN, which compares false to everything
        raise InvalidValue(
            f"timeout must be between 0 and {MAX_WAIT_S} seconds (31 days), or None to wait"
            f" forever; got {timeout!r}"
        )
    return seconds


def wake_all(
    waiters: Iterable[Callable[[Any], object]], value: object, what: str, key: str | None = None
) -> None:
    """Call every waiter with ``value``; one that raises is logged (as the waiter of ``what``,
    and ``key`` if given: put together only then, not for every result) and the others still
    run."""
    for wake in waiters:
        try:
            wake(value)
        except BaseException:  # a waiter's code must not stop the others, nor the caller
            named = what if key is None else f"{what} {key!r}"
            log.exception("a waiter for %s raised; the other waiters are still woken", named)
