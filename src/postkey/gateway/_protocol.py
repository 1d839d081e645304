"""uvicorn's httptools protocol, guarded: a deadline on every request head (including connections
that never send a byte) and every body, a cap on head bytes, refusals in the gateway's JSON error
format that never take an earlier pipelined answer's place; and `OneSendPerTurn`, which sends an
answer's head and body together."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ._body import SERVER_BODY_DEADLINE

#: Default seconds a client has to send a request's line and headers.
HEADER_TIMEOUT_S = 10.0
#: Default bytes a request's line and headers may take.
MAX_HEADER_BYTES = 64 * 1024
#: Bytes read and held, unparsed, behind a request that waits for an earlier one's answer; past
#: this, reading stops until that answer is sent (and a hang-up is seen only then).
MAX_HELD_BYTES = 64 * 1024


def _refusal(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


#: A response part at least this large is written at once rather than held for the end of the
#: loop turn (joining it to a head would copy it).
COALESCE_MAX_BYTES = 64 * 1024


class OneSendPerTurn:
    """A transport that holds small writes until the end of the current event-loop turn and then
    sends them together, in order.

    uvicorn writes a response's head and its body separately: two ``send()`` calls, and on
    loopback each runs the peer's TCP receive path and wakes it. Sent together, a small answer
    costs one. Everything else (close, pause_reading, get_extra_info, ...) is the real
    transport's; what is held is sent before a close, and dropped if the connection is lost.
    """

    __slots__ = ("_held", "_held_bytes", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        held = self._held
        if len(data) >= COALESCE_MAX_BYTES:
            self.flush()
            self._transport.write(data)
            return
        if not held:
            self._loop.call_soon(self.flush)
        held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= COALESCE_MAX_BYTES:
            self.flush()

    def flush(self) -> None:
        """Send what is held now (nothing if the connection is closing)."""
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        self._held_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def writelines(self, list_of_data: list[bytes]) -> None:
        for data in list_of_data:
            self.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._held_bytes = 0
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._held_bytes + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size cap on each request head, and a
    deadline on each request body (set by `guarded_protocol`): connections that send nothing are
    bounded too.

    The body deadline runs here, in the protocol, rather than in the app around its reads: it
    costs nothing for a body that arrives with its head (the common case: no timer at all), while
    the app's own deadline (asyncio.timeout) took ~13% of a submit. The app learns of it from the
    request's scope (`SERVER_BODY_DEADLINE`) and then sets none of its own.
    """

    header_timeout_s = HEADER_TIMEOUT_S
    max_header_bytes = MAX_HEADER_BYTES
    body_timeout_s: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        # From a request's first byte (or the connection's start) until its head is complete.
        self._head_pending = True
        self._head_bytes = 0
        self._reading_body = False
        self._body_deadline: asyncio.TimerHandle | None = None
        # A refusal of a new request's head kept until the answers before it are complete.
        self._refusal_after: bytes | None = None
        self._begun_here = 0  # requests begun in the current data_received call
        self._idle_since: float | None = None  # since the last answer, if nothing came since
        # The request whose answer is being made (uvicorn's `cycle` is the last one parsed).
        self._serving: Any = None
        # Bytes read while a pipelined request waits (or a refusal does), parsed once it runs.
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._replay_due = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # Every write goes through OneSendPerTurn, the protocol's own (refusals) as well as the
        # requests' answers, so that they stay in order.
        self._one_send = OneSendPerTurn(transport, self.loop)
        one_send: Any = self._one_send
        super().connection_made(one_send)
        self._arm()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _disarm_body(self) -> None:
        self._reading_body = False
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _refuse(
        self, status: int, reason: str, code: str, message: str, *, body: bool = False
    ) -> None:
        """Answer ``status`` and close; only close if that answer could be mistaken for another
        one: a second answer to a request, or one sent while an earlier request's answer (a
        pipelined long-poll, say) is still to come."""
        in_body = self._reading_body  # a parse error inside the body of the request being read
        self._disarm()
        self._disarm_body()
        self._head_pending = False  # refused: no head deadline any more
        if self.transport.is_closing():
            return
        cycle = self.cycle
        refusal = _refusal(status, reason, code, message)
        body = body or in_body
        if not body and cycle is not None and not cycle.response_complete:
            # A new request's head, while the answer to the one before it is still to come (a
            # pipelined long-poll): that answer goes first, then this refusal. What comes
            # meanwhile is held, never parsed (`data_received`).
            self._refusal_after = refusal
            return
        if not body or (cycle is not None and not cycle.response_started and not self.pipeline):
            self.transport.write(refusal)
        self.transport.close()

    def _too_slow(self) -> None:
        self._deadline = None
        message = f"the request head did not arrive within {self.header_timeout_s:g} s"
        self._refuse(408, "Request Timeout", "request_timeout", message)

    def _body_too_slow(self) -> None:
        self._body_deadline = None
        message = f"the request body did not arrive within {self.body_timeout_s:g} s"
        self._refuse(408, "Request Timeout", "request_timeout", message, body=True)

    def _arm_body(self) -> None:
        # Only for the request being served: one queued behind a pipelined answer is not read
        # (uvicorn pauses reading), so its time starts when it runs (see on_response_complete).
        if (
            self._reading_body
            and self._body_deadline is None
            and self.body_timeout_s
            and not self.pipeline
        ):
            self._body_deadline = self.loop.call_later(self.body_timeout_s, self._body_too_slow)

    def data_received(self, data: bytes) -> None:
        if self.pipeline or self._held or self._refusal_after is not None:
            self._hold(data)
            return
        reading_head = self._head_pending
        # Idle between requests: these bytes start the next head (after any blank lines).
        idle = not reading_head and (self.cycle is None or self.cycle.response_complete)
        self._begun_here = 0
        super().data_received(data)
        if not self._head_pending:
            if idle and not self._begun_here and not self._refused():
                # Blank lines and nothing else: uvicorn stopped its keep-alive timer on seeing
                # bytes, so the head deadline bounds the wait for the rest instead.
                self._head_pending = True
                self._head_bytes = len(data)
                self._arm()
                return
            self._arm_body()  # if the head came and the body is still on its way
            return
        # The head is still incomplete: its deadline runs from now if it began in this call (a
        # head that comes whole, the common case, never costs a timer).
        self._arm()
        # Its bytes so far: all of these if it began before this call, or began at its start
        # (a kept-alive connection's next request). One that began behind a complete request
        # in the same read is counted from the next read on: that read holds both.
        if reading_head or (idle and self._begun_here == 1):
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                message = f"the request head is over {self.max_header_bytes} bytes"
                self._refuse(431, "Request Header Fields Too Large", "headers_too_large", message)

    def _hold(self, data: bytes) -> None:
        # uvicorn stops reading while a pipelined request waits for the answers before it, and
        # a socket that is not read never tells of its peer's hang-up: a long-poll whose client
        # pipelined a request and left would keep its place until its wait ended. So reading
        # goes on, into a bounded buffer parsed once the waiting request runs (`_replay`).
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= MAX_HELD_BYTES:
            self.flow.pause_reading()

    def _replay(self) -> None:
        self._replay_due = False
        if self._refusal_after is not None or self.pipeline or not self._held:
            return
        data = b"".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        if self.transport.is_closing() or self.parser is None:
            return
        self.flow.resume_reading()  # if the buffer filled
        self.data_received(data)

    def _refused(self) -> bool:
        return self._refusal_after is not None or self.transport.is_closing()

    def eof_received(self) -> None:
        # The client will send no more (a half-close right behind its request, as `nc -N` and
        # scripts do); asyncio closes the transport as this returns. An answer written in this
        # loop turn is still held by OneSendPerTurn: it goes out first.
        self._one_send.flush()
        super().eof_received()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun_here += 1
        if not self._head_pending:  # after blank lines, their bytes count already
            self._head_bytes = 0
        self._head_pending = True

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._disarm()
        self._reading_body = True  # until on_message_complete, in this call or a later one
        if self.body_timeout_s:
            extension: dict[object, object] = {"seconds": self.body_timeout_s}
            self.scope.setdefault("extensions", {})[SERVER_BODY_DEADLINE] = extension
        super().on_headers_complete()
        if self.pipeline and self.pipeline[0][0] is self.cycle:
            # Queued behind an answer still to come: uvicorn stopped reading; reading goes on
            # into `_hold` instead, so that a hang-up is seen.
            self.flow.resume_reading()
        else:
            self._serving = self.cycle

    def on_message_complete(self) -> None:
        self._disarm_body()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        refusal = self._refusal_after
        if refusal is not None and not self.pipeline:  # every earlier request is answered
            self._refusal_after = None
            if not self.transport.is_closing():
                self.transport.write(refusal)
                self.transport.close()
            return
        # uvicorn's own, but for its keep-alive timer: one per connection, looked at when it
        # fires, instead of one made and cancelled per request.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._serving = cycle
            self._start_asgi_task(cycle, app)  # the next pipelined request
            if not self.pipeline and self._held and not self._replay_due:
                # What came meanwhile is parsed as if read now (not inside this answer's send).
                self._replay_due = True
                self.loop.call_soon(self._replay)
        else:
            self._idle_since = self.loop.time()
            if self.timeout_keep_alive_task is None:
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self._keep_alive_due
                )
        self._arm_body()

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn calls this on every read: the connection is busy again. The timer stays.
        self._idle_since = None

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        since = self._idle_since
        if since is None:
            return  # busy: armed again when the answer in progress is complete
        left = since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        self._held.clear()
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        serving = self._serving
        super().connection_lost(exc)
        # uvicorn tells only the last request parsed; the one being served, if another, is the
        # one waiting on its client (a long-poll with a request pipelined behind it).
        if serving is not None and serving is not self.cycle and not serving.response_complete:
            serving.disconnected = True
            serving.message_event.set()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "Bad Request", "bad_request", msg)


def guarded_protocol(
    header_timeout_s: float, max_header_bytes: int, body_timeout_s: float | None = None
) -> type[asyncio.Protocol]:
    """`GuardedHttpTools` with these bounds (``body_timeout_s`` None: the app bounds bodies)."""
    bounds = {
        "header_timeout_s": header_timeout_s,
        "max_header_bytes": max_header_bytes,
        "body_timeout_s": body_timeout_s,
    }
    return type("GuardedHttpTools", (GuardedHttpTools,), bounds)
