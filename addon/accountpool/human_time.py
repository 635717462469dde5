"""Durations in words, one spelling for error messages, the CLI and the dashboard."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """`29 s`, `4 min`, `2 h 5 min`, `3 d 4 h`: precise enough to act on, short enough to read."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3_600:
        return f"{seconds // 60:.0f} min"
    if seconds < 86_400:
        return f"{seconds // 3_600:.0f} h {seconds % 3_600 // 60:.0f} min"
    return f"{seconds // 86_400:.0f} d {seconds % 86_400 // 3_600:.0f} h"
