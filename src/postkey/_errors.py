"""Every exception postkey raises, under one root.

    PostkeyError
    ├── InvalidRequest (also ValueError): the request was refused before a key was issued
    │   ├── InvalidMethod
    │   ├── InvalidURL
    │   ├── InvalidHeader
    │   ├── InvalidBody
    │   ├── InvalidTimeout
    │   └── UnknownArgument (also InvalidValue and TypeError): a keyword or setting postkey
    │       does not take
    ├── InvalidKey (also ValueError): a key with characters or a length postkey does not accept
    ├── InvalidValue (also ValueError): a cache value, TTL or setting out of range
    ├── KeyConflict (also ValueError): the key is taken by a different request or by a result
    ├── QueueFull: the engine's submission queue (or the callback backlog) is at its bound
    │   └── IdempotencyKeysFull: max_idempotency_keys caller keys are remembered already
    ├── ClientClosed: the client (or its engine) was closed
    ├── StoreUnavailable: a shared store (Redis) did not answer within its timeout
    └── ResultError: a Result cannot give what was asked of it (``.result`` is the Result)
        ├── NoResponse: its body was read with no response there (pending, unknown, expired)
        │   └── RequestFailed: the request failed (state ``failed``): names the error kind
        └── HTTPStatusError: raise_for_status on a 4xx / 5xx response

A failed *remote* request is never raised by a submit or a wait: it is a `Result` with state
``failed``. Only reading a body that is not there (``.text``, ``.json()``) or asking for it
(``raise_for_status()``) raises.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PostkeyError(Exception):
    """Root of every exception postkey raises."""


class InvalidValue(PostkeyError, ValueError):
    """A cache value, TTL or setting is of the wrong type or out of range."""


class InvalidRequest(PostkeyError, ValueError):
    """The request was refused before a key was issued; nothing was sent."""


class InvalidMethod(InvalidRequest):
    """The HTTP method is not a token postkey sends."""


class InvalidURL(InvalidRequest):
    """The URL is malformed, too long or uses a scheme other than http / https."""


class InvalidHeader(InvalidRequest):
    """A header name or value is malformed, forbidden, or the header block is too large."""


class InvalidBody(InvalidRequest):
    """The body has an unsupported type or is larger than the configured cap."""


class InvalidTimeout(InvalidRequest):
    """The timeout is not a positive integer number of milliseconds within the maximum."""


class UnknownArgument(InvalidRequest, InvalidValue, TypeError):
    """A keyword argument that the call does not take, or a setting that does not exist (the
    message names the closest real one)."""


def unknown_argument(call: str, name: str, allowed: Iterable[str]) -> UnknownArgument:
    """The error for ``name``, which ``call`` does not take, naming the closest of ``allowed``."""
    choices = sorted(set(allowed) - {name})
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UnknownArgument(
        f"{call}: unknown argument {name!r}{hint}; it takes {', '.join(choices)}"
    )


class InvalidKey(PostkeyError, ValueError):
    """A caller-supplied key is empty, too long or has characters outside the key alphabet."""


class KeyConflict(PostkeyError, ValueError):
    """The key already names a different request, or a cache write would overwrite a request,
    or (a shared store) a name under postkey's prefix holds a value postkey did not write."""


class QueueFull(PostkeyError):
    """The submission queue (or the on_done callback backlog) is full; nothing was accepted and
    no key was issued."""


class IdempotencyKeysFull(QueueFull):
    """``max_idempotency_keys`` caller keys are remembered already; nothing was sent.

    Forgetting one early could let its request be sent twice, so the submit is refused instead:
    retry later (keys are forgotten as their time passes) or submit without ``key=``.
    """


class ClientClosed(PostkeyError):
    """The client was closed; it accepts no more submissions."""


class StoreUnavailable(PostkeyError):
    """The shared store (Redis) could not be reached or did not answer within
    ``store_timeout_ms`` (after one retry), what answered is not a Redis, or it refused a write
    (full, read-only); the message names the store and the cause."""


class ResultError(PostkeyError):
    """A `Result` cannot give what was asked of it."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        #: The `Result` in question.
        self.result = result


class NoResponse(ResultError):
    """The Result holds no response: the key is pending, running, unknown or expired."""


class RequestFailed(NoResponse):
    """The request ended without a response (state ``failed``); the message starts with the
    error kind: ``dns: could not resolve host api.example.com``."""


class HTTPStatusError(ResultError):
    """`Result.raise_for_status` found a 4xx or 5xx status (``.result`` has the response)."""
