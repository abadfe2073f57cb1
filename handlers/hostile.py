"""Handlers that try to escape their sandbox, for the isolation and contract tests.

Imports only what the template has loaded already, so it also works for a sandbox that runs
as another user (who may not be able to read the Python installation).
"""

from __future__ import annotations

import json
import os
import stat
import struct
import sys
import tempfile
import threading
import time
from typing import Any


def _socket_fd() -> int:
    """The sandbox's socket to the host (the only socket a fresh sandbox has)."""
    for fd in range(3, 256):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                return fd
        except OSError:
            continue
    raise RuntimeError("no socket")


def environment(event: Any, context: Any) -> dict[str, Any]:
    tmp = tempfile.gettempdir()
    at_start = sorted(os.listdir(tmp))
    probe = os.path.join(tmp, "probe")
    with open(probe, "w") as f:
        f.write("x")
    return {
        "environ": dict(os.environ),
        "tempdir": tmp,
        "tmp_at_start": at_start,
        "tmp_writable": os.path.exists(probe),
        "utc_offset": time.strftime("%z", time.localtime()),
        "uid": os.getuid(),
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
    }


def read_file(event: Any, context: Any) -> str:
    with open(event["path"]) as f:
        return f.read()


def start_child(event: Any, context: Any) -> int:
    """Start a long-running process and leave it running; optionally overrun the timeout."""
    import subprocess

    escape = event.get("escape")  # leave the sandbox's process group, as a daemon would
    if escape == "setsid":
        child = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    elif escape == "setpgid":
        child = subprocess.Popen(["sleep", "1000"], process_group=0)
    else:
        child = subprocess.Popen(["sleep", "1000"])
    if event.get("then_sleep"):
        if event.get("pid_file"):
            with open(event["pid_file"], "w") as f:
                f.write(str(child.pid))
        time.sleep(event["then_sleep"])
    return child.pid


def garbage(event: Any, context: Any) -> str:
    os.write(_socket_fd(), b"\x00garbage that is not a frame\n" * 4)
    time.sleep(event.get("sleep", 0))
    return "garbage sent"


def huge_frame(event: Any, context: Any) -> str:
    """Declare a 1 GB reply on the socket and stream it from one small buffer: a host that
    buffered what a frame declares would hold it all."""
    header = json.dumps({"ok": True, "id": context.aws_request_id}).encode()
    fd = _socket_fd()
    os.write(fd, b"FN\x01\x01" + struct.pack("!II", len(header), 1024**3) + header)
    chunk = b"x" * (1024 * 1024)
    try:
        for _ in range(event.get("mb", 64)):
            os.write(fd, chunk)
    except OSError:  # the host hung up on us
        pass
    time.sleep(event.get("sleep", 5))
    return "not reached"


def _forged_frame(request_id: str) -> bytes:
    header = json.dumps({"ok": True, "id": request_id, "dur": 1.0, "mem": 1, "log": ""}).encode()
    body = b'"forged"'
    return b"FN\x01\x01" + struct.pack("!II", len(header), len(body)) + header + body


def fork_and_answer_later(event: Any, context: Any) -> str:
    """Fork; the child answers this request again after ``delay`` seconds."""
    if event.get("fork"):
        fd = _socket_fd()
        rid = context.aws_request_id
        pid = os.fork()
        if pid == 0:
            try:
                time.sleep(event.get("delay", 0.2))
                if event.get("flag"):  # before: the host kills this child once it reads the frame
                    with open(event["flag"], "w") as f:
                        f.write("sending")
                os.write(fd, _forged_frame(rid))
            finally:
                os._exit(0)
    time.sleep(event.get("sleep", 0))
    return "genuine"


def shout(event: Any, context: Any) -> int:
    line = "x" * 99 + "\n"
    for _ in range(event["lines"]):
        sys.stdout.write(line)
    print("the last line")
    return event["lines"]


def chatty_thread(event: Any, context: Any) -> str:
    """Leave a thread running that keeps printing after the invocation ends."""
    flag = event["flag"]

    def talk() -> None:
        for n in range(50):
            print("LEAKED-FROM-THREAD", n)
            time.sleep(0.01)
        with open(flag, "w") as f:
            f.write("done")

    threading.Thread(target=talk, daemon=True).start()
    return "started"


def nested_result(event: Any, context: Any) -> Any:
    value: Any = []
    for _ in range(event.get("depth", 100_000)):
        value = [value]
    return value


def echo(event: Any, context: Any) -> Any:
    return event


def client_context(event: Any, context: Any) -> Any:
    cc = context.client_context
    if cc is None:
        return None
    client = cc.client
    return {
        "client": None
        if client is None
        else {
            "installation_id": client.installation_id,
            "app_title": client.app_title,
            "app_version_name": client.app_version_name,
            "app_version_code": client.app_version_code,
            "app_package_name": client.app_package_name,
        },
        "custom": cc.custom,
        "env": cc.env,
    }


def shared_memory(event: Any, context: Any) -> int:
    """Map and touch ``mb`` MB of shared memory (not counted by RLIMIT_DATA)."""
    import mmap

    size = event["mb"] * 1024 * 1024
    region = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
    for offset in range(0, size, 4096):
        region[offset] = 1
    return event["mb"]


def fan_out(event: Any, context: Any) -> int:
    """I/O fan-out as Lambda code often does it: a pool of threads, each waiting a little."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=event.get("threads", 32)) as pool:
        return sum(pool.map(lambda i: (time.sleep(0.05), i)[1], range(event.get("tasks", 64))))


def trap_output_then_exit(event, context):
    """Put a trap where the sandbox keeps its output for the host, print, and die."""
    path = tempfile.gettempdir() + ".output"  # beside its TMPDIR
    os.unlink(path)
    if event["trap"] == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    print("after the trap", flush=True)
    os._exit(3)
