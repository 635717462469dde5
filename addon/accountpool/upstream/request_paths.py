"""Which request paths the pool serves, and their one canonical spelling. Pure functions.

A pooled request leaves with an account's credential, so its path must not be able to reach
anything but the pooled API: `/v1/../../etc/passwd`, `/v1/%2e%2e/admin` or a double-encoded
`%252e%252e` would otherwise travel to the upstream (or out of a gateway's `/openai/v1`
prefix) carrying that credential. Dot, slash and backslash escapes are decoded (repeatedly,
so double encoding cannot hide a segment), dot segments are resolved, and what is left must
still lie under a pooled prefix. Once the path is inside a pooled prefix, a `..` must not climb out
of it, not even to the other prefix (`/v1/../backend-api/codex/responses` would otherwise take an
API-path request to the Codex backend): `..` that stays inside (`/v1/models/../responses`) resolves.
The resolved path is the one forwarded, so the upstream never has a second chance to interpret a
dot segment differently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

POOLED_PREFIXES = ("/v1/", "/backend-api/codex/")
_PREFIX_SEGMENTS = tuple(tuple(prefix.strip("/").split("/")) for prefix in POOLED_PREFIXES)

_SEPARATOR_ESCAPES = re.compile(r"%(2e|2f|5c|25)", re.IGNORECASE)
_DECODED = {"2e": ".", "2f": "/", "5c": "/", "25": "%"}
_MAX_DECODE_ROUNDS = 4


class PathVerdict(StrEnum):
    POOLED = "pooled"
    """Under a pooled prefix once resolved: forward the resolved path."""
    ESCAPES = "escapes"
    """Dot segments lead out of the pooled prefix they were in (or above the root, or to no pooled
    path): refuse with 400."""
    UNKNOWN = "unknown"
    """Not an API path the pool serves, and no traversal involved: 404 in reverse mode."""


@dataclass(frozen=True)
class CheckedPath:
    verdict: PathVerdict
    path: str
    """The resolved path with the client's query string; the original target when it escapes."""


def is_pooled(path: str) -> bool:
    """Whether a (resolved) path without query lies under a pooled prefix."""
    return path.startswith(POOLED_PREFIXES)


def _decode_separators(path: str) -> str:
    """Decode `%2e`, `%2f`, `%5c` and `%25` until nothing changes, and treat `\\` as `/`."""
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded = _SEPARATOR_ESCAPES.sub(lambda m: _DECODED[m.group(1).lower()], path)
        if decoded == path:
            break
        path = decoded
    return path.replace("\\", "/")


def _prefix_of(segments: list[str]) -> tuple[str, ...] | None:
    """The pooled prefix (as segments) that `segments` lie in, if any."""
    for prefix in _PREFIX_SEGMENTS:
        if tuple(segments[:len(prefix)]) == prefix:
            return prefix
    return None


def resolve(path: str) -> tuple[str | None, bool]:
    """(resolved path, whether dot segments were present). The path is None if a `..` climbs above
    the root or out of the pooled prefix the path had reached by then.

    Empty segments (`//`) collapse: no upstream API path has one, and some servers treat
    them as a path reset."""
    segments: list[str] = []
    dotted = False
    inside: tuple[str, ...] | None = None
    for segment in _decode_separators(path).split("/"):
        if segment in ("", "."):
            dotted = dotted or segment == "."
            continue
        if segment == "..":
            dotted = True
            if not segments or (inside is not None and len(segments) <= len(inside)):
                return None, True
            segments.pop()
            continue
        segments.append(segment)
        if inside is None:
            inside = _prefix_of(segments)
    resolved = "/" + "/".join(segments)
    if path.endswith("/") and segments:
        resolved += "/"
    return resolved, dotted


def check_path(target: str) -> CheckedPath:
    """Judge a request target (`/v1/x?q`) for pooling: see `PathVerdict`."""
    path, sep, query = target.partition("?")
    resolved, dotted = resolve(path)
    if resolved is None:
        return CheckedPath(PathVerdict.ESCAPES, target)
    if is_pooled(resolved):
        return CheckedPath(PathVerdict.POOLED, resolved + sep + query)
    if dotted or is_pooled(path):
        return CheckedPath(PathVerdict.ESCAPES, target)
    return CheckedPath(PathVerdict.UNKNOWN, target)


def has_dot_segment(path: str) -> bool:
    """A last line of defence where a path is joined onto an account's base URL."""
    return any(segment in (".", "..") for segment in _decode_separators(path.partition("?")[0]).split("/"))
