"""The durable store: protocols every backend implements, and the backends.

All SQL lives under this package. Sources talk to the protocols (:class:`QueueStore`,
:class:`StreamStore`, through a :class:`Store`), never to SQL, so the SQLite default
(one file) and PostgreSQL (many hosts, ``fnrt[postgres]``) sit behind the same methods
(DESIGN.md section 9). :func:`open_store` picks the backend from a path or a URL.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..errors import InvalidConfig
from ._db import Database
from ._protocols import QueueStore, Store, StreamStore
from ._sqlite import SCHEMA_VERSION, SQLiteStore
from ._types import Checkpoint, MappingRow, Outcome, QueuedEvent, Shard, StoredRecord

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


async def open_store(spec: str | os.PathLike[str] | Store, **options: Any) -> Store:
    """Open the store ``spec`` names: a ``postgresql://`` URL (needs
    ``pip install 'fnrt[postgres]'``), or a path (a state file, or a directory holding
    ``fnrt.sqlite3``; SQLite). A :class:`Store` passes through as it is. ``options`` go
    to the backend's ``open`` (for SQLite: ``read_only``, ``max_bytes``, ...).

    Raises :class:`~fnrt.errors.StoreUnavailable` when the store cannot be used (not an
    fnrt store, newer schema, read-only, unreachable) and
    :class:`~fnrt.errors.InvalidConfig` for a spec it does not understand."""
    if isinstance(spec, Store):
        return spec
    if isinstance(spec, str) and spec.startswith(_POSTGRES_SCHEMES):
        try:
            postgres = importlib.import_module("fnrt.store.postgres")
        except ImportError as exc:
            raise InvalidConfig(
                f"a postgresql:// store needs the PostgreSQL backend: pip install 'fnrt[postgres]' ({exc})"
            ) from exc
        opener = getattr(postgres, "open_store", None) or postgres.PostgresStore.open
        store: Store = await opener(spec, **options)
        return store
    if isinstance(spec, str) and "://" in spec:
        raise InvalidConfig(
            f"unknown store {spec.split('://', 1)[0]}://...: give a path (SQLite) or a postgresql:// URL"
        )
    if not isinstance(spec, (str, os.PathLike)) or not os.fspath(spec):
        raise InvalidConfig(f"a store is a path or a postgresql:// URL, got {spec!r}")
    return await SQLiteStore.open(spec, **options)


__all__ = [
    "SCHEMA_VERSION",
    "Checkpoint",
    "Database",
    "MappingRow",
    "Outcome",
    "QueueStore",
    "QueuedEvent",
    "SQLiteStore",
    "Shard",
    "Store",
    "StoredRecord",
    "StreamStore",
    "open_store",
]
