"""A batch whose journal hits a real file-size limit (RLIMIT_FSIZE), in its own process so
the limit touches nothing else. Prints one JSON line: what the batch raised and what the
unrelated task beside it got."""

from __future__ import annotations

import json
import resource
import signal
import sys

import anyio

from wan_async import JournalError, RetryPolicy, ScaledClock, VideoRequest, WanClient


async def main(base_url: str, scale: str, epoch: str, origin: str, journal: str) -> None:
    clock = ScaledClock(float(scale), epoch=float(epoch), origin=float(origin))
    requests = [VideoRequest(prompt=f"full disk item {i}", model="wan2.6-t2v") for i in range(20)]
    # Past this size every write fails with EFBIG, as on a full disk (ENOSPC).
    header = len(json.dumps({"event": "batch", "version": 1, "fingerprints": ["x" * 32] * 20}))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (header + 1500, resource.RLIM_INFINITY))
    report: dict[str, object] = {}
    async with WanClient(
        api_key="sk-test",
        base_url=base_url,
        clock=clock,
        retry=RetryPolicy.no_wait(),
    ) as client:
        other = await client.submit(VideoRequest(prompt="unrelated", model="wan2.6-t2v"))
        try:
            await client.generate_many(requests, return_outcomes=True, journal=journal)
        except JournalError as exc:
            report["raised"] = f"JournalError: {exc}"
        except BaseException as exc:  # the report says what escaped
            report["raised"] = f"{type(exc).__name__}: {exc}"
        result = await other
        report["unrelated"] = result.task_id == other.task_id
    report["closed_cleanly"] = True
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:])
