"""The SQLite state file fails safely: what is not an fnrt store is refused and left as it
was, a full or read-only store is ``StoreUnavailable`` with its path and cause, and nothing
is acknowledged that was not committed. Real files throughout; the faults are real SQLite
errors (a size cap gives SQLite's own "database or disk is full")."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

import fnrt
from fnrt.errors import InvalidConfig, StoreUnavailable
from fnrt.store import SCHEMA_VERSION, SQLiteStore, _queue, _streams, open_store

from .conftest import wait_until

T0 = 1_700_000_000.0


async def check_refused(path: Path, match: str) -> None:
    """Opening ``path`` (as a store and as a runtime's state) is refused; the file stays."""
    before = path.read_bytes()
    with pytest.raises(StoreUnavailable, match=match) as caught:
        await open_store(path)
    assert caught.value.path == str(path)
    with pytest.raises(StoreUnavailable, match=match):
        async with fnrt.Runtime(state_dir=path.parent):
            raise AssertionError("the runtime started on a bad state file")
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # nothing left beside it


async def test_a_new_store_is_created_whole_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state" / "fnrt.sqlite3"
    async with await open_store(path) as store:
        assert store.location == str(path)
        await store.queue.enqueue("r-1", "f", b"{}", T0)
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"
    assert [p.name for p in path.parent.iterdir()] == ["fnrt.sqlite3"]  # no temporary left
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM fnrt_schema").fetchone() == (SCHEMA_VERSION,)
    async with await open_store(path.parent) as store:  # a directory means its fnrt.sqlite3
        assert await store.queue.counts() == {"queued": 1}


async def test_two_stores_creating_one_file_at_once_share_it(tmp_path: Path) -> None:
    path = tmp_path / "fnrt.sqlite3"
    stores = await asyncio.gather(*[open_store(path) for _ in range(4)])
    try:
        await asyncio.gather(*[s.queue.enqueue(f"r-{n}", "f", b"{}", T0) for n, s in enumerate(stores)])
        for store in stores:
            assert await store.queue.counts() == {"queued": 4}
    finally:
        for store in stores:
            await store.close()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("fnrt.sqlite3")] == []


async def test_a_zero_length_state_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fnrt.sqlite3"
    path.touch()
    await check_refused(path, "empty")
    assert path.stat().st_size == 0


async def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fnrt.sqlite3"
    path.write_bytes(b"these are not the bytes you are looking for\n" * 200)
    await check_refused(path, "not an SQLite database")


async def test_a_write_ahead_log_without_its_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fnrt.sqlite3"
    async with await open_store(path) as store:
        other = sqlite3.connect(path)  # keeps the log from being folded back at close
        await store.queue.enqueue("r-1", "f", b"{}", T0)
        wal = Path(f"{path}-wal").read_bytes()
    other.close()
    path.unlink()
    Path(f"{path}-wal").write_bytes(wal)  # the database was deleted, its log was not
    with pytest.raises(StoreUnavailable, match=r"write-ahead log of a missing fnrt\.sqlite3"):
        await open_store(path)
    assert not path.exists()


async def test_an_sqlite_database_of_another_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fnrt.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (9.5)")
    conn.close()
    await check_refused(path, "another program.*invoices")


async def test_a_database_of_views_or_triggers_only_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fnrt.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE VIEW report AS SELECT 1 AS one")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreUnavailable, match=r"another program.*view report"):
        await open_store(path)
    assert path.read_bytes() == before


async def test_a_table_of_the_same_name_that_is_not_fnrts_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fnrt.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE streams (id INTEGER PRIMARY KEY)")
    conn.close()
    await check_refused(path, "'streams' that is not fnrt's")


async def test_a_schema_from_a_newer_fnrt_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fnrt.sqlite3"
    async with await open_store(path) as store:
        await store.queue.enqueue("r-1", "f", b"{}", T0)
    with sqlite3.connect(path) as conn:  # what a later fnrt would have written
        conn.execute("UPDATE fnrt_schema SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    await check_refused(path, f"newer fnrt \\(schema version {SCHEMA_VERSION + 1}.*upgrade fnrt")


async def test_a_store_from_before_the_schema_version_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "fnrt.sqlite3"
    with sqlite3.connect(path) as conn:  # fnrt 0.1 wrote these tables and no version
        for statement in _queue.SCHEMA[:2] + _streams.SCHEMA:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO async_events (request_id, function, payload, enqueued_at, run_at) "
            "VALUES ('old-1', 'f', x'7b7d', ?, ?)",
            (T0, T0),
        )
    conn.close()
    async with await open_store(path) as store:
        event = await store.queue.event("old-1")
        assert event is not None and event["state"] == "queued"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM fnrt_schema").fetchone() == (SCHEMA_VERSION,)
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert {"async_events_request", "async_events_finished"} <= indexes


_STREAMS_V1 = """CREATE TABLE streams (
    name TEXT PRIMARY KEY, next_seq INTEGER NOT NULL, next_shard INTEGER NOT NULL,
    retention REAL NOT NULL, created_at REAL NOT NULL
)"""  # the streams table before its mode and tags columns


async def test_a_store_from_before_the_stream_mode_gets_the_column_and_keeps_its_streams(
    tmp_path: Path,
) -> None:
    path = tmp_path / "fnrt.sqlite3"
    async with await open_store(path) as store:
        await store.streams.create_stream("old", 1, 86_400.0, T0)
    with sqlite3.connect(path) as conn:  # as the fnrt before the columns left it
        conn.execute("ALTER TABLE streams RENAME TO streams_now")
        conn.execute(_STREAMS_V1)
        conn.execute(
            "INSERT INTO streams SELECT name, next_seq, next_shard, retention, created_at FROM streams_now"
        )
        conn.execute("DROP TABLE streams_now")
    conn.close()
    async with await open_store(path, read_only=True) as store:  # inspection writes nothing
        info = await store.streams.stream_info("old")
        assert info is not None and info["mode"] == "PROVISIONED" and info["tags"] == {}
    async with await open_store(path) as store:
        assert await store.streams.create_stream("new", 1, 86_400.0, T0, mode="ON_DEMAND")
        assert await store.streams.update_stream("old", tags={"team": "a"})
        old, new = await store.streams.stream_info("old"), await store.streams.stream_info("new")
        assert old is not None and (old["mode"], old["tags"]) == ("PROVISIONED", {"team": "a"})
        assert new is not None and new["mode"] == "ON_DEMAND"
    with sqlite3.connect(path) as conn:  # an older fnrt's own statements still work on it
        assert conn.execute("SELECT version FROM fnrt_schema").fetchone() == (SCHEMA_VERSION,)
        conn.execute(
            "INSERT INTO streams (name, next_seq, next_shard, retention, created_at) "
            "VALUES ('older', 0, 1, 1, 1)"
        )
    conn.close()
    async with await open_store(path) as store:
        older = await store.streams.stream_info("older")
        assert older is not None and older["mode"] == "PROVISIONED"


async def test_a_state_dir_that_cannot_be_created_is_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = blocker / "state" / "fnrt.sqlite3"
    with pytest.raises(StoreUnavailable) as caught:
        await open_store(path)
    assert caught.value.path == str(path) and isinstance(caught.value.cause, OSError)
    with pytest.raises(StoreUnavailable, match="a-file"):
        async with fnrt.Runtime(state_dir=blocker / "state"):
            pass


async def test_a_store_spec_it_does_not_know_is_invalid_config(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="unknown store redis://"):
        await open_store("redis://localhost/0")
    with pytest.raises(InvalidConfig, match="path or a postgresql:// URL"):
        await open_store("")


async def test_a_postgres_url_without_the_backend_says_what_to_install(tmp_path: Path) -> None:
    try:
        import fnrt.store.postgres  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidConfig, match=r"pip install 'fnrt\[postgres\]'"):
            await open_store("postgresql://fnrt@localhost/fnrt")
    else:
        pytest.skip("the PostgreSQL backend is installed")


# -- full disk, read-only, locked -----------------------------------------------------


async def test_a_full_disk_is_store_unavailable_and_nothing_unstored_is_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "fnrt.sqlite3"
    await (await open_store(path)).close()
    acknowledged: list[str] = []
    failures: list[StoreUnavailable] = []
    async with await SQLiteStore.open(path, max_bytes=200_000) as store:  # SQLite's own SQLITE_FULL
        body = b"x" * 3000

        async def enqueue(n: int) -> None:
            try:
                await store.queue.enqueue(f"r-{n}", "f", body, T0)
            except StoreUnavailable as exc:
                failures.append(exc)
            else:
                acknowledged.append(f"r-{n}")

        for wave in range(20):  # group commits of 10 until the disk is "full"
            await asyncio.gather(*[enqueue(wave * 10 + k) for k in range(10)])
            if failures:
                break
        assert failures and acknowledged
        error = failures[0]
        assert "disk full" in str(error) and error.path == str(path)
        assert isinstance(error.cause, sqlite3.OperationalError)
        with pytest.raises(StoreUnavailable, match="disk full"):
            await store.streams.create_stream("s", 1000, 86_400.0, T0)
        assert await store.queue.counts() == {"queued": len(acknowledged)}  # reads still work
    async with await open_store(path) as store:  # room again: exactly the acknowledged ones
        events = await store.queue.events()
        assert sorted(e["request_id"] for e in events) == sorted(acknowledged)
        await store.queue.enqueue("after", "f", b"{}", T0)
        assert (await store.queue.event("after")) is not None


@pytest.mark.parametrize("how", ["deleted", "replaced", "folder-removed", "wal-deleted"])
async def test_a_state_file_taken_away_while_open_acknowledges_nothing_more(tmp_path: Path, how: str) -> None:
    # SQLite goes on writing into the unlinked file: every write acknowledged after would
    # be gone at the next start. The path must still name the file that was opened.
    folder = tmp_path / "state"
    folder.mkdir()
    path = folder / "fnrt.sqlite3"
    other = tmp_path / "other.sqlite3"
    await (await open_store(other)).close()
    async with await open_store(path) as store:
        await store.queue.enqueue("r-1", "f", b"{}", T0)
        if how == "deleted":
            path.unlink()
        elif how == "replaced":
            os.replace(other, path)
        elif how == "wal-deleted":
            Path(f"{path}-wal").unlink()
        else:
            shutil.rmtree(folder)
        with pytest.raises(StoreUnavailable, match="deleted or replaced while open") as caught:
            await store.queue.enqueue("r-2", "f", b"{}", T0)
        assert caught.value.path == str(path)
        with pytest.raises(StoreUnavailable, match="deleted or replaced"):
            await store.streams.create_stream("s", 1000, 86_400.0, T0)


async def test_a_relative_state_path_still_names_its_file_after_a_change_of_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    async with await open_store(Path("fnrt.sqlite3")) as store:
        await store.queue.enqueue("r-1", "f", b"{}", T0)
        os.chdir(tmp_path / "elsewhere")  # a subinterpreter handler's os.chdir moves the process
        await store.queue.enqueue("r-2", "f", b"{}", T0)
        assert (await store.queue.counts()) == {"queued": 2}


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    done = subprocess.run(command, capture_output=True)
    return done.returncode == 0


async def test_a_full_disk_recovers_once_there_is_a_little_room_again(tmp_path: Path) -> None:
    # A real small file system: the WAL grows into all the room there is (SQLite
    # checkpoints it only every 4 MB), so freeing less than that used to leave the store
    # "disk full" for good. Now the next write checkpoints it first, and it stays small.
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "4m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        path = small / "fnrt.sqlite3"
        async with await open_store(path) as store:
            filler = small / "filler"
            with open(filler, "wb") as f:
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
            size = filler.stat().st_size
            os.truncate(filler, size - 600_000)  # 600 KB: the WAL takes it all
            n = 0
            with pytest.raises(StoreUnavailable, match="disk full"):
                for n in range(10_000):
                    await store.queue.enqueue(f"a-{n}", "f", b"x" * 1000, T0)
            os.truncate(filler, size - 1_600_000)  # a megabyte more, well under 4 MB
            for m in range(400):
                await store.queue.enqueue(f"b-{m}", "f", b"x" * 1000, T0)
            assert (await store.queue.counts())["queued"] == n + 400
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


async def test_while_another_process_holds_the_lock_writes_fail_fast_after_one_busy_timeout(
    tmp_path: Path,
) -> None:
    # Every write waited the whole busy timeout in turn, so a caller queued behind others
    # waited all of theirs (55 s to close a runtime): after one write found the lock held,
    # the next ones wait briefly.
    path = tmp_path / "fnrt.sqlite3"
    async with await SQLiteStore.open(path, busy_timeout=1.0) as store:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.queue.enqueue("r-1", "f", b"{}", T0)
            started = time.monotonic()
            for n in range(4):
                with pytest.raises(StoreUnavailable, match="locked"):
                    await store.queue.enqueue(f"r-{n}", "f", b"{}", T0)
                with pytest.raises(StoreUnavailable, match="locked"):
                    await store.streams.acquire_lease("m", "s", "a", T0, 10)
            assert time.monotonic() - started < 4.0  # not 8 busy timeouts of 1 s
            other.execute("ROLLBACK")
        finally:
            other.close()
        await store.queue.enqueue("r-9", "f", b"{}", T0)  # the lock is gone: at once again
        assert [e["request_id"] for e in await store.queue.events()] == ["r-9"]


async def test_a_runtime_closes_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    # Closing writes bookkeeping (leases given back, streams stopped) that expires by
    # itself: a store locked meanwhile is logged, it does not fail the block that ran.
    async with fnrt.Runtime(state_dir=tmp_path) as rt:
        await rt.add_function("f", "handlers.echo:echo")
        await rt.invoke("f", {}, invocation_type="Event")
        await rt.wait_idle()
        await rt.create_stream("s")
        await rt.add_stream_mapping("s", "f")
        other = sqlite3.connect(tmp_path / "fnrt.sqlite3", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
    other.close()


async def test_a_fifo_at_the_state_path_is_refused_not_waited_on(tmp_path: Path) -> None:
    path = tmp_path / "fnrt.sqlite3"
    os.mkfifo(path)
    with pytest.raises(StoreUnavailable, match="not a regular file"):
        await asyncio.wait_for(open_store(path), 10)


async def test_a_read_only_store_is_store_unavailable_on_write(tmp_path: Path) -> None:
    path = tmp_path / "fnrt.sqlite3"
    async with await open_store(path) as store:
        await store.queue.enqueue("r-1", "f", b"{}", T0)
    async with await open_store(path, read_only=True) as store:
        assert await store.queue.counts() == {"queued": 1}
        with pytest.raises(StoreUnavailable, match="read-only") as caught:
            await store.queue.enqueue("r-2", "f", b"{}", T0)
        assert caught.value.path == str(path)
        assert isinstance(caught.value.cause, sqlite3.OperationalError)
        with pytest.raises(StoreUnavailable, match="read-only"):
            await store.queue.take("f", T0, 1, "a", T0 + 30)
    with pytest.raises(StoreUnavailable, match="no such file"):
        await open_store(tmp_path / "missing.sqlite3", read_only=True)


def make_read_only(path: Path) -> bool:
    """Make ``path`` truly read-only for this process; ``False`` where that cannot be done.

    Permissions do not stop root; an immutable file (``chattr +i``) does, where the file
    system and the container allow it."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        return True
    chattr = shutil.which("chattr")
    if chattr is None:
        return False
    return subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode == 0


def make_writable(path: Path) -> None:
    if os.geteuid() != 0:
        path.chmod(0o644)
    else:
        subprocess.run([shutil.which("chattr") or "chattr", "-i", str(path)], capture_output=True)


async def test_a_read_only_state_file_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "fnrt.sqlite3"
    async with await open_store(path) as store:
        await store.queue.enqueue("r-1", "f", b"{}", T0)
    if not make_read_only(path):
        pytest.skip("cannot make a file read-only for this user here")
    try:
        before = path.read_bytes()
        with pytest.raises(StoreUnavailable, match="read-only") as caught:
            await open_store(path)
        assert caught.value.path == str(path)
        with pytest.raises(StoreUnavailable, match="read-only"):
            async with fnrt.Runtime(state_dir=tmp_path):
                pass
        assert path.read_bytes() == before
        async with await open_store(path, read_only=True) as store:  # still readable
            assert await store.queue.counts() == {"queued": 1}
    finally:
        make_writable(path)


async def test_a_write_lock_held_too_long_is_store_unavailable_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "fnrt.sqlite3"
    async with await SQLiteStore.open(path, busy_timeout=0.05) as store:
        other = sqlite3.connect(path, isolation_level=None)  # another process's writer
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailable, match="locked") as caught:
                await store.queue.enqueue("r-1", "f", b"{}", T0)
            assert caught.value.path == str(path)
            results = await asyncio.gather(
                *[store.queue.enqueue(f"g-{n}", "f", b"{}", T0) for n in range(5)], return_exceptions=True
            )  # a group commit that cannot lock fails every caller at once
            assert all(isinstance(r, StoreUnavailable) for r in results)
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.streams.acquire_lease("m", "s", "a", T0, 10)
            other.execute("ROLLBACK")
        finally:
            other.close()
        await store.queue.enqueue("r-2", "f", b"{}", T0)  # the lock is gone: works again
        assert [e["request_id"] for e in await store.queue.events()] == ["r-2"]


@pytest.mark.parametrize("cancels", [1, 2], ids=["cancelled", "cancelled-again-while-rolling-back"])
async def test_cancelled_while_waiting_for_the_write_lock_leaves_no_transaction(
    tmp_path: Path, cancels: int
) -> None:
    """A writer cancelled while its BEGIN waits for another connection's lock rolls that
    BEGIN back before giving its own lock up; a second cancellation meanwhile (a task group
    tearing down, a client that went away) must not leave the BEGIN open for every later
    writer to fail on."""
    path = tmp_path / "fnrt.sqlite3"
    async with await SQLiteStore.open(path, busy_timeout=2.0) as store:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            waiting = asyncio.ensure_future(store.streams.create_stream("s", 1, 86_400.0, T0))
            await wait_until(store.db._lock.locked, "the transaction to start")
            for _ in range(cancels):
                await asyncio.sleep(0.02)  # on the connection's thread, BEGIN waits for the lock
                waiting.cancel()
            other.execute("ROLLBACK")
            with pytest.raises(asyncio.CancelledError):
                await waiting
        finally:
            other.close()
        assert not store.db.conn.in_transaction
        assert await store.streams.create_stream("s", 1, 86_400.0, T0) is True
        assert await store.streams.create_stream("s", 1, 86_400.0, T0) is False


async def test_one_bad_write_in_a_group_commit_fails_only_its_caller(tmp_path: Path) -> None:
    async with await open_store(tmp_path) as store:
        good = [store.queue.enqueue(f"ok-{n}", "f", b"{}", T0) for n in range(20)]
        bad = store.queue.enqueue("bad", None, b"{}", T0)  # type: ignore[arg-type]  # NOT NULL
        results = await asyncio.gather(*good[:10], bad, *good[10:], return_exceptions=True)
        assert [r for r in results if r is not None] == [results[10]]
        error = results[10]
        assert isinstance(error, StoreUnavailable) and isinstance(error.cause, sqlite3.IntegrityError)
        assert await store.queue.counts() == {"queued": 20}
        assert await store.queue.event("bad") is None


async def test_a_take_while_events_are_committed_joins_their_commit(tmp_path: Path) -> None:
    async with await open_store(tmp_path) as store:
        before = store.db.commits
        enqueues = [store.queue.enqueue(f"r-{n}", "f", b"{}", T0) for n in range(8)]
        *acks, taken = await asyncio.gather(*enqueues, store.queue.take("f", T0, 100, "me", T0 + 60))
        assert acks == [None] * 8
        # One transaction stored the events and leased them: the take ran after the batch's
        # statements, inside its BEGIN IMMEDIATE, so it saw what that commit stored.
        assert [e.request_id for e in taken] == [f"r-{n}" for n in range(8)]
        assert store.db.commits == before + 1
        assert await store.queue.counts() == {"leased": 8}


async def test_a_take_that_joined_a_commit_with_a_bad_write_still_answers(tmp_path: Path) -> None:
    async with await open_store(tmp_path) as store:
        good = [store.queue.enqueue(f"ok-{n}", "f", b"{}", T0) for n in range(3)]
        bad = store.queue.enqueue("bad", None, b"{}", T0)  # type: ignore[arg-type]  # NOT NULL
        *results, taken = await asyncio.gather(
            *good, bad, store.queue.take("f", T0, 100, "me", T0 + 60), return_exceptions=True
        )
        assert results[:3] == [None] * 3 and isinstance(results[3], StoreUnavailable)
        assert not isinstance(taken, BaseException)
        assert sorted(e.request_id for e in taken) == ["ok-0", "ok-1", "ok-2"]


async def test_an_idle_take_does_not_wait_for_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "fnrt.sqlite3"
    async with await SQLiteStore.open(path, busy_timeout=0.05) as store:
        await store.queue.setup()
        other = sqlite3.connect(path, isolation_level=None)  # another process's writer
        try:
            other.execute("BEGIN IMMEDIATE")
            assert await store.queue.take("f", T0, 10, "me", T0 + 60) == []  # nothing due: a read
        finally:
            other.execute("ROLLBACK")
            other.close()


async def test_a_store_of_an_older_fnrt_gains_the_mapping_filters_column(tmp_path: Path) -> None:
    # A version-1 file written before mappings had filters: it opens, its mapping reads back
    # with none, and filters can be stored; the schema version stays, so that older fnrt
    # still opens the file.
    path = tmp_path / "fnrt.sqlite3"
    with sqlite3.connect(path) as conn:
        for statement in _queue.SCHEMA + _streams.SCHEMA:
            conn.execute(statement)
        conn.execute(
            "CREATE TABLE fnrt_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, "
            "created_at REAL NOT NULL, opened_at REAL NOT NULL)"
        )
        conn.execute("INSERT INTO fnrt_schema VALUES (1, 1, ?, ?)", (T0, T0))
        conn.execute(
            "INSERT INTO stream_mappings (uuid, stream, function, config, created_at) "
            "VALUES ('old', 's', 'f', '{\"batch_size\": 7}', ?)",
            (T0,),
        )
    conn.close()
    async with await open_store(path) as store:
        [row] = await store.streams.mappings()
        assert (row.uuid, row.config, row.filters) == ("old", {"batch_size": 7}, ())
        await store.streams.create_stream("s", 1, 86_400.0, T0)
        pattern = '{"data": {"type": ["buy"]}}'
        await store.streams.create_mapping("new", "s", "f", {}, "TRIM_HORIZON", None, T0, filters=[pattern])
        found = await store.streams.mapping("s", "f")
        assert found is not None and found.uuid == "old" and found.filters == (pattern,)
    async with await open_store(path) as store:  # opening again adds nothing twice
        assert [m.filters for m in await store.streams.mappings()] == [(pattern,)]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM fnrt_schema").fetchone() == (SCHEMA_VERSION,) == (1,)
        columns = [r[1] for r in conn.execute("PRAGMA table_info(stream_mappings)")]
    conn.close()
    assert columns.count("filters") == 1
