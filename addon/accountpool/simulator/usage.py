"""What the simulator's usage headers report for one credential: Codex windows and `x-ratelimit-*` values.

Tests and the control API set it (`SimulatedUpstream.set_usage`); every answer of that credential
carries it, and a scripted `quota` fault reads its reset time.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Usage:
    """What the usage headers report for one credential: Codex windows and `x-ratelimit-*` values."""

    primary_used_percent: float = 10.0
    primary_window_minutes: int = 300
    primary_reset_at: float = field(default_factory=lambda: time.time() + 3_600)
    secondary_used_percent: float = 5.0
    secondary_window_minutes: int = 10_080
    secondary_reset_at: float = field(default_factory=lambda: time.time() + 3 * 86_400)
    limit_requests: int = 5_000
    remaining_requests: int = 4_999
    reset_requests: str = "12ms"
    limit_tokens: int = 2_000_000
    remaining_tokens: int = 1_999_000
    reset_tokens: str = "6m0s"

    def update(self, **values: Any) -> None:
        """Accept `*_reset_after_seconds` as well, because that is what tests think in."""
        for name, value in values.items():
            if name in ("primary_reset_after_seconds", "secondary_reset_after_seconds"):
                name, value = name.replace("_after_seconds", "_at"), time.time() + float(value)
            if name not in {f.name for f in dataclasses.fields(self)}:
                raise ValueError(f"unknown usage field: {name}")
            setattr(self, name, value)

    def codex_headers(self, now: float) -> dict[str, str]:
        out: dict[str, str] = {}
        for w in ("primary", "secondary"):
            reset_at = getattr(self, f"{w}_reset_at")
            out |= {
                f"x-codex-{w}-used-percent": str(float(getattr(self, f"{w}_used_percent"))),
                f"x-codex-{w}-window-minutes": str(getattr(self, f"{w}_window_minutes")),
                f"x-codex-{w}-reset-after-seconds": str(max(0, int(reset_at - now))),
                f"x-codex-{w}-reset-at": str(int(reset_at)),
            }
        return out

    def ratelimit_headers(self) -> dict[str, str]:
        return {
            f"x-ratelimit-{what}-{unit}": str(getattr(self, f"{what}_{unit}"))
            for what in ("limit", "remaining", "reset")
            for unit in ("requests", "tokens")
        }
