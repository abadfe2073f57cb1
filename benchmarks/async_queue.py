"""Async invoke end to end: durable enqueue rate and enqueue -> handler-done rate.

Baselines, same run, same disk, same SQLite settings (WAL, synchronous=FULL): a plain
aiosqlite loop that inserts and commits one row per event (what a naive durable queue
costs), and the same rows inserted in one transaction (the ceiling group commit aims at).

The store's durable intake is also measured alone (no poller draining the queue at the same
time), against one task committing 8 rows per commit: the fsync-bound ceiling for 8 callers.

Peers, same run, same no-op work, 8 enqueuing threads, 2 worker processes, timed like
fnrt's row (first enqueue to last task done): huey with ``SqliteHuey`` in a temp dir, and
dramatiq on a ``redis-server`` the benchmark starts on loopback without persistence. A
peer that is not installed gets a "skipped" row saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiosqlite

import fnrt
from fnrt.store import SQLiteStore

from ._common import Report

PAYLOAD = {"order": "A-7", "amount": 30, "card": "ok"}


async def _plain_inserts(path: Path, events: int, per_commit: int) -> float:
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, fn TEXT, payload BLOB)")
        body = b'{"order":"A-7","amount":30,"card":"ok"}'
        started = time.perf_counter()
        for start in range(0, events, per_commit):
            await db.execute("BEGIN")
            await db.executemany(
                "INSERT INTO events (fn, payload) VALUES (?, ?)",
                [("charge", body)] * min(per_commit, events - start),
            )
            await db.execute("COMMIT")
        return events / (time.perf_counter() - started)


async def _fnrt(tmp: Path, events: int, callers: int, durability: str = "fsync") -> tuple[float, float]:
    async with fnrt.Runtime(state_dir=tmp, durability=durability) as rt:  # type: ignore[arg-type]
        await rt.add_function("noop", "handlers.echo:noop", provisioned_concurrency=4)
        rt.configure_async("noop", max_retry_attempts=0)
        await rt.invoke("noop", PAYLOAD, invocation_type="Event")  # open the queue
        per_caller = events // callers

        async def caller() -> None:
            for _ in range(per_caller):
                await rt.invoke("noop", PAYLOAD, invocation_type="Event")

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        enqueued = time.perf_counter() - started
        total = per_caller * callers + 1
        # Waits in memory (polling the queue's counts would scan the table each time,
        # on the same SQLite thread the pipeline uses), then checks every event is done.
        await rt.wait_idle(600)
        finished = time.perf_counter() - started
        done = (await rt.async_queue_counts("noop")).get("done", 0)
        assert done == total, f"{done} of {total} events done"
        return per_caller * callers / enqueued, total / finished


async def _intake(path: Path, events: int, callers: int) -> tuple[float, float]:
    """The store's durable intake alone (no poller draining at the same time): enqueues/s
    from ``callers`` concurrent tasks, and events per commit."""
    async with await SQLiteStore.open(path) as store:
        queue = store.queue
        await queue.setup()
        body = b'{"order":"A-7","amount":30,"card":"ok"}'
        per_caller = events // callers
        commits = store.db.commits

        ids = itertools.count()  # request ids in the runtime's form: a prefix and a counter

        async def caller() -> None:
            for _ in range(per_caller):
                await queue.enqueue(f"c87a66c0-4671-41f1-bcdf-{next(ids):012x}", "noop", body, time.time())

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - started
        return per_caller * callers / elapsed, per_caller * callers / max(1, store.db.commits - commits)


PEER_CALLERS = 8
PEER_WORKERS = 2
REPO = Path(__file__).resolve().parent.parent  # the peers' workers import benchmarks._peer_*


def _threads_enqueue(send: Callable[[], object], events: int, callers: int) -> float:
    """``events`` sends from ``callers`` threads released together; returns the seconds
    from the release to the last send."""
    per_caller = events // callers
    gate = threading.Barrier(callers + 1)

    def caller() -> None:
        gate.wait()
        for _ in range(per_caller):
            send()

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    gate.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return started


def _wait(done: Callable[[], bool], timeout: float, what: str, poll: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not done after {timeout:.0f} s")
        time.sleep(poll)


@contextlib.contextmanager
def _worker(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _peer_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class _DoneCounter:
    """Counts the bytes huey's workers send, one per completed task (see ``_peer_huey``)."""

    def __init__(self, path: Path) -> None:
        self.path, self.count = path, 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._server, selectors.EVENT_READ)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            for key, _ in self._selector.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._server:
                    conn, _ = sock.accept()
                    self._selector.register(conn, selectors.EVENT_READ)
                    continue
                data = sock.recv(65536)
                if not data:
                    self._selector.unregister(sock)
                    sock.close()
                self.count += len(data)

    def close(self) -> None:
        self._closed = True
        self._thread.join()
        for key in list(self._selector.get_map().values()):
            assert isinstance(key.fileobj, socket.socket)
            key.fileobj.close()
        self._selector.close()


def _huey(tmp: Path, events: int) -> tuple[float, float]:
    db, done_path = tmp / "huey.db", tmp / "done.sock"
    os.environ["FNRT_BENCH_HUEY_DB"] = str(db)
    from . import _peer_huey

    task = _peer_huey.noop
    argv = [
        sys.executable,
        "-m",
        "huey.bin.huey_consumer",
        "benchmarks._peer_huey.huey",
        "--workers",
        str(PEER_WORKERS),
        "--worker-type",
        "process",
        "--no-periodic",
        # idle polling from 10 ms up to 100 ms (huey's defaults: 100 ms up to 10 s)
        "--delay",
        "0.01",
        "--max-delay",
        "0.1",
        "--quiet",
    ]
    counter = _DoneCounter(done_path)
    env = _peer_env(FNRT_BENCH_HUEY_DB=str(db), FNRT_BENCH_HUEY_DONE=str(done_path))
    try:
        with _worker(argv, env, tmp / "huey.log") as proc:
            task(PAYLOAD)  # the consumer is up and one of its workers has run a task
            _wait(lambda: counter.count >= 1 or proc.poll() is not None, 60, "huey warm-up")
            if proc.poll() is not None:
                raise RuntimeError(f"huey consumer exited: {(tmp / 'huey.log').read_text()[-2000:]}")
            total = events // PEER_CALLERS * PEER_CALLERS
            started = _threads_enqueue(lambda: task(PAYLOAD), total, PEER_CALLERS)
            enqueued = time.perf_counter() - started
            _wait(lambda: counter.count >= total + 1, 600, "huey tasks", poll=0.002)
            finished = time.perf_counter() - started
    finally:
        counter.close()
    return total / enqueued, total / finished


def _redis_server() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dramatiq(tmp: Path, events: int, server: str) -> tuple[float, float]:
    import redis

    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    argv = [
        server,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp),
        "--daemonize",
        "no",
    ]
    with _worker(argv, dict(os.environ), tmp / "redis.log"):
        client = redis.Redis.from_url(url)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        _wait(up, 30, "redis-server start")
        os.environ["FNRT_BENCH_REDIS_URL"] = url
        from . import _peer_dramatiq

        broker, actor = _peer_dramatiq.broker, _peer_dramatiq.noop
        argv = [
            sys.executable,
            "-m",
            "dramatiq",
            "benchmarks._peer_dramatiq",
            "--processes",
            str(PEER_WORKERS),
            "--threads",
            "8",
        ]
        with _worker(argv, _peer_env(FNRT_BENCH_REDIS_URL=url), tmp / "dramatiq.log") as proc:
            actor.send(PAYLOAD)  # the workers are up and have run a job
            broker.join(actor.queue_name, interval=5, timeout=60_000)
            if proc.poll() is not None:
                raise RuntimeError(f"dramatiq exited: {(tmp / 'dramatiq.log').read_text()[-2000:]}")
            total = events // PEER_CALLERS * PEER_CALLERS
            started = _threads_enqueue(lambda: actor.send(PAYLOAD), total, PEER_CALLERS)
            enqueued = time.perf_counter() - started
            # dramatiq's own wait: queue, delay queue and unacked sets all empty
            broker.join(actor.queue_name, interval=5, timeout=600_000)
            finished = time.perf_counter() - started
        client.close()
    return total / enqueued, total / finished


async def _peers_rows(report: Report, section: str, events: int, fnrt_rates: tuple[float, float]) -> None:
    fnrt_enqueue, fnrt_done = fnrt_rates
    peers: list[tuple[str, str, float, Callable[[Path], tuple[float, float]] | None, str]] = []
    try:
        import huey  # noqa: F401

        peers.append(
            ("SqliteHuey", "huey SqliteHuey, 2 process workers", 5.0, lambda tmp: _huey(tmp, events), "")
        )
    except ImportError:
        peers.append(("SqliteHuey", "", 5.0, None, "pip install huey (the bench extra)"))
    server = _redis_server()
    try:
        import dramatiq  # noqa: F401
        import redis  # noqa: F401

        missing = "" if server else "no redis-server on PATH (Debian: apt-get install redis-server)"
    except ImportError:
        missing = "pip install 'dramatiq[redis]' (the bench extra)"
    peers.append(
        (
            "dramatiq-on-Redis",
            "dramatiq RedisBroker, 2 processes x 8 threads",
            1.0,
            None if missing else (lambda tmp: _dramatiq(tmp, events, server or "")),
            missing,
        )
    )
    for name, setup, target, measure, missing in peers:
        if measure is None:
            print(f"  {name} skipped: {missing}", flush=True)
            report.add(
                section, f"enqueue -> done, 8 callers: fnrt vs {name}", "-", baseline="skipped", notes=missing
            )
            continue
        with tempfile.TemporaryDirectory(prefix="fnrt-bench-peer-") as tmp:
            try:
                enqueue, done = await asyncio.to_thread(measure, Path(tmp))
            except Exception as exc:  # a peer that breaks never fails the whole benchmark
                print(f"  {name} skipped: {exc!r}", flush=True)
                report.add(
                    section,
                    f"enqueue -> done, 8 callers: fnrt vs {name}",
                    "-",
                    baseline="skipped",
                    notes=f"{type(exc).__name__}: {exc}"[:200],
                )
                continue
        report.add(
            section,
            f"Event enqueues/s, 8 callers: fnrt vs {name}",
            f"{fnrt_enqueue:,.0f}/s",
            baseline=f"{name} {enqueue:,.0f}/s (8 threads)",
            ratio=f"{fnrt_enqueue / enqueue:.2f}x",
            notes=setup,
        )
        report.add(
            section,
            f"enqueue -> done, 8 callers: fnrt vs {name}",
            f"{fnrt_done:,.0f} events/s",
            baseline=f"{name} {done:,.0f} tasks/s",
            ratio=f"{fnrt_done / done:.2f}x (target >= {target:g}x)",
            notes=f"{setup}; {events // PEER_CALLERS * PEER_CALLERS:,} no-op tasks",
        )


async def run(report: Report, quick: bool = False) -> None:
    section = "async invoke"
    events = 4000 if quick else 20000
    with tempfile.TemporaryDirectory(prefix="fnrt-bench-") as tmp:
        one_by_one = await _plain_inserts(Path(tmp) / "plain.db", min(events, 2000), 1)
        batched = await _plain_inserts(Path(tmp) / "batched.db", events, events)
        # The fsync-bound ceiling for 8 callers: one task committing 8 rows at a time.
        eight = await _plain_inserts(Path(tmp) / "eight.db", min(events, 8000), 8)
        for callers in (8, 256):
            rate, per_commit = await _intake(Path(tmp) / f"intake-{callers}", events, callers)
            if callers == 8:
                baseline, ratio = f"8 rows per commit (fsync-bound ceiling) {eight:,.0f}/s", rate / eight
                target = ">= 0.8x"
            else:
                baseline, ratio, target = f"one txn {batched:,.0f}/s", rate / 50_000, ">= 1x 50,000/s"
            report.add(
                section,
                f"durable Event intake, the store alone (no poller), {callers} concurrent callers",
                f"{rate:,.0f}/s, {per_commit:.1f} events per commit",
                baseline=baseline,
                ratio=f"{ratio:.2f}x (target {target})",
                notes="SQLiteStore.queue.enqueue, synchronous=FULL",
            )
        runs = [(8, "fsync"), (64, "fsync"), (256, "fsync"), (8, "process"), (256, "process")]
        fnrt_8 = (0.0, 0.0)
        for callers, durability in runs:
            state = Path(tmp) / f"fnrt-{callers}-{durability}"
            enqueue_rate, end_to_end = await _fnrt(state, events, callers, durability)
            if (callers, durability) == (8, "fsync"):
                fnrt_8 = (enqueue_rate, end_to_end)
            kind = "durable" if durability == "fsync" else "durability='process'"
            report.add(
                section,
                f"{kind} Event enqueues/s, {callers} concurrent callers",
                f"{enqueue_rate:,.0f}/s",
                baseline=f"aiosqlite commit per row {one_by_one:,.0f}/s; one txn {batched:,.0f}/s",
                ratio=f"{enqueue_rate / one_by_one:.1f}x per-row",
            )
            report.add(
                section,
                f"  enqueue -> no-op handler done, {callers} callers ({durability})",
                f"{end_to_end:,.0f} events/s",
                notes="includes the enqueue phase",
            )
    await _peers_rows(report, section, events, fnrt_8)
