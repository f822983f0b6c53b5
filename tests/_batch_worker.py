"""A batch run in its own process, for the crash-and-resume test (it gets ``kill -9``)."""

from __future__ import annotations

import sys

import anyio

from wan_async import RetryPolicy, ScaledClock, VideoRequest, WanClient


def batch(n: int) -> list[VideoRequest]:
    """The batch both runs use: same requests, same order."""
    return [VideoRequest(prompt=f"resumable item {i}", model="wan2.6-t2v") for i in range(n)]


async def main(base_url: str, scale: str, epoch: str, origin: str, journal: str, n: str) -> None:
    clock = ScaledClock(float(scale), epoch=float(epoch), origin=float(origin))
    async with WanClient(
        api_key="sk-test",
        base_url=base_url,
        clock=clock,
        max_requests_per_second=None,
        retry=RetryPolicy.no_wait(),
    ) as client:
        await client.generate_many(batch(int(n)), return_outcomes=True, journal=journal)


if __name__ == "__main__":
    base_url, scale, epoch, origin, journal, n = sys.argv[1:]
    anyio.run(main, base_url, scale, epoch, origin, journal, n)
