"""``python -m benchmarks``: every benchmark, each row with its baseline from the same run.

    python -m benchmarks [--quick] [--only warm,cold,...] [--uvloop] [--out benchmarks/results]

Prints the table as it goes, then writes it as Markdown (``latest.md``) and a plot of
warm-invoke latency against concurrency (``latency_vs_concurrency.png``, if matplotlib is
installed). Install what the baselines need with ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

import fnrt
from fnrt._loop import loop_name

from ._common import Report, quiet

SECTIONS = {
    "warm": ("warm_invoke", {"total": 6000}, {"total": 1500}),
    "cold": ("cold_start", {"rounds": 30}, {"rounds": 8}),
    "async": ("async_queue", {}, {"quick": True}),
    "streams": ("streams", {}, {"quick": True}),
    "postgres": ("postgres", {}, {"quick": True}),
    "cluster-limit": ("cluster_limit", {}, {"quick": True}),
    "memory": ("memory_soak", {}, {"total": 10_000, "events": 4000, "event_warmup": 2000}),
}


def plot(report: Report, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, points in sorted(report.series.items()):
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("concurrent callers")
    ax.set_ylabel("p50 latency per call (µs, log)")
    ax.set_yscale("log")
    ax.set_xticks([1, 2, 8])
    ax.set_title("Warm no-op invoke: latency against concurrency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


async def main(args: argparse.Namespace) -> Report:
    quiet()
    report = Report()
    chosen = args.only.split(",") if args.only else list(SECTIONS)
    for key in chosen:
        module_name, full, quick = SECTIONS[key]
        try:
            module = importlib.import_module(f"benchmarks.{module_name}")
        except ImportError as exc:
            print(f"[{key}] skipped: {exc}")
            continue
        print(f"[{key}] (event loop: {loop_name()})", flush=True)
        started = time.perf_counter()
        await module.run(report, **(quick if args.quick else full))
        print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke test)")
    parser.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (pip install uvloop)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    # The default loop unless --uvloop: the floor and every baseline run on the same loop.
    report = fnrt.run(main(args), loop="uvloop" if args.uvloop else "asyncio")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(report.markdown())
    print(f"\nwrote {out / 'latest.md'}")
    if report.series and plot(report, out / "latency_vs_concurrency.png"):
        print(f"wrote {out / 'latency_vs_concurrency.png'}")
