"""The runtime's store, opened once, and closed (or handed back) at the end."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from .errors import RuntimeClosed
from .store import QueueStore, Store, StreamStore, open_store

__all__ = ["State"]


class State:
    """The runtime's store, opened once. ``spec`` is a path or URL the runtime opens and
    closes, a :class:`~fnrt.store.Store` the caller owns, or ``None``: then an SQLite file
    in a temporary directory removed at close (durable across crashes of handlers and
    sandboxes, not across restarts of the host)."""

    def __init__(
        self,
        spec: str | Path | Store | None,
        *,
        durability: str = "fsync",
        on_open: Callable[[Store], Awaitable[None]] | None = None,
    ) -> None:
        self.spec = spec
        self.durability = durability
        self._on_open = on_open
        self._temp: tempfile.TemporaryDirectory[str] | None = None
        self._store: Store | None = None
        self._lock = asyncio.Lock()
        self.closed = False

    async def store(self) -> Store:
        if self._store is None:
            async with self._lock:  # concurrent first callers share one store
                if self.closed:
                    raise RuntimeClosed("the runtime is closed")
                if self._store is None:
                    spec = self.spec
                    if spec is None:
                        self._temp = tempfile.TemporaryDirectory(prefix="fnrt-")
                        spec = Path(self._temp.name) / "fnrt.sqlite3"
                    options = {} if isinstance(spec, str) else {"durability": self.durability}
                    store = await open_store(spec, **options)
                    if self._on_open is not None:
                        try:
                            await self._on_open(store)
                        except BaseException:
                            if store is not self.spec:
                                await store.close()
                            raise
                    self._store = store
        return self._store

    @property
    def opened(self) -> Store | None:
        """The store if it is open (maintenance must not open one just to clean it)."""
        return self._store

    async def queue(self) -> QueueStore:
        return (await self.store()).queue

    async def streams(self) -> StreamStore:
        return (await self.store()).streams

    async def close(self) -> None:
        async with self._lock:  # an open in flight finishes first and is closed here
            self.closed = True
            store, self._store = self._store, None
            try:
                if store is not None and store is not self.spec:  # a given Store is the caller's
                    await store.close()
            finally:
                if self._temp is not None:
                    await asyncio.to_thread(self._temp.cleanup)  # rmtree: off the event loop
                    self._temp = None
