"""Delivery guarantees of a queued request, and which one a request gets by default."""

from __future__ import annotations

from .._request import Request

AT_LEAST_ONCE = "at_least_once"
AT_MOST_ONCE = "at_most_once"
DELIVERIES = (AT_LEAST_ONCE, AT_MOST_ONCE)
#: Methods that may be sent again without changing the outcome (RFC 9110 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def delivery_of(request: Request, asked: str | None) -> str:
    """The delivery a request gets: ``asked``, else at-least-once for idempotent methods and
    requests with an Idempotency-Key header (which stays the same on every attempt, so a server
    that honours it deduplicates), else at-most-once: a POST sent twice may charge a card twice,
    so one whose worker died mid-send ends as ``unknown_outcome`` instead."""
    if asked is not None:
        return asked
    if request.method in IDEMPOTENT_METHODS:
        return AT_LEAST_ONCE
    for name, _value in request.headers:  # a loop, not any(genexpr): this runs per submit
        if len(name) == 15 and name.lower() == "idempotency-key":
            return AT_LEAST_ONCE
    return AT_MOST_ONCE
