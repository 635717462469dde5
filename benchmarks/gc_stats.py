"""A mitmproxy script for benchmarks: the time mitmdump spends in CPython's cyclic garbage collector.

`fleet.py --gc-stats` loads it into every mitmdump it compares and reads the file it keeps current
(the option `gc_stats_file`, rewritten once a second): collections and seconds per generation since
start, and the young-generation threshold in force. Measuring, not tuning: it changes nothing.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from typing import Any

from mitmproxy import ctx


class GcStats:
    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started = 0.0
        self._task: asyncio.Task | None = None

    def load(self, loader: Any) -> None:
        loader.add_option("gc_stats_file", str, "", "where to keep the collector's figures (JSON)")
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._started
            self.collections[generation] += 1

    def running(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_written())

    async def _keep_written(self) -> None:
        path = ctx.options.gc_stats_file
        while path:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump({"seconds": self.seconds, "collections": self.collections,
                           "threshold": gc.get_threshold()}, f)
            os.replace(tmp, path)
            await asyncio.sleep(1.0)

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


addons = [GcStats()]
