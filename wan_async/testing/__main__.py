"""Run the simulator stand-alone: ``python -m wan_async.testing [options]`` until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from .._clock import Clock, ScaledClock, SystemClock
from ._gateway import FakeGateway, is_loopback_host


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a simulated Wan video gateway (and its object storage) locally.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="gateway port (default: 8000)")
    parser.add_argument(
        "--storage-port", type=int, default=0, help="object storage port (default: any free)"
    )
    parser.add_argument("--api-key", default="sk-test", help="accepted key (default: sk-test)")
    parser.add_argument(
        "--tick",
        type=float,
        default=15.0,
        help="refresh period, or sleep between sequential passes, gateway seconds (default: 15)",
    )
    parser.add_argument(
        "--refresh",
        choices=("tick", "sequential"),
        default="tick",
        help="refresh all tasks at once every tick, or one after another (default: tick)",
    )
    parser.add_argument(
        "--refresh-cost",
        type=float,
        default=0.0,
        help="seconds per task of a sequential pass (default: 0)",
    )
    parser.add_argument(
        "--first-refresh",
        type=float,
        default=None,
        help="seconds from start to the first pass (default: one tick)",
    )
    parser.add_argument(
        "--other-tenants",
        type=int,
        default=0,
        help="other users' unfinished tasks walked by every pass (default: 0)",
    )
    parser.add_argument(
        "--start-delay",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=(0.0, 0.0),
        help="seconds upstream waits before starting a task, even with a free slot",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="gateway seconds per real second (default: 1, real time)",
    )
    parser.add_argument("--slots", type=int, default=4, help="upstream concurrency (default: 4)")
    parser.add_argument("--queue", choices=("fifo", "shared"), default="fifo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--failure-rate", type=float, default=0.0, help="fraction of tasks failing (default: 0)"
    )
    parser.add_argument(
        "--video-bytes",
        type=int,
        default=None,
        help="serve N deterministic bytes per video instead of the bundled playable clip",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (the simulator has no real security)",
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    clock: Clock = SystemClock() if args.time_scale == 1 else ScaledClock(args.time_scale)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not available on Windows: Ctrl-C then arrives as KeyboardInterrupt instead.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    async with FakeGateway(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        storage_port=args.storage_port,
        allow_remote=args.allow_remote,
        clock=clock,
        tick=args.tick,
        refresh=args.refresh,
        refresh_cost=args.refresh_cost,
        first_refresh=args.first_refresh,
        other_tenants=args.other_tenants,
        start_delay=tuple(args.start_delay),
        slots=args.slots,
        queue=args.queue,
        seed=args.seed,
        failure_rate=args.failure_rate,
        video_bytes=args.video_bytes,
    ) as gateway:
        print(f"gateway:  {gateway.base_url}", flush=True)
        print(f"storage:  {gateway.storage_url}", flush=True)
        print(f"api key:  {gateway.api_key}", flush=True)
        print(f"clock:    {clock!r}; Ctrl-C to stop", flush=True)
        await stop.wait()
    print("stopped", flush=True)


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m wan_async.testing") -> int:
    """Parse ``argv``, serve until interrupted, and return the exit status.

    Args:
        argv: the options (default: ``sys.argv[1:]``).
        prog: the program name its usage and errors show (``wan-async simulate`` there).
    """
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if not args.allow_remote and not is_loopback_host(args.host):
        parser.error(f"--host {args.host} is not a loopback address; add --allow-remote")
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        print("stopped", flush=True)
    except ValueError as exc:  # a setting the simulator refuses, like --slots 0
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # it could not serve, e.g. the port is taken
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
