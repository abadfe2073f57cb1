"""What an invocation has printed so far, where the host can read it after the sandbox is gone.

A sandbox sends its invocation's output with the reply. A handler that times out, or a
sandbox that dies (``os._exit``, a segfault, the kernel's out-of-memory kill) sends no
reply, and Lambda still shows what it printed before. So a subprocess sandbox also writes
its output, as it is written, into a small file beside its private ``TMPDIR`` that it maps
into memory: a copy into a ring of the last ``capacity`` bytes, no system call per write. The
host reads the file when an invocation ends without a reply, before the directory goes.

Layout: ``total`` (u64, bytes written this invocation), the request id (48 bytes, NUL
padded), then the ring. An invocation's first output writes its id and a total of 0, so
the host never takes an earlier invocation's output for this one's.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import stat
import struct

__all__ = ["INIT_OUTPUT", "SUFFIX", "OutputMirror", "read_file", "read_output", "remove_with_output"]

#: The file is its TMPDIR's path with this added: beside the directory, not in it (a
#: sandbox's /tmp starts empty, as Lambda's does, and a handler that cleans it keeps it).
SUFFIX = ".output"
INIT_OUTPUT = "init"  # the id the init phase's output is written under
_HEADER = 64
_ID = slice(8, 56)
_TOTAL = struct.Struct("<Q")
#: The most the host reads of the file: the header and the largest ring a sandbox makes.
READ_LIMIT = _HEADER + (1 << 20)


class OutputMirror:
    """The sandbox's side: ``start`` an invocation, then ``write`` its text as it comes."""

    __slots__ = ("capacity", "map", "request_id", "total")

    def __init__(self, path: str, capacity: int) -> None:
        capacity = min(capacity, READ_LIMIT - _HEADER)  # what the host reads
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, _HEADER + capacity)
            self.map = mmap.mmap(fd, _HEADER + capacity)
        finally:
            os.close(fd)
        self.capacity = capacity
        self.total = 0
        self.request_id: str | None = None

    def start(self, request_id: str) -> None:
        """A new invocation. Nothing is written until it prints (the warm path of one that
        prints nothing stays as it was): until then the file names the one before."""
        self.request_id = request_id

    def write(self, text: str) -> None:
        if self.request_id is not None:  # its first output: the file is this invocation's now
            self.total = 0
            _TOTAL.pack_into(self.map, 0, 0)
            self.map[_ID] = self.request_id.encode("ascii", "replace")[:48].ljust(48, b"\0")
            self.request_id = None
        data = text.encode("utf-8", "replace")
        n, cap = len(data), self.capacity
        if n > cap:  # only the last capacity bytes can be kept
            self.total += n - cap
            data, n = data[n - cap :], cap
        pos = self.total % cap
        first = min(n, cap - pos)
        self.map[_HEADER + pos : _HEADER + pos + first] = data[:first]
        if first < n:
            self.map[_HEADER : _HEADER + n - first] = data[first:]
        self.total += n
        _TOTAL.pack_into(self.map, 0, self.total)


def read_file(path: str, limit: int = READ_LIMIT) -> bytes:
    """The file's first ``limit`` bytes (run it in a thread); ``b""`` when it is not there or
    not a regular file. The sandbox owns the directory: the name may be a FIFO (an open that
    would wait for ever), a symlink to ``/dev/zero`` or a file grown to gigabytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.read(fd, limit)
    except OSError:
        return b""
    finally:
        os.close(fd)


def read_output(raw: bytes, request_id: str) -> str:
    """What the invocation ``request_id`` wrote, from the file's bytes: the last
    ``capacity`` bytes of it; ``""`` when the file belongs to another invocation."""
    if len(raw) <= _HEADER or raw[_ID].rstrip(b"\0") != request_id.encode("ascii", "replace")[:48]:
        return ""
    (total,) = _TOTAL.unpack_from(raw, 0)
    ring = raw[_HEADER:]  # the ring the sandbox made (the file may have been grown since)
    cap = len(ring)
    if total <= cap:
        data = ring[:total]
    else:
        pos = total % cap
        data = ring[pos:] + ring[:pos]
    text = data.decode("utf-8", "replace")
    if total > cap:
        return f"[... {total - cap} bytes truncated]\n{text.lstrip(chr(0xFFFD))}"
    return text


def remove_with_output(tmp: str) -> None:
    """Remove a sandbox's TMPDIR ``tmp``, and its output file beside it."""
    shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.unlink(tmp + SUFFIX)
