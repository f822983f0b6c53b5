"""One host of a batch that several run at once, on one shared journal (its own working
directory, its own process): prints how many items ended ok and how many it submitted."""

from __future__ import annotations

import json
import sys

import anyio

from wan_async import PollPolicy, RedisStore, ScaledClock, SharedJournal, VideoRequest, WanClient


def batch(n: int) -> list[VideoRequest]:
    """The batch every host runs: same requests, same order."""
    return [VideoRequest(prompt=f"shared batch item {i}", model="wan2.6-t2v") for i in range(n)]


async def main(
    base_url: str, scale: str, epoch: str, origin: str, redis_url: str, name: str, n: str
) -> None:
    clock = ScaledClock(float(scale), epoch=float(epoch), origin=float(origin))
    async with WanClient(
        api_key="sk-test",
        base_url=base_url,
        clock=clock,
        store=RedisStore.from_url(redis_url, lease=1.0),
        poll_policy=PollPolicy(refresh_period=3.0),
        max_in_flight=40,
    ) as client:
        outcomes = await client.generate_many(
            batch(int(n)), journal=SharedJournal(name=name), return_outcomes=True
        )
        print(
            json.dumps(
                {
                    "ok": sum(o.ok for o in outcomes),
                    "ids": sorted({o.task_id for o in outcomes if o.task_id}),
                    "submits": client.stats.submits,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:])
