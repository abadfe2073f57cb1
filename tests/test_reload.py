"""Hot reload: changed code reaches new invocations; nothing in flight is cut off; a module
that stops importing leaves the old version serving. Real files, a real watcher, real
sandboxes."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import fnrt
from fnrt.testing import wait_until

pytest.importorskip("watchfiles")

SOURCE = '''
import os, time
import fnrt

@fnrt.handler(timeout=30)
def version(event, context):
    release = event.get("release")
    while release and not os.path.exists(release):
        time.sleep(0.002)
    return {{"version": {version}{padding}}}
'''


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A project folder on sys.path (the template and its sandboxes import from it)."""
    name = f"hot_{uuid.uuid4().hex[:8]}"
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path, name
    finally:
        sys.path.remove(str(tmp_path))


def write(path: Path, version: int) -> None:
    path.write_text(SOURCE.format(version=version, padding=" " * version))  # size differs too


async def serving(rt: fnrt.Runtime, version: int, limit: float = 20.0) -> float:
    """Invoke until ``version`` answers; returns the seconds it took."""
    started = time.monotonic()
    while (await rt.invoke("version", {}))["version"] != version:
        if time.monotonic() - started > limit:
            raise AssertionError(f"version {version} never served")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_changed_code_reaches_new_invocations_without_cutting_any_off(project, tmp_path) -> None:
    folder, name = project
    source = folder / f"{name}.py"
    write(source, 1)
    release = tmp_path / "release"
    async with fnrt.Runtime(reload=True, reload_paths=[folder]) as rt:
        reports: list[str] = []
        assert rt._reloader is not None
        rt._reloader.report = reports.append
        await rt.deploy(name)
        rt.configure_async("version", max_retry_attempts=0)
        assert (await rt.invoke("version", {}))["version"] == 1
        in_flight = asyncio.ensure_future(rt.invoke("version", {"release": str(release)}))
        await wait_until(lambda: rt.stats()["functions"]["version"]["busy"] == 1, "a call in flight")

        started = time.monotonic()
        write(source, 2)
        await wait_until(lambda: any("reloaded" in r and name in r for r in reports), "the reload")
        # The warm environment of version 1 is retired: the very next call runs version 2.
        assert (await rt.invoke("version", {}))["version"] == 2
        print(f"reload-to-first-new-result: {(time.monotonic() - started) * 1000:.0f} ms")
        assert not in_flight.done()  # the old code's call goes on ...
        release.touch()
        assert (await in_flight)["version"] == 1  # ... and finishes on the old code
        assert rt.async_config("version").max_retry_attempts == 0  # settings stay

        source.write_text("def broken(:\n")  # half-way through an edit
        await wait_until(lambda: any("failed" in r for r in reports), "the failed reload reported")
        assert (await rt.invoke("version", {}))["version"] == 2  # the old version serves
        failures = [r for r in reports if "failed" in r]
        assert len(failures) == 1 and "SyntaxError" in failures[0]

        write(source, 3)
        await serving(rt, 3)


async def test_a_reload_deploys_new_handlers_and_removes_gone_ones(project) -> None:
    """What a deployed module declares after the edit is what is served: a handler added
    to it is deployed, one taken out of it is removed (a call could only fail), and one
    the user removed stays removed."""
    folder, name = project
    source = folder / f"{name}.py"
    source.write_text(
        "import fnrt\n\n@fnrt.handler\ndef first(event, context):\n    return 1\n\n"
        "@fnrt.handler\ndef second(event, context):\n    return 2\n\n"
        "@fnrt.handler\ndef dropped_by_user(event, context):\n    return 0\n"
    )
    async with fnrt.Runtime(reload=True, reload_paths=[folder]) as rt:
        reports: list[str] = []
        assert rt._reloader is not None
        rt._reloader.report = reports.append
        assert sorted(await rt.deploy(name)) == ["dropped_by_user", "first", "second"]
        await rt.remove_function("dropped_by_user")
        source.write_text(
            "import fnrt\n\n@fnrt.handler\ndef first(event, context):\n    return 10\n\n"
            "@fnrt.handler\ndef added(event, context):\n    return 3\n\n"
            "@fnrt.handler\ndef dropped_by_user(event, context):\n    return 0\n"
        )
        await wait_until(lambda: any("reloaded" in r for r in reports), "the reload")
        assert await rt.invoke("added", {}) == 3
        assert await rt.invoke("first", {}) == 10
        assert sorted(rt.functions()) == ["added", "first"]  # second is gone, and stays so
        with pytest.raises(fnrt.FunctionNotFound):
            await rt.invoke("second", {})


async def test_a_module_outside_the_watched_folders_is_watched_where_it_is_imported_from(
    project, tmp_path
) -> None:
    """Served from another directory (the project on PYTHONPATH), a deployed module is still
    watched: its folder on sys.path is added to what the reloader watches."""
    folder, name = project
    source = folder / f"{name}.py"
    write(source, 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with fnrt.Runtime(reload=True, reload_paths=[elsewhere]) as rt:
        await rt.deploy(name)
        assert (await rt.invoke("version", {}))["version"] == 1

        async def changed() -> bool:  # written again until the restarted watch sees it
            write(source, 2)
            return bool((await rt.invoke("version", {}))["version"] == 2)

        await wait_until(changed, "version 2 to be served", 20, poll=0.2)


async def test_functions_added_by_reference_reload_with_their_config(project) -> None:
    folder, name = project
    source = folder / f"{name}.py"
    write(source, 1)
    async with fnrt.Runtime(reload=True, reload_paths=[folder]) as rt:
        await rt.add_function("version", f"{name}:version", memory_mb=256, reserved_concurrency=5)
        assert (await rt.invoke("version", {}))["version"] == 1
        assert rt._reloader is not None
        reports: list[str] = []
        rt._reloader.report = reports.append
        write(source, 2)
        await wait_until(lambda: bool(reports), "the reload")
        assert (await rt.invoke("version", {}))["version"] == 2
        record = rt.get_function("version")
        assert record.config.memory_mb == 256 and record.config.reserved_concurrency == 5


def test_reload_without_watchfiles_says_what_to_install(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "watchfiles" else real(n, *a))
    with pytest.raises(fnrt.InvalidConfig, match=r"pip install 'fnrt\[reload\]'"):
        fnrt.Runtime(reload=True)


async def test_a_function_added_by_reference_reloads_under_its_own_environment(project) -> None:
    """A module that reads its function's variables at import (a table name, a boto3
    client's region) reloads: the new code is checked under the function's own
    configuration, not a bare discovery environment. A handler taken out of the module
    leaves the old version serving, and says so."""
    folder, name = project
    source = folder / f"{name}.py"
    template = (
        "import os\nTABLE = os.environ['TABLE']\n\ndef {attr}(event, context):\n    return [{v}, TABLE]\n"
    )
    source.write_text(template.format(attr="handler", v=1))
    async with fnrt.Runtime(reload=True, reload_paths=[folder]) as rt:
        reports: list[str] = []
        assert rt._reloader is not None
        rt._reloader.report = reports.append
        await rt.add_function("table", f"{name}:handler", environment={"TABLE": "orders"})
        assert await rt.invoke("table", {}) == [1, "orders"]

        source.write_text(template.format(attr="handler", v=2))
        await wait_until(lambda: bool(reports), "the reload")
        assert reports == [f"reloaded {name} (table) after {name}.py changed"]
        assert await rt.invoke("table", {}) == [2, "orders"]

        source.write_text(template.format(attr="renamed", v=3))
        await wait_until(lambda: len(reports) == 2, "the failed reload reported")
        assert "failed" in reports[1] and "Runtime.HandlerNotFound" in reports[1]
        assert await rt.invoke("table", {}) == [2, "orders"]  # the old version serves


async def test_settings_changed_at_run_time_survive_a_reload(project) -> None:
    """A reload takes from the decorator what was edited in it; what was set at run time
    (reserved concurrency, provisioned concurrency, a configuration update) stays, as a
    code update in Lambda leaves a function's configuration alone."""
    folder, name = project
    source = folder / f"{name}.py"
    template = (
        "import fnrt\n\n@fnrt.handler(timeout=3, memory_mb={memory})\n"
        "def settings(event, context):\n    return {memory}\n"
    )
    source.write_text(template.format(memory=128))
    async with fnrt.Runtime(reload=True, reload_paths=[folder]) as rt:
        reports: list[str] = []
        assert rt._reloader is not None
        rt._reloader.report = reports.append
        await rt.deploy(name)
        rt.put_function_concurrency("settings", 5)
        await rt.update_function_configuration("settings", timeout=7, environment={"STAGE": "dev"})

        source.write_text(template.format(memory=256))
        await wait_until(lambda: bool(reports), "the reload")
        assert await rt.invoke("settings", {}) == 256
        config = rt.get_function("settings").config
        assert config.memory_mb == 256  # edited in the decorator
        assert (config.timeout, config.environment, config.reserved_concurrency) == (7, {"STAGE": "dev"}, 5)
        assert rt.stats()["concurrency"]["reserved_total"] == 5


async def test_a_project_under_a_hidden_folder_is_watched(tmp_path) -> None:
    """Hidden folders and virtualenvs are skipped inside the watched project, not above
    it: a checkout under ``~/.worktrees/`` (or any dot-folder) reloads like any other."""
    folder = tmp_path / ".worktrees" / "project"
    folder.mkdir(parents=True)
    name = f"hot_{uuid.uuid4().hex[:8]}"
    source = folder / f"{name}.py"
    write(source, 1)
    sys.path.insert(0, str(folder))
    try:
        async with fnrt.Runtime(reload=True, reload_paths=[folder]) as rt:
            reports: list[str] = []
            assert rt._reloader is not None
            rt._reloader.report = reports.append
            await rt.deploy(name)
            assert (await rt.invoke("version", {}))["version"] == 1
            write(source, 2)
            await wait_until(lambda: bool(reports), "the reload", 10)
            assert (await rt.invoke("version", {}))["version"] == 2
    finally:
        sys.path.remove(str(folder))


@pytest.mark.skipif(sys.version_info < (3, 13), reason="subinterpreters need Python 3.13+")
async def test_a_helper_module_change_reloads_subinterpreter_sandboxes(project) -> None:
    """A change to a module the handler imports (a helper in its package) reaches new
    invocations; in subinterpreter sandboxes too, whose interpreters share the host
    process (a fresh interpreter imports the new source)."""
    folder, name = project
    package = folder / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text("VALUE = 1\n")
    (package / "app.py").write_text(
        "import fnrt\nfrom . import helper\n\n"
        "@fnrt.handler\ndef app(event, context):\n    return helper.VALUE\n"
    )
    async with fnrt.Runtime(reload=True, reload_paths=[folder], sandbox="subinterpreter") as rt:
        reports: list[str] = []
        assert rt._reloader is not None
        rt._reloader.report = reports.append
        await rt.deploy(f"{name}.app")
        assert await rt.invoke("app", {}) == 1
        (package / "helper.py").write_text("VALUE = 22\n")
        await wait_until(lambda: bool(reports), "the reload")
        assert reports == [f"reloaded {name}.app (app) after helper.py changed"]
        assert await rt.invoke("app", {}) == 22


def test_a_reload_path_that_does_not_exist_is_invalid_config(tmp_path) -> None:
    with pytest.raises(fnrt.InvalidConfig, match="does not exist"):
        fnrt.Runtime(reload=True, reload_paths=[tmp_path / "no-such-folder"])


async def test_a_watched_folder_removed_while_serving_leaves_the_others_watched(project, tmp_path) -> None:
    """A folder the reloader watches is deleted, then the watch restarts (a module from
    another folder is deployed): the runtime goes on, watching what is left."""
    folder, name = project
    doomed = tmp_path / "doomed"
    doomed.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    source = folder / f"{name}.py"
    write(source, 1)
    async with fnrt.Runtime(reload=True, reload_paths=[elsewhere, doomed]) as rt:
        reports: list[str] = []
        assert rt._reloader is not None
        rt._reloader.report = reports.append
        doomed.rmdir()
        await rt.deploy(name)  # its folder is watched too: the watch restarts
        await wait_until(lambda: any("no longer watching" in r for r in reports), "the folder dropped")

        async def changed() -> bool:  # written again until the restarted watch sees it
            write(source, 2)
            return bool((await rt.invoke("version", {}))["version"] == 2)

        await wait_until(changed, "version 2 to be served", 20, poll=0.2)


async def test_a_handler_changed_at_run_time_survives_a_reload(project) -> None:
    """UpdateFunctionConfiguration's Handler is a run-time setting too: a reload of the
    module the function was deployed from does not point it back at its decorator's
    handler."""
    folder, name = project
    source = folder / f"{name}.py"
    template = (
        "import fnrt\n\n@fnrt.handler\ndef first(event, context):\n    return ['first', {v}]\n\n"
        "@fnrt.handler\ndef second(event, context):\n    return ['second', {v}]\n"
    )
    source.write_text(template.format(v=1))
    async with fnrt.Runtime(reload=True, reload_paths=[folder]) as rt:
        reports: list[str] = []
        assert rt._reloader is not None
        rt._reloader.report = reports.append
        await rt.deploy(name)
        await rt.update_function_configuration("first", handler=f"{name}.second", timeout=7)
        assert await rt.invoke("first", {}) == ["second", 1]

        source.write_text(template.format(v=2))
        await wait_until(lambda: bool(reports), "the reload")
        assert await rt.invoke("first", {}) == ["second", 2]
        assert await rt.invoke("second", {}) == ["second", 2]
        record = rt.get_function("first")
        assert (record.attr, record.config.timeout) == ("second", 7)


async def test_a_deployment_packages_function_is_not_reloaded_by_a_project_change(project, tmp_path) -> None:
    """A function created from a package (``code_root``, CreateFunction's ZipFile) runs the
    package's code, which no edit in the project changes: a reload leaves its warm
    environments serving, it is not reloaded (only UpdateFunctionCode changes it)."""
    folder, name = project
    write(folder / f"{name}.py", 1)
    package = tmp_path / "package"
    package.mkdir()
    module = f"app_{uuid.uuid4().hex[:8]}"
    source = "import os\n\ndef handler(event, context):\n    return os.getpid()\n"
    (package / f"{module}.py").write_text(source)
    async with fnrt.Runtime(reload=True, reload_paths=[folder]) as rt:
        reports: list[str] = []
        assert rt._reloader is not None
        rt._reloader.report = reports.append
        await rt.add_function("pkg", f"{module}:handler", code_root=str(package), log_format="JSON")
        await rt.deploy(name)
        pid = await rt.invoke("pkg", {})
        generation = rt.get_function("pkg").generation

        write(folder / f"{name}.py", 2)
        await wait_until(lambda: bool(reports), "the reload")
        assert reports == [f"reloaded {name} (version) after {name}.py changed"]
        assert await rt.invoke("version", {}) == {"version": 2}
        assert rt.get_function("pkg").generation == generation
        assert await rt.invoke("pkg", {}) == pid  # the same warm environment


async def test_a_function_deleted_while_a_reload_checks_it_stays_deleted(tmp_path) -> None:
    """The reload checks a function's new code in an init phase (slow here: its init waits
    for a file); the function is deleted meanwhile. The reload does not bring it back."""
    gate = tmp_path / "gate"
    gate.touch()
    async with fnrt.Runtime(reload=True, reload_paths=[tmp_path]) as rt:
        assert rt._reloader is not None
        rt._reloader.report = lambda message: None
        await rt.add_function("g", "handlers.gated_init:handler", environment={"INIT_GATE": str(gate)})
        gate.unlink()
        reload = asyncio.ensure_future(rt._reloader.reload())
        await asyncio.sleep(0)  # the reload is in the function's init phase now
        await rt.remove_function("g")
        gate.touch()
        await reload
        assert "g" not in rt.functions()
        with pytest.raises(fnrt.FunctionNotFound):
            await rt.invoke("g", {})


async def test_a_deployed_function_deleted_while_a_reload_discovers_stays_deleted(project, tmp_path) -> None:
    """As above, for a deployed function: deleted while the reload imports its module
    (slow: the import waits for a file), it is not registered again."""
    folder, name = project
    gate = tmp_path / "gate"
    gate.touch()
    (folder / f"{name}.py").write_text(
        "import os, time\nimport fnrt\n\n"
        "while not os.path.exists(os.environ['GATE']):\n    time.sleep(0.002)\n\n"
        f"@fnrt.handler(environment={{'GATE': {str(gate)!r}}})\ndef gated(event, context):\n    return 1\n"
    )
    async with fnrt.Runtime(reload=True, reload_paths=[folder]) as rt:
        assert rt._reloader is not None
        rt._reloader.report = lambda message: None
        await rt.deploy(name)
        gate.unlink()
        reload = asyncio.ensure_future(rt._reloader.reload())
        await asyncio.sleep(0)  # the reload is discovering the module's handlers now
        await rt.remove_function("gated")
        gate.touch()
        await reload
        assert "gated" not in rt.functions()
