"""Shared plumbing of the benchmarks: a simulator in one process, a client in another.

Both processes share one ScaledClock (same epoch and monotonic origin), so gateway minutes pass
in real seconds while the client's CPU time and memory are measured apart from the
simulator's. The client's clock may be shifted (a machine whose clock is ahead or behind):
its Unix readings differ, its intervals and ``monotonic()`` do not. The simulator's upstream
may be compressed (its working times divided by a factor), so that a client on a clock at
scale 1, real time, can meet a gateway whose tasks last seconds rather than minutes.
"""

from __future__ import annotations

import functools
import multiprocessing
import random
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

import anyio
import anyio.to_thread

from wan_async import ScaledClock, VideoRequest
from wan_async.testing import FakeGateway, TaskInfo, default_processing_time


def make_requests(n: int, mix: Sequence[tuple[str, int]], prompt: str) -> list[VideoRequest]:
    """``n`` distinct prompts (``prompt`` with ``{i}`` filled in) cycling through the sizes and
    durations of ``mix``."""
    return [
        VideoRequest(
            prompt=prompt.format(i=i),
            model="wan2.6-t2v",
            size=mix[i % len(mix)][0],
            duration=mix[i % len(mix)][1],
        )
        for i in range(n)
    ]


ClientJob = Callable[[str, str, ScaledClock, Mapping[str, Any]], Awaitable[dict[str, Any]]]


def _clock(shared: Mapping[str, float]) -> ScaledClock:
    return ScaledClock(shared["scale"], epoch=shared["epoch"], origin=shared["origin"])


def compressed_processing_time(
    body: Mapping[str, Any], rng: random.Random, *, compress: float, sigma: float | None = None
) -> float:
    """Upstream's default working time for one task (lognormal ``sigma``; ``None``: the
    default's), divided by ``compress``."""
    if sigma is None:
        return default_processing_time(body, rng) / compress
    return default_processing_time(body, rng, sigma=sigma) / compress


def _simulator_process(
    conn: Connection,
    shared: dict[str, float],
    options: dict[str, Any],
    compress: float,
    timeline: bool,
) -> None:
    if compress != 1.0:
        # Built in this process from numbers, so that what crosses the spawn boundary stays
        # plain data (a lambda would not pickle at all).
        spread = options.get("processing_spread")
        work = functools.partial(
            compressed_processing_time,
            compress=compress,
            sigma=None if spread is None else float(spread),
        )
        options = {**options, "processing_time": work}

    async def run() -> None:
        async with FakeGateway(clock=_clock(shared), **options) as gw:
            conn.send((gw.base_url, gw.api_key))
            await anyio.to_thread.run_sync(conn.recv)
            tasks = gw.tasks()
            report = {
                "tasks": len(tasks),
                "gets": [t.gets for t in tasks],
                "lags": gw.detection_lags(),
                "submits": sum(gw.stats.outcomes("submit").values()),
                "duplicates": sum(n - 1 for n in gw.stats.tasks_per_prompt.values() if n > 1),
                "requests": dict(gw.stats.requests),
                "peak_running": gw.peak_running,
            }
            if timeline:
                report["timeline"] = _timeline(gw, tasks, shared["epoch"])
            conn.send(report)

    anyio.run(run)


def _timeline(gw: FakeGateway, tasks: Sequence[TaskInfo], epoch: float) -> dict[str, Any]:
    """What happened when, in seconds of the shared clock's ``monotonic()``."""
    return {
        "submits": [r.at - epoch for r in gw.stats.request_log if r.kind == "submit"],
        "gets": [r.at - epoch for r in gw.stats.request_log if r.kind == "get"],
        "finishes": [f.gateway_finish - epoch for f in gw.stats.finishes],
        # When a GET first showed each task's end to the client, and how it ended.
        "seen": [
            (t.first_terminal_get - epoch, t.status)
            for t in tasks
            if t.first_terminal_get is not None
        ],
        "passes": [(p.start - epoch, p.end - epoch) for p in gw.stats.passes],
        "get_gaps": [
            later - earlier
            for t in tasks
            for earlier, later in zip(t.get_times, t.get_times[1:], strict=False)
        ],
    }


def _client_process(
    conn: Connection,
    job: ClientJob,
    base_url: str,
    api_key: str,
    shared: dict[str, float],
    params: dict[str, Any],
    shift: float,
) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF)
    clock = _clock(shared)
    out = anyio.run(job, base_url, api_key, clock.shifted(shift) if shift else clock, params)
    after = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out["peak_rss_mib"] = after.ru_maxrss / 1024  # kilobytes on Linux
    conn.send(out)


def run_pair(
    job: ClientJob,
    *,
    scale: float,
    gateway: dict[str, Any],
    params: dict[str, Any],
    client_clock_shift: float = 0.0,
    compress: float = 1.0,
    timeline: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start a simulator, run ``job`` against it in a fresh process; return both reports.

    Args:
        job: the client's work, run in its own process with the shared clock.
        scale: gateway seconds per real second, of the clock both processes share (1: the
            client runs in real time).
        gateway: ``FakeGateway`` keyword arguments.
        params: handed to ``job``.
        client_clock_shift: seconds the client's clock reads ahead of the gateway's
            (negative: behind); its intervals and ``monotonic()`` stay the gateway's.
        compress: divide upstream's working times (the default processing time, with
            ``gateway``'s ``processing_spread``) by this; the ``tick`` and any other time in
            ``gateway`` is the caller's to compress alike.
        timeline: add the simulator's ``"timeline"`` (request, finish and pass times, in
            seconds of the shared clock's ``monotonic()``) to its report.
    """
    if not compress > 0:
        msg = f"compress must be a positive number, got {compress!r}"
        raise ValueError(msg)
    if compress != 1.0 and "processing_time" in gateway:
        msg = "compress divides the default processing time; pass no processing_time with it"
        raise ValueError(msg)
    ctx = multiprocessing.get_context("spawn")
    shared = {"scale": scale, "epoch": time.time(), "origin": time.monotonic()}
    sim_parent, sim_child = ctx.Pipe()
    sim = ctx.Process(
        target=_simulator_process,
        args=(sim_child, shared, gateway, compress, timeline),
        daemon=True,
    )
    sim.start()
    base_url, api_key = sim_parent.recv()
    cli_parent, cli_child = ctx.Pipe()
    client = ctx.Process(
        target=_client_process,
        args=(cli_child, job, base_url, api_key, shared, params, client_clock_shift),
        daemon=True,
    )
    client.start()
    client_report: dict[str, Any] = cli_parent.recv()
    client.join()
    sim_parent.send("stop")
    sim_report: dict[str, Any] = sim_parent.recv()
    sim.join()
    return client_report, sim_report


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``, NaN when empty."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, int(q) - 1))]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a GitHub-flavoured Markdown table."""
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print(line(r))
    sys.stdout.flush()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
