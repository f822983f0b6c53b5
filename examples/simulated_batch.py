"""Generate a few videos end to end against the built-in gateway simulator, offline.

Run: python examples/simulated_batch.py

The simulator (wan_async.testing.FakeGateway) serves the real HTTP API on loopback, with its
clock running 60 times faster than real time, so five minutes of gateway time pass in five
seconds. Point WanClient at a real gateway (base_url=, api_key=) and the code is the same.
"""

from __future__ import annotations

import time

import anyio

from wan_async import VideoRequest, WanClient
from wan_async.testing import FakeGateway, ScaledClock

PROMPTS = [
    "A paper boat drifting down a rain-soaked street at dusk",
    "Timelapse of a glacier calving into a turquoise bay",
    "A red fox trotting through fresh snow, slow motion",
    "Neon koi fish swimming through a flooded arcade [fail]",  # the simulator's moderation
    "Close-up of honey dripping from a wooden dipper",
]


async def main() -> None:
    clock = ScaledClock(60)
    async with (
        FakeGateway(clock=clock, slots=3, seed=7) as gateway,
        WanClient(api_key=gateway.api_key, base_url=gateway.base_url, clock=clock) as client,
    ):
        requests = [
            VideoRequest(prompt=p, model="wan2.6-t2v", size="1280*720", duration=5) for p in PROMPTS
        ]
        started = time.monotonic()
        outcomes = await client.generate_many(requests, return_outcomes=True)
        elapsed = time.monotonic() - started
        stats = client.stats
    print(f"{'#':>2}  {'task id':<38} {'result'}")
    for outcome in outcomes:
        if outcome.result is not None:
            text = f"OK     {outcome.result.video_url.split('?')[0]}"
        else:
            text = f"FAILED {outcome.error}"
        print(f"{outcome.index:>2}  {outcome.task_id or '-':<38} {text}")
    ok = sum(o.ok for o in outcomes)
    print(
        f"\n{ok}/{len(outcomes)} videos in {elapsed:.1f}s real "
        f"({elapsed * clock.scale / 60:.1f} simulated minutes); "
        f"{stats.submits} submits, {stats.poller.polls} status checks"
    )
    if ok != len(PROMPTS) - 1:
        raise SystemExit("unexpected results")


if __name__ == "__main__":
    anyio.run(main)
