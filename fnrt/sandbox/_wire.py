"""Frames between the host and a sandbox: ``!II`` lengths, a header, a raw body.

The header is a small dict in ``marshal`` format: both ends are the same interpreter (the
template is started with the host's ``sys.executable``) and trust each other, and marshal
costs a fifth of JSON on the hot path. The body is the event or result as JSON bytes,
passed through untouched so a 6 MB payload is never escaped inside another document.
"""

from __future__ import annotations

import marshal
import socket
import struct
from typing import Any

PREFIX = struct.Struct("!II")
_dumps = marshal.dumps
decode_header = marshal.loads


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = _dumps(header)
    return PREFIX.pack(len(head), len(body)) + head + body


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def read_frame(sock: socket.socket) -> tuple[dict[str, Any], bytes] | None:
    """Blocking read of one frame (the sandbox side); ``None`` at end of stream."""
    prefix = _recv_exactly(sock, PREFIX.size)
    if prefix is None:
        return None
    head_len, body_len = PREFIX.unpack(prefix)
    data = _recv_exactly(sock, head_len + body_len)
    if data is None:
        return None
    return decode_header(data[:head_len]), data[head_len:]


def write_frame(sock: socket.socket, header: dict[str, Any], body: bytes = b"") -> None:
    sock.sendall(encode(header, body))
