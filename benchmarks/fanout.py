"""Fan-out benchmark: a batch of prompts queueing upstream, wan_async vs a naive poller.

Run: python benchmarks/fanout.py [--tasks 200] [--slots 25] [--scale 20]

Against the same simulator settings (fewer upstream slots than tasks, a mix of sizes and
durations so processing takes 1.5-5 minutes with a lognormal spread, a 15 s refresh tick,
compressed by --scale), once with a strict first-in-first-out upstream queue and once with one
shared with other tenants (a freed slot comes back after a random delay and goes to a random
queued task), it runs:

* naive: one coroutine per task, submitted at once, each polling its own task every tick/3
  (the usual "every 5 s" against a 15 s gateway);
* wan_async: ``client.generate_many(requests)`` with default settings.

and reports status GETs per task, detection lag p50/p95 (from the gateway's finish to the first
GET that saw it, as the simulator measures), batch wall time (gateway minutes), client CPU
seconds and the client process's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Mapping
from typing import Any

import anyio

from wan_async import (
    ScaledClock,
    SubmitOutcomeUnknown,
    Timeouts,
    VideoRequest,
    WanClient,
    WanError,
)
from wan_async.testing import Fault

import _harness
from _harness import percentile, print_table, run_pair

TICK = 15.0
#: The faults row: one request in ten misbehaves, every kind of fault represented.
FAULTS = {
    Fault.RATE_LIMIT: 0.02,
    Fault.RATE_LIMIT_RETRY_AFTER: 0.01,
    Fault.SERVER_ERROR: 0.01,
    Fault.UNAVAILABLE: 0.01,
    Fault.BAD_GATEWAY_HTML: 0.01,
    Fault.RESET_BEFORE_CREATE: 0.01,
    Fault.DROP_AFTER_CREATE: 0.01,
    Fault.SLOW: 0.01,
    Fault.TRUNCATED_JSON: 0.01,
}
CONFIGS = [("1280*720", 5), ("1920*1080", 5), ("1280*720", 10), ("1920*1080", 10)]


def make_requests(n: int) -> list[VideoRequest]:
    """``n`` distinct prompts cycling through four size/duration mixes."""
    return _harness.make_requests(n, CONFIGS, "fan-out item {i}: a lighthouse in a storm, shot {i}")


async def naive(
    base_url: str, api_key: str, clock: ScaledClock, params: Mapping[str, Any]
) -> dict[str, Any]:
    """One coroutine per task, each polling its own task every tick/3."""
    interval = TICK / 3
    ok = failed = 0
    async with WanClient(api_key=api_key, base_url=base_url, clock=clock) as client:
        submits = anyio.Semaphore(8)

        async def one(request: VideoRequest) -> None:
            nonlocal ok, failed
            async with submits:
                created = await client.create_task(request)
            while True:
                await clock.sleep(interval)
                try:
                    snap = await client.get_task(created.task_id)
                except WanError:
                    continue
                if snap.is_terminal:
                    ok += snap.status.value == "SUCCESS"
                    failed += snap.status.value == "FAILURE"
                    return

        started = clock.monotonic()
        async with anyio.create_task_group() as tg:
            for request in make_requests(params["tasks"]):
                tg.start_soon(one, request)
        wall = clock.monotonic() - started
    return {"wall": wall, "ok": ok, "failed": failed}


async def wan_async_batch(
    base_url: str, api_key: str, clock: ScaledClock, params: Mapping[str, Any]
) -> dict[str, Any]:
    """``generate_many`` with default settings (and a short read timeout under faults)."""
    timeouts = Timeouts(read=params["read_timeout"]) if params.get("read_timeout") else Timeouts()
    async with WanClient(
        api_key=api_key, base_url=base_url, clock=clock, timeouts=timeouts
    ) as client:
        started = clock.monotonic()
        outcomes = await client.generate_many(make_requests(params["tasks"]), return_outcomes=True)
        wall = clock.monotonic() - started
    return {
        "wall": wall,
        "ok": sum(o.ok for o in outcomes),
        "failed": sum(not o.ok for o in outcomes),
        "unknown": sum(isinstance(o.error, SubmitOutcomeUnknown) for o in outcomes),
    }


def faults_rows(
    args: argparse.Namespace, *, clean: tuple[dict[str, Any], dict[str, Any]] | None
) -> list[list[object]]:
    """The fan-out again (FIFO) with 10 % of requests faulted, against the clean run."""
    gateway = {
        "tick": TICK,
        "slots": args.slots,
        "queue": "fifo",
        "seed": args.seed,
        "processing_spread": args.spread,
        "fault_rates": FAULTS,
        "slow_delay": 3.0,
    }
    client, sim = run_pair(
        wan_async_batch,
        scale=args.scale,
        gateway=gateway,
        params={"tasks": args.tasks, "read_timeout": 2.0},
    )
    requests = sum(sim["requests"].values())
    rows: list[list[object]] = [
        [
            "fifo, 10% faults",
            "wan_async",
            f"{client['ok']}/{client['failed']}",
            sum(sim["gets"]) / max(1, sim["tasks"]),
            percentile(sim["lags"], 50),
            percentile(sim["lags"], 95),
            client["wall"] / 60,
            client["cpu"],
            client["peak_rss_mib"],
            sim["duplicates"],
        ]
    ]
    if clean is not None:
        clean_client, clean_sim = clean
        extra = requests - sum(clean_sim["requests"].values())
        rows.append(
            [
                "fifo, 10% faults",
                f"vs clean: {client['unknown']} unknown, {extra:+d} requests",
                "",
                "",
                "",
                "",
                client["wall"] / clean_client["wall"],
                "",
                "",
                "",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--slots", type=int, default=25)
    parser.add_argument("--scale", type=float, default=20.0, help="gateway s per real s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--spread", type=float, default=0.15, help="lognormal sigma of one kind's durations"
    )
    parser.add_argument(
        "--queue", choices=("fifo", "shared"), nargs="*", default=["fifo", "shared"]
    )
    parser.add_argument(
        "--faults", action=argparse.BooleanOptionalAction, default=True, help="add the faults row"
    )
    args = parser.parse_args()
    print(
        f"fan-out: {args.tasks} tasks, {args.slots} upstream slots, tick {TICK:g}s, "
        f"duration spread {args.spread:g}, time x{args.scale:g}, seed {args.seed}; "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n",
        flush=True,
    )
    rows = []
    clean_runs: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for queue in args.queue:
        gateway = {
            "tick": TICK,
            "slots": args.slots,
            "queue": queue,
            "shared_delay": (0.0, 30.0),
            "seed": args.seed,
            "processing_spread": args.spread,
        }
        results = {}
        for name, job in (("naive (every tick/3)", naive), ("wan_async", wan_async_batch)):
            client, sim = run_pair(
                job, scale=args.scale, gateway=gateway, params={"tasks": args.tasks}
            )
            gets_per_task = sum(sim["gets"]) / max(1, sim["tasks"])
            results[name] = (client, sim, gets_per_task)
            rows.append(
                [
                    queue,
                    name,
                    f"{client['ok']}/{client['failed']}",
                    gets_per_task,
                    percentile(sim["lags"], 50),
                    percentile(sim["lags"], 95),
                    client["wall"] / 60,
                    client["cpu"],
                    client["peak_rss_mib"],
                    sim["duplicates"],
                ]
            )
        base, _, base_gets = results["naive (every tick/3)"]
        ours, our_sim, our_gets = results["wan_async"]
        clean_runs[queue] = (ours, our_sim)
        rows.append(
            [
                queue,
                "ratio wan_async/naive",
                "",
                our_gets / base_gets,
                "",
                "",
                ours["wall"] / base["wall"],
                ours["cpu"] / base["cpu"],
                "",
                "",
            ]
        )
    if args.faults:
        rows.extend(faults_rows(args, clean=clean_runs.get("fifo")))
    print_table(
        [
            "queue",
            "client",
            "ok/failed",
            "GETs/task",
            "lag p50 s",
            "lag p95 s",
            "wall (gw min)",
            "client CPU s",
            "peak RSS MiB",
            "dup tasks",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
