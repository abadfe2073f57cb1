"""The host side of a sandbox reached over a socket: frames out, frames back.

Subprocess and subinterpreter sandboxes both run the same worker behind a Unix socketpair.
A request is one ``transport.write`` and one future, with the timeout as a deadline on the
runtime's clock (one timer for all of a factory's requests), so the warm path costs one
round trip and no task or timer creation. What differs between kinds (how a sandbox is
destroyed, how its death is described) are hooks.

The channel trusts nothing it reads: bytes that are not a frame, a frame while no request
is outstanding, or a reply naming another request (a handler that forked, or wrote to its
socket) break the sandbox: it is destroyed and the request in flight fails with
``Runtime.ExitError``, so no caller can ever receive another invocation's result.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from .._clock import Clock, Deadlines
from .._lambda import SYNC_PAYLOAD_LIMIT
from . import _protocol as _p
from . import _wire
from ._protocol import (
    InitReply,
    InitRequest,
    InvokeReply,
    InvokeRequest,
    SandboxDied,
    request_deadlines,
)

_PREFIX_SIZE = _wire.PREFIX.size
_PREFIX_START = _wire.PREFIX.pack(_wire.MAGIC, _wire.VERSION, 0, 0, 0)[:3]  # magic, version
_unpack_lengths = struct.Struct("!II").unpack_from
_parse_prefix = _wire.parse_prefix
_decode_header = _wire.decode_header
_decode_invoke_reply = _wire.decode_invoke_reply
_JSON_HEADER = _wire.JSON_HEADER
_INVOKE_REPLY = _wire.INVOKE_REPLY
_frame = _wire.frame
_NO_REPLY = object()
# What a reply may declare before the host buffers it: a result is at most Lambda's 6 MB
# (the sandbox refuses a larger one itself), a header a capped log and error. More is a
# sandbox breaking the protocol (its own frames on its socket), not a big answer.
REPLY_BODY_LIMIT = SYNC_PAYLOAD_LIMIT
REPLY_HEAD_LIMIT = 16 * 1024 * 1024


class Channel(asyncio.Protocol):
    """Frames in from one sandbox; at most one request outstanding.

    The waiter of an invoke (``expect`` is its request id) gets an :class:`InvokeReply`,
    that of any other request (``expect`` is ``None``) the ``(header, body)`` pair."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        #: The loop the transport runs on (kept: on 3.11 each ``get_running_loop()`` is a
        #: ``getpid`` system call, one per request on the warm path).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Any] | None = None
        #: The request id the outstanding request expects in its reply (``None``: any).
        self.expect: object = _NO_REPLY
        self.lost = False
        #: Why the channel broke (a protocol violation), else ``None``.
        self.broken: str | None = None
        self.on_broken: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        if not buf and data.startswith(_PREFIX_START) and len(data) >= _PREFIX_SIZE:
            # The usual case: one whole reply in one read, parsed without copying it around
            # (anything else, a bad prefix too, takes the general path below).
            head_len, body_len = _unpack_lengths(data, 4)
            encoding = data[3]
            head_end = _PREFIX_SIZE + head_len
            if len(data) == head_end + body_len and (encoding == _INVOKE_REPLY or encoding == _JSON_HEADER):
                self._frame(data[_PREFIX_SIZE:head_end], data[head_end:], encoding)
                return
        buf += data
        while len(buf) >= _PREFIX_SIZE and self.broken is None:
            try:
                head_len, body_len = _parse_prefix(buf)
            except _wire.FrameError as exc:
                self._break(f"the runtime wrote bytes that are not a reply ({exc})")
                return
            if body_len > REPLY_BODY_LIMIT or head_len > REPLY_HEAD_LIMIT:
                # Not buffered: a sandbox declaring a 1 GB reply would make the host hold it.
                self._break(f"the runtime wrote a reply larger than allowed ({head_len} + {body_len} bytes)")
                return
            end = _PREFIX_SIZE + head_len + body_len
            if len(buf) < end:
                return
            head_end = _PREFIX_SIZE + head_len
            head, body, encoding = buf[_PREFIX_SIZE:head_end], bytes(buf[head_end:end]), buf[3]
            del buf[:end]
            self._frame(head, body, encoding)

    def _frame(self, head: bytes | bytearray, body: bytes, encoding: int) -> None:
        """One whole frame: hand it to the request waiting for it, or break."""
        expect = self.expect
        try:
            if encoding == _INVOKE_REPLY and expect is not None:
                reply: Any = _decode_invoke_reply(head, body)
                answered = reply.request_id
            else:
                header = _decode_header(head, encoding)
                answered = header.get(_p.K_ID)
                reply = (header, body) if expect is None else InvokeReply.from_wire(header, body)
        except _wire.FrameError as exc:
            self._break(f"the runtime wrote bytes that are not a reply ({exc})")
            return
        waiter, self.waiter = self.waiter, None
        self.expect = _NO_REPLY
        if waiter is None or waiter.done():
            self._break("the runtime sent a reply while no request was outstanding")
            return
        if expect is not None and answered != expect:
            self.waiter = waiter
            self._break(f"the runtime answered request {answered!r} while {expect!r} was outstanding")
            return
        waiter.set_result(reply)

    def _break(self, reason: str) -> None:
        self.broken = reason
        self.buffer.clear()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(SandboxDied(f"Runtime exited with error: {reason}"))
        if self.on_broken is not None:
            self.on_broken()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("sandbox closed its socket"))


class ChannelSandbox:
    """A sandbox behind a :class:`Channel`; at most one request at a time."""

    kind = "channel"

    def __init__(
        self, sandbox_id: str, channel: Channel, clock: Clock, deadlines: Deadlines | None = None
    ) -> None:
        self.id = sandbox_id
        self._channel = channel
        self._clock = clock
        #: The factory's, shared by its sandboxes (one timer for all their requests).
        self._deadlines = deadlines if deadlines is not None else request_deadlines(clock)
        self._dead = False
        channel.on_broken = self.kill

    @property
    def alive(self) -> bool:
        channel = self._channel
        return not self._dead and not channel.lost and channel.broken is None

    @property
    def pid(self) -> int | None:
        return None

    async def init(self, request: InitRequest, timeout: float | None = None) -> InitReply:
        header, _ = await self._request(_wire.dumps(request.to_wire()).encode(), b"", timeout, None)
        return InitReply.from_wire(header)

    async def invoke(self, request: InvokeRequest, timeout: float | None = None) -> InvokeReply:
        # _request's body, inline: one coroutine less on the warm path.
        fut, deadline = self._send(request.header_bytes(), request.body, timeout, request.request_id)
        try:
            reply: InvokeReply = await fut
        except BaseException as exc:
            await self._failed(exc)
            raise
        finally:
            if deadline is not None:
                Deadlines.discard(deadline)
        return reply

    async def _request(
        self, head: bytes, body: bytes, timeout: float | None, expect: str | None
    ) -> tuple[dict[str, Any], bytes]:
        fut, deadline = self._send(head, body, timeout, expect)
        try:
            reply: tuple[dict[str, Any], bytes] = await fut
        except BaseException as exc:
            await self._failed(exc)
            raise
        finally:
            if deadline is not None:
                Deadlines.discard(deadline)
        return reply

    def _send(
        self, head: bytes, body: bytes, timeout: float | None, expect: str | None
    ) -> tuple[asyncio.Future[Any], list[Any] | None]:
        """Write one request; its reply comes to the returned future (``expect``: the
        request id the reply must name, ``None`` for a request without one)."""
        channel = self._channel
        transport = channel.transport
        if not self.alive or transport is None or channel.loop is None:
            raise SandboxDied("Runtime exited without providing a reason")
        fut: asyncio.Future[Any] = channel.loop.create_future()
        channel.waiter = fut
        channel.expect = expect
        deadline = None if timeout is None else self._deadlines.add(fut, timeout)
        transport.write(_frame(head, body))
        return fut, deadline

    async def _failed(self, exc: BaseException) -> None:
        """A request failed with ``exc`` (re-raised by the caller, unless this raises)."""
        if isinstance(exc, ConnectionResetError):
            self._dead = True
            self._destroy()  # the process may be gone, not what it started
            raise await self._death() from None
        # Timed out, died, broke the protocol, or cancelled mid-request: its state is
        # unknown, so it cannot be reused.
        self.kill()

    def kill(self) -> None:
        """Destroy now; a request in flight fails with :class:`SandboxDied`."""
        if self._dead:
            return
        self._dead = True
        channel = self._channel
        waiter, channel.waiter = channel.waiter, None
        if waiter is not None and not waiter.done():
            reason = channel.broken or "signal: killed"
            waiter.set_exception(SandboxDied(f"Runtime exited with error: {reason}"))
        if channel.transport is not None:
            channel.transport.abort()
        self._destroy()

    async def close(self) -> None:
        """Retire: EOF on the socket, the worker returns and the sandbox ends."""
        if self._dead:
            return
        self._dead = True
        if self._channel.transport is not None:
            self._channel.transport.close()
        self._retired()

    # -- what each kind does ----------------------------------------------------------

    async def output_so_far(self, request_id: str) -> str:
        """What invocation ``request_id`` printed before it ended without a reply."""
        return ""

    async def _death(self) -> SandboxDied:
        """What a request fails with when the sandbox closed its socket mid-request."""
        return SandboxDied(await self._exit_reason())

    async def _exit_reason(self) -> str:
        """How the sandbox ended, in Lambda's words (it closed its socket mid-request)."""
        raise NotImplementedError

    def _destroy(self) -> None:
        """After ``kill``: make sure it is gone, with everything it started."""

    def _retired(self) -> None:
        """After ``close``."""
