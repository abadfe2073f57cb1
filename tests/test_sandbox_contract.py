"""The sandbox contract: typed messages, the kinds registry, the portable frame, replies
matched to requests, bounded spawns, bounded capture, and a sandbox that never dies of its
input. Against real sandboxes (subprocess; inline and subinterpreter where they apply)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import fnrt
from fnrt._clock import SystemClock
from fnrt.errors import FnrtError, ServiceError
from fnrt.sandbox import (
    ENFORCEMENTS,
    KINDS,
    Binding,
    InitRequest,
    InvokeRequest,
    Resources,
    SandboxDied,
    _wire,
    make_factory,
)
from fnrt.sandbox._subprocess import SubprocessFactory
from fnrt.sandbox._worker import Worker, dispatch

from .conftest import alive, wait_until

MODULE = "handlers.hostile"
KINDS_HERE = ["subprocess", "inline"] + (["subinterpreter"] if sys.version_info >= (3, 13) else [])


def binding(attr: str, memory_mb: int = 128) -> Binding:
    return Binding(attr, "f", "arn:aws:lambda:us-east-1:123456789012:function:f", memory_mb, "stream")


def request(rid: str, event: Any = None, **extra: Any) -> InvokeRequest:
    deadline = int((time.time() + 30) * 1000)
    return InvokeRequest(rid, deadline, json.dumps(event).encode(), **extra)


@pytest.fixture
async def subprocess_factory() -> AsyncIterator[SubprocessFactory]:
    factory = SubprocessFactory(SystemClock(), spawn_timeout=1.5)
    try:
        yield factory
    finally:
        await factory.aclose()


async def bound(factory: Any, attr: str, resources: Resources | None = None) -> Any:
    sandbox = await factory.create(resources or Resources())
    reply = await sandbox.init(InitRequest(MODULE, binding(attr)), timeout=30)
    assert reply.ok, reply.error
    return sandbox


# -- the registry and the frame ------------------------------------------------------------


def test_one_registry_of_kinds_read_by_config_validation():
    assert set(KINDS) == {"subprocess", "subinterpreter", "inline"}
    with pytest.raises(fnrt.InvalidConfig, match="subprocess, subinterpreter, inline"):
        fnrt.FunctionConfig(sandbox="docker")
    available = {name for name, kind in KINDS.items() if kind.unavailable() is None}
    assert ("subinterpreter" in available) == (sys.version_info >= (3, 13))
    with pytest.raises(ValueError, match="unknown sandbox kind"):
        make_factory("docker", SystemClock())


async def test_each_factory_declares_what_it_enforces():
    enforced = {}
    for name in KINDS_HERE:
        factory = make_factory(name, SystemClock())
        assert factory.kind == name
        assert factory.enforces <= ENFORCEMENTS
        enforced[name] = factory.enforces
        await factory.aclose()
    assert enforced["subprocess"] == ENFORCEMENTS
    assert enforced["inline"] == frozenset()


def test_frames_are_json_headers_and_raw_bodies_any_language_can_read():
    frame = _wire.encode({"op": "invoke", "id": "r-1", "deadline_ms": 5}, b'{"a":1}')
    assert frame[:4] == b"FN\x01\x01"
    head_len = int.from_bytes(frame[4:8], "big")
    body_len = int.from_bytes(frame[8:12], "big")
    assert json.loads(frame[12 : 12 + head_len]) == {"op": "invoke", "id": "r-1", "deadline_ms": 5}
    assert frame[12 + head_len :] == b'{"a":1}' and body_len == 7
    for junk in (b"\x00garbage that", b"FN\x02\x01" + bytes(8), b"FN\x01\x01\xff\xff\xff\xff" + bytes(4)):
        with pytest.raises(_wire.FrameError):
            _wire.parse_prefix(junk)
    with pytest.raises(_wire.FrameError):
        _wire.decode_header(b"[1, 2]")


def test_invoke_replies_may_use_the_fixed_layout_and_decode_to_the_same_header():
    reply = {"ok": False, "id": "r-9", "dur": 1.5, "mem": 42, "log": "héllo\n", "fatal": True}
    reply["error"] = {"errorType": "E", "errorMessage": "m", "stackTrace": []}
    frame = _wire.encode_invoke_reply(reply, b"null")
    assert frame[:4] == b"FN\x01\x02"
    head_len, body_len = _wire.parse_prefix(frame)
    assert _wire.decode_header(frame[12 : 12 + head_len], frame[3]) == reply
    assert frame[12 + head_len :] == b"null" and body_len == 4
    with pytest.raises(_wire.FrameError):
        _wire.decode_header(frame[12 : 12 + head_len - 1], frame[3])


# -- typed requests and replies, every kind ---------------------------------------------------


@pytest.mark.parametrize("kind", KINDS_HERE)
async def test_init_and_invoke_are_typed_and_replies_name_their_request(kind: str):
    factory = make_factory(kind, SystemClock())
    try:
        sandbox = await factory.create(Resources(memory_mb=128))
        init = await sandbox.init(InitRequest(MODULE), timeout=30)
        assert init.ok and init.error is None and init.init_ms is not None
        assert init.handlers == ()  # a module without @fnrt.handler: nothing found, no error
        again = await sandbox.init(InitRequest(MODULE, binding("echo")), timeout=30)  # only binds
        assert again.ok
        reply = await sandbox.invoke(request("req-1", {"n": 1}), timeout=30)
        assert (reply.request_id, reply.ok, json.loads(reply.body)) == ("req-1", True, {"n": 1})
        assert reply.duration_ms >= 0 and reply.max_memory_mb >= 0 and not reply.fatal
        missing = await sandbox.init(InitRequest(MODULE, binding("no_such_handler")), timeout=30)
        assert not missing.ok and missing.error is not None
        assert missing.error["errorType"] == "Runtime.HandlerNotFound"
        await sandbox.close()
    finally:
        await factory.aclose()


@pytest.mark.parametrize("kind", KINDS_HERE)
async def test_a_closed_factory_starts_nothing_and_kills_what_it_made(kind: str, release_file: str):
    """After ``aclose()`` a factory refuses to create (``RuntimeClosed``), so a cold start
    racing the runtime's close cannot leave a sandbox (or a template process) behind;
    a request in flight on one of its sandboxes fails at once."""
    factory = make_factory(kind, SystemClock())
    try:
        sandbox = await factory.create(Resources())
        assert (await sandbox.init(InitRequest("handlers.chaos", binding("hold")), timeout=30)).ok
        call = asyncio.ensure_future(sandbox.invoke(request("req-1", {"release": release_file}), timeout=60))
        await asyncio.sleep(0.2)
        closing = asyncio.ensure_future(factory.aclose())
        with pytest.raises(SandboxDied):
            await asyncio.wait_for(call, 10)
        assert factory.closed
        open(release_file, "w").close()  # a thread that cannot be stopped returns: the close ends
        await closing
        with pytest.raises(fnrt.RuntimeClosed):
            await factory.create(Resources())
    finally:
        open(release_file, "w").close()
        await factory.aclose()


async def test_deploy_still_finds_handlers_through_the_typed_init():
    async with fnrt.Runtime() as rt:
        names = await rt.deploy("handlers.echo")
        assert names and await rt.invoke(names[0], {"a": 1})


# -- replies matched to requests --------------------------------------------------------------


@pytest.mark.parametrize(
    ("attr", "event", "said"),
    [
        ("garbage", {"sleep": 5}, "not a reply"),
        # A frame declaring a huge reply is refused before it is buffered (the host checks
        # it against Lambda's limits), so a sandbox cannot make the host hold a gigabyte.
        ("huge_frame", {"mb": 64}, "larger than allowed"),
    ],
)
async def test_bytes_on_the_socket_that_are_no_reply_destroy_the_sandbox_and_fail_that_call(
    subprocess_factory, attr, event, said
):
    sandbox = await bound(subprocess_factory, attr)
    pid = sandbox.pid
    with pytest.raises(SandboxDied) as caught:
        await sandbox.invoke(request(f"req-{attr}", event), timeout=30)
    assert caught.value.error_type == "Runtime.ExitError"
    assert said in caught.value.message
    assert not sandbox.alive
    await wait_until(lambda: not alive(pid), "the broken sandbox to be killed")


async def test_garbage_over_the_runtime_is_an_exit_error_then_a_fresh_sandbox():
    async with fnrt.Runtime() as rt:
        await rt.add_function("g", f"{MODULE}:garbage", timeout=30)
        await rt.add_function("e", f"{MODULE}:echo")
        result = await rt.invoke_detailed("g", {"sleep": 5})
        assert result.error is not None and result.error.error_type == "Runtime.ExitError"
        assert result.payload is None or result.payload != "garbage sent"
        again = await rt.invoke_detailed("g", {})  # the broken one is gone: a cold start
        assert again.cold_start
        assert rt.stats()["functions"]["g"]["busy"] == 0


async def test_a_forked_child_answering_later_never_reaches_another_caller(tmp_path):
    flag = str(tmp_path / "sent")
    async with fnrt.Runtime() as rt:
        await rt.add_function("fork", f"{MODULE}:fork_and_answer_later", timeout=60)
        first = await rt.invoke_detailed("fork", {"fork": True, "delay": 0.3, "flag": flag})
        assert first.error is None and first.payload == "genuine"
        # The next call lands on the same warm sandbox and is still running when the child
        # sends its copy of the first reply: that call fails, it never gets "forged".
        second = await rt.invoke_detailed("fork", {"sleep": 30})
        assert second.payload != "forged"
        assert second.error is not None and second.error.error_type == "Runtime.ExitError"
        assert "answered request" in second.error.error_message
        assert os.path.exists(flag)
        third = await rt.invoke_detailed("fork", {})
        assert third.cold_start and third.payload == "genuine"


async def test_a_stray_frame_while_idle_destroys_the_sandbox(subprocess_factory, tmp_path):
    flag = str(tmp_path / "sent")
    sandbox = await bound(subprocess_factory, "fork_and_answer_later")
    reply = await sandbox.invoke(request("req-1", {"fork": True, "delay": 0.1, "flag": flag}), timeout=30)
    assert json.loads(reply.body) == "genuine"
    await wait_until(lambda: not sandbox.alive, "the stray frame to break the sandbox")
    with pytest.raises(SandboxDied):
        await sandbox.invoke(request("req-2", {}), timeout=30)


# -- bounded spawns: a stopped or dead template -------------------------------------------------


async def test_a_stopped_template_gives_service_error_quickly_and_is_replaced(subprocess_factory):
    first = await bound(subprocess_factory, "echo")
    template = subprocess_factory.template_pid
    assert template is not None
    os.kill(template, signal.SIGSTOP)
    try:
        with pytest.raises(ServiceError, match=r"did not answer within 1\.5 s") as caught:
            await subprocess_factory.create(Resources())
        assert isinstance(caught.value, FnrtError)
        await wait_until(lambda: not alive(template), "the wedged template to be killed")
        replacement = await bound(subprocess_factory, "echo")
        assert subprocess_factory.template_pid not in (None, template)
        reply = await replacement.invoke(request("req-r", "ok"), timeout=30)
        assert json.loads(reply.body) == "ok"
    finally:
        try:
            os.kill(template, signal.SIGCONT)
        except ProcessLookupError:
            pass
    await wait_until(lambda: not alive(first.pid), "the old template's sandboxes to die with it")


async def test_a_dead_template_is_replaced_at_the_next_cold_start(subprocess_factory):
    await bound(subprocess_factory, "echo")
    template = subprocess_factory.template_pid
    assert template is not None
    os.kill(template, signal.SIGKILL)
    sandbox = await bound(subprocess_factory, "echo")  # replaced, not SandboxDied
    assert subprocess_factory.template_pid not in (None, template)
    assert json.loads((await sandbox.invoke(request("r", 1), timeout=30)).body) == 1


async def test_the_runtime_raises_service_error_and_frees_the_slot_when_no_sandbox_can_start():
    async with fnrt.Runtime() as rt:
        await rt.add_function("e", f"{MODULE}:echo", reserved_concurrency=1)
        await rt.invoke("e", 1)
        factory = rt._factory("subprocess")
        assert isinstance(factory, SubprocessFactory)
        factory.spawn_timeout = 1.0
        template = factory.template_pid
        assert template is not None
        os.kill(template, signal.SIGSTOP)
        try:
            await rt.remove_function("e")  # no warm sandbox left: the next call is a cold start
            await rt.add_function("e", f"{MODULE}:echo", reserved_concurrency=1)
            with pytest.raises(ServiceError, match="did not answer within"):
                await rt.invoke("e", 1)
        finally:
            try:
                os.kill(template, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert await rt.invoke("e", 2) == 2  # a new template; the one slot was given back


# -- bounded memory, errors that do not kill the sandbox ------------------------------------


async def test_captured_output_keeps_the_tail_and_says_what_was_cut(subprocess_factory):
    sandbox = await bound(subprocess_factory, "shout")
    reply = await sandbox.invoke(request("req-log", {"lines": 20_000}), timeout=60)  # 2 MB of output
    assert reply.ok
    assert len(reply.log) < 70 * 1024
    assert reply.log.startswith("[... ") and " bytes truncated]\n" in reply.log
    assert reply.log.endswith("the last line\n")
    dropped = int(reply.log[5 : reply.log.index(" bytes")])
    assert dropped + len(reply.log) >= 2_000_000


@pytest.mark.parametrize("kind", KINDS_HERE)
async def test_deep_results_and_inputs_are_marshal_errors_not_crashes(kind: str):
    factory = make_factory(kind, SystemClock())
    try:
        sandbox = await factory.create(Resources())
        assert (await sandbox.init(InitRequest(MODULE, binding("nested_result")), timeout=30)).ok
        deep = await sandbox.invoke(request("r1", {"depth": 200_000}), timeout=30)
        assert not deep.ok and deep.error is not None
        assert deep.error["errorType"] == "Runtime.MarshalError"
        body = b"[" * 200_000 + b"]" * 200_000
        deep_in = await sandbox.invoke(
            InvokeRequest("r2", int(time.time() * 1000) + 30_000, body), timeout=30
        )
        assert not deep_in.ok and deep_in.error is not None
        assert deep_in.error["errorType"] == "Runtime.UnmarshalError"
        fine = await sandbox.invoke(request("r3", {"depth": 3}), timeout=30)
        assert fine.ok and json.loads(fine.body) == [[[[]]]]
        assert sandbox.alive
    finally:
        await factory.aclose()


async def test_threads_left_running_do_not_write_to_the_host_stdout(subprocess_factory, tmp_path, capfd):
    flag = str(tmp_path / "thread-done")
    sandbox = await bound(subprocess_factory, "chatty_thread")
    reply = await sandbox.invoke(request("req-t", {"flag": flag}), timeout=30)
    assert reply.ok
    await wait_until(lambda: os.path.exists(flag), "the handler's thread to finish printing")
    assert "LEAKED-FROM-THREAD" not in capfd.readouterr().out


# -- client context, and input that must not kill a sandbox ------------------------------------


@pytest.mark.parametrize("kind", KINDS_HERE)
async def test_client_context_client_is_an_object_and_extra_members_are_ignored(kind: str):
    factory = make_factory(kind, SystemClock())
    try:
        sandbox = await factory.create(Resources())
        assert (await sandbox.init(InitRequest(MODULE, binding("client_context")), timeout=30)).ok
        sent = {
            "client": {"installation_id": "inst-1", "app_title": "Shop", "app_version_code": "42"},
            "custom": {"k": "v"},
            "env": {"locale": "en_US"},
            "services": {"mobile_analytics": {"app_id": "x"}},
        }
        reply = await sandbox.invoke(request("r", {}, client_context=sent), timeout=30)
        got = json.loads(reply.body)
        assert got["client"] == {
            "installation_id": "inst-1",
            "app_title": "Shop",
            "app_version_name": None,
            "app_version_code": "42",
            "app_package_name": None,
        }
        assert got["custom"] == {"k": "v"} and got["env"] == {"locale": "en_US"}
        for odd in ([1, 2], "text", 5, {"client": "nope", "custom": [1]}, {"client": {"installation_id": 1}}):
            reply = await sandbox.invoke(request("r", {}, client_context=odd), timeout=30)  # type: ignore[arg-type]
            assert reply.ok, reply.error
        assert sandbox.alive
    finally:
        await factory.aclose()


async def test_client_context_over_the_runtime_reaches_the_handler_as_attributes():
    async with fnrt.Runtime() as rt:
        await rt.add_function("cc", f"{MODULE}:client_context")
        out = await rt.invoke("cc", {}, client_context={"client": {"installation_id": "i-9"}, "services": {}})
    assert out["client"]["installation_id"] == "i-9"


def test_dispatch_answers_malformed_requests_instead_of_dying():
    worker = Worker(process_wide=False, apply_environment=False, enforce_memory=False)
    reply, _ = dispatch(worker, {"op": "bogus"}, b"") or ({}, b"")
    assert reply["ok"] is False and reply["error"]["errorType"] == "Runtime.Unknown"
    reply, _ = dispatch(worker, {"op": "invoke", "id": "x"}, b"{}") or ({}, b"")  # not bound
    assert reply["ok"] is False and reply["id"] == "x"
    reply, _ = dispatch(worker, {"op": "init"}, b"") or ({}, b"")  # no module
    assert reply["ok"] is False
    assert dispatch(worker, {"op": "shutdown"}, b"") is None


async def test_private_sandbox_errors_document_what_they_mean():
    from fnrt.sandbox import SandboxTimeout

    assert SandboxDied.__doc__ and "Private" in SandboxDied.__doc__
    assert SandboxTimeout.__doc__ and "Private" in SandboxTimeout.__doc__
    assert not issubclass(SandboxDied, FnrtError)  # never reaches a caller as such
    await asyncio.sleep(0)


def test_the_frame_reader_reads_frames_however_the_bytes_arrive() -> None:
    """A sandbox reads its requests with one buffer and ``recv_into``: frames split across
    reads, several in one read, and one larger than the buffer all come out whole, and the
    large one's buffer is not kept."""
    import socket

    ours, theirs = socket.socketpair()
    try:
        reader = _wire.FrameReader(theirs)
        big = b"x" * (3 * _wire.FrameReader.SIZE + 5)
        frames = [
            _wire.encode({"op": "invoke", "id": "a"}, b"{}"),
            _wire.encode({"op": "invoke", "id": "b"}, big),
            _wire.encode({"op": "invoke", "id": "c"}, b"[1]"),
            _wire.encode({"op": "shutdown"}),
        ]
        data = b"".join(frames)
        ours.sendall(data[:5])  # a split prefix, then the rest in one go
        ours.sendall(data[5:])
        got = [reader.read() for _ in frames]
        assert [(h.get("id"), len(b)) for h, b in got] == [("a", 2), ("b", len(big)), ("c", 3), (None, 0)]
        assert got[1][1] == big and len(reader._buf) == _wire.FrameReader.SIZE
        for byte in range(len(frames[0])):  # one byte at a time
            ours.sendall(frames[0][byte : byte + 1])
        assert reader.read() == ({"op": "invoke", "id": "a"}, b"{}")
        ours.sendall(frames[2][:-1])  # the stream ends in the middle of a frame
        ours.shutdown(socket.SHUT_WR)
        assert reader.read() is None
    finally:
        ours.close()
        theirs.close()


def test_the_frame_reader_reassembles_frames_from_reads_of_any_size() -> None:
    class Trickle:  # a socket whose every read returns at most ``step`` bytes
        def __init__(self, data: bytes, step: int) -> None:
            self.data, self.step = data, step

        def recv_into(self, view: memoryview) -> int:
            n = min(self.step, len(view), len(self.data))
            view[:n] = self.data[:n]
            self.data = self.data[n:]
            return n

    big = b"y" * (_wire.FrameReader.SIZE + 7)
    frames = [_wire.encode({"id": str(i)}, big if i == 2 else b"%d" % i) for i in range(5)]
    for step in (1, 7, 12, 4096, 1 << 20):
        reader = _wire.FrameReader(Trickle(b"".join(frames), step))  # type: ignore[arg-type]
        got = [reader.read() for _ in frames]
        assert [h["id"] for h, _ in got] == ["0", "1", "2", "3", "4"]
        assert got[2][1] == big and got[4][1] == b"4"
        assert reader.read() is None


def test_the_serve_loop_answers_malformed_invokes_and_goes_on_serving() -> None:
    """The subprocess loop packs an invoke's reply as it is made (no reply dict): a request
    without an id or a deadline still gets an error reply, and the next one is served, with
    the context, the log and the result a well-formed one gets."""
    import socket
    import threading

    from fnrt.sandbox._worker import serve

    worker = Worker(process_wide=False, apply_environment=False, enforce_memory=False)
    bind = {
        "attr": "echo",
        "function_name": "echo",
        "arn": "arn:aws:lambda:us-east-1:000000000000:function:echo",
        "memory_mb": 256,
        "log_stream": "2026/12/01/[$LATEST]abc",
    }
    assert worker.init({"module": "handlers.echo", "bind": bind})["ok"]
    ours, theirs = socket.socketpair()
    loop = threading.Thread(target=serve, args=(theirs, worker), daemon=True)
    loop.start()
    try:
        reader = _wire.FrameReader(ours)
        ours.sendall(_wire.encode({"op": "invoke", "deadline_ms": 1}, b"{}"))  # no id
        header, _ = reader.read() or ({}, b"")
        assert header["ok"] is False and "id" not in header
        assert header["error"]["errorType"] == "Runtime.Unknown"
        ours.sendall(_wire.encode({"op": "invoke", "id": "no-deadline"}, b"{}"))
        header, _ = reader.read() or ({}, b"")
        assert header["ok"] is False and header["id"] == "no-deadline"
        assert "deadline_ms" in header["error"]["errorMessage"]
        deadline = int(time.time() * 1000) + 60_000
        ours.sendall(_wire.encode({"op": "invoke", "id": "r-1", "deadline_ms": deadline}, b'{"a": 1}'))
        header, body = reader.read() or ({}, b"")
        assert header["ok"] is True and header["id"] == "r-1" and "fatal" not in header
        assert header["dur"] >= 0 and header["mem"] > 0
        assert json.loads(body)["event"] == {"a": 1} and json.loads(body)["request_id"] == "r-1"
        ours.sendall(_wire.encode({"op": "invoke", "id": "r-2", "deadline_ms": deadline}, b"[1,"))
        header, _ = reader.read() or ({}, b"")
        assert header["ok"] is False and header["error"]["errorType"] == "Runtime.UnmarshalError"
        assert "Unable to unmarshal input" in header["log"]
    finally:
        ours.close()
        loop.join(5)
    assert not loop.is_alive()  # EOF ends the loop
