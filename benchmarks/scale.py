"""Scale benchmark: 10,000 outstanding tasks in one process, wan_async vs a naive poller.

Run: python benchmarks/scale.py [--tasks 10000] [--scale 10]

Every task is submitted at once (upstream has a slot for each, so all stay outstanding for the
whole run) and then waited for. Reported for the client process alone (the simulator runs in
its own process): HTTP exchanges, client CPU per exchange, memory per outstanding task (RSS
growth from before the first submit to the moment all are outstanding), and event-loop lag
(how late a 10 ms sleep wakes up, sampled all through the run).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from collections.abc import Mapping
from typing import Any

import anyio

from wan_async import ScaledClock, VideoRequest, WanClient, WanError

from _harness import percentile, print_table, run_pair

TICK = 15.0


def rss_mib() -> float:
    """The process's resident memory now, in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu() -> float:
    """Process CPU seconds so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def requests(n: int) -> list[VideoRequest]:
    """``n`` distinct 1080p 10 s prompts (about five minutes of work each)."""
    return [
        VideoRequest(prompt=f"scale item {i}", model="wan2.6-t2v", size="1920*1080", duration=10)
        for i in range(n)
    ]


class LagProbe:
    """Samples how late the event loop wakes a 10 ms sleep."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            await anyio.sleep(0.01)
            self.samples.append(time.perf_counter() - started - 0.01)


async def ours(
    base_url: str, api_key: str, clock: ScaledClock, params: Mapping[str, Any]
) -> dict[str, Any]:
    """Submit everything through WanClient.submit, then await every handle."""
    probe = LagProbe()
    items = requests(params["tasks"])
    async with (
        WanClient(
            api_key=api_key,
            base_url=base_url,
            clock=clock,
            max_requests_per_second=None,
            max_concurrent_submits=16,
        ) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(probe.run)
        rss0, cpu0 = rss_mib(), cpu()
        handles = []
        limiter = anyio.Semaphore(64)

        async def submit(request: VideoRequest) -> None:
            async with limiter:
                handles.append(await client.submit(request))

        async with anyio.create_task_group() as submits:
            for request in items:
                submits.start_soon(submit, request)
        rss1 = rss_mib()
        ok = 0
        for handle in handles:
            try:
                await handle
                ok += 1
            except WanError:
                pass
        stats = client.stats
        tg.cancel_scope.cancel()
    exchanges = stats.submits + stats.poller.polls
    return {
        "ok": ok,
        "exchanges": exchanges,
        "cpu_total": cpu() - cpu0,
        "kib_per_task": (rss1 - rss0) * 1024 / len(items),
        "lags": probe.samples,
    }


async def naive(
    base_url: str, api_key: str, clock: ScaledClock, params: Mapping[str, Any]
) -> dict[str, Any]:
    """One coroutine per task polling its own task every tick/3."""
    probe = LagProbe()
    items = requests(params["tasks"])
    exchanges = 0
    ok = 0
    async with (
        WanClient(
            api_key=api_key, base_url=base_url, clock=clock, max_requests_per_second=None
        ) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(probe.run)
        rss0, cpu0 = rss_mib(), cpu()
        limiter = anyio.Semaphore(64)
        submitted = anyio.Event()
        pending = len(items)
        rss1 = 0.0

        async def one(request: VideoRequest) -> None:
            nonlocal exchanges, ok, pending, rss1
            async with limiter:
                created = await client.create_task(request)
            exchanges += 1
            pending -= 1
            if pending == 0:
                rss1 = rss_mib()
                submitted.set()
            while True:
                await clock.sleep(TICK / 3)
                exchanges += 1
                try:
                    snap = await client.get_task(created.task_id)
                except WanError:
                    continue
                if snap.is_terminal:
                    ok += 1
                    return

        async with anyio.create_task_group() as workers:
            for request in items:
                workers.start_soon(one, request)
        tg.cancel_scope.cancel()
    return {
        "ok": ok,
        "exchanges": exchanges,
        "cpu_total": cpu() - cpu0,
        "kib_per_task": (rss1 - rss0) * 1024 / len(items),
        "lags": probe.samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--scale", type=float, default=10.0, help="gateway s per real s")
    parser.add_argument("--spread", type=float, default=0.15, help="sigma of work times")
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()
    print(
        f"scale: {args.tasks} outstanding 1080p 10 s tasks (spread {args.spread:g}), "
        f"tick {TICK:g}s, "
        f"time x{args.scale:g}; {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}\n",
        flush=True,
    )
    gateway = {
        "tick": TICK,
        "slots": args.tasks,
        "processing_spread": args.spread,
        "seed": 1,
    }
    rows = []
    jobs = [("wan_async", ours)] + ([] if args.skip_naive else [("naive (every tick/3)", naive)])
    for name, job in jobs:
        started = time.monotonic()
        client, _sim = run_pair(job, scale=args.scale, gateway=gateway, params=vars(args))
        rows.append(
            [
                name,
                f"{client['ok']}/{args.tasks}",
                client["exchanges"],
                client["exchanges"] / args.tasks,
                client["cpu_total"] / client["exchanges"] * 1000,
                client["kib_per_task"],
                percentile(client["lags"], 50) * 1000,
                percentile(client["lags"], 99) * 1000,
                time.monotonic() - started,
            ]
        )
    print_table(
        [
            "client",
            "ok",
            "HTTP exchanges",
            "per task",
            "CPU ms/exchange",
            "KiB/task",
            "loop lag p50 ms",
            "loop lag p99 ms",
            "real s",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
