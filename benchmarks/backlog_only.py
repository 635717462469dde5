"""Bare mitmdump plus one thing of the addon's: its deeper accept queue (`fleet.py --bare-backlog`).

Bare mitmdump drops a burst beyond its accept queue of 100 and its clients come back on the SYN
back-off, so under a burst of thousands its first bytes measure the back-off, not its work. With
this script bare mitmdump queues the burst as the addon does; nothing else changes.
"""

from __future__ import annotations

from accountpool.proxy.listen_backlog import deepen_accept_queues
from mitmproxy import ctx


class BacklogOnly:
    def running(self) -> None:
        deepen_accept_queues((addr[1] for addr in ctx.master.addons.get("proxyserver").listen_addrs()), 4096)


addons = [BacklogOnly()]
