"""Bare mitmdump plus the addon's process settings, nothing of its work (`fleet.py --bare-backlog`, `--bare-gc`).

Bare mitmdump drops a burst beyond its accept queue of 100 and its clients come back on the SYN
back-off, so under a burst of thousands its first bytes measure the back-off, not its work. With
this script bare mitmdump queues the burst as the addon does. With `--set bare_gc_threshold=N` it
also gets the addon's young garbage-collection threshold (accountpool/proxy/gc_tuning.py), to show
what that setting is worth to mitmproxy's own objects. Nothing else changes.
"""

from __future__ import annotations

from typing import Any

from accountpool.proxy.gc_tuning import raise_young_threshold
from accountpool.proxy.listen_backlog import deepen_accept_queues
from mitmproxy import ctx


class BacklogOnly:
    def load(self, loader: Any) -> None:
        loader.add_option("bare_gc_threshold", int, 0, "the addon's young GC threshold (0: Python's)")

    def running(self) -> None:
        deepen_accept_queues((addr[1] for addr in ctx.master.addons.get("proxyserver").listen_addrs()), 4096)
        raise_young_threshold(ctx.options.bare_gc_threshold)


addons = [BacklogOnly()]
