"""postkey: send an HTTP request now, get its response later by key, from anywhere.

The module-level functions use a default `Client`, created on first use; `postkey.mychat` has
the MyChat Server scripting names.
"""

from __future__ import annotations

from ._api import (
    cache_clear,
    cache_count,
    cache_delete,
    cache_exists,
    cache_get,
    cache_set,
    cache_wait,
    cancel,
    close,
    default_client,
    exists,
    get,
    get_async,
    post_async,
    request_async,
    status,
    submit_many,
    wait,
    wait_many,
)
from ._async_client import AsyncClient
from ._client import Client
from ._errors import (
    ClientClosed,
    HTTPStatusError,
    IdempotencyKeysFull,
    InvalidBody,
    InvalidHeader,
    InvalidKey,
    InvalidMethod,
    InvalidRequest,
    InvalidTimeout,
    InvalidURL,
    InvalidValue,
    KeyConflict,
    NoResponse,
    PostkeyError,
    QueueFull,
    RequestFailed,
    ResultError,
    StoreUnavailable,
    UnknownArgument,
)
from ._policy import DestinationPolicy
from ._response_headers import Headers
from ._result import ErrorKind, Result, State, Timings
from ._settings import Settings

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "ClientClosed",
    "DestinationPolicy",
    "ErrorKind",
    "HTTPStatusError",
    "Headers",
    "IdempotencyKeysFull",
    "InvalidBody",
    "InvalidHeader",
    "InvalidKey",
    "InvalidMethod",
    "InvalidRequest",
    "InvalidTimeout",
    "InvalidURL",
    "InvalidValue",
    "KeyConflict",
    "NoResponse",
    "PostkeyError",
    "QueueFull",
    "RequestFailed",
    "Result",
    "ResultError",
    "Settings",
    "State",
    "StoreUnavailable",
    "Timings",
    "UnknownArgument",
    "__version__",
    "cache_clear",
    "cache_count",
    "cache_delete",
    "cache_exists",
    "cache_get",
    "cache_set",
    "cache_wait",
    "cancel",
    "close",
    "default_client",
    "exists",
    "get",
    "get_async",
    "post_async",
    "request_async",
    "status",
    "submit_many",
    "wait",
    "wait_many",
]
