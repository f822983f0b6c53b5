"""Gateway matrix: wan_async with default settings against a naive poller, gateway by gateway.

Run: python benchmarks/matrix.py [--tasks 120] [--slots 20] [--scale 40] [--compress 10]
                                 [--gateways KEY ...] [--plot PATH]
     python benchmarks/matrix.py --quick          (a smoke run: 12 prompts, 3 gateways)
     python benchmarks/matrix.py --quick --gateways realtime --tasks 4    (its smoke run)

For each gateway of the matrix (the simulator's models of SPEC §3.2 and §6) it runs, one after
the other against a fresh simulator with the same settings and seed:

* naive: one coroutine per task, all submitted at once, each polling its own task every third
  of the refresh tick (of the sleep between passes, for the sequential gateway), with no
  request budget of its own;
* wan_async: ``WanClient(api_key=..., base_url=..., clock=...)`` with default settings and
  ``client.generate_many(requests, return_outcomes=True)``; stopped ("killed") once it has
  taken ``--kill-at`` times the naive client's wall time.

It prints a table (status GETs per task, detection lag p50/p95 as the simulator measures it:
gateway finish to the first GET that saw it, batch wall time in gateway minutes and its ratio
to the naive client's, client CPU seconds, duplicate tasks) with the targets each row meets,
and draws requests per second and tasks finished over time, per gateway and client (needs
matplotlib: ``pip install -e '.[bench]'``; without it the picture is skipped).

Every row but one runs the client and the simulator on one shared clock, ``--scale`` gateway
seconds per real second, so that gateway minutes pass in seconds. Every absolute constant of
the client (its 10 requests per clock second; its timeouts, windows and floors of 10 to 30 s)
then scales with the gateway and keeps its proportion to the tick and to the tasks' durations,
so those rows cannot tell a constant the client assumes from a quantity it has learned. The
``realtime`` row breaks the proportion: the client runs in real time (the shared clock at
scale 1, as a ``SystemClock`` reads) against a *compressed* gateway, also at scale 1 but with
its refresh tick and upstream's working times divided by ``--compress`` (default 10: tick
15 s -> 1.5 s, the 90 s and 150 s medians -> 9 s and 15 s), so that a batch of the matrix's
size takes a minute or two of real time. Both clients run it alike (the naive one polling
every third of the compressed tick); its period, and so its lag target, is the compressed
tick, and its times (gateway seconds at scale 1) are real seconds. It is left out of
``--quick`` (the 12-task quick batch, even compressed x100, takes a few real seconds per
client, and a client held back by a real-time constant runs until it is killed); the test
suite smoke-runs it on its own with 4 tasks.

Targets (issue 10): wall <= naive + 5 %, <= 3 status GETs per task, detection lag p95 <= a
third of the refresh period (the tick; for the sequential gateway the mean time between the
starts of two passes, measured in the naive run).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from wan_async import ScaledClock, VideoRequest, WanClient, WanError
from wan_async.testing import default_processing_time

import _harness
from _harness import percentile, print_table, run_pair

#: The request mix: 720P and 1080P 5 s videos (upstream medians 90 s and 150 s).
MIX = [("1280*720", 5), ("1920*1080", 5)]
QUICK_MIX = [("1280*720", 5)]
GATEWAYS = (
    "tick15",
    "tick3",
    "sequential",
    "start-delay",
    "capacity",
    "ahead",
    "behind",
    "realtime",
)
QUICK_GATEWAYS = ("tick15", "sequential", "ahead")
#: Targets of issue 10.
WALL_TARGET = 1.05
GETS_TARGET = 3.0
LAG_TARGET = 1 / 3
#: Width of the picture's request-rate buckets, in gateway seconds.
RATE_BUCKET = 20.0
DEFAULT_PLOT = Path(__file__).resolve().parent / "matrix.png"


@dataclass(frozen=True)
class Gateway:
    """One row of the matrix: a simulator configuration and how the naive client polls it."""

    key: str
    label: str
    #: ``FakeGateway`` keyword arguments.
    options: dict[str, Any]
    #: Seconds the client's clock reads ahead of the gateway's (negative: behind).
    shift: float = 0.0
    #: Gateway seconds per real second of the clock both share (``None``: ``--scale``).
    scale: float | None = None
    #: Upstream's working times are divided by this (``options`` carries the tick to match).
    compress: float = 1.0

    @property
    def naive_interval(self) -> float:
        """How often the naive client polls: a third of the tick (or of the sequential sleep)."""
        return float(self.options["tick"]) / 3


@dataclass
class Run:
    """One client against one gateway: both processes' reports."""

    client: dict[str, Any]
    sim: dict[str, Any]
    scale: float
    real_seconds: float

    @property
    def timeline(self) -> dict[str, Any]:
        return self.sim["timeline"]  # type: ignore[no-any-return]

    @property
    def gets_per_task(self) -> float:
        return float(sum(self.sim["gets"]) / max(1, self.sim["tasks"]))


@dataclass
class Row:
    """A gateway's naive and wan_async runs, and the refresh period its targets use."""

    gateway: Gateway
    period: float
    runs: dict[str, Run] = field(default_factory=dict)


def make_requests(n: int, mix: Sequence[tuple[str, int]]) -> list[VideoRequest]:
    """``n`` distinct prompts cycling through the sizes and durations of ``mix``."""
    prompt = "matrix item {i}: a paper lantern drifting over a harbour, take {i}"
    return _harness.make_requests(n, mix, prompt)


async def naive(
    base_url: str, api_key: str, clock: ScaledClock, params: Mapping[str, Any]
) -> dict[str, Any]:
    """One coroutine per task, all submitted at once, each polling its own task on a timer."""
    interval = params["interval"]
    ok = failed = 0
    # No request budget: the naive client polls as often as it says it does.
    async with WanClient(
        api_key=api_key, base_url=base_url, clock=clock, max_requests_per_second=None
    ) as client:

        async def one(request: VideoRequest) -> None:
            nonlocal ok, failed
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
            for request in make_requests(params["tasks"], params["mix"]):
                tg.start_soon(one, request)
        wall = clock.monotonic() - started
    return {"started": started, "wall": wall, "ok": ok, "failed": failed, "killed": False}


async def wan_async_defaults(
    base_url: str, api_key: str, clock: ScaledClock, params: Mapping[str, Any]
) -> dict[str, Any]:
    """``generate_many`` on a client with default settings, stopped after ``cap`` seconds."""
    requests = make_requests(params["tasks"], params["mix"])
    outcomes = None
    async with WanClient(api_key=api_key, base_url=base_url, clock=clock) as client:
        started = clock.monotonic()
        with anyio.move_on_after(params["cap"] / clock.scale):
            outcomes = await client.generate_many(requests, return_outcomes=True)
        wall = clock.monotonic() - started
    if outcomes is None:  # killed: the simulator counts what the client had seen end
        return {"started": started, "wall": wall, "killed": True}
    return {
        "started": started,
        "wall": wall,
        "ok": sum(o.ok for o in outcomes),
        "failed": sum(not o.ok for o in outcomes),
        "killed": False,
    }


def median_work(size: str, duration: int) -> float:
    """Upstream's median working time for one kind of video, in seconds."""
    body = {"metadata": {"parameters": {"size": size, "duration": duration}}}
    return default_processing_time(body, random.Random(0), sigma=0.0)


def gateways(args: argparse.Namespace) -> list[Gateway]:
    """The matrix's gateways, with schedules laid out on the batch's expected length."""
    expected = math.ceil(args.tasks / args.slots) * statistics.fmean(
        median_work(size, duration) for size, duration in args.mix
    )
    common = {"slots": args.slots, "seed": args.seed, "processing_spread": args.spread}
    cut, back = round(0.25 * expected), round(0.6 * expected)
    low = max(1, args.slots // 4)
    tick = 15.0 / args.compress  # the real-time row's
    busy, calm = 100, 300
    rows = [
        Gateway("tick15", "refresh every 15 s", {"tick": 15.0}),
        Gateway("tick3", "refresh every 3 s", {"tick": 3.0}),
        Gateway(
            "sequential",
            f"sequential pass: sleep 15 s, 0.05 s/task, others {busy}→{calm}→{busy}",
            {
                "refresh": "sequential",
                "tick": 15.0,
                "refresh_cost": 0.05,
                "other_tenants": [(0.0, busy), (float(cut), calm), (float(back), busy)],
            },
        ),
        Gateway(
            "start-delay",
            "start delay 10-90 s, shared queue",
            {"tick": 15.0, "queue": "shared", "start_delay": (10.0, 90.0), "shared_delay": (0, 30)},
        ),
        Gateway(
            "capacity",
            f"capacity {args.slots}→{low}→{args.slots} (at {cut / 60:.0f}, {back / 60:.0f} min)",
            {"tick": 15.0, "capacity": [(float(cut), low), (float(back), args.slots)]},
        ),
        Gateway("ahead", "client clock 7 s ahead", {"tick": 15.0}, shift=7.0),
        Gateway("behind", "client clock 7 s behind", {"tick": 15.0}, shift=-7.0),
        Gateway(
            "realtime",
            f"real-time client, gateway compressed x{args.compress:g} (tick {tick:.3g} s)",
            {"tick": tick},
            scale=1.0,
            compress=args.compress,
        ),
    ]
    chosen = [g for g in rows if g.key in args.gateways]
    return [dataclasses.replace(g, options={**common, **g.options}) for g in chosen]


def run_row(gateway: Gateway, args: argparse.Namespace) -> Row:
    """The naive client, then wan_async, against two simulators configured alike."""
    params = {"tasks": args.tasks, "mix": args.mix}
    scale = args.scale if gateway.scale is None else gateway.scale
    # The naive client's requests per real second at the start: kept under --max-rps, else
    # it is CPU-bound and polls late (its lag would be this machine's, not its schedule's).
    naive_scale = min(scale, args.max_rps * gateway.naive_interval / args.tasks)
    naive_run = _run(
        gateway, naive, {**params, "interval": gateway.naive_interval}, naive_scale, "naive"
    )
    cap = args.kill_at * naive_run.client["wall"]
    ours = _run(gateway, wan_async_defaults, {**params, "cap": cap}, scale, "wan_async")
    return Row(
        gateway=gateway,
        period=_period(gateway, naive_run),
        runs={"naive": naive_run, "wan_async": ours},
    )


def _run(gateway: Gateway, job: Any, params: dict[str, Any], scale: float, name: str) -> Run:
    started = time.monotonic()
    client, sim = run_pair(
        job,
        scale=scale,
        gateway=gateway.options,
        params=params,
        client_clock_shift=gateway.shift,
        compress=gateway.compress,
        timeline=True,
    )
    run = Run(client=client, sim=sim, scale=scale, real_seconds=time.monotonic() - started)
    client["items"] = params["tasks"]
    if client["killed"]:  # the simulator knows which endings the client had seen
        statuses = [status for _, status in run.timeline["seen"]]
        client["ok"], client["failed"] = statuses.count("SUCCESS"), statuses.count("FAILURE")
    print(
        f"    {name:<9}  {client['wall'] / 60:5.1f} gateway min"
        f"{' (killed)' if client['killed'] else ''} in {run.real_seconds:.0f} s real "
        f"(time x{scale:g})",
        flush=True,
    )
    return run


def _period(gateway: Gateway, run: Run) -> float:
    """The refresh period the lag target is a third of: the tick, or the measured pass period."""
    if gateway.options.get("refresh") != "sequential":
        return float(gateway.options["tick"])
    start = run.client["started"]
    end = start + run.client["wall"]
    starts = [s for s, _ in run.timeline["passes"] if start <= s <= end]
    if len(starts) < 2:
        return float(gateway.options["tick"])
    return float(starts[-1] - starts[0]) / (len(starts) - 1)


def table_rows(rows: Sequence[Row]) -> list[list[object]]:
    """The printed table: one line per gateway and client."""
    out: list[list[object]] = []
    for row in rows:
        base = row.runs["naive"].client["wall"]
        for name, run in row.runs.items():
            lags = run.sim["lags"]
            ratio = run.client["wall"] / base
            p95 = percentile(lags, 95)
            met = [
                not run.client["killed"] and ratio <= WALL_TARGET,
                run.gets_per_task <= GETS_TARGET,
                p95 <= LAG_TARGET * row.period,
            ]
            wall = run.client["wall"] / 60
            out.append(
                [
                    row.gateway.label,
                    name,
                    f"{row.period:.3g}",
                    f"{run.client['ok']}/{run.client['failed']}"
                    + (f", {open_} open" if (open_ := _open(run)) else ""),
                    run.gets_per_task,
                    f"{percentile(lags, 50):.2f}",
                    f"{p95:.2f}",
                    f"> {wall:.1f} (killed)" if run.client["killed"] else f"{wall:.1f}",
                    f"> {ratio:.2f}" if run.client["killed"] else f"{ratio:.2f}",
                    run.client["cpu"],
                    run.sim["duplicates"],
                    " ".join("yes" if m else "no" for m in met),
                ]
            )
    return out


def _open(run: Run) -> int:
    """Items a killed run had not seen end (0 for a run that ended)."""
    if not run.client["killed"]:
        return 0
    return int(run.client["items"] - run.client["ok"] - run.client["failed"])


HEADERS = [
    "gateway",
    "client",
    "period s",
    "ok/failed",
    "GETs/task",
    "lag p50 s",
    "lag p95 s",
    "wall (gw min)",
    "x naive",
    "client CPU s",
    "dup",
    "targets wall/GETs/lag",
]


def notes(rows: Sequence[Row]) -> list[str]:
    """Caveats worth printing under the table: a slower clock, a naive client behind its timer."""
    lines: list[str] = []
    for row in rows:
        run = row.runs["naive"]
        if run.scale < row.runs["wan_async"].scale:
            lines.append(
                f"note: on '{row.gateway.label}' the naive client ran at time x{run.scale:g} "
                "(--max-rps), so that the machine keeps up with its requests"
            )
        gaps = run.timeline["get_gaps"]
        if gaps and statistics.median(gaps) > 1.2 * row.gateway.naive_interval:
            lines.append(
                f"note: on '{row.gateway.label}' the naive client polled every "
                f"{statistics.median(gaps):.2f} s (median) instead of "
                f"{row.gateway.naive_interval:g} s: the machine was too busy; lower --max-rps"
            )
    return lines


# -- the picture --------------------------------------------------------------------------------

COLORS = {"naive": "#888888", "wan_async": "#1f6fb4"}


def series(run: Run, bucket: float = RATE_BUCKET) -> dict[str, list[float]]:
    """A run's curves in gateway minutes from its batch's start: request rate, tasks finished."""
    start = run.client["started"]
    end = run.client["wall"]
    times = sorted(t - start for t in [*run.timeline["submits"], *run.timeline["gets"]])
    buckets = max(1, math.ceil(end / bucket))
    counts = [0] * buckets
    for t in times:
        if 0 <= t < buckets * bucket:
            counts[int(t // bucket)] += 1
    seen = sorted(t - start for t, _ in run.timeline["seen"] if t - start <= end)
    finished = sorted(t - start for t in run.timeline["finishes"] if t - start <= end)
    # Each curve runs on to the batch's end (or to the moment it was killed).
    return {
        "rate_t": [i * bucket / 60 for i in range(buckets + 1)],
        "rate": [c / bucket for c in counts],
        "seen_t": [0.0, *(t / 60 for t in seen), end / 60],
        "seen_n": [0.0, *range(1, len(seen) + 1), float(len(seen))],
        "gw_t": [0.0, *(t / 60 for t in finished)],
        "gw_n": [0.0, *range(1, len(finished) + 1)],
    }


def draw(rows: Sequence[Row], path: Path, title: str) -> bool:
    """Draw the picture; return ``False`` (and say why) when matplotlib is not installed."""
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "picture skipped: matplotlib is not installed (pip install -e '.[bench]')",
            flush=True,
        )
        return False
    fig, axes = plt.subplots(
        len(rows),
        2,
        figsize=(10, 1.9 * len(rows) + 0.9),
        squeeze=False,
        sharex="row",
        layout="constrained",
    )
    for (rate_ax, done_ax), row in zip(axes, rows, strict=True):
        for name, run in row.runs.items():
            s = series(run, RATE_BUCKET / row.gateway.compress)
            color = COLORS[name]
            rate = [r if r > 0 else math.nan for r in s["rate"]]
            rate_ax.stairs(rate, s["rate_t"], color=color, label=name, linewidth=1.2)
            done_ax.step(s["seen_t"], s["seen_n"], where="post", color=color, label=name)
            done_ax.step(
                s["gw_t"], s["gw_n"], where="post", color=color, linewidth=0.7, linestyle=":"
            )
            if run.client["killed"]:
                done_ax.plot(s["seen_t"][-1], s["seen_n"][-1], "x", color=color, markersize=8)
        rate_ax.set_yscale("log")
        rate_ax.set_ylabel("requests/s", fontsize=8)
        rate_ax.set_title(row.gateway.label, fontsize=9, loc="left")
        done_ax.set_ylabel("tasks finished", fontsize=8)
        done_ax.set_title(f"refresh period {row.period:.3g} s", fontsize=9, loc="left")
        for ax in (rate_ax, done_ax):
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3, linewidth=0.5)
    for ax in axes[-1]:
        ax.set_xlabel("gateway minutes since the batch started", fontsize=8)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"picture: {path} ({path.stat().st_size // 1024} KiB)", flush=True)
    return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny, a few gateways")
    parser.add_argument("--tasks", type=int, help="prompts per batch (default 120; quick 12)")
    parser.add_argument("--slots", type=int, help="upstream slots (default 20; quick 4)")
    parser.add_argument("--scale", type=float, help="gateway s per real s (default 40; quick 300)")
    parser.add_argument(
        "--compress",
        type=float,
        help="the real-time row's gateway: tick and work times divided by this "
        "(default 10; quick 100)",
    )
    parser.add_argument(
        "--max-rps",
        type=float,
        default=1500.0,
        help="real requests/s the naive client may start at; its clock is slowed to keep under",
    )
    parser.add_argument(
        "--kill-at", type=float, default=3.0, help="stop wan_async after this many naive walls"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--spread",
        type=float,
        default=0.05,
        help="lognormal sigma of one kind's work time (default 0.05: one model, size and "
        "duration take about the same time; 0.3 is the simulator's own default)",
    )
    parser.add_argument("--gateways", nargs="+", choices=GATEWAYS, help="rows to run (default all)")
    parser.add_argument(
        "--plot", type=Path, help=f"the picture (default {DEFAULT_PLOT.name}; quick: none)"
    )
    parser.add_argument("--no-plot", action="store_true", help="draw no picture")
    args = parser.parse_args(argv)
    quick = args.quick
    args.tasks = args.tasks or (12 if quick else 120)
    args.slots = args.slots or (4 if quick else 20)
    args.scale = args.scale or (300.0 if quick else 40.0)
    if args.compress is None:
        args.compress = 100.0 if quick else 10.0
    if not args.compress > 0:
        parser.error(f"--compress must be positive, got {args.compress:g}")
    args.gateways = args.gateways or list(QUICK_GATEWAYS if quick else GATEWAYS)
    args.mix = QUICK_MIX if quick else MIX
    if args.no_plot:
        args.plot = None
    elif args.plot is None and not quick:
        args.plot = DEFAULT_PLOT
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    setup = (
        f"{args.tasks} prompts ({', '.join(f'{s} {d}s' for s, d in args.mix)}, spread "
        f"{args.spread:g}), {args.slots} upstream slots, time x{args.scale:g}, seed {args.seed}"
    )
    if "realtime" in args.gateways:
        setup += f" (real-time row: time x1, gateway compressed x{args.compress:g})"
    print(f"gateway matrix{' (quick)' if args.quick else ''}: {setup}; {machine}", flush=True)
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n", flush=True)
    started = time.monotonic()
    chosen = gateways(args)
    rows = []
    for number, gateway in enumerate(chosen, start=1):
        print(f"[{number}/{len(chosen)}] {gateway.label}", flush=True)
        rows.append(run_row(gateway, args))
    print()
    print_table(HEADERS, table_rows(rows))
    print(
        f"\ntargets: wall <= naive x {WALL_TARGET:g}, GETs/task <= {GETS_TARGET:g}, "
        f"lag p95 <= period / 3; wan_async killed after {args.kill_at:g} x the naive wall"
    )
    for line in notes(rows):
        print(line)
    load = os.getloadavg()
    print(
        f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"{time.monotonic() - started:.0f} s real in all",
        flush=True,
    )
    if args.plot is not None:
        legend = (
            f"left: submits and status GETs per second (per {RATE_BUCKET:g} gateway s, over the "
            "compression on a compressed row); right: "
            "tasks the client saw finish (solid), the gateway saw finish (dotted); x: killed"
        )
        draw(rows, args.plot, f"{setup}; {machine}\n{legend}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
