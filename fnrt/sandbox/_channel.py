"""The host side of a sandbox reached over a socket: frames out, frames back.

Subprocess and subinterpreter sandboxes both run the same worker behind a Unix socketpair.
A request is one ``transport.write`` and one future, with the timeout as a timer on the
runtime's clock, so the warm path costs one round trip and no task creation. What differs
between kinds (how a sandbox is destroyed, how its death is described) are two hooks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .._clock import Clock
from . import _wire
from ._base import SandboxDied, SandboxTimeout, arm_deadline

_PREFIX = _wire.PREFIX
_decode_header = _wire.decode_header


class Channel(asyncio.Protocol):
    """Frames in from one sandbox; at most one request outstanding."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[dict[str, Any], bytes]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while len(buf) >= 8:
            head_len, body_len = _PREFIX.unpack_from(buf)
            end = 8 + head_len + body_len
            if len(buf) < end:
                return
            header = _decode_header(buf[8 : 8 + head_len])
            body = bytes(buf[8 + head_len : end])
            del buf[:end]
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result((header, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("sandbox closed its socket"))


class ChannelSandbox:
    """A sandbox behind a :class:`Channel`; at most one request at a time."""

    kind = "channel"

    def __init__(self, sandbox_id: str, channel: Channel, clock: Clock) -> None:
        self.id = sandbox_id
        self._channel = channel
        self._clock = clock
        self._dead = False

    @property
    def alive(self) -> bool:
        return not self._dead and not self._channel.lost

    @property
    def pid(self) -> int | None:
        return None

    async def request(
        self, header: dict[str, Any], body: bytes = b"", timeout: float | None = None
    ) -> tuple[dict[str, Any], bytes]:
        channel = self._channel
        if not self.alive or channel.transport is None:
            raise SandboxDied("Runtime exited without providing a reason")
        fut: asyncio.Future[tuple[dict[str, Any], bytes]] = asyncio.get_running_loop().create_future()
        channel.waiter = fut
        timer = arm_deadline(fut, timeout, self._clock)
        channel.transport.write(_wire.encode(header, body))
        try:
            return await fut
        except (SandboxTimeout, SandboxDied):
            self.kill()
            raise
        except ConnectionResetError:
            self._dead = True
            raise SandboxDied(await self._exit_reason()) from None
        except BaseException:
            # Cancelled mid-request: the sandbox's state is unknown, so it cannot be reused.
            self.kill()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def kill(self) -> None:
        """Destroy now; a request in flight fails with :class:`SandboxDied`."""
        if self._dead:
            return
        self._dead = True
        waiter, self._channel.waiter = self._channel.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(SandboxDied("Runtime exited with error: signal: killed"))
        if self._channel.transport is not None:
            self._channel.transport.abort()
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

    async def _exit_reason(self) -> str:
        """How the sandbox ended, in Lambda's words (it closed its socket mid-request)."""
        raise NotImplementedError

    def _destroy(self) -> None:
        """After ``kill``: make sure it is gone."""

    def _retired(self) -> None:
        """After ``close``."""
