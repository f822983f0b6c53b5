"""Fleet benchmark: worker processes on one key sharing a Redis task store, beside one
process doing it all and beside the same workers without a store.

Run: python benchmarks/fleet.py [--tasks 1000] [--workers 4] [--scale 60] [--cap 20]

Needs ``redis-server`` on the PATH (Debian: ``apt-get install -y redis-server``) and
``pip install -e '.[dev]'``. It starts its own server (unix socket, AOF fsync always) and a
simulator (15 s refresh, tasks of about a minute, compressed by ``--scale``); every client
is a separate OS process capped at ``--cap`` requests per clock second. Rows:

* one process, all tasks: the status GETs per task a fleet should match;
* N workers, no store (each keeps its tasks to itself, the README's old way): status asked
  of random workers for random tasks of the fleet;
* N workers, Redis store: the same;
* N workers, Redis store, ``kill -9`` of one after its submits: how long until a live worker
  owned each of its tasks, and whether every task still ended;
* two hosts (separate working directories) running one journaled batch of 200 at once.

Printed per row: tasks created, duplicates, status GETs per task, cross-worker status
answers (answered / asked), the peak request rate over any 15 clock seconds against the cap,
and for the kill row the adoption time against its bound (the lease and a quarter).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from wan_async import ScaledClock
from wan_async._store import namespace_for
from wan_async.testing import FakeGateway

from _harness import print_table

HERE = Path(__file__).resolve().parent
TICK = 15.0
LEASE = 1.0
KEY = "sk-fleet-bench"


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("benchmarks/fleet.py needs redis-server (apt-get install -y redis-server)")
    sock = folder / "redis.sock"
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not sock.exists():
        if time.monotonic() > deadline or process.poll() is not None:
            sys.exit("redis-server did not start")
        time.sleep(0.02)
    time.sleep(0.1)
    return process, f"unix://{sock}"


def peak_rate(gw: FakeGateway, window: float) -> float:
    """The most requests the gateway served in any ``window`` clock seconds, per second."""
    times = sorted(r.at for r in gw.stats.request_log if r.kind in ("submit", "get"))
    most = start = 0
    for end, at in enumerate(times):
        while at - times[start] > window:
            start += 1
        most = max(most, end - start + 1)
    return most / window


async def spawn(
    gw: FakeGateway,
    clock: ScaledClock,
    redis_url: str,
    mode: str,
    n: int,
    name: str,
    cap: float,
    cwd: Path | None = None,
) -> anyio.abc.Process:
    return await anyio.open_process(
        [
            sys.executable,
            str(HERE / "_fleet_worker.py"),
            mode,
            gw.base_url,
            str(clock.scale),
            repr(clock.epoch),
            repr(clock.origin),
            redis_url,
            str(n),
            name,
            str(cap),
            str(LEASE),
        ],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        stderr=None,
    )


async def line_of(process: anyio.abc.Process) -> Any:
    assert process.stdout is not None
    data = b""
    async for chunk in process.stdout:
        data += chunk
        if b"\n" in data:
            break
    head, _, rest = data.partition(b"\n")
    process.leftover = rest  # type: ignore[attr-defined]
    return json.loads(head)


async def last_line_of(process: anyio.abc.Process) -> Any:
    assert process.stdout is not None
    data: bytes = getattr(process, "leftover", b"")
    async for chunk in process.stdout:
        data += chunk
    await process.wait()
    return json.loads(data.decode().strip().splitlines()[-1])


def gateway(clock: ScaledClock, slots: int) -> FakeGateway:
    return FakeGateway(
        api_key=KEY,
        clock=clock,
        tick=TICK,
        slots=slots,
        processing_time=lambda body, rng: rng.lognormvariate(math.log(60.0), 0.2),
    )


async def fleet_row(
    label: str, args: argparse.Namespace, redis_url: str, *, workers: int, kill: bool = False
) -> list[object]:
    clock = ScaledClock(args.scale)
    per = args.tasks // workers
    async with gateway(clock, args.tasks) as gw:
        procs = [
            await spawn(gw, clock, redis_url, "submit", per, f"{label} w{w}", args.cap)
            for w in range(workers)
        ]
        ids = [await line_of(p) for p in procs]
        everyone = [t for chunk in ids for t in chunk]
        adoption = "-"
        if kill:
            import redis.asyncio as aioredis

            r = aioredis.Redis.from_url(redis_url)
            space = "{" + namespace_for(gw.base_url, KEY) + "}"
            victim = ids[0]
            dead = (await r.hget(f"{space}:t:{victim[0]}", "o") or b"").decode()
            procs[0].kill()
            killed = time.monotonic()
            await procs[0].wait()
            pending = set(victim)
            while pending:
                for task_id in list(pending):
                    owner = (await r.hget(f"{space}:t:{task_id}", "o") or b"").decode()
                    ended = await r.hget(f"{space}:t:{task_id}", "e")
                    if owner != dead or ended == b"1":
                        pending.discard(task_id)
                if time.monotonic() - killed > 30:
                    break
                await anyio.sleep(0.005)
            adoption = f"{time.monotonic() - killed:.2f} s (bound {LEASE * 1.25:.2f} s)"
            if pending:
                adoption = f"{len(pending)} never adopted"
            await r.aclose()
        alive = procs[1:] if kill else procs
        for p in alive:
            assert p.stdin is not None
            await p.stdin.send((json.dumps(everyone) + "\n").encode())
        reports = [await last_line_of(p) for p in alive]
        stats = gw.stats
        asked = sum(r["queries"] for r in reports)
        answered = asked - sum(r["unanswered"] for r in reports)
        ended = sum(1 for t in gw.tasks() if t.status in ("SUCCESS", "FAILURE"))
        return [
            label,
            stats.tasks_created,
            sum(n - 1 for n in stats.tasks_per_prompt.values() if n > 1),
            f"{sum(t.gets for t in gw.tasks()) / max(1, stats.tasks_created):.2f}",
            f"{answered}/{asked} ({100 * answered / max(1, asked):.1f} %)" if asked else "-",
            f"{peak_rate(gw, 60.0):.1f} / {args.cap:g}",
            f"{ended}/{stats.tasks_created}",
            adoption,
        ]


async def journal_row(args: argparse.Namespace, redis_url: str, folder: Path) -> list[object]:
    clock = ScaledClock(args.scale)
    n = 200
    async with gateway(clock, 100) as gw:
        hosts = []
        for name in ("host-a", "host-b"):
            (folder / name).mkdir()
            hosts.append(
                await spawn(
                    gw, clock, redis_url, "batch", n, "bench-journal", args.cap, cwd=folder / name
                )
            )
        reports = [await last_line_of(h) for h in hosts]
        stats = gw.stats
        return [
            f"2 hosts, one journaled batch of {n}",
            stats.tasks_created,
            sum(n - 1 for n in stats.tasks_per_prompt.values() if n > 1),
            f"{sum(t.gets for t in gw.tasks()) / max(1, stats.tasks_created):.2f}",
            " + ".join(f"{r['ok']} ok" for r in reports),
            f"{peak_rate(gw, 60.0):.1f} / {args.cap:g}",
            f"submits {' + '.join(str(r['submits']) for r in reports)}",
            "-",
        ]


async def main(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="wan-fleet-"))
    server, url = start_redis(folder)
    try:
        rows = [
            await fleet_row("1 process", args, "-", workers=1),
            await fleet_row(f"{args.workers} workers, no store", args, "-", workers=args.workers),
            await fleet_row(f"{args.workers} workers, Redis", args, url, workers=args.workers),
            await fleet_row(
                f"{args.workers} workers, Redis, kill -9 one",
                args,
                url,
                workers=args.workers,
                kill=True,
            ),
            await journal_row(args, url, folder),
        ]
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"fleet benchmark: {args.tasks} tasks, cap {args.cap:g} requests per clock second, "
        f"lease {LEASE:g} s, scale {args.scale:g}"
    )
    print_table(
        [
            "run",
            "tasks",
            "duplicates",
            "GETs/task",
            "cross-worker status answered",
            "peak rate / cap",
            "ended",
            "adoption after kill -9",
        ],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--scale", type=float, default=60.0)
    parser.add_argument("--cap", type=float, default=20.0)
    random.seed(0)
    anyio.run(main, parser.parse_args())
