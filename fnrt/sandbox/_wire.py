"""Frames between the host and a sandbox. Portable: any language can speak it.

One frame, all integers big-endian::

    offset  size  field
    0       2     magic  b"FN"
    2       1     version (1)
    3       1     header encoding: 1 = UTF-8 JSON object, 2 = invoke reply (below)
    4       4     header length H (unsigned)
    8       4     body length B (unsigned)
    12      H     header
    12+H    B     body: raw bytes (the event or the result, JSON), passed through untouched

Every request, and every reply but one, has a JSON header (op names and keys:
``_protocol``). The reply to ``invoke``, the one on the warm path, may instead use the
fixed layout of encoding 2 (a sandbox may always answer with JSON instead)::

    offset  size  field
    0       1     ok (0/1)
    1       1     fatal (0/1)
    2       8     duration_ms (IEEE 754 double)
    10      4     max_memory_mb (unsigned)
    14      2     length I of the request id
    16      4     length L of the log
    20      4     length E of the error
    24      I     the request id this answers (UTF-8)
    24+I    L     the captured log (UTF-8)
    24+I+L  E     the error, a JSON object in Lambda's shape, or nothing

The body is never embedded in the header, so a 6 MB payload is not escaped inside another
document. The magic and the limits below let a reader tell a frame from stray bytes at
once (a handler writing to its socket): the host destroys a sandbox that sends anything
else. JSON and fixed layouts, not ``marshal``: host and sandbox need not be the same
interpreter build, so a remote or foreign-language sandbox can answer.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from .. import _json
from ._protocol import K_DURATION, K_ERROR, K_FATAL, K_ID, K_LOG, K_MEMORY, K_OK, InvokeReply

MAGIC = b"FN"
VERSION = 1
JSON_HEADER = 1
INVOKE_REPLY = 2
_REPLY = struct.Struct("!BBdIHII")
_unpack_reply = _REPLY.unpack_from
_REPLY_SIZE = _REPLY.size
PREFIX = struct.Struct("!2sBBII")
_HEAD = PREFIX.pack(MAGIC, VERSION, JSON_HEADER, 0, 0)[:4]  # the fixed first four bytes
MAX_HEADER = 64 * 1024 * 1024  # a header carries at most a capped log and an error
MAX_BODY = 1024 * 1024 * 1024

_pack_lengths = struct.Struct("!II").pack
# The prefix and the fixed fields of an invoke reply, packed in one go (the sandbox's warm path).
_pack_reply_frame = struct.Struct("!2sBBII" + _REPLY.format.lstrip("!")).pack


def _not_serializable(value: object) -> None:
    raise TypeError(f"a frame header cannot carry {type(value).__name__}")


# Headers are small and built by fnrt: json's C encoder built once, and the decoding of
# ``fnrt._json`` (msgspec when installed, else json's C scanner), json's results exactly.
dumps = _json.encoder(default=_not_serializable)
loads = _json.loads


class FrameError(ValueError):
    """Bytes that are not a frame of this protocol."""


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    return frame(dumps(header).encode(), body)


def frame(head: bytes, body: bytes = b"") -> bytes:
    """A frame from an already encoded header (a UTF-8 JSON object)."""
    return b"".join((_HEAD, _pack_lengths(len(head), len(body)), head, body))


def parse_prefix(buf: bytes | bytearray | memoryview) -> tuple[int, int]:
    """The header and body lengths of the frame at the start of ``buf`` (12 bytes)."""
    magic, version, encoding, head_len, body_len = PREFIX.unpack_from(buf)
    if magic != MAGIC or version != VERSION or encoding not in (JSON_HEADER, INVOKE_REPLY):
        raise FrameError(f"not a frame: prefix {bytes(buf[:4])!r}")
    if head_len > MAX_HEADER or body_len > MAX_BODY:
        raise FrameError(f"frame too large: header {head_len} bytes, body {body_len} bytes")
    return head_len, body_len


def decode_header(data: bytes | bytearray | memoryview, encoding: int = JSON_HEADER) -> dict[str, Any]:
    if encoding == INVOKE_REPLY:
        return _decode_invoke_reply(data)
    try:
        header = loads(str(data, "utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FrameError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("frame header is not a JSON object")
    return header


def encode_invoke_reply(reply: dict[str, Any], body: bytes) -> bytes:
    """An invoke reply (the keys of ``_protocol``) in the fixed layout of encoding 2."""
    return pack_invoke_reply(
        reply[K_ID],
        bool(reply.get(K_OK)),
        bool(reply.get(K_FATAL)),
        float(reply.get(K_DURATION) or 0.0),
        int(reply.get(K_MEMORY) or 0),
        str(reply.get(K_LOG) or ""),
        reply.get(K_ERROR),
        body,
    )


def pack_invoke_reply(
    request_id: str,
    ok: bool,
    fatal: bool,
    duration_ms: float,
    max_memory_mb: int,
    log: str,
    error: dict[str, Any] | None,
    body: bytes,
) -> bytes:
    """An invoke reply frame (encoding 2) from its fields."""
    rid = str(request_id).encode("utf-8", "replace")
    log_bytes = log.encode("utf-8", "replace")
    err = dumps(error).encode() if error else b""
    prefix_and_fields = _pack_reply_frame(
        MAGIC,
        VERSION,
        INVOKE_REPLY,
        _REPLY_SIZE + len(rid) + len(log_bytes) + len(err),
        len(body),
        ok,
        fatal,
        duration_ms,
        max_memory_mb,
        len(rid),
        len(log_bytes),
        len(err),
    )
    return b"".join((prefix_and_fields, rid, log_bytes, err, body))


def decode_invoke_reply(head: bytes | bytearray | memoryview, body: bytes) -> InvokeReply:
    """An invoke reply frame (encoding 2) straight into an :class:`InvokeReply`."""
    try:
        ok, fatal, duration, memory, id_len, log_len, err_len = _unpack_reply(head)
    except struct.error:
        raise FrameError("invoke reply header too short") from None
    start = _REPLY_SIZE
    log_at = start + id_len
    err_at = log_at + log_len
    if err_at + err_len != len(head):
        raise FrameError("invoke reply header lengths do not add up")
    try:
        rid = str(head[start:log_at], "utf-8")
        log = str(head[log_at:err_at], "utf-8") if log_len else ""
    except UnicodeDecodeError as exc:
        raise FrameError(f"invoke reply is not UTF-8: {exc}") from None
    error = decode_header(head[err_at:]) if err_len else None
    return InvokeReply(rid, bool(ok), duration, memory, log, bool(fatal), error, body)


def _decode_invoke_reply(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """An invoke reply frame's header (encoding 2) as the keys of ``_protocol``."""
    reply = decode_invoke_reply(data, b"")
    header: dict[str, Any] = {
        K_OK: reply.ok,
        K_ID: reply.request_id,
        K_DURATION: reply.duration_ms,
        K_MEMORY: reply.max_memory_mb,
        K_LOG: reply.log,
    }
    if reply.fatal:
        header[K_FATAL] = True
    if reply.error is not None:
        header[K_ERROR] = reply.error
    return header


class FrameReader:
    """Blocking reads of whole frames from a socket (the sandbox side), into one buffer
    kept between frames: ``recv_into`` its free end, no chunk objects and no concatenation.
    A request usually arrives in one ``recv_into``, prefix and all. A frame bigger than the
    buffer gets a buffer of its own size, dropped once it has been read (a 6 MB event
    does not keep 6 MB of the sandbox's memory)."""

    __slots__ = ("_buf", "_end", "_sock", "_start", "_view")

    SIZE = 65536

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray(self.SIZE)
        self._view = memoryview(self._buf)
        self._start = 0  # the unread bytes are _buf[_start:_end]
        self._end = 0

    def _fill(self, n: int) -> bool:
        """At least ``n`` unread bytes in the buffer; ``False`` at end of stream."""
        start, end = self._start, self._end
        if start + n > len(self._buf):  # no room after the unread bytes: move them, or grow
            pending = end - start
            if n > len(self._buf):
                self._replace(bytearray(n), pending)
            else:
                self._buf[:pending] = self._view[start:end]
            self._start, self._end = start, end = 0, pending
        recv_into, view = self._sock.recv_into, self._view
        while end - start < n:
            got = recv_into(view[end:])
            if not got:
                self._end = end
                return False
            end += got
        self._end = end
        return True

    def _replace(self, buf: bytearray, pending: int) -> None:
        buf[:pending] = self._view[self._start : self._start + pending]
        self._view.release()
        self._buf = buf
        self._view = memoryview(buf)

    def read(self) -> tuple[dict[str, Any], bytes] | None:
        """The next frame; ``None`` at end of stream. Raises :class:`FrameError` on bytes
        that are not a frame."""
        size = PREFIX.size
        if self._end - self._start < size and not self._fill(size):
            return None
        start = self._start
        view = self._view
        head_len, body_len = parse_prefix(view[start : start + size])
        need = size + head_len + body_len
        if self._end - start < need:
            if not self._fill(need):
                return None
            start = self._start
            view = self._view
        head_at = start + size
        body_at = head_at + head_len
        header = decode_header(view[head_at:body_at], view[start + 3])
        body = bytes(view[body_at : start + need])
        start += need
        if start == self._end:
            self._start = self._end = 0
            if len(self._buf) > self.SIZE:  # a big frame's buffer: not kept
                self._replace(bytearray(self.SIZE), 0)
        else:
            self._start = start
        return header, body


def read_frame(sock: socket.socket) -> tuple[dict[str, Any], bytes] | None:
    """Blocking read of one frame, unbuffered; ``None`` at end of stream."""
    prefix = _recv_exactly(sock, PREFIX.size)
    if prefix is None:
        return None
    head_len, body_len = parse_prefix(prefix)
    data = _recv_exactly(sock, head_len + body_len)
    if data is None:
        return None
    return decode_header(data[:head_len], prefix[3]), data[head_len:]


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(min(n - len(chunks), 1 << 20))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def write_frame(sock: socket.socket, header: dict[str, Any], body: bytes = b"") -> None:
    sock.sendall(encode(header, body))
