"""Background probe of ChatGPT logins' usage windows (`GET …/wham/usage`, docs/BEHAVIOUR.md §12).

Response headers already keep usage current for accounts that serve traffic; the sweep covers
the idle ones, so the `balanced` order and the dashboard know an account's 5-hour and weekly
use before it is picked. Disabled and auth-blocked accounts are never probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import httpx

from accountpool.models import Account, AccountKind
from accountpool.storage.metrics_writer import HealthUpdate, MetricsWriter
from accountpool.storage.pool_view import PoolView
from accountpool.upstream.usage_headers import usage_from_wham

log = logging.getLogger("accountpool.usage")

DEFAULT_USAGE_URL = "https://chatgpt.com/backend-api/wham/usage"


def accounts_to_probe(accounts: list[Account]) -> list[Account]:
    return [a for a in accounts if a.kind == AccountKind.CHATGPT and a.enabled and not a.auth_blocked]


class UsageSweeper:
    def __init__(self, view: PoolView, writer: MetricsWriter, client: httpx.AsyncClient, *, url: str,
                 interval_s: float, clock: Callable[[], float] = time.time) -> None:
        self.view, self.writer, self.client = view, writer, client
        self.url, self.interval_s, self.clock = url, interval_s, clock
        self.probes = 0

    async def run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.sweep_once()
            await asyncio.sleep(self.interval_s)

    async def sweep_once(self) -> int:
        """Probe every eligible account once; returns how many answered with usage."""
        updated = 0
        for account in accounts_to_probe(self.view.accounts):
            creds = self.view.credentials(account.id)
            if creds is None or not creds.access_token:
                continue
            headers = {"authorization": f"Bearer {creds.access_token}"}
            if account.upstream_account_id:
                headers["chatgpt-account-id"] = account.upstream_account_id
            try:
                response = await self.client.get(self.url, headers=headers, timeout=20)
                doc = response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                continue
            self.probes += 1
            if not isinstance(doc, dict):
                log.info("usage probe for %s answered %s", account.display, response.status_code)
                continue
            now = self.clock()
            obs = usage_from_wham(doc, now)
            health = self.view.health_of(account.id)
            update: dict = {"usage_seen_at": now}
            if obs.primary is not None:
                update["primary"] = obs.primary
            if obs.secondary is not None:
                update["secondary"] = obs.secondary
            fresh = health.model_copy(update=update)
            self.view.update_health(fresh)
            self.writer.submit(HealthUpdate(fresh))
            updated += 1
        return updated
