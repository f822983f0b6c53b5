"""A client of a fleet in its own process: it submits tasks (and owns them) for the fleet
tests, which attach to them from elsewhere, or ``kill -9`` it."""

from __future__ import annotations

import json
import sys

import anyio

from wan_async import PollPolicy, RedisStore, ScaledClock, VideoRequest, WanClient


async def main(
    base_url: str,
    scale: str,
    epoch: str,
    origin: str,
    redis_url: str,
    n: str,
    lease: str,
    cap: str = "",
    prefix: str = "fleet item",
) -> None:
    clock = ScaledClock(float(scale), epoch=float(epoch), origin=float(origin))
    async with WanClient(
        api_key="sk-test",
        base_url=base_url,
        clock=clock,
        store=RedisStore.from_url(redis_url, lease=float(lease)),
        poll_policy=PollPolicy(refresh_period=3.0),
        max_requests_per_second=float(cap) if cap else None,
    ) as client:
        handles = [
            await client.submit(VideoRequest(prompt=f"{prefix} {i}", model="wan2.6-t2v"))
            for i in range(int(n))
        ]
        print(json.dumps([h.task_id for h in handles]), flush=True)
        for handle in handles:
            await handle
        print("done", flush=True)
        await anyio.sleep_forever()  # until killed: the tests end it


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:])
