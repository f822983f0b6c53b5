"""One worker process of ``benchmarks/fleet.py``: a client of the fleet on one key.

Modes (the arguments after the shared clock and the store's URL):

* ``submit N PREFIX CAP LEASE``: submit N tasks, print their ids (one JSON line), read every
  worker's ids (one JSON line on stdin), then answer status queries for random ids of the
  whole fleet from the store (``client.latest``) until its own tasks ended and every id was
  seen ended; print a JSON report.
* ``batch N NAME CAP LEASE``: run the shared-journal batch of N items; print a JSON report.
"""

from __future__ import annotations

import json
import random
import sys
import time

import anyio

from wan_async import (
    PollPolicy,
    RedisStore,
    ScaledClock,
    SharedJournal,
    TaskHandle,
    VideoRequest,
    WanClient,
)


def client(
    base_url: str, clock: ScaledClock, redis_url: str, cap: float, lease: float
) -> WanClient:
    store = RedisStore.from_url(redis_url, lease=lease) if redis_url != "-" else None
    return WanClient(
        api_key="sk-fleet-bench",
        base_url=base_url,
        clock=clock,
        store=store,
        max_requests_per_second=cap,
        poll_policy=PollPolicy(refresh_period=15.0),
        max_in_flight=2000,
    )


async def submit_mode(c: WanClient, n: int, prefix: str) -> dict[str, object]:
    handles: list[TaskHandle] = []

    async def one(i: int) -> None:
        handles.append(await c.submit(VideoRequest(prompt=f"{prefix} {i}", model="wan2.6-t2v")))

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    print(json.dumps([h.task_id for h in handles]), flush=True)
    everyone: list[str] = json.loads(await anyio.to_thread.run_sync(sys.stdin.readline))
    queries = unanswered = 0
    ended: set[str] = set()
    rng = random.Random(prefix)
    # Without a store only its own tasks can be answered for: stop once they ended.
    shared = c.store is not None
    while not (all(h.done() for h in handles) and (not shared or len(ended) == len(everyone))):
        task_id = (
            rng.choice(everyone)
            if rng.random() < 0.5
            else next((t for t in everyone if t not in ended), everyone[0])
        )
        snapshot = await c.latest(task_id)
        queries += 1
        if snapshot is None:
            unanswered += 1
        elif snapshot.is_terminal:
            ended.add(task_id)
        await anyio.sleep(0.002)
    return {
        "queries": queries,
        "unanswered": unanswered,
        "submits": c.stats.submits,
        "polls": c.stats.poller.polls,
        "ok": sum(1 for h in handles if h.exception() is None),
    }


async def batch_mode(c: WanClient, n: int, name: str) -> dict[str, object]:
    requests = [VideoRequest(prompt=f"journaled {i}", model="wan2.6-t2v") for i in range(n)]
    outcomes = await c.generate_many(
        requests, journal=SharedJournal(name=name), return_outcomes=True
    )
    return {
        "ok": sum(o.ok for o in outcomes),
        "ids": sorted({o.task_id for o in outcomes if o.task_id}),
        "submits": c.stats.submits,
    }


async def main(
    mode: str,
    base_url: str,
    scale: str,
    epoch: str,
    origin: str,
    redis_url: str,
    n: str,
    name: str,
    cap: str,
    lease: str,
) -> None:
    clock = ScaledClock(float(scale), epoch=float(epoch), origin=float(origin))
    started = time.process_time()
    async with client(base_url, clock, redis_url, float(cap), float(lease)) as c:
        if mode == "submit":
            report = await submit_mode(c, int(n), name)
        else:
            report = await batch_mode(c, int(n), name)
    report["cpu"] = time.process_time() - started
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:])
