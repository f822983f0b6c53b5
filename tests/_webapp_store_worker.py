"""One web worker's task store in a process of its own, for tests/test_webapp.py.

Usage: ``python _webapp_store_worker.py EXAMPLE STORE NAME COUNT [expired]``

Loads ``TaskStore`` from the example file EXAMPLE by path (as the tests do, so an older copy of
the example can be tried too), prints ``ready``, waits for a line on standard input (so that
every worker starts at once), then stores the ids ``NAME-0`` to ``NAME-<COUNT-1>`` one by one
through ``TaskStore.add``, as the app's ``POST /videos`` does, and prints ``done``. With
``expired``, each id is followed by ``NAME-expired-<i>``, stamped two days ago: ids that a
compaction must drop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

TWO_DAYS = 2 * 24 * 3600.0


def load(example: Path) -> ModuleType:
    """The example module (examples/ is not a package: load it by path)."""
    name = "wan_async_example_webapp"
    spec = importlib.util.spec_from_file_location(name, example)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


async def store_all(store: Any, name: str, count: int, *, expired: bool) -> None:
    for i in range(count):
        await store.add(f"{name}-{i}", time.time())
        if expired:
            await store.add(f"{name}-expired-{i}", time.time() - TWO_DAYS)


def main(example: str, path: str, name: str, count: str, *options: str) -> None:
    store = load(Path(example)).TaskStore(Path(path))
    print("ready", flush=True)
    sys.stdin.readline()
    asyncio.run(store_all(store, name, int(count), expired="expired" in options))
    print("done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
