"""A plain script (no event loop of its own) using ``wan_async.sync``, for test_sync.py."""

from __future__ import annotations

import sys

from wan_async import ScaledClock, VideoRequest
from wan_async.sync import generate, generate_many


def main(
    base_url: str, api_key: str, scale: str, epoch: str, origin: str, mode: str = "run"
) -> None:
    options = {
        "base_url": base_url,
        "api_key": api_key,
        "clock": ScaledClock(float(scale), epoch=float(epoch), origin=float(origin)),
    }
    if mode == "wait":  # for Ctrl-C: a task that takes far longer than the test
        generate(VideoRequest(prompt="a long one", model="wan2.6-t2v"), **options)
        return
    one = generate(VideoRequest(prompt="a script's boat", model="wan2.6-t2v"), **options)
    many = generate_many(
        [VideoRequest(prompt=f"a script's fox {i}", model="wan2.6-t2v") for i in range(3)],
        **options,
    )
    print(one.task_id, *(r.task_id for r in many), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
