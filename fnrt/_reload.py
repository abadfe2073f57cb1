"""Hot reload: new code for new invocations, without a restart and without cutting any off.

``Runtime(reload=True)`` (``python -m fnrt serve --reload``) watches the project's Python
files with watchfiles (a Rust file watcher, no polling loop of ours). When one changes,
every module that functions run from is checked in a fresh discovery sandbox:

- it imports: its functions are registered again (a new generation). New invocations get
  environments initialized from the new code; warm environments of the old code finish
  the event they run and retire. Event-invoke config and what was set at run time
  (concurrency, a configuration update) stay; a decorator's edited arguments apply.
  A function added by reference is checked under its own configuration (its
  environment, its handler's name).
- it fails to import (a syntax error half-way through an edit): the old version keeps
  serving and the error is reported once, until the module changes again.

Any change under a watched folder reloads every module in use, since a handler module's
imports from the project cannot be seen from the host; a discovery sandbox costs a
fork and an import, so that is cheap. Stale bytecode of a changed file is removed so the
next import compiles the new source even within the same second.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FnrtError, InvalidConfig
from .sandbox._protocol import HOST_CWD

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["Reloader", "check_available"]

_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache", ".ruff_cache", ".tox"}


def check_available() -> None:
    """Raise :class:`InvalidConfig` unless watchfiles is installed."""
    if importlib.util.find_spec("watchfiles") is None:
        raise InvalidConfig("reload=True needs watchfiles: pip install 'fnrt[reload]'")


def _python_source(path: str, roots: Sequence[str]) -> bool:
    """A Python file of the project: not in a folder that holds no project code (a
    virtualenv, caches, hidden folders) below the watched root it is under. The folders
    above the root do not count: a project checked out under ``~/.worktrees/`` is watched."""
    if not path.endswith(".py"):
        return False
    full = os.path.abspath(path)
    inside = [root for root in map(os.path.abspath, roots) if _within_path(full, root)]
    parts = Path(os.path.relpath(full, max(inside, key=len))).parts if inside else Path(full).parts
    return not any(p in _SKIP_DIRS or p.startswith(".") for p in parts)


def _within_path(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _drop_bytecode(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            os.unlink(importlib.util.cache_from_source(path))
        except (OSError, ValueError, NotImplementedError):
            pass


def module_folder(module: str) -> str | None:
    """The folder to watch for ``module``: the ``sys.path`` entry its top-level package or
    file is found in (the first, as the import system looks), or ``None``."""
    top = module.split(".")[0]
    for entry in sys.path:
        base = Path(entry or HOST_CWD)
        as_file = (base / Path(*module.split("."))).with_suffix(".py")
        if (base / top).is_dir() and ((base / top / "__init__.py").is_file() or as_file.is_file()):
            found = base / top  # a package (regular or namespace): its own folder
        elif (base / f"{top}.py").is_file():
            found = base
        else:
            continue
        if {"site-packages", "dist-packages"} & set(found.parts):
            return None  # installed code is not a project being edited
        return os.fspath(found.resolve())
    return None


def _missing(paths: Iterable[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


def _within(path: str, folder: str) -> bool:
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


class Reloader:
    """Watches ``paths`` and reloads ``runtime``'s modules when Python files change."""

    def __init__(
        self,
        runtime: Runtime,
        paths: Sequence[str | os.PathLike[str]],
        *,
        report: Callable[[str], None] | None = None,
        debounce_ms: int = 50,
    ) -> None:
        self.runtime = runtime
        self.paths = [os.fspath(p) for p in paths]
        missing = _missing(self.paths)
        if missing:
            raise InvalidConfig(f"reload_paths: {', '.join(map(repr, missing))} does not exist")
        self.report = report
        self.debounce_ms = debounce_ms
        self._errors: dict[str, str] = {}  # module -> the import error reported for it
        self.reloads = 0
        self._rewatch: Any = None  # set while watching: watch_module() restarts it with more paths

    def watch_module(self, module: str) -> None:
        """Also watch the folder ``module`` is imported from, when it is outside the
        watched ones (a project on ``PYTHONPATH``, served from another directory). Found on
        ``sys.path`` by file name: nothing of the module is imported in the host."""
        folder = module_folder(module)
        if folder is None or any(_within(folder, watched) for watched in self.paths):
            return
        self.paths.append(folder)
        if self._rewatch is not None:
            self._rewatch.set()

    def _say(self, message: str, **fields: Any) -> None:
        self.runtime._log.warning(message, **fields)
        if self.report is not None:
            self.report(message)

    async def run(self) -> None:
        """Watch until cancelled (a supervised task of the runtime)."""
        import anyio
        import watchfiles

        while True:  # again with more paths when watch_module() adds one
            self._rewatch = rewatch = anyio.Event()
            if not self.paths:  # every folder watched is gone: until one is added
                await rewatch.wait()
                continue
            try:
                async for changes in watchfiles.awatch(
                    *self.paths,
                    watch_filter=lambda _, path: _python_source(path, self.paths),
                    debounce=self.debounce_ms,
                    step=20,
                    rust_timeout=500,
                    stop_event=rewatch,
                ):
                    changed = sorted({path for _, path in changes})
                    _drop_bytecode(changed)
                    await self.reload(changed)
            except FileNotFoundError:  # a watched folder was removed: watch the others
                gone = _missing(self.paths)
                if not gone:
                    raise
                self.paths = [p for p in self.paths if p not in gone]
                self._say(f"no longer watching {', '.join(gone)}: removed")

    async def reload(self, changed: Sequence[str] = ()) -> dict[str, list[str]]:
        """Reload every module in use; returns ``{module: functions}`` that were reloaded."""
        done: dict[str, list[str]] = {}
        for module in self.runtime._modules_in_use():
            try:
                names = await self.runtime._reload_module(module)
            except FnrtError as exc:
                message = f"{type(exc).__name__}: {exc}"
                if self._errors.get(module) != message:
                    self._errors[module] = message
                    self._say(f"reload of {module} failed; the old version keeps serving: {message}")
                continue
            self._errors.pop(module, None)
            done[module] = names
        if done:
            self.reloads += 1
            files = ", ".join(Path(p).name for p in changed[:3]) + (" ..." if len(changed) > 3 else "")
            summary = "; ".join(f"{m} ({', '.join(n)})" for m, n in done.items())
            self._say(f"reloaded {summary}" + (f" after {files} changed" if files else ""))
        return done
