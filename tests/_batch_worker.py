"""A batch run in its own process, for the crash-and-resume test (it gets ``kill -9``)."""

from __future__ import annotations

import sys

import anyio

from wan_async import RetryPolicy, ScaledClock, VideoRequest, WanClient


def batch(n: int) -> list[VideoRequest]:
    """The batch both runs use: same requests, same order."""
    return [VideoRequest(prompt=f"resumable item {i}", model="wan2.6-t2v") for i in range(n)]


async def main(
    base_url: str,
    scale: str,
    epoch: str,
    origin: str,
    journal: str,
    n: str,
    submits: str = "8",
    download_dir: str = "",
) -> None:
    clock = ScaledClock(float(scale), epoch=float(epoch), origin=float(origin))
    async with WanClient(
        api_key="sk-test",
        base_url=base_url,
        clock=clock,
        max_requests_per_second=None,
        retry=RetryPolicy.no_wait(),
        max_concurrent_submits=int(submits),
    ) as client:
        outcomes = await client.generate_many(
            batch(int(n)), return_outcomes=True, journal=journal, download_dir=download_dir or None
        )
    print(sum(o.ok for o in outcomes), "ok", flush=True)


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:])
