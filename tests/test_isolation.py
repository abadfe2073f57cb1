"""What a subprocess sandbox isolates: its environment (Lambda's, not the host's), its
temporary directory, its time zone, its process group (nothing it starts outlives it, the
runtime or the host), its memory (shared mappings too) and, as root, its user."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import fnrt
from fnrt._clock import SystemClock
from fnrt.sandbox import Binding, InitRequest, InvokeRequest, Resources, _tmpdirs
from fnrt.sandbox._subprocess import SubprocessFactory

from .conftest import alive, wait_until

MODULE = "handlers.hostile"

#: Lambda's "defined runtime environment variables" (the ones a function always sees).
DEFINED = {
    "_HANDLER",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_RUNTIME_API",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
    "LANG",
    "PATH",
    "PYTHONPATH",
    "TZ",
}


@pytest.fixture
def hostile_host_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHOST")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "host-token")
    monkeypatch.setenv("FNRT_HOST_ONLY", "1")
    monkeypatch.setenv("TZ", "JST-9")


async def test_a_sandbox_sees_lambdas_environment_not_the_hosts(hostile_host_env: None):
    async with fnrt.Runtime() as rt:
        await rt.add_function("env", f"{MODULE}:environment", memory_mb=256, environment={"MINE": "yes"})
        out = await rt.invoke("env", {})
    env = out["environ"]
    assert DEFINED <= set(env), DEFINED - set(env)
    for leaked in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "FNRT_HOST_ONLY"):
        assert leaked not in env
    assert env["MINE"] == "yes"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "env" and env["_HANDLER"] == f"{MODULE}.environment"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/env"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_EXECUTION_ENV"].startswith("AWS_Lambda_python3.")
    assert env["LANG"] == "en_US.UTF-8"
    # TZ takes effect (Lambda runs in UTC) even though the host is on JST.
    assert env["TZ"] == ":UTC" and out["utc_offset"] == "+0000"


async def test_the_code_root_stays_where_the_host_started_when_the_cwd_moves(tmp_path, monkeypatch):
    # A handler in a subinterpreter sandbox that calls os.chdir (a common Lambda idiom)
    # moves the whole process: sandboxes created after must keep the host's code root.
    started_in = os.getcwd()
    monkeypatch.chdir(tmp_path)
    async with fnrt.Runtime() as rt:
        await rt.add_function("env", f"{MODULE}:environment")
        env = (await rt.invoke("env", {}))["environ"]
    assert env["LAMBDA_TASK_ROOT"] == started_in
    assert str(tmp_path) not in env["PYTHONPATH"].split(os.pathsep)


async def test_a_functions_pythonpath_extends_its_import_path(tmp_path):
    # PYTHONPATH is one of Lambda's unreserved variables: a function points it at a folder of
    # vendored libraries (or a layer's path) and imports from there, at init too.
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / "fnrt_vendored_lib.py").write_text('VALUE = "vendored"\n')
    variables = {"PYTHONPATH": str(vendor), "VENDORED_MODULE": "fnrt_vendored_lib"}
    async with fnrt.Runtime() as rt:
        await rt.add_function("vendored", "handlers.vendored:handler", environment=variables)
        out = await rt.invoke("vendored", {})
    assert out == {"value": "vendored", "pythonpath": str(vendor)}


def _control_groups(rt: fnrt.Runtime) -> bool:
    template = rt._factories["subprocess"]._template
    return template is not None and template.control_groups


async def test_memory_holds_for_all_of_an_environments_processes_together():
    # Lambda's memory_mb is the environment's: four children of 60 MB each fit under a
    # per-process limit of 128 MB, not together.
    async with fnrt.Runtime() as rt:
        kids = "handlers.environment_limits:children_memory"
        await rt.add_function("kids", kids, memory_mb=128, timeout=30)
        await rt.add_function("env", f"{MODULE}:environment")
        await rt.invoke("env", {})
        if not _control_groups(rt):
            pytest.skip("no control groups for sandboxes here (not Linux, or not writable)")
        codes = await rt.invoke("kids", {"children": 4, "mb": 60})
        assert -signal.SIGKILL in codes, codes  # the kernel ended one: the environment is full
        alone = await rt.invoke("kids", {"children": 1, "mb": 60})
        assert alone == [0]  # one fits, in the same (warm) environment


async def test_an_environment_runs_at_most_1024_processes_and_threads():
    async with fnrt.Runtime() as rt:
        await rt.add_function("threads", "handlers.environment_limits:threads", memory_mb=2048, timeout=60)
        started = await rt.invoke("threads", {"want": 1100})
        if not _control_groups(rt):
            pytest.skip("no control groups for sandboxes here (not Linux, or not writable)")
        assert 900 < started < 1024  # Lambda's quota, the handler's own thread included


async def test_an_environments_control_groups_go_with_it():
    from fnrt.sandbox import _cgroup

    async with fnrt.Runtime() as rt:
        await rt.add_function("env", f"{MODULE}:environment")
        pid = (await rt.invoke("env", {}))["pid"]
        if not _control_groups(rt):
            pytest.skip("no control groups for sandboxes here (not Linux, or not writable)")
        with open(f"/proc/{pid}/cgroup") as f:
            inside = [line.rstrip().split(":", 2)[2] for line in f if "sandbox-" in line]
        own = _cgroup._own_groups()
        mounts = _cgroup._cgroup_mounts()
        parents = [p for c in ("memory", "pids", "") if (p := _cgroup._base(mounts, own, c))]
        template = rt._factories["subprocess"]._template.pid
        dirs = [os.path.join(p, f"fnrt-{template}") for p in parents]
        assert inside and any(os.path.isdir(d) for d in dirs)
    assert not any(os.path.exists(d) for d in dirs)  # removed with the template


async def test_a_group_a_handler_makes_below_its_own_goes_with_the_sandbox():
    from fnrt.sandbox import _cgroup

    async with fnrt.Runtime() as rt:
        await rt.add_function("env", f"{MODULE}:environment")
        await rt.invoke("env", {})
        if not _control_groups(rt) or os.geteuid() != 0:
            pytest.skip("needs control groups and a handler running as root")
        await rt.add_function("escape", "handlers.environment_limits:child_in_a_group_of_its_own")
        child = await rt.invoke("escape", {})
        template = rt._factories["subprocess"]._template.pid
        base = _cgroup._base(_cgroup._cgroup_mounts(), _cgroup._own_groups(), "memory")
        assert base is not None
        ours = os.path.join(base, f"fnrt-{template}")
        assert any(os.path.isdir(os.path.join(ours, d, "mine")) for d in os.listdir(ours))
    await wait_until(lambda: not alive(child), "the child in the handler's own group to die")
    await wait_until(lambda: not os.path.exists(ours), "the template's groups to go, the handler's too")


async def test_provisioned_environments_say_so():
    async with fnrt.Runtime() as rt:
        await rt.add_function("env", f"{MODULE}:environment", provisioned_concurrency=1)
        out = await rt.invoke("env", {})
    assert out["environ"]["AWS_LAMBDA_INITIALIZATION_TYPE"] == "provisioned-concurrency"


async def test_each_sandbox_has_a_private_tmpdir_removed_with_it():
    async with fnrt.Runtime() as rt:
        await rt.add_function("env", f"{MODULE}:environment", reserved_concurrency=2)
        a, b = await asyncio.gather(rt.invoke("env", {}), rt.invoke("env", {}))
        assert a["tempdir"] == a["environ"]["TMPDIR"] and a["tmp_writable"]
        assert a["tmp_at_start"] == b["tmp_at_start"] == []  # empty at first, as Lambda's /tmp
        assert a["pid"] != b["pid"] and a["tempdir"] != b["tempdir"]
        assert os.path.isdir(a["tempdir"])
    assert not os.path.exists(a["tempdir"]) and not os.path.exists(b["tempdir"])


async def test_credentials_and_pass_through_are_explicit(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FNRT_PASS_ME", "passed")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret")
    factory = SubprocessFactory(SystemClock())
    try:
        resources = Resources(
            passthrough=("PATH", "FNRT_PASS_ME"),
            credentials={"AWS_ACCESS_KEY_ID": "AKIAFUNC", "AWS_SECRET_ACCESS_KEY": "func-secret"},
        )
        env = (await _call(factory, "environment", {}, resources))["environ"]
    finally:
        await factory.aclose()
    assert env["FNRT_PASS_ME"] == "passed"
    assert env["AWS_ACCESS_KEY_ID"] == "AKIAFUNC" and env["AWS_SECRET_ACCESS_KEY"] == "func-secret"
    assert "AWS_SESSION_TOKEN" not in env


async def test_each_sandbox_leads_its_own_process_group():
    async with fnrt.Runtime() as rt:
        await rt.add_function("env", f"{MODULE}:environment")
        out = await rt.invoke("env", {})
    assert out["pgid"] == out["sid"] == out["pid"]


# -- nothing a handler starts outlives its sandbox, the runtime or the host ---------------------


@pytest.mark.parametrize("escape", [None, "setpgid", "setsid"])
async def test_processes_a_handler_starts_die_when_the_runtime_closes(escape):
    """Also a child that left the sandbox's process group (``setpgid``, ``setsid``): it is
    adopted by the template when its parent dies, and killed there."""
    async with fnrt.Runtime() as rt:
        await rt.add_function("child", f"{MODULE}:start_child")
        pid = await rt.invoke("child", {"escape": escape})
        assert alive(pid)
    await wait_until(lambda: not alive(pid), "the handler's child to die with the runtime")


@pytest.mark.parametrize("escape", ["setpgid", "setsid"])
async def test_an_escaped_child_dies_when_its_sandbox_retires(escape):
    async with fnrt.Runtime() as rt:
        await rt.add_function("child", f"{MODULE}:start_child")
        pid = await rt.invoke("child", {"escape": escape})
        await rt.remove_function("child")  # retires the warm sandbox
        await wait_until(lambda: not alive(pid), "the retired sandbox's escaped child to die")


async def test_processes_a_handler_starts_die_when_it_times_out(tmp_path):
    pid_file = tmp_path / "pid"
    async with fnrt.Runtime() as rt:
        await rt.add_function("child", f"{MODULE}:start_child", timeout=1)
        result = await rt.invoke_detailed("child", {"then_sleep": 60, "pid_file": str(pid_file)})
        assert result.error is not None and result.error.error_type == "Sandbox.Timedout"
        pid = int(pid_file.read_text())
        await wait_until(lambda: not alive(pid), "the timed-out handler's child to be killed")


async def test_processes_a_handler_starts_die_when_its_sandbox_retires():
    async with fnrt.Runtime() as rt:
        await rt.add_function("child", f"{MODULE}:start_child")
        pid = await rt.invoke("child", {})
        await rt.remove_function("child")  # retires the warm sandbox
        await wait_until(lambda: not alive(pid), "the retired sandbox's child to die")


@contextlib.asynccontextmanager
async def isolation_host() -> AsyncIterator[tuple[asyncio.subprocess.Process, int, str]]:
    """``tests.isolation_host`` started: the process, its handler's child pid and another
    sandbox's TMPDIR; killed at the end if the test did not."""
    host = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.isolation_host", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert host.stdout is not None
        line = await asyncio.wait_for(host.stdout.readline(), 60)
        yield host, int(line.split()[0]), line.split()[1].decode()
    finally:
        if host.returncode is None:
            host.kill()
            await host.wait()


async def test_processes_a_handler_starts_die_when_the_host_is_killed():
    async with isolation_host() as (host, pid, tmp):
        assert alive(pid) and os.path.isdir(tmp)
        host.kill()
        await host.wait()
        await wait_until(lambda: not alive(pid), "the child of a killed host's sandbox to die")
        await wait_until(lambda: not os.path.exists(tmp), "the killed host's sandbox TMPDIR to go")


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(child) for child in f.read().split()]
    return found


async def test_tmpdirs_left_when_host_and_template_die_together_are_swept_by_the_next_host():
    # kill -9 of both at once (a process group, the OOM killer, a container stopped): the
    # host cannot remove its sandboxes' TMPDIRs, nor the template. The next host sweeps them.
    async with isolation_host() as (host, child, tmp):
        for pid in [*_children(host.pid), host.pid]:  # the template, then the host
            os.kill(pid, signal.SIGKILL)
        await host.wait()
        await wait_until(lambda: not alive(child), "the sandboxes to die with their template")
        assert os.path.isdir(tmp)  # nobody left to remove it
        folder, name = os.path.split(tmp)
        tag = name[len(_tmpdirs.PREFIX) :].split("-")[0]
        lock = os.path.join(folder, f"{_tmpdirs.PREFIX}{tag}{_tmpdirs.LOCK_SUFFIX}")
        assert os.path.exists(lock)
        aged = time.time() - _tmpdirs.STALE_AFTER - 1  # older than a host that is just starting
        os.utime(lock, (aged, aged))
        async with fnrt.Runtime() as rt:
            await rt.add_function("env", f"{MODULE}:environment")
            mine = (await rt.invoke("env", {}))["tempdir"]
            assert not os.path.exists(tmp) and not os.path.exists(lock)
            assert os.path.isdir(mine)  # its own are kept
        assert not os.path.exists(mine)


def test_a_sweep_takes_only_claims_whose_host_is_gone(tmp_path):
    folder = str(tmp_path)
    live = _tmpdirs.Claim(folder)  # held, as a running host holds it
    dead = _tmpdirs.Claim(folder)
    dead_dirs = [tempfile.mkdtemp(prefix=dead.prefix, dir=folder) for _ in range(2)]
    open(dead_dirs[0] + ".output", "wb").close()
    live_dir = tempfile.mkdtemp(prefix=live.prefix, dir=folder)
    dead._fd, fd = None, dead._fd  # its host died: the kernel dropped its lock
    assert fd is not None
    os.close(fd)
    young = _tmpdirs.Claim(folder)  # a host that is only starting (its lock not yet taken)
    young._fd, fd = None, young._fd
    assert fd is not None
    os.close(fd)
    later = time.time() + _tmpdirs.STALE_AFTER / 2
    old = time.time() - _tmpdirs.STALE_AFTER
    for claim in (live, dead):
        os.utime(claim.path, (old, old))
    assert _tmpdirs.sweep(folder, now=later) == [dead.tag]
    assert sorted(os.listdir(folder)) == sorted(
        os.path.basename(p) for p in (live.path, live_dir, young.path)
    )
    live.release()
    assert not os.path.exists(live.path)


# -- memory ------------------------------------------------------------------------------------


async def test_shared_memory_counts_against_memory_mb():
    async with fnrt.Runtime() as rt:
        await rt.add_function("shm", f"{MODULE}:shared_memory", memory_mb=128, timeout=30)
        small = await rt.invoke_detailed("shm", {"mb": 40})
        assert small.error is None
        assert small.max_memory_mb >= 40  # true usage: the shared pages count
        big = await rt.invoke_detailed("shm", {"mb": 400})
    assert big.error is not None and big.error.error_type == "Runtime.OutOfMemory"


async def test_a_plain_handler_starts_under_the_smallest_memory_size():
    async with fnrt.Runtime() as rt:
        await rt.add_function("env", f"{MODULE}:environment", memory_mb=128)
        assert (await rt.invoke_detailed("env", {})).error is None


async def test_a_thread_pool_runs_in_the_smallest_memory_size():
    """The memory limit counts reserved address space: each thread's 8 MB stack and 64 MB
    malloc arena were reservations enough to fail a pool of 32 threads at 128 MB (and to
    hang a thread that started without memory). Lambda runs such pools: so does fnrt, and
    what is truly too many threads is a clean error, not a timeout."""
    async with fnrt.Runtime() as rt:
        await rt.add_function("fan", f"{MODULE}:fan_out", memory_mb=128, timeout=20)
        pool = await rt.invoke_detailed("fan", {"threads": 100, "tasks": 200})
        assert pool.error is None and pool.payload == sum(range(200))
        too_many = await rt.invoke_detailed("fan", {"threads": 1000, "tasks": 1000})
    assert too_many.error is not None and too_many.error.error_type == "RuntimeError"
    assert "can't start new thread" in too_many.error.error_message


# -- another user --------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="running sandboxes as another user needs root")
async def test_as_root_a_sandbox_can_run_as_another_user(tmp_path):
    nobody = pwd.getpwnam("nobody")
    secret = tmp_path / "state.db"
    secret.write_text("host state")
    secret.chmod(0o600)
    factory = SubprocessFactory(SystemClock())
    try:
        resources = Resources(run_as_user="nobody")
        out = await _call(factory, "environment", {}, resources)
        assert out["uid"] == nobody.pw_uid and out["tmp_writable"]
        denied = await _call(factory, "read_file", {"path": str(secret)}, resources, raw=True)
    finally:
        await factory.aclose()
    assert not denied.ok and denied.error is not None
    assert denied.error["errorType"] == "PermissionError"


async def test_run_as_user_that_does_not_exist_is_invalid_config():
    factory = SubprocessFactory(SystemClock())
    try:
        with pytest.raises(fnrt.InvalidConfig, match="not a user"):
            await factory.create(Resources(run_as_user="no-such-user-fnrt"))
    finally:
        await factory.aclose()


async def _call(
    factory: SubprocessFactory, attr: str, event: Any, resources: Resources, raw: bool = False
) -> Any:
    sandbox = await factory.create(resources)
    binding = Binding(attr, "f", "arn:aws:lambda:us-east-1:123456789012:function:f", 128, "s")
    init = await sandbox.init(InitRequest(MODULE, binding), timeout=30)
    assert init.ok, init.error
    deadline = int((time.time() + 30) * 1000)
    reply = await sandbox.invoke(InvokeRequest("r", deadline, json.dumps(event).encode()), timeout=30)
    await sandbox.close()
    if raw:
        return reply
    assert reply.ok, reply.error
    return json.loads(reply.body)


async def test_the_runtime_passes_credentials_users_and_pass_through_to_its_sandboxes(
    monkeypatch: pytest.MonkeyPatch, tmp_path
):
    monkeypatch.setenv("FNRT_PASS_ME", "passed")
    monkeypatch.setenv("FNRT_KEEP_OUT", "host-only")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret")
    role = {"AWS_ACCESS_KEY_ID": "AKIAROLE", "AWS_SECRET_ACCESS_KEY": "role-secret", "AWS_SESSION_TOKEN": "t"}
    kwargs = {"sandbox_user": "nobody"} if os.geteuid() == 0 else {}
    async with fnrt.Runtime(env_passthrough=["FNRT_PASS_ME"], **kwargs) as rt:
        await rt.add_function("env", f"{MODULE}:environment", credentials=role)
        out = await rt.invoke("env", {})
        record = rt.get_function("env")
    env = out["environ"]
    assert env["FNRT_PASS_ME"] == "passed" and "FNRT_KEEP_OUT" not in env
    assert env["AWS_ACCESS_KEY_ID"] == "AKIAROLE" and env["AWS_SECRET_ACCESS_KEY"] == "role-secret"
    assert "role-secret" not in repr(record)  # never printed with the config
    if os.geteuid() == 0:
        assert out["uid"] == pwd.getpwnam("nobody").pw_uid
    with pytest.raises(fnrt.InvalidConfig, match="AWS_SECRET_ACCESS_KEY"):
        fnrt.FunctionConfig(credentials={"AWS_ACCESS_KEY_ID": "A"})
