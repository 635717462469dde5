"""The cyclic garbage collector's young-generation threshold, raised for a proxy that holds many streams.

Every open stream keeps about 300 container objects alive in mitmproxy's process (coroutines, futures,
transports, their dicts; the addon's relay and upstream connection included), and each token it
carries allocates and drops a few more. With CPython's default threshold of 700 allocations between
young collections, the futures that every open stream is waiting on are always alive when a young
collection runs: they survive two of them and are promoted to the old generation, and once that has
grown by a quarter, CPython collects the whole heap. With 2,000 streams open that is a full
collection of 650,000 objects every few seconds, about 280 ms each, during which the event loop
stops: every stream's next token and every new client's first byte wait (benchmarks/README.md,
"Issue 14, fifth pass": a quarter of the process's CPU went to the collector).

A threshold of 10,000 makes young collections rarer, so far fewer short-lived waiters are alive at
one and promoted; in the same run no full collection happened at all. Memory cost: at most that many
young objects of cyclic garbage wait for their collection (about a MiB). Objects freed by their
reference count, which is nearly all of them, are freed at once as before.

This is process-wide, like the accept queue the addon deepens: the process is the pool's proxy.
The previous thresholds come back when the addon is unloaded (a script reload, shutdown).
"""

from __future__ import annotations

import gc

DEFAULT_YOUNG_THRESHOLD = 10_000


def raise_young_threshold(threshold: int) -> tuple[int, int, int] | None:
    """Set generation 0's threshold to `threshold` (0 leaves the collector alone).

    Returns the thresholds it replaced, for `restore`, or None when it changed nothing. Only ever
    raises: a threshold someone set higher than ours (another addon, the embedding program) is kept."""
    previous = gc.get_threshold()
    if threshold <= 0 or previous[0] >= threshold or previous[0] == 0:  # 0 there: the collector is off
        return None
    gc.set_threshold(threshold, *previous[1:])
    return previous  # type: ignore[return-value]


def restore(previous: tuple[int, int, int] | None) -> None:
    if previous is not None:
        gc.set_threshold(*previous)
